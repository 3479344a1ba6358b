"""herd end to end against a bare vLLM script on the same data, model and engine settings.

Reports both wall times, generated tokens/s, and two ratios (herd / bare, higher is better):
end to end (start-up included) and steady state (engine generating, first to last token).
Targets: steady state >= 0.97, end to end >= 0.90.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from bench.common import CACHE, demo_model, engine_busy_seconds, record, run_herd, run_script, tiny_model, write_prompts

NEW_TOKENS = 64


def _bare(data: Path, model: Path, max_model_len: int, work: Path) -> dict[str, Any]:
    arguments = [str(data), str(model), str(work / "bare.parquet"), str(max_model_len), str(NEW_TOKENS)]
    wall, figures = run_script(["-m", "bench.bare_vllm", *arguments])
    figures["wall_s"] = wall  # the whole process, as herd's is measured
    return figures


def _herd(data: Path, model: Path, max_model_len: int, work: Path) -> dict[str, Any]:
    job = {  # shard size: the job default (1,024 rows)
        "input": {"path": str(data), "prompt_column": "prompt", "id_column": "id"},
        "model": {"path": str(model), "max_model_len": max_model_len, "dtype": "float32"},
        "sampling": {"max_new_tokens": NEW_TOKENS, "ignore_eos": True, "temperature": 0.8, "seed": 1},
        "output": {"path": str(work / "herd-out")},
    }
    wall, summary, records = run_herd(job, work)
    return {
        "wall_s": wall,
        "generate_s": engine_busy_seconds(records),
        "tokens": summary["completion_tokens"],
    }


def _case(label: str, model: Path, prompts: int, files: int, max_model_len: int) -> dict[str, Any]:
    data = write_prompts(CACHE / f"prompts-{prompts}-{files}", prompts, files)
    with tempfile.TemporaryDirectory() as work:
        bare = _bare(data, model, max_model_len, Path(work))
        herd = _herd(data, model, max_model_len, Path(work))
    assert herd["tokens"] == bare["tokens"] == prompts * NEW_TOKENS
    for side in (bare, herd):
        side["tokens_per_s_steady"] = side["tokens"] / side["generate_s"]
        side["tokens_per_s_end_to_end"] = side["tokens"] / side["wall_s"]
    ratios = {
        "end_to_end": bare["wall_s"] / herd["wall_s"],
        "steady_state": herd["tokens_per_s_steady"] / bare["tokens_per_s_steady"],
    }
    print(
        f"{label}: bare {bare['wall_s']:.1f}s ({bare['tokens_per_s_steady']:.0f} tok/s steady), "
        f"herd {herd['wall_s']:.1f}s ({herd['tokens_per_s_steady']:.0f} tok/s steady); "
        f"end-to-end {ratios['end_to_end']:.3f}, steady {ratios['steady_state']:.3f}"
    )
    return {"prompts": prompts, "files": files, "bare": bare, "herd": herd, "ratios": ratios}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench overhead")
    parser.add_argument("--prompts", type=int, default=16384)
    parser.add_argument("--demo-prompts", type=int, default=128)
    arguments = parser.parse_args(argv)
    tiny = _case("tiny llama", tiny_model(), arguments.prompts, 8, 512)
    demo = _case("demo model", demo_model(), arguments.demo_prompts, 2, 1024)
    record(
        "overhead",
        {"new_tokens": NEW_TOKENS, "tiny": tiny, "demo": demo, "targets": {"steady_state": 0.97, "end_to_end": 0.90}},
        f"overhead: herd/bare steady state {tiny['ratios']['steady_state']:.3f} "
        f"(demo {demo['ratios']['steady_state']:.3f}), end to end {tiny['ratios']['end_to_end']:.3f} "
        f"(demo {demo['ratios']['end_to_end']:.3f})",
    )
    return 0
