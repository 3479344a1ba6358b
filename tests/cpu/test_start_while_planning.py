"""A run's own replicas load their engines while the driver plans, and end when the plan leaves them
nothing to do. Fake engines: what is shown is the order of the driver's and the replicas' steps."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

import jobs.runner
from jobs.runner import run_job
from schemas import parse_job
from schemas.errors import ExitCode
from tests.cpu.conftest import tiny_model_spec
from tests.cpu.fake_engine import FakeEngineFactory

# The longest a planning step waits to see an engine loading: a replica starts in seconds here.
_LOADING_WAIT_S = 120.0


def _job(tmp_path: Path, tiny_model: Path) -> Any:
    """Two input files: the first is planned before any replica starts (it checks the input), the
    second while they start."""
    (tmp_path / "in").mkdir()
    for part in range(2):
        with open(tmp_path / "in" / f"part-{part}.jsonl", "w") as handle:
            for index in range(15):
                handle.write(json.dumps({"id": f"row-{part}-{index}", "prompt": f"question {index}"}) + "\n")
    return parse_job(
        {
            "input": {"path": str(tmp_path / "in"), "prompt_column": "prompt", "id_column": "id"},
            "model": tiny_model_spec(tiny_model),
            "sampling": {"max_new_tokens": 4},
            "output": {"path": str(tmp_path / "out")},
        }
    )


def _placement_groups_held() -> int:
    """Every replica holds one placement group (its resources) until it is ended."""
    from ray.util import placement_group_table

    return sum(1 for group in placement_group_table().values() if group["state"] != "REMOVED")


def test_fake_engine_replicas_load_their_engines_while_the_driver_plans(
    ray_session, tiny_model, tmp_path, monkeypatch: pytest.MonkeyPatch
):
    loading = tmp_path / "loading"
    loading.mkdir()
    planning_saw: list[bool] = []
    plan = jobs.runner.plan_shards

    def plan_once_an_engine_loads(*arguments: Any) -> Any:
        # The first file is planned before any replica starts (it checks the input). Planning the rest
        # of a large input reads thousands of footers; here it waits (bounded) for an engine to start
        # loading, which can only happen if replicas were started before that.
        if planning_saw:
            deadline = time.monotonic() + _LOADING_WAIT_S
            while not any(loading.iterdir()) and time.monotonic() < deadline:
                time.sleep(0.1)
        planning_saw.append(any(loading.iterdir()))
        return plan(*arguments)

    monkeypatch.setattr(jobs.runner, "plan_shards", plan_once_an_engine_loads)
    outcome = run_job(_job(tmp_path, tiny_model), engine_factory=FakeEngineFactory(loading_dir=str(loading)))

    assert planning_saw == [False, True]
    assert outcome.exit_code == ExitCode.SUCCESS and outcome.summary.rows_out == 30
    assert outcome.summary.replicas == 1 and outcome.summary.replicas_replaced == 0


def test_fake_engine_a_run_with_nothing_left_to_run_ends_the_replicas_it_started_while_planning(
    ray_session, tiny_model, tmp_path
):
    job = _job(tmp_path, tiny_model)
    held = _placement_groups_held()  # other tests' warm replicas
    assert run_job(job, engine_factory=FakeEngineFactory()).exit_code == ExitCode.SUCCESS

    again = run_job(job, engine_factory=FakeEngineFactory())

    assert again.exit_code == ExitCode.SUCCESS
    assert again.summary.shards_run == 0 and again.summary.replicas == 0
    assert _placement_groups_held() == held
