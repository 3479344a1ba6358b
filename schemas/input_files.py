"""Which files are input, and how each is read: the one place that knows the extensions."""

from __future__ import annotations

import posixpath
from typing import Literal

FileFormat = Literal["parquet", "jsonl", "csv", "tsv", "arrow"]
Compression = Literal["gzip", "bz2", "zstd"]
# Files read through a JSON Lines copy made on each node that reads them (workers/json_lines_copy.py).
# jsonl: JSON Lines in another encoding than UTF-8 (input.encoding). arrow: rows of an Arrow IPC file,
# read through a Parquet copy each node makes of the columns read (workers/spill_cache.py).
CopiedFrom = Literal["json-array", "csv", "tsv", "jsonl", "arrow"]

PARQUET_SUFFIXES = (".parquet", ".pq")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
DELIMITED_SUFFIXES: dict[str, FileFormat] = {".csv": "csv", ".tsv": "tsv"}
# Arrow's IPC files, in its file format (Feather v2, Polars' write_ipc) or its stream format (a Hugging
# Face dataset's save_to_disk, Polars' write_ipc_stream): the first bytes tell which.
ARROW_IPC_SUFFIXES = (".arrow", ".feather", ".ipc")
# Said where a file is passed over for its name.
INPUT_NAMES = ".parquet/.pq, .jsonl/.ndjson/.json, .csv/.tsv (optionally .gz/.bz2/.zst) or .arrow/.feather/.ipc"
COMPRESSION_SUFFIXES: dict[str, Compression] = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd", ".zstd": "zstd"}


def compression_of(path: str) -> Compression | None:
    lowered = path.lower()
    for suffix, codec in COMPRESSION_SUFFIXES.items():
        if lowered.endswith(suffix):
            return codec
    return None


def format_from_name(path: str) -> FileFormat | None:
    """The format from the name (a compression suffix after a JSONL or CSV one is allowed), or None."""
    lowered = path.lower()
    if lowered.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if lowered.endswith(ARROW_IPC_SUFFIXES):
        return "arrow"
    codec = compression_of(lowered)
    if codec is not None:
        lowered = lowered[: lowered.rfind(".")]
    if lowered.endswith(JSONL_SUFFIXES):
        return "jsonl"
    return next((kind for suffix, kind in DELIMITED_SUFFIXES.items() if lowered.endswith(suffix)), None)


def may_hold_json_array(path: str) -> bool:
    """A `.json` file may be one JSON document holding an array of records (Alpaca's and ShareGPT's
    datasets) rather than JSON Lines: its first bytes tell (opens_json_array)."""
    return path.lower().endswith(".json")


def opens_json_array(head: bytes) -> bool:
    """Whether a file's first bytes open a JSON array, not JSON Lines' first object."""
    return head.removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n")[:1] == b"["


def is_hidden(relative_path: str) -> bool:
    """Spark, Hive and Hadoop mark bookkeeping files (_SUCCESS, .crc, _temporary/) by a leading _ or ."""
    return any(part.startswith(("_", ".")) for part in relative_path.split("/") if part)


def hive_partition(relative_path: str) -> dict[str, str]:
    """`date=2026-11-25/lang=en/part-0.parquet` -> {"date": "2026-11-25", "lang": "en"}. Values stay
    text, with Hive's %XX escapes undone."""
    from urllib.parse import unquote

    values = {}
    for folder in posixpath.dirname(relative_path).split("/"):
        key, equals, value = folder.partition("=")
        if equals and key:
            values[unquote(key)] = unquote(value)
    return values
