"""What continuous feeding does when an engine step fails: the engine here is a scripted stand-in for
vLLM's LLMEngine (a fault two cores cannot make the real one show on cue), named fake_engine."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

import workers.continuous_batching as feeding
from workers.continuous_batching import ContinuousFeeder, FeederStopped


class _ScriptedEngine:
    """Finishes every request on the next step, except that the steps numbered in `failing` raise."""

    def __init__(self, failing: set[int]) -> None:
        self.failing = failing
        self.steps = 0
        self.unfinished: list[str] = []

    def add_request(self, request_id: str, prompt: Any, params: Any, lora_request: Any = None) -> None:
        self.unfinished.append(request_id)

    def has_unfinished_requests(self) -> bool:
        return bool(self.unfinished)

    def abort_request(self, request_ids: list[str]) -> None:
        self.unfinished = [request_id for request_id in self.unfinished if request_id not in request_ids]

    def step(self) -> list[Any]:
        self.steps += 1
        if self.steps in self.failing:
            raise RuntimeError(f"step {self.steps} failed")
        finished, self.unfinished = self.unfinished, []
        return [SimpleNamespace(request_id=request_id, finished=True) for request_id in finished]


def _feeder(monkeypatch: pytest.MonkeyPatch, step_errors_are_fatal: bool) -> ContinuousFeeder:
    monkeypatch.setattr(feeding, "final_outputs_only", lambda: "FINAL_ONLY")  # vLLM's enum, not imported here
    return ContinuousFeeder(
        _ScriptedEngine(failing={1}),
        is_fatal=lambda error: False,  # no EngineDeadError: what an engine core in this process raises
        engine_gone=lambda: False,
        step_errors_are_fatal=step_errors_are_fatal,
    )


def _generate(feeder: ContinuousFeeder) -> list[Any]:
    return feeder.generate(["prompt"], [SimpleNamespace()])


def test_fake_engine_a_failed_step_fails_its_requests_and_the_engine_serves_on_when_its_core_survives(monkeypatch):
    feeder = _feeder(monkeypatch, step_errors_are_fatal=False)
    with pytest.raises(RuntimeError, match="step 1 failed"):
        _generate(feeder)
    assert [output.finished for output in _generate(feeder)] == [True]


def test_fake_engine_a_failed_step_ends_an_engine_whose_core_runs_in_this_process(monkeypatch):
    """vLLM's core in a process of its own declares itself dead on any step error; a core in the
    replica's process is left in the same unknown state, so the replica must end and be replaced."""
    feeder = _feeder(monkeypatch, step_errors_are_fatal=True)
    with pytest.raises(FeederStopped, match="step 1 failed"):
        _generate(feeder)
    with pytest.raises(FeederStopped):
        _generate(feeder)
