"""The one way herd touches files, local or in object storage (s3:// through s3fs).

Every call goes through the job's retry policy. Writes are atomic: a local file is written under a
temporary name and renamed; an S3 object is one PUT of the finished bytes, so readers see all of it
or nothing. s3fs is used rather than pyarrow's S3 client because only s3fs honours AWS_ENDPOINT_URL.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import fsspec

from common import s3_presigned
from common.node_cache import exclusive
from common.retry import call_with_retry, is_transient, is_transient_code
from schemas.job import RetrySpec, StorageSpec

if TYPE_CHECKING:
    import pyarrow.parquet as pq

T = TypeVar("T")

# Reads of input files ask S3 for this much at a time: s3fs's default (50 MB) would fetch far past
# the columns a shard needs.
_INPUT_BLOCK_BYTES = 1 << 20
_KEYS_PER_DELETE = 1000  # S3's most in one DeleteObjects request
_FOOTER_READ_BYTES = 64 * 1024  # what pyarrow reads first from a Parquet file's end for its footer


def _passing(result: bytes | Exception | None) -> bool:
    return isinstance(result, Exception) and is_transient(result)


def is_remote(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def absolute(url: str) -> str:
    """Local paths become absolute so that Ray workers, whose working directory differs, find them."""
    if is_remote(url):
        return url
    return os.path.abspath(os.path.expanduser(url.removeprefix("file://")))


def join(base: str, *parts: str) -> str:
    if is_remote(base):
        return posixpath.join(base, *parts)
    return os.path.join(base, *parts)


class PreconditionFailed(Exception):
    """A conditional write lost: the object exists already, or changed since it was read."""


@dataclass(frozen=True)
class FileInfo:
    url: str
    size: int
    version: str  # the S3 ETag, or the local modification time: changes when the content does


class _Backend:
    """What differs between a kind of storage and another: how a URL names a path, atomic and
    conditional writes, and the fastest way to list and read many files. Storage picks one per URL
    and never asks which it has."""

    small_requests_at_once: int

    def __init__(self, fs: fsspec.AbstractFileSystem) -> None:
        self.fs = fs

    def path(self, url: str) -> str:
        raise NotImplementedError

    def url(self, path: str) -> str:
        raise NotImplementedError

    def open_input(self, path: str, size: int | None = None) -> Any:
        return self.fs.open(path, "rb")

    def read(self, path: str, start: int | None = None, end: int | None = None) -> bytes:
        return self.fs.cat_file(path, start=start, end=end)

    def write_atomic(self, path: str, data: bytes) -> None:
        raise NotImplementedError

    def upload(self, local_path: str, path: str) -> None:
        """Copies a local file in, streamed, atomically like write_atomic."""
        raise NotImplementedError

    def create_exclusive(self, path: str, data: bytes) -> str:
        """Creates `path` unless it exists (PreconditionFailed); returns its version."""
        raise NotImplementedError

    def read_versioned(self, path: str) -> tuple[bytes, str]:
        raise NotImplementedError

    def replace_if_unchanged(self, path: str, version: str, data: bytes) -> str:
        raise NotImplementedError

    def entries(self, path: str) -> list[str] | None:
        """The names directly under a folder, files and folders; None when nothing is there, and
        [path's name] when it is a file."""
        raise NotImplementedError

    def file_names(self, path: str) -> list[str]:
        """The names of the files directly under a folder, sorted; [] when it does not exist."""
        raise NotImplementedError

    def find(self, path: str) -> dict[str, dict[str, Any]]:
        """Every file under a folder, however deep, by path, with its details (size, version)."""
        return self.fs.find(path, detail=True)

    def read_many(self, paths: list[str]) -> dict[str, bytes]:
        raise NotImplementedError

    def read_ranges(self, paths: list[str], starts: list[int], ends: list[int]) -> list[bytes | Exception]:
        """Each path's bytes [start, end), small_requests_at_once of them at a time; per path the
        bytes or the exception its read raised."""
        return self.fs.cat_ranges(paths, starts, ends, on_error="return")

    def delete_files(self, paths: list[str]) -> None:
        """Deletes these files, each named (never a folder); one already gone is not an error."""
        raise NotImplementedError


class _LocalDisk(_Backend):
    """A rename makes a write atomic, a hard link makes a create exclusive, an flock guards a
    compare-and-swap; a version is a hash of the content. os.scandir and open() instead of fsspec
    where fsspec's per-call overhead dominates (a 100k-shard manifest)."""

    # Small reads take microseconds: threads would only contend for the GIL (planning 1,000 footers
    # took 0.37 s one at a time, 0.60 s with 32 threads). A small synced write (a manifest record) takes
    # ~0.5 ms, and 64 replicas' commits made at once cost the driver ~0.6 ms of CPU more a shard.
    small_requests_at_once = 1

    def path(self, url: str) -> str:
        return absolute(url)

    def url(self, path: str) -> str:
        return path

    def write_atomic(self, path: str, data: bytes) -> None:
        os.replace(_durable_temporary(path, data), path)

    def upload(self, local_path: str, path: str) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        temporary = _temporary_name(path)
        shutil.copyfile(local_path, temporary)
        os.replace(temporary, path)

    def create_exclusive(self, path: str, data: bytes) -> str:
        temporary = _durable_temporary(path, data)
        try:
            os.link(temporary, path)  # fails when the name exists: the create is exclusive
        except FileExistsError:
            raise PreconditionFailed(f"{path} exists") from None
        finally:
            os.unlink(temporary)
        return _content_version(data)

    def read_versioned(self, path: str) -> tuple[bytes, str]:
        with open(path, "rb") as handle:
            data = handle.read()
        return data, _content_version(data)

    def replace_if_unchanged(self, path: str, version: str, data: bytes) -> str:
        with exclusive(Path(f"{path}.lock")):
            try:
                with open(path, "rb") as handle:
                    current = _content_version(handle.read())
            except FileNotFoundError:
                current = None
            if current != version:
                raise PreconditionFailed(f"{path} changed")
            self.write_atomic(path, data)
        return _content_version(data)

    def entries(self, path: str) -> list[str] | None:
        if not os.path.exists(path):
            return None
        if not os.path.isdir(path):
            return [os.path.basename(path)]
        with os.scandir(path) as found:
            return [entry.name for entry in found]

    def file_names(self, path: str) -> list[str]:
        if not os.path.isdir(path):
            return []
        with os.scandir(path) as found:
            return sorted(entry.name for entry in found if entry.is_file())

    def read_many(self, paths: list[str]) -> dict[str, bytes]:
        contents = {}
        for path in paths:
            with open(path, "rb") as handle:
                contents[path] = handle.read()
        return contents

    def delete_files(self, paths: list[str]) -> None:
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)


