"""Figures computed from the manifest's columns, for the summary and the report."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def covered_seconds(starts: Sequence[float] | np.ndarray, ends: Sequence[float] | np.ndarray) -> float:
    """The time covered by at least one of the spans starts[i]..ends[i] (a replica's shards overlap:
    never add them)."""
    starts, ends = np.asarray(starts, dtype=float), np.asarray(ends, dtype=float)
    if not len(starts):
        return 0.0
    order = np.argsort(starts, kind="stable")
    starts, ends = starts[order], ends[order]
    # What the spans before each one already cover reaches up to the latest end among them.
    reached = np.concatenate(([-np.inf], np.maximum.accumulate(ends)[:-1]))
    return float(np.sum(np.where(ends > reached, ends - np.maximum(starts, reached), 0.0)))


def per_replica(table: pa.Table, columns: Sequence[str]) -> dict[str, pa.Table]:
    """`columns` of a manifest table's rows by the replica that ran them, in the replicas' name order.
    One grouping pass over replica numbers, not a pass over every column per replica: a million
    shards on 64 replicas take well under a second."""
    encoded = pc.dictionary_encode(table.column("replica")).combine_chunks()
    numbers = encoded.indices.to_numpy(zero_copy_only=False)
    order = np.argsort(numbers, kind="stable")  # each replica's rows together, in table order
    bounds = np.searchsorted(numbers[order], np.arange(len(encoded.dictionary) + 1))
    narrow = table.select(list(columns))
    groups = {
        name: narrow.take(pa.array(order[bounds[number] : bounds[number + 1]]))
        for number, name in enumerate(encoded.dictionary.to_pylist())
    }
    return {name: groups[name] for name in sorted(groups)}


def tokens_per_s_by_replica(table: pa.Table) -> dict[str, float]:
    """Generated tokens over the time the replica was generating."""
    rates = {}
    for replica, own in per_replica(table, ["generate_started_at", "generate_seconds", "completion_tokens"]).items():
        started = own.column("generate_started_at").to_numpy()
        seconds = covered_seconds(started, started + own.column("generate_seconds").to_numpy())
        tokens = pc.sum(own.column("completion_tokens")).as_py() or 0
        rates[replica] = round(tokens / seconds, 1) if seconds > 0 else 0.0
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
