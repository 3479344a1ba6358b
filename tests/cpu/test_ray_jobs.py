"""Ray Jobs end to end: a `ray start --head` on 127.0.0.1, herd jobs submitted, followed and stopped
through submit.py, as a scheduler would drive it. Real engine (the tiny Llama on vLLM CPU)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cpu.conftest import free_port, tiny_model_spec
from tests.cpu.process_tree import end_processes_mentioning
from tests.cpu.ray_heads import start_ray_head, token_auth_environment

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class RayHead:
    address: str  # the dashboard's, where the Jobs API listens
    auth_environment: dict[str, str]  # what a client needs to be let in (see ray_heads.py)

    def _command(self, arguments: tuple[str, ...], extra_environment: dict[str, str]) -> dict:
        environment = {name: value for name, value in os.environ.items() if name != "RAY_ADDRESS"}
        environment.update({**self.auth_environment, **extra_environment})
        return {
            "args": [sys.executable, "submit.py", *arguments, "--address", self.address],
            "cwd": REPO,
            "env": environment,
            "text": True,
        }

    def herd(self, *arguments: str, timeout: float = 600, **extra_environment: str) -> subprocess.CompletedProcess:
        """`submit.py ARGUMENTS --address HEAD`, as a user's shell or a scheduler runs it."""
        return subprocess.run(**self._command(arguments, extra_environment), capture_output=True, timeout=timeout)

    def herd_in_background(self, *arguments: str, **extra_environment: str) -> subprocess.Popen:
        return subprocess.Popen(
            **self._command(arguments, extra_environment), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )


