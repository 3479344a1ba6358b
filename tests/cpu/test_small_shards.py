"""Small files cost what their rows cost: small shards travel to a replica together and run at once,
so their requests share the engine's batches, while each keeps its own id, record and files."""

from __future__ import annotations

import json

from schemas.shard import ErrorRetry, Shard, ShardRecord
from tests.cpu.conftest import manifest_records, read_rows


def _shard(name: str, rows: int, size: int = 100) -> Shard:
    return Shard(
        file_url=f"/in/{name}.jsonl", file_label=f"{name}.jsonl", file_size=size, file_version="v",
        format="jsonl", start=0, end=size, estimated_rows=rows,
    )  # fmt: skip


def test_small_shards_are_grouped_up_to_a_shards_rows_and_bytes_and_large_or_retried_ones_go_alone():
    from jobs.pending_shards import MAX_GROUP, PendingShards

    big, small = _shard("big", 1000), [_shard(f"s{index:03d}", 3) for index in range(200)]
    pending = PendingShards([big, *small])
    assert pending.take_group("node", rows_per_shard=1024, bytes_per_shard=10**6) == [big, *small[:8]]  # 1000 + 8 * 3
    assert pending.take_group("node", rows_per_shard=1024, bytes_per_shard=10**6) == small[8 : 8 + MAX_GROUP]
    # Bytes bound a group too: 100 bytes a shard, 250 allowed.
    assert len(pending.take_group("node", rows_per_shard=1024, bytes_per_shard=250)) == 2
    assert len(pending) == 200 - 8 - MAX_GROUP - 2
    previous = ShardRecord(
        shard_id="again", rows_in=3, rows_out=2, error_rows=1, reused_rows=0, prompt_tokens=0, completion_tokens=0,
        generate_started_at=0, generate_seconds=0, shard_seconds=0, started_at=0, finished_at=0, outputs=[],
        replica="r", attempts=1,
    )  # fmt: skip
    retried = _shard("again", 3).with_retry(ErrorRetry(stages=("generate",), previous=previous))
    pending = PendingShards([small[0], retried, small[1]])
    assert pending.take_group("node", 1024, 10**6) == [small[0]]
    assert pending.take_group("node", 1024, 10**6) == [retried]


def test_a_thousand_rows_in_many_small_files_run_together_and_commit_once_each(run_tiny, tmp_path):
    (tmp_path / "in").mkdir()
    ids = []
    for index in range(120):
        lines = [{"id": f"f{index:03d}-{row}", "prompt": f"file {index} row {row}"} for row in range(3)]
        ids += [line["id"] for line in lines]
        (tmp_path / "in" / f"part-{index:03d}.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    outcome = run_tiny(
        input={"path": str(tmp_path / "in"), "prompt_column": "prompt", "id_column": "id"},
        sampling={"max_new_tokens": 8, "ignore_eos": True},
        output={"path": str(tmp_path / "out"), "format": "jsonl"},
    )
    summary = outcome.summary
    assert summary.shards == summary.shards_run == summary.attempts == 120 and summary.rows_out == 360
    assert sorted(row["id"] for row in read_rows(str(tmp_path / "out" / "data"))) == sorted(ids)
    # One record and one data file per shard, as ever.
    records = manifest_records(tmp_path / "out")
    assert len(records) == 120
    assert len(list((tmp_path / "out" / "data").iterdir())) == 120
    # Together: more shards generated at one moment than 2 replicas x 2 shards in flight would allow.
    spans = [(record.generate_started_at, record.generate_started_at + record.generate_seconds) for record in records]
    at_once = max(sum(start <= moment < end for start, end in spans) for moment, _ in spans)
    assert at_once > 4, at_once
