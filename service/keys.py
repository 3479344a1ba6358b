"""API keys: `OWNER:KEY` lines from a file (or HERD_API_KEYS), kept only as hashes and compared in
constant time. A key's owner is who its files and batches belong to."""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from schemas.errors import SpecError

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
        """From `path`, else the HERD_API_KEYS variable (lines or ;-separated), else none."""
        if path is not None:
            try:
                return cls.parse(Path(path).read_text(), path)
            except OSError as error:
                raise SpecError(f"{path}: cannot read the keys file ({error.strerror})") from None
        return cls.parse(os.environ.get("HERD_API_KEYS", "").replace(";", "\n"), "HERD_API_KEYS")
