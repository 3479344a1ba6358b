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

from common.storage import PreconditionFailed, Storage, join
from service.objects import BatchRecord, FileRecord

Record = TypeVar("Record", FileRecord, BatchRecord)


def new_id(prefix: str) -> str:
    """Unguessable, and in the order they were made (a time in ns, then randomness): lists sort by id."""
    return f"{prefix}{time.time_ns():016x}{secrets.token_hex(8)}"


def _owner_folder(owner: str) -> str:
    return hashlib.sha256(owner.encode("utf-8")).hexdigest()[:24]


class Store:
    def __init__(self, root: str, storage: Storage) -> None:
        self.root = root
        self.storage = storage
        self._local_lock = threading.Lock()  # this process's updates of one record take turns

    # Files

    def file_content_url(self, owner: str, file_id: str) -> str:
        return join(self.root, "files", _owner_folder(owner), f"{file_id}.jsonl")

    def _file_record_url(self, owner: str, file_id: str) -> str:
        return join(self.root, "files", _owner_folder(owner), f"{file_id}.json")

    def save_file(self, record: FileRecord) -> None:
        self.storage.write_text(self._file_record_url(record.owner, record.file.id), record.model_dump_json())

    def file(self, owner: str, file_id: str) -> FileRecord | None:
        return self._record(FileRecord, file_id, lambda: self._file_record_url(owner, file_id))

    def files(self, owner: str) -> list[FileRecord]:
        """The owner's files, newest first."""
        return self._records(FileRecord, join(self.root, "files", _owner_folder(owner)))

    def delete_file(self, owner: str, file_id: str) -> None:
        self.storage.delete([self.file_content_url(owner, file_id), self._file_record_url(owner, file_id)])

    # Batches

    def job_root(self, batch_id: str) -> str:
        return join(self.root, "jobs", batch_id)

    def _batch_url(self, owner: str, batch_id: str) -> str:
        return join(self.root, "batches", _owner_folder(owner), f"{batch_id}.json")

    def create_batch(self, record: BatchRecord) -> None:
        self.storage.create_exclusive(self._batch_url(record.owner, record.batch.id), record.model_dump_json())

    def batch(self, owner: str, batch_id: str) -> BatchRecord | None:
        return self._record(BatchRecord, batch_id, lambda: self._batch_url(owner, batch_id))

    def batches(self, owner: str) -> list[BatchRecord]:
        """The owner's batches, newest first."""
        return self._records(BatchRecord, join(self.root, "batches", _owner_folder(owner)))

    def all_batches(self) -> list[BatchRecord]:
        """Every owner's batches, for the worker that runs them."""
        top = join(self.root, "batches")
        if not self.storage.has_entries(top):  # no batch yet: listing a missing folder is an error
            return []
        urls = [info.url for info in self.storage.expand_inputs(top) if info.url.endswith(".json")]
        return [BatchRecord.model_validate_json(data) for data in self.storage.read_many(urls).values()]

    def _record(self, model: type[Record], record_id: str, url: Callable[[], str]) -> Record | None:
        if not _plain_id(record_id):
            return None
        try:
            return model.model_validate_json(self.storage.read_text(url()))
        except FileNotFoundError:
            return None

    def _records(self, model: type[Record], folder: str) -> list[Record]:
        """The records in a folder, newest first: their names are their ids, which sort by time."""
        names = sorted((name for name in self.storage.list_names(folder) if name.endswith(".json")), reverse=True)
        contents = self.storage.read_many([join(folder, name) for name in names])
        return [model.model_validate_json(contents[join(folder, name)]) for name in names]

    def update_batch(self, owner: str, batch_id: str, change: Callable[[BatchRecord], Any]) -> BatchRecord:
        """Reads the record, applies `change` to it, and writes it back only if nobody changed it in
        between (else reads it again): no update of another thread or server is lost."""
        url = self._batch_url(owner, batch_id)
        with self._local_lock:
            for _ in _attempts():
                text, version = self.storage.read_versioned(url)
                record = BatchRecord.model_validate_json(text)
                if change(record) is False:
                    return record
                try:
                    self.storage.replace_if_unchanged(url, version, record.model_dump_json())
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
