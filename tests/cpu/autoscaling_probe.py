"""Run in its own process by test_autoscaling (the test session holds a local Ray already): jobs on a
cluster whose autoscaler starts with no GPU node. Fake engine: two CPU cores cannot host a real engine
per node, and what is under test is how replicas get their nodes. Prints one JSON line per job.

Usage: python -m tests.cpu.autoscaling_probe CONFIG_JSON
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

import ray
from ray.util import placement_group_table

from jobs.runner import RunOutcome, ensure_ray, run_job
from schemas import parse_job
from schemas.job import JobSpec
from tests.cpu.fake_engine import FakeEngineFactory
from tests.cpu.process_tree import descendants


def gpu_nodes() -> int:
    return sum(1 for node in ray.nodes() if node.get("Alive") and node["Resources"].get("GPU", 0) > 0)


def _raylet_of_a_replica_node(temp_dir: str) -> int | None:
    """The raylet of a worker node that holds a replica now (the node of a placed placement group). An
    idle node the autoscaler started beyond the job's needs would lose no replica."""
    replica_nodes = {
        node
        for group in placement_group_table().values()
        if group.get("state") == "CREATED"
        for node in group.get("bundles_to_node_id", {}).values()
    }
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            arguments = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        node = next(
            (argument.removeprefix("--node_id=") for argument in arguments if argument.startswith("--node_id=")), ""
        )
        if arguments[0].endswith("raylet/raylet") and f"--temp_dir={temp_dir}" in arguments and node in replica_nodes:
            return int(entry.name)
    return None


def lose_a_node_after(manifest: Path, commits: int, temp_dir: str, lost: list[int]) -> threading.Thread:
    """Once `commits` shards are committed, a worker node that holds a replica vanishes as a reclaimed
    spot instance does: its raylet and everything it started are SIGKILLed at once."""

    def watch() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if manifest.is_dir() and len(list(manifest.glob("*.json"))) >= commits:
                raylet = _raylet_of_a_replica_node(temp_dir)
                if raylet is not None:
                    for pid in [raylet, *descendants(raylet)]:
                        os.kill(pid, signal.SIGKILL)
                    lost.append(raylet)
                    return
            time.sleep(0.2)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def _job(config: dict, name: str, resources: dict, retry: dict) -> JobSpec:
    return parse_job(
        {
            "name": name,
            "input": {"path": config["input"], "prompt_column": "prompt", "id_column": "id", "bytes_per_shard": 1024},
            "model": {"path": config["model"], "tensor_parallel_size": 2, "max_model_len": 512},
            "sampling": {"max_new_tokens": 4},
            "output": {"path": str(Path(config["output"]) / name)},
            "resources": resources,
            "retry": {"backoff_base_s": 0.1, **retry},
        }
    )


def _report(name: str, outcome: RunOutcome, **extra: object) -> None:
    summary = outcome.summary
    line = {
        "job": name,
        "exit_code": int(outcome.exit_code),
        "replicas": summary.replicas,
        "replicas_replaced": summary.replicas_replaced,
        "shards": summary.shards,
        "shards_run": summary.shards_run,
        "gpu_nodes_after": gpu_nodes(),
        **extra,
    }
    print("PROBE " + json.dumps(line), flush=True)


def main(config: dict) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    os.environ["RAY_ADDRESS"] = config["address"]
    ensure_ray(quiet=True)
    print("PROBE " + json.dumps({"job": "start", "gpu_nodes": gpu_nodes()}), flush=True)

    # The shipped cluster's shape: no GPU is up, the device and the replicas come from the node types.
    explicit = _job(config, "explicit", {"replicas": 2}, {})
    started = time.monotonic()
    outcome = run_job(explicit, engine_factory=FakeEngineFactory(seconds_per_call=0.3))
    _report("explicit", outcome, seconds=round(time.monotonic() - started, 1))

    # As many as the node types allow, up to max_replicas; a node lost mid-job with no crash allowed.
    auto = _job(config, "auto", {"replicas": "auto", "max_replicas": 3}, {"max_replica_restarts": 0})
    lost: list[int] = []
    lose_a_node_after(Path(auto.output.path) / "manifest", 4, config["temp_dir"], lost)
    started = time.monotonic()
    outcome = run_job(auto, engine_factory=FakeEngineFactory(seconds_per_call=1.0))
    _report("auto", outcome, nodes_lost=len(lost), seconds=round(time.monotonic() - started, 1))


if __name__ == "__main__":
    main(json.loads(Path(sys.argv[1]).read_text()))
