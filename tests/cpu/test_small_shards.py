"""Small files cost what their rows cost: small shards are packed, and a pack is read, generated,
written and committed as one shard whose record names its members (jobs/packing.py); what is still
small after that travels to a replica together and runs at once, so its requests share the engine's
batches."""

from __future__ import annotations

import gzip
import json

import pytest

from schemas.shard import TO_END_OF_FILE, ErrorRetry, Shard, ShardPack, ShardRecord
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
    retried = _shard("again", 3).with_retry(ErrorRetry(stages=("generate",), previous=_previous("again")))
    pending = PendingShards([small[0], retried, small[1]])
    assert pending.take_group("node", 1024, 10**6) == [small[0]]
    assert pending.take_group("node", 1024, 10**6) == [retried]


def _previous(shard_id: str) -> ShardRecord:
    return ShardRecord(
        shard_id=shard_id, rows_in=3, rows_out=2, error_rows=1, reused_rows=0, prompt_tokens=0, completion_tokens=0,
        generate_started_at=0, generate_seconds=0, shard_seconds=0, started_at=0, finished_at=0, outputs=[],
        replica="r", attempts=1,
    )  # fmt: skip


def test_small_shards_are_packed_in_order_up_to_a_shards_rows_bytes_and_members_and_large_ones_stay_alone():
    from jobs.packing import MOST_MEMBERS, pack_small_shards

    big, small = _shard("big", 1000), [_shard(f"s{index:03d}", 3) for index in range(300)]
    packed = pack_small_shards([big, *small], rows_per_shard=1024, bytes_per_shard=10**6)
    assert packed[0] == big  # more than half a shard's rows: as it was
    assert [pack.members for pack in packed[1:]] == [tuple(small[:MOST_MEMBERS]), tuple(small[MOST_MEMBERS:])]
    assert [len(pack.members) for pack in pack_small_shards(small[:25], rows_per_shard=30, bytes_per_shard=10**6)] == [
        10,
        10,
        5,
    ]
    assert {len(pack.members) for pack in pack_small_shards(small[:6], rows_per_shard=1024, bytes_per_shard=250)} == {2}
    # A Parquet shard is weighed by its file's size: the last 100 rows of a file of 10 MB stay alone.
    tail = _shard("big", 100)._replace(format="parquet", file_url="/in/big.parquet", file_size=10**7)
    assert pack_small_shards([tail, *small[:2]], 1024, 4 * 2**20) == [tail, ShardPack(tuple(small[:2]))]
    # A pack of one is the shard itself; a shard running its error rows again is never packed.
    retried = small[1].with_retry(ErrorRetry(stages=("generate",), previous=_previous(small[1].shard_id)))
    packed = pack_small_shards([small[0], retried], 1024, 10**6)
    assert sorted(packed, key=lambda shard: shard.shard_id) == [small[0], retried]


def test_a_compressed_file_is_packed_only_when_it_is_one_shard_whole():
    from jobs.packing import pack_small_shards

    def gzipped(name: str, end: int) -> Shard:
        return _shard(name, 3)._replace(file_url=f"/in/{name}.jsonl.gz", compression="gzip", end=end)

    whole, part, plain = gzipped("whole", TO_END_OF_FILE), gzipped("part", 300), _shard("plain", 3)
    packed = pack_small_shards([whole, part, plain], rows_per_shard=1024, bytes_per_shard=10**6)
    assert packed == [part, ShardPack((whole, plain))]  # part shares its node's copy with the file's other shards


def test_a_packs_id_depends_only_on_its_members_and_is_recognised_as_herds_own():
    from jobs.committed import RECORD_FILE

    members = tuple(_shard(f"part-{index:05d}", 3) for index in range(3))
    pack = ShardPack(members)
    assert pack.shard_id == ShardPack(tuple(_shard(f"part-{index:05d}", 3) for index in range(3))).shard_id
    assert pack.shard_id != ShardPack(members[:2]).shard_id
    assert pack.shard_id.startswith("pack_part-00000_jsonl-0-3-")
    assert RECORD_FILE.fullmatch(f"{pack.shard_id}.json")
    assert pack.estimated_rows == 9 and pack.file_label == "3 small shards (part-00000.jsonl to part-00002.jsonl)"


