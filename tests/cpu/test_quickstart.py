"""The README's quickstart, as a user runs it: the real demo model answers the bundled questions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.own_engine
def test_quickstart_answers_every_bundled_question_with_real_text(tmp_path):
    questions = [json.loads(line) for line in (REPO / "examples" / "prompts.jsonl").read_text().splitlines()]
    result = subprocess.run(
        [sys.executable, "submit.py", "run", "examples/quickstart.yaml", "--output", str(tmp_path / "out")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "herd: succeeded: 52 rows in, 52 rows out, 0 error rows" in result.stdout
    assert "tokens/s" in result.stdout
    rows = [
        json.loads(line)
        for path in (tmp_path / "out" / "data").glob("*.jsonl")
        for line in path.read_text().splitlines()
    ]
    assert sorted(row["id"] for row in rows) == sorted(question["id"] for question in questions)
    assert all(row["completion"].strip() for row in rows)
    assert all(row["topic"] for row in rows)
    # A real model, not random weights: the first question has a well-known answer.
    capital = next(row for row in rows if row["id"] == "q001")
    assert "Paris" in capital["completion"]
    assert (tmp_path / "out" / "_SUCCESS").exists()