@pytest.fixture(scope="module")
def ray_head() -> Iterator[RayHead]:
    temp_dir = tempfile.mkdtemp(prefix="hh", dir="/tmp")
    dashboard = free_port()
    start_ray_head(temp_dir, num_cpus=2, dashboard_port=dashboard)
    auth = token_auth_environment(temp_dir)
    head = RayHead(f"http://127.0.0.1:{dashboard}", auth)
    try:
        deadline = time.monotonic() + 60
        while head.herd("list").returncode != 0:
            assert time.monotonic() < deadline, "the Ray dashboard did not come up"
            time.sleep(1)
        yield head
    finally:
        end_processes_mentioning(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _job_file(tmp_path: Path, tiny_model: Path, rows: int, name: str, input_path: str | None = None) -> Path:
    (tmp_path / "in.jsonl").write_text(
        "".join(json.dumps({"prompt": f"question {index}"}) + "\n" for index in range(rows))
    )
    job = {
        "name": name,
        "input": {"path": input_path or str(tmp_path / "in.jsonl"), "prompt_column": "prompt"},
        "model": tiny_model_spec(tiny_model),
        "sampling": {"max_new_tokens": 8},
        "output": {"path": str(tmp_path / "out")},
    }
    (tmp_path / f"{name}.json").write_text(json.dumps(job))
    return tmp_path / f"{name}.json"


def _status(head: RayHead, job_id: str) -> dict:
    result = head.herd("status", job_id, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.own_engine
def test_submit_wait_exits_with_the_jobs_own_exit_code_when_it_fails(ray_head, tiny_model, tmp_path):
    job_file = _job_file(tmp_path, tiny_model, 1, "cluster-missing-input", input_path=str(tmp_path / "nothing-*.jsonl"))
    result = ray_head.herd("submit", str(job_file), "--wait", "--python", sys.executable)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "input.path: no files match" in result.stdout


def _wait_for_status(head: RayHead, job_id: str, wanted: tuple[str, ...], seconds: float) -> None:
    """Polls the Jobs API from this process: a `submit.py status` a second would start a Python that
    imports Ray each time, tens of CPU seconds over a test (the tests call `submit.py status` where
    what it says is checked)."""
    from ray.job_submission import JobSubmissionClient

    token = Path(head.auth_environment["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    jobs_client = JobSubmissionClient(head.address, headers={"Authorization": f"Bearer {token}"})
    deadline = time.monotonic() + seconds
    while (state := str(jobs_client.get_job_status(job_id).value)) not in wanted:
        assert time.monotonic() < deadline, state
        time.sleep(0.5)


def _submit_wait(head: RayHead, job_file: Path, **environment: str) -> subprocess.Popen:
    return head.herd_in_background("submit", str(job_file), "--wait", "--python", sys.executable, **environment)


@pytest.mark.own_engine
def test_a_submitted_job_succeeds_a_resubmission_follows_it_and_after_success_runs_nothing_and_no_secret_shows(
    ray_head, tiny_model, tmp_path, monkeypatch
):
    secret = "hf_leak_test_submitted_0123456789"
    job_file = _job_file(tmp_path, tiny_model, 40, "cluster-retried")
    first = _submit_wait(ray_head, job_file, HF_TOKEN=secret)
    job_id = first.stdout.readline().strip()
    _wait_for_status(ray_head, job_id, ("RUNNING",), 120)
    # A scheduler's retry while the first attempt runs: the same Ray job, followed to its end.
    second = ray_head.herd("submit", str(job_file), "--wait", "--python", sys.executable)
    _, first_err = first.communicate(timeout=600)
    assert first.returncode == second.returncode == 0, first_err[-2000:] + second.stderr[-2000:]
    assert second.stdout.strip().splitlines()[0] == job_id
    assert f"job {job_id} is already running; following it" in second.stderr
    status, logs = _status(ray_head, job_id), ray_head.herd("logs", job_id)
    assert (status["status"], status["exit_code"], status["herd_job"]) == ("SUCCEEDED", 0, "cluster-retried"), (
        logs.stdout[-3000:]
    )
    assert (tmp_path / "out" / "_SUCCESS").exists()
    assert "herd: succeeded: 40 rows in, 40 rows out" in logs.stdout
    # Once it succeeded, submitting it again runs nothing.
    third = ray_head.herd("submit", str(job_file), "--wait", "--python", sys.executable)
    assert third.returncode == 0 and f"job {job_id} already succeeded; nothing to run" in third.stderr
    listed = [line for line in ray_head.herd("list").stdout.splitlines() if "cluster-retried" in line]
    assert len(listed) == 1 and job_id in listed[0], listed
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["rows_out"] == 40
    # The token set where the job was submitted is in no runtime_env Ray shows: the job's or its actors'.
    from ray.job_submission import JobSubmissionClient

    from jobs.ray_auth import auth_headers

    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", ray_head.auth_environment["RAY_AUTH_TOKEN_PATH"])
    runtime_env = JobSubmissionClient(ray_head.address, headers=auth_headers()).get_job_info(job_id).runtime_env
    assert "env_vars" in runtime_env and secret not in json.dumps(runtime_env)
    # Ray's state API, as anyone on the cluster reads it (a token-authenticated client).
    listing = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, sys\n"
            "from ray.util.state import list_actors\n"
            "actors = list_actors(address=sys.argv[1], detail=True, raise_on_missing_output=False)\n"
            "print(json.dumps([actor.serialized_runtime_env or '' for actor in actors]))\n",
            ray_head.address,
        ],
        env={**os.environ, **ray_head.auth_environment},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listing.returncode == 0, listing.stderr[-2000:]
    runtime_envs = json.loads(listing.stdout.splitlines()[-1])
    assert runtime_envs and not any(secret in runtime_env for runtime_env in runtime_envs)


@pytest.mark.own_engine
def test_sigterm_to_submit_wait_stops_the_ray_job_it_follows(ray_head, tiny_model, tmp_path):
    follower = _submit_wait(ray_head, _job_file(tmp_path, tiny_model, 2000, "cluster-killed"))
    job_id = follower.stdout.readline().strip()
    _wait_for_status(ray_head, job_id, ("RUNNING",), 120)
    follower.send_signal(signal.SIGTERM)  # what Airflow does to a task it kills
    _, errors = follower.communicate(timeout=60)
    assert follower.returncode == 130, errors[-2000:]
    assert f"stopped the Ray job {job_id}" in errors
    _wait_for_status(ray_head, job_id, ("STOPPED",), 60)
    assert not (tmp_path / "out" / "_SUCCESS").exists()


def test_a_head_python_without_herd_fails_saying_to_pass_python(ray_head, tiny_model, tmp_path):
    # A Python with none of herd's packages, as a cluster's default `python` is.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True, timeout=120)
    job_file = _job_file(tmp_path, tiny_model, 1, "cluster-no-herd")
    bare = str(tmp_path / "bare" / "bin" / "python")
    result = ray_head.herd("submit", str(job_file), "--wait", "--python", bare)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert f"herd: {bare} on the head has no herd installed" in result.stdout
    assert "pass --python" in result.stdout and "No module named" not in result.stdout
