"""Which of a benchmark's runs fit the minutes it is given.

A GPU machine is lent for minutes (the device tool allows ten a command), and a command cut off in
the middle of a run loses that run and every one after it. So each run is estimated before it
starts, from the walls measured so far, and skipped, saying so, when it would end past the budget.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

# Llama 2's sizes in billions of parameters (its model cards): a shape's run is estimated from
# another shape's in this ratio, which overstates the start-up (it grows with the layers, not the
# parameters) and so errs towards skipping.
PARAMETERS_B = {"7b": 6.74, "13b": 13.0, "70b": 69.0}


@dataclass(frozen=True)
class Run:
    shape: str
    tensor_parallel_size: int
    side: str

    def __str__(self) -> str:
        return f"{self.shape} TP {self.tensor_parallel_size} {self.side}"


class RunBudget:
    """`seconds` for every run together, counted from `started` (time.monotonic()); None: no limit."""

    def __init__(self, seconds: float | None, started: float | None = None) -> None:
        self.seconds = seconds
        self.started = time.monotonic() if started is None else started
        self.walls: dict[Run, float] = {}

    def measured(self, run: Run, wall: float) -> None:
        self.walls[run] = wall

    def estimate(self, run: Run) -> tuple[float, str] | None:
        """Seconds `run` will likely take, and what that is taken from; None before any run is measured.
        From the longest side of the same shape and TP so far, else from the same side of another
        shape (scaled by parameters), else from the longest run of all (scaled)."""
        same_case = [wall for done, wall in self.walls.items() if done.shape == run.shape
                     and done.tensor_parallel_size == run.tensor_parallel_size]  # fmt: skip
        if same_case:
            return max(same_case), f"the longest side of {run.shape} TP {run.tensor_parallel_size}"
        for basis in ([done for done in self.walls if done.side == run.side], list(self.walls)):
            if basis:
                scaled = {done: self.walls[done] * _size_ratio(run.shape, done.shape) for done in basis}
                done = max(scaled, key=scaled.__getitem__)
                return scaled[done], f"{done}'s {self.walls[done]:.0f} s, scaled to {run.shape}"
        return None

    def refusal(self, runs: list[Run], now: float | None = None) -> str | None:
        """Why `runs` (started together, one after the other) would not end within the budget; None
        when they would, or when nothing is known yet to tell (the first run always goes)."""
        if self.seconds is None:
            return None
        elapsed = (time.monotonic() if now is None else now) - self.started
        estimates = [estimate for estimate in map(self.estimate, runs) if estimate is not None]
        if len(estimates) < len(runs):
            return None
        expected = sum(seconds for seconds, _ in estimates)
        if elapsed + expected <= self.seconds:
            return None
        if len(runs) == 1:
            bases = estimates[0][1]
        else:
            bases = "; ".join(f"{run}: {basis}" for run, (_, basis) in zip(runs, estimates, strict=True))
        return (
            f"would end ~{(elapsed + expected) / 60:.1f} minutes in, past the {self.seconds / 60:.1f} given "
            f"(estimated {expected:.0f} s, from {bases})"
        )


def _size_ratio(shape: str, measured_shape: str) -> float:
    if shape in PARAMETERS_B and measured_shape in PARAMETERS_B:
        return PARAMETERS_B[shape] / PARAMETERS_B[measured_shape]
    return 1.0
