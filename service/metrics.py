"""GET /metrics: the service's figures in Prometheus' text format, for the owners the service file
names in `metrics_readers` (operators). Totals over every owner, never one owner's: which batches
are open by status and model, how many ended by how, the tokens they used, the requests answered and
how long they took, and how long ago the worker last read the root. Counters count from the server's
start, as Prometheus expects of a process's counters."""

from __future__ import annotations

import threading
import time
from collections import Counter

from service.objects import BatchRecord

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class ServiceMetrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: Counter[tuple[str, str]] = Counter()  # (status, model): batches, at the last look
        self._looked_at: float | None = None  # time.monotonic() of the worker's last look
        self._ended: Counter[str] = Counter()  # final status: batches
        self._tokens: Counter[str] = Counter()  # prompt | completion
        self._requests: Counter[tuple[str, int]] = Counter()  # (method, status code)
        self._request_seconds = 0.0

    def looked(self, open_batches: list[BatchRecord]) -> None:
        """What the worker's look for work found (it reads the open batches every second anyway:
        a scrape costs no storage request)."""
        found = Counter((record.batch.status, record.served_model or "") for record in open_batches)
        with self._lock:
            self._open, self._looked_at = found, time.monotonic()

    def last_look_age_s(self) -> float | None:
        """Seconds since the worker's last look for work read the root; None before the first."""
        with self._lock:
            return time.monotonic() - self._looked_at if self._looked_at is not None else None

    def batch_ended(self, record: BatchRecord) -> None:
        with self._lock:
            self._ended[record.batch.status] += 1
            if record.batch.usage is not None:
                self._tokens["prompt"] += record.batch.usage.input_tokens
                self._tokens["completion"] += record.batch.usage.output_tokens

    def answered(self, method: str, status: int, seconds: float) -> None:
        # A client may send any method name: counted by name only for HTTP's own, so series stay few.
        method = method if method in _METHODS else "OTHER"
        with self._lock:
            self._requests[(method, status)] += 1
            self._request_seconds += seconds

    def render(self) -> str:
        age = self.last_look_age_s()
        with self._lock:
            families = [
                (
                    "herd_batches_open",
                    "gauge",
                    "Batches that have not ended, at the worker's last look, by status and served model.",
                    [
                        ({"status": status, "model": model}, count)
                        for (status, model), count in sorted(self._open.items())
                    ],
                ),
                (
                    "herd_worker_last_look_age_seconds",
                    "gauge",
                    "Seconds since the worker last read the root (it looks every second).",
                    [({}, age if age is not None else float("nan"))],
                ),
                (
                    "herd_batches_ended_total",
                    "counter",
                    "Batches this server ended, by final status.",
                    [({"status": status}, count) for status, count in sorted(self._ended.items())],
                ),
                (
                    "herd_tokens_total",
                    "counter",
                    "Tokens of the batches this server ended: prompt and completion.",
                    [({"kind": kind}, self._tokens[kind]) for kind in ("prompt", "completion")],
                ),
                (
                    "herd_http_requests_total",
                    "counter",
                    "Requests answered, by method and status code (/health and /metrics left out).",
                    [({"method": m, "code": str(code)}, count) for (m, code), count in sorted(self._requests.items())],
                ),
                (
                    "herd_http_request_seconds_total",
                    "counter",
                    "Seconds until those requests' answers began.",
                    [({}, self._request_seconds)],
                ),
            ]
        lines = []
        for name, kind, description, samples in families:
            lines += [f"# HELP {name} {description}", f"# TYPE {name} {kind}"]
            for labels, value in samples:
                shown = ",".join(f'{key}="{_label(text)}"' for key, text in labels.items())
                lines.append(f"{name}{{{shown}}} {value}" if shown else f"{name} {value}")
        return "\n".join(lines) + "\n"
