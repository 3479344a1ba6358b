"""The manifest's checkpoints: commits compacted as a run goes, read back exactly, on disk and on S3,
at a bounded number of requests."""

from __future__ import annotations

import contextlib
import threading
from collections import Counter

import pytest

from common.layout import OutputLayout
from common.storage import Storage, join
from jobs.committed import _SCHEMA, ManifestWriter, commit_shard, committed_shards, write_checkpoint
from schemas.job import RetrySpec, StorageSpec
from schemas.shard import OutputObject, ShardRecord
from tests.cpu.flaky_s3_proxy import FlakyS3Proxy


def _record(index: int, *, error_rows: int = 0, attempts: int = 1, root: str = "/out") -> ShardRecord:
    shard_id = f"part-{index:03d}_parquet-{index * 100}-{index * 100 + 100}-{index:010x}"
    outputs = [
        OutputObject(url=f"{root}/data/{shard_id}.0123456789ab.parquet", bytes=1000 + index, rows=100 - error_rows)
    ]
    if error_rows:
        outputs.append(OutputObject(url=f"{root}/errors/{shard_id}.0123456789ab.jsonl", bytes=80, rows=error_rows))
    return ShardRecord(
        shard_id=shard_id,
        rows_in=100,
        rows_out=100 - error_rows,
        error_rows=error_rows,
        reused_rows=index % 3,
        prompt_tokens=900 + index,
        completion_tokens=6400 + index,
        generate_started_at=1_764_000_000.125 + index,
        generate_seconds=1.0 / (index + 3),
        shard_seconds=1.25,
        started_at=1_764_000_000.0 + index,
        finished_at=1_764_000_001.5 + index,
        outputs=outputs,
        replica="node-1:replica-2",
        error_reasons={"generate: prompt too long (N tokens)": error_rows, "read: not UTF-8": 0} if error_rows else {},
        attempts=attempts,
    )


@pytest.fixture(params=["disk", "s3"])
def output(request, tmp_path) -> tuple[Storage, OutputLayout]:
    if request.param == "disk":
        return Storage(StorageSpec(), RetrySpec()), OutputLayout(str(tmp_path / "out"))
    endpoint = request.getfixturevalue("s3_endpoint")
    return Storage(StorageSpec(endpoint_url=endpoint), RetrySpec()), OutputLayout(f"s3://herd-test/{tmp_path.name}")


def _manifest_names(storage: Storage, layout: OutputLayout) -> list[str]:
    return storage.list_names(layout.manifest_dir)


def test_a_checkpoint_holds_every_field_of_shard_record():
    assert _SCHEMA.names == list(ShardRecord.model_fields)


def _checkpoints(storage: Storage, layout: OutputLayout) -> list[str]:
    return [name for name in _manifest_names(storage, layout) if name.startswith("_checkpoint-")]


def test_records_read_back_from_checkpoints_equal_the_records_committed(output):
    storage, layout = output
    records = [_record(index, error_rows=index % 4) for index in range(25)]
    writer = ManifestWriter(storage, layout, every=10)
    for record in records:
        writer.commit(record)
    # Two checkpoints of 10, and the last 5 still as record files.
    names = _manifest_names(storage, layout)
    assert _checkpoints(storage, layout) == ["_checkpoint-000001-000001.parquet", "_checkpoint-000002-000002.parquet"]
    assert sorted(name for name in names if name.endswith(".json")) == sorted(
        f"{record.shard_id}.json" for record in records[20:]
    )
    committed = committed_shards(storage, layout)
    assert len(committed) == 25 and sorted(committed) == sorted(record.shard_id for record in records)
    assert {record.shard_id: record for record in committed.values()} == {record.shard_id: record for record in records}
    assert committed[records[7].shard_id] == records[7]
    values = committed.values()  # read as often as wanted, as a dict's values are
    assert len(values) == 25 and list(values) == list(values) and records[3] in values

    writer.finish()  # the two checkpoints and the 5 record files, merged into one
    assert _manifest_names(storage, layout) == ["_checkpoint-000001-000003.parquet"]
    assert sorted(committed_shards(storage, layout).values(), key=lambda record: record.shard_id) == sorted(
        records, key=lambda record: record.shard_id
    )


