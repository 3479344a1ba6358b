"""Run in its own process by test_cluster_placement: a two-node cluster (logical GPUs) loses a node,
as a spot instance does, mid-job or while its replica's engine is still loading; capacity comes
back later. Fake engine (two CPU cores cannot host a real engine per node). Prints one JSON line
with what happened.

Usage: python -m tests.cpu.node_loss_probe CONFIG_JSON   (config "when": mid_job | while_starting)
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from common.layout import OutputLayout
from common.storage import Storage
from jobs.capacity import choose_device, cluster_shape, replica_count
from jobs.committed import commit_shard
from jobs.dispatch import Dispatcher
from jobs.planner import plan_shards
from jobs.replicas import ReplicaPool
from schemas import parse_job
from tests.cpu.fake_engine import FakeEngineFactory
from tests.cpu.ray_heads import FAST_NODE_DEATH


def main(config: dict) -> dict:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "_system_config": FAST_NODE_DEATH})
    nodes = [cluster.add_node(num_cpus=4, num_gpus=1) for _ in range(2)]
    ray.init(address=cluster.address)
    job = parse_job(
        {
            "input": {"path": config["input"], "prompt_column": "prompt", "bytes_per_shard": 1024},
            "model": {"path": config["model"], "max_model_len": 512},
            "sampling": {"max_new_tokens": 4},
            "output": {"path": config["output"]},
            "retry": {"max_replica_restarts": 0, "backoff_base_s": 0.1},
        }
    )
    storage = Storage(job.storage, job.retry)
    layout = OutputLayout(job.output.path)
    shards = plan_shards(job.input, storage.expand_inputs(job.input.path), storage)
    while_starting = config["when"] == "while_starting"
    pool = ReplicaPool(
        job.model,
        job,
        replica_count(job, cluster_shape(), choose_device("auto", cluster_shape()), len(shards)),
        # Engines that load for a while, as 70B weights do (minutes), when the node goes then.
        FakeEngineFactory(
            seconds_per_call=1.0, start_seconds=8.0 if while_starting else 0.0, loading_dir=config["loading_dir"]
        ),
    )
    commits = []
    lost_at_commit: list[int] = []
    lost_at: list[float] = []

    def lose_node_0() -> None:
        cluster.remove_node(nodes[0], allow_graceful=False)  # its raylet and workers end at once
        lost_at_commit.append(len(commits))
        lost_at.append(time.monotonic())

    def lose_node_0_once_every_replica_is_loading() -> None:
        # Once each replica's engine has begun to load: a node lost before its actor exists only moves
        # the placement group elsewhere (Ray reschedules it), which is not the case under test.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if len(list(Path(config["loading_dir"]).iterdir())) >= pool.size:
                lose_node_0()
                return
            time.sleep(0.1)

    def commit(records) -> list[None]:
        for record in records:
            commit_shard(storage, layout, record)
            commits.append(record.replica)
            # Here, on the main thread: Ray's Cluster starts nodes with signal handlers.
            if not while_starting and len(commits) == 4:
                lose_node_0()
                cluster.add_node(num_cpus=4, num_gpus=1)
            if while_starting and len(commits) == 1:
                cluster.add_node(num_cpus=4, num_gpus=1)
        return [None] * len(records)

    if while_starting:
        threading.Thread(target=lose_node_0_once_every_replica_is_loading, daemon=True).start()
    started = time.monotonic()
    outcome = Dispatcher(job, pool, commit).run(shards)
    ended = time.monotonic()
    pool.shutdown()
    return {
        "replicas": pool.size,
        "shards": len(shards),
        "committed": len(outcome.committed),
        "failed": outcome.failed,
        "replicas_replaced": outcome.replicas_replaced,
        "replica_crashes": outcome.replica_crashes,
        "replicas_used": len(set(commits)),
        "lost_at_commit": lost_at_commit,
        "seconds_after_loss": [round(ended - at, 1) for at in lost_at],
        "seconds": round(ended - started, 1),
    }


if __name__ == "__main__":
    print("PROBE " + json.dumps(main(json.loads(Path(sys.argv[1]).read_text()))))
