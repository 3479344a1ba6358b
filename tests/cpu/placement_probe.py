"""Runs a fake-engine job on a multi-node Ray cluster of logical GPUs and prints where replicas landed.

A script, not a test: a Ray cluster_utils.Cluster needs a process of its own (the test session
already holds a local Ray). Usage: python -m tests.cpu.placement_probe CONFIG_JSON
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import ray
from ray.cluster_utils import Cluster
from ray.util.placement_group import placement_group_table

from common.layout import OutputLayout
from common.storage import Storage
from jobs.capacity import choose_device, cluster_shape, replica_count
from jobs.committed import commit_shard
from jobs.dispatch import Dispatcher
from jobs.planner import plan_shards
from jobs.replicas import ReplicaPool
from schemas import parse_job
from tests.cpu.fake_engine import FakeEngineFactory


def main(config: dict) -> dict:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    nodes = [cluster.add_node(num_cpus=4, num_gpus=config["gpus_per_node"]) for _ in range(config["nodes"])]
    ray.init(address=cluster.address)
    job = parse_job(
        {
            "input": {"path": config["input"], "prompt_column": "prompt", "bytes_per_shard": 1024},
            "model": {"path": config["model"], "tensor_parallel_size": config["tp"], "max_model_len": 512},
            "sampling": {"max_new_tokens": 4},
            "output": {"path": config["output"]},
        }
    )
    storage = Storage(job.storage, job.retry)
    shards = plan_shards(job.input, storage.expand_inputs(job.input.path), storage)
    count = replica_count(job, cluster_shape(), choose_device("auto", cluster_shape()), len(shards))
    # Slow enough that a replica ready a moment after the other still finds shards left.
    pool = ReplicaPool(job.model, job, count, FakeEngineFactory(seconds_per_call=0.5))
    layout = OutputLayout(job.output.path)
    replicas_used = set()

    def commit(records) -> list[None]:
        for record in records:
            commit_shard(storage, layout, record)
            replicas_used.add(record.replica)
        return [None] * len(records)

    outcome = Dispatcher(job, pool, commit).run(shards)
    groups = [placement_group_table(replica.placement_group) for replica in pool.replicas]
    node_ids = {node.node_id: index for index, node in enumerate(nodes)}
    result = {
        "device": pool.device,
        "replicas": count,
        "committed": len(outcome.committed),
        "shards": len(shards),
        "strategies": [group["strategy"] for group in groups],
        "bundle_gpus": [[bundle.get("GPU", 0) for bundle in group["bundles"].values()] for group in groups],
        "bundle_nodes": [sorted({node_ids[node] for node in group["bundles_to_node_id"].values()}) for group in groups],
        "replicas_used": len(replicas_used),
    }
    pool.shutdown()
    return result


if __name__ == "__main__":
    print("PROBE " + json.dumps(main(json.loads(Path(sys.argv[1]).read_text()))))