def test_checkpoints_merge_as_a_run_goes_so_that_a_long_run_leaves_few_objects(tmp_path):
    storage, layout = Storage(StorageSpec(), RetrySpec()), OutputLayout(str(tmp_path / "out"))
    writer = ManifestWriter(storage, layout, every=2, per_merge=3, merged_levels=2)
    records = [_record(index) for index in range(41)]
    for record in records:
        writer.commit(record)
    # Checkpoints 1 to 20 of 2 records were written: every 3 merged into one of 6 (1-3, 4-6, ...),
    # every 3 of those into one of 18 (the largest kind); left beside those: 19, 20 and a record.
    assert _checkpoints(storage, layout) == [
        "_checkpoint-000001-000009.parquet",
        "_checkpoint-000010-000018.parquet",
        "_checkpoint-000019-000019.parquet",
        "_checkpoint-000020-000020.parquet",
    ]
    assert len(_manifest_names(storage, layout)) == 5
    assert len(committed_shards(storage, layout)) == 41
    writer.finish()
    assert _checkpoints(storage, layout) == [
        "_checkpoint-000001-000009.parquet",
        "_checkpoint-000010-000018.parquet",
        "_checkpoint-000019-000021.parquet",  # 19, 20 and the record, as number 21
    ]
    assert _manifest_names(storage, layout) == _checkpoints(storage, layout)
    committed = committed_shards(storage, layout)
    assert sorted(committed) == sorted(record.shard_id for record in records)
    assert committed.total("prompt_tokens") == sum(record.prompt_tokens for record in records)


def test_sums_selection_and_named_files_come_from_the_columns(tmp_path):
    storage, layout = Storage(StorageSpec(), RetrySpec()), OutputLayout(str(tmp_path / "out"))
    records = [_record(index, error_rows=index % 2) for index in range(6)]
    write_checkpoint(storage, layout, 1, 1, records)
    committed = committed_shards(storage, layout)
    assert committed.total("completion_tokens") == sum(record.completion_tokens for record in records)
    assert committed.with_error_rows() == {record.shard_id for record in records if record.error_rows}
    chosen = committed.only([records[1].shard_id, records[4].shard_id, "never-planned-0-1-0000000000"])
    assert sorted(chosen) == sorted([records[1].shard_id, records[4].shard_id])
    assert chosen.total("rows_in") == 200
    assert ("errors", records[1].outputs[1].url.rsplit("/", 1)[-1]) in committed.output_names()
    assert len(committed.output_names()) == sum(len(record.outputs) for record in records)
    everything = committed.only([record.shard_id for record in reversed(records)])
    assert list(everything) == list(committed) and everything.total("rows_in") == 600
    assert not committed.only([])


