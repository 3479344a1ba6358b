"""Real tensor parallelism on the CPU build: a replica with tensor_parallel_size 2 (two vLLM CPU
workers, one core each) generates the same greedy text as one with tensor_parallel_size 1.

The tensor-parallel run is `submit.py run` in a process of its own (its own Ray, as a user runs it);
it starts three processes that import vLLM and mostly keeps one core busy, so it runs in the
background of the session (tests/cpu/background.py) while the test compares it, at its place, with
the same rows on the shared replicas."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cpu.background import background_scenario
from tests.cpu.conftest import read_rows, tiny_model_spec

REPO = Path(__file__).resolve().parents[2]


def _write_rows(directory: Path) -> dict:
    (directory / "in.jsonl").write_text(
        "".join(json.dumps({"id": f"r{index}", "prompt": f"the river {index} flows"}) + "\n" for index in range(8))
    )
    return {
        "input": {"path": str(directory / "in.jsonl"), "prompt_column": "prompt", "id_column": "id"},
        "prompt": {"format": "raw"},
        "sampling": {"max_new_tokens": 16, "do_sample": False, "ignore_eos": True},
    }


@background_scenario("tensor_parallel_2")
def tensor_parallel_2(work_dir: Path, tiny_model: Path) -> subprocess.CompletedProcess:
    job = {
        **_write_rows(work_dir),
        "model": {**tiny_model_spec(tiny_model), "tensor_parallel_size": 2},
        "output": {"path": str(work_dir / "tp2")},
    }
    (work_dir / "tp2.json").write_text(json.dumps(job))
    return subprocess.run(
        [sys.executable, "submit.py", "run", str(work_dir / "tp2.json")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "RAY_ADDRESS": ""},  # a Ray of its own, not the session's
    )


@pytest.mark.background_scenario("tensor_parallel_2")
def test_tensor_parallel_2_gives_the_same_greedy_completions_as_1(run_tiny, scenario_result, tmp_path):
    run_tiny(output={"path": str(tmp_path / "tp1")}, **_write_rows(tmp_path))
    assert scenario_result.returncode == 0, scenario_result.stdout[-2000:] + scenario_result.stderr[-4000:]
    tp2_output = Path(json.loads(Path(scenario_result.args[3]).read_text())["output"]["path"])
    tp1 = {row["id"]: row["completion"] for row in read_rows(str(tmp_path / "tp1" / "data"))}
    tp2 = {row["id"]: row["completion"] for row in read_rows(str(tp2_output / "data"))}
    assert len(tp1) == 8 and tp2 == tp1
    # The engine really ran with two workers.
    [log] = (tp2_output / "logs").glob("replica-*.log")
    assert "'tensor_parallel_size': 2" in log.read_text()
