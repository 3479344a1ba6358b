"""Running a committed shard's error rows again (run --retry-errors): which rows, and the earlier
error rows that stay as they were.

The shard's input is read again and narrowed to the rows whose errors are of the stages asked for;
the earlier error file is read back so that the other error rows are written again unchanged. The
new record names the earlier data files, the data file of the rows that now succeed, and a new error
file: committed like any shard, so every row is still in exactly one place.
"""

from __future__ import annotations

from typing import Any

from common.output_codec import decode_errors
from common.storage import Storage
from schemas.shard import AnyShard, ErrorRetry, OutputObject, Shard
from workers.shard_io import ShardRows


def earlier_data_outputs(shard: AnyShard) -> list[OutputObject]:
    assert shard.retry is not None
    return [output for output in shard.retry.previous.outputs if output.folder != "errors"]


def narrow_to_retried(
    reads: list[tuple[Shard, ShardRows]], retry: ErrorRetry, storage: Storage
) -> list[dict[str, Any]]:
    """Leaves in each read only the rows whose earlier errors are of the stages to retry; returns the
    earlier error rows that are kept as they are. `reads`: the shard's rows, or each member's of a
    pack, whose error rows are told apart by their file."""
    label = reads[0][0].file_label if len(reads) == 1 else None  # OpenAI error lines do not say it
    earlier = [
        row
        for output in retry.previous.outputs
        if output.folder == "errors"
        for row in decode_errors(storage.read_bytes(output.url), output.url, label)
    ]
    again = [error for error in earlier if error["stage"] in retry.stages]
    by_position = {(error["file"], error["id"], error["row"]) for error in again}
    by_id = {error["id"] for error in again if error["row"] is None}

    for shard, read in reads:

        def chosen(row_id: str, position: int, file: str = shard.file_label) -> bool:
            return (file, row_id, position) in by_position or row_id in by_id

        read.rows = [row for row in read.rows if chosen(row.row_id, row.position)]
        read.errors = [error for error in read.errors if chosen(error["id"], error["row"])]
    return [error for error in earlier if error["stage"] not in retry.stages]
