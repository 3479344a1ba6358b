"""Planning from metadata, and the JSONL byte-range rule that gives every line to exactly one shard."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common.storage import Storage
from jobs.planner import plan_shards
from schemas import SpecError
from schemas.job import InputSpec, RetrySpec, StorageSpec
from workers.shard_io import read_shard

STORAGE = Storage(StorageSpec(), RetrySpec())


def _lines(count: int) -> list[str]:
    # Lines of very different lengths, some with multi-byte characters, one blank.
    return [json.dumps({"prompt": "ü😀x" * (index % 13) + str(index)}) if index != 7 else "" for index in range(count)]


@pytest.mark.parametrize("bytes_per_shard", [1024, 1500, 4096, 10**6])
def test_jsonl_byte_ranges_give_every_line_to_exactly_one_shard(tmp_path, bytes_per_shard):
    lines = _lines(400)
    (tmp_path / "in.jsonl").write_text("\n".join(lines))  # no newline after the last line
    spec = InputSpec(path=str(tmp_path / "in.jsonl"), prompt_column="prompt", bytes_per_shard=bytes_per_shard)
    shards = plan_shards(spec, STORAGE.expand_inputs(spec.path), STORAGE)
    prompts = [row.values["prompt"] for shard in shards for row in read_shard(shard, spec, STORAGE).rows]
    assert prompts == [json.loads(line)["prompt"] for line in lines if line]


def test_the_same_input_plans_the_same_shard_ids(tmp_path):
    (tmp_path / "in.jsonl").write_text("\n".join(_lines(300)))
    spec = InputSpec(path=str(tmp_path / "*.jsonl"), prompt_column="prompt", bytes_per_shard=2048)
    first = [shard.shard_id for shard in plan_shards(spec, STORAGE.expand_inputs(spec.path), STORAGE)]
    again = [shard.shard_id for shard in plan_shards(spec, STORAGE.expand_inputs(spec.path), STORAGE)]
    assert first == again and len(set(first)) == len(first) > 1


def test_parquet_row_groups_are_grouped_up_to_rows_per_shard(tmp_path):
    pq.write_table(
        pa.table({"prompt": [f"p{index}" for index in range(100)]}), tmp_path / "a.parquet", row_group_size=10
    )
    spec = InputSpec(path=str(tmp_path), prompt_column="prompt", rows_per_shard=25)
    shards = plan_shards(spec, STORAGE.expand_inputs(spec.path), STORAGE)
    assert [(shard.start, shard.end, shard.first_row) for shard in shards] == [
        (0, 3, 0),
        (3, 6, 30),
        (6, 9, 60),
        (9, 10, 90),
    ]
    ids = [row.row_id for shard in shards for row in read_shard(shard, spec, STORAGE).rows]
    assert ids == [f"a.parquet:{index}" for index in range(100)]


def test_a_missing_parquet_column_is_refused_before_any_generation(tmp_path):
    pq.write_table(pa.table({"text": ["a"]}), tmp_path / "a.parquet")
    spec = InputSpec(path=str(tmp_path / "a.parquet"), prompt_column="prompt")
    with pytest.raises(SpecError, match=r"a.parquet: column\(s\) \['prompt'\] named in the job are not in the file"):
        plan_shards(spec, STORAGE.expand_inputs(spec.path), STORAGE)


def test_a_truncated_parquet_file_is_refused_naming_the_file(tmp_path):
    pq.write_table(pa.table({"prompt": ["a"] * 100}), tmp_path / "a.parquet")
    data = (tmp_path / "a.parquet").read_bytes()
    (tmp_path / "a.parquet").write_bytes(data[: len(data) // 2])
    spec = InputSpec(path=str(tmp_path / "a.parquet"), prompt_column="prompt")
    with pytest.raises(SpecError, match=r"a\.parquet: not a readable Parquet file"):
        plan_shards(spec, STORAGE.expand_inputs(spec.path), STORAGE)
