"""report.html: one self-contained page about a run (plots inline as PNG, no script, no fetches).

Built from what the output holds (summary.json, the manifest, the error files, a sample of the data
files' token counts), so `submit.py report OUTPUT` can build it again for any output, local or s3://.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections import Counter
from typing import Any

from common.layout import OutputLayout
from common.output_codec import decode_data, decode_errors
from common.storage import Storage
from jobs.committed import CommittedShards, committed_shards
from jobs.run_stats import covered_seconds, per_replica
from schemas.results import reason_key

# Rows of the data files read for the length distributions: enough for a histogram, bounded.
_SAMPLED_ROWS = 100_000
# Files read for the length and error plots, spread over the run: their cost is the report's, paid
# once per run, and must not grow with a run of a million shards.
_SAMPLED_FILES = 64
_EXAMPLE_ERRORS = 3


def _png(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(header))}</th>" for header in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _section(plot_id: str, title: str, image: str | None, data: str) -> str:
    picture = f'<img id="{plot_id}" alt="{html.escape(title)}" src="{image}">' if image else "<p>(no data)</p>"
    return f"<section><h2>{html.escape(title)}</h2>{picture}<details><summary>data</summary>{data}</details></section>"


def _column(records: CommittedShards, name: str) -> Any:
    return records.table.column(name).to_numpy()


def _throughput(records: CommittedShards) -> tuple[str | None, str]:
    import matplotlib.pyplot as plt
    import numpy as np

    if not len(records):
        return None, _table(["time (s)", "tokens/s"], [])
    start, end = float(_column(records, "started_at").min()), float(_column(records, "finished_at").max())
    bins = min(60, max(12, int((end - start) // 5)))  # 5 s bins, at least 12 points, at most 60
    width = max((end - start) / bins, 1e-9)
    # Each shard's tokens spread over its generation span; a bin gets the part that overlaps it.
    # Columns, a bin at a time: a million shards cost 60 passes over arrays, not a million objects.
    first = _column(records, "generate_started_at")
    last = first + np.maximum(_column(records, "generate_seconds"), 1e-9)
    per_second = _column(records, "completion_tokens") / (last - first)
    tokens = [
        float((per_second * np.clip(np.minimum(low + width, last) - np.maximum(low, first), 0.0, None)).sum())
        for low in start + width * np.arange(bins)
    ]
    rates = [value / width for value in tokens]
    times = [round(index * width, 1) for index in range(bins)]
    figure, axes = plt.subplots(figsize=(8, 2.8))
    axes.plot(times, rates, marker="o", markersize=3)
    axes.set_xlabel("seconds since the first shard started")
    axes.set_ylabel("generated tokens/s")
    axes.grid(alpha=0.3)
    return _png(figure), _table(["time (s)", "tokens/s"], [[t, round(r, 1)] for t, r in zip(times, rates, strict=True)])


def _replica_load(records: CommittedShards) -> tuple[str | None, str]:
    import matplotlib.pyplot as plt

    if not len(records):
        return None, _table(["replica", "shards", "busy s", "idle s"], [])
    start, end = float(_column(records, "started_at").min()), float(_column(records, "finished_at").max())
    rows = []
    for replica, own in per_replica(records.table, ["started_at", "finished_at"]).items():
        busy = covered_seconds(own.column("started_at").to_numpy(), own.column("finished_at").to_numpy())
        rows.append([replica, own.num_rows, round(busy, 1), round(max(0.0, end - start - busy), 1)])
    figure, axes = plt.subplots(figsize=(8, 0.6 + 0.5 * len(rows)))
    names = [row[0] for row in rows]
    axes.barh(names, [row[2] for row in rows], label="busy")
    axes.barh(names, [row[3] for row in rows], left=[row[2] for row in rows], label="idle", color="#ddd")
    axes.set_xlabel("seconds")
    axes.legend(loc="lower right")
    return _png(figure), _table(["replica", "shards", "busy s", "idle s"], rows)


def _spread(records: CommittedShards, folder: str) -> list[str]:
    """At most _SAMPLED_FILES of the records' files in `folder` (URLs), evenly spread over them."""
    return records.output_urls(folder, at_most=_SAMPLED_FILES)


def _sampled_rows(storage: Storage, records: CommittedShards) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for url in _spread(records, "data"):
        if len(rows) >= _SAMPLED_ROWS:
            break
        rows += decode_data(storage.read_bytes(url), url, ["prompt_tokens", "completion_tokens", "finish_reason"])
    return rows[:_SAMPLED_ROWS]


def _lengths(rows: list[dict[str, Any]]) -> tuple[str | None, str]:
    import matplotlib.pyplot as plt

    prompts = [row["prompt_tokens"] for row in rows]
    completions = [row["completion_tokens"] for row in rows]
    if not rows:
        return None, _table(["", "rows", "mean", "max"], [])
    figure, (left, right) = plt.subplots(1, 2, figsize=(8, 2.8))
    left.hist(prompts, bins=30)
    left.set_title("prompt tokens")
    right.hist(completions, bins=30, color="tab:orange")
    right.set_title("completion tokens")
    data = _table(
        ["", "rows", "mean", "max"],
        [
            ["prompt tokens", len(prompts), round(sum(prompts) / len(prompts), 1), max(prompts)],
            ["completion tokens", len(completions), round(sum(completions) / len(completions), 1), max(completions)],
        ],
    )
    return _png(figure), data


