"""The README's quickstart, as a user runs it: the real demo model answers the bundled questions."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.cpu.background import background_scenario
from tests.cpu.conftest import read_rows

REPO = Path(__file__).resolve().parents[2]


class Quickstart(NamedTuple):
    run: subprocess.CompletedProcess  # on a pseudo-terminal: stdout is the screen
    plan: subprocess.CompletedProcess
    output: Path


@background_scenario("quickstart", own_thread=True)
def quickstart(work_dir: Path, tiny_model: Path) -> Quickstart:
    """The quickstart as the README runs it, under a pseudo-terminal (util-linux `script`) as a person
    runs it, and beside it its dry run calibrated on 16 rows by an engine of its own (the demo model).
    Each keeps about a core busy for a minute: they run from the session's start, beside the first
    tests, on a thread of their own."""
    output = work_dir / "out"
    command = f"{sys.executable} submit.py run examples/quickstart.yaml --output {output}"
    # Its log goes to a file: unread until the run ends, a pipe could fill and stop the plan.
    plan_log = work_dir / "plan.log"
    with plan_log.open("w") as log:
        plan = subprocess.Popen(
            [sys.executable, "submit.py", "plan", "examples/quickstart.yaml", "--calibrate", "16", "--json"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        try:
            run = subprocess.run(
                ["script", "--quiet", "--return", "--command", command, "/dev/null"],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=1200,
                env={**os.environ, "COLUMNS": "120", "LINES": "40"},
            )
            planned, _ = plan.communicate(timeout=600)
        finally:
            if plan.poll() is None:
                plan.kill()
    plan_result = subprocess.CompletedProcess(plan.args, plan.returncode, planned, plan_log.read_text())
    return Quickstart(run, plan_result, output)


@pytest.mark.background_scenario("quickstart")
def test_quickstart_on_a_terminal_shows_progress_and_herds_lines_only_and_answers_every_question(scenario_result):
    questions = [json.loads(line) for line in (REPO / "examples" / "prompts.jsonl").read_text().splitlines()]
    result, plan, output = scenario_result
    screen = result.stdout
    assert result.returncode == 0, screen[-3000:]
    assert "herd: succeeded: 52 rows in, 52 rows out, 0 error rows" in screen
    # The live display (rich), redrawn in place, and nothing of vLLM's or Ray's own logging.
    assert "52/" in screen and "tok/s" in screen and "replicas · ETA" in screen
    for noise in ("non-default args", "vllm", "Triton", "ray::", "worker.py", "NUMA"):
        assert noise not in screen, noise
    plain = [line.strip() for line in re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen).splitlines() if line.strip()]
    assert plain[-1].startswith("herd: output in")
    # vLLM's lines went to the replica's log file instead.
    [log] = (output / "logs").glob("replica-*.log")
    assert "non-default args" in log.read_text()
    rows = read_rows(str(output / "data"))
    assert sorted(row["id"] for row in rows) == sorted(question["id"] for question in questions)
    assert all(row["completion"].strip() for row in rows)
    assert all(row["topic"] for row in rows)
    # A real model, not random weights: the first question has a well-known answer.
    capital = next(row for row in rows if row["id"] == "q001")
    assert "Paris" in capital["completion"]
    assert (output / "_SUCCESS").exists()
    # The dry run's estimate of generated tokens, calibrated on 16 rows, is within 2x of this run's.
    generated = json.loads((output / "summary.json").read_text())["completion_tokens"]
    assert plan.returncode == 0, plan.stderr[-3000:]
    expected = json.loads(plan.stdout)["generated_tokens"]["expected"]
    assert generated / 2 <= expected <= generated * 2, (expected, generated)
