"""Small files cost what their rows cost: the same rows as 1,000 JSONL files of 3 rows and as one file,
run as a user runs them (`submit.py run`, the tiny Llama on vLLM CPU, one replica), interleaved over
rounds. Reports the wall-time ratio (target within 1.15x) and the fixed cost each extra shard adds, and
where the difference lies: each run's wall split into start-up, generating and after (from its manifest)."""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import CACHE, WORDS, herd_phases, record, run_herd, tiny_model


def _rows(count: int, seed: int = 3) -> list[dict]:
    rng = random.Random(seed)
    return [
        {"id": f"r{index:05d}", "prompt": " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 24)))}
        for index in range(count)
    ]


def _write(directory: Path, rows: list[dict], files: int) -> Path:
    """`rows` split over `files` JSONL files (in name order), written once."""
    if (directory / ".complete").exists():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    per_file = len(rows) // files
    for index in range(files):
        chunk = rows[index * per_file : (index + 1) * per_file]
        (directory / f"part-{index:05d}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in chunk))
    (directory / ".complete").write_text("")
    return directory


def _median_phases(runs: list[dict[str, float]]) -> dict[str, float]:
    return {phase: statistics.median(run[phase] for run in runs) for phase in runs[0]}


def _said(phase: str) -> str:
    return phase.removesuffix("_s").replace("_", "-")  # start_up_s: start-up


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench smallfiles")
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--rows-per-file", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    arguments = parser.parse_args(argv)
    rows = _rows(arguments.files * arguments.rows_per_file)
    inputs = {
        "one file": _write(CACHE / f"smallfiles-1x{len(rows)}", rows, 1),
        "small files": _write(CACHE / f"smallfiles-{arguments.files}x{arguments.rows_per_file}", rows, arguments.files),
    }
    walls: dict[str, list[float]] = {name: [] for name in inputs}
    phases: dict[str, list[dict[str, float]]] = {name: [] for name in inputs}
    shards: dict[str, int] = {}
    run_as: dict[str, int] = {}  # records committed: a pack of small shards is one
    with tempfile.TemporaryDirectory() as work:
        for round_index in range(arguments.rounds):
            for name, directory in inputs.items():
                job = {
                    "input": {"path": str(directory), "prompt_column": "prompt", "id_column": "id"},
                    "model": {"path": str(tiny_model()), "max_model_len": 512, "dtype": "float32"},
                    "sampling": {"max_new_tokens": arguments.max_new_tokens, "ignore_eos": True, "seed": 1},
                    "output": {"path": str(Path(work) / f"{name.replace(' ', '-')}-{round_index}")},
                    "resources": {"replicas": 1},
                }
                launched = time.time()
                wall, summary, records = run_herd(job, Path(work) / f"job-{round_index}-{name.replace(' ', '-')}")
                assert summary["rows_out"] == len(rows), summary
                walls[name].append(wall)
                phases[name].append(herd_phases(launched, wall, records))
                shards[name], run_as[name] = summary["shards"], len(records)
                split = ", ".join(f"{_said(phase)} {seconds:.1f}s" for phase, seconds in phases[name][-1].items())
                print(
                    f"round {round_index + 1}: {name}: {wall:.1f}s ({split}), {summary['shards']} shards run as "
                    f"{len(records)}",
                    flush=True,
                )
    one, small = statistics.median(walls["one file"]), statistics.median(walls["small files"])
    median_phases = {name: _median_phases(runs) for name, runs in phases.items()}
    ratio = small / one
    # Round by round (the two runs of a round are minutes apart at most, so a drift of this machine's
    # speed cancels in their ratio), beside the ratio of the medians.
    round_ratios = [pair[1] / pair[0] for pair in zip(walls["one file"], walls["small files"], strict=True)]
    fixed = (small - one) / max(1, shards["small files"] - shards["one file"])
    record(
        "smallfiles",
        {
            "rows": len(rows),
            "files": arguments.files,
            "max_new_tokens": arguments.max_new_tokens,
            "wall_s": walls,
            "median_phases_s": median_phases,
            "shards": shards,
            "run_as": run_as,
            "ratio": ratio,
            "round_ratios": round_ratios,
            "median_round_ratio": statistics.median(round_ratios),
            "fixed_cost_per_shard_s": fixed,
            "target_ratio": 1.15,
        },
        f"smallfiles: {arguments.files} files of {arguments.rows_per_file} rows take {ratio:.2f}x the time of one "
        f"file of the same {len(rows)} rows (median of {arguments.rounds} rounds: {small:.1f}s vs {one:.1f}s; "
        f"target 1.15x; round by round {min(round_ratios):.2f}x-{max(round_ratios):.2f}x, median "
        f"{statistics.median(round_ratios):.2f}x); each extra shard costs {fixed * 1000:.0f} ms; "
        + ", ".join(
            f"{_said(phase)} {median_phases['small files'][phase]:.1f}s vs {median_phases['one file'][phase]:.1f}s"
            for phase in median_phases["one file"]
        ),
    )
    return 0
