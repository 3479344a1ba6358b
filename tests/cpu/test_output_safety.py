"""herd writes only where it may and deletes only what it wrote; an empty input is an empty success.

None of these start an engine: the inputs hold no rows, or the output is refused first. The model
path only needs to exist (the output's fingerprint records its files).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.manifest import OutputInUse
from jobs.runner import run_job
from schemas import SpecError, parse_job
from schemas.errors import ExitCode

MODEL = {}


@pytest.fixture(autouse=True)
def _model(tiny_model):
    MODEL["path"] = str(tiny_model)


def _job(input_path: Path, output_path: Path, **input_fields) -> dict:
    return {
        "input": {"path": str(input_path), "prompt_column": "prompt", **input_fields},
        "model": dict(MODEL),
        "output": {"path": str(output_path)},
    }


def _empty_inputs(tmp_path: Path) -> Path:
    (tmp_path / "in").mkdir(parents=True)
    (tmp_path / "in" / "monday.jsonl").write_text("")
    (tmp_path / "in" / "tuesday.jsonl.gz").write_bytes(b"")
    return tmp_path / "in"


def test_a_job_whose_inputs_hold_no_rows_succeeds_with_an_empty_output(tmp_path):
    outcome = run_job(parse_job(_job(_empty_inputs(tmp_path), tmp_path / "out")))
    assert outcome.exit_code == ExitCode.SUCCESS
    assert (tmp_path / "out" / "_SUCCESS").exists()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["rows_in"] == summary["rows_out"] == summary["shards"] == 0
    assert summary["status"] == "succeeded"


def test_require_rows_makes_an_empty_input_an_error(tmp_path):
    with pytest.raises(SpecError, match=r"hold no rows \(input.require_rows is set\)"):
        run_job(parse_job(_job(_empty_inputs(tmp_path), tmp_path / "out", require_rows=True)))
    assert not (tmp_path / "out").exists()


def test_a_non_empty_output_path_without_a_herd_job_is_refused_and_left_untouched(tmp_path):
    (tmp_path / "out" / "data").mkdir(parents=True)
    (tmp_path / "out" / "report.csv").write_text("someone else's file")
    (tmp_path / "out" / "data" / "part-0.parquet").write_text("someone else's data")
    for overwrite in (False, True):
        with pytest.raises(OutputInUse, match=r"is not empty and holds no herd job\.json"):
            run_job(parse_job(_job(_empty_inputs(tmp_path / str(overwrite)), tmp_path / "out")), overwrite=overwrite)
    assert sorted(str(path.relative_to(tmp_path / "out")) for path in (tmp_path / "out").rglob("*")) == [
        "data",
        "data/part-0.parquet",
        "report.csv",
    ]


def _herd_output_with_foreign_files(tmp_path: Path) -> tuple[Path, list[Path], list[Path]]:
    """An output a herd run left (its own files, by herd's names) with other people's files beside them."""
    output = tmp_path / "out"
    run_job(parse_job(_job(_empty_inputs(tmp_path), output)))
    own, foreign = [], []
    for folder in ("data", "errors"):
        (output / folder).mkdir(exist_ok=True)
        own.append(output / folder / "in_jsonl-0-4096-0123456789.00112233aabb.parquet")
        foreign.append(output / folder / "notes-by-a-colleague.parquet")
        foreign.append(output / folder / "in_jsonl-0-4096-0123456789.parquet")  # close, but not herd's name
    own.append(output / "manifest" / "in_jsonl-0-4096-0123456789.json")
    own.append(output / "manifest" / "_checkpoint-000007-000007.parquet")
    foreign.append(output / "manifest" / "README.json")
    foreign.append(output / "dashboard.html")
    for path in own + foreign:
        path.parent.mkdir(exist_ok=True)
        path.write_text("x")
    return output, own, foreign


def test_a_rerun_deletes_its_own_stray_files_and_keeps_everyone_elses(tmp_path):
    output, own, foreign = _herd_output_with_foreign_files(tmp_path)
    stray = [path for path in own if path.parent.name != "manifest"]
    for path in own:  # keep only stray data/error files: a record would make them count as committed
        if path not in stray:
            path.unlink()
    outcome = run_job(parse_job(_job(tmp_path / "in", output)))
    assert outcome.exit_code == ExitCode.SUCCESS
    assert not any(path.exists() for path in stray)
    assert all(path.exists() for path in foreign)


def test_overwrite_deletes_only_what_herd_wrote(tmp_path):
    output, own, foreign = _herd_output_with_foreign_files(tmp_path)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "in.jsonl").write_text("")
    with pytest.raises(OutputInUse, match="holds the output of a different job"):
        run_job(parse_job(_job(tmp_path / "other", output)))
    outcome = run_job(parse_job(_job(tmp_path / "other", output)), overwrite=True)
    assert outcome.exit_code == ExitCode.SUCCESS
    assert not any(path.exists() for path in own)
    assert all(path.exists() for path in foreign)


def test_an_output_planned_by_the_old_planner_is_refused_with_a_clear_message(tmp_path):
    output = tmp_path / "out"
    run_job(parse_job(_job(_empty_inputs(tmp_path), output)))
    record = json.loads((output / "job.json").read_text())
    del record["fingerprint"]["planner"]  # what herd wrote before Parquet shards were row ranges
    (output / "job.json").write_text(json.dumps(record))
    with pytest.raises(OutputInUse, match=r"planned by another version of herd \(planner 1; this one plans version 2"):
        run_job(parse_job(_job(tmp_path / "in", output)))
    assert run_job(parse_job(_job(tmp_path / "in", output)), overwrite=True).exit_code == ExitCode.SUCCESS
