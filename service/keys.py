"""API keys: `OWNER:KEY` lines from a file (or HERD_API_KEYS), kept only as hashes and compared in
constant time. A key's owner is who its files and batches belong to. A keys file is read again when
it changes, so a key is added, rotated or revoked without a restart (which would stop every batch)."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
from pathlib import Path

from schemas.errors import SpecError

log = logging.getLogger("herd.service")

# The owner of everything when the service runs without keys (on loopback only).
LOCAL_OWNER = "local"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


class ApiKeys:
    def __init__(self, owners_by_digest: dict[bytes, str]) -> None:
        self._owners = owners_by_digest

    @property
    def required(self) -> bool:
        return bool(self._owners)

    def owner_of(self, key: str | None) -> str | None:
        """The key's owner, or None for a missing or unknown key. Every stored digest is compared, in
        constant time, so the time taken says nothing about which keys exist."""
        if key is None:
            return None
        given = _digest(key)
        found = None
        for digest, owner in self._owners.items():
            if hmac.compare_digest(digest, given):
                found = owner
        return found

    @classmethod
    def parse(cls, text: str, source: str) -> ApiKeys:
        owners: dict[bytes, str] = {}
        for number, line in enumerate(text.splitlines(), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            owner, separator, key = line.partition(":")
            owner, key = owner.strip(), key.strip()
            if not separator or not owner or len(key) < 16:
                raise SpecError(f"{source} line {number}: expected OWNER:KEY with a key of at least 16 characters")
            if _digest(key) in owners:
                raise SpecError(f"{source} line {number}: this key is given twice")
            owners[_digest(key)] = owner
        return cls(owners)

    @classmethod
    def load(cls, path: str | None) -> ApiKeys:
        """From `path` (read again whenever it changes), else the HERD_API_KEYS variable (lines or
        ;-separated), else none."""
        if path is not None:
            return KeysFile(path)
        return cls.parse(os.environ.get("HERD_API_KEYS", "").replace(";", "\n"), "HERD_API_KEYS")


class KeysFile(ApiKeys):
    """The keys of a file, read again on the first request after it changed (its size, modification
    time or inode: an editor's save or an atomic replace). A file changed into one that cannot be used
    (unreadable, a bad line, no key at all: that would open the service to any caller) leaves the keys
    as they were, and the log says why."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._missing_said = False
        self._seen = self._stamp()
        super().__init__(self._read()._owners)
        if not self.required:
            raise SpecError(f"{path}: the keys file holds no key")

    def _stamp(self) -> tuple[int, int, int]:
        try:
            status = os.stat(self._path)
        except OSError as error:
            raise SpecError(f"{self._path}: cannot read the keys file ({error.strerror})") from None
        return status.st_ino, status.st_size, status.st_mtime_ns

    def _read(self) -> ApiKeys:
        try:
            return ApiKeys.parse(Path(self._path).read_text(), self._path)
        except OSError as error:
            raise SpecError(f"{self._path}: cannot read the keys file ({error.strerror})") from None

    def owner_of(self, key: str | None) -> str | None:
        self._reload_if_changed()
        return super().owner_of(key)

    def _reload_if_changed(self) -> None:
        with self._lock:
            try:
                stamp = self._stamp()
            except SpecError as error:  # gone or unreadable: said once, not at every request
                if not self._missing_said:
                    log.error("the keys file cannot be read; the keys before it stay: %s", error)
                self._missing_said = True
                return
            self._missing_said = False
            if stamp == self._seen:
                return
            self._seen = stamp
            try:
                keys = self._read()
                if not keys.required:
                    raise SpecError(f"{self._path}: the keys file holds no key")
            except SpecError as error:
                log.error("the keys file changed but cannot be used; the keys before it stay: %s", error)
                return
            self._owners = keys._owners
            log.info("read the keys file again: %d key(s)", len(self._owners))
