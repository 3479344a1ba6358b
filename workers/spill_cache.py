"""A node's local copies of inputs that cannot be read a shard at a time from storage.

Two cases, both of which would otherwise cost one full read (or decompression) per shard:
- a Parquet row group larger than a shard: its pages can only be decoded from the group's start, so
  a slice in the middle would read everything before it. The first replica on the node to need the
  group streams its columns once into a local Parquet file with small row groups; every slice of it,
  on any replica of the node, then reads a few of those.
- a compressed JSONL file: decompression can only start at the file's beginning. It is decompressed
  once into a local file, and its shards read their byte ranges from there. A JSON array file and a
  CSV are copied the same way, as JSON Lines: their records can only be found from their start.
- an Arrow IPC file: its record batches are found one after another (a stream holds no index) and may
  be of any size. The columns read are copied once into a local Parquet file with small row groups,
  which keeps their types, and every shard reads its rows from there.

Bytes fetched from storage: once per node that touches the group or file. Memory: one batch while
writing, the shard while reading. Copies are shared through a lock file (the first replica writes,
the others wait for it) and are deleted once no replica has used them for an hour.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from pathlib import Path
from typing import Any

from common.node_cache import cache_root, exclusive
from common.storage import Storage
from schemas.shard import Shard
from workers.json_lines_copy import COPY_VERSION

# Rows per row group of a spilled copy: a slice reads at most one group's worth more than it needs.
SPILL_GROUP_ROWS = 1024
_UNUSED_FOR_S = 3600.0


def spill_directory() -> Path:
    return cache_root() / "spill"


def _key(shard: Shard, what: str) -> str:
    return hashlib.sha256(f"{shard.file_url}|{shard.file_version}|{what}".encode()).hexdigest()[:24]


def _shared_copy(name: str, write: Any) -> Path:
    """The local copy called `name`, written by `write(temporary_path)` unless a replica of this
    node already did."""
    directory = spill_directory()
    target = directory / name
    with exclusive(directory / f"{name}.lock"):
        if not target.exists():
            _delete_unused(directory)
            temporary = directory / f".{name}.{uuid.uuid4().hex}.tmp"
            try:
                write(str(temporary))
                os.replace(temporary, target)
            finally:
                temporary.unlink(missing_ok=True)
    os.utime(target)  # in use: keeps it from being deleted as unused
    return target


def _delete_unused(directory: Path) -> None:
    cutoff = time.time() - _UNUSED_FOR_S
    for entry in directory.iterdir():
        if entry.suffix in (".parquet", ".jsonl", ".lock") and not entry.name.startswith("."):
            try:
                if entry.stat().st_mtime < cutoff:
                    entry.unlink()
            except FileNotFoundError:
                pass


def row_group_copy(shard: Shard, storage: Storage) -> Path:
    """A local Parquet file with the columns the shard reads of its row group, in groups of
    SPILL_GROUP_ROWS rows."""
    group = shard.row_groups[0]
    name = _key(shard, f"parquet|{group}|{','.join(shard.columns)}") + ".parquet"

    def write(path: str) -> None:
        import pyarrow.parquet as pq

        def copy(handle: Any) -> None:
            source = pq.ParquetFile(handle, pre_buffer=False, buffer_size=1 << 20)
            writer = None
            try:
                for batch in source.iter_batches(
                    batch_size=SPILL_GROUP_ROWS, row_groups=[group], columns=list(shard.columns), use_threads=False
                ):
                    if writer is None:
                        writer = pq.ParquetWriter(path, batch.schema, compression="zstd")
                    writer.write_batch(batch, row_group_size=SPILL_GROUP_ROWS)
            finally:
                if writer is not None:
                    writer.close()

        storage.read_stream(shard.file_url, copy)

    return _shared_copy(name, write)


def arrow_copy(shard: Shard, storage: Storage) -> Path:
    """A local Parquet file of the columns the shard reads of its Arrow IPC file, every row, in groups
    of SPILL_GROUP_ROWS rows."""
    name = _key(shard, f"arrow|{','.join(shard.columns)}") + ".parquet"

    def write(path: str) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        from common import arrow_ipc

        def copy(handle: Any) -> None:
            writer, pending, pending_rows = None, [], 0
            try:
                for batch in arrow_ipc.batches(handle, shard.columns):
                    if writer is None:
                        writer = pq.ParquetWriter(path, batch.schema, compression="zstd")
                    pending.append(batch)
                    pending_rows += batch.num_rows
                    # Batches of any size (one row each, or a million) become groups of SPILL_GROUP_ROWS.
                    if pending_rows >= SPILL_GROUP_ROWS:
                        table = pa.Table.from_batches(pending)
                        whole = table.num_rows - table.num_rows % SPILL_GROUP_ROWS
                        writer.write_table(table.slice(0, whole), row_group_size=SPILL_GROUP_ROWS)
                        pending, pending_rows = table.slice(whole).to_batches(), table.num_rows - whole
                if writer is not None and pending:
                    writer.write_table(pa.Table.from_batches(pending), row_group_size=SPILL_GROUP_ROWS)
            finally:
                if writer is not None:
                    writer.close()

        storage.read_stream(shard.file_url, copy, size=shard.file_size)

    return _shared_copy(name, write)


def jsonl_copy(shard: Shard, storage: Storage, encoding: str) -> Path:
    """The whole file as JSON Lines in UTF-8, local: decompressed, a JSON array's items one to a line,
    a CSV's records as objects, text in another encoding transcoded."""
    # The copier's version is in the name: a node's cache outlives a herd upgrade that copies differently.
    key = f"json-lines|{COPY_VERSION}|{shard.compression}|{shard.copied_from}|{encoding}"
    name = _key(shard, key) + ".jsonl"
    delimited = shard.copied_from if shard.copied_from in ("csv", "tsv") else None

    def write(path: str) -> None:
        import pyarrow as pa

        from workers.json_lines_copy import copy_as_json_lines

        def copy(handle: Any) -> None:
            with open(path, "wb") as sink:
                if shard.compression is not None:
                    handle = pa.CompressedInputStream(pa.PythonFile(handle, mode="r"), shard.compression)
                copy_as_json_lines(handle, sink, delimited, encoding)

        storage.read_stream(shard.file_url, copy)

    return _shared_copy(name, write)
