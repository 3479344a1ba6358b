"""Storage outages of minutes (S3 answering 503 to everything), mid-run and at the end of a run: herd
waits them out up to retry.storage_deadline_s without spending a shard's attempts, and past the
deadline ends with exit 6 and a clear message; the next run resumes. Moto on 127.0.0.1 behind a proxy."""

from __future__ import annotations

import threading
import time

import pytest
import s3fs

from schemas.errors import ExitCode, StorageUnavailable
from tests.cpu.conftest import read_rows, tiny_model_spec
from tests.cpu.fake_engine import FakeEngineFactory
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


class _LongOutageRun:
    """The 3-minute outage scenario, run in a thread beside the rest of the session: it only waits,
    so it costs the suite seconds instead of minutes. Its replica is the fake engine: a real one would
    sit idle through the outage and its polling CPU workers would slow every other test down."""

    def __init__(self, s3_endpoint: str, tiny_model) -> None:
        self.expected = _inputs(s3_endpoint, "outages")
        self.durations = iter([180.0, 20.0])
        self.proxy = FlakyS3Proxy(s3_endpoint, 0.0, outage_at=self._outage)
        self.tiny_model = tiny_model
        self.outcome = self.error = None
        self.took = 0.0
        self.thread = threading.Thread(target=self._run, name="long-outage-run", daemon=True)

    def _outage(self, method: str, path: str) -> float:
        # The first shard's commit (mid-run: other shards are running), then the manifest checkpoint
        # that the end of the run writes.
        wanted = "/manifest/" if len(self.proxy.outages) == 0 else "/manifest/_checkpoint-"
        return next(self.durations, 0.0) if method == "PUT" and wanted in path else 0.0

    def _run(self) -> None:
        from jobs.replicas import ReplicaPool
        from jobs.runner import run_job
        from schemas import parse_job

        # The default deadline (retry.storage_deadline_s 300) is what waits the outages out.
        job = parse_job(
            {
                **_job("outages", self.proxy.endpoint, backoff_cap_s=30.0),
                "model": tiny_model_spec(self.tiny_model),
                "prompt": {"format": "raw"},
            }
        )
        pool = ReplicaPool(job.model, job, size=1, engine_factory=FakeEngineFactory(seconds_per_call=0.2))
        started = time.monotonic()
        try:
            self.outcome = run_job(job, pool=pool, quiet=True)
        except BaseException as error:  # noqa: BLE001 - reported by the test that joins the run
            self.error = error
        finally:
            self.took = time.monotonic() - started
            pool.shutdown()
            self.proxy.__exit__(None, None, None)

    def start(self) -> _LongOutageRun:
        self.proxy.__enter__()
        self.thread.start()
        return self


@pytest.fixture(scope="session")
def long_outage_run(ray_session, s3_endpoint, tiny_model):
    run = _LongOutageRun(s3_endpoint, tiny_model).start()
    yield run
    run.thread.join(timeout=600)


@pytest.mark.starts_early
def test_fake_engine_run_keeps_running_while_storage_is_down_mid_run(long_outage_run):
    deadline = time.monotonic() + 120
    while not long_outage_run.proxy.outages:
        assert long_outage_run.thread.is_alive(), long_outage_run.error
        assert time.monotonic() < deadline, "the run never reached its first commit"
        time.sleep(0.5)
    while long_outage_run.proxy.failed <= 3:  # well into the outage: the run's storage calls are failing
        assert long_outage_run.thread.is_alive(), long_outage_run.error
        assert time.monotonic() < deadline, "the run made no storage call during the outage"
        time.sleep(0.5)
    time.sleep(3)  # past what a few quick retries would have waited
    assert long_outage_run.thread.is_alive(), long_outage_run.error


def test_fake_engine_outage_of_3_minutes_mid_run_and_one_of_20s_at_its_end_are_waited_out_and_every_row_is_written_once(
    long_outage_run, s3_endpoint
):
    run = long_outage_run
    run.thread.join(timeout=600)
    assert not run.thread.is_alive() and run.error is None, run.error
    proxy, outcome = run.proxy, run.outcome
    assert [path.rsplit("/", 1)[-1] for _, path in proxy.outages][1] == "_checkpoint-000001-000001.parquet"
    assert len(proxy.outages) == 2 and run.took >= 200 and proxy.failed > 10
    assert outcome.exit_code == ExitCode.SUCCESS and outcome.summary.shards_failed == []
    assert outcome.summary.attempts == outcome.summary.shards  # no shard tried twice
    ids = [row["id"] for row in read_rows("s3://herd-test/outages/out/data", s3_endpoint)]
    assert sorted(ids) == run.expected


def test_storage_down_past_the_deadline_ends_the_run_with_exit_6_and_the_next_run_resumes(run_tiny, s3_endpoint):
    expected = _inputs(s3_endpoint, "outage-long")

    def outage(method: str, path: str) -> float:
        return 3600.0 if method == "PUT" and "/manifest/" in path and not proxy.outages else 0.0

    with FlakyS3Proxy(s3_endpoint, 0.0, outage_at=outage) as proxy:
        started = time.monotonic()
        with pytest.raises(StorageUnavailable) as raised:
            run_tiny(**_job("outage-long", proxy.endpoint, storage_deadline_s=4.0))
        # Ended by the 4 s deadline, not by the outage's end (an hour) or the default deadline (300 s);
        # the bound leaves room for the shared replicas' start when this test runs first.
        assert time.monotonic() - started < 240
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
