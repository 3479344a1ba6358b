"""The one retry policy: exponential backoff with a cap and jitter, its numbers from the job spec."""

from __future__ import annotations

import errno
import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from schemas.job import RetrySpec

T = TypeVar("T")
log = logging.getLogger(__name__)

# Words that S3 and its look-alikes put in throttling and server-side errors (s3fs keeps the
# botocore message in the OSError it raises).
# s3fs turns 503 into EBUSY and throttling into EAGAIN.
_TRANSIENT_ERRNOS = {errno.EBUSY, errno.EAGAIN, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNREFUSED}
_TRANSIENT_MARKERS = (
    "SlowDown",
    "Throttl",
    "ServiceUnavailable",
    "InternalError",
    "Service Unavailable",
    "RequestTimeout",
    "503",
    "500",
    "502",
    "504",
    "Connection",
    "timed out",
)


def backoff_seconds(policy: RetrySpec, attempt: int, rng: random.Random | None = None) -> float:
    """Delay before retry number `attempt` (1 = the first retry)."""
    delay = min(policy.backoff_cap_s, policy.backoff_base_s * (2 ** (attempt - 1)))
    spread = delay * policy.jitter
    return max(0.0, delay - spread + (rng or random).random() * 2 * spread)


def is_transient(error: BaseException) -> bool:
    """Throttling, 5xx and dropped connections are worth retrying; missing files and denials are not."""
    if isinstance(error, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    if isinstance(error, (ConnectionError, TimeoutError)):
        return True
    if isinstance(error, OSError) and error.errno in _TRANSIENT_ERRNOS:
        return True
    text = f"{type(error).__name__} {error}"
    return any(marker in text for marker in _TRANSIENT_MARKERS)


def call_with_retry(
    operation: Callable[[], T],
    policy: RetrySpec,
    what: str,
    retryable: Callable[[BaseException], bool] = is_transient,
) -> T:
    for attempt in range(1, policy.attempts + 1):
        try:
            return operation()
        except Exception as error:
            if attempt == policy.attempts or not retryable(error):
                raise
            delay = backoff_seconds(policy, attempt)
            log.warning("%s failed (%s); retry %d/%d in %.2fs", what, error, attempt, policy.attempts - 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable: the loop returns or raises")
