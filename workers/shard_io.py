"""Reading one shard's rows straight from storage, and encoding output and error rows.

A bad row becomes an error row here (with its file, row and the reason); it never stops the shard.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from common.storage import Storage
from schemas.job import InputSpec
from schemas.results import ERROR_COLUMNS
from schemas.shard import Shard
from workers.request_formats import PromptSource, RequestError, requests_in_line

_JSONL_TAIL_CHUNK = 64 * 1024


@dataclass
class InputRow:
    row_id: str
    position: int  # parquet: row index in the file; jsonl: byte offset of the line
    values: dict[str, Any]
    source: PromptSource | None = None  # set for request files; plain rows are rendered from values
    overrides: dict[str, Any] = field(default_factory=dict)  # the request's own sampling parameters


@dataclass
class ShardRows:
    rows: list[InputRow] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)


def error_row(shard: Shard, row_id: str, position: int, stage: str, reason: str) -> dict[str, Any]:
    return {"id": row_id, "file": shard.file_label, "row": position, "stage": stage, "reason": reason}


def _row_id(shard: Shard, position: int, values: dict[str, Any], input_spec: InputSpec) -> str:
    if input_spec.id_column is not None:
        value = values.get(input_spec.id_column)
        if value is not None and value != "":
            return str(value)
    return f"{shard.file_label}:{position}"


def read_shard(shard: Shard, input_spec: InputSpec, storage: Storage) -> ShardRows:
    if shard.format == "parquet":
        return _read_parquet(shard, input_spec, storage)
    return _read_jsonl(shard, input_spec, storage)


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


def _read_parquet(shard: Shard, input_spec: InputSpec, storage: Storage) -> ShardRows:
    table = storage.read_parquet_row_groups(shard.file_url, list(range(shard.start, shard.end)))
    result = ShardRows()
    for offset, values in enumerate(table.to_pylist()):
        position = shard.first_row + offset
        result.rows.append(InputRow(_row_id(shard, position, values, input_spec), position, values))
    return _check_id_column(shard, result, input_spec)


def _read_jsonl(shard: Shard, input_spec: InputSpec, storage: Storage) -> ShardRows:
    """A shard owns the lines that start inside [start, end); it reads past `end` to finish its last one."""
    read_from = max(0, shard.start - 1)
    data = storage.read_bytes(shard.file_url, read_from, shard.end)
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
    if data_start >= shard.end:
        return ShardRows()
    data = _finish_last_line(data, shard, storage)

    result = ShardRows()
    offset = data_start
    for raw_line in data.split(b"\n"):
        position = offset
        offset += len(raw_line) + 1
        if position >= shard.end:
            break
        if not raw_line.strip():
            continue
        fallback_id = f"{shard.file_label}:{position}"
        try:
            values = json.loads(raw_line)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            result.errors.append(error_row(shard, fallback_id, position, "read", f"malformed JSON line: {error}"))
            continue
        if not isinstance(values, dict):
            result.errors.append(
                error_row(shard, fallback_id, position, "read", f"expected a JSON object, got {type(values).__name__}")
            )
            continue
        if input_spec.is_request_file:
            _append_requests(result, shard, position, values, input_spec.format)
        else:
            result.rows.append(InputRow(_row_id(shard, position, values, input_spec), position, values))
    return _check_id_column(shard, result, input_spec)


def _append_requests(result: ShardRows, shard: Shard, position: int, line: dict[str, Any], input_format: str) -> None:
    try:
        requests = requests_in_line(line, input_format)
    except RequestError as error:
        fallback_id = line.get("custom_id") if isinstance(line.get("custom_id"), str) else None
        result.errors.append(
            error_row(shard, fallback_id or f"{shard.file_label}:{position}", position, "read", str(error))
        )
        return
    for index, request in enumerate(requests):
        row_id = request.row_id or f"{shard.file_label}:{position}" + (f".{index}" if len(requests) > 1 else "")
        result.rows.append(InputRow(row_id, position, {}, request.source, request.overrides))


def _finish_last_line(data: bytes, shard: Shard, storage: Storage) -> bytes:
    position = shard.end
    while not data.endswith(b"\n"):
        more = storage.read_bytes(shard.file_url, position, position + _JSONL_TAIL_CHUNK)
        if not more:
            break
        newline = more.find(b"\n")
        if newline != -1:
            return data + more[: newline + 1]
        data += more
        position += len(more)
    return data


def _column(values: list[Any]) -> pa.Array:
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        # Mixed types across rows (a number here, text there): keep them all, as JSON text.
        return pa.array([None if value is None else json.dumps(value, ensure_ascii=False) for value in values])


def encode_rows(rows: list[dict[str, Any]], columns: list[str], file_format: str) -> bytes:
    if file_format != "parquet":
        return encode_jsonl([{name: row.get(name) for name in columns} for row in rows])
    table = pa.table({name: _column([row.get(name) for row in rows]) for name in columns})
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def encode_errors(errors: list[dict[str, Any]], file_format: str) -> bytes:
    return encode_rows(errors, list(ERROR_COLUMNS), file_format)


def encode_jsonl(records: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(record, ensure_ascii=False, default=str) + "\n" for record in records).encode("utf-8")
