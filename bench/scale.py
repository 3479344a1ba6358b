"""Dispatch at scale, by simulation: a fixed-rate fake engine on 64 simulated replicas, 2,000 shards
of skewed sizes, dispatched as herd's dispatcher does (largest first, each shard to the first free
replica). Reports makespan / ideal (target <= 1.05) and the replicas' idle time."""

from __future__ import annotations

import argparse
import heapq
import random

from bench.common import record
from jobs.dispatch import dispatch_order
from schemas.shard import Shard

ROWS_PER_SECOND = 1000.0  # the fake engine's fixed rate
PER_SHARD_SECONDS = 0.5  # read + write + dispatch round trip


def simulate(shards: list[Shard], replicas: int) -> tuple[float, list[float]]:
    free_at = [(0.0, index) for index in range(replicas)]
    busy = [0.0] * replicas
    for shard in dispatch_order(shards):
        start, replica = heapq.heappop(free_at)
        duration = shard.estimated_rows / ROWS_PER_SECOND + PER_SHARD_SECONDS
        busy[replica] += duration
        heapq.heappush(free_at, (start + duration, replica))
    return max(time for time, _ in free_at), busy


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench scale")
    parser.add_argument("--replicas", type=int, default=64)
    parser.add_argument("--shards", type=int, default=2000)
    arguments = parser.parse_args(argv)
    rng = random.Random(7)
    # Skewed: most shards small, a few very large (a log-normal spread of row counts).
    shards = [
        Shard(
            file_url=f"s3://b/f{index}.parquet",
            file_label=f"f{index}",
            file_size=1,
            file_version="1",
            format="parquet",
            start=0,
            end=1,
            estimated_rows=max(1, int(rng.lognormvariate(7, 1.2))),
        )
        for index in range(arguments.shards)
    ]
    makespan, busy = simulate(shards, arguments.replicas)
    ideal = sum(busy) / arguments.replicas
    idle = [makespan - seconds for seconds in busy]
    ratio = makespan / ideal
    record(
        "scale",
        {
            "simulated": True,
            "replicas": arguments.replicas,
            "shards": arguments.shards,
            "makespan_s": makespan,
            "ideal_s": ideal,
            "ratio": ratio,
            "idle_s": {"total": sum(idle), "max": max(idle), "mean": sum(idle) / len(idle)},
            "largest_shard_s": max(shard.estimated_rows for shard in shards) / ROWS_PER_SECOND,
            "target": 1.05,
        },
        f"scale (simulated, {arguments.replicas} replicas, {arguments.shards} shards): makespan/ideal {ratio:.3f}, "
        f"idle {sum(idle) / (makespan * arguments.replicas):.1%} of replica time",
    )
    return 0
