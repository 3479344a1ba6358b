"""Running a committed shard's error rows again (run --retry-errors): which rows, and the earlier
error rows that stay as they were.

The shard's input is read again and narrowed to the rows whose errors are of the stages asked for;
the earlier error file is read back so that the other error rows are written again unchanged. The
new record names the earlier data files, the data file of the rows that now succeed, and a new error
file: committed like any shard, so every row is still in exactly one place.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pyarrow.parquet as pq

from common.storage import Storage
from schemas.job import JobSpec
from schemas.shard import OutputObject, Shard
from workers.shard_io import ShardRows


def _stored_errors(url: str, job: JobSpec, storage: Storage, shard: Shard) -> list[dict[str, Any]]:
    """An error file's rows in herd's own shape (id, file, row, stage, reason)."""
    data = storage.read_bytes(url)
    if url.endswith(".parquet"):
        return pq.read_table(io.BytesIO(data)).to_pylist()
    lines = [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]
    if job.output.format != "openai":
        return lines
    # OpenAI error lines keep the custom_id and the stage (in the code), not the row.
    return [
        {
            "id": line["custom_id"],
            "file": shard.file_label,
            "row": None,
            "stage": line["error"]["code"].removeprefix("herd_").removesuffix("_error"),
            "reason": line["error"]["message"],
        }
        for line in lines
    ]


def _is_error_file(output: OutputObject) -> bool:
    return output.url.rstrip("/").rsplit("/", 2)[-2] == "errors"


def earlier_data_outputs(shard: Shard) -> list[OutputObject]:
    assert shard.retry is not None
    return [output for output in shard.retry.previous.outputs if not _is_error_file(output)]


def narrow_to_retried(read: ShardRows, shard: Shard, job: JobSpec, storage: Storage) -> list[dict[str, Any]]:
    """Leaves in `read` only the rows whose earlier errors are of the stages to retry; returns the
    earlier error rows that are kept as they are."""
    assert shard.retry is not None
    earlier = [
        row
        for output in shard.retry.previous.outputs
        if _is_error_file(output)
        for row in _stored_errors(output.url, job, storage, shard)
    ]
    again = [error for error in earlier if error["stage"] in shard.retry.stages]
    by_position = {(error["id"], error["row"]) for error in again}
    by_id = {error["id"] for error in again if error["row"] is None}

    def chosen(row_id: str, position: int) -> bool:
        return (row_id, position) in by_position or row_id in by_id

    read.rows = [row for row in read.rows if chosen(row.row_id, row.position)]
    read.errors = [error for error in read.errors if chosen(error["id"], error["row"])]
    return [error for error in earlier if error["stage"] not in shard.retry.stages]
