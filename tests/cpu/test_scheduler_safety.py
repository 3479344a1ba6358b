"""What a scheduler's re-runs meet: complete fingerprints, files that change under a job, the daily
pipeline of new files, and commits whose answer was lost."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from common.storage import Storage
from jobs.manifest import OutputInUse
from jobs.planner import plan_shards
from jobs.runner import run_job
from schemas import parse_job
from schemas.errors import ExitCode
from schemas.job import InputSpec, RetrySpec, StorageSpec
from tests.cpu.conftest import died_before_its_first_checkpoint, manifest_records, read_rows
from tests.cpu.flaky_s3_proxy import FlakyS3Proxy
from workers.shard_io import ShardInputError, read_shard

REPO = Path(__file__).resolve().parents[2]


def _write_jsonl(path: Path, prompts: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"prompt": prompt}) + "\n" for prompt in prompts))


@pytest.mark.parametrize(
    ("change", "refused_for"),
    [
        ({"dtype": "bfloat16"}, "model.dtype"),
        ({"engine_options": {"quantization": "fp8"}}, "model.engine_options.quantization"),
        ({"engine_options": {"seed": 7}}, "model.engine_options.seed"),
        ({"engine_options": {"max_num_seqs": 8, "gpu_memory_utilization": 0.5}}, None),
        ({"name": "llama-2-7b-chat"}, "model.name"),  # the model column says another name
    ],
    ids=["dtype", "quantization", "engine seed", "batch and memory limits", "name"],
)
def test_what_changes_the_generated_text_refuses_a_rerun_and_limits_do_not(tmp_path, tiny_model, change, refused_for):
    (tmp_path / "in.jsonl").write_text("")  # no rows: no engine is needed to claim the output
    job = {
        "input": {"path": str(tmp_path / "in.jsonl"), "prompt_column": "prompt"},
        "model": {"path": str(tiny_model)},
        "output": {"path": str(tmp_path / "out")},
    }
    assert run_job(parse_job(job)).exit_code == ExitCode.SUCCESS
    changed = parse_job({**job, "model": {**job["model"], **change}})
    if refused_for is None:
        assert run_job(changed).exit_code == ExitCode.SUCCESS
    else:
        with pytest.raises(OutputInUse, match=f"changed: {refused_for}"):
            run_job(changed)


def test_options_added_later_do_not_refuse_outputs_written_before_them_and_setting_one_does(tmp_path, tiny_model):
    (tmp_path / "in.jsonl").write_text("")  # no rows: no engine is needed to claim the output
    job = {
        "input": {"path": str(tmp_path / "in.jsonl"), "messages_column": "messages"},
        "model": {"path": str(tiny_model)},
        "prompt": {"format": "llama2-chat"},
        "output": {"path": str(tmp_path / "out")},
    }
    assert run_job(parse_job(job)).exit_code == ExitCode.SUCCESS
    # What herd wrote before input.encoding and prompt.regenerate_final_answer existed.
    fingerprint = json.loads((tmp_path / "out" / "job.json").read_text())["fingerprint"]
    assert "encoding" not in fingerprint["input"] and "regenerate_final_answer" not in fingerprint["prompt"]
    assert "name" not in fingerprint["model"]
    assert run_job(parse_job({**job, "input": {**job["input"], "encoding": "UTF8"}})).exit_code == ExitCode.SUCCESS
    with pytest.raises(OutputInUse, match=r"changed: input\.encoding"):
        run_job(parse_job({**job, "input": {**job["input"], "encoding": "cp1252"}}))
    with pytest.raises(OutputInUse, match=r"changed: prompt\.regenerate_final_answer"):
        run_job(parse_job({**job, "prompt": {**job["prompt"], "regenerate_final_answer": True}}))


def test_new_weights_in_the_same_model_folder_refuse_the_rerun(tmp_path, tiny_model):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    (tmp_path / "in.jsonl").write_text("")
    job = parse_job(
        {
            "input": {"path": str(tmp_path / "in.jsonl"), "prompt_column": "prompt"},
            "model": {"path": str(model)},
            "output": {"path": str(tmp_path / "out")},
        }
    )
    run_job(job)
    weights = next(model.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes() + b"\0")  # a new checkpoint under the same path
    with pytest.raises(OutputInUse, match=r"changed: model\.identity\.files"):
        run_job(job)


def test_an_input_file_rewritten_after_planning_fails_its_shards_instead_of_mixing_versions(tmp_path, s3_endpoint):
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint)
    fs.pipe("herd-test/rewritten/in.jsonl", b"".join(b'{"prompt": "v1 %d"}\n' % index for index in range(200)))
    storage = Storage(StorageSpec(endpoint_url=s3_endpoint), RetrySpec(attempts=1))
    spec = InputSpec(path="s3://herd-test/rewritten/in.jsonl", prompt_column="prompt", bytes_per_shard=1024)
    shards = plan_shards(spec, storage.expand_inputs(spec.path), storage)
    assert len(read_shard(shards[0], spec, storage).rows) > 0  # as planned: read
    fs.pipe("herd-test/rewritten/in.jsonl", b"".join(b'{"prompt": "v2 %d"}\n' % index for index in range(200)))
    with pytest.raises(ShardInputError, match=r"in\.jsonl changed since the job was planned"):
        read_shard(shards[1], spec, storage)


def test_the_daily_pipeline_runs_only_each_new_folder_and_keeps_every_row_once(run_tiny, tmp_path):
    days = ["2026-11-23", "2026-11-24", "2026-11-25"]
    job = {
        "input": {"path": str(tmp_path / "prompts"), "prompt_column": "prompt", "new_files": "process"},
        "sampling": {"max_new_tokens": 2},
        "output": {"path": str(tmp_path / "out")},
    }
    for index, day in enumerate(days):
        _write_jsonl(tmp_path / "prompts" / f"day={day}" / "part-0.jsonl", [f"{day} row {row}" for row in range(5)])
        outcome = run_tiny(**job)
        assert outcome.exit_code == ExitCode.SUCCESS
        this_run = outcome.summary.this_run
        assert this_run.files_added == (
            [] if index == 0 else [str(tmp_path / "prompts" / f"day={day}" / "part-0.jsonl")]
        )
        assert (this_run.shards_run, this_run.rows_in) == (1, 5)
        assert (outcome.summary.rows_in, outcome.summary.shards_skipped) == (5 * (index + 1), index)
    ids = [row["id"] for row in read_rows(str(tmp_path / "out" / "data"))]
    assert len(ids) == len(set(ids)) == 15
    runs = json.loads((tmp_path / "out" / "job.json").read_text())["runs"]
    assert [run["rows_in"] for run in runs] == [5, 5, 5]
    assert {run["herd"] for run in runs} == {importlib.metadata.version("herd")}  # which herd ran each

    # Without the option a grown input is another job; a changed earlier file is refused by name.
    _write_jsonl(tmp_path / "prompts" / "day=2026-11-26" / "part-0.jsonl", ["one more"])
    with pytest.raises(OutputInUse, match=r"set input\.new_files: process"):
        run_tiny(**{**job, "input": {**job["input"], "new_files": "refuse"}})
    _write_jsonl(tmp_path / "prompts" / "day=2026-11-23" / "part-0.jsonl", ["rewritten"])
    with pytest.raises(OutputInUse, match=r"input files changed: .*day=2026-11-23/part-0\.jsonl"):
        run_tiny(**job)


def test_a_commit_whose_answer_was_lost_keeps_its_files_and_counts_as_done(run_tiny, tmp_path, s3_endpoint):
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint)
    fs.pipe("herd-test/ambiguous/in.jsonl", b"".join(b'{"prompt": "row %d"}\n' % index for index in range(30)))

    answered_once: set[str] = set()

    def manifest_record(method: str, path: str) -> bool:
        """The first write of each record lands, but its answer is lost (the retry's is not: a lost
        answer every time would be an outage, which ends the run with exit 6)."""
        if method != "PUT" or "/manifest/" not in path or "_index" in path or path in answered_once:
            return False
        answered_once.add(path)
        return True

    with FlakyS3Proxy(s3_endpoint, failure_rate=0.0, drop_answer=manifest_record) as proxy:
        job = {
            "input": {"path": "s3://herd-test/ambiguous/in.jsonl", "prompt_column": "prompt", "bytes_per_shard": 1024},
            "sampling": {"max_new_tokens": 2},
            "output": {"path": "s3://herd-test/ambiguous/out"},
            "storage": {"endpoint_url": proxy.endpoint},
            "retry": {"attempts": 2, "backoff_base_s": 0.0},
        }
        first = run_tiny(**job)
    # Every record landed, though the driver never heard so: the manifest as stored says they are done,
    assert first.exit_code == ExitCode.SUCCESS and proxy.dropped > 0
    assert first.summary.shards_failed == []
    storage = Storage(StorageSpec(endpoint_url=s3_endpoint), RetrySpec())
    records = manifest_records("s3://herd-test/ambiguous/out", s3_endpoint)
    named = [output.url for record in records for output in record.outputs]
    # the files the stored records name were kept,
    assert named and all(storage.exists(url) for url in named)
    # and the next run counts those shards done and runs nothing again.
    second = run_tiny(**{**job, "storage": {"endpoint_url": s3_endpoint}})
    assert second.exit_code == ExitCode.SUCCESS
    assert second.summary.shards_run == 0 and second.summary.shards_skipped == len(records)
    ids = [row["id"] for row in read_rows("s3://herd-test/ambiguous/out/data", s3_endpoint)]
    assert len(ids) == len(set(ids)) == 30

    # `inspect` on S3: complete now; with two records gone (as after a crash), exactly those are missing.
    def inspect() -> dict:
        result = subprocess.run(
            [
                sys.executable,
                "submit.py",
                "inspect",
                "s3://herd-test/ambiguous/out",
                "--json",
                "--endpoint-url",
                s3_endpoint,
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    state = inspect()
    assert state["succeeded"] and state["shards"]["missing"] == [] and state["run_in_progress"] is None
    assert state["rows"] == {"in": 30, "out": 30, "errors": 0} and len(state["runs"]) == 2
    gone = sorted(record.shard_id for record in records)[:2]
    died_before_its_first_checkpoint("s3://herd-test/ambiguous/out", gone, s3_endpoint)
    assert sorted(shard["shard"] for shard in inspect()["shards"]["missing"]) == gone
