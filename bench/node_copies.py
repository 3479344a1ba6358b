"""Files read through a node's copy, by simulation: how many times each is fetched, and the makespan,
when the dispatcher hands shards out strictly in order against herd's (each node keeps to the copy it
has made, and begins one no node has begun before it shares another's: jobs/pending_shards.py).

A gzip JSONL file (or a CSV, a JSON array, an Arrow file, one large Parquet row group) is copied whole
by every node that runs one of its shards: the copy is fetched and decompressed before its first shard
there can start. Simulated, since this machine holds two cores, not 8 nodes of 8 GPUs: 8 nodes of 8
replicas, 200 files of 50 shards (10,000 shards), each shard 8-12 s of generation, each copy 20 s to
fetch and decompress on a node (a 1 GB file at ~50 MB/s). Both orders run the same shards through herd's
own PendingShards (the strict order by asking as one node for all). Printed: copies a file (the input
fetched that many times over), makespan, and the ratios.
"""

from __future__ import annotations

import argparse
import heapq
import random

from bench.common import record
from jobs.pending_shards import PendingShards
from schemas.shard import Shard


def _shards(files: int, shards_a_file: int) -> list[Shard]:
    return [
        Shard(file_url=f"s3://in/part-{file:05d}.jsonl.gz", file_label=f"part-{file:05d}.jsonl.gz", file_size=10**9,
              file_version="v", format="jsonl", start=index * 10**6, end=(index + 1) * 10**6, estimated_rows=1000,
              compression="gzip")
        for file in range(files) for index in range(shards_a_file)
    ]  # fmt: skip


def simulate(shards: list[Shard], nodes: int, replicas_a_node: int, copy_s: float, affinity: bool) -> dict:
    rng = random.Random(11)
    durations = {(shard.file_url, shard.start): rng.uniform(8, 12) for shard in shards}
    pending = PendingShards(shards)
    free = [(0.0, node, replica) for node in range(nodes) for replica in range(replicas_a_node)]
    heapq.heapify(free)
    copy_ready: dict[tuple[int, str], float] = {}  # (node, file) -> when its copy is there
    busy = 0.0
    end = 0.0
    while pending:
        now, node, replica = heapq.heappop(free)
        asking = f"node-{node}" if affinity else "every-node"  # one asker: the strict order
        [shard] = pending.take_group(asking, rows_per_shard=1000, bytes_per_shard=10**12)
        ready = copy_ready.setdefault((node, shard.file_url), now + copy_s)
        duration = durations[shard.file_url, shard.start]
        done = max(now, ready) + duration
        busy += duration
        end = max(end, done)
        heapq.heappush(free, (done, node, replica))
    return {"copies": len(copy_ready), "makespan_s": end, "busy_share": busy / (end * nodes * replicas_a_node)}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench node_copies")
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--replicas-a-node", type=int, default=8)
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--shards-a-file", type=int, default=50)
    parser.add_argument("--copy-s", type=float, default=20.0)
    arguments = parser.parse_args(argv)
    shards = _shards(arguments.files, arguments.shards_a_file)
    runs = {
        side: simulate(shards, arguments.nodes, arguments.replicas_a_node, arguments.copy_s, affinity)
        for side, affinity in (("in_order", False), ("herd", True))
    }
    for side, found in runs.items():
        print(side, found, flush=True)
    files = arguments.files
    record(
        "node_copies",
        {**vars(arguments), "runs": runs},
        f"node_copies, {arguments.nodes} nodes x {arguments.replicas_a_node} replicas, {files} files x "
        f"{arguments.shards_a_file} shards: copies a file in order {runs['in_order']['copies'] / files:.2f}, herd "
        f"{runs['herd']['copies'] / files:.2f} ({runs['in_order']['copies'] / runs['herd']['copies']:.1f}x fewer "
        f"fetches); makespan herd / in order {runs['herd']['makespan_s'] / runs['in_order']['makespan_s']:.3f}; "
        f"busy {runs['in_order']['busy_share']:.1%} in order, {runs['herd']['busy_share']:.1%} herd",
    )
    return 0
