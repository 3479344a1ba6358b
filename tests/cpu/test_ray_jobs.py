"""Ray Jobs end to end: a `ray start --head` on 127.0.0.1, herd jobs submitted, followed and stopped
through submit.py, as a scheduler would drive it. Real engine (the tiny Llama on vLLM CPU).

The four flows mostly wait (on the Jobs API, on the head's processes), so they run one after another
on one head in the background of the session (tests/cpu/background.py), beside the other tests; each
test below checks what its flow recorded."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.cpu.background import background_scenario
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

    def jobs_client(self) -> Any:
        """A Jobs API client of this process, let in with the head's token."""
        from ray.job_submission import JobSubmissionClient

        token = Path(self.auth_environment["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
        return JobSubmissionClient(self.address, headers={"Authorization": f"Bearer {token}"})


@contextmanager
def ray_head() -> Iterator[RayHead]:
    temp_dir = tempfile.mkdtemp(prefix="hh", dir="/tmp")
    try:
        dashboard = free_port()
        start_ray_head(temp_dir, num_cpus=2, dashboard_port=dashboard)
        head = RayHead(f"http://127.0.0.1:{dashboard}", token_auth_environment(temp_dir))
        deadline = time.monotonic() + 60
        while head.herd("list").returncode != 0:
            assert time.monotonic() < deadline, "the Ray dashboard did not come up"
            time.sleep(1)
        yield head
    finally:
        end_processes_mentioning(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _job_file(work_dir: Path, tiny_model: Path, rows: int, name: str, input_path: str | None = None) -> Path:
    (work_dir / "in.jsonl").write_text(
        "".join(json.dumps({"prompt": f"question {index}"}) + "\n" for index in range(rows))
    )
    job = {
        "name": name,
        "input": {"path": input_path or str(work_dir / "in.jsonl"), "prompt_column": "prompt"},
        "model": tiny_model_spec(tiny_model),
        "sampling": {"max_new_tokens": 8},
        "output": {"path": str(work_dir / "out")},
    }
    (work_dir / f"{name}.json").write_text(json.dumps(job))
    return work_dir / f"{name}.json"


def _wait_for_status(head: RayHead, job_id: str, wanted: tuple[str, ...], seconds: float) -> None:
    """Polls the Jobs API from this process: a `submit.py status` a second would start a Python that
    imports Ray each time, tens of CPU seconds over a test (the flows call `submit.py status` where
    what it says is checked)."""
    jobs_client = head.jobs_client()
    deadline = time.monotonic() + seconds
    while (state := str(jobs_client.get_job_status(job_id).value)) not in wanted:
        assert time.monotonic() < deadline, state
        time.sleep(0.5)


def _submit_wait(head: RayHead, job_file: Path, **environment: str) -> subprocess.Popen:
    return head.herd_in_background("submit", str(job_file), "--wait", "--python", sys.executable, **environment)


def _failing_job(head: RayHead, work_dir: Path, tiny_model: Path) -> subprocess.CompletedProcess:
    job_file = _job_file(work_dir, tiny_model, 1, "cluster-missing-input", input_path=str(work_dir / "nothing-*.jsonl"))
    return head.herd("submit", str(job_file), "--wait", "--python", sys.executable)


SECRET = "hf_leak_test_submitted_0123456789"


def _job_submitted_three_times(head: RayHead, work_dir: Path, tiny_model: Path) -> dict[str, Any]:
    job_file = _job_file(work_dir, tiny_model, 40, "cluster-retried")
    first = _submit_wait(head, job_file, HF_TOKEN=SECRET)
    job_id = first.stdout.readline().strip()
    _wait_for_status(head, job_id, ("RUNNING",), 120)
    # A scheduler's retry while the first attempt runs.
    second = head.herd("submit", str(job_file), "--wait", "--python", sys.executable)
    _, first_errors = first.communicate(timeout=600)
    status = head.herd("status", job_id, "--json")
    logs = head.herd("logs", job_id)
    # Once it succeeded.
    third = head.herd("submit", str(job_file), "--wait", "--python", sys.executable)
    listed = head.herd("list")
    runtime_env = head.jobs_client().get_job_info(job_id).runtime_env
    # Ray's state API, as anyone on the cluster reads it (a token-authenticated client).
    actor_runtime_envs = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, sys\n"
            "from ray.util.state import list_actors\n"
            "actors = list_actors(address=sys.argv[1], detail=True, raise_on_missing_output=False)\n"
            "print(json.dumps([actor.serialized_runtime_env or '' for actor in actors]))\n",
            head.address,
        ],
        env={**os.environ, **head.auth_environment},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return {
        "job_id": job_id,
        "first": (first.returncode, first_errors),
        "second": second,
        "status": status,
        "logs": logs,
        "third": third,
        "listed": listed,
        "runtime_env": runtime_env,
        "actor_runtime_envs": actor_runtime_envs,
        "output": work_dir / "out",
    }


def _job_whose_follower_gets_sigterm(head: RayHead, work_dir: Path, tiny_model: Path) -> dict[str, Any]:
    follower = _submit_wait(head, _job_file(work_dir, tiny_model, 2000, "cluster-killed"))
    job_id = follower.stdout.readline().strip()
    _wait_for_status(head, job_id, ("RUNNING",), 120)
    follower.send_signal(signal.SIGTERM)  # what Airflow does to a task it kills
    _, errors = follower.communicate(timeout=60)
    _wait_for_status(head, job_id, ("STOPPED",), 60)
    return {"job_id": job_id, "returncode": follower.returncode, "errors": errors, "output": work_dir / "out"}


def _job_for_a_python_without_herd(head: RayHead, work_dir: Path, tiny_model: Path) -> dict[str, Any]:
    # A Python with none of herd's packages, as a cluster's default `python` is.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(work_dir / "bare")], check=True, timeout=120)
    job_file = _job_file(work_dir, tiny_model, 1, "cluster-no-herd")
    bare = str(work_dir / "bare" / "bin" / "python")
    return {"python": bare, "result": head.herd("submit", str(job_file), "--wait", "--python", bare)}


FLOWS: dict[str, Callable[[RayHead, Path, Path], Any]] = {
    "failing": _failing_job,
    "submitted_three_times": _job_submitted_three_times,
    "sigterm": _job_whose_follower_gets_sigterm,
    "python_without_herd": _job_for_a_python_without_herd,
}


@background_scenario("ray_jobs")
def ray_jobs(work_dir: Path, tiny_model: Path) -> dict[str, Any]:
    """Every flow on one head, each in a directory of its own; a flow that raises records the error for
    its test and the next flow still runs."""
    outcomes: dict[str, Any] = {}
    with ray_head() as head:
        for name, flow in FLOWS.items():
            (work_dir / name).mkdir()
            try:
                outcomes[name] = flow(head, work_dir / name, tiny_model)
            except Exception as error:  # noqa: BLE001 - the flow's test raises it
                outcomes[name] = error
    return outcomes


def flow_outcome(scenario_result: dict[str, Any], name: str) -> Any:
    outcome = scenario_result[name]
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


@pytest.mark.background_scenario("ray_jobs")
def test_submit_wait_exits_with_the_jobs_own_exit_code_when_it_fails(scenario_result):
    result = flow_outcome(scenario_result, "failing")
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "input.path: no files match" in result.stdout


@pytest.mark.background_scenario("ray_jobs")
def test_a_submitted_job_succeeds_a_resubmission_follows_it_and_after_success_runs_nothing_and_no_secret_shows(
    scenario_result,
):
    flow = flow_outcome(scenario_result, "submitted_three_times")
    job_id, (first_returncode, first_errors), second = flow["job_id"], flow["first"], flow["second"]
    # The retry while the first attempt ran followed the same Ray job to its end.
    assert first_returncode == second.returncode == 0, first_errors[-2000:] + second.stderr[-2000:]
    assert second.stdout.strip().splitlines()[0] == job_id
    assert f"job {job_id} is already running; following it" in second.stderr
    assert flow["status"].returncode == 0, flow["status"].stderr
    status, logs = json.loads(flow["status"].stdout), flow["logs"].stdout
    ended = (status["status"], status["exit_code"], status["herd_job"])
    assert ended == ("SUCCEEDED", 0, "cluster-retried"), logs[-3000:]
    assert (flow["output"] / "_SUCCESS").exists()
    assert "herd: succeeded: 40 rows in, 40 rows out" in logs
    # Once it succeeded, submitting it again ran nothing.
    third = flow["third"]
    assert third.returncode == 0 and f"job {job_id} already succeeded; nothing to run" in third.stderr
    listed = [line for line in flow["listed"].stdout.splitlines() if "cluster-retried" in line]
    assert len(listed) == 1 and job_id in listed[0], listed
    assert json.loads((flow["output"] / "summary.json").read_text())["rows_out"] == 40
    # The token set where the job was submitted is in no runtime_env Ray shows: the job's or its actors'.
    runtime_env = flow["runtime_env"]
    assert "env_vars" in runtime_env and SECRET not in json.dumps(runtime_env)
    listing = flow["actor_runtime_envs"]
    assert listing.returncode == 0, listing.stderr[-2000:]
    actor_runtime_envs = json.loads(listing.stdout.splitlines()[-1])
    assert actor_runtime_envs and not any(SECRET in runtime_env for runtime_env in actor_runtime_envs)


@pytest.mark.background_scenario("ray_jobs")
def test_sigterm_to_submit_wait_stops_the_ray_job_it_follows(scenario_result):
    flow = flow_outcome(scenario_result, "sigterm")
    assert flow["returncode"] == 130, flow["errors"][-2000:]
    assert f"stopped the Ray job {flow['job_id']}" in flow["errors"]
    # (The flow waited for the Jobs API to say STOPPED.)
    assert not (flow["output"] / "_SUCCESS").exists()


@pytest.mark.background_scenario("ray_jobs")
def test_a_head_python_without_herd_fails_saying_to_pass_python(scenario_result):
    flow = flow_outcome(scenario_result, "python_without_herd")
    result, bare = flow["result"], flow["python"]
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert f"herd: {bare} on the head has no herd installed" in result.stdout
    assert "pass --python" in result.stdout and "No module named" not in result.stdout
