"""Scenarios that run in the background of the test session, each checked by its test at its own place.

Two kinds take long without keeping both cores busy: scenarios on Ray clusters of their own
(tests/cpu/cluster_scenarios.py), which mostly wait for nodes, for Ray to declare a node dead or for
the autoscaler; and processes with an engine of their own (a Python session using `import herd`, the
vLLM internals probe, the quickstart's `plan --calibrate`), which keep one core busy. Run in line, the
tests that start them left a core idle for minutes. So conftest starts, from the session's start, the
scenarios the selected tests name (@pytest.mark.background_scenario(NAME)), one after another on one
thread, in the order those tests run, while the other tests use the rest of the machine.

A scenario is a function of (its own work directory, the tiny model's directory), registered under
its name with @background_scenario(NAME) beside the test that checks it.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

Scenario = Callable[[Path, Path], Any]
SCENARIOS: dict[str, Scenario] = {}


def background_scenario(name: str) -> Callable[[Scenario], Scenario]:
    def register(scenario: Scenario) -> Scenario:
        SCENARIOS[name] = scenario
        return scenario

    return register


class BackgroundScenarios:
    """The named scenarios, started one after another on one thread (one at a time: a cluster starts
    3-5 raylets, an engine keeps a core busy)."""

    def __init__(self, names: list[str], work_root: Path, tiny_model: Path) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="background-scenario")
        self._futures: dict[str, Future] = {}
        for name in names:
            work_dir = work_root / name
            work_dir.mkdir(parents=True)
            self._futures[name] = self._executor.submit(SCENARIOS[name], work_dir, tiny_model)

    def result(self, name: str) -> Any:
        # Bounded by each scenario's own subprocess timeouts, one after another.
        return self._futures[name].result(timeout=2400)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
