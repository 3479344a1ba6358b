"""vLLM on CPU (TP 1) with its engine core in processes of its own (vLLM's default) against inside the
calling process (herd's replicas: VLLM_ENABLE_V1_MULTIPROCESSING=0, see workers/engine.py), and
herd's engine against itself with Python's garbage collector left running while vLLM imports (the
third side: workers/engine.py's collector_paused_then_heap_frozen made a no-op).

Each side builds herd's VllmEngine (the same options a replica uses) in a fresh process, then
generates the same prompts through herd's continuous feeder. The sides alternate over rounds, since
this machine's speed drifts by tens of percent within minutes. Reports per side the median time to
build the engine (vLLM's imports included), the process CPU seconds that took, and generated
tokens/s, and their ratios.
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


def probe(model_dir: str, prompts: int, collector_on: bool) -> None:
    """In a fresh process (python -m bench.engine_start --probe): builds the engine and generates."""
    import contextlib

    import workers.engine
    from schemas.job import ModelSpec, SamplingSpec
    from workers.engine import EngineRequest, VllmEngine, engine_environment

    if collector_on:
        workers.engine.collector_paused_then_heap_frozen = contextlib.nullcontext

    spec = ModelSpec(path=model_dir, max_model_len=512, dtype="float32")
    for name, value in engine_environment(spec, "cpu").items():
        os.environ.setdefault(name, value)  # the side's VLLM_ENABLE_V1_MULTIPROCESSING is already set

    # The clock includes importing vLLM (torch, transformers): a replica's process pays it there too.
    started, started_cpu = time.perf_counter(), time.process_time()
    engine = VllmEngine(model_dir, spec, "cpu")
    built, built_cpu = time.perf_counter() - started, time.process_time() - started_cpu
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
    figures = {"build_s": built, "build_cpu_s": built_cpu, "tokens": tokens, "tokens_per_s": tokens / seconds}
    print("FIGURES " + json.dumps(figures), flush=True)


SIDES = ("separate", "in_process", "in_process_collector_on")


def _side(model: Path, prompts: int, side: str) -> dict[str, Any]:
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if side == "separate" else "0"
    collector = "collector_on" if side == "in_process_collector_on" else "collector_paused"
    wall, figures = run_script(["-m", "bench.engine_start", "--probe", str(model), str(prompts), collector])
    figures["process_wall_s"] = wall
    return figures


def _case(label: str, model: Path, prompts: int, rounds: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    for round_number in range(rounds):
        # Reverse the order every other round, so that no side always meets the machine's same moment.
        for side in SIDES if round_number % 2 == 0 else reversed(SIDES):
            runs[side].append(_side(model, prompts, side))
    keys = ("build_s", "build_cpu_s", "tokens_per_s", "process_wall_s")
    median = {side: {key: statistics.median(run[key] for run in found) for key in keys} for side, found in runs.items()}
    ratios = {
        "build_speedup": median["separate"]["build_s"] / median["in_process"]["build_s"],
        "tokens_per_s": median["in_process"]["tokens_per_s"] / median["separate"]["tokens_per_s"],
        "build_cpu_collector_on_over_paused": median["in_process_collector_on"]["build_cpu_s"]
        / median["in_process"]["build_cpu_s"],
    }
    print(
        f"{label}: engine built in {median['separate']['build_s']:.1f}s separate vs "
        f"{median['in_process']['build_s']:.1f}s in process ({ratios['build_speedup']:.1f}x); "
        f"{median['separate']['tokens_per_s']:.0f} vs {median['in_process']['tokens_per_s']:.0f} tokens/s "
        f"(in process / separate {ratios['tokens_per_s']:.2f}); in process, CPU to import and build "
        f"{median['in_process_collector_on']['build_cpu_s']:.1f}s with the collector running during imports vs "
        f"{median['in_process']['build_cpu_s']:.1f}s paused ({ratios['build_cpu_collector_on_over_paused']:.2f}x)"
    )
    return {"prompts": prompts, "rounds": rounds, "median": median, "ratios": ratios, "runs": runs}


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--probe":
        probe(argv[1], int(argv[2]), collector_on=argv[3] == "collector_on")
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
        f"{tiny['ratios']['tokens_per_s']:.2f} (demo {demo['ratios']['tokens_per_s']:.2f}); the collector running "
        f"during imports costs {tiny['ratios']['build_cpu_collector_on_over_paused']:.2f}x the CPU to start "
        f"(demo {demo['ratios']['build_cpu_collector_on_over_paused']:.2f}x)",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
