"""The one retry policy: exponential backoff with a cap and jitter, its numbers from the job spec."""

from __future__ import annotations

import errno
import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from schemas.errors import SpecError, StorageUnavailable
from schemas.job import RetrySpec

T = TypeVar("T")
log = logging.getLogger(__name__)

# What S3 and its look-alikes answer when a request may succeed if tried again: throttling and
# server-side failures (botocore's error codes, and the HTTP statuses behind them).
_TRANSIENT_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "ServiceUnavailable",
    "InternalError",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "OperationAborted",
}
_TRANSIENT_STATUSES = {429, 500, 502, 503, 504}
# s3fs turns 503 into EBUSY, throttling into EAGAIN, InternalError into EREMOTEIO.
_TRANSIENT_ERRNOS = {
    errno.EBUSY,
    errno.EAGAIN,
    errno.ETIMEDOUT,
    errno.ECONNRESET,
    errno.ECONNREFUSED,
    errno.ECONNABORTED,
    errno.EPIPE,
    errno.EREMOTEIO,
}


def is_transient_code(code: str) -> bool:
    """Whether an S3 error code says the request may succeed if tried again."""
    return code in _TRANSIENT_CODES


def backoff_seconds(policy: RetrySpec, attempt: int, rng: random.Random | None = None) -> float:
    """Delay before retry number `attempt` (1 = the first retry)."""
    delay = min(policy.backoff_cap_s, policy.backoff_base_s * (2 ** (attempt - 1)))
    spread = delay * policy.jitter
    return max(0.0, delay - spread + (rng or random).random() * 2 * spread)


def _causes(error: BaseException) -> list[BaseException]:
    """The error and what it was raised from (s3fs keeps botocore's error as the cause)."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def is_transient(error: BaseException) -> bool:
    """Throttling, 5xx and dropped connections are worth retrying; missing files and denials are not.
    Decided from botocore's error codes and HTTP statuses, exception types and errno, never from the
    words of a message."""
    for cause in _causes(error):
        if isinstance(cause, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
            return False
        response = getattr(cause, "response", None)
        if isinstance(response, dict):
            code = response.get("Error", {}).get("Code")
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return is_transient_code(code) or status in _TRANSIENT_STATUSES
        if isinstance(cause, (ConnectionError, TimeoutError)):
            return True
        if isinstance(cause, OSError) and cause.errno in _TRANSIENT_ERRNOS:
            return True
        # botocore's and aiohttp's connection failures (their classes, not their messages).
        module = type(cause).__module__
        if module.startswith(("botocore", "aiohttp", "urllib3")) and any(
            word in type(cause).__name__ for word in ("Connection", "Timeout", "ServerDisconnected", "Endpoint")
        ):
            return True
    return False


def call_with_retry(
    operation: Callable[[], T],
    policy: RetrySpec,
    what: str,
    retryable: Callable[[BaseException], bool] = is_transient,
) -> T:
    """`operation`, tried again after each failure that may pass (`retryable`) with backoff, at least
    `policy.attempts` times and until `policy.storage_deadline_s` after the first failure; then
    StorageUnavailable. Other failures are raised at once."""
    first_failure: float | None = None
    attempt = 0
    while True:
        attempt += 1
        try:
            return operation()
        except Exception as error:
            if not retryable(error):
                raise
            now = time.monotonic()
            first_failure = now if first_failure is None else first_failure
            failing_for = now - first_failure
            if attempt >= policy.attempts and failing_for >= policy.storage_deadline_s:
                raise StorageUnavailable(
                    f"{what}: {type(error).__name__}: {error} (failing for {failing_for:.0f}s, {attempt} tries; "
                    f"retry.storage_deadline_s is {policy.storage_deadline_s:g}s)"
                ) from error
            delay = backoff_seconds(policy, attempt)
            if attempt >= policy.attempts:  # past the tries: only the deadline is left to wait for
                delay = min(delay, max(0.0, first_failure + policy.storage_deadline_s - now))
            log.warning("%s failed (%s); try %d again in %.2fs", what, error, attempt + 1, delay)
            time.sleep(delay)


def storage_problem(message: str, error: BaseException) -> Exception:
    """The error to raise for a storage failure before generation: the user's to fix (SpecError,
    exit 2) unless it is one that may pass (StorageUnavailable, its own exit code)."""
    text = f"{message}: {type(error).__name__}: {error}"
    return StorageUnavailable(text) if is_transient(error) else SpecError(text)
