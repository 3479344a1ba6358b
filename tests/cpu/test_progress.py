"""What a job shows while it runs, off a terminal: periodic plain lines, or JSON objects only."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

from jobs.progress import Progress, describe_figures
from schemas.shard import Shard, ShardRecord

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


def _line(progress: Progress) -> str:
    return describe_figures(progress.snapshot())


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
    assert "1 errors · 2 replicas · ETA" in lines[-1] and "tok/s" in lines[-1]


def test_replicas_not_up_yet_are_shown_by_what_they_wait_for():
    stream = io.StringIO()
    progress = Progress("lines", every_s=60, stream=stream)
    progress.start([_shard(0, 100)])
    progress.replicas(0)
    progress.replicas_waiting(starting=1, placing=2)
    assert "0 errors · 0 replicas (1 loading, 2 waiting for a node) · ETA ?" in _line(progress)
    progress.replicas(3)
    progress.replicas_waiting(starting=0, placing=0)
    assert "0 errors · 3 replicas · ETA" in _line(progress)
    progress.close()


class _WritesRecorded(io.StringIO):
    """A stream that keeps each write apart, as another thread's log record could fall between two."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def test_each_progress_line_and_each_cli_message_is_written_whole_so_no_log_record_can_split_it():
    import herd.cli

    for mode in ("json", "lines"):
        stream = _WritesRecorded()
        progress = Progress(mode, every_s=0.05, stream=stream)
        progress.start([_shard(0, 10)])
        time.sleep(0.3)
        progress.close()
        assert stream.writes and all(write.endswith("\n") and write.count("\n") == 1 for write in stream.writes)
    said = {"json": '{"event": "error", "message": "bad", "exit_code": 2}\n', "text": "herd: bad\n"}
    for log_format, expected in said.items():
        stream = _WritesRecorded()
        herd.cli._LOG_FORMAT["value"] = log_format
        try:
            herd.cli._say("bad", stream, event="error", exit_code=2)
        finally:
            herd.cli._LOG_FORMAT["value"] = "text"
        assert stream.writes == [expected]


def test_with_log_format_json_a_librarys_python_warning_is_one_json_object_too():
    program = (
        "import warnings; from herd.cli import configure_logging; configure_logging('json'); "
        "warnings.warn('a library changes its default', FutureWarning)"
    )
    result = subprocess.run([sys.executable, "-c", program], cwd=REPO, capture_output=True, text=True, timeout=60)
    [line] = result.stderr.splitlines()
    said = json.loads(line)
    assert (said["level"], said["logger"]) == ("warning", "py.warnings")
    assert "FutureWarning: a library changes its default" in said["message"]


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