def _small_files(folder, first: int, count: int) -> list[str]:
    folder.mkdir(exist_ok=True)
    ids = []
    for index in range(first, first + count):
        lines = [{"id": f"f{index:03d}-{row}", "prompt": f"file {index} row {row}"} for row in range(3)]
        ids += [line["id"] for line in lines]
        (folder / f"part-{index:03d}.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return ids


def test_small_files_run_as_one_pack_committed_once_and_new_files_never_run_its_members_again(run_tiny, tmp_path):
    ids = _small_files(tmp_path / "in", 0, 120)
    job = {
        "input": {"path": str(tmp_path / "in"), "prompt_column": "prompt", "id_column": "id", "new_files": "process"},
        "sampling": {"max_new_tokens": 8, "ignore_eos": True},
        "output": {"path": str(tmp_path / "out"), "format": "jsonl"},
    }
    summary = run_tiny(**job).summary
    # Counted as the shards planned; run as one: one call, one record naming them, one data file.
    assert summary.shards == summary.shards_run == 120 and summary.attempts == 1 and summary.rows_out == 360
    (record,) = manifest_records(tmp_path / "out")
    assert record.shard_id.startswith("pack_part-000_jsonl-0-120-")
    assert len(record.members) == 120 and record.rows_in == 360
    assert len(list((tmp_path / "out" / "data").iterdir())) == 1
    assert sorted(row["id"] for row in read_rows(str(tmp_path / "out" / "data"))) == sorted(ids)

    # New files sort among the old ones' names; the committed members are skipped, not repacked.
    ids += _small_files(tmp_path / "in", 120, 30)
    again = run_tiny(**job).summary
    assert (again.this_run.shards_run, again.this_run.rows_in, again.shards_skipped) == (30, 90, 120)
    assert len(manifest_records(tmp_path / "out")) == 2
    assert sorted(row["id"] for row in read_rows(str(tmp_path / "out" / "data"))) == sorted(ids)
    assert run_tiny(**job).summary.this_run.shards_run == 0  # nothing left: resumes find every member committed


@pytest.mark.parametrize("bad_file", ["part-004.jsonl.gz", "part-004.parquet"])
def test_a_pack_with_an_unreadable_file_runs_again_as_its_shards_and_only_that_file_fails(run_tiny, tmp_path, bad_file):
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = _small_files(tmp_path / "in", 0, 8)
    (tmp_path / "in" / "part-004.jsonl").unlink()
    ids = [row_id for row_id in ids if not row_id.startswith("f004-")]
    if bad_file.endswith(".gz"):
        good = gzip.compress(b"".join(b'{"id": "g%d", "prompt": "gzipped %d"}\n' % (row, row) for row in range(3)))
        # A sound header and size, and a stream that does not inflate: found only when read.
        (tmp_path / "in" / bad_file).write_bytes(good[:12] + bytes(len(good) - 20) + good[-8:])
    else:
        pq.write_table(pa.table({"id": ["p0", "p1"], "prompt": ["a", "b"]}), tmp_path / "in" / bad_file)
        data = (tmp_path / "in" / bad_file).read_bytes()
        footer = int.from_bytes(data[-8:-4], "little")
        # A sound footer (planned from it) over pages that do not decode: found only when read.
        (tmp_path / "in" / bad_file).write_bytes(data[:4] + b"\xff" * (len(data) - footer - 12) + data[-footer - 8 :])
    outcome = run_tiny(
        input={"path": str(tmp_path / "in"), "prompt_column": "prompt", "id_column": "id"},
        sampling={"max_new_tokens": 4},
        output={"path": str(tmp_path / "out")},
    )
    (failed,) = outcome.summary.shards_failed
    assert failed.startswith("part-004_") and bad_file in failed.split(": ", 1)[1], failed
    assert outcome.summary.shards_run == 7
    assert sorted(row["id"] for row in read_rows(str(tmp_path / "out" / "data"))) == sorted(ids)
    assert all(not record.members for record in manifest_records(tmp_path / "out"))  # each committed on its own


def test_small_parquet_files_whose_kept_column_types_differ_are_each_written_with_their_own(run_tiny, tmp_path):
    """pandas writes a column of whole numbers as int64, and of numbers with gaps as double: a pack
    of such files cannot share a data file, so it runs as its files, each written as it is typed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"prompt": ["a", "b"], "score": [1, 2]}), tmp_path / "in" / "day-1.parquet")
    pq.write_table(pa.table({"prompt": ["c", "d"], "score": [0.5, None]}), tmp_path / "in" / "day-2.parquet")
    outcome = run_tiny(
        input={"path": str(tmp_path / "in"), "prompt_column": "prompt", "keep_columns": ["score"]},
        sampling={"max_new_tokens": 2},
        output={"path": str(tmp_path / "out")},
    )
    assert outcome.exit_code == 0 and outcome.summary.shards_run == 2
    assert all(not record.members for record in manifest_records(tmp_path / "out"))
    types = {pq.read_schema(path).field("score").type for path in (tmp_path / "out" / "data").iterdir()}
    assert types == {pa.int64(), pa.float64()}


def test_small_files_with_openai_result_lines_are_not_packed_but_still_run_together(run_tiny, tmp_path):
    ids = _small_files(tmp_path / "in", 0, 120)
    outcome = run_tiny(
        input={"path": str(tmp_path / "in"), "prompt_column": "prompt", "id_column": "id"},
        sampling={"max_new_tokens": 8, "ignore_eos": True},
        output={"path": str(tmp_path / "out"), "format": "openai"},
    )
    summary = outcome.summary
    assert summary.shards == summary.shards_run == summary.attempts == 120 and summary.rows_out == 360
    assert sorted(row["custom_id"] for row in read_rows(str(tmp_path / "out" / "data"))) == sorted(ids)
    # One record and one data file per shard.
    records = manifest_records(tmp_path / "out")
    assert len(records) == 120 and not any(record.members for record in records)
    assert len(list((tmp_path / "out" / "data").iterdir())) == 120
    # Together: more shards generated at one moment than 2 replicas x 2 shards in flight would allow.
    spans = [(record.generate_started_at, record.generate_started_at + record.generate_seconds) for record in records]
    at_once = max(sum(start <= moment < end for start, end in spans) for moment, _ in spans)
    assert at_once > 4, at_once
