"""How many shards a second the driver can commit on S3, one at a time against several at once.

A commit is one write of the shard's record (then, every 100, a checkpoint). On S3 that write is a PUT
whose time is the region's round trip, and the driver's loop waits for it: one at a time, a driver
commits at most a few dozen shards a second however many replicas answer (issue 19 item 3: 200 a
second at 64 replicas). herd's dispatcher commits the shards that finished together at once
(`ManifestWriter.commit_all`). Measured here on moto behind a proxy that adds 20 ms to every request,
through herd's ManifestWriter: the same records committed one by one (`commit`, herd before), and in
batches of 8 and 64 (shards finishing together: with 64 replicas of short shards most answers find
others finished beside them). The sides alternate over rounds; printed: commits a second for each and
the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from bench.common import moto_s3, record
from bench.manifest import _records

_LATENCY_S = 0.02
_ONE_BY_ONE = "one by one (herd before)"
# moto and the proxy run on this machine's 2 cores (S3 on its own): with no latency added, what they allow.
_CEILING = "batches of 64, no latency (this setup's ceiling)"


def _commits_per_second(endpoint: str, root: str, records: list[Any], batch: int) -> float:
    from common.layout import OutputLayout
    from common.storage import Storage
    from jobs.committed import ManifestWriter
    from schemas.job import RetrySpec, StorageSpec

    writer = ManifestWriter(Storage(StorageSpec(endpoint_url=endpoint), RetrySpec()), OutputLayout(root))
    started = time.perf_counter()
    for start in range(0, len(records), batch):
        if batch == 1:
            writer.commit(records[start])
        else:
            errors = writer.commit_all(records[start : start + batch])
            assert not any(errors), errors
    seconds = time.perf_counter() - started
    writer.finish()
    return len(records) / seconds


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench commits")
    parser.add_argument("--shards", type=int, default=320, help="committed by each side in each round")
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args(argv)
    import s3fs

    from tests.cpu.flaky_s3_proxy import FlakyS3Proxy

    sides = {_ONE_BY_ONE: 1, "batches of 8": 8, "batches of 64": 64, _CEILING: 64}
    samples: dict[str, list[float]] = {name: [] for name in sides}
    with moto_s3() as endpoint, FlakyS3Proxy(endpoint, 0.0, latency_s=_LATENCY_S) as slow:
        s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}).mkdir("commits")
        for round_index in range(arguments.rounds):
            for name, batch in sides.items():
                root = f"s3://commits/round-{round_index}-{name.replace(' ', '-')}"
                records = _records(round_index * 100_000, arguments.shards)
                target = endpoint if name == _CEILING else slow.endpoint
                samples[name].append(_commits_per_second(target, root, records, batch))
                print(f"{name}: {samples[name][-1]:.0f} commits/s", flush=True)
    medians = {name: statistics.median(values) for name, values in samples.items()}
    ratios = {name: medians[name] / medians[_ONE_BY_ONE] for name in sides}
    record(
        "commits",
        {"latency_s": _LATENCY_S, "shards": arguments.shards, "rounds": arguments.rounds,
         "commits_per_s": samples, "median_commits_per_s": medians, "over_one_by_one": ratios},
        f"commits on S3 at {_LATENCY_S * 1000:.0f} ms a request, median of {arguments.rounds} rounds of "
        f"{arguments.shards} shards: " + ", ".join(f"{name} {value:.0f}/s ({ratios[name]:.1f}x)"
                                                   for name, value in medians.items()),
    )  # fmt: skip
    return 0
