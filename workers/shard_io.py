"""Reading one shard's rows straight from storage, and encoding output and error rows.

A bad row becomes an error row here (with its file, row and the reason); it never stops the shard.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from common.storage import Storage
from schemas.job import InputSpec
from schemas.shard import Shard
from workers.json_lines_copy import copy_error_reason
from workers.request_formats import PromptSource, RequestError, requests_in_line
from workers.spill_cache import arrow_copy, jsonl_copy, row_group_copy

_JSONL_TAIL_CHUNK = 64 * 1024


@dataclass
class InputRow:
    row_id: str
    position: int  # parquet: row index in the file; jsonl: byte offset of the line
    values: dict[str, Any]
    source: PromptSource | None = None  # set for request files; plain rows are rendered from values
    overrides: dict[str, Any] = field(default_factory=dict)  # the request's own sampling parameters
    requested_model: str | None = None  # a request's model: the job's, by any name, or one of its adapters


@dataclass
class ShardRows:
    rows: list[InputRow] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    column_types: dict[str, pa.DataType] = field(default_factory=dict)  # as the input file has them (Parquet)


def error_row(shard: Shard, row_id: str, position: int, stage: str, reason: str) -> dict[str, Any]:
    return {"id": row_id, "file": shard.file_label, "row": position, "stage": stage, "reason": reason}


def _row_id(shard: Shard, position: int, values: dict[str, Any], input_spec: InputSpec) -> str:
    if input_spec.id_column is not None:
        value = values.get(input_spec.id_column)
        if value is not None and value != "":
            return str(value)
    return f"{shard.file_label}:{position}"


class ShardInputError(Exception):
    """The shard's file cannot be read as planned (truncated, missing, rewritten): retrying won't help."""


def read_shard(shard: Shard, input_spec: InputSpec, storage: Storage) -> ShardRows:
    if shard.format == "parquet":
        result = _read_parquet(shard, input_spec, storage)
    else:
        result = _read_jsonl(shard, input_spec, storage)
    # Checked after reading: rows of a file rewritten while the job runs are never mixed with the
    # rows its other shards read before.
    now = storage.version_of(shard.file_url)
    if now != shard.file_version:
        raise ShardInputError(
            f"{shard.file_label} changed since the job was planned (version {shard.file_version}, now {now}): "
            "its shards fail rather than mix two versions of the file; re-run the job"
        )
    return _check_id_column(shard, result, input_spec)


def _check_id_column(shard: Shard, result: ShardRows, input_spec: InputSpec) -> ShardRows:
    """A row whose id column is missing gets an error rather than a made-up id that could collide."""
    if input_spec.id_column is None:
        return result
    kept = []
    for row in result.rows:
        if row.values.get(input_spec.id_column) in (None, ""):
            result.errors.append(
                error_row(shard, row.row_id, row.position, "read", f"{input_spec.id_column}: the id is missing")
            )
        else:
            kept.append(row)
    result.rows = kept
    return result


def _add_row(result: ShardRows, shard: Shard, position: int, values: dict[str, Any], input_spec: InputSpec) -> None:
    # Partition values from the path, unless the file has a column of the same name.
    values = {**shard.partition, **values} if shard.partition else values
    result.rows.append(InputRow(_row_id(shard, position, values, input_spec), position, values))


def _read_parquet(shard: Shard, input_spec: InputSpec, storage: Storage) -> ShardRows:
    if shard.whole_row_groups:
        batches = _parquet_rows(storage, shard.file_url, shard.row_groups, shard.columns, 0, shard.end - shard.start)
    else:
        copy = str(arrow_copy(shard, storage) if shard.copied_from == "arrow" else row_group_copy(shard, storage))
        groups, skip = _groups_holding(copy, shard.start - shard.group_first_row, shard.end - shard.group_first_row)
        batches = _parquet_rows(storage, copy, groups, shard.columns, skip, shard.end - shard.start)
    result = ShardRows(column_types={field.name: field.type for field in batches[0].schema} if batches else {})
    binary = [name for name, column_type in result.column_types.items() if _holds_bytes(column_type)]
    position = shard.start
    for batch in batches:
        for values in _batch_rows(batch, shard, position, result):
            if values is not None:
                _add_row(result, shard, position, _bytes_as_text(values, binary), input_spec)
            position += 1
    return result


def _holds_bytes(column_type: pa.DataType) -> bool:
    return pa.types.is_binary(column_type) or pa.types.is_large_binary(column_type) or column_type == pa.binary_view()


def _bytes_as_text(values: dict[str, Any], binary: list[str]) -> dict[str, Any]:
    """Impala, Hive and older Spark write text as Parquet binary without marking it as text: such a
    value is read as the text its bytes encode (UTF-8). Other bytes stay bytes, which a prompt refuses
    by name; written back, a kept column keeps its binary type either way."""
    for name in binary:
        value = values.get(name)
        if isinstance(value, bytes):
            with contextlib.suppress(UnicodeDecodeError):
                values[name] = value.decode("utf-8")
    return values


def _groups_holding(path: str, first: int, end: int) -> tuple[tuple[int, int], int]:
    """The row groups of a local Parquet file that hold rows [first, end), and how many rows of the
    first of them come before `first`."""
    metadata = pq.ParquetFile(path).metadata
    low, skip, row = None, 0, 0
    for group in range(metadata.num_row_groups):
        rows = metadata.row_group(group).num_rows
        if low is None and row + rows > first:
            low, skip = group, first - row
        row += rows
        if row >= end:
            return (low if low is not None else group, group + 1), skip
    return (low if low is not None else metadata.num_row_groups, metadata.num_row_groups), skip


def _parquet_rows(
    storage: Storage, url: str, row_groups: tuple[int, int], columns: tuple[str, ...], skip: int, take: int
) -> list[pa.RecordBatch]:
    """Rows [skip, skip + take) of the row groups, counted from the first group's first row. Pages
    are fetched as they are decoded (no pre-buffering), so a row group is never held whole."""

    def read(handle: Any) -> list[pa.RecordBatch]:
        kept: list[pa.RecordBatch] = []
        position = 0
        parquet = pq.ParquetFile(handle, pre_buffer=False, buffer_size=1 << 20)
        for batch in parquet.iter_batches(
            batch_size=1024, row_groups=list(range(*row_groups)), columns=list(columns), use_threads=False
        ):
            low, high = max(skip - position, 0), min(skip + take - position, batch.num_rows)
            if high > low:
                kept.append(batch.slice(low, high - low))
            position += batch.num_rows
            if position >= skip + take:
                break
        return kept

    return storage.read_stream(url, read)


def _batch_rows(batch: pa.RecordBatch, shard: Shard, first: int, result: ShardRows) -> list[dict[str, Any] | None]:
    """The batch's rows as dicts; a row whose values Python cannot hold (a date out of range, say)
    becomes an error row, and None in its place."""
    try:
        return batch.to_pylist()
    except (pa.ArrowException, ValueError, OverflowError):
        pass
    rows: list[dict[str, Any] | None] = []
    for offset in range(batch.num_rows):
        try:
            rows.append(batch.slice(offset, 1).to_pylist()[0])
        except (pa.ArrowException, ValueError, OverflowError) as error:
            position = first + offset
            reason = f"a value cannot be read: {type(error).__name__}: {error}"
            result.errors.append(error_row(shard, f"{shard.file_label}:{position}", position, "read", reason))
            rows.append(None)
    return rows


def _read_jsonl(shard: Shard, input_spec: InputSpec, storage: Storage) -> ShardRows:
    """A shard owns the lines that start inside [start, end); it reads past `end` to finish its last
    one. A compressed file, a JSON array or a CSV is read from the node's JSON Lines copy of it."""
    if shard.read_from_copy:
        copy = jsonl_copy(shard, storage, input_spec.encoding)
        source, size = str(copy), copy.stat().st_size
    else:
        source, size = shard.file_url, shard.file_size
    end = min(shard.end, size)
    read_from = max(0, shard.start - 1)
    if read_from >= end:
        return ShardRows()
    data = storage.read_bytes(source, read_from, end)
    if shard.start > 0:
        # Skip the line that began before the range (it belongs to the previous shard), keeping the
        # newline at start-1 so that a line starting exactly at `start` is ours.
        cut = data.find(b"\n")
        if cut == -1:
            return ShardRows()
        data_start = read_from + cut + 1
        data = data[cut + 1 :]
    else:
        data_start = 0
    if data_start >= end:
        return ShardRows()
    data = _finish_last_line(data, source, end, size, storage)

    result = ShardRows()
    offset = data_start
    for raw_line in data.split(b"\n"):
        position = offset
        offset += len(raw_line) + 1
        if position >= end:
            break
        if not raw_line.strip():
            continue
        _parse_line(result, shard, position, raw_line, input_spec)
    return result


