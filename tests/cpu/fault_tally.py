"""Counts what the fault-injection tests did, for the one line the suite prints at the end."""

from __future__ import annotations

TALLY = {"faults injected": 0, "rows expected": 0, "rows lost": 0, "rows duplicated": 0}


def record(faults: int, expected_ids: list[str], output_ids: list[str]) -> None:
    """Adds one test's numbers: output_ids are the ids of output and error rows, one per input row."""
    TALLY["faults injected"] += faults
    TALLY["rows expected"] += len(expected_ids)
    TALLY["rows lost"] += len(set(expected_ids) - set(output_ids))
    TALLY["rows duplicated"] += len(output_ids) - len(set(output_ids))


def line() -> str:
    return "fault injection: " + ", ".join(f"{value} {name}" for name, value in TALLY.items())
