"""The one way herd touches files, local or in object storage (s3:// through s3fs).

Every call goes through the job's retry policy. Writes are atomic: a local file is written under a
temporary name and renamed; an S3 object is one PUT of the finished bytes, so readers see all of it
or nothing. s3fs is used rather than pyarrow's S3 client because only s3fs honours AWS_ENDPOINT_URL.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import fsspec

from common.node_cache import exclusive
from common.retry import call_with_retry
from schemas.job import RetrySpec, StorageSpec

if TYPE_CHECKING:
    import pyarrow.parquet as pq

T = TypeVar("T")

# Reads of input files ask S3 for this much at a time: s3fs's default (50 MB) would fetch far past
# the columns a shard needs.
_INPUT_BLOCK_BYTES = 1 << 20


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


class Storage:
    """Holds only the specs, so it pickles cheaply into Ray tasks; file systems are made on first use."""

    def __init__(self, storage: StorageSpec, retry: RetrySpec) -> None:
        self.storage = storage
        self.retry = retry

    def _fs(self, url: str) -> tuple[fsspec.AbstractFileSystem, str]:
        if url.startswith("s3://"):
            options: dict[str, Any] = {
                # The job's retry policy is the only one: botocore and s3fs must not retry on top.
                "config_kwargs": {"retries": {"max_attempts": 1, "mode": "standard"}},
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
            return filesystem, url.removeprefix("s3://")
        if is_remote(url):
            raise ValueError(f"{url}: only local paths and s3:// URLs are supported")
        return fsspec.filesystem("file"), absolute(url)

    def _retry(self, what: str, operation):  # noqa: ANN001, ANN202 - a thin pass-through
        return call_with_retry(operation, self.retry, what)

    @staticmethod
    def _url_like(original: str, path: str) -> str:
        return f"s3://{path}" if original.startswith("s3://") else path

    def expand_inputs(self, pattern: str) -> list[FileInfo]:
        """Every file a path, directory or glob names (folders are walked), sorted, so that planning
        is deterministic. Which of them are input is the planner's to decide."""
        fs, path = self._fs(pattern)

        def listing() -> list[FileInfo]:
            is_glob = any(char in path for char in "*?[")
            matched = fs.glob(path, detail=True) if is_glob else {path: fs.info(path)}
            found = {}
            for name, info in matched.items():
                if info.get("type") == "directory":
                    found.update(fs.find(name, detail=True))
                else:
                    found[name] = info
            return [
                FileInfo(
                    url=self._url_like(pattern, name),
                    size=int(info.get("size") or 0),
                    version=_version(info),
                )
                for name, info in sorted(found.items())
                if info.get("type", "file") == "file"
            ]

        return self._retry(f"list {pattern}", listing)

    def has_entries(self, directory: str, ignoring: set[str] | frozenset[str] = frozenset()) -> bool:
        """Whether anything but the names `ignoring` lies under `directory` (a file there counts too)."""
        fs, path = self._fs(directory)
        if not is_remote(directory):

            def local_check() -> bool:
                if not os.path.exists(path):
                    return False
                if not os.path.isdir(path):
                    return True
                with os.scandir(path) as entries:
                    return any(entry.name not in ignoring for entry in entries)

            return self._retry(f"list {directory}", local_check)

        def remote_check() -> bool:
            try:
                names = fs.ls(path, detail=False)
            except FileNotFoundError:
                return False
            return any(posixpath.basename(name.rstrip("/")) not in ignoring for name in names)

        return self._retry(f"list {directory}", remote_check)

    def version_of(self, url: str) -> str:
        """The file's version now (ETag, or modification time), as FileInfo.version has it."""
        fs, path = self._fs(url)
        return self._retry(f"check {url}", lambda: _version(fs.info(path)))

    def read_bytes(self, url: str, start: int | None = None, end: int | None = None) -> bytes:
        fs, path = self._fs(url)
        return self._retry(f"read {url}", lambda: fs.cat_file(path, start=start, end=end))

    def read_text(self, url: str) -> str:
        return self.read_bytes(url).decode("utf-8")

    def _open_input(self, url: str):  # noqa: ANN202 - an fsspec file object
        fs, path = self._fs(url)
        if is_remote(url):
            # No read-ahead: pyarrow asks for what it decodes (buffered, a block at a time), and a
            # read-ahead would fetch past each column chunk into columns the job never reads.
            return fs.open(path, "rb", block_size=_INPUT_BLOCK_BYTES, cache_type="none")
        return fs.open(path, "rb")

    def parquet_metadata(self, url: str) -> pq.FileMetaData:
        import pyarrow.parquet as pq

        def read() -> pq.FileMetaData:
            with self._open_input(url) as handle:
                return pq.ParquetFile(handle).metadata

        return self._retry(f"read the Parquet footer of {url}", read)

    def read_stream(self, url: str, consume: Callable[[Any], T]) -> T:
        """Calls `consume` with the file open for reading (fetched a block at a time), under the
        retry policy: a failure part way starts `consume` again on a fresh handle."""

        def read() -> T:
            with self._open_input(url) as handle:
                return consume(handle)

        return self._retry(f"read {url}", read)

    def write_atomic(self, url: str, data: bytes) -> int:
        fs, path = self._fs(url)
        if url.startswith("s3://"):
            # One PUT of the whole object: S3 shows it complete or not at all.
            self._retry(f"write {url}", lambda: fs.pipe_file(path, data))
            return len(data)
        self._retry(f"write {url}", lambda: os.replace(_durable_temporary(path, data), path))
        return len(data)

    def write_text(self, url: str, text: str) -> int:
        return self.write_atomic(url, text.encode("utf-8"))

    # Conditional writes (the output lease): S3's If-None-Match / If-Match, which AWS, MinIO and moto
    # honour; on local disk a hard link that fails if the name exists, and a compare-and-swap under an
    # flock. A version is the object's ETag on S3, a hash of the content on disk.

    def create_exclusive(self, url: str, text: str) -> str:
        """Creates `url` holding `text` unless it exists (PreconditionFailed); returns its version."""
        data = text.encode("utf-8")
        _, path = self._fs(url)
        if is_remote(url):
            return self._conditional_put(url, data, IfNoneMatch="*")

        def create() -> str:
            temporary = _durable_temporary(path, data)
            try:
                os.link(temporary, path)  # fails when the name exists: the create is exclusive
            except FileExistsError:
                raise PreconditionFailed(f"{url} exists") from None
            finally:
                os.unlink(temporary)
            return _content_version(data)

        return self._retry(f"create {url}", create)

    def _conditional_put(self, url: str, data: bytes, **condition: str) -> str:
        """One PUT with an S3 condition (If-None-Match or If-Match); returns the new ETag."""
        fs, path = self._fs(url)
        bucket, key = path.split("/", 1)
        answer = self._retry(
            f"write {url}",
            lambda: _conditional(fs.call_s3, "put_object", Bucket=bucket, Key=key, Body=data, **condition),
        )
        return answer["ETag"]

    def read_versioned(self, url: str) -> tuple[str, str]:
        """The text of `url` and its version (FileNotFoundError when it does not exist)."""
        fs, path = self._fs(url)
        if is_remote(url):

            def get() -> tuple[str, str]:
                # The ETag first: if the object changes in between, the version is the older one, and a
                # write conditional on it fails, as it should.
                version = fs.info(path)["ETag"]
                return fs.cat_file(path).decode("utf-8"), version

            return self._retry(f"read {url}", get)

        def read() -> tuple[str, str]:
            with open(path, "rb") as handle:
                data = handle.read()
            return data.decode("utf-8"), _content_version(data)

        return self._retry(f"read {url}", read)

    def replace_if_unchanged(self, url: str, version: str, text: str) -> str:
        """Writes `text` to `url` only if its version is still `version` (else PreconditionFailed);
        returns the new version."""
        data = text.encode("utf-8")
        _, path = self._fs(url)
        if is_remote(url):
            return self._conditional_put(url, data, IfMatch=version)

        def swap() -> str:
            with exclusive(Path(f"{path}.lock")):
                try:
                    with open(path, "rb") as handle:
                        current = _content_version(handle.read())
                except FileNotFoundError:
                    current = None
                if current != version:
                    raise PreconditionFailed(f"{url} changed")
                self.write_atomic(url, data)
            return _content_version(data)

        return self._retry(f"write {url}", swap)

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
        fs, path = self._fs(url)
        return self._retry(f"check {url}", lambda: fs.exists(path))

    def list_names(self, directory: str) -> list[str]:
        """Names of the files directly under `directory`; an absent directory is empty."""
        fs, path = self._fs(directory)
        if not is_remote(directory):
            # os.scandir: fsspec stats every entry, which dominates for a 100k-shard manifest.
            def local_listing() -> list[str]:
                if not os.path.isdir(path):
                    return []
                with os.scandir(path) as entries:
                    return sorted(entry.name for entry in entries if entry.is_file())

            return self._retry(f"list {directory}", local_listing)

        def listing() -> list[str]:
            if not fs.exists(path):
                return []
            return sorted(
                posixpath.basename(entry["name"].rstrip("/"))
                for entry in fs.ls(path, detail=True)
                if entry.get("type") == "file"
            )

        return self._retry(f"list {directory}", listing)

    def read_many(self, urls: list[str]) -> dict[str, bytes]:
        """Reads many small objects; s3fs fetches them concurrently."""
        if not urls:
            return {}
        if not is_remote(urls[0]):
            # fsspec's per-call overhead dominates for many small local files.
            def read_local() -> dict[str, bytes]:
                contents = {}
                for url in urls:
                    with open(absolute(url), "rb") as handle:
                        contents[url] = handle.read()
                return contents

            return self._retry(f"read {len(urls)} files", read_local)
        fs, _ = self._fs(urls[0])
        paths = [self._fs(url)[1] for url in urls]
        contents = self._retry(f"read {len(urls)} objects", lambda: fs.cat(paths, on_error="raise"))
        return {url: contents[path] for url, path in zip(urls, paths, strict=True)}

    def delete(self, urls: list[str]) -> None:
        """Deletes these files (never a folder: herd removes only files it wrote, one by one)."""
        for url in urls:
            fs, path = self._fs(url)
            self._retry(f"delete {url}", lambda fs=fs, path=path: fs.rm_file(path) if fs.exists(path) else None)


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


def _durable_temporary(path: str, data: bytes) -> str:
    """`data` on disk, synced, under a temporary name beside `path` (.NAME.<32 hex>.tmp: what
    herd's clean-up recognises as its own), ready to be renamed or linked into place."""
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return temporary
