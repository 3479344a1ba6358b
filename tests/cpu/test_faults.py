"""Fault injection: dead replicas, a killed driver, a throttling S3. Every row exactly once."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from common.storage import Storage
from herd.cli import HERD_LOGGERS
from jobs.planner import plan_shards
from jobs.replicas import ReplicaPool
from jobs.runner import run_job
from schemas import parse_job
from schemas.errors import ExitCode
from schemas.shard import ShardRecord
from tests.cpu import fault_tally
from tests.cpu.conftest import (
    FAKE_AWS_KEY_ID,
    FAKE_AWS_SECRET,
    manifest_records,
    read_rows,
    started_replica,
    tiny_model_spec,
)
from tests.cpu.fake_engine import FakeEngineFactory
from tests.cpu.flaky_s3_proxy import FlakyS3Proxy
from tests.cpu.process_tree import descendants, end_processes_mentioning

REPO = Path(__file__).resolve().parents[2]


def _jsonl_input(path: Path | str) -> dict:
    """Small byte ranges, so that even a small file makes many shards."""
    return {"path": str(path), "prompt_column": "prompt", "id_column": "id", "bytes_per_shard": 1024}


def _run_on_fake_engine(
    tmp_path: Path, tiny_model: Path, factory: FakeEngineFactory, replicas: int, quiet: bool = False, **sections
):
    """Runs a JSONL job on a pool of fake-engine replicas built for it, then stops the pool. `quiet`:
    each replica's output in a log file of its own, as `herd run` and herd.run have it."""
    job = parse_job(
        {
            "input": _jsonl_input(tmp_path / "in.jsonl"),
            "model": tiny_model_spec(tiny_model),
            "sampling": {"max_new_tokens": 4},
            "output": {"path": str(tmp_path / "out")},
            **sections,
        }
    )
    pool = ReplicaPool(job.model, job, size=replicas, engine_factory=factory, quiet=quiet)
    try:
        return job, run_job(job, pool=pool, quiet=quiet)
    finally:
        pool.shutdown()


def _assert_replaced_once_and_every_row_written_once(outcome: Any, output: Path, expected: list[str]) -> None:
    """A run that lost one replica mid-job: it succeeded with that replica replaced, no row an error,
    every row written once (counted in the session's fault tally)."""
    assert outcome.exit_code == ExitCode.SUCCESS
    assert outcome.summary.replicas_replaced == 1 and outcome.summary.error_rows == 0
    ids = [row["id"] for row in read_rows(str(output / "data"))]
    fault_tally.record(1, expected, ids)
    assert sorted(ids) == expected


def _write_prompts(path: Path, count: int, prefix: str = "") -> list[str]:
    ids = [f"{prefix}row-{index:04d}" for index in range(count)]
    with open(path, "w") as handle:
        for row_id in ids:
            handle.write(json.dumps({"id": row_id, "prompt": f"tell me about {row_id} in detail"}) + "\n")
    return ids


def test_fake_engine_replica_killed_three_times_mid_shard_loses_and_duplicates_nothing(
    ray_session, tiny_model, tmp_path
):
    expected = _write_prompts(tmp_path / "in.jsonl", 200)
    factory = FakeEngineFactory(seconds_per_call=0.3, deaths_dir=str(tmp_path / "deaths"), deaths=3)
    retry = {"attempts": 5, "backoff_base_s": 0.05, "max_replica_restarts": 3}
    job, outcome = _run_on_fake_engine(tmp_path, tiny_model, factory, replicas=2, retry=retry)
    assert len(list((tmp_path / "deaths").iterdir())) == 3
    assert outcome.exit_code == ExitCode.SUCCESS
    assert outcome.summary.replicas_replaced == 3
    # Each death fails the shards the replica held (up to shards_in_flight); each is retried once more.
    in_flight = job.resources.shards_in_flight
    assert outcome.summary.shards + 3 <= outcome.summary.attempts <= outcome.summary.shards + 3 * in_flight
    records = manifest_records(tmp_path / "out")
    assert len(records) == outcome.summary.shards
    assert sum(record.attempts for record in records) == outcome.summary.attempts
    ids = [row["id"] for row in read_rows(str(tmp_path / "out" / "data"))]
    fault_tally.record(3, expected, ids)
    assert sorted(ids) == expected


