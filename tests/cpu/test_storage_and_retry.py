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


@pytest.fixture(params=["disk", "s3"])
def root(request, tmp_path):
    """The same operations on local disk and on S3 (a moto server on 127.0.0.1)."""
    if request.param == "disk":
        return Storage(StorageSpec(), RetrySpec()), str(tmp_path / "root")
    endpoint = request.getfixturevalue("s3_endpoint")
    return Storage(StorageSpec(endpoint_url=endpoint), RetrySpec()), f"s3://herd-test/storage-{tmp_path.name}"


def test_a_folder_names_everything_relative_to_its_root_on_disk_and_on_s3_and_no_name_leaves_it(root):
    from common.storage import PreconditionFailed, join

    storage, base = root
    outside = join(base, "neighbour.txt")
    storage.write_text(outside, "not the folder's")
    folder = storage.folder(join(base, "output"))
    assert folder.list_names() == [] and folder.find() == [] and not folder.exists("a.txt")
    folder.write_text("a.txt", "caf\u00e9")
    folder.write_atomic("data/b.bin", b"0123456789")
    folder.folder("data").write_atomic("deep/c.jsonl", b"{}\n")
    assert folder.url("data/b.bin") == join(base, "output", "data", "b.bin") and folder.url() == join(base, "output")
    assert folder.list_names() == ["a.txt"] and folder.list_names("data") == ["b.bin"]
    assert folder.find() == ["a.txt", "data/b.bin", "data/deep/c.jsonl"]
    assert folder.read_text("a.txt") == "café" and folder.read_bytes("data/b.bin", 2, 5) == b"234"
    assert folder.read_many(["a.txt", "data/b.bin"]) == {"a.txt": "café".encode(), "data/b.bin": b"0123456789"}
    version = folder.create_exclusive("record.json", "one")
    with pytest.raises(PreconditionFailed):
        folder.create_exclusive("record.json", "two")
    assert folder.read_versioned("record.json") == ("one", version)
    folder.replace_if_unchanged("record.json", version, "three")
    assert folder.read_text("record.json") == "three"
    # No name reaches outside the root: what holds the folder cannot read, write or delete there.
    for name in ("../neighbour.txt", "data/../../neighbour.txt", "/etc/passwd", "s3://herd-test/x"):
        with pytest.raises(ValueError, match="is not a name inside"):
            folder.delete([name])
    folder.delete(["a.txt", "data/b.bin"])
    # (On disk the compare-and-swap's lock file stays beside the record.)
    assert [name for name in folder.find() if not name.endswith(".lock")] == ["data/deep/c.jsonl", "record.json"]
    assert storage.read_text(outside) == "not the folder's"


def test_every_storage_operation_behaves_the_same_on_disk_and_on_s3(root):
    from common.storage import PreconditionFailed, join

    storage, base = root
    assert storage.list_names(base) == [] and not storage.has_entries(base) and not storage.exists(join(base, "a"))
    storage.write_atomic(join(base, "b.bin"), b"0123456789")
    storage.write_text(join(base, "a.txt"), "caf\u00e9")
    storage.write_atomic(join(base, "sub", "c.jsonl"), b"{}\n")
    assert storage.list_names(base) == ["a.txt", "b.bin"]  # files directly under it, sorted
    assert storage.has_entries(base) and not storage.has_entries(base, ignoring={"a.txt", "b.bin", "sub"})
    assert storage.read_bytes(join(base, "b.bin"), 2, 5) == b"234" and storage.read_text(join(base, "a.txt")) == "café"
    assert storage.read_stream(join(base, "b.bin"), lambda handle: handle.read(4)) == b"0123"
    assert storage.read_many([join(base, "a.txt"), join(base, "b.bin")]) == {
        join(base, "a.txt"): "café".encode(),
        join(base, "b.bin"): b"0123456789",
    }
    listed = storage.expand_inputs(base)
    assert [info.url for info in listed] == [join(base, "a.txt"), join(base, "b.bin"), join(base, "sub", "c.jsonl")]
    assert [info.size for info in listed] == [5, 10, 3] and all(info.version for info in listed)
    assert [info.url for info in storage.expand_inputs(join(base, "*.bin"))] == [join(base, "b.bin")]
    assert storage.version_of(join(base, "b.bin")) == listed[1].version

    lease = join(base, "lease.json")
    first = storage.create_exclusive(lease, "one")
    with pytest.raises(PreconditionFailed):
        storage.create_exclusive(lease, "two")
    assert storage.read_versioned(lease) == ("one", first)
    second = storage.replace_if_unchanged(lease, first, "three")
    with pytest.raises(PreconditionFailed):
        storage.replace_if_unchanged(lease, first, "stale")
    assert storage.read_versioned(lease) == ("three", second)
    assert not storage.delete_if_unchanged(lease, first) and storage.delete_if_unchanged(lease, second)
    with pytest.raises(FileNotFoundError):
        storage.read_versioned(lease)

    storage.delete([join(base, "a.txt"), join(base, "missing")])
    # On disk the compare-and-swap's lock file stays beside the lease (removing it would race the flock).
    assert [name for name in storage.list_names(base) if not name.endswith(".json.lock")] == ["b.bin"]