_JSON_KINDS = {
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "true or false",
    list: "an array",
    type(None): "null",
}


def _parse_line(result: ShardRows, shard: Shard, position: int, raw_line: bytes, input_spec: InputSpec) -> None:
    fallback_id = f"{shard.file_label}:{position}"
    try:
        # Bytes, so that json detects a UTF-8 BOM; a CRLF line's \r is whitespace to it.
        values = json.loads(raw_line)
    except (ValueError, RecursionError, UnicodeDecodeError) as error:
        # ValueError: malformed, or an integer of more than 4,300 digits; RecursionError: nested too deep.
        reason = f"malformed JSON line: {type(error).__name__}: {str(error)[:200]}"
        result.errors.append(error_row(shard, fallback_id, position, "read", reason))
        return
    not_copied = copy_error_reason(values) if shard.read_from_copy and isinstance(values, dict) else None
    if not_copied is not None:
        result.errors.append(error_row(shard, fallback_id, position, "read", not_copied))
        return
    if not isinstance(values, dict):
        reason = f"expected a JSON object, got {_JSON_KINDS.get(type(values), type(values).__name__)}"
        result.errors.append(error_row(shard, fallback_id, position, "read", reason))
        return
    broken = _text_not_unicode(values)
    if broken is not None:
        field, text = broken
        reason = (
            f"{field}: the text is valid JSON but not valid Unicode (a lone surrogate escape near "
            f"{text!r}); write the character as a surrogate pair or as UTF-8"
        )
        result.errors.append(error_row(shard, fallback_id, position, "read", reason))
        return
    if input_spec.is_request_file:
        _append_requests(result, shard, position, values, input_spec.format)
    else:
        _add_row(result, shard, position, values, input_spec)


