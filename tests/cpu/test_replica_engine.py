"""How a replica runs its engine (real vLLM, tiny Llama): shards in flight share the running batch,
and the engine's processes run at normal priority."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from tests.cpu.conftest import started_replica, tiny_model_spec
from tests.cpu.process_tree import command_line, descendants, niceness


def _planned_shards(job: Any) -> list[Any]:
    """The job's shards, in file order."""
    from common.storage import Storage
    from jobs.planner import list_inputs, plan_shards

    storage = Storage(job.storage, job.retry)
    return sorted(plan_shards(job.input, list_inputs(storage, job).files, storage), key=lambda shard: shard.start)


def _shard_and_job(tmp_path: Path, tiny_model: Path, name: str, rows: int, new_tokens: int) -> tuple[Any, Any]:
    from schemas import parse_job

    source = tmp_path / f"{name}.jsonl"
    source.write_text("".join(json.dumps({"prompt": f"{name} question {index}"}) + "\n" for index in range(rows)))
    job = parse_job(
        {
            "input": {"path": str(source), "prompt_column": "prompt", "rows_per_shard": rows},
            "model": tiny_model_spec(tiny_model),
            "prompt": {"format": "raw"},
            "sampling": {"max_new_tokens": new_tokens, "ignore_eos": True, "temperature": 0.8, "seed": 3},
            "output": {"path": str(tmp_path / f"{name}-out")},
        }
    )
    (shard,) = _planned_shards(job)
    return shard, job


def _generate_end(result: Any) -> float:
    return result.generate_started_at + result.generate_seconds


def test_a_short_shard_finishes_inside_a_long_one_on_the_same_replica(tiny_pool, tiny_model, tmp_path):
    """With one LLM.generate per shard under a lock, the short shard would wait for the long one."""
    import ray

    long_shard, long_job = _shard_and_job(tmp_path, tiny_model, "long", rows=48, new_tokens=400)
    short_shard, short_job = _shard_and_job(tmp_path, tiny_model, "short", rows=4, new_tokens=4)
    replica, _ = started_replica(tiny_pool)

    long_ref = replica.process.remote(long_shard, long_job)
    time.sleep(1.0)  # reading and rendering 48 rows takes milliseconds: the long shard is generating
    short_ref = replica.process.remote(short_shard, short_job)
    long_result, short_result = ray.get([long_ref, short_ref])

    assert long_result.rows_out == 48 and short_result.rows_out == 4
    assert short_result.completion_tokens == 4 * 4
    assert long_result.generate_started_at < short_result.generate_started_at < _generate_end(long_result)
    assert _generate_end(short_result) < _generate_end(long_result)
    # The short shard's generation was a small part of the long one's, not queued behind it.
    assert short_result.generate_seconds < long_result.generate_seconds / 2


def test_the_replica_hosts_its_cpu_engine_in_its_own_process_at_normal_priority(tiny_pool):
    """Ray starts workers at nice 15; the engine would lose CPU to anything else on the node. On CPU
    with TP 1 the engine core runs inside the replica: no engine process is spawned (each would
    import torch and vLLM again, ~14 s of every start on 2 cores)."""
    _, replica_pid = started_replica(tiny_pool)
    started = descendants(replica_pid)
    assert [pid for pid in started if command_line(pid).startswith("VLLM::")] == []
    assert {pid: niceness(pid) for pid in [replica_pid, *started]} == dict.fromkeys([replica_pid, *started], 0)