class _S3(_Backend):
    """One PUT makes a write atomic; If-None-Match and If-Match (AWS, MinIO and moto honour them)
    make creates and replacements conditional; a version is the object's ETag."""

    # A small read or write costs a round trip (tens of ms in a region): many at once. Planning 2,000
    # footers at 20 ms a request (bench billion): 4.5 s 32 at once, 3.2 s 64, 2.9 s 128, where the
    # driver's CPU becomes the limit; commits, `bench commits`.
    small_requests_at_once = 128

    def path(self, url: str) -> str:
        return url.removeprefix("s3://")

    def url(self, path: str) -> str:
        return f"s3://{path}"

    def read(self, path: str, start: int | None = None, end: int | None = None) -> bytes:
        # One GET: s3fs would first ask the size (a HEAD) to fetch a large object in parallel parts,
        # and herd reads whole only small objects (records, checkpoints, job.json).
        return self.fs.cat_file(path, start=start, end=end, max_concurrency=1)

    def read_ranges(self, paths: list[str], starts: list[int], ends: list[int]) -> list[bytes | Exception]:
        # In s3fs's event loop, without a thread each: threads waiting on that loop spent the
        # driver's CPU handing the GIL around (bench billion: 2,000 files planned 1.7x faster). Presigned
        # GETs first, at a fraction of botocore's CPU a read (bench footer_client); s3fs reads what they
        # did not get, and its answer (bytes or its error) is the one returned.
        results: list[bytes | Exception | None] = list(
            s3_presigned.read_ranges(self.fs, paths, starts, ends, at_once=self.small_requests_at_once)
        )
        left = [index for index, result in enumerate(results) if result is None]
        if left:
            again = self.fs.cat_ranges(
                [paths[index] for index in left],
                [starts[index] for index in left],
                [ends[index] for index in left],
                on_error="return",
                batch_size=self.small_requests_at_once,
            )
            for index, result in zip(left, again, strict=True):
                results[index] = result
        return results  # type: ignore[return-value]  # every None was read again

    def open_input(self, path: str, size: int | None = None) -> Any:
        # No read-ahead: pyarrow asks for what it decodes (buffered, a block at a time), and a
        # read-ahead would fetch past each column chunk into columns the job never reads. A size
        # known from the listing saves the HEAD that s3fs would send for the file's details.
        handle = self.fs.open(path, "rb", block_size=_INPUT_BLOCK_BYTES, cache_type="none", size=size)
        if size is not None:
            handle.details = {"name": path, "size": size, "type": "file"}
        return handle

    def write_atomic(self, path: str, data: bytes) -> None:
        self.fs.pipe_file(path, data)  # one PUT of the whole object: S3 shows it complete or not at all

    def upload(self, local_path: str, path: str) -> None:
        self.fs.put_file(local_path, path)  # a multipart upload: the object appears once it is complete

    def _conditional_put(self, path: str, data: bytes, **condition: str) -> str:
        bucket, key = path.split("/", 1)
        return _conditional(self.fs.call_s3, "put_object", Bucket=bucket, Key=key, Body=data, **condition)["ETag"]

    def create_exclusive(self, path: str, data: bytes) -> str:
        return self._conditional_put(path, data, IfNoneMatch="*")

    def read_versioned(self, path: str) -> tuple[bytes, str]:
        # The ETag first: if the object changes in between, the version is the older one, and a
        # write conditional on it fails, as it should.
        version = self.fs.info(path)["ETag"]
        return self.read(path), version

    def replace_if_unchanged(self, path: str, version: str, data: bytes) -> str:
        return self._conditional_put(path, data, IfMatch=version)

    def entries(self, path: str) -> list[str] | None:
        try:
            return [posixpath.basename(name.rstrip("/")) for name in self.fs.ls(path, detail=False)]
        except FileNotFoundError:
            return None

    def file_names(self, path: str) -> list[str]:
        try:  # no HEAD first: a listing of nothing is the answer for a folder that does not exist
            entries = self.fs.ls(path, detail=True)
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(entry["name"].rstrip("/")) for entry in entries if entry.get("type") == "file")

    def read_many(self, paths: list[str]) -> dict[str, bytes]:
        return self.fs.cat(paths, on_error="raise", max_concurrency=1)  # concurrently, one GET each

    def find(self, path: str) -> dict[str, dict[str, Any]]:
        # Presigned pages, parsed at a fraction of botocore's CPU (bench billion: 100,000 keys listed in 7 s,
        # through s3fs in 15-23 s); s3fs lists what they could not.
        found = s3_presigned.find(self.fs, path)
        return found if found is not None else super().find(path)

    def delete_files(self, paths: list[str]) -> None:
        # DeleteObjects, 1,000 keys a request (the 100 records a checkpoint replaces: one request, not
        # 100 HEADs and 100 DELETEs); a key already gone is no error. Not fs.rm: it globs names and drops the
        # keys S3 reports it could not delete, which must fail the call (and be retried, if transient).
        by_bucket: dict[str, list[str]] = {}
        for path in paths:
            bucket, key = path.split("/", 1)
            by_bucket.setdefault(bucket, []).append(key)
        for bucket, keys in by_bucket.items():
            for start in range(0, len(keys), _KEYS_PER_DELETE):
                self._delete_objects(bucket, keys[start : start + _KEYS_PER_DELETE])

    def _delete_objects(self, bucket: str, keys: list[str]) -> None:
        objects = [{"Key": key} for key in keys]
        answer = self.fs.call_s3("delete_objects", Bucket=bucket, Delete={"Objects": objects, "Quiet": True})
        refused = answer.get("Errors") or []
        if refused:
            first = refused[0]
            transient = any(is_transient_code(error.get("Code", "")) for error in refused)
            raise OSError(
                errno.EAGAIN if transient else errno.EIO,
                f"S3 did not delete {len(refused)} of {len(keys)} files, first {bucket}/{first.get('Key')}: "
                f"{first.get('Code')} {first.get('Message', '')}".rstrip(),
            )


