"""The service's state under its root (local or s3://), through herd's one storage module:

    files/<owner digest>/<file id>.json      a file's record (FileRecord)
    files/<owner digest>/<file id>.jsonl     its content
    batches/<owner digest>/<batch id>.json   a batch's record (BatchRecord)
    jobs/<batch id>/                         the herd job answering it (data/, errors/, manifest/, ...)

Records are replaced with conditional writes, so two servers on one root never lose each other's
changes. An owner's name is hashed into the path: it is never a path itself, nor is a file's name.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from common.storage import PreconditionFailed, Storage
from service.objects import BatchRecord, FileRecord

Record = TypeVar("Record", FileRecord, BatchRecord)


def new_id(prefix: str) -> str:
    """Unguessable, and in the order they were made (a time in ns, then randomness): lists sort by id."""
    return f"{prefix}{time.time_ns():016x}{secrets.token_hex(8)}"


def _owner_folder(owner: str) -> str:
    return hashlib.sha256(owner.encode("utf-8")).hexdigest()[:24]


class Store:
    def __init__(self, root: str, storage: Storage) -> None:
        self.storage = storage
        self.folder = storage.folder(root)  # every name below is relative to the root
        self._local_lock = threading.Lock()  # this process's updates of one record take turns

    # Files

    @staticmethod
    def _file_content(owner: str, file_id: str) -> str:
        return f"files/{_owner_folder(owner)}/{file_id}.jsonl"

    @staticmethod
    def _file_record(owner: str, file_id: str) -> str:
        return f"files/{_owner_folder(owner)}/{file_id}.json"

    def file_content_url(self, owner: str, file_id: str) -> str:
        """Where a file's content is, for the herd job that reads it."""
        return self.folder.url(self._file_content(owner, file_id))

    def read_file_content(self, owner: str, file_id: str, start: int | None = None, end: int | None = None) -> bytes:
        return self.folder.read_bytes(self._file_content(owner, file_id), start, end)

    def write_file_content(self, owner: str, file_id: str, data: bytes) -> None:
        self.folder.write_atomic(self._file_content(owner, file_id), data)

    def upload_file_content(self, owner: str, file_id: str, local_path: str) -> None:
        self.folder.upload(self._file_content(owner, file_id), local_path)

    def save_file(self, record: FileRecord) -> None:
        self.folder.write_text(self._file_record(record.owner, record.file.id), record.model_dump_json())

    def file(self, owner: str, file_id: str) -> FileRecord | None:
        return self._record(FileRecord, file_id, lambda: self._file_record(owner, file_id))

    def files(self, owner: str) -> list[FileRecord]:
        """The owner's files, newest first."""
        return self._records(FileRecord, f"files/{_owner_folder(owner)}")

    def delete_file(self, owner: str, file_id: str) -> None:
        self.folder.delete([self._file_content(owner, file_id), self._file_record(owner, file_id)])

    # Batches

    def job_root(self, batch_id: str) -> str:
        return self.folder.url(f"jobs/{batch_id}")

    @staticmethod
    def _batch(owner: str, batch_id: str) -> str:
        return f"batches/{_owner_folder(owner)}/{batch_id}.json"

    def create_batch(self, record: BatchRecord) -> None:
        self.folder.create_exclusive(self._batch(record.owner, record.batch.id), record.model_dump_json())

    def batch(self, owner: str, batch_id: str) -> BatchRecord | None:
        return self._record(BatchRecord, batch_id, lambda: self._batch(owner, batch_id))

    def batches(self, owner: str) -> list[BatchRecord]:
        """The owner's batches, newest first."""
        return self._records(BatchRecord, f"batches/{_owner_folder(owner)}")

    def all_batches(self) -> list[BatchRecord]:
        """Every owner's batches, for the worker that runs them."""
        names = [name for name in self.folder.find("batches") if name.endswith(".json")]
        return [BatchRecord.model_validate_json(data) for data in self.folder.read_many(names).values()]

    def _record(self, model: type[Record], record_id: str, name: Callable[[], str]) -> Record | None:
        if not _plain_id(record_id):
            return None
        try:
            return model.model_validate_json(self.folder.read_text(name()))
        except FileNotFoundError:
            return None

    def _records(self, model: type[Record], folder: str) -> list[Record]:
        """The records in a folder, newest first: their names are their ids, which sort by time."""
        names = sorted((name for name in self.folder.list_names(folder) if name.endswith(".json")), reverse=True)
        contents = self.folder.read_many([f"{folder}/{name}" for name in names])
        return [model.model_validate_json(contents[f"{folder}/{name}"]) for name in names]

    def update_batch(self, owner: str, batch_id: str, change: Callable[[BatchRecord], Any]) -> BatchRecord:
        """Reads the record, applies `change` to it, and writes it back only if nobody changed it in
        between (else reads it again): no update of another thread or server is lost."""
        name = self._batch(owner, batch_id)
        with self._local_lock:
            for _ in _attempts():
                text, version = self.folder.read_versioned(name)
                record = BatchRecord.model_validate_json(text)
                if change(record) is False:
                    return record
                try:
                    self.folder.replace_if_unchanged(name, version, record.model_dump_json())
                except PreconditionFailed:
                    continue
                return record
        raise RuntimeError(f"{batch_id}: its record kept changing under every update")


def _attempts() -> Iterator[int]:
    for attempt in range(50):
        if attempt:
            time.sleep(0.05 * attempt)
        yield attempt


def _plain_id(value: str) -> bool:
    """Ids are made here of letters, digits, - and _: anything else names no record (and no path)."""
    return 0 < len(value) <= 64 and all(char.isalnum() or char in "-_" for char in value)
