"""`python -m bench gpu` keeps to its minutes: each run is estimated from the walls so far and skipped,
saying why, when it would end past the budget (a GPU is lent for minutes, and a command cut off in
the middle of a run loses it and every run after it)."""

from __future__ import annotations

import pytest

from bench.gpu import _runs
from bench.run_budget import Run, RunBudget

HERD_7B, BARE_7B = Run("7b", 1, "herd"), Run("7b", 1, "bare_vllm")
HERD_13B, BARE_13B = Run("13b", 1, "herd"), Run("13b", 1, "bare_vllm")


def test_the_first_run_always_goes_and_no_budget_never_refuses():
    assert RunBudget(1.0, started=0.0).refusal([HERD_7B, BARE_7B], now=0.5) is None
    unlimited = RunBudget(None, started=0.0)
    unlimited.measured(HERD_7B, 10_000.0)
    assert unlimited.refusal([BARE_7B], now=10_000.0) is None


def test_a_side_is_estimated_from_the_longest_side_of_its_case_and_refused_past_the_budget():
    budget = RunBudget(480.0, started=0.0)
    budget.measured(HERD_7B, 139.0)
    assert budget.estimate(BARE_7B) == (139.0, "the longest side of 7b TP 1")
    assert budget.refusal([BARE_7B], now=300.0) is None  # 300 + 139 <= 480
    why = budget.refusal([BARE_7B], now=350.0)
    assert why is not None and "past the 8.0 given" in why and "estimated 139 s" in why, why


def test_another_shape_is_estimated_from_the_same_side_scaled_by_parameters():
    budget = RunBudget(480.0, started=0.0)
    budget.measured(HERD_7B, 139.0)
    budget.measured(BARE_7B, 78.0)
    herd, basis = budget.estimate(HERD_13B)
    assert herd == pytest.approx(139.0 * 13.0 / 6.74) and "7b TP 1 herd" in basis
    bare, _ = budget.estimate(BARE_13B)
    assert bare == pytest.approx(78.0 * 13.0 / 6.74)
    # herd and the bare script of 13B start together or not at all: together they would end past 8 minutes.
    why = budget.refusal([HERD_13B, BARE_13B], now=217.0)
    assert why is not None and "13b TP 1 herd:" in why and "13b TP 1 bare_vllm:" in why, why
    # Ray Data LLM of 7B, from its case's longest side, still fits.
    assert budget.refusal([Run("7b", 1, "ray_data_llm")], now=217.0) is None


def test_herd_and_the_bare_script_of_every_case_go_before_ray_data_llm():
    cases = [("7b", 1), ("13b", 1)]
    assert _runs(cases, ["herd", "bare_vllm", "ray_data_llm"]) == [
        [HERD_7B, BARE_7B],
        [HERD_13B, BARE_13B],
        [Run("7b", 1, "ray_data_llm")],
        [Run("13b", 1, "ray_data_llm")],
    ]
    assert _runs(cases, ["herd", "ray_data_llm"]) == [
        [HERD_7B],
        [HERD_13B],
        [Run("7b", 1, "ray_data_llm")],
        [Run("13b", 1, "ray_data_llm")],
    ]