class Storage:
    """Holds only the specs, so it pickles cheaply into Ray tasks; file systems are made on first use.
    Every operation is written once: what differs between local disk and S3 is the _Backend's."""

    def __init__(self, storage: StorageSpec, retry: RetrySpec) -> None:
        self.storage = storage
        self.retry = retry

    def folder(self, root: str) -> Folder:
        """A view of everything under `root`, by names relative to it."""
        return Folder(self, root)

    def _backend(self, url: str) -> tuple[_Backend, str]:
        if url.startswith("s3://"):
            options: dict[str, Any] = {
                # The job's retry policy is the only one: botocore and s3fs must not retry on top.
                "config_kwargs": {
                    "retries": {"max_attempts": 1, "mode": "standard"},
                    # A connection for each read made at once (botocore keeps 10): with 10, planning's
                    # footer reads ran 10 at a time (python -m bench billion: 146 files/s).
                    "max_pool_connections": _S3.small_requests_at_once,
                    # Presigned URLs too (the ones common/s3_presigned.py reproduces) signed with SigV4:
                    # botocore would presign with SigV2, which the regions opened since 2014 refuse.
                    "signature_version": "s3v4",
                },
                # Replicas write from other processes: a cached listing would hide their files.
                "use_listings_cache": False,
            }
            endpoint = self.storage.endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
            if endpoint:
                options["endpoint_url"] = endpoint
            if self.storage.region:
                options["client_kwargs"] = {"region_name": self.storage.region}
            filesystem = fsspec.filesystem("s3", **options)
            filesystem.retries = 1  # s3fs's own retry loop is a class attribute, not an option
            backend: _Backend = _S3(filesystem)
        elif is_remote(url):
            raise ValueError(f"{url}: only local paths and s3:// URLs are supported")
        else:
            backend = _LocalDisk(fsspec.filesystem("file"))
        return backend, backend.path(url)

    def small_requests_at_once(self, url: str) -> int:
        """How many small requests (reading a footer or a size field, writing a manifest record) on files
        like `url` are worth making at once."""
        backend, _ = self._backend(url)
        return backend.small_requests_at_once

    def _retry(self, what: str, operation: Callable[[], T]) -> T:
        return call_with_retry(operation, self.retry, what)

    def expand_inputs(self, pattern: str) -> list[FileInfo]:
        """Every file a path, directory or glob names (folders are walked), sorted, so that planning
        is deterministic. Which of them are input is the planner's to decide."""
        backend, path = self._backend(pattern)
        fs = backend.fs

        def listing() -> list[FileInfo]:
            is_glob = any(char in path for char in "*?[")
            matched = fs.glob(path, detail=True) if is_glob else {path: fs.info(path)}
            found = {}
            for name, info in matched.items():
                if info.get("type") == "directory":
                    found.update(backend.find(name))
                else:
                    found[name] = info
            return [
                FileInfo(url=backend.url(name), size=int(info.get("size") or 0), version=_version(info))
                for name, info in sorted(found.items())
                if info.get("type", "file") == "file"
            ]

        return self._retry(f"list {pattern}", listing)

    def has_entries(self, directory: str, ignoring: set[str] | frozenset[str] = frozenset()) -> bool:
        """Whether anything but the names `ignoring` lies under `directory` (a file there counts too)."""
        backend, path = self._backend(directory)
        names = self._retry(f"list {directory}", lambda: backend.entries(path))
        return names is not None and any(name not in ignoring for name in names)

    def version_of(self, url: str) -> str:
        """The file's version now (ETag, or modification time), as FileInfo.version has it."""
        backend, path = self._backend(url)
        return self._retry(f"check {url}", lambda: _version(backend.fs.info(path)))

    def read_bytes(self, url: str, start: int | None = None, end: int | None = None) -> bytes:
        backend, path = self._backend(url)
        return self._retry(f"read {url}", lambda: backend.read(path, start, end))

    def read_text(self, url: str) -> str:
        return self.read_bytes(url).decode("utf-8")

    def parquet_footers(self, files: Sequence[FileInfo]) -> list[pq.FileMetaData | Exception]:
        """The footers of these Parquet files (one backend; sizes from the listing), read many at
        once: the last 64 kB of each in one ranged read, as pyarrow reads a footer, and again only
        where the footer is longer. Per file its metadata, or the error that file gives (not Parquet,
        gone since the listing). Failures that may pass are retried under the job's policy, then
        StorageUnavailable."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not files:
            return []
        what = f"read the Parquet footers of {len(files)} file(s) from {files[0].url}"
        sizes = [info.size for info in files]
        tails = self._read_ends(files, [min(size, _FOOTER_READ_BYTES) for size in sizes], what)
        longer = {}  # file index -> bytes its footer and the 8 after it take
        for index, tail in enumerate(tails):
            if isinstance(tail, bytes) and len(tail) >= 8 and tail.endswith(b"PAR1"):
                footer = int.from_bytes(tail[-8:-4], "little") + 8
                if len(tail) < footer <= sizes[index]:
                    longer[index] = footer
        if longer:
            again = self._read_ends([files[index] for index in longer], list(longer.values()), what)
            for index, tail in zip(longer, again, strict=True):
                tails[index] = tail

        def parsed(tail: bytes | Exception) -> pq.FileMetaData | Exception:
            if isinstance(tail, Exception):
                return tail
            try:
                return pq.ParquetFile(pa.BufferReader(tail)).metadata
            except Exception as error:  # noqa: BLE001 - the file's own problem, the caller's to name
                return error

        return [parsed(tail) for tail in tails]

    def _read_ends(self, files: Sequence[FileInfo], lengths: list[int], what: str) -> list[bytes | Exception]:
        """The last `lengths[i]` bytes of each file, as many reads at once as the backend makes."""
        backend, _ = self._backend(files[0].url)
        paths = [backend.path(info.url) for info in files]
        results: list[bytes | Exception | None] = [b"" if length == 0 else None for length in lengths]

        def read_the_rest() -> None:
            pending = [index for index, result in enumerate(results) if result is None or _passing(result)]
            got = backend.read_ranges(
                [paths[index] for index in pending],
                [files[index].size - lengths[index] for index in pending],
                [files[index].size for index in pending],
            )
            for index, result in zip(pending, got, strict=True):
                results[index] = result
            failing = next((result for result in got if _passing(result)), None)
            if failing is not None:
                raise failing

        if any(result is None for result in results):
            self._retry(what, read_the_rest)
        return results  # type: ignore[return-value]  # every None was read

    def read_stream(self, url: str, consume: Callable[[Any], T], *, size: int | None = None) -> T:
        """Calls `consume` with the file open for reading (fetched a block at a time), under the
        retry policy: a failure part way starts `consume` again on a fresh handle. `size`, when
        known (a listing or the plan gives it), saves a request."""
        backend, path = self._backend(url)

        def read() -> T:
            with backend.open_input(path, size) as handle:
                return consume(handle)

        return self._retry(f"read {url}", read)

    def write_atomic(self, url: str, data: bytes) -> int:
        """Readers see all of `data` or nothing, never part of it."""
        backend, path = self._backend(url)
        self._retry(f"write {url}", lambda: backend.write_atomic(path, data))
        return len(data)

    def write_text(self, url: str, text: str) -> int:
        return self.write_atomic(url, text.encode("utf-8"))

    def upload(self, url: str, local_path: str) -> None:
        """Copies a local file to `url`, streamed (never whole in memory), atomically."""
        backend, path = self._backend(url)
        self._retry(f"write {url}", lambda: backend.upload(local_path, path))

    # Conditional writes (the output lease). A version is the object's ETag on S3, a hash of the
    # content on disk.

    def create_exclusive(self, url: str, text: str) -> str:
        """Creates `url` holding `text` unless it exists (PreconditionFailed); returns its version."""
        backend, path = self._backend(url)
        return self._retry(f"create {url}", lambda: backend.create_exclusive(path, text.encode("utf-8")))

    def read_versioned(self, url: str) -> tuple[str, str]:
        """The text of `url` and its version (FileNotFoundError when it does not exist)."""
        backend, path = self._backend(url)
        data, version = self._retry(f"read {url}", lambda: backend.read_versioned(path))
        return data.decode("utf-8"), version

    def replace_if_unchanged(self, url: str, version: str, text: str) -> str:
        """Writes `text` to `url` only if its version is still `version` (else PreconditionFailed);
        returns the new version."""
        backend, path = self._backend(url)
        data = text.encode("utf-8")
        return self._retry(f"write {url}", lambda: backend.replace_if_unchanged(path, version, data))

    def delete_if_unchanged(self, url: str, version: str) -> bool:
        """Deletes `url` if its version is still `version`; says whether it did."""
        try:
            _, current = self.read_versioned(url)
        except FileNotFoundError:
            return False
        if current != version:
            return False
        self.delete([url])
        return True

    def exists(self, url: str) -> bool:
        backend, path = self._backend(url)
        return self._retry(f"check {url}", lambda: backend.fs.exists(path))

    def list_names(self, directory: str) -> list[str]:
        """Names of the files directly under `directory`; an absent directory is empty."""
        backend, path = self._backend(directory)
        return self._retry(f"list {directory}", lambda: backend.file_names(path))

    def read_many(self, urls: list[str]) -> dict[str, bytes]:
        """Reads many small files, all under one kind of storage."""
        if not urls:
            return {}
        backend, _ = self._backend(urls[0])
        paths = [backend.path(url) for url in urls]
        contents = self._retry(f"read {len(urls)} files", lambda: backend.read_many(paths))
        return {url: contents[path] for url, path in zip(urls, paths, strict=True)}

    def delete(self, urls: list[str]) -> None:
        """Deletes these files (never a folder: herd removes only files it wrote, each by name), all
        under one kind of storage; a file already gone is not an error, so a retry may repeat it."""
        if not urls:
            return
        backend, _ = self._backend(urls[0])
        paths = [backend.path(url) for url in urls]
        self._retry(f"delete {len(urls)} files under {urls[0].rsplit('/', 1)[0]}", lambda: backend.delete_files(paths))


class Folder:
    """A rooted view of storage, as datatrove's DataFolder is of fsspec (a DirFileSystem): every name
    is relative to the root and may not leave it, so what holds a Folder reads, writes and deletes
    under its root only, whatever the backend. Names use "/" on every backend."""

    def __init__(self, storage: Storage, root: str) -> None:
        self.storage = storage
        self.root = root.rstrip("/") or "/"

    def url(self, name: str = "") -> str:
        """The full URL of `name` (the root itself for ""), for what must name it outside the folder
        (a job's input path, a record). ValueError for a name that would leave the root."""
        parts = [part for part in name.split("/") if part not in ("", ".")]
        if name.startswith("/") or "://" in name or ".." in parts:
            raise ValueError(f"{name!r} is not a name inside {self.root}")
        return join(self.root, *parts) if parts else self.root

    def folder(self, name: str) -> Folder:
        return Folder(self.storage, self.url(name))

    def read_bytes(self, name: str, start: int | None = None, end: int | None = None) -> bytes:
        return self.storage.read_bytes(self.url(name), start, end)

    def read_text(self, name: str) -> str:
        return self.storage.read_text(self.url(name))

    def write_atomic(self, name: str, data: bytes) -> int:
        return self.storage.write_atomic(self.url(name), data)

    def write_text(self, name: str, text: str) -> int:
        return self.storage.write_text(self.url(name), text)

    def upload(self, name: str, local_path: str) -> None:
        self.storage.upload(self.url(name), local_path)

    def exists(self, name: str) -> bool:
        return self.storage.exists(self.url(name))

    def list_names(self, name: str = "") -> list[str]:
        """Names of the files directly under `name`; an absent folder is empty."""
        return self.storage.list_names(self.url(name))

    def find(self, name: str = "") -> list[str]:
        """The names (relative to the root) of every file below `name`, sorted; [] when it is absent."""
        return sorted(self.file_sizes(name))

    def file_sizes(self, name: str = "") -> dict[str, int]:
        """The size of every file below `name`, by name relative to the root; {} when it is absent."""
        top = self.url(name)
        if not self.storage.has_entries(top):
            return {}
        sizes = {}
        for info in self.storage.expand_inputs(top):
            if not info.url.startswith(self.root + "/"):
                raise ValueError(f"{info.url} was listed under {top} but is not under {self.root}")
            sizes[info.url[len(self.root) + 1 :]] = info.size
        return sizes

    def read_many(self, names: list[str]) -> dict[str, bytes]:
        """Each name's content, keyed by the name."""
        urls = {self.url(name): name for name in names}
        return {urls[url]: data for url, data in self.storage.read_many(list(urls)).items()}

    def delete(self, names: list[str]) -> None:
        self.storage.delete([self.url(name) for name in names])

    def create_exclusive(self, name: str, text: str) -> str:
        return self.storage.create_exclusive(self.url(name), text)

    def read_versioned(self, name: str) -> tuple[str, str]:
        return self.storage.read_versioned(self.url(name))

    def replace_if_unchanged(self, name: str, version: str, text: str) -> str:
        return self.storage.replace_if_unchanged(self.url(name), version, text)


def _content_version(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _conditional(call: Callable[..., Any], method: str, **request: Any) -> Any:
    """An S3 call with a condition; a lost condition (HTTP 412) is PreconditionFailed, not an OSError."""
    try:
        return call(method, **request)
    except OSError as error:
        cause = error.__cause__
        code = getattr(cause, "response", {}).get("Error", {}).get("Code") if cause is not None else None
        if isinstance(error, FileExistsError) or code in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
            raise PreconditionFailed(str(error)) from None
        raise


def _version(info: dict[str, Any]) -> str:
    """What changes when a file's content does: the S3 ETag, or the local modification time."""
    return str(info.get("ETag") or info.get("mtime") or info.get("LastModified") or "")


def _temporary_name(path: str) -> str:
    """.NAME.<32 hex>.tmp beside `path`: what herd's clean-up recognises as its own."""
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")


def _durable_temporary(path: str, data: bytes) -> str:
    """`data` on disk, synced, under a temporary name beside `path` (.NAME.<32 hex>.tmp: what
    herd's clean-up recognises as its own), ready to be renamed or linked into place."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = _temporary_name(path)
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return temporary