def test_reasons_files_and_replicas_are_counted_from_the_columns_as_record_by_record(tmp_path):
    """What the summary and report.html compute over a million shards, in Arrow, against the same
    figures computed one record at a time."""
    from jobs.run_stats import per_replica

    storage, layout = Storage(StorageSpec(), RetrySpec()), OutputLayout(str(tmp_path / "out"))
    reasons = [{"generate: too long": 2}, {"read: bad JSON": 1, "generate: too long": 1}, {}]
    records = [
        _record(index, error_rows=sum(reasons[index % 3].values())).model_copy(
            update={"error_reasons": reasons[index % 3], "replica": f"node-{index % 4}:replica"}
        )
        for index in range(30)
    ]
    write_checkpoint(storage, layout, 1, 1, records[:13])  # two checkpoints: columns of several chunks
    write_checkpoint(storage, layout, 2, 2, records[13:])
    committed = committed_shards(storage, layout)
    assert committed.table.column("replica").num_chunks == 2
    expected: Counter[str] = Counter()
    for record in records:
        expected.update(record.error_reasons)
    assert committed.error_reasons() == expected == Counter({"generate: too long": 30, "read: bad JSON": 10})
    urls = [output.url for record in records for output in record.outputs]
    errors = [url for url in urls if "/errors/" in url]
    assert committed.output_urls() == urls and committed.output_urls("errors") == errors
    assert committed.output_urls("errors", at_most=3) == errors[:: -(-len(errors) // 3)]
    assert committed.output_urls("data", at_most=100) == [url for url in urls if "/data/" in url]
    grouped = per_replica(committed.table, ["shard_id", "finished_at"])
    assert list(grouped) == [f"node-{number}:replica" for number in range(4)]
    for name, own in grouped.items():
        assert own.column_names == ["shard_id", "finished_at"]
        assert own.column("shard_id").to_pylist() == [record.shard_id for record in records if record.replica == name]


def test_a_record_file_beats_a_checkpoint_and_a_later_checkpoint_an_earlier_one(output):
    storage, layout = output
    first, second = _record(1), _record(2)
    write_checkpoint(storage, layout, 1, 4, [first, second])
    retried = _record(1, attempts=2)  # --retry-errors rewrote shard 1's record: a checkpoint ending later
    write_checkpoint(storage, layout, 5, 5, [retried])
    rewritten = _record(2, attempts=3)  # and shard 2's, committed since, as a record file
    commit_shard(storage, layout, rewritten)
    committed = committed_shards(storage, layout)
    assert len(committed) == 2
    assert committed[first.shard_id] == retried and committed[second.shard_id] == rewritten


def test_a_driver_dead_between_a_checkpoint_and_its_deletes_leaves_each_shard_once(tmp_path):
    storage, layout = Storage(StorageSpec(), RetrySpec()), OutputLayout(str(tmp_path / "out"))
    records = [_record(index) for index in range(4)]
    for record in records:
        commit_shard(storage, layout, record)
    write_checkpoint(storage, layout, 1, 1, records)  # ... and the driver died before deleting the record files
    committed = committed_shards(storage, layout)
    assert sorted(committed) == sorted(record.shard_id for record in records)
    ManifestWriter(storage, layout).finish()  # the next run's end compacts them into a new checkpoint
    assert _manifest_names(storage, layout) == [
        "_checkpoint-000001-000001.parquet",
        "_checkpoint-000002-000002.parquet",
    ]
    assert sorted(committed_shards(storage, layout)) == sorted(committed)


def test_an_output_with_the_old_index_is_read_from_its_records_and_compacted_at_the_end_of_a_run(tmp_path):
    storage, layout = Storage(StorageSpec(), RetrySpec()), OutputLayout(str(tmp_path / "out"))
    records = [_record(index) for index in range(3)]
    for record in records:
        commit_shard(storage, layout, record)
    # What herd wrote before checkpoints: an index that may be stale (here it misses a record).
    storage.write_text(join(layout.manifest_dir, "_index.jsonl"), records[0].model_dump_json() + "\n")
    assert sorted(committed_shards(storage, layout)) == sorted(record.shard_id for record in records)
    ManifestWriter(storage, layout).finish()
    assert _manifest_names(storage, layout) == ["_checkpoint-000001-000001.parquet"]
    assert list(committed_shards(storage, layout).values()) == records


def test_reading_a_checkpointed_manifest_on_s3_costs_one_listing_and_one_get_per_object(s3_endpoint, tmp_path):
    layout = OutputLayout(f"s3://herd-test/{tmp_path.name}")
    writer = ManifestWriter(Storage(StorageSpec(endpoint_url=s3_endpoint), RetrySpec()), layout, every=100)
    for index in range(250):
        writer.commit(_record(index))
    with FlakyS3Proxy(s3_endpoint, 0.0) as proxy:
        committed = committed_shards(Storage(StorageSpec(endpoint_url=proxy.endpoint), RetrySpec()), layout)
    assert len(committed) == 250
    kinds = Counter("LIST" if method == "GET" and "list-type" in path else method for method, path in proxy.log)
    # 2 checkpoints and 50 record files, read in 1 listing: not 250 records' worth of requests.
    assert kinds == {"LIST": 1, "GET": 52}, kinds


def test_deleting_many_files_on_s3_takes_one_request_per_thousand_and_a_missing_one_is_no_error(s3_endpoint, tmp_path):
    storage = Storage(StorageSpec(endpoint_url=s3_endpoint), RetrySpec())
    folder = f"s3://herd-test/{tmp_path.name}"
    urls = [join(folder, f"{index:05d}.json") for index in range(2100)]
    for url in urls[:50]:
        storage.write_text(url, "{}")
    storage.write_text(join(folder, "kept.json"), "{}")
    import s3fs

    with contextlib.suppress(FileExistsError):  # a second bucket: one request each
        s3fs.S3FileSystem(endpoint_url=s3_endpoint, skip_instance_cache=True).mkdir("herd-test-other")
    elsewhere = f"s3://herd-test-other/{tmp_path.name}/gone.json"
    storage.write_text(elsewhere, "{}")
    with FlakyS3Proxy(s3_endpoint, 0.0) as proxy:
        Storage(StorageSpec(endpoint_url=proxy.endpoint), RetrySpec()).delete([*urls, elsewhere])
    assert [method for method, _ in proxy.log] == ["POST", "POST", "POST", "POST"]  # 3 for 2,100 keys, 1 elsewhere
    assert storage.list_names(folder) == ["kept.json"] and not storage.exists(elsewhere)


def test_a_checkpoint_that_cannot_be_written_leaves_the_commits_as_record_files_and_fails_no_shard(tmp_path):
    class NoCheckpoints(Storage):
        def write_atomic(self, url: str, data: bytes) -> int:
            if "/_checkpoint-" in url:
                raise PermissionError(f"{url}: denied")
            return super().write_atomic(url, data)

    storage, layout = NoCheckpoints(StorageSpec(), RetrySpec()), OutputLayout(str(tmp_path / "out"))
    writer = ManifestWriter(storage, layout, every=3)
    records = [_record(index) for index in range(7)]
    for record in records:
        writer.commit(record)  # raises nothing: each shard was committed by its record file
    assert _checkpoints(storage, layout) == []
    assert sorted(committed_shards(storage, layout)) == sorted(record.shard_id for record in records)


def test_a_reader_that_lists_before_a_running_driver_compacts_lists_again_and_misses_no_commit(tmp_path):
    storage, layout = Storage(StorageSpec(), RetrySpec()), OutputLayout(str(tmp_path / "out"))
    writer = ManifestWriter(storage, layout, every=4)
    records = [_record(index) for index in range(3)]
    for record in records:
        writer.commit(record)
    listed: list[str] = []

    class CompactsAfterTheFirstListing(Storage):
        def list_names(self, directory: str) -> list[str]:
            names = super().list_names(directory)
            if not listed:  # the driver's next commit makes a checkpoint and deletes the 3 records
                listed.extend(names)
                writer.commit(_record(3))
            return names

    committed = committed_shards(CompactsAfterTheFirstListing(StorageSpec(), RetrySpec()), layout)
    assert len(listed) == 3 and sorted(committed) == sorted(_record(index).shard_id for index in range(4))


def test_shards_that_finish_together_are_committed_at_once_on_s3_each_with_its_own_outcome(tmp_path, s3_endpoint):
    records = [_record(index) for index in range(10)]
    refused = f"{records[3].shard_id}.json"
    # Every record's write waits here until 8 are written together: one at a time, it would break.
    together = threading.Barrier(8, timeout=30)

    class OneRecordRefused(Storage):
        def write_atomic(self, url: str, data: bytes) -> int:
            if url.endswith(".json") and int(url.split("-")[-1].removesuffix(".json"), 16) < 8:
                together.wait()
            if url.endswith(refused):
                raise PermissionError(f"{url}: denied")
            return super().write_atomic(url, data)

    storage = OneRecordRefused(StorageSpec(endpoint_url=s3_endpoint), RetrySpec())
    layout = OutputLayout(f"s3://herd-test/{tmp_path.name}")
    writer = ManifestWriter(storage, layout, every=4)
    errors = writer.commit_all(records)
    outcomes = [type(error).__name__ if error else None for error in errors]
    assert outcomes == [None] * 3 + ["PermissionError"] + [None] * 6
    # The 9 that landed: two checkpoints of 4, as many as one at a time makes, and one record file waiting.
    assert _checkpoints(storage, layout) == ["_checkpoint-000001-000001.parquet", "_checkpoint-000002-000002.parquet"]
    assert len([name for name in _manifest_names(storage, layout) if name.endswith(".json")]) == 1
    landed = sorted(record.shard_id for index, record in enumerate(records) if index != 3)
    assert sorted(committed_shards(storage, layout)) == landed
    writer.finish()
    assert sorted(committed_shards(storage, layout)) == landed


def _pack_record(members: list[str]) -> ShardRecord:
    return _record(900).model_copy(update={"shard_id": "pack_part-000-0-2-00000000aa", "members": members})


def test_a_pack_record_commits_each_of_its_members_for_lookups_selection_and_counts(output):
    storage, layout = output
    alone, pack = _record(1), _pack_record(["part-007_jsonl-0-end-0000000007", "part-008_jsonl-0-end-0000000008"])
    writer = ManifestWriter(storage, layout, every=2)
    writer.commit_all([alone, pack])  # into a checkpoint: members read back from its column
    writer.commit(_record(2))  # and one left as a record file
    committed = committed_shards(storage, layout)
    assert "part-008_jsonl-0-end-0000000008" in committed and "part-009_jsonl-0-end-0000000009" not in committed
    assert committed["part-007_jsonl-0-end-0000000007"] == pack
    assert list(committed.only(["part-008_jsonl-0-end-0000000008", alone.shard_id])) == [alone.shard_id, pack.shard_id]
    assert len(committed) == 3 and committed.planned_shards() == 4


def test_a_checkpoint_written_before_packs_reads_as_records_without_members(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from jobs.committed import records_table

    storage, layout = Storage(StorageSpec(), RetrySpec()), OutputLayout(str(tmp_path / "out"))
    records = [_record(index) for index in range(3)]
    older = records_table(records).drop_columns(["members"])
    path = tmp_path / "out" / "manifest" / "_checkpoint-000001-000001.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(older, path)
    assert "members" not in pq.read_schema(path).names
    committed = committed_shards(storage, layout)
    assert list(committed.values()) == records and committed.planned_shards() == 3
    assert committed.table.schema == _SCHEMA and isinstance(committed.table, pa.Table)
