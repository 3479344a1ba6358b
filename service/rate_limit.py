"""Requests a second per owner: a token bucket each, so that one team's client polling in a tight loop
(every request reads storage: on S3, a GET each) slows only itself."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

# A bucket holds this many seconds of requests: a client may burst (a page of lists, a batch's files
# and its status at once) and then keeps to the rate.
BURST_S = 5.0


class RequestRate:
    def __init__(self, per_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_s = per_s
        self._capacity = max(1.0, per_s * BURST_S)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # owner: (tokens, when they were counted)
        self._lock = threading.Lock()

    def wait_s(self, owner: str) -> float:
        """0 when the owner's request may go now (and it is counted), else how long until it may."""
        with self._lock:
            now = self._clock()
            tokens, then = self._buckets.get(owner, (self._capacity, now))
            tokens = min(self._capacity, tokens + (now - then) * self.per_s)
            if tokens >= 1.0:
                self._buckets[owner] = (tokens - 1.0, now)
                return 0.0
            self._buckets[owner] = (tokens, now)
            return (1.0 - tokens) / self.per_s
