"""report.html after a real run: every plot holds the run's data, and a real browser shows it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from schemas.errors import ExitCode
from tests.cpu.conftest import manifest_records

REPO = Path(__file__).resolve().parents[2]
PLOTS = ["throughput", "replicas", "lengths", "finish-reasons", "attempts"]


def test_every_run_writes_a_self_contained_report_that_a_browser_shows_with_every_plot(run_tiny, tmp_path):
    rows = [{"id": f"r{index}", "prompt": f"tell me about number {index}"} for index in range(48)]
    rows[5]["prompt"] = None  # two error rows, for the error section
    rows[9]["prompt"] = ""
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    outcome = run_tiny(
        input={
            "path": str(tmp_path / "in.jsonl"),
            "prompt_column": "prompt",
            "id_column": "id",
            "bytes_per_shard": 1024,
        },
        sampling={"max_new_tokens": 12},
        output={"path": str(tmp_path / "out")},
        max_error_fraction=0.5,
    )
    assert outcome.exit_code == ExitCode.SUCCESS
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["errors_by_stage"] == {"render": 2}
    assert sum(item["rows"] for item in summary["top_error_reasons"]) == 2
    assert set(summary["tokens_per_s_by_replica"]) == {record.replica for record in outcome_records(tmp_path)}
    assert summary["time_to_first_shard_s"] > 0

    page = (tmp_path / "out" / "report.html").read_text()
    # Self-contained: images inline, nothing fetched, no script.
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", page) and "<script" not in page
    for plot in PLOTS:
        assert re.search(rf'<img id="{plot}" alt="[^"]+" src="data:image/png;base64,', page), plot
    # Each plot's data is the run's: the finish reasons add up to the output rows, the attempts to the shards.
    assert f"<td>length</td><td>{summary['rows_out']}</td>" in page
    assert f"<td>1</td><td>{summary['shards']}</td>" in page
    assert "r5" in page and "prompt: expected text, got nothing (null)" in page

    # The same page, built again from the output alone.
    (tmp_path / "out" / "report.html").unlink()
    rebuilt = subprocess.run(
        [sys.executable, "submit.py", "report", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True
    )
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert (tmp_path / "out" / "report.html").exists()

    # A real browser opens it without console errors, and the screenshot shows the plots.
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Chromium comes with `bash scripts/install.sh test`"
    screenshot = tmp_path / "report.png"
    browser = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--enable-logging=stderr",
            "--v=0",
            f"--screenshot={screenshot}",
            "--window-size=1200,2600",
            (tmp_path / "out" / "report.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert screenshot.exists(), browser.stderr[-2000:]
    assert "CONSOLE" not in browser.stderr and "Uncaught" not in browser.stderr, browser.stderr[-2000:]
    from PIL import Image

    image = Image.open(screenshot).convert("RGB")
    # Five plots drawn: far more non-white, non-grey pixels (coloured lines and bars) than text alone gives.
    coloured = sum(1 for r, g, b in image.getdata() if max(r, g, b) - min(r, g, b) > 60)
    assert coloured > 5000, coloured


def outcome_records(tmp_path: Path):
    return manifest_records(tmp_path / "out")


def test_the_throughput_and_replica_plots_come_from_the_manifest_columns_and_add_up():
    from jobs.committed import CommittedShards, records_table
    from jobs.report import _replica_load, _throughput
    from schemas.shard import ShardRecord

    def shard(index: int, replica: str, start: float, seconds: float, tokens: int) -> ShardRecord:
        return ShardRecord(
            shard_id=f"in_jsonl-{index}-{index + 1}-{index:010x}", rows_in=1, rows_out=1, error_rows=0,
            reused_rows=0, prompt_tokens=5, completion_tokens=tokens, generate_started_at=start,
            generate_seconds=seconds, shard_seconds=seconds, started_at=start, finished_at=start + seconds,
            outputs=[], replica=replica, attempts=1,
        )  # fmt: skip

    # Two replicas; a's shards overlap (5 to 10), b idles from 20 to 60.
    records = CommittedShards(
        records_table([shard(0, "a", 0.0, 10.0, 1000), shard(1, "a", 5.0, 55.0, 2200), shard(2, "b", 0.0, 20.0, 400)])
    )
    _, throughput = _throughput(records)
    cells = [float(cell) for cell in re.findall(r"<td>([0-9.]+)</td>", throughput)]
    times, rates = cells[0::2], cells[1::2]
    width = times[1] - times[0]
    # Every generated token lands in some bin (rates are rounded to 0.1 tokens/s).
    assert abs(sum(rate * width for rate in rates) - 3600) < 0.05 * width * len(rates)
    _, load = _replica_load(records)
    assert "<td>a</td><td>2</td><td>60.0</td><td>0.0</td>" in load
    assert "<td>b</td><td>1</td><td>20.0</td><td>40.0</td>" in load
    from jobs.run_stats import tokens_per_s_by_replica

    # a generated 3,200 tokens over 0..60 (its overlapping shards counted once), b 400 over 0..20.
    assert tokens_per_s_by_replica(records.table) == {"a": round(3200 / 60, 1), "b": 20.0}


def test_the_time_spans_cover_is_their_union_in_any_order():
    from jobs.run_stats import covered_seconds

    assert covered_seconds([5.0, 0.0, 1.0, 20.0], [6.0, 2.0, 3.0, 21.0]) == 5.0  # 0-3, 5-6, 20-21
    assert covered_seconds([0.0, 2.0], [10.0, 4.0]) == 10.0  # one inside another
    assert covered_seconds([], []) == 0.0
