"""The storage module's atomic writes and the single retry policy."""

from __future__ import annotations

import random

import pytest

from common.retry import backoff_seconds, call_with_retry, is_transient
from common.storage import Storage
from schemas.job import RetrySpec, StorageSpec


def test_backoff_doubles_up_to_the_cap_within_the_jitter():
    policy = RetrySpec(backoff_base_s=1.0, backoff_cap_s=5.0, jitter=0.0)
    assert [backoff_seconds(policy, attempt) for attempt in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    jittered = RetrySpec(backoff_base_s=1.0, backoff_cap_s=5.0, jitter=0.5)
    delays = [backoff_seconds(jittered, 2, random.Random(seed)) for seed in range(200)]
    assert min(delays) >= 1.0 and max(delays) <= 3.0 and len(set(delays)) > 100


def _s3_error(code: str, status: int, translated: OSError) -> OSError:
    """An error as s3fs raises it: a Python exception caused by botocore's ClientError."""
    from botocore.exceptions import ClientError

    translated.__cause__ = ClientError(
        {"Error": {"Code": code, "Message": "..."}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject"
    )
    return translated


def test_transient_errors_are_classified_by_code_type_and_errno_not_by_message():
    import errno

    from botocore.exceptions import EndpointConnectionError

    assert is_transient(_s3_error("SlowDown", 503, OSError(errno.EBUSY, "Please reduce your request rate")))
    assert is_transient(_s3_error("InternalError", 500, OSError(errno.EREMOTEIO, "We encountered an internal error")))
    assert is_transient(_s3_error("SomethingNew", 502, OSError(errno.EIO, "Bad Gateway")))
    assert is_transient(EndpointConnectionError(endpoint_url="http://127.0.0.1:1"))
    assert is_transient(ConnectionResetError())
    assert is_transient(OSError(errno.ETIMEDOUT, "timed out"))
    assert not is_transient(_s3_error("AccessDenied", 403, PermissionError("Access Denied")))
    assert not is_transient(_s3_error("InvalidRange", 416, OSError(errno.EINVAL, "503 in the key name is not a 503")))
    assert not is_transient(FileNotFoundError("s3://bucket/missing"))
    assert not is_transient(OSError("An error occurred (SlowDown): only words, no code"))

    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("dropped")
        return "ok"

    policy = RetrySpec(attempts=3, backoff_base_s=0.0)
    assert call_with_retry(flaky, policy, "flaky") == "ok" and len(calls) == 3

    def missing():
        calls.append(1)
        raise FileNotFoundError("gone")

    calls.clear()
    with pytest.raises(FileNotFoundError):
        call_with_retry(missing, policy, "missing")
    assert len(calls) == 1


def test_local_atomic_write_leaves_no_temporary_files(tmp_path):
    storage = Storage(StorageSpec(), RetrySpec())
    target = tmp_path / "deep" / "file.bin"
    storage.write_atomic(str(target), b"x" * 1000)
    storage.write_atomic(str(target), b"y" * 10)
    assert target.read_bytes() == b"y" * 10
    assert [path.name for path in target.parent.iterdir()] == ["file.bin"]
