"""What a person (or a scheduler's log) sees while a job runs: rows done of the total, shards, tokens/s
recent and overall, error rows, replicas up, and an estimate of the time left.

On a terminal: one live display (rich). Elsewhere: one plain line every `every_s` seconds, or one
JSON object with `--log-format json`. Totals come from the plan: exact for Parquet, estimated for JSONL
(and refined as its shards finish, from the rows they really held).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

from schemas.shard import AnyShard, ShardRecord, planned_count

Mode = Literal["live", "lines", "json"]
_RECENT_S = 30.0


@dataclass
class _Figures:
    rows_total_planned: int
    rows_exact: bool
    shards_total: int
    started: float = field(default_factory=time.monotonic)
    rows_done: int = 0
    planned_of_done: int = 0  # what the plan estimated for the shards done so far
    shards_done: int = 0
    shards_failed: int = 0
    error_rows: int = 0
    tokens: int = 0
    replicas_up: int = 0
    replicas_starting: int = 0  # placed, loading their engine
    replicas_placing: int = 0  # waiting for a node (an autoscaler adding one, capacity coming back)
    recent: deque[tuple[float, int]] = field(default_factory=deque)  # (when, tokens) of recent commits


class Progress:
    def __init__(self, mode: Mode, every_s: float = 30.0, stream: Any = None) -> None:
        self.mode = mode
        self.every_s = every_s
        self.stream = stream or sys.stderr
        self._figures: _Figures | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._live: Any = None
        self._task: Any = None

    def start(self, shards: list[AnyShard]) -> None:
        """`shards`: those to run; a pack counts as its members (the shards planned)."""
        self._figures = _Figures(
            rows_total_planned=sum(shard.estimated_rows for shard in shards),
            rows_exact=all(shard.format == "parquet" for shard in shards),
            shards_total=planned_count(shards),
        )
        if self.mode == "live":
            from rich.console import Console
            from rich.progress import BarColumn, TextColumn
            from rich.progress import Progress as RichProgress

            self._live = RichProgress(
                BarColumn(bar_width=10),
                TextColumn("{task.fields[line]}"),
                console=Console(file=self.stream),
                refresh_per_second=2,
                transient=False,
            )
            # herd's own log lines print above the display instead of through it.
            root = logging.getLogger()
            self._replaced_handlers = root.handlers[:]
            handler = _ConsoleHandler(self._live.console)
            if root.handlers:
                handler.setFormatter(root.handlers[0].formatter)
            root.handlers = [handler]
            self._task = self._live.add_task("rows", total=self._figures.rows_total_planned, line="starting")
            self._live.start()
        self._thread = threading.Thread(target=self._tick, name="herd-progress", daemon=True)
        self._thread.start()

    def replicas(self, up: int) -> None:
        with self._lock:
            if self._figures:
                self._figures.replicas_up = up
        self._refresh()

    def replicas_waiting(self, starting: int, placing: int) -> None:
        """Replicas not up yet: loading their engine, and waiting for a node."""
        with self._lock:
            if self._figures:
                self._figures.replicas_starting = starting
                self._figures.replicas_placing = placing
        self._refresh()

    def committed(self, record: ShardRecord, shard: AnyShard) -> None:
        with self._lock:
            figures = self._figures
            if figures is None:
                return
            figures.rows_done += record.rows_in
            figures.planned_of_done += shard.estimated_rows
            figures.shards_done += planned_count([shard])
            figures.error_rows += record.error_rows
            figures.tokens += record.completion_tokens
            figures.recent.append((time.monotonic(), record.completion_tokens))
        self._refresh()

    def failed(self) -> None:
        with self._lock:
            if self._figures:
                self._figures.shards_failed += 1
        self._refresh()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._refresh()
        if self._live is not None:
            self._live.stop()
            logging.getLogger().handlers = self._replaced_handlers
        elif self.mode in ("lines", "json") and self._figures is not None:
            self._emit()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            figures = self._figures
            assert figures is not None
            now = time.monotonic()
            while figures.recent and figures.recent[0][0] < now - _RECENT_S:
                figures.recent.popleft()
            elapsed = max(now - figures.started, 1e-9)
            window = min(elapsed, _RECENT_S)
            recent = sum(tokens for _, tokens in figures.recent) / window
            total = figures.rows_total_planned
            if not figures.rows_exact and figures.planned_of_done:
                # JSONL totals are estimates: scale what is left by how the finished shards compared.
                ratio = figures.rows_done / figures.planned_of_done
                total = figures.rows_done + round((figures.rows_total_planned - figures.planned_of_done) * ratio)
            rate = figures.rows_done / elapsed
            eta = (total - figures.rows_done) / rate if rate > 0 and figures.rows_done else None
            return {
                "rows_done": figures.rows_done,
                "rows_total": total,
                "rows_total_exact": figures.rows_exact,
                "shards_done": figures.shards_done,
                "shards_total": figures.shards_total,
                "shards_failed": figures.shards_failed,
                "tokens_per_s_recent": round(recent, 1),
                "tokens_per_s_overall": round(figures.tokens / elapsed, 1),
                "error_rows": figures.error_rows,
                "replicas_up": figures.replicas_up,
                "replicas_starting": figures.replicas_starting,
                "replicas_placing": figures.replicas_placing,
                "elapsed_s": round(elapsed, 1),
                "eta_s": round(eta, 1) if eta is not None else None,
            }

    def _tick(self) -> None:
        interval = 1.0 if self.mode == "live" else self.every_s
        while not self._stop.wait(interval):
            if self.mode == "live":
                self._refresh()
            else:
                self._emit()

    def _refresh(self) -> None:
        if self._live is None or self._figures is None:
            return
        figures = self.snapshot()
        self._live.update(
            self._task, completed=figures["rows_done"], total=figures["rows_total"], line=describe_figures(figures)
        )

    def _emit(self) -> None:
        figures = self.snapshot()
        if self.mode == "json":
            line = json.dumps({"event": "progress", **figures})
        else:
            line = f"herd: progress: {describe_figures(figures)}"
        write_line(self.stream, line)


def write_line(stream: Any, line: str) -> None:
    """`line` and its newline in one write: `print` writes them apart, and a log record written from
    another thread between the two joins two JSON objects on one line (seen in CI)."""
    stream.write(line + "\n")
    stream.flush()


def describe_figures(figures: dict[str, Any]) -> str:
    total = f"{figures['rows_total']}" if figures["rows_total_exact"] else f"~{figures['rows_total']}"
    eta = "?" if figures["eta_s"] is None else _clock(figures["eta_s"])
    failed = f" ({figures['shards_failed']} failed)" if figures["shards_failed"] else ""
    # A 70B engine loads for minutes and an autoscaler adds a GPU node in as many: say which is waited on.
    waiting = [
        f"{figures[key]} {what}"
        for key, what in (("replicas_starting", "loading"), ("replicas_placing", "waiting for a node"))
        if figures.get(key)
    ]
    replicas = f"{figures['replicas_up']} replicas" + (f" ({', '.join(waiting)})" if waiting else "")
    return (
        f"{figures['rows_done']}/{total} rows · {figures['shards_done']}/{figures['shards_total']} shards{failed}"
        f" · {figures['tokens_per_s_recent']:.0f} tok/s (avg {figures['tokens_per_s_overall']:.0f})"
        f" · {figures['error_rows']} errors · {replicas} · ETA {eta}"
    )


class _ConsoleHandler(logging.Handler):
    def __init__(self, console: Any) -> None:
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        self.console.print(self.format(record), markup=False, highlight=False, soft_wrap=True)


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
