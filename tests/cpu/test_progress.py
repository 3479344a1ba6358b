"""What a job shows while it runs, off a terminal: periodic plain lines, or JSON objects only."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

from herd.cli import HERD_LOGGERS
from jobs.progress import Progress
from schemas.shard import Shard, ShardRecord
from tests.cpu.conftest import tiny_model_spec

REPO = Path(__file__).resolve().parents[2]


def _shard(start: int, rows: int, file_format: str = "jsonl") -> Shard:
    return Shard(
        file_url="in", file_label="in", file_size=10**6, file_version="v", format=file_format,
        start=start, end=start + rows, estimated_rows=rows,
    )  # fmt: skip


def _record(shard: Shard, rows: int, tokens: int) -> ShardRecord:
    return ShardRecord(
        shard_id=shard.shard_id, rows_in=rows, rows_out=rows, error_rows=1, reused_rows=0, prompt_tokens=0,
        completion_tokens=tokens, generate_started_at=0, generate_seconds=1, shard_seconds=1, started_at=0,
        finished_at=0, outputs=[], replica="r", attempts=1,
    )  # fmt: skip


def test_plain_progress_lines_come_every_period_and_refine_an_estimated_total():
    stream = io.StringIO()
    progress = Progress("lines", every_s=0.2, stream=stream)
    shards = [_shard(index * 100, 100) for index in range(4)]  # JSONL: 400 rows estimated
    progress.start(shards)
    progress.replicas(2)
    progress.committed(_record(shards[0], 50, 500), shards[0])  # it held half what was estimated
    time.sleep(0.7)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) >= 3 and all(line.startswith("herd: progress: ") for line in lines)
    assert "50/~200 rows · 1/4 shards" in lines[-1]
    assert "1 errors · 2 replicas" in lines[-1] and "tok/s" in lines[-1]


def test_json_progress_is_one_object_a_line():
    stream = io.StringIO()
    progress = Progress("json", every_s=0.1, stream=stream)
    shards = [_shard(0, 10, "parquet")]
    progress.start(shards)
    progress.committed(_record(shards[0], 10, 40), shards[0])
    time.sleep(0.3)
    progress.close()
    objects = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert objects[-1]["event"] == "progress"
    assert (objects[-1]["rows_done"], objects[-1]["rows_total"], objects[-1]["rows_total_exact"]) == (10, 10, True)


def test_the_cli_in_json_mode_prints_only_json_objects_with_progress_and_the_summary_and_only_herds_logs(
    tmp_path, tiny_model
):
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"prompt": f"row {index}"}) + "\n" for index in range(60)))
    job = {
        "input": {"path": str(tmp_path / "in.jsonl"), "prompt_column": "prompt", "bytes_per_shard": 1024},
        "model": tiny_model_spec(tiny_model),
        "sampling": {"max_new_tokens": 64, "ignore_eos": True},
        "output": {"path": str(tmp_path / "out")},
    }
    (tmp_path / "job.json").write_text(json.dumps(job))
    result = subprocess.run(
        [
            sys.executable,
            "submit.py",
            "run",
            str(tmp_path / "job.json"),
            "--log-format",
            "json",
            "--progress-every",
            "1",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    objects = [json.loads(line) for line in lines]  # fails on any line that is not JSON
    events = [item["event"] for item in objects]
    assert "progress" in events and events.count("summary") == 1
    summary = next(item for item in objects if item["event"] == "summary")
    assert summary["rows_out"] == 60 and summary["status"] == "succeeded"
    assert not any("vllm" in line.lower() for line in lines)
    # Only herd's own loggers speak below WARNING: the report's plots made matplotlib log at INFO.
    loggers = {item["logger"] for item in objects if item["event"] == "log"}
    assert loggers and {name.split(".")[0] for name in loggers} <= set(HERD_LOGGERS), loggers
