"""Arrow IPC files, in either of Arrow's two layouts: the file layout (Feather v2, Polars' write_ipc,
pyarrow's new_file), whose footer indexes its record batches, and the stream layout (a Hugging Face
dataset's save_to_disk, Polars' write_ipc_stream, pyarrow's new_stream), batches one after another.
The first bytes tell which; both are read a record batch at a time, never whole."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa

_FILE_LAYOUT_MAGIC = b"ARROW1"


def _opened(handle: Any, options: pa.ipc.IpcReadOptions | None = None) -> Any:
    """A reader from the start of `handle`: a file-layout one (random access) or a stream one."""
    handle.seek(0)
    file_layout = handle.read(len(_FILE_LAYOUT_MAGIC)) == _FILE_LAYOUT_MAGIC
    handle.seek(0)
    if file_layout:
        return pa.ipc.open_file(handle, options=options)
    return pa.ipc.open_stream(handle, options=options)


def schema_of(handle: Any) -> pa.Schema:
    """The file's schema: its footer's, or its stream's first message."""
    return _opened(handle).schema


def batches(handle: Any, columns: Sequence[str]) -> Iterator[pa.RecordBatch]:
    """The file's record batches, in order, holding only `columns` (in the file's order). In the file
    layout the other columns' buffers are never fetched; a stream holds them between the ones read."""
    schema = schema_of(handle)
    wanted = set(columns)
    fields = [index for index, name in enumerate(schema.names) if name in wanted]
    reader = _opened(handle, pa.ipc.IpcReadOptions(included_fields=fields))
    if isinstance(reader, pa.ipc.RecordBatchFileReader):
        for index in range(reader.num_record_batches):
            yield reader.get_batch(index)
    else:
        yield from reader
