"""One driver per output: a lease object in the output, created with a conditional write and renewed
while the run goes on.

A second run on a live lease stops at once (OutputBusy, its own exit code). A lease that has not been
renewed for `lease_ttl_s`, or that a dead process of this host holds, is taken over, so a run after a
crash never waits long. Every write of the lease is conditional on the version last seen (S3's
If-Match; a compare-and-swap on local disk), so two runs taking over the same stale lease cannot both
win, and a run whose lease was taken over finds out at its next renewal and stops before committing.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from common.layout import OutputLayout
from common.storage import PreconditionFailed, Storage
from schemas.errors import OutputBusy

log = logging.getLogger(__name__)


class LeaseLost(OutputBusy):
    """This run's lease was taken over (it was not renewed in time): it must stop writing."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def holder_is_gone(holder: dict[str, Any], now: float) -> str | None:
    """Why a lease may be taken over, or None while its holder is alive."""
    age = now - float(holder.get("renewed_at", 0))
    if age > float(holder.get("ttl_s", 0)):
        return f"not renewed for {age:.0f}s (ttl {holder.get('ttl_s')}s)"
    if holder.get("host") == socket.gethostname() and not _pid_alive(int(holder.get("pid", 0))):
        return f"its process {holder.get('pid')} on this host is gone"
    return None


def describe_holder(holder: dict[str, Any]) -> str:
    return f"held by {holder.get('host')} pid {holder.get('pid')} since {holder.get('since')}"


@dataclass
class Lease:
    storage: Storage
    url: str
    ttl_s: float
    owner: str = field(default_factory=lambda: uuid.uuid4().hex)
    since: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    version: str = ""
    lost: str | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _record(self) -> str:
        return json.dumps(
            {
                "owner": self.owner,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "since": self.since,
                "renewed_at": time.time(),
                "ttl_s": self.ttl_s,
            }
        )

    def acquire(self) -> None:
        try:
            self.version = self.storage.create_exclusive(self.url, self._record())
        except PreconditionFailed:
            self._take_over()
        self._thread = threading.Thread(target=self._renew_until_released, name="herd-lease", daemon=True)
        self._thread.start()

    def _take_over(self) -> None:
        try:
            text, version = self.storage.read_versioned(self.url)
        except FileNotFoundError:  # released between our create and our read: try once more
            self.version = self.storage.create_exclusive(self.url, self._record())
            return
        holder = json.loads(text)
        if holder.get("owner") == self.owner:  # our own create landed, though its answer was lost
            self.version = version
            return
        reason = holder_is_gone(holder, time.time())
        if reason is None:
            raise OutputBusy(f"output busy: {describe_holder(holder)}; try again when that run ends")
        log.warning("taking over the output's lease, %s: %s", describe_holder(holder), reason)
        try:
            self.version = self.storage.replace_if_unchanged(self.url, version, self._record())
        except PreconditionFailed:
            raise OutputBusy("output busy: another run took the stale lease over first") from None

    def _renew_until_released(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                self.version = self.storage.replace_if_unchanged(self.url, self.version, self._record())
            except PreconditionFailed:
                if self._still_ours():  # our renewal landed, though its answer was lost
                    continue
                self.lost = "the lease was taken over by another run (it was not renewed within its ttl)"
                log.error("%s; this run stops", self.lost)
                return
            except Exception as error:  # noqa: BLE001 - a storage hiccup: the next renewal tries again
                log.warning("could not renew the output's lease (%s); trying again", error)

    def _still_ours(self) -> bool:
        try:
            text, version = self.storage.read_versioned(self.url)
        except Exception:  # noqa: BLE001 - unreadable now: not known to be ours
            return False
        if json.loads(text).get("owner") != self.owner:
            return False
        self.version = version
        return True

    def check(self) -> None:
        """Raises LeaseLost once another run has taken the lease over: nothing more may be written."""
        if self.lost:
            raise LeaseLost(self.lost)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if not self.lost:
            # One quick try: after an outage the run is ending anyway, and a stale lease is taken over.
            quick = Storage(self.storage.storage, self.storage.retry.model_copy(update={"storage_deadline_s": 0}))
            try:
                quick.delete_if_unchanged(self.url, self.version)
            except Exception as error:  # noqa: BLE001 - a stale lease is taken over by the next run anyway
                log.warning("could not release the output's lease (%s)", error)


def acquire_lease(storage: Storage, layout: OutputLayout, ttl_s: float) -> Lease:
    lease = Lease(storage, layout.lease, ttl_s)
    lease.acquire()
    return lease
