"""Real tensor parallelism on the CPU build: a replica with tensor_parallel_size 2 (two vLLM CPU
workers, one core each) generates the same greedy text as one with tensor_parallel_size 1."""

from __future__ import annotations

import json

from jobs.replicas import ReplicaPool
from jobs.runner import run_job
from schemas import parse_job
from tests.cpu.conftest import read_rows, tiny_model_spec


def test_tensor_parallel_2_gives_the_same_greedy_completions_as_1(run_tiny, tiny_model, tmp_path):
    (tmp_path / "in.jsonl").write_text(
        "".join(json.dumps({"prompt": f"the river {index} flows"}) + "\n" for index in range(8))
    )
    sections = {
        "input": {"path": str(tmp_path / "in.jsonl"), "prompt_column": "prompt"},
        "sampling": {"max_new_tokens": 16, "do_sample": False, "ignore_eos": True},
    }
    run_tiny(output={"path": str(tmp_path / "tp1")}, **sections)
    job = parse_job(
        {
            **sections,
            "model": {**tiny_model_spec(tiny_model), "tensor_parallel_size": 2},
            "output": {"path": str(tmp_path / "tp2")},
        }
    )
    pool = ReplicaPool(job.model, job, size=1)
    try:
        outcome = run_job(job, pool=pool)
    finally:
        pool.shutdown()
    assert outcome.exit_code == 0
    tp1 = {row["id"]: row["completion"] for row in read_rows(str(tmp_path / "tp1" / "data"))}
    tp2 = {row["id"]: row["completion"] for row in read_rows(str(tmp_path / "tp2" / "data"))}
    assert len(tp1) == 8 and tp2 == tp1
