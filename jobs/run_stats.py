"""Figures computed from manifest records, for the summary and the report."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable

from schemas.shard import ShardRecord


def covered_seconds(spans: Iterable[tuple[float, float]]) -> float:
    """The time covered by at least one of the spans (a replica's shards overlap: never add them)."""
    covered, until = 0.0, float("-inf")
    for start, end in sorted(spans):
        if end > until:
            covered += end - max(start, until)
            until = end
    return covered


def by_replica(records: Iterable[ShardRecord]) -> dict[str, list[ShardRecord]]:
    grouped: dict[str, list[ShardRecord]] = defaultdict(list)
    for record in records:
        grouped[record.replica].append(record)
    return dict(grouped)


def tokens_per_s_by_replica(records: Iterable[ShardRecord]) -> dict[str, float]:
    """Generated tokens over the time the replica was generating."""
    rates = {}
    for replica, own in by_replica(records).items():
        seconds = covered_seconds((r.generate_started_at, r.generate_started_at + r.generate_seconds) for r in own)
        rates[replica] = round(sum(r.completion_tokens for r in own) / seconds, 1) if seconds > 0 else 0.0
    return rates


def errors_by_stage(reasons: Counter[str]) -> dict[str, int]:
    stages: Counter[str] = Counter()
    for key, rows in reasons.items():
        stages[key.split(":", 1)[0]] += rows
    return dict(stages)


def top_error_reasons(reasons: Counter[str], count: int = 10) -> list[dict[str, object]]:
    return [
        {"stage": key.split(":", 1)[0], "reason": key.split(": ", 1)[-1], "rows": rows}
        for key, rows in reasons.most_common(count)
    ]
