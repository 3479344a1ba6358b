"""Scenarios that run in the background of the test session, each checked by its test at its own place.

Two kinds take long without keeping both cores busy: scenarios on Ray clusters of their own
(tests/cpu/cluster_scenarios.py, the Ray Jobs flows of test_ray_jobs.py), which mostly wait for nodes,
for Ray to declare a node dead, for the autoscaler or for a job; and processes with an engine of their
own (a Python session using `import herd`, the vLLM internals probe, the quickstart's `plan
--calibrate`, the tensor-parallel run), which keep about one core busy. Run in line, the tests that
start them left a core idle for minutes. So conftest starts, from the session's start, the scenarios the
selected tests name (@pytest.mark.background_scenario(NAME)), one after another on one thread, in the
order those tests run, while the other tests use the rest of the machine.

A scenario is a function of (its own work directory, the tiny model's directory), registered under
its name with @background_scenario(NAME) beside the test that checks it. One that keeps a core busy
and is checked late in the run says `after_own_engine_tests=True`: it waits, behind every other
scenario, until the `own_engine` tests (which run first and keep both cores busy) are over, and runs
beside the tests after them, which leave a core idle for much of their time. One that keeps a core
busy for a minute or more and is checked early says `own_thread=True`: it starts at the session's
start on a thread of its own, beside the first tests, instead of holding up the line.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

Scenario = Callable[[Path, Path], Any]
SCENARIOS: dict[str, Scenario] = {}
AFTER_OWN_ENGINE_TESTS: set[str] = set()
OWN_THREAD: set[str] = set()

# Set by conftest when the first test outside the own_engine group starts (or the session ends).
OWN_ENGINE_TESTS_OVER = threading.Event()


def background_scenario(
    name: str, *, after_own_engine_tests: bool = False, own_thread: bool = False
) -> Callable[[Scenario], Scenario]:
    def register(scenario: Scenario) -> Scenario:
        SCENARIOS[name] = scenario
        if after_own_engine_tests:
            AFTER_OWN_ENGINE_TESTS.add(name)
        if own_thread:
            OWN_THREAD.add(name)
        return scenario

    return register


class BackgroundScenarios:
    """The named scenarios, started one after another on one thread (one at a time: a cluster starts
    3-5 raylets, an engine keeps a core busy), in the order given except that those which wait for the
    own_engine tests come after all the others, and those with a thread of their own start at once."""

    def __init__(self, names: list[str], work_root: Path, tiny_model: Path) -> None:
        self._line = ThreadPoolExecutor(max_workers=1, thread_name_prefix="background-scenario")
        self._executors = [self._line]
        self._futures: dict[str, Future] = {}
        self._ending = False
        # The ones that wait for the own_engine tests go last, so that none holds up the line.
        for name in sorted(names, key=lambda name: name in AFTER_OWN_ENGINE_TESTS):
            work_dir = work_root / name
            work_dir.mkdir(parents=True)
            executor = self._line
            if name in OWN_THREAD:
                executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"background-{name}")
                self._executors.append(executor)
            self._futures[name] = executor.submit(self._run, name, work_dir, tiny_model)

    def _run(self, name: str, work_dir: Path, tiny_model: Path) -> Any:
        if name in AFTER_OWN_ENGINE_TESTS:
            OWN_ENGINE_TESTS_OVER.wait()
            if self._ending:
                raise RuntimeError(f"the session ended before the background scenario {name} ran")
        return SCENARIOS[name](work_dir, tiny_model)

    def result(self, name: str) -> Any:
        # Bounded by each scenario's own subprocess timeouts, one after another.
        return self._futures[name].result(timeout=2400)

    def shutdown(self) -> None:
        self._ending = True
        OWN_ENGINE_TESTS_OVER.set()  # a scenario still waiting for it ends instead of running
        for executor in self._executors:
            executor.shutdown(wait=True, cancel_futures=True)
