"""JSON Lines as herd writes and reads its own files: data and error files, the manifest index.

One record per line, and only "\\n" ends a line. Text is written as it is (not escaped to ASCII), so
U+0085, U+2028 and U+2029 can stand inside a string: `str.splitlines()` cuts a line at each of them,
and any model can generate them (or copy them from an input column).

What is written is strict JSON (RFC 8259), which DuckDB, Spark, jq and browsers read: a value kept
from a typed (Parquet) input that JSON has no type for is written as text in the usual form: a time as
ISO 8601, a duration as an ISO 8601 duration, bytes as base64, a decimal as its exact digits; a NaN
or an infinity (which Python's json would write as the bare words NaN and Infinity, which those
readers refuse) as null, as pandas' to_json does.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import json
import math
from typing import Any


def encode_jsonl(records: list[dict[str, Any]]) -> bytes:
    return "".join(json_text(record) + "\n" for record in records).encode("utf-8")


def json_text(value: Any) -> str:
    """`value` as strict JSON on one line."""
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False, default=_as_json)
    except ValueError:  # a NaN or an infinity somewhere (rare: checked only when there is one)
        return json.dumps(_finite(value), ensure_ascii=False, allow_nan=False, default=_as_json)


def jsonl_lines(text: str) -> list[str]:
    """The records' lines, without blank ones."""
    return [line for line in text.split("\n") if line.strip()]


def decode_jsonl(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in jsonl_lines(data.decode("utf-8"))]


def _as_json(value: Any) -> Any:
    if isinstance(value, datetime.date | datetime.time):  # datetime is a date
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return _iso_duration(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, decimal.Decimal):
        return str(value)  # exact: as a JSON number most readers would round it to a double
    return str(value)


def _iso_duration(value: datetime.timedelta) -> str:
    """ISO 8601, as pandas writes durations: "P2DT0H0M1.5S"."""
    if value < datetime.timedelta(0):
        return "-" + _iso_duration(-value)
    hours, rest = divmod(value.seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    fraction = f".{value.microseconds:06d}".rstrip("0") if value.microseconds else ""
    return f"P{value.days}DT{hours}H{minutes}M{seconds}{fraction}S"


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value
