"""Storage outages of minutes (S3 answering 503 to everything), mid-run and at the end of a run: herd
waits them out up to retry.storage_deadline_s without spending a shard's attempts, and past the
deadline ends with exit 6 and a clear message; the next run resumes. Moto on 127.0.0.1 behind a proxy."""

from __future__ import annotations

import time

import pytest
import s3fs

from schemas.errors import ExitCode, StorageUnavailable
from tests.cpu.conftest import read_rows
from tests.cpu.flaky_s3_proxy import FlakyS3Proxy


def _inputs(s3_endpoint: str, prefix: str, rows: int = 60) -> list[str]:
    ids = [f"{prefix}-{index:03d}" for index in range(rows)]
    lines = "".join(f'{{"id": "{row_id}", "prompt": "say something about {row_id}"}}\n' for row_id in ids)
    s3fs.S3FileSystem(endpoint_url=s3_endpoint).pipe(f"herd-test/{prefix}/in.jsonl", lines.encode())
    return ids


def _job(prefix: str, endpoint: str, **retry: object) -> dict:
    return {
        "input": {
            "path": f"s3://herd-test/{prefix}/in.jsonl",
            "prompt_column": "prompt",
            "id_column": "id",
            "bytes_per_shard": 1024,
        },
        "sampling": {"max_new_tokens": 4},
        # A lease left by a run that ended in an outage is taken over once stale (at once from another
        # process; these runs share the test's).
        "output": {"path": f"s3://herd-test/{prefix}/out", "format": "jsonl", "lease_ttl_s": 5},
        "storage": {"endpoint_url": endpoint},
        # One try per shard: a storage failure that used one up would fail the shard.
        "retry": {"attempts": 1, "backoff_base_s": 0.2, "backoff_cap_s": 5.0, **retry},
    }


def test_an_outage_of_3_minutes_mid_run_and_one_of_20s_at_its_end_are_waited_out_and_every_row_is_written_once(
    run_tiny, s3_endpoint
):
    expected = _inputs(s3_endpoint, "outages")
    durations = iter([180.0, 20.0])

    def outage(method: str, path: str) -> float:
        # The first shard's commit (mid-run: other shards are running), then the manifest index
        # that the end of the run writes.
        wanted = "/manifest/" if len(proxy.outages) == 0 else "_index.jsonl"
        return next(durations, 0.0) if method == "PUT" and wanted in path else 0.0

    with FlakyS3Proxy(s3_endpoint, 0.0, outage_at=outage) as proxy:
        started = time.monotonic()
        # The default deadline (retry.storage_deadline_s 300) is what waits the outages out.
        outcome = run_tiny(**_job("outages", proxy.endpoint, backoff_cap_s=30.0))
        took = time.monotonic() - started
    assert [path.rsplit("/", 1)[-1] for _, path in proxy.outages][1] == "_index.jsonl"
    assert len(proxy.outages) == 2 and took >= 200 and proxy.failed > 10
    assert outcome.exit_code == ExitCode.SUCCESS and outcome.summary.shards_failed == []
    assert outcome.summary.attempts == outcome.summary.shards  # no shard tried twice
    ids = [row["id"] for row in read_rows("s3://herd-test/outages/out/data", s3_endpoint)]
    assert sorted(ids) == expected


def test_storage_down_past_the_deadline_ends_the_run_with_exit_6_and_the_next_run_resumes(run_tiny, s3_endpoint):
    expected = _inputs(s3_endpoint, "outage-long")

    def outage(method: str, path: str) -> float:
        return 3600.0 if method == "PUT" and "/manifest/" in path and not proxy.outages else 0.0

    with FlakyS3Proxy(s3_endpoint, 0.0, outage_at=outage) as proxy:
        started = time.monotonic()
        with pytest.raises(StorageUnavailable) as raised:
            run_tiny(**_job("outage-long", proxy.endpoint, storage_deadline_s=4.0))
        assert time.monotonic() - started < 60
        assert raised.value.exit_code == ExitCode.STORAGE_UNAVAILABLE == 6
        message = str(raised.value)
        assert "retry.storage_deadline_s is 4s" in message and "Please reduce your request rate" in message
        proxy.outage_until = 0.0  # storage is back
        time.sleep(5)  # the lease the first run could not release goes stale
        outcome = run_tiny(**_job("outage-long", proxy.endpoint, storage_deadline_s=4.0))
    assert outcome.exit_code == ExitCode.SUCCESS
    ids = [row["id"] for row in read_rows("s3://herd-test/outage-long/out/data", s3_endpoint)]
    assert sorted(ids) == expected


def test_a_storage_call_is_retried_until_the_deadline_not_only_its_attempts():
    from common.retry import call_with_retry
    from schemas.job import RetrySpec

    policy = RetrySpec(attempts=2, backoff_base_s=0.01, backoff_cap_s=0.05, storage_deadline_s=0.5)
    started = time.monotonic()

    def down_for(seconds: float):
        def call() -> str:
            if time.monotonic() - started < seconds:
                raise ConnectionResetError("dropped")
            return "ok"

        return call

    assert call_with_retry(down_for(0.3), policy, "read") == "ok"  # many more tries than 2
    started = time.monotonic()
    with pytest.raises(StorageUnavailable, match=r"read: ConnectionResetError: dropped \(failing for"):
        call_with_retry(down_for(10), policy, "read")
    assert 0.5 <= time.monotonic() - started < 2
    calls = []

    def missing() -> None:
        calls.append(1)
        raise FileNotFoundError("gone")

    with pytest.raises(FileNotFoundError):  # not a failure that may pass: raised at once
        call_with_retry(missing, policy, "read")
    assert len(calls) == 1


def test_the_jobs_api_answer_no_available_agent_is_retried_as_a_passing_failure():
    from jobs.cluster_jobs import _passing

    assert _passing(
        RuntimeError("Request failed with status code 500: No available agent to submit job, please try again later.")
    )
    assert _passing(ConnectionRefusedError())
    assert not _passing(RuntimeError("Job with submission_id herd-x-1 already exists"))
