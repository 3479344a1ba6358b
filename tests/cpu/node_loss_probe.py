"""Run in its own process by test_cluster_placement: a two-node cluster (logical GPUs) loses a node
mid-job, as a spot instance does; capacity comes back a moment later. Fake engine (two CPU cores
cannot host a real engine per node). Prints one JSON line with what happened."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from common.layout import OutputLayout
from common.storage import Storage
from jobs.capacity import choose_device, cluster_shape, replica_count
from jobs.dispatch import Dispatcher
from jobs.manifest import commit_shard
from jobs.planner import plan_shards
from jobs.replicas import ReplicaPool
from schemas import parse_job
from tests.cpu.fake_engine import FakeEngineFactory


def main(config: dict) -> dict:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
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
    pool = ReplicaPool(
        job.model,
        job,
        replica_count(job, cluster_shape(), choose_device("auto", cluster_shape())),
        FakeEngineFactory(seconds_per_call=1.0),
    )
    commits = []

    def lose_a_node_then_get_capacity_back() -> None:
        cluster.remove_node(nodes[0], allow_graceful=False)  # its raylet and workers end at once
        cluster.add_node(num_cpus=4, num_gpus=1)

    def commit(record) -> None:
        commit_shard(storage, layout, record)
        commits.append(record.replica)
        if len(commits) == 4:  # here, on the main thread: Ray's Cluster starts nodes with signal handlers
            lose_a_node_then_get_capacity_back()

    outcome = Dispatcher(job, pool, commit).run(shards)
    pool.shutdown()
    return {
        "replicas": pool.size,
        "shards": len(shards),
        "committed": len(outcome.committed),
        "failed": outcome.failed,
        "replicas_replaced": outcome.replicas_replaced,
        "replica_crashes": outcome.replica_crashes,
        "replicas_used": len({record.replica for record in outcome.committed.values()}),
    }


if __name__ == "__main__":
    print("PROBE " + json.dumps(main(json.loads(Path(sys.argv[1]).read_text()))))
