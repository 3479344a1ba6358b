"""Arrow IPC files, in either of Arrow's two layouts: the file layout (Feather v2, Polars' write_ipc,
pyarrow's new_file), whose footer indexes its record batches, and the stream layout (a Hugging Face
dataset's save_to_disk, Polars' write_ipc_stream, pyarrow's new_stream), batches one after another.
The first bytes tell which. Both are read a record batch at a time, through blocks of the file fetched
whole: pyarrow asks for each batch's metadata and each column's buffers in reads of their own, which
on S3 were a request each (a 46 MB file of 1,000-row batches: ~200 requests and 20 s through a store
answering in 20 ms, against 0.4 s for one GET of the whole file).

Planning needs a file's row count, not its rows. Each batch's metadata holds its row count, found
through a file layout's footer (an index of the batches) or by stepping over a stream's bodies; where
batches are large, planning reads those alone and one batch (for its columns' bytes a row): a few
kilobytes a batch instead of the whole file."""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pyarrow as pa

_FILE_LAYOUT_MAGIC = b"ARROW1"
_BLOCK_BYTES = 8 << 20
_METADATA_BLOCK_BYTES = 64 << 10  # a schema, a footer or a batch's metadata: a few hundred bytes a column
_TRAILER_BYTES = 4 + len(_FILE_LAYOUT_MAGIC)  # a file layout's last bytes: its footer's length, the magic


class _Blocks(io.RawIOBase):
    """The caller's handle, read a block at a time from where a read starts, the last two blocks
    kept (a file layout's first bytes and its footer, which a reader opening it goes back and forth
    between): reads of a few bytes at nearby offsets cost one fetch. pyarrow closes what it reads
    once done; the caller closes its handle."""

    def __init__(self, handle: Any, block_bytes: int) -> None:
        self._handle, self._block_bytes = handle, block_bytes
        self._size = handle.seek(0, io.SEEK_END)
        self._position = 0
        self._kept: list[tuple[int, bytes]] = []  # (offset, bytes), the newest last

    @property
    def size(self) -> int:
        return self._size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def read(self, size: int = -1) -> bytes:
        position = self._position
        end = self._size if size < 0 else min(self._size, position + size)
        if end <= position:
            return b""
        held = [(start, block) for start, block in self._kept if start <= position < start + len(block)]
        if held and end <= held[-1][0] + len(held[-1][1]):
            start, block = held[-1]
            data = block[position - start : end - start]
        else:
            # What a kept block holds of the range, then the rest in one fetch of at least a block
            # (a batch's body is one request). The file layout's trailer (its footer's length and
            # magic, the last 10 bytes) is read just before the footer: a block reaching back from
            # the file's end brings both.
            cached = held[-1][1][position - held[-1][0] :] if held else b""
            fetch_from = position + len(cached)
            trailer = fetch_from >= self._size - _TRAILER_BYTES
            window = max(0, self._size - self._block_bytes) if trailer else fetch_from
            self._handle.seek(window)
            fetched = self._handle.read(max(self._block_bytes, end - window))
            block = fetched[-self._block_bytes :]
            self._kept = [*self._kept[-1:], (window + len(fetched) - len(block), block)]
            data = cached + fetched[fetch_from - window : end - window]
        self._position += len(data)
        return data


def _reader(blocks: _Blocks, columns: Sequence[str] | None = None) -> Any:
    """A reader of the file's batches, decoding only `columns` when named; opening it twice reads
    the file's first bytes and footer once, kept in `blocks`."""
    options = None
    if columns is not None:
        wanted = set(columns)
        names = _reader(blocks).schema.names
        options = pa.ipc.IpcReadOptions(included_fields=[i for i, name in enumerate(names) if name in wanted])
    blocks.seek(0)
    source = pa.PythonFile(blocks, mode="r")
    if source.read(len(_FILE_LAYOUT_MAGIC)) == _FILE_LAYOUT_MAGIC:
        return pa.ipc.open_file(source, options=options)
    source.seek(0)
    return pa.ipc.open_stream(source, options=options)


def batches(handle: Any, columns: Sequence[str]) -> Iterator[pa.RecordBatch]:
    """The file's record batches, in order, holding only `columns` (in the file's order)."""
    reader = _reader(_Blocks(handle, _BLOCK_BYTES), columns)
    if isinstance(reader, pa.ipc.RecordBatchFileReader):
        for index in range(reader.num_record_batches):
            yield reader.get_batch(index)
    else:
        yield from reader


