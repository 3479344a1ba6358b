"""vLLM on CPU (TP 1) with its engine core in processes of its own (vLLM's default) against inside the
calling process (herd's replicas: VLLM_ENABLE_V1_MULTIPROCESSING=0, see workers/engine.py).

Each side builds herd's VllmEngine (the same options a replica uses) in a fresh process, then
generates the same prompts through herd's continuous feeder. The sides alternate over rounds, since
this machine's speed drifts by tens of percent within minutes. Reports per side the median time to
build the engine (after imports) and generated tokens/s, and their ratios (in-process over separate).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import demo_model, record, run_script, tiny_model

NEW_TOKENS = 64


def probe(model_dir: str, prompts: int) -> None:
    """In a fresh process (python -m bench.engine_start --probe): builds the engine and generates."""
    from schemas.job import ModelSpec, SamplingSpec
    from workers.engine import EngineRequest, VllmEngine, engine_environment

    spec = ModelSpec(path=model_dir, max_model_len=512, dtype="float32")
    for name, value in engine_environment(spec, "cpu").items():
        os.environ.setdefault(name, value)  # the side's VLLM_ENABLE_V1_MULTIPROCESSING is already set
    import vllm  # noqa: F401 - imported before the clock starts: both sides import it once

    started = time.perf_counter()
    engine = VllmEngine(model_dir, spec, "cpu")
    built = time.perf_counter() - started
    sampling = SamplingSpec(max_new_tokens=NEW_TOKENS, ignore_eos=True, temperature=0.8)
    requests = [
        EngineRequest(engine.tokenizer.encode(f"question {index} about rivers"), index, sampling)
        for index in range(prompts)
    ]
    started = time.perf_counter()
    samples = engine.generate(requests)
    seconds = time.perf_counter() - started
    tokens = sum(len(sample.token_ids) for result in samples for sample in result)
    engine.close()
    print("FIGURES " + json.dumps({"build_s": built, "tokens": tokens, "tokens_per_s": tokens / seconds}), flush=True)


def _side(model: Path, prompts: int, in_process: bool) -> dict[str, Any]:
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if in_process else "1"
    wall, figures = run_script(["-m", "bench.engine_start", "--probe", str(model), str(prompts)])
    figures["process_wall_s"] = wall
    return figures


def _case(label: str, model: Path, prompts: int, rounds: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"separate": [], "in_process": []}
    for round_number in range(rounds):
        # Alternate which side goes first, so that neither always meets the machine's same moment.
        order = ["separate", "in_process"] if round_number % 2 == 0 else ["in_process", "separate"]
        for side in order:
            runs[side].append(_side(model, prompts, side == "in_process"))
    median = {
        side: {
            key: statistics.median(run[key] for run in found) for key in ("build_s", "tokens_per_s", "process_wall_s")
        }
        for side, found in runs.items()
    }
    ratios = {
        "build_speedup": median["separate"]["build_s"] / median["in_process"]["build_s"],
        "tokens_per_s": median["in_process"]["tokens_per_s"] / median["separate"]["tokens_per_s"],
    }
    print(
        f"{label}: engine built in {median['separate']['build_s']:.1f}s separate vs "
        f"{median['in_process']['build_s']:.1f}s in process ({ratios['build_speedup']:.1f}x); "
        f"{median['separate']['tokens_per_s']:.0f} vs {median['in_process']['tokens_per_s']:.0f} tokens/s "
        f"(in process / separate {ratios['tokens_per_s']:.2f})"
    )
    return {"prompts": prompts, "rounds": rounds, "median": median, "ratios": ratios, "runs": runs}


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--probe":
        probe(argv[1], int(argv[2]))
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench engine_start")
    parser.add_argument("--prompts", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args(argv)
    tiny = _case("tiny llama", tiny_model(), arguments.prompts, arguments.rounds)
    demo = _case("demo model", demo_model(), arguments.prompts // 8, arguments.rounds)
    record(
        "engine_start",
        {"new_tokens": NEW_TOKENS, "tiny": tiny, "demo": demo},
        f"engine_start: in process builds {tiny['ratios']['build_speedup']:.1f}x faster "
        f"(demo {demo['ratios']['build_speedup']:.1f}x), tokens/s in process / separate "
        f"{tiny['ratios']['tokens_per_s']:.2f} (demo {demo['ratios']['tokens_per_s']:.2f})",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