def _finish_reasons(rows: list[dict[str, Any]]) -> tuple[str | None, str]:
    import matplotlib.pyplot as plt

    counts = Counter(str(row["finish_reason"]) for row in rows)
    if not counts:
        return None, _table(["finish reason", "rows"], [])
    figure, axes = plt.subplots(figsize=(8, 0.6 + 0.5 * len(counts)))
    axes.barh(list(counts), list(counts.values()), color="tab:green")
    axes.set_xlabel("rows")
    return _png(figure), _table(["finish reason", "rows"], [[reason, rows] for reason, rows in counts.most_common()])


def _attempts(records: CommittedShards) -> tuple[str | None, str]:
    import matplotlib.pyplot as plt

    counts = Counter(_column(records, "attempts").tolist())
    if not counts:
        return None, _table(["attempts", "shards"], [])
    figure, axes = plt.subplots(figsize=(8, 2.4))
    axes.bar([str(attempts) for attempts in sorted(counts)], [counts[attempts] for attempts in sorted(counts)])
    axes.set_xlabel("attempts a shard took")
    axes.set_ylabel("shards")
    return _png(figure), _table(["attempts", "shards"], [[attempts, counts[attempts]] for attempts in sorted(counts)])


def _error_examples(storage: Storage, records: CommittedShards, summary: dict[str, Any]) -> str:
    """The top reasons (from the summary) with a few example rows each (from the error files)."""
    top = summary.get("top_error_reasons", [])
    if not top:
        return "<p>No error rows.</p>"
    examples: dict[str, list[list[Any]]] = {f"{item['stage']}: {item['reason']}": [] for item in top}
    for url in _spread(records, "errors"):
        if all(len(found) >= _EXAMPLE_ERRORS for found in examples.values()):
            break
        for error in decode_errors(storage.read_bytes(url), url, ""):
            key = reason_key(error)
            if key in examples and len(examples[key]) < _EXAMPLE_ERRORS:
                row = "" if error["row"] is None else error["row"]
                examples[key].append([error["id"], error["file"], row, error["reason"]])
    parts = []
    for item in top:
        key = f"{item['stage']}: {item['reason']}"
        parts.append(f"<h3>{html.escape(key)} ({item['rows']} rows)</h3>")
        parts.append(_table(["id", "file", "row", "reason"], examples.get(key, [])))
    return "".join(parts)


_STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; max-width: 60em; }
table { border-collapse: collapse; margin: 0.5em 0; }
td, th { border: 1px solid #ccc; padding: 2px 8px; text-align: left; font-size: 0.9em; }
section { margin-bottom: 1.5em; } img { max-width: 100%; } pre { background: #f6f6f6; padding: 1em; }
"""


def build_report(
    storage: Storage,
    layout: OutputLayout,
    records: CommittedShards | None = None,
    summary: dict[str, Any] | None = None,
) -> str:
    """`records` and `summary` as a run that just wrote them has them; read from the output if not.
    Built from the manifest's columns and a bounded sample of files: quick at a million shards."""
    import matplotlib

    matplotlib.use("Agg")  # no display: render to PNG bytes
    summary = summary if summary is not None else json.loads(storage.read_text(layout.summary))
    stored = json.loads(storage.read_text(layout.job_record))
    records = records if records is not None else committed_shards(storage, layout)
    rows = _sampled_rows(storage, records)
    figures = [
        ("throughput", "Throughput over time", *_throughput(records)),
        ("replicas", "Load and idle time per replica", *_replica_load(records)),
        ("lengths", "Prompt and completion lengths", *_lengths(rows)),
        ("finish-reasons", "Finish reasons", *_finish_reasons(rows)),
        ("attempts", "Shard attempts and retries", *_attempts(records)),
    ]
    overview = _table(
        ["", ""],
        [
            ["status", summary["status"]],
            ["rows in / out / errors", f"{summary['rows_in']} / {summary['rows_out']} / {summary['error_rows']}"],
            ["prompt / generated tokens", f"{summary['prompt_tokens']} / {summary['completion_tokens']}"],
            ["tokens/s (this run)", summary["tokens_per_s"]],
            ["wall (this run)", f"{summary['wall_seconds']} s"],
            ["time to first shard", f"{summary.get('time_to_first_shard_s')} s"],
            ["shards", f"{summary['shards']} ({summary['shards_run']} run, {summary['shards_skipped']} skipped)"],
            ["attempts / replicas replaced", f"{summary['attempts']} / {summary['replicas_replaced']}"],
            ["errors by stage", json.dumps(summary.get("errors_by_stage", {}))],
            ["tokens/s by replica", json.dumps(summary.get("tokens_per_s_by_replica", {}))],
        ],
    )
    body = "".join(_section(plot_id, title, image, data) for plot_id, title, image, data in figures)
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>herd report: {html.escape(str(summary['job']))}</title><style>{_STYLE}</style></head><body>"
        f"<h1>herd report: {html.escape(str(summary['job']))}</h1>"
        f"<p>Output <code>{html.escape(summary['output'])}</code>, model <code>{html.escape(summary['model'])}</code>."
        f"</p>{overview}{body}"
        f"<section><h2>Top error reasons</h2>{_error_examples(storage, records, summary)}</section>"
        f"<section><h2>Settings</h2><pre>{html.escape(json.dumps(stored.get('spec', {}), indent=2))}</pre></section>"
        "</body></html>"
    )


def write_report(
    storage: Storage,
    layout: OutputLayout,
    records: CommittedShards | None = None,
    summary: dict[str, Any] | None = None,
) -> str:
    storage.write_text(layout.report, build_report(storage, layout, records, summary))
    return layout.report
