"""A node's local cache directory, shared by the replicas on that node, and the lock they take turns with."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("HERD_CACHE_DIR", Path.home() / ".cache" / "herd"))


@contextmanager
def exclusive(lock_path: Path) -> Iterator[None]:
    """One process of the node at a time (an flock, released if the holder dies)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
