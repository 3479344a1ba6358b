"""JSON Lines as herd writes and reads its own files: data and error files, the manifest index.

One record per line, and only "\\n" ends a line. Text is written as it is (not escaped to ASCII), so
U+0085, U+2028 and U+2029 can stand inside a string: `str.splitlines()` cuts a line at each of them,
and any model can generate them (or copy them from an input column).
"""

from __future__ import annotations

import json
from typing import Any


def encode_jsonl(records: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(record, ensure_ascii=False, default=str) + "\n" for record in records).encode("utf-8")


def jsonl_lines(text: str) -> list[str]:
    """The records' lines, without blank ones."""
    return [line for line in text.split("\n") if line.strip()]


def decode_jsonl(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in jsonl_lines(data.decode("utf-8"))]