def _dedupe_job_and_shards(tmp_path: Path, tiny_model: Path, prompts: list[str], new_tokens: int) -> tuple[Any, list]:
    """A dedupe job over `prompts` in 5-row shards, and its shards in file order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from schemas import parse_job

    pq.write_table(pa.table({"prompt": prompts}), tmp_path / "in.parquet", row_group_size=5)
    job = parse_job(
        {
            "input": {"path": str(tmp_path / "in.parquet"), "prompt_column": "prompt", "rows_per_shard": 5},
            "model": tiny_model_spec(tiny_model),
            "sampling": {"max_new_tokens": new_tokens, "ignore_eos": True, "temperature": 0.7, "seed": 4},
            "optimize": {"dedupe_prompts": True},
            "output": {"path": str(tmp_path / "out")},
        }
    )
    return job, _planned_shards(job)


def test_dedupe_answers_copies_in_later_shards_from_the_replicas_earlier_generations(tiny_pool, tiny_model, tmp_path):
    import ray

    # Rows cycle through 3 prompts; 5-row shards: rows 0-4, 5-9 and 10-11.
    prompts = [f"cache check {tmp_path.name} prompt {index % 3}" for index in range(12)]
    job, shards = _dedupe_job_and_shards(tmp_path, tiny_model, prompts, new_tokens=6)
    replica, _ = started_replica(tiny_pool)
    results = [ray.get(replica.process.remote(shard, job)) for shard in shards]
    # The first shard generates its 3 prompts once; the later shards' rows are all answered from it.
    assert [result.reused_rows for result in results] == [2, 5, 2]
    assert [result.rows_out for result in results] == [5, 5, 2]


def test_dedupe_waits_for_a_prompt_another_shard_in_flight_is_generating(tiny_pool, tiny_model, tmp_path):
    import ray

    from tests.cpu.conftest import read_rows

    prompts = [f"in flight {tmp_path.name} prompt {index % 3}" for index in range(10)]
    job, (first, second) = _dedupe_job_and_shards(tmp_path, tiny_model, prompts, new_tokens=300)
    replica, _ = started_replica(tiny_pool)
    # The second shard claims its prompts while the first is still generating them (300 tokens).
    results = ray.get([replica.process.remote(first, job), replica.process.remote(second, job)])
    assert results[1].generate_started_at < _generate_end(results[0])
    assert sum(result.reused_rows for result in results) == 10 - 3
    rows = read_rows(str(tmp_path / "out" / "data"))
    answers = {(prompts[index], row["completion"]) for index, row in enumerate(rows)}
    assert len(rows) == 10 and len(answers) == 3


def test_a_cpu_replica_runs_its_engine_core_inside_unless_the_drivers_environment_says_otherwise(monkeypatch):
    from jobs.replicas import _actor_environment
    from schemas.job import ModelSpec

    variable = "VLLM_ENABLE_V1_MULTIPROCESSING"
    monkeypatch.delenv(variable, raising=False)
    assert _actor_environment(ModelSpec(path="/m"), "cpu")[variable] == "0"
    # vLLM's own layout where its worker processes are needed (TP > 1) or the GPU is fed best by it.
    assert variable not in _actor_environment(ModelSpec(path="/m", tensor_parallel_size=2), "cpu")
    assert variable not in _actor_environment(ModelSpec(path="/m"), "gpu")
    monkeypatch.setenv(variable, "1")
    assert _actor_environment(ModelSpec(path="/m"), "cpu")[variable] == "1"


def test_the_collector_pauses_inside_and_what_lived_through_it_is_frozen_after(monkeypatch):
    import gc

    from workers.engine import collector_paused_then_heap_frozen

    assert gc.isenabled()
    frozen_before = gc.get_freeze_count()
    try:
        with collector_paused_then_heap_frozen():
            assert not gc.isenabled()
            made_inside = [[index] for index in range(1000)]
        assert gc.isenabled()
        assert gc.get_freeze_count() >= frozen_before + len(made_inside)
        # A caller that had paused the collector itself keeps it paused.
        gc.disable()
        with collector_paused_then_heap_frozen():
            pass
        assert not gc.isenabled()
        gc.enable()
        # Once vLLM is imported, a second engine of the process freezes nothing more.
        monkeypatch.setitem(sys.modules, "vllm.entrypoints.llm", object())
        frozen = gc.get_freeze_count()
        with collector_paused_then_heap_frozen():
            assert gc.isenabled()
            made_later = [[index] for index in range(1000)]
        # (Other threads of the session may free frozen objects meanwhile: the count may only fall.)
        assert gc.get_freeze_count() <= frozen and len(made_later) == len(made_inside)
    finally:
        gc.unfreeze()
        gc.enable()