def _text_not_unicode(value: Any, path: str = "") -> tuple[str, str] | None:
    """The field (dotted path) of the first string that cannot be encoded as UTF-8, and the string
    around the bad character: JSON's "\\ud800" escape decodes to a lone surrogate, which no tokenizer takes."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            return path or "(value)", value[max(0, error.start - 20) : error.end + 20]
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _text_not_unicode(item, f"{path}.{key}" if path else str(key))
        if found is not None:
            return found
    return None


def _append_requests(result: ShardRows, shard: Shard, position: int, line: dict[str, Any], input_format: str) -> None:
    try:
        requests = requests_in_line(line, input_format)
    except Exception as error:  # noqa: BLE001 - whatever a malformed request makes parsing raise is its row's error
        fallback_id = line.get("custom_id") if isinstance(line.get("custom_id"), str) else None
        reason = str(error) if isinstance(error, RequestError) else f"{type(error).__name__}: {error}"
        result.errors.append(
            error_row(shard, fallback_id or f"{shard.file_label}:{position}", position, "read", reason)
        )
        return
    for index, request in enumerate(requests):
        row_id = request.row_id or f"{shard.file_label}:{position}" + (f".{index}" if len(requests) > 1 else "")
        result.rows.append(InputRow(row_id, position, {}, request.source, request.overrides, request.model))


def _finish_last_line(data: bytes, source: str, end: int, size: int, storage: Storage) -> bytes:
    """Reads on from `end` to the end of the line in progress; never past the file's last byte (an
    S3 range read beyond it is an error, not an empty answer)."""
    position = end
    while not data.endswith(b"\n") and position < size:
        more = storage.read_bytes(source, position, min(position + _JSONL_TAIL_CHUNK, size))
        if not more:
            break
        newline = more.find(b"\n")
        if newline != -1:
            return data + more[: newline + 1]
        data += more
        position += len(more)
    return data
