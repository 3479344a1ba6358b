"""How many shards a second the driver can commit on S3, one at a time against several at once.

A commit is one write of the shard's record (then, every 100, a checkpoint). On S3 that write is a PUT
whose time is the region's round trip, and the driver's loop waits for it: one at a time, a driver
commits at most a few dozen shards a second however many replicas answer (issue 19 item 3: 200 a
second at 64 replicas). herd's dispatcher commits the shards that finished together at once
(`ManifestWriter.commit_all`). Measured through herd's ManifestWriter on the `billion` benchmark's
small S3 server, which adds 20 ms to every request and holds what is written in memory (moto spends
~20 ms of CPU on a PUT, on the 2 cores the client has: it, not the client, would be measured): the
same records committed one by one (`commit`, herd before), and in batches of 8 and 64 (shards
finishing together: with 64 replicas of short shards most answers find others finished beside them),
and batches of 64 on the same server without the added latency (what the client's CPU allows). The
sides alternate over rounds; printed: commits a second for each and the ratios, and the CPU a commit
costs this process (the client and the server, which runs in it).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from bench.billion import BUCKET, GeneratedS3
from bench.common import cpu_seconds, record
from bench.manifest import _records

_LATENCY_S = 0.02
_ONE_BY_ONE = "one by one (herd before)"
_CEILING = "batches of 64, no added latency (what the CPU allows)"


def _commits_per_second(endpoint: str, root: str, records: list[Any], batch: int) -> tuple[float, float]:
    """Commits a second, and this process's CPU milliseconds a commit."""
    from common.layout import OutputLayout
    from common.storage import Storage
    from jobs.committed import ManifestWriter
    from schemas.job import RetrySpec, StorageSpec

    writer = ManifestWriter(Storage(StorageSpec(endpoint_url=endpoint), RetrySpec()), OutputLayout(root))
    started, cpu = time.perf_counter(), cpu_seconds()
    for start in range(0, len(records), batch):
        if batch == 1:
            writer.commit(records[start])
        else:
            errors = writer.commit_all(records[start : start + batch])
            assert not any(errors), errors
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    writer.finish()
    return len(records) / seconds, 1000 * cpu / len(records)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench commits")
    parser.add_argument("--shards", type=int, default=320, help="committed by each side in each round")
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args(argv)
    import os

    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"})
    sides = {_ONE_BY_ONE: 1, "batches of 8": 8, "batches of 64": 64, _CEILING: 64}
    samples: dict[str, list[float]] = {name: [] for name in sides}
    cpu_ms: dict[str, list[float]] = {name: [] for name in sides}
    with GeneratedS3(0, b"", _LATENCY_S) as slow, GeneratedS3(0, b"", 0.0) as fast:
        for server in (slow, fast):  # imports, clients and connections made before anything is measured
            _commits_per_second(server.endpoint, f"s3://{BUCKET}/warm-up", _records(900_000, 16), 8)
        for round_index in range(arguments.rounds):
            for name, batch in sides.items():
                root = f"s3://{BUCKET}/round-{round_index}-{name.replace(' ', '-')}"
                records = _records(round_index * 100_000, arguments.shards)
                server = fast if name == _CEILING else slow
                rate, cpu = _commits_per_second(server.endpoint, root, records, batch)
                samples[name].append(rate)
                cpu_ms[name].append(cpu)
                print(f"{name}: {rate:.0f} commits/s, {cpu:.2f} ms of CPU a commit", flush=True)
    medians = {name: statistics.median(values) for name, values in samples.items()}
    ratios = {name: medians[name] / medians[_ONE_BY_ONE] for name in sides}
    record(
        "commits",
        {"latency_s": _LATENCY_S, "shards": arguments.shards, "rounds": arguments.rounds,
         "commits_per_s": samples, "median_commits_per_s": medians, "over_one_by_one": ratios,
         "cpu_ms_a_commit": cpu_ms},
        f"commits on S3 at {_LATENCY_S * 1000:.0f} ms a request, median of {arguments.rounds} rounds of "
        f"{arguments.shards} shards: " + ", ".join(f"{name} {value:.0f}/s ({ratios[name]:.1f}x)"
                                                   for name, value in medians.items())
        + f"; CPU a commit {statistics.median(cpu_ms[_CEILING]):.2f} ms (client and server)",
    )  # fmt: skip
    return 0