@pytest.mark.parametrize(("deaths", "run_as_packs"), [(1, True), (2, False)])
def test_fake_engine_pack_whose_replica_dies_is_retried_as_a_pack_then_as_its_shards(
    ray_session, tiny_model, tmp_path, deaths, run_as_packs
):
    """6 small files, 2 packs of 3. A replica death is not the pack's fault: retried as a pack; once its
    attempts are used up (a row that kills the engine each time would do that), as its shards."""
    (tmp_path / "in").mkdir()
    expected = []
    for index in range(6):
        lines = [{"id": f"f{index}-{row}", "prompt": f"tell me about file {index} row {row}"} for row in range(5)]
        expected += [line["id"] for line in lines]
        (tmp_path / "in" / f"part-{index}.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    factory = FakeEngineFactory(seconds_per_call=0.2, deaths_dir=str(tmp_path / "deaths"), deaths=deaths)
    retry = {"attempts": 2, "backoff_base_s": 0.05, "max_replica_restarts": 3}
    _, outcome = _run_on_fake_engine(
        tmp_path, tiny_model, factory, replicas=1, retry=retry, input=_jsonl_input(tmp_path / "in")
    )
    assert outcome.exit_code == ExitCode.SUCCESS and outcome.summary.replicas_replaced == deaths
    records = manifest_records(tmp_path / "out")
    if run_as_packs:
        assert sorted(len(record.members) for record in records) == [3, 3]
    else:
        assert len(records) == 6 and not any(record.members for record in records)
    ids = [row["id"] for row in read_rows(str(tmp_path / "out" / "data"))]
    fault_tally.record(deaths, sorted(expected), ids)
    assert sorted(ids) == sorted(expected)


def _run_cli(job_file: Path, ray_dir: str, *options: str, **kwargs) -> subprocess.Popen:
    environment = {**os.environ, "RAY_TMPDIR": ray_dir}
    return subprocess.Popen(
        [sys.executable, "submit.py", "run", str(job_file), *options],
        cwd=REPO,
        env=environment,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


@pytest.mark.own_engine
@pytest.mark.parametrize("small_files", [False, True])
def test_driver_killed_with_sigkill_then_rerun_in_json_mode_completes_without_redoing_committed_shards(
    tiny_model, tmp_path, small_files
):
    """The rerun also shows the CLI's JSON mode: only JSON objects, progress and one summary, and only
    herd's own log lines (a process of its own is the point there too). With 40 small files the shards
    run in packs of 3-4 files: a pack committed before the kill is found by its files' shards."""
    if small_files:
        (tmp_path / "in").mkdir()
        expected = []
        for index in range(40):
            expected += _write_prompts(tmp_path / "in" / f"part-{index:02d}.jsonl", 4, prefix=f"f{index:02d}-")
        expected.sort()
    else:
        expected = _write_prompts(tmp_path / "in.jsonl", 160)
    output = tmp_path / "out"
    (tmp_path / "job.yaml").write_text(
        json.dumps(
            {
                "input": _jsonl_input(tmp_path / ("in" if small_files else "in.jsonl")),
                "model": tiny_model_spec(tiny_model),
                "sampling": {"max_new_tokens": 32, "ignore_eos": True, "seed": 2},
                "output": {"path": str(output)},
            }
        )
    )
    ray_dir = tempfile.mkdtemp(prefix="hr", dir="/tmp")  # short: Ray's socket paths have a length limit
    os.makedirs(os.path.join(ray_dir, "ray"))
    try:
        driver = _run_cli(tmp_path / "job.yaml", ray_dir)
        deadline = time.monotonic() + 300
        while len(list((output / "manifest").glob("*.json"))) < 3:
            assert driver.poll() is None, driver.stdout.read()
            assert time.monotonic() < deadline, "no shard committed in time"
            time.sleep(0.2)
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
        end_processes_mentioning(ray_dir)
        committed = {path.name: path.read_text() for path in (output / "manifest").glob("*.json")}
        assert not (output / "_SUCCESS").exists()
        # What the output says of itself now: exactly the shards not committed are missing, and the
        # lease left behind is held by a process that is gone.
        inspected = subprocess.run(
            [sys.executable, "submit.py", "inspect", str(output), "--json"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert inspected.returncode == 0, inspected.stderr
        state = json.loads(inspected.stdout)
        job = parse_job(json.loads((tmp_path / "job.yaml").read_text()))
        storage = Storage(job.storage, job.retry)
        planned = {shard.shard_id for shard in plan_shards(job.input, storage.expand_inputs(job.input.path), storage)}
        records = [ShardRecord.model_validate_json(content) for content in committed.values()]
        committed_ids = {shard_id for record in records for shard_id in record.members or [record.shard_id]}
        assert all(record.members for record in records) == small_files
        assert {shard["shard"] for shard in state["shards"]["missing"]} == planned - committed_ids
        assert state["shards"]["committed"] == len(committed_ids) and state["shards"]["planned"] == len(planned)
        assert state["run_in_progress"]["live"] is False
        assert "on this host is gone" in state["run_in_progress"]["stale_because"]

        rerun = _run_cli(tmp_path / "job.yaml", ray_dir, "--log-format", "json", "--progress-every", "1")
        log, _ = rerun.communicate(timeout=600)
        assert rerun.returncode == 0, log[-3000:]
    finally:
        end_processes_mentioning(ray_dir)
        shutil.rmtree(ray_dir, ignore_errors=True)
    # The killed driver's lease was taken over at once (its process is gone), not after the ttl.
    assert f"taking over the output's lease, held by {socket.gethostname()} pid {driver.pid}" in log
    assert "its process" in log and "on this host is gone" in log
    summary = json.loads((output / "summary.json").read_text())
    assert summary["shards_skipped"] >= len(committed_ids)
    assert summary["shards_run"] == summary["shards"] - summary["shards_skipped"]
    after = {record.shard_id: record for record in manifest_records(output)}
    for name, content in committed.items():  # committed shards were not generated again
        assert after[name.removesuffix(".json")] == ShardRecord.model_validate_json(content)
    ids = [row["id"] for row in read_rows(str(output / "data"))]
    fault_tally.record(1, expected, ids)
    assert sorted(ids) == expected
    assert FAKE_AWS_SECRET not in log and FAKE_AWS_KEY_ID not in log
    objects = [json.loads(line) for line in log.splitlines() if line.strip()]  # fails on any line not JSON
    events = [item["event"] for item in objects]
    assert "progress" in events and events.count("summary") == 1
    assert next(item for item in objects if item["event"] == "summary")["status"] == "succeeded"
    assert not any("vllm" in line.lower() for line in log.splitlines())
    # Only herd's own loggers speak below WARNING: the report's plots made matplotlib log at INFO.
    loggers = {item["logger"] for item in objects if item["event"] == "log"}
    assert loggers and {name.split(".")[0] for name in loggers} <= set(HERD_LOGGERS), loggers


def test_s3_throttling_a_fifth_of_requests_still_commits_every_row(run_tiny, tmp_path, s3_endpoint):
    import s3fs

    expected = _write_prompts(tmp_path / "in.jsonl", 60)
    s3fs.S3FileSystem(endpoint_url=s3_endpoint).put(str(tmp_path / "in.jsonl"), "herd-test/flaky/in.jsonl")
    with FlakyS3Proxy(s3_endpoint, failure_rate=0.2, seed=4) as proxy:
        outcome = run_tiny(
            input=_jsonl_input("s3://herd-test/flaky/in.jsonl"),
            sampling={"max_new_tokens": 4},
            output={"path": "s3://herd-test/flaky-out"},
            storage={"endpoint_url": proxy.endpoint},
            retry={"attempts": 10, "backoff_base_s": 0.01, "backoff_cap_s": 0.2},
        )
        failed = proxy.failed
    assert outcome.exit_code == ExitCode.SUCCESS
    assert failed >= 5, f"the proxy failed only {failed} requests"
    ids = [row["id"] for row in read_rows("s3://herd-test/flaky-out/data", endpoint_url=s3_endpoint)]
    fault_tally.record(failed, expected, ids)
    assert sorted(ids) == expected


def test_credentials_never_appear_in_any_output_object(run_tiny, tmp_path, s3_endpoint):
    import s3fs

    _write_prompts(tmp_path / "in.jsonl", 5)
    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint)
    fs.put(str(tmp_path / "in.jsonl"), "herd-test/secret/in.jsonl")
    run_tiny(
        input={"path": "s3://herd-test/secret/in.jsonl", "prompt_column": "prompt"},
        sampling={"max_new_tokens": 4},
        output={"path": "s3://herd-test/secret-out"},
        storage={"endpoint_url": s3_endpoint},
    )
    objects = fs.find("herd-test/secret-out")
    assert any(name.endswith("summary.json") for name in objects)
    assert any(name.endswith("job.json") for name in objects)
    for name in objects:
        content = fs.cat(name)
        assert FAKE_AWS_SECRET.encode() not in content and FAKE_AWS_KEY_ID.encode() not in content, name


def test_fake_engine_whose_engine_dies_is_replaced_naming_the_cause_and_no_row_becomes_an_error(
    ray_session, tiny_model, tmp_path, caplog
):
    """The engine core dies as on a GPU: its traceback in the replica's log, then vLLM's EngineDeadError,
    which says only "See stack trace (above)". The driver's warning names the cause."""
    import logging

    expected = _write_prompts(tmp_path / "in.jsonl", 60)
    factory = FakeEngineFactory(
        seconds_per_call=0.1, deaths_dir=str(tmp_path / "deaths"), deaths=1, fault="engine_dead"
    )
    with caplog.at_level(logging.WARNING, logger="jobs.dispatch"):
        _, outcome = _run_on_fake_engine(
            tmp_path, tiny_model, factory, replicas=1, quiet=True, retry={"attempts": 3, "backoff_base_s": 0.05}
        )
    assert "lost its engine: EngineCore encountered an issue. See stack trace (above)" in caplog.text
    assert "(the first error in its log since it started: torch.OutOfMemoryError: CUDA out of memory." in caplog.text
    _assert_replaced_once_and_every_row_written_once(outcome, tmp_path / "out", expected)


def _signal_the_engine_mid_job(run_tiny, tiny_pool, tmp_path: Path, sent: signal.Signals, **sections) -> None:
    """Runs a 600-row job on the shared pool of real engines and sends `sent` to the first replica's
    engine once a shard has committed (every replica is generating then). On CPU with TP 1 the engine
    runs in the replica's own process (workers/engine.py), which is what gets the signal. The job must
    finish with that replica replaced, every row once and none an error."""
    import threading

    expected = _write_prompts(tmp_path / "in.jsonl", 600)
    victim, victim_pid = started_replica(tiny_pool)
    engine_pids = [victim_pid]
    outcomes = []

    def run() -> None:
        outcomes.append(
            run_tiny(
                input=_jsonl_input(tmp_path / "in.jsonl"),
                sampling={"max_new_tokens": 48, "ignore_eos": True, "temperature": 0.8, "seed": 2},
                output={"path": str(tmp_path / "out")},
                **sections,
            )
        )

    job = threading.Thread(target=run)
    job.start()
    try:
        deadline = time.monotonic() + 120
        while not list((tmp_path / "out" / "manifest").glob("*.json")) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in engine_pids:
            os.kill(pid, sent)
        job.join(timeout=600)
    finally:
        for pid in engine_pids:  # a stopped process ends only on SIGKILL
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
    [outcome] = outcomes
    _assert_replaced_once_and_every_row_written_once(outcome, tmp_path / "out", expected)
    assert victim not in [replica.actor for replica in tiny_pool.replicas] and len(tiny_pool.replicas) == tiny_pool.size


def test_a_killed_vllm_engine_ends_its_replica_and_its_shards_finish_elsewhere(run_tiny, tiny_pool, tmp_path):
    """The real engine, SIGKILLed while the replica's shards share its batch."""
    _signal_the_engine_mid_job(run_tiny, tiny_pool, tmp_path, signal.SIGKILL)


def test_a_vllm_engine_core_killed_in_its_own_process_as_on_gpu_has_its_replica_replaced_and_no_row_lost(
    ray_session, tiny_model, tmp_path, monkeypatch, caplog
):
    """On GPU vLLM's engine core is a process of its own: when it dies (out of memory, a GPU fault) the
    replica lives on, and its engine answers every call with EngineDeadError. The replica answers its
    shards with the engine's death, the driver replaces it, and every row is written once."""
    import logging
    import threading

    import ray

    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")  # forwarded to the replicas
    expected = _write_prompts(tmp_path / "in.jsonl", 200)
    job = parse_job(
        {
            "input": {**_jsonl_input(tmp_path / "in.jsonl"), "bytes_per_shard": 2048},
            "model": tiny_model_spec(tiny_model),
            "prompt": {"format": "raw"},
            "sampling": {"max_new_tokens": 48, "ignore_eos": True, "seed": 1},
            "output": {"path": str(tmp_path / "out")},
            "retry": {"max_replica_restarts": 1},
        }
    )
    pool = ReplicaPool(job.model, job, size=1, quiet=True)
    killed: list[int] = []

    def kill_the_engine_core() -> None:
        deadline = time.monotonic() + 300
        while not list((tmp_path / "out" / "manifest").glob("*.json")) and time.monotonic() < deadline:
            time.sleep(0.2)
        replica_pid = int(ray.get(pool.replicas[0].actor.ready.remote()).rsplit(":", 1)[1])
        for pid in descendants(replica_pid):  # the engine core and its worker, not the replica
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    killer = threading.Thread(target=kill_the_engine_core, daemon=True)
    killer.start()
    try:
        with caplog.at_level(logging.WARNING, logger="jobs.dispatch"):
            outcome = run_job(job, pool=pool, quiet=True)
    finally:
        pool.shutdown()
    killer.join(timeout=60)
    assert killed, "no engine process was found under the replica"
    assert "lost its engine: the engine's process exited" in caplog.text
    _assert_replaced_once_and_every_row_written_once(outcome, tmp_path / "out", expected)


def test_a_stopped_vllm_replica_is_replaced_after_stall_timeout_and_its_shards_finish_elsewhere(
    run_tiny, tiny_pool, tmp_path, caplog
):
    """The real engine's process is stopped (SIGSTOP): it neither dies nor answers; only the stall
    watch can tell."""
    import logging

    with caplog.at_level(logging.WARNING, logger="jobs.dispatch"):
        _signal_the_engine_mid_job(run_tiny, tiny_pool, tmp_path, signal.SIGSTOP, resources={"stall_timeout_s": 10})
    assert "did not answer for" in caplog.text and "resources.stall_timeout_s 10s" in caplog.text


def test_fake_engine_that_hangs_while_its_replica_answers_is_replaced_after_stall_timeout(
    ray_session, tiny_model, tmp_path, caplog
):
    """A step that never returns (a stuck kernel, a core process stopped): the replica still answers
    its heartbeats, saying how long since its engine last moved."""
    import logging

    expected = _write_prompts(tmp_path / "in.jsonl", 120)
    factory = FakeEngineFactory(seconds_per_call=0.1, deaths_dir=str(tmp_path / "hangs"), deaths=1, fault="hang")
    with caplog.at_level(logging.WARNING, logger="jobs.dispatch"):
        _, outcome = _run_on_fake_engine(tmp_path, tiny_model, factory, replicas=2, resources={"stall_timeout_s": 4})
    assert "made no progress for" in caplog.text and "resources.stall_timeout_s 4s" in caplog.text
    _assert_replaced_once_and_every_row_written_once(outcome, tmp_path / "out", expected)


def test_fake_engine_capacity_that_never_comes_ends_the_job_within_capacity_timeout_with_exit_7(
    ray_session, tiny_model, tmp_path, caplog
):
    """GPUs asked for on a cluster that has none and no autoscaler herd can read: herd asks, waits,
    says what it waits for, and gives up at resources.capacity_timeout_s. The fake engine never starts."""
    import logging

    _write_prompts(tmp_path / "in.jsonl", 20)
    job = parse_job(
        {
            "input": _jsonl_input(tmp_path / "in.jsonl"),
            "model": tiny_model_spec(tiny_model),
            "output": {"path": str(tmp_path / "out")},
            "resources": {"accelerator": "gpu", "replicas": 2, "capacity_timeout_s": 6},
        }
    )
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="jobs"):
        outcome = run_job(job, engine_factory=FakeEngineFactory())
    assert time.monotonic() - started < 60
    assert outcome.exit_code == ExitCode.NO_CAPACITY and outcome.summary.status == "no_capacity"
    assert outcome.summary.shards_run == 0 and outcome.summary.replicas == 2
    failure = outcome.summary.shards_failed[0]
    assert "no replica was placed within resources.capacity_timeout_s (6s)" in failure
    assert "{'GPU': 1" in failure and "0 GPUs" in failure
    assert "waiting for capacity: 2 replica(s) wait for a node" in caplog.text
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["status"] == "no_capacity" and not (tmp_path / "out" / "_SUCCESS").exists()


def test_fake_engine_shards_that_fail_every_attempt_are_reported_and_the_rest_commit(ray_session, tiny_model, tmp_path):
    _write_prompts(tmp_path / "in.jsonl", 120)
    # The first replica's engine dies on its first shard, which has no attempt left; its replacement
    # runs every other shard.
    factory = FakeEngineFactory(
        seconds_per_call=0.1, deaths_dir=str(tmp_path / "deaths"), deaths=1, fault="engine_dead"
    )
    _, outcome = _run_on_fake_engine(
        tmp_path,
        tiny_model,
        factory,
        replicas=1,
        quiet=True,
        retry={"attempts": 1, "max_replica_restarts": 1},
        resources={"shards_in_flight": 1},
    )
    assert outcome.exit_code == ExitCode.SHARDS_FAILED
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["status"] == "shards_failed"
    [failure] = summary["shards_failed"]
    # The cause came back with the shard's answer, as it does from a replica on another node.
    assert "failed after 1 attempts: replica's engine died: EngineCore encountered an issue" in failure
    assert "torch.OutOfMemoryError: CUDA out of memory" in failure
    assert summary["shards_run"] == summary["shards"] - 1
    assert len(manifest_records(tmp_path / "out")) == summary["shards"] - 1
    assert len(read_rows(str(tmp_path / "out" / "data"))) == summary["rows_out"] == summary["rows_in"]
    assert not (tmp_path / "out" / "_SUCCESS").exists()


@pytest.mark.own_engine
def test_sigterm_stops_the_driver_with_exit_code_130(tiny_model, tmp_path):
    _write_prompts(tmp_path / "in.jsonl", 50)
    (tmp_path / "job.json").write_text(
        json.dumps(
            {
                "input": _jsonl_input(tmp_path / "in.jsonl"),
                "model": tiny_model_spec(tiny_model),
                "output": {"path": str(tmp_path / "out")},
            }
        )
    )
    ray_dir = tempfile.mkdtemp(prefix="hs", dir="/tmp")
    os.makedirs(os.path.join(ray_dir, "ray"))
    try:
        driver = _run_cli(tmp_path / "job.json", ray_dir)
        deadline = time.monotonic() + 120
        while not (tmp_path / "out" / "job.json").exists():  # planned, claimed, starting replicas
            assert driver.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        while not list((tmp_path / "out" / "logs").glob("replica-*.log")):  # past ray.init: a replica starts
            assert driver.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        time.sleep(1)  # while the replica's engine starts
        assert driver.poll() is None
        driver.send_signal(signal.SIGTERM)
        log, _ = driver.communicate(timeout=120)
    finally:
        end_processes_mentioning(ray_dir)
        shutil.rmtree(ray_dir, ignore_errors=True)
    assert driver.returncode == 130, log[-2000:]
    assert "herd: interrupted; committed shards are kept, re-run the same command to resume" in log


def test_a_sigterm_while_ray_starts_reaches_the_callers_handler_not_rays_exit_15(monkeypatch):
    """ray.init installs a handler that exits with code 15 before ensure_ray can put the caller's back:
    a scheduler's SIGTERM in that window must still end as the CLI's "interrupted" (exit 130)."""
    import ray

    from jobs import runner

    def ray_init_that_gets_a_sigterm(**options: object) -> None:
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))  # what ray.init installs
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler runs before this returns

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", ray_init_that_gets_a_sigterm)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    previous = signal.signal(signal.SIGTERM, interrupted)
    try:
        with pytest.raises(KeyboardInterrupt):
            runner.ensure_ray()
        assert signal.getsignal(signal.SIGTERM) is interrupted
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize(("output_format", "files"), [("parquet", 1), ("openai", 1), ("parquet", 8)])
def test_fake_engine_retry_errors_runs_failed_rows_again_and_keeps_every_row_once(
    ray_session, tiny_model, tmp_path, output_format, files
):
    """With 8 files of 5 rows, small ones: run in packs, whose error rows are run again as the packs
    they were committed in."""
    from tests.cpu.fake_engine import REFUSED_MARK

    rows = [{"id": f"row-{index:03d}", "prompt": f"question {index}"} for index in range(40)]
    for index in (3, 17, 18, 31):
        rows[index]["prompt"] += f" {REFUSED_MARK}"  # fails while the marker file exists
    rows[25]["prompt"] = None  # a render error: not a passing fault
    path = tmp_path / "in.jsonl" if files == 1 else tmp_path / "in"
    for index in range(files):
        file = path if files == 1 else path / f"part-{index}.jsonl"
        file.parent.mkdir(exist_ok=True)
        file.write_text(
            "".join(json.dumps(row) + "\n" for row in rows[index * 40 // files : (index + 1) * 40 // files])
        )
    marker = tmp_path / "engine-refuses"
    marker.touch()
    factory = FakeEngineFactory(seconds_per_call=0.01, refuse_marked_while=str(marker))
    job = parse_job(
        {
            "input": _jsonl_input(path),
            "model": tiny_model_spec(tiny_model),
            "sampling": {"max_new_tokens": 4},
            "output": {"path": str(tmp_path / "out"), "format": output_format},
            "max_error_fraction": 1.0,
        }
    )
    pool = ReplicaPool(job.model, job, size=1, engine_factory=factory)
    try:
        first = run_job(job, pool=pool)
        assert first.summary.error_rows == 5
        marker.unlink()  # the fault has passed
        retried = run_job(job, pool=pool, retry_errors="generate")
        again = run_job(job, pool=pool, retry_errors="all")  # the render error fails the same way again
    finally:
        pool.shutdown()

    def ids(folder: str) -> list[str]:
        return [row.get("custom_id", row.get("id")) for row in read_rows(str(tmp_path / "out" / folder))]

    assert retried.exit_code == again.exit_code == ExitCode.SUCCESS
    assert retried.summary.error_rows == again.summary.error_rows == 1
    assert ids("errors") == ["row-025"]
    assert sorted(ids("data")) == sorted(row["id"] for index, row in enumerate(rows) if index != 25)
    assert retried.summary.rows_in == again.summary.rows_in == 40
    assert retried.summary.rows_out == 39
    packs = [record for record in manifest_records(tmp_path / "out") if record.members]
    assert len(packs) == (2 if files == 8 else 0), packs


def test_fake_engine_replicas_that_never_get_ready_are_replaced_then_the_job_fails_saying_why(
    ray_session, tiny_model, tmp_path
):
    _write_prompts(tmp_path / "in.jsonl", 20)
    started = time.monotonic()
    _, outcome = _run_on_fake_engine(
        tmp_path,
        tiny_model,
        FakeEngineFactory(start_seconds=600),  # weights that never finish loading
        replicas=1,
        retry={"max_replica_restarts": 1},
        resources={"replica_start_timeout_s": 3},
    )
    assert time.monotonic() - started < 60  # bounded: two starts of 3 s, not 600 s
    assert outcome.exit_code == ExitCode.SHARDS_FAILED
    assert outcome.summary.replicas_replaced == 1 and outcome.summary.shards_run == 0
    assert all(
        "not ready within resources.replica_start_timeout_s (3s)" in failure
        for failure in outcome.summary.shards_failed
    )


@pytest.mark.parametrize(
    ("start_errors", "starts", "exit_code"),
    [
        # A missing library, a broken checkpoint: a third start would fail the same way.
        (("ModuleNotFoundError: No module named 'flashinfer'",) * 5, 2, ExitCode.SHARDS_FAILED),
        (("CUDA error: out of memory",), 2, ExitCode.SUCCESS),  # once: the replacement starts
        (("first cause", "second cause", "third cause"), 4, ExitCode.SUCCESS),  # never the same twice running
    ],
)
def test_fake_engine_replica_starts_are_retried_until_one_fails_as_the_one_before_while_none_came_up(
    ray_session, tiny_model, tmp_path, start_errors, starts, exit_code
):
    ids = _write_prompts(tmp_path / "in.jsonl", 10)
    job, outcome = _run_on_fake_engine(
        tmp_path, tiny_model, FakeEngineFactory(start_errors=start_errors, starts_dir=str(tmp_path / "starts")), 1
    )
    assert len(list((tmp_path / "starts").iterdir())) == starts
    assert outcome.exit_code == exit_code
    if exit_code == ExitCode.SUCCESS:
        assert sorted(row["id"] for row in read_rows(f"{job.output.path}/data")) == ids
    else:
        assert outcome.summary.shards_failed and all(
            "No module named 'flashinfer'" in failure for failure in outcome.summary.shards_failed
        )


def test_fake_engine_one_refused_request_among_a_thousand_is_found_by_halving_and_the_rest_run_together():
    """vLLM refuses a whole call when it refuses one of its requests (an out-of-vocabulary logit_bias,
    a schema it cannot compile). Which request, and what it said, is the row's error; the other
    requests must still run many at a time, not one engine call each. A stub engine (no Ray, no
    vLLM) counts the calls: which the real engine cannot show on two cores in a test's time."""
    from schemas.job import SamplingSpec
    from workers.engine import EngineRequest, Sample
    from workers.shard_processor import _generate_requests

    class RefusesBadBias:
        def __init__(self) -> None:
            self.calls: list[int] = []  # the size of each call
            self.answered_in: list[int] = []  # the size of each call that answered

        def generate(self, requests: list[EngineRequest]) -> list[list[Sample]]:
            self.calls.append(len(requests))
            for request in requests:
                if request.sampling.logit_bias and max(request.sampling.logit_bias) >= 512:
                    raise ValueError("logit_bias contains out-of-vocab token ids. Vocabulary size: 512")
            self.answered_in.append(len(requests))
            return [[Sample(request.prompt_ids, f"answer {request.seed}", "stop")] for request in requests]

    good, bad = SamplingSpec(), SamplingSpec(logit_bias={9999: 5.0})
    requests = [EngineRequest([1, index], index, bad if index in (137, 901) else good) for index in range(1000)]
    engine = RefusesBadBias()
    results = _generate_requests(requests, engine)
    assert [index for index, result in enumerate(results) if isinstance(result, str)] == [137, 901]
    assert results[137] == "ValueError: logit_bias contains out-of-vocab token ids. Vocabulary size: 512"
    assert all(result[0].text == f"answer {index}" for index, result in enumerate(results) if index not in (137, 901))
    # Halving: about 2 x log2(1000) calls for each bad request, the good ones in calls of many.
    assert len(engine.calls) <= 2 * 2 * 10 + 1 and sum(engine.answered_in) == 998
    assert sum(size for size in engine.answered_in if size >= 32) >= 850  # most, in calls of 32 or more
