"""Inputs that cannot be run at all are refused with a clear message before any engine starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.runner import run_job
from schemas import SpecError, parse_job
from schemas.errors import UnplannableFiles
from schemas.job import JobSpec

REPO = Path(__file__).resolve().parents[2]


def _parquet_without_prompt(tmp: Path) -> str:
    pq.write_table(pa.table({"text": ["hello"]}), tmp / "in.parquet")
    return str(tmp / "in.parquet")


def _truncated_parquet(tmp: Path) -> str:
    pq.write_table(pa.table({"prompt": ["hello"] * 200}), tmp / "in.parquet")
    data = (tmp / "in.parquet").read_bytes()
    (tmp / "in.parquet").write_bytes(data[: len(data) // 3])
    return str(tmp / "in.parquet")


def _no_match(tmp: Path) -> str:
    return str(tmp / "nothing-*.jsonl")


def _missing_file(tmp: Path) -> str:
    return str(tmp / "missing.jsonl")


def _unknown_extension(tmp: Path) -> str:
    (tmp / "prompts.txt").write_text("hello\n")
    return str(tmp / "prompts.txt")


def _only_foreign_files(tmp: Path) -> str:
    (tmp / "inputs").mkdir()
    (tmp / "inputs" / "notes.txt").write_text("hello\n")
    (tmp / "inputs" / "_SUCCESS").write_text("")
    return str(tmp / "inputs")


def _inside_the_output(tmp: Path) -> str:
    (tmp / "out").mkdir()
    (tmp / "out" / "in.jsonl").write_text(json.dumps({"prompt": "hi"}) + "\n")
    return str(tmp / "out" / "in.jsonl")


INPUT_CASES = [
    (_inside_the_output, "output.path: {tmp}/out holds the input ({tmp}/out/in.jsonl); write the output elsewhere"),
    (_only_foreign_files, "none of the 2 file(s) under"),
    (_parquet_without_prompt, "in.parquet: column(s) ['prompt'] named in the job are not in the file"),
    (_truncated_parquet, "in.parquet: not a readable Parquet file"),
    (_no_match, "input.path: no files match"),
    (_missing_file, "input.path: cannot list"),
    (_unknown_extension, "cannot infer the format of"),
]


def _job_without_engine(input_path: str, tmp_path: Path) -> JobSpec:
    """A job reading `input_path` whose model path holds nothing: only a refusal before any engine
    starts can end it well."""
    return parse_job(
        {
            "input": {"path": input_path, "prompt_column": "prompt"},
            "model": {"path": "/no/engine/is/started"},
            "output": {"path": str(tmp_path / "out")},
        }
    )


@pytest.mark.parametrize(("make_input", "message"), INPUT_CASES, ids=[case.__name__ for case, _ in INPUT_CASES])
def test_unusable_input_is_refused_before_generation(tmp_path, make_input, message):
    with pytest.raises(SpecError) as raised:
        run_job(_job_without_engine(make_input(tmp_path), tmp_path))
    assert message.format(tmp=tmp_path) in str(raised.value)
    assert not (tmp_path / "out" / "data").exists()


def _parquet_files(folder: Path, columns_by_file: dict[str, dict | bytes]) -> None:
    folder.mkdir()
    for name, content in columns_by_file.items():
        if isinstance(content, bytes):
            (folder / name).write_bytes(content)
        else:
            pq.write_table(pa.table(content), folder / name)


def test_every_input_file_that_cannot_be_planned_is_named_in_one_error_before_generation(tmp_path):
    """A few bad files among many (a truncated upload, an export with another schema): the error
    names each of them, in file order, so they are fixed in one go; the good files are not named."""
    good = {"prompt": ["hello"] * 3}
    _parquet_files(
        tmp_path / "in",
        {
            "part-0.parquet": b"PAR1 truncated by a failed upload",
            "part-1.parquet": good,
            "part-2.parquet": {"text": ["hello"]},
            "part-3.parquet": good,
            "part-4.parquet": b"<html>an error page saved as the file</html>",
        },
    )
    job = _job_without_engine(str(tmp_path / "in"), tmp_path)
    with pytest.raises(SpecError) as raised:
        run_job(job, engine_factory=_no_engine)
    lines = str(raised.value).splitlines()
    assert lines[0] == "3 input files cannot be planned:"
    assert [line.strip().split(":")[0] for line in lines[1:]] == ["part-0.parquet", "part-2.parquet", "part-4.parquet"]
    assert "not a readable Parquet file" in lines[1] and "column(s) ['prompt'] named in the job" in lines[2]
    assert not (tmp_path / "out").exists()


def test_planning_stops_naming_files_at_its_limit_when_every_file_lacks_the_column(tmp_path, monkeypatch):
    """A wrong prompt_column fails every file: the error comes after a few, not after reading all."""
    monkeypatch.setattr(UnplannableFiles, "MOST_NAMED", 3)
    _parquet_files(tmp_path / "in", {f"part-{index}.parquet": {"text": ["hello"]} for index in range(8)})
    job = _job_without_engine(str(tmp_path / "in"), tmp_path)
    with pytest.raises(UnplannableFiles) as raised:
        run_job(job, engine_factory=_no_engine)
    assert raised.value.stopped and str(raised.value).startswith("3 input files cannot be planned; planning stopped")
    assert [problem.split(":")[0] for problem in raised.value.problems] == [
        f"part-{index}.parquet" for index in range(3)
    ]


def test_a_bad_first_file_is_reported_after_a_bounded_look_at_the_files_after_it(tmp_path, monkeypatch):
    """With 100,000 files, planning them all to report a bad first one would take minutes: the next
    few are looked at, and the error says that others may follow."""
    import jobs.runner

    monkeypatch.setattr(jobs.runner, "FILES_CHECKED_AFTER_A_BAD_FIRST", 2)
    good = {"prompt": ["hello"] * 3}
    _parquet_files(
        tmp_path / "in",
        {
            "part-0.parquet": {"text": ["hello"]},
            "part-1.parquet": good,
            "part-2.parquet": b"PAR1 truncated",
            "part-3.parquet": b"PAR1 truncated too, but past the look",
            "part-4.parquet": good,
        },
    )
    job = _job_without_engine(str(tmp_path / "in"), tmp_path)
    with pytest.raises(UnplannableFiles) as raised:
        run_job(job, engine_factory=_no_engine)
    assert raised.value.stopped and str(raised.value).startswith("2 input files cannot be planned; planning stopped")
    assert [problem.split(":")[0] for problem in raised.value.problems] == ["part-0.parquet", "part-2.parquet"]


def test_unwritable_output_is_refused_before_generation(tmp_path):
    (tmp_path / "in.jsonl").write_text(json.dumps({"prompt": "hi"}) + "\n")
    (tmp_path / "a-file").write_text("not a directory")
    job = parse_job(
        {
            "input": {"path": str(tmp_path / "in.jsonl"), "prompt_column": "prompt"},
            "model": {"path": "/no/engine/is/started"},
            "output": {"path": str(tmp_path / "a-file" / "out")},
        }
    )
    with pytest.raises(SpecError, match=r"output\.path: cannot write to"):
        run_job(job)


@pytest.mark.parametrize("files", [1, 3])
def test_a_model_path_that_holds_nothing_is_refused_before_any_engine_starts(tmp_path, files):
    """With one input file the plan is done before replicas would start; with more, replicas start
    while the rest is planned, once the model's files (and the output's owner) are checked."""
    (tmp_path / "in").mkdir()
    for index in range(files):
        (tmp_path / "in" / f"part-{index}.jsonl").write_text(json.dumps({"prompt": "hi"}) + "\n")
    job = parse_job(
        {
            "input": {"path": str(tmp_path / "in"), "prompt_column": "prompt"},
            "model": {"path": str(tmp_path / "no-model-here")},
            "output": {"path": str(tmp_path / "out")},
        }
    )
    with pytest.raises(SpecError, match=r"model\.path: '.*no-model-here' holds no files"):
        run_job(job, engine_factory=_no_engine)


def _no_engine(*arguments: object) -> None:
    raise AssertionError("no engine may start for a job whose model path holds nothing")


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("s3://no-such-bucket-herd/in.jsonl", "input.path: cannot list s3://no-such-bucket-herd/in.jsonl"),
        ("s3://herd-test/missing/*.jsonl", "input.path: no files match"),
    ],
)
def test_unreadable_s3_input_exits_2_naming_the_path(tmp_path, s3_endpoint, path, message):
    result = _plan(tmp_path, path, s3_endpoint, os.environ)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_missing_s3_credentials_exit_2_naming_the_cause(tmp_path, s3_endpoint):
    environment = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
    environment.update(
        {"AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "AWS_CONFIG_FILE": str(tmp_path / "none")}
    )
    result = _plan(tmp_path, "s3://herd-test/any.jsonl", s3_endpoint, environment)
    assert result.returncode == 2, result.stderr
    assert "input.path: cannot list s3://herd-test/any.jsonl" in result.stderr
    assert "credentials" in result.stderr.lower()


def _plan(tmp_path: Path, path: str, endpoint: str, environment) -> subprocess.CompletedProcess:
    job = {
        "input": {"path": path, "prompt_column": "prompt"},
        "model": {"path": "/no/engine"},
        "output": {"path": str(tmp_path / "out")},
        "storage": {"endpoint_url": endpoint},
        "retry": {"attempts": 1},
    }
    (tmp_path / "job.json").write_text(json.dumps(job))
    return subprocess.run(
        [sys.executable, "submit.py", "plan", str(tmp_path / "job.json")],
        cwd=REPO,
        env=dict(environment),
        capture_output=True,
        text=True,
        timeout=120,
    )