def measure(handle: Any, columns_of: Callable[[list[str]], tuple[str, ...]]) -> tuple[tuple[str, ...], int, int]:
    """The columns `columns_of` picks from the file's column names, the file's rows, and the bytes
    those columns hold once read. Where batches are large: from each batch's metadata (found through
    a file layout's footer, or by stepping over a stream's bodies) and one batch, whose columns' bytes
    per byte of its body times all the bodies' bytes estimates the rest. Where they are small,
    reading them through costs less than a request for each batch's metadata."""
    blocks = _Blocks(handle, _METADATA_BLOCK_BYTES)
    columns = columns_of(_reader(blocks).schema.names)
    blocks.seek(0)
    file_layout = blocks.read(len(_FILE_LAYOUT_MAGIC)) == _FILE_LAYOUT_MAGIC
    found = _file_record_batches(blocks) if file_layout else _stream_record_batches(blocks)
    if found is None:
        rows = held = 0
        for batch in batches(handle, columns):
            rows += batch.num_rows
            held += batch.nbytes
        return columns, rows, held
    with_rows = sorted((body, number) for number, (body, rows) in enumerate(found) if rows)
    if not with_rows:
        return columns, 0, 0
    reader = _reader(blocks, columns)
    if file_layout:  # any batch is at hand: one of middling size
        body, sample = with_rows[len(with_rows) // 2]
        batch = reader.get_batch(sample)
    else:  # reaching a batch reads every message before it: the first with rows
        sample = min(number for _, number in with_rows)
        body = found[sample][0]
        batch = next(batch for number, batch in enumerate(reader) if number == sample)
    return columns, sum(rows for _, rows in found), round(batch.nbytes * sum(body for body, _ in found) / max(body, 1))


_INDEXED_BODY_BYTES = 1 << 20  # a batch's body that costs more to read through than a request: ~20 ms on S3


# Batches' row counts and sizes, read from their metadata as the Arrow format defines it
# (format/File.fbs, format/Message.fbs): pyarrow reads a batch's whole body to give its row count.


def _file_record_batches(blocks: _Blocks) -> list[tuple[int, int]] | None:
    """Each record batch's (body bytes, rows), through the file's footer: a flatbuffer just before
    its length and the closing magic, indexing the batches. None when they average under
    _INDEXED_BODY_BYTES, or there are none."""
    blocks.seek(-_TRAILER_BYTES, io.SEEK_END)
    (footer_bytes,) = struct.unpack("<i", blocks.read(4))
    blocks.seek(-_TRAILER_BYTES - footer_bytes, io.SEEK_END)
    footer = blocks.read(footer_bytes)
    vector = _field(footer, _root(footer), 3)  # Footer.recordBatches: [Block]
    if vector is None:
        return None
    start = vector + struct.unpack_from("<I", footer, vector)[0]
    (count,) = struct.unpack_from("<I", footer, start)
    # Block: offset (int64), metaDataLength (int32, then 4 bytes of padding), bodyLength (int64).
    offsets = [
        (offset, body) for offset, _, _, body in struct.iter_unpack("<qiiq", footer[start + 4 : start + 4 + 24 * count])
    ]
    if not offsets or sum(body for _, body in offsets) < _INDEXED_BODY_BYTES * len(offsets):
        return None
    found = []
    for offset, body in offsets:
        _, header, _, rows = _message(blocks, offset)
        if header != _RECORD_BATCH:
            raise ValueError(f"the footer's batch at byte {offset} is not a record batch")
        found.append((body, rows))
    return found


def _stream_record_batches(blocks: _Blocks) -> list[tuple[int, int]] | None:
    """Each record batch's (body bytes, rows), stepping from message to message over their bodies.
    None when the first record batch's body is under _INDEXED_BODY_BYTES."""
    found: list[tuple[int, int]] = []
    position = 0
    while position < blocks.size:
        metadata_bytes, header, body, rows = _message(blocks, position)
        if header is None:  # the end-of-stream marker
            break
        if header == _RECORD_BATCH:
            if not found and body < _INDEXED_BODY_BYTES:
                return None
            found.append((body, rows))
        position += metadata_bytes + body
        if position > blocks.size:
            raise ValueError(f"the file ends inside a message's body, at byte {blocks.size:,} of {position:,}")
    return found


def _message(blocks: _Blocks, offset: int) -> tuple[int, int | None, int, int]:
    """The encapsulated message at `offset`: the bytes before its body, its header's type (None at
    the end-of-stream marker), its body's bytes and, for a record batch, its rows."""
    blocks.seek(offset)
    prefix = 4
    (length,) = struct.unpack("<i", blocks.read(4))
    if length == -1:  # the continuation marker; writers before Arrow 0.15 leave it out
        prefix = 8
        (length,) = struct.unpack("<i", blocks.read(4))
    if length == 0:
        return prefix, None, 0, 0
    if length < 0:
        raise ValueError(f"a message at byte {offset:,} has a length of {length}")
    message = blocks.read(length)
    root = _root(message)
    header_type = _field(message, root, 1)  # Message.header_type
    header = _field(message, root, 2)  # Message.header
    body_length = _field(message, root, 3)  # Message.bodyLength
    body = 0 if body_length is None else struct.unpack_from("<q", message, body_length)[0]
    if body < 0:
        raise ValueError(f"a message at byte {offset:,} has a body of {body} bytes")
    kind = 0 if header_type is None else message[header_type]
    rows = 0
    if kind == _RECORD_BATCH and header is not None:
        record_batch = header + struct.unpack_from("<I", message, header)[0]
        length_field = _field(message, record_batch, 0)  # RecordBatch.length
        rows = 0 if length_field is None else struct.unpack_from("<q", message, length_field)[0]
    return prefix + length, kind, body, rows


_RECORD_BATCH = 3  # MessageHeader's RecordBatch member


def _root(buffer: bytes) -> int:
    return struct.unpack_from("<I", buffer, 0)[0]


def _field(buffer: bytes, table: int, field: int) -> int | None:
    """Where a flatbuffer table's field is, or None when it is absent (it has its default)."""
    vtable = table - struct.unpack_from("<i", buffer, table)[0]
    vtable_bytes = struct.unpack_from("<H", buffer, vtable)[0]
    slot = 4 + 2 * field
    if slot >= vtable_bytes:
        return None
    offset = struct.unpack_from("<H", buffer, vtable + slot)[0]
    return table + offset if offset else None
