"""The options beyond bare vLLM, each measured on and off side by side in one run:

- model.prefix_caching: 256 questions behind one long system prompt (the demo model, model-template).
- optimize.dedupe_prompts: 4,096 rows holding 1,024 distinct prompts, each four times (the tiny Llama).
- ordering prompts by length within a batch: measured on bare vLLM (8,192 mixed-length prompts, the
  tiny Llama), to decide whether herd should offer it.

Reports each ratio (off / on wall time: above 1 means the option is faster).
"""

from __future__ import annotations

import argparse
import random
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from bench.common import (
    CACHE,
    WORDS,
    demo_model,
    engine_busy_seconds,
    record,
    run_herd,
    run_script,
    tiny_model,
    write_prompts,
)

SYSTEM_PROMPT = (
    "You are a careful assistant for a data team. Answer in one short sentence, in plain English, "
    "without lists, code or markup. If the question is unclear, say what is unclear. "
) * 6


def _questions(directory: Path, rows: int, distinct: int, seed: int) -> Path:
    """`rows` rows in shuffled order, drawn evenly from `distinct` different questions."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "questions.parquet"
    if not path.exists():
        rng = random.Random(seed)
        texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 24))) + "?" for _ in range(distinct)]
        prompts = [texts[index % distinct] for index in range(rows)]
        rng.shuffle(prompts)
        ids = [f"q{index}" for index in range(rows)]
        pq.write_table(pa.table({"id": ids, "prompt": prompts}), path, row_group_size=256)
    return directory


def _herd(job: dict[str, Any], work: Path) -> dict[str, Any]:
    wall, summary, records = run_herd(job, work)
    return {
        "wall_s": wall,
        "generate_s": engine_busy_seconds(records),
        "rows_out": summary["rows_out"],
        "reused_rows": summary["reused_rows"],
    }


def _off_and_on(label: str, work: Path, job_with: Callable[[bool, str], dict[str, Any]]) -> dict[str, Any]:
    """Runs herd with the option off, then on (job_with(enabled, output path)); compares wall times."""
    off, on = (_herd(job_with(enabled, str(work / f"{enabled}")), work / f"{enabled}") for enabled in (False, True))
    assert off["rows_out"] == on["rows_out"]
    ratio = off["wall_s"] / on["wall_s"]
    print(f"{label}: off {off['wall_s']:.1f}s, on {on['wall_s']:.1f}s: {ratio:.2f}x")
    return {"off": off, "on": on, "speedup": ratio}


def _prefix_caching(work: Path) -> dict[str, Any]:
    data = _questions(CACHE / "questions-256-256", 256, 256, seed=7)
    return _off_and_on(
        "prefix caching (shared system prompt)",
        work / "prefix",
        lambda enabled, output: {
            "input": {"path": str(data), "prompt_column": "prompt", "id_column": "id"},
            "model": {"path": str(demo_model()), "max_model_len": 1024, "prefix_caching": enabled},
            "prompt": {"format": "model-template", "system_prompt": SYSTEM_PROMPT},
            "sampling": {"max_new_tokens": 8, "ignore_eos": True, "temperature": 0.8, "seed": 1},
            "output": {"path": output},
        },
    )


def _dedupe(work: Path) -> dict[str, Any]:
    data = _questions(CACHE / "questions-4096-1024", 4096, 1024, seed=8)
    return _off_and_on(
        "dedupe (each prompt 4 times)",
        work / "dedupe",
        lambda enabled, output: {
            "input": {"path": str(data), "prompt_column": "prompt", "id_column": "id"},
            "model": {"path": str(tiny_model()), "max_model_len": 512, "dtype": "float32"},
            "sampling": {"max_new_tokens": 64, "ignore_eos": True, "temperature": 0.8, "seed": 1},
            "optimize": {"dedupe_prompts": enabled},
            "output": {"path": output},
        },
    )


def _length_order(work: Path, prompts: int) -> dict[str, Any]:
    data = write_prompts(CACHE / f"prompts-{prompts}-8", prompts, 8)
    runs: dict[str, list[float]] = {"as-is": [], "by-length": []}
    # A B B A: this machine's speed drifts between runs; the order cancels a steady drift.
    for order in ("as-is", "by-length", "by-length", "as-is"):
        arguments = [str(data), str(tiny_model()), str(work / f"bare-{order}.parquet"), "512", "64", order]
        _, figures = run_script(["-m", "bench.bare_vllm", *arguments])
        runs[order].append(figures["generate_s"])
    # Compared on the engine's time: ordering can only change how vLLM batches.
    off, on = sum(runs["as-is"]) / 2, sum(runs["by-length"]) / 2
    ratio = off / on
    timings = {order: " and ".join(f"{seconds:.1f}s" for seconds in times) for order, times in runs.items()}
    print(f"ordering by length (bare vLLM): as-is {timings['as-is']}, by length {timings['by-length']}: {ratio:.2f}x")
    return {"off": {"generate_s": runs["as-is"]}, "on": {"generate_s": runs["by-length"]}, "speedup": ratio}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench options")
    parser.add_argument("--order-prompts", type=int, default=8192)
    arguments = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        prefix = _prefix_caching(Path(work))
        dedupe = _dedupe(Path(work))
        order = _length_order(Path(work), arguments.order_prompts)
    record(
        "options",
        {"prefix_caching": prefix, "dedupe_prompts": dedupe, "order_by_length": order},
        f"options: prefix caching {prefix['speedup']:.2f}x, dedupe (4 copies) {dedupe['speedup']:.2f}x, "
        f"ordering by length {order['speedup']:.2f}x",
    )
    return 0
