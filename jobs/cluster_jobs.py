"""Submitting herd jobs to a Ray cluster through the Ray Jobs API, and following them.

The job runs `submit.py run` on the cluster's head, in a working directory that carries herd's code
and the job file, so the cluster runs exactly the code and spec that were submitted. Settings reach
the job through runtime_env (a variable exported on the submitting side does not reach a cluster).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.job_submission import JobStatus, JobSubmissionClient

from common.retry import call_with_retry, is_transient
from jobs.ray_auth import auth_headers
from jobs.replicas import forwarded_environment
from schemas.job import JobSpec

PROJECT_ROOT = Path(__file__).resolve().parents[1]
_CODE = ("schemas", "jobs", "workers", "common", "submit.py")
SUBMITTED_JOB_FILE = "herd-job.json"


@dataclass(frozen=True)
class Submission:
    job_id: str
    state: str  # submitted | running (an earlier submission, followed) | succeeded (nothing to run)


def client(address: str | None) -> JobSubmissionClient:
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise ValueError("give --address http://HEAD:8265 or set RAY_ADDRESS")
    return JobSubmissionClient(address, headers=auth_headers())


@contextmanager
def _working_directory(job: JobSpec) -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="herd-submit-") as directory:
        for name in _CODE:
            source = PROJECT_ROOT / name
            if source.is_dir():
                shutil.copytree(source, Path(directory) / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(source, Path(directory) / name)
        (Path(directory) / SUBMITTED_JOB_FILE).write_text(json.dumps(job.model_dump(mode="json", by_alias=False)))
        yield directory


# Where ray_cluster.yaml installs herd on every node.
CLUSTER_PYTHON = "$HOME/herd/.venv/bin/python"


def driver_command(python: str | None, overwrite: bool) -> str:
    """The shell command the head runs: `submit.py run` with the Python that has herd (the one given,
    else the cluster file's install, else python3), after checking that it does, so that a head
    without herd says what to do instead of failing on an import."""
    chosen = python or f"$( [ -x {CLUSTER_PYTHON} ] && echo {CLUSTER_PYTHON} || echo python3 )"
    run = f"submit.py run {SUBMITTED_JOB_FILE}" + (" --overwrite" if overwrite else "")
    message = (
        "herd: $PYTHON on the head has no herd installed (no ray, pydantic or yaml there): pass --python "
        f"with the path of the Python where herd is installed (ray_cluster.yaml puts it at {CLUSTER_PYTHON})"
    )
    return (
        f'PYTHON={chosen}; "$PYTHON" -c "import ray, pydantic, yaml" 2>/dev/null '
        f'|| {{ echo "{message}" >&2; exit 2; }}; exec "$PYTHON" {run}'
    )


def submission_prefix(job: JobSpec, inputs: list[dict[str, Any]], overwrite: bool) -> str:
    """The stem of the Ray submission ids of this job: the same job (name, output, settings, input
    files as listed) submitted again finds its earlier attempts under it."""
    identity = {
        "name": job.name,
        "output": job.output.path,
        "spec": job.model_dump(mode="json", exclude={"resources"}),
        "inputs": inputs,
        "overwrite": overwrite,
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return f"herd-{job.slug[:40]}-{digest}"


def _attempts(jobs_client: JobSubmissionClient, prefix: str) -> list[Any]:
    """Earlier submissions of the same job, oldest first (ids end with -<attempt>)."""

    def attempt(details: Any) -> int:
        suffix = details.submission_id.removeprefix(prefix + "-")
        return int(suffix) if suffix.isdigit() else 0

    found = [
        details
        for details in jobs_client.list_jobs()
        if details.submission_id and details.submission_id.startswith(prefix + "-")
    ]
    return sorted(found, key=attempt)


def _passing(error: BaseException) -> bool:
    """What the Jobs API answers while it cannot take a job yet: right after a head starts, HTTP 500
    "No available agent to submit job, please try again later" (Ray says so in words only), or a
    refused connection."""
    return is_transient(error) or (isinstance(error, RuntimeError) and "No available agent" in str(error))


def submit(
    job: JobSpec, address: str | None, python: str | None, overwrite: bool, inputs: list[dict[str, Any]]
) -> Submission:
    """Submits the job, unless the same job is running (then it is followed) or has succeeded (then
    nothing runs). A failed or stopped one is submitted again, as its next attempt."""
    jobs_client = client(address)
    prefix = submission_prefix(job, inputs, overwrite)
    earlier = call_with_retry(lambda: _attempts(jobs_client, prefix), job.retry, "list the cluster's jobs", _passing)
    if earlier:
        last = earlier[-1]
        if last.status in (JobStatus.PENDING, JobStatus.RUNNING):
            return Submission(last.submission_id, "running")
        if last.status == JobStatus.SUCCEEDED:
            return Submission(last.submission_id, "succeeded")
    submission_id = f"{prefix}-{len(earlier) + 1}"
    entrypoint = driver_command(python, overwrite)
    with _working_directory(job) as directory:
        try:
            call_with_retry(
                lambda: jobs_client.submit_job(
                    submission_id=submission_id,
                    entrypoint=entrypoint,
                    runtime_env={"working_dir": directory, "env_vars": forwarded_environment()},
                    metadata={"herd_job": job.name},
                ),
                job.retry,
                f"submit {submission_id}",
                _passing,
            )
        except RuntimeError as error:
            if "already exists" not in str(error):  # Ray says so in words only
                raise
            return Submission(submission_id, "running")  # a submit of the same job a moment before us
    return Submission(submission_id, "submitted")


def _summary(details: Any) -> dict[str, Any]:
    """What `status` and `list` show of a Ray job."""
    return {
        "job_id": details.submission_id,
        "status": str(details.status.value if hasattr(details.status, "value") else details.status),
        "exit_code": details.driver_exit_code,
        "herd_job": (details.metadata or {}).get("herd_job"),
    }


def info(address: str | None, job_id: str) -> dict[str, Any]:
    details = client(address).get_job_info(job_id)
    return {
        **_summary(details),
        "job_id": job_id,
        "message": details.message,
        "entrypoint": details.entrypoint,
        "start_time": details.start_time,
        "end_time": details.end_time,
    }


def print_logs(address: str | None, job_id: str, follow: bool) -> None:
    jobs_client = client(address)
    if not follow:
        print(jobs_client.get_job_logs(job_id), end="")
        return

    async def stream() -> None:
        # tail_job_logs yields chunks until the job ends.
        async for chunk in jobs_client.tail_job_logs(job_id):
            print(chunk, end="", flush=True)

    asyncio.run(stream())


def wait(address: str | None, job_id: str, poll_seconds: float = 1.0) -> dict[str, Any]:
    terminal = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
    jobs_client = client(address)
    while jobs_client.get_job_status(job_id) not in terminal:
        time.sleep(poll_seconds)
    return info(address, job_id)


def stop(address: str | None, job_id: str) -> bool:
    return client(address).stop_job(job_id)


def list_jobs(address: str | None) -> list[dict[str, Any]]:
    return [_summary(details) for details in client(address).list_jobs() if details.submission_id]
