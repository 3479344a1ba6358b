"""One run per output: the lease, on local disk and on S3 (moto on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from common.layout import OutputLayout
from common.storage import PreconditionFailed, Storage
from jobs.lease import LeaseLost, acquire_lease
from schemas.errors import ExitCode, OutputBusy
from schemas.job import RetrySpec, StorageSpec
from tests.cpu.conftest import read_rows, tiny_model_spec

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["local", "s3"])
def output(request, tmp_path) -> tuple[Storage, OutputLayout]:
    if request.param == "local":
        return Storage(StorageSpec(), RetrySpec(attempts=1)), OutputLayout(str(tmp_path / "out"))
    endpoint = request.getfixturevalue("s3_endpoint")
    return (
        Storage(StorageSpec(endpoint_url=endpoint), RetrySpec(attempts=1)),
        OutputLayout(f"s3://herd-test/lease-{tmp_path.name}"),
    )


def _write_holder(storage: Storage, layout: OutputLayout, **fields) -> None:
    holder = {"owner": "someone", "host": socket.gethostname(), "pid": os.getpid(), "since": "earlier"}
    storage.write_text(layout.lease, json.dumps({**holder, "renewed_at": time.time(), "ttl_s": 60, **fields}))


def test_a_second_run_on_a_live_lease_is_told_who_holds_it(output):
    storage, layout = output
    first = acquire_lease(storage, layout, ttl_s=60)
    try:
        with pytest.raises(OutputBusy, match=rf"output busy: held by {socket.gethostname()} pid {os.getpid()} since"):
            acquire_lease(storage, layout, ttl_s=60)
    finally:
        first.release()
    acquire_lease(storage, layout, ttl_s=60).release()  # released: free again


def test_a_lease_held_by_a_dead_process_of_this_host_is_taken_over_at_once(output):
    storage, layout = output
    gone = subprocess.Popen(["true"])
    gone.wait()
    _write_holder(storage, layout, pid=gone.pid)  # renewed just now, but its process is gone
    acquire_lease(storage, layout, ttl_s=60).release()


def test_a_lease_from_another_host_is_taken_over_only_after_its_ttl(output):
    storage, layout = output
    _write_holder(storage, layout, host="other-host", pid=1, renewed_at=time.time() - 30)
    with pytest.raises(OutputBusy, match="held by other-host pid 1"):
        acquire_lease(storage, layout, ttl_s=60)
    _write_holder(storage, layout, host="other-host", pid=1, renewed_at=time.time() - 61)
    acquire_lease(storage, layout, ttl_s=60).release()


def test_of_two_writes_conditional_on_the_same_version_only_one_wins(output):
    storage, layout = output
    version = storage.create_exclusive(layout.lease, "first")
    with pytest.raises(PreconditionFailed):
        storage.create_exclusive(layout.lease, "again")
    storage.replace_if_unchanged(layout.lease, version, "taker one")
    with pytest.raises(PreconditionFailed):
        storage.replace_if_unchanged(layout.lease, version, "taker two")
    assert storage.read_versioned(layout.lease)[0] == "taker one"


def test_a_run_whose_lease_was_taken_over_stops_at_its_next_renewal(output):
    storage, layout = output
    lease = acquire_lease(storage, layout, ttl_s=6)  # renews every 2 s
    try:
        _write_holder(storage, layout, owner="a later run")  # as a run that took it over would
        deadline = time.time() + 10
        while lease.lost is None and time.time() < deadline:
            time.sleep(0.2)
        with pytest.raises(LeaseLost, match="taken over"):
            lease.check()
    finally:
        lease.release()
    assert json.loads(storage.read_versioned(layout.lease)[0])["owner"] == "a later run"  # not deleted


def test_two_runs_started_at_once_on_one_output_one_runs_and_the_other_exits_busy(run_tiny, tmp_path, tiny_model):
    # Enough work that the first run still holds the output while the second one starts up.
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"prompt": f"row {index}"}) + "\n" for index in range(400)))
    job = {
        "input": {"path": str(tmp_path / "in.jsonl"), "prompt_column": "prompt", "bytes_per_shard": 1024},
        "model": tiny_model_spec(tiny_model),
        "sampling": {"max_new_tokens": 200, "ignore_eos": True},
        "output": {"path": str(tmp_path / "out")},
    }
    (tmp_path / "job.json").write_text(json.dumps(job))
    outcomes = []
    first = threading.Thread(target=lambda: outcomes.append(run_tiny(**{k: v for k, v in job.items() if k != "model"})))
    first.start()
    try:
        deadline = time.time() + 60
        while not (tmp_path / "out" / "_lease.json").exists() and time.time() < deadline:
            time.sleep(0.05)
        second = subprocess.run(
            [sys.executable, "submit.py", "run", str(tmp_path / "job.json")],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        first.join()
    assert second.returncode == ExitCode.OUTPUT_BUSY, second.stderr[-2000:]
    assert f"output busy: held by {socket.gethostname()} pid {os.getpid()}" in second.stderr
    assert outcomes[0].exit_code == ExitCode.SUCCESS
    ids = [row["id"] for row in read_rows(str(tmp_path / "out" / "data"))]
    assert len(ids) == len(set(ids)) == 400
    assert not (tmp_path / "out" / "_lease.json").exists()  # released at the end


def test_a_run_on_an_output_another_run_holds_exits_busy_before_starting_any_replica(tmp_path, tiny_model, monkeypatch):
    """With more than one file to plan, a run starts its replicas while it plans; on a busy output it
    must not (on GPUs they would load weights onto GPUs the live run may need, only to end)."""
    import jobs.runner
    from jobs.runner import run_job
    from schemas import parse_job

    (tmp_path / "in").mkdir()
    for part in range(2):
        (tmp_path / "in" / f"part-{part}.jsonl").write_text(json.dumps({"prompt": f"question {part}"}) + "\n")
    job = parse_job(
        {
            "input": {"path": str(tmp_path / "in"), "prompt_column": "prompt"},
            "model": tiny_model_spec(tiny_model),
            "output": {"path": str(tmp_path / "out")},
        }
    )
    started: list[str] = []
    monkeypatch.setattr(jobs.runner, "replicas_started_while_planning", lambda *arguments: started.append("started"))
    storage, layout = Storage(StorageSpec(), RetrySpec(attempts=1)), OutputLayout(str(tmp_path / "out"))
    holder = acquire_lease(storage, layout, ttl_s=60)  # a live run of this process
    try:
        with pytest.raises(OutputBusy, match=f"held by {socket.gethostname()} pid {os.getpid()}"):
            run_job(job)
    finally:
        holder.release()
    assert started == []
