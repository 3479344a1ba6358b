"""The service's state under its root (local or s3://), through herd's one storage module:

    files/<owner digest>/<file id>.json      a file's record (FileRecord)
    files/<owner digest>/<file id>.jsonl     its content
    batches/<owner digest>/<batch id>.json   a batch's record (BatchRecord)
    open/<owner digest>/<batch id>           an empty marker while the batch has not ended
    open.indexed                             written once every open batch has its marker
    expiring/<owner digest>/<time>-<file id>  an empty marker for a file that expires at that time
    jobs/<batch id>/                         the herd job answering it (data/, errors/, manifest/, ...)

Records are replaced with conditional writes, so two servers on one root never lose each other's
changes. An owner's name is hashed into the path: it is never a path itself, nor is a file's name.

The worker looks for work every second, and a root holds every batch ever made: it reads only the
batches the `open/` markers name, so its cost follows the batches running, not the months of
batches behind them. Lists read only the records of the page asked for (their names sort by time).
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from common.storage import PreconditionFailed, Storage
from service.objects import TERMINAL, BatchRecord, FileRecord

Record = TypeVar("Record", FileRecord, BatchRecord)


def new_id(prefix: str) -> str:
    """Unguessable, and in the order they were made (a time in ns, then randomness): lists sort by id."""
    return f"{prefix}{time.time_ns():016x}{secrets.token_hex(8)}"


def _owner_folder(owner: str) -> str:
    return hashlib.sha256(owner.encode("utf-8")).hexdigest()[:24]


_OUTPUT_KINDS = ("output", "errors")


def output_file_id(batch_id: str, kind: str) -> str:
    """The id of a batch's output file (kind "output" or "errors"): derived from the batch's, so that
    finalizing twice (two servers, a restart) writes the same file again rather than a second one."""
    assert kind in _OUTPUT_KINDS, kind
    return f"file-{batch_id.removeprefix('batch_')}-{kind}"


def batch_of_output(file_id: str) -> str:
    """The id of the batch whose output file this is (output_file_id's inverse)."""
    return "batch_" + file_id.removeprefix("file-").rsplit("-", 1)[0]


def file_purpose(file_id: str) -> str:
    """A file's purpose, from its id alone (lists filter by purpose without reading records)."""
    return "batch_output" if file_id.endswith(tuple(f"-{kind}" for kind in _OUTPUT_KINDS)) else "batch"


def _made_at(record_id: str) -> float:
    """When an id from new_id was made, in seconds since the epoch (0 for another id)."""
    try:
        return int(record_id.split("_", 1)[-1][:16], 16) / 1e9
    except ValueError:
        return 0.0


# A marker whose batch record is missing: the record's create that follows the marker's failed, or has
# not happened yet (another server, between its two writes). Removed once surely the former.
_ORPHAN_MARKER_AGE_S = 3600.0
_LINES_READ_AT_ONCE = 8 * 1024 * 1024  # of a file read as lines (file_lines)


@dataclass(frozen=True)
class Page:
    """One page of a list, in id order, and whether more follow it."""

    records: list[Any]
    has_more: bool


class Store:
    def __init__(self, root: str, storage: Storage, *, clock: Callable[[], float] = time.time) -> None:
        self.storage = storage
        self.folder = storage.folder(root)  # every name below is relative to the root
        self._local_lock = threading.Lock()  # this process's updates of one record take turns
        self._clock = clock  # seconds since the epoch: when files expire

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

    def file_lines(self, owner: str, file_id: str) -> Iterator[bytes]:
        """A file's lines as `content.split(b"\\n")` gives them, read _LINES_READ_AT_ONCE bytes at a
        time (each read retried on its own), so a file of 200 MB is never whole in memory. An expired
        file's too: the input of a batch still running is kept until the batch ends."""
        record = self._stored_file(owner, file_id)
        if record is None:
            raise FileNotFoundError(f"{owner}'s file {file_id}")
        rest = b""
        for start in range(0, record.file.bytes, _LINES_READ_AT_ONCE):
            end = min(start + _LINES_READ_AT_ONCE, record.file.bytes)
            *lines, rest = (rest + self.read_file_content(owner, file_id, start, end)).split(b"\n")
            yield from lines
        yield rest  # as bytes.split gives it: b"" after a last newline

    def write_file_content(self, owner: str, file_id: str, data: bytes) -> None:
        self.folder.write_atomic(self._file_content(owner, file_id), data)

    def upload_file_content(self, owner: str, file_id: str, local_path: str) -> None:
        self.folder.upload(self._file_content(owner, file_id), local_path)

    def delete_file_content(self, owner: str, file_id: str) -> None:
        """An upload's content, refused after it landed (before its record was written)."""
        self.folder.delete([self._file_content(owner, file_id)])

    @staticmethod
    def _expiry_marker(record: FileRecord) -> str:
        return f"expiring/{_owner_folder(record.owner)}/{record.file.expires_at:010d}-{record.file.id}"

    def save_file(self, record: FileRecord) -> None:
        if record.file.expires_at is not None:  # first: a file is never written without its end
            self.folder.write_text(self._expiry_marker(record), "")
        self.folder.write_text(self._file_record(record.owner, record.file.id), record.model_dump_json())

    def _expired(self, record: FileRecord) -> bool:
        return record.file.expires_at is not None and record.file.expires_at <= self._clock()

    def _stored_file(self, owner: str, file_id: str) -> FileRecord | None:
        """The file's record, expired or not."""
        return self._record(FileRecord, file_id, lambda: self._file_record(owner, file_id))

    def file(self, owner: str, file_id: str) -> FileRecord | None:
        """The file, or None when there is none or it has expired (the sweep may not have run yet)."""
        record = self._stored_file(owner, file_id)
        return None if record is None or self._expired(record) else record

    def delete_expired_files(self, keep: Callable[[str], bool]) -> list[str]:
        """Deletes the files whose time has come, except those `keep` names by id (the input of a batch
        still running: its job reads it); their ids. Reads no record: the markers' names say it all."""
        now, gone, markers = self._clock(), [], []
        for marker in self.folder.find("expiring"):
            _, owner_folder, name = marker.split("/")
            expires_at, file_id = name.split("-", 1)
            if int(expires_at) <= now and not keep(file_id):
                gone.append((owner_folder, file_id))
                markers.append(marker)
        # Every file at once (on S3, a request per 1,000 names), the markers last: a sweep stopped
        # halfway is finished by the next.
        self.folder.delete(
            [f"files/{folder}/{file_id}{suffix}" for folder, file_id in gone for suffix in (".jsonl", ".json")]
        )
        for _, file_id in gone:
            self._delete_answers_behind(file_id)
        self.folder.delete(markers)
        return [file_id for _, file_id in gone]

    def files_page(
        self, owner: str, *, after: str | None, limit: int, newest_first: bool = True, purpose: str | None = None
    ) -> Page:
        """The owner's files after the id `after` (which may be gone: a file deleted between two pages)."""
        return self._page(
            FileRecord,
            f"files/{_owner_folder(owner)}",
            after=after,
            limit=limit,
            newest_first=newest_first,
            wanted=lambda file_id: purpose in (None, file_purpose(file_id)),
        )

    def stored_bytes(self, owner: str) -> int:
        """The bytes of the owner's files' contents, uploads and outputs (expired ones until the sweep
        deletes them): from the listing alone, a request per 1,000 files on S3."""
        sizes = self.folder.file_sizes(f"files/{_owner_folder(owner)}")
        return sum(size for name, size in sizes.items() if name.endswith(".jsonl"))

    def delete_file(self, record: FileRecord) -> None:
        owner, file_id = record.owner, record.file.id
        self.folder.delete([self._file_content(owner, file_id), self._file_record(owner, file_id)])
        self._delete_answers_behind(file_id)
        if record.file.expires_at is not None:
            self.folder.delete([self._expiry_marker(record)])

    def _delete_answers_behind(self, file_id: str) -> None:
        """An output file deleted or expired takes its batch's job folder with it: the same answers in
        herd's data files, manifest and report, which no one asked to keep."""
        if file_purpose(file_id) == "batch_output":
            self.folder.delete(self.folder.find(f"jobs/{batch_of_output(file_id)}"))

    # Batches

    def job_root(self, batch_id: str) -> str:
        return self.folder.url(f"jobs/{batch_id}")

    @staticmethod
    def _batch(owner: str, batch_id: str) -> str:
        return f"batches/{_owner_folder(owner)}/{batch_id}.json"

    @staticmethod
    def _open_marker(owner_folder: str, batch_id: str) -> str:
        return f"open/{owner_folder}/{batch_id}"

    def create_batch(self, record: BatchRecord) -> None:
        # The marker first: a crash between the two writes leaves a marker naming no batch (skipped,
        # later removed), never a batch that no worker would find.
        self.folder.write_text(self._open_marker(_owner_folder(record.owner), record.batch.id), "")
        self.folder.create_exclusive(self._batch(record.owner, record.batch.id), record.model_dump_json())

    def batch(self, owner: str, batch_id: str) -> BatchRecord | None:
        return self._record(BatchRecord, batch_id, lambda: self._batch(owner, batch_id))

    def batches_page(self, owner: str, *, after: str | None, limit: int) -> Page:
        """The owner's batches after the id `after`, newest first."""
        return self._page(BatchRecord, f"batches/{_owner_folder(owner)}", after=after, limit=limit, newest_first=True)

    def open_batch_count(self, owner: str) -> int:
        """How many of the owner's batches have not ended, from their markers' names (no record read;
        a marker a stopped server left behind counts until the worker's next look removes it)."""
        return len(self.folder.list_names(f"open/{_owner_folder(owner)}"))

    def open_batches(self, owner: str | None = None) -> list[BatchRecord]:
        """The batches that have not ended (every owner's, or one owner's), oldest first."""
        markers = self.folder.find(f"open/{_owner_folder(owner)}" if owner is not None else "open")
        record_names = {marker: "batches/{}/{}.json".format(*marker.split("/")[1:]) for marker in markers}
        contents = self._read_existing(list(record_names.values()))
        found, ended = [], []
        for marker, name in record_names.items():
            if name not in contents:
                if self._clock() - _made_at(marker.rsplit("/", 1)[1]) > _ORPHAN_MARKER_AGE_S:
                    ended.append(marker)
                continue
            record = BatchRecord.model_validate_json(contents[name])
            if record.batch.status in TERMINAL:
                ended.append(marker)  # the server that ended it stopped before removing its marker
            else:
                found.append(record)
        self.folder.delete(ended)
        return sorted(found, key=lambda record: record.batch.id)

    def index_open_batches(self) -> None:
        """Gives each open batch of a root written before the markers existed its marker, once."""
        if self.folder.exists("open.indexed"):
            return
        names = [name for name in self.folder.find("batches") if name.endswith(".json")]
        for data in self.folder.read_many(names).values():
            record = BatchRecord.model_validate_json(data)
            if record.batch.status not in TERMINAL:
                self.folder.write_text(self._open_marker(_owner_folder(record.owner), record.batch.id), "")
        self.folder.write_text("open.indexed", "")

    def _record(self, model: type[Record], record_id: str, name: Callable[[], str]) -> Record | None:
        if not _plain_id(record_id):
            return None
        try:
            return model.model_validate_json(self.folder.read_text(name()))
        except FileNotFoundError:
            return None

    def _page(
        self,
        model: type[Record],
        folder: str,
        *,
        after: str | None,
        limit: int,
        newest_first: bool,
        wanted: Callable[[str], bool] = lambda record_id: True,
    ) -> Page:
        """A page of a folder's records, chosen by their names (their ids, which sort by time) and
        then read: a list costs the listing and the page's records, not every record there is."""
        ids = sorted(
            (name.removesuffix(".json") for name in self.folder.list_names(folder) if name.endswith(".json")),
            reverse=newest_first,
        )
        if after is not None:
            ids = [record_id for record_id in ids if (record_id < after if newest_first else record_id > after)]
        ids = [record_id for record_id in ids if wanted(record_id)]
        names = [f"{folder}/{record_id}.json" for record_id in ids[:limit]]
        contents = self._read_existing(names)
        records = [model.model_validate_json(contents[name]) for name in names if name in contents]
        # An expired file the sweep has not removed yet is gone already (the page is one shorter).
        records = [record for record in records if not (isinstance(record, FileRecord) and self._expired(record))]
        return Page(records, has_more=len(ids) > limit)

    def _read_existing(self, names: list[str]) -> dict[str, bytes]:
        """The contents of those of these files that exist (one may be deleted after it was listed)."""
        try:
            return self.folder.read_many(names)
        except FileNotFoundError:
            contents = {}
            for name in names:
                with contextlib.suppress(FileNotFoundError):
                    contents[name] = self.folder.read_bytes(name)
            return contents

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
                if record.batch.status in TERMINAL:
                    self.folder.delete([self._open_marker(_owner_folder(owner), batch_id)])
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
