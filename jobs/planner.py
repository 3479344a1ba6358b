"""Plans shards from file metadata only: Parquet footers (row groups) and JSONL sizes (byte ranges).

No row is read here, so planning a large input costs one footer read per Parquet file. The plan is
deterministic: the same files and settings give the same shards with the same ids.
"""

from __future__ import annotations

import posixpath

from common.storage import FileInfo, Storage
from schemas.errors import SpecError
from schemas.job import InputSpec
from schemas.shard import Shard


def input_root(pattern: str) -> str:
    """The part of the input path before any wildcard: file labels in row ids are relative to it."""
    parts = pattern.rstrip("/").split("/")
    for index, part in enumerate(parts):
        if any(char in part for char in "*?["):
            return "/".join(parts[:index])
    return "/".join(parts)


def file_label(url: str, root: str) -> str:
    if url == root or not url.startswith(root.rstrip("/") + "/"):
        return posixpath.basename(url)
    return url[len(root.rstrip("/")) + 1 :]


def _parquet_shards(info: FileInfo, label: str, input_spec: InputSpec, storage: Storage) -> list[Shard]:
    try:
        metadata = storage.parquet_metadata(info.url)
    except Exception as error:
        raise SpecError(f"{label}: not a readable Parquet file ({error})") from None
    columns = set(metadata.schema.names)
    needed = [
        column
        for column in (
            input_spec.prompt_column,
            input_spec.messages_column,
            input_spec.id_column,
            *input_spec.keep_columns,
        )
        if column is not None
    ]
    missing = [column for column in needed if column not in columns]
    if missing:
        raise SpecError(f"{label}: column(s) {missing} named in the job are not in the file; it has {sorted(columns)}")

    shards, group_start, rows_in_shard, first_row, row = [], 0, 0, 0, 0
    for group in range(metadata.num_row_groups):
        rows_in_shard += metadata.row_group(group).num_rows
        row += metadata.row_group(group).num_rows
        if rows_in_shard >= input_spec.rows_per_shard or group == metadata.num_row_groups - 1:
            if rows_in_shard:
                shards.append(
                    Shard(
                        file_url=info.url,
                        file_label=label,
                        format="parquet",
                        start=group_start,
                        end=group + 1,
                        first_row=first_row,
                        estimated_rows=rows_in_shard,
                    )
                )
            group_start, first_row, rows_in_shard = group + 1, row, 0
    return shards


def _jsonl_shards(info: FileInfo, label: str, input_spec: InputSpec) -> list[Shard]:
    step = input_spec.bytes_per_shard
    # Without reading rows the row count is unknown; size / a typical line length ranks shards.
    return [
        Shard(
            file_url=info.url,
            file_label=label,
            format="jsonl",
            start=start,
            end=min(start + step, info.size),
            estimated_rows=max(1, (min(start + step, info.size) - start) // 200),
        )
        for start in range(0, info.size, step)
    ]


def plan_shards(input_spec: InputSpec, files: list[FileInfo], storage: Storage) -> list[Shard]:
    root = input_root(input_spec.path)
    shards: list[Shard] = []
    for info in files:
        label = file_label(info.url, root)
        if input_spec.format_of(info.url) == "parquet":
            shards.extend(_parquet_shards(info, label, input_spec, storage))
        else:
            shards.extend(_jsonl_shards(info, label, input_spec))
    return shards
