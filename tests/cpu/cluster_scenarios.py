"""Scenarios on Ray clusters of their own, run in the background of the test session
(tests/cpu/background.py).

Each one (a TP 2 placement over two nodes, a node lost mid-job or while its replica loads, an
autoscaler adding nodes from zero) takes 30-90 s that are mostly waiting: for nodes to start, for the
cluster to declare a node dead, for the autoscaler. Run in line they added ~3 minutes to the test run
on two cores while using little CPU. They use the fake engine (named so in their tests): two CPU cores
cannot host a real engine per node.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.cpu.autoscaling_cluster import autoscaling_cluster
from tests.cpu.background import background_scenario
from tests.cpu.process_tree import end_processes_mentioning

REPO = Path(__file__).resolve().parents[2]


def _write_rows(count: int, path: Path) -> list[str]:
    ids = [f"row-{index:05d}" for index in range(count)]
    path.write_text("".join(json.dumps({"id": row_id, "prompt": f"prompt {row_id}"}) + "\n" for row_id in ids))
    return ids


def cluster_probe(
    work_dir: Path,
    tiny_model: Path,
    *,
    probe: str = "placement_probe",
    tp: int = 1,
    gpus_per_node: int = 1,
    nodes: int = 1,
    rows: int = 300,
    when: str = "mid_job",
) -> dict:
    """Runs `tests.cpu.<probe>` (which starts a cluster_utils cluster) in a process of its own, with
    Ray's files in a directory of its own, and returns the JSON it prints."""
    _write_rows(rows, work_dir / "in.jsonl")
    config = {
        "tp": tp,
        "gpus_per_node": gpus_per_node,
        "nodes": nodes,
        "model": str(tiny_model),
        "input": str(work_dir / "in.jsonl"),
        "output": str(work_dir / "out"),
        "when": when,
        "loading_dir": str(work_dir / "loading"),
    }
    (work_dir / "loading").mkdir()
    (work_dir / "config.json").write_text(json.dumps(config))
    ray_dir = tempfile.mkdtemp(prefix="hp", dir="/tmp")  # short: Ray's socket paths have a length limit
    os.makedirs(os.path.join(ray_dir, "ray"))
    try:
        result = subprocess.run(
            [sys.executable, "-m", f"tests.cpu.{probe}", str(work_dir / "config.json")],
            cwd=REPO,
            env={**os.environ, "RAY_TMPDIR": ray_dir},
            capture_output=True,
            text=True,
            timeout=420,
        )
    finally:
        end_processes_mentioning(ray_dir)
        shutil.rmtree(ray_dir, ignore_errors=True)
    line = next((line for line in result.stdout.splitlines() if line.startswith("PROBE ")), None)
    assert line, result.stdout[-2000:] + result.stderr[-3000:]
    return json.loads(line.removeprefix("PROBE "))


def autoscaling_from_zero(work_dir: Path, tiny_model: Path, *, rows: int) -> dict:
    """Runs tests.cpu.autoscaling_probe against a cluster whose autoscaler starts with no GPU node;
    returns its reports by job, its log, the input's ids and where the jobs wrote."""
    ids = _write_rows(rows, work_dir / "in.jsonl")
    worker_types = {"gpu-2x": ({"CPU": 2, "GPU": 2}, 4)}
    with autoscaling_cluster({"CPU": 0}, worker_types, max_workers=4) as cluster:
        config = {
            "address": cluster.address,
            "temp_dir": cluster.temp_dir,
            "model": str(tiny_model),
            "input": str(work_dir / "in.jsonl"),
            "output": str(work_dir / "out"),
        }
        (work_dir / "config.json").write_text(json.dumps(config))
        # The driver joins as from a user's shell: RAY_ADDRESS and a token, without RAY_AUTH_MODE
        # (herd turns token mode on; Ray would refuse the driver).
        result = subprocess.run(
            [sys.executable, "-m", "tests.cpu.autoscaling_probe", str(work_dir / "config.json")],
            cwd=REPO,
            env={
                **{name: value for name, value in os.environ.items() if name != "RAY_AUTH_MODE"},
                "RAY_AUTH_TOKEN_PATH": cluster.auth_environment["RAY_AUTH_TOKEN_PATH"],
            },
            capture_output=True,
            text=True,
            timeout=600,
        )
    lines = [
        json.loads(line.removeprefix("PROBE ")) for line in result.stdout.splitlines() if line.startswith("PROBE ")
    ]
    return {
        "reports": {line["job"]: line for line in lines},
        "log": result.stderr,
        "stdout": result.stdout,
        "ids": ids,
        "output": work_dir / "out",
    }


# Rows enough that each job still runs when the cluster has declared the lost node dead (~3 s,
# tests/cpu/ray_heads.FAST_NODE_DEATH) and a replacement has started, on a machine the other tests load.
_NODE_LOSS_ROWS = 1200


@background_scenario("tp2_on_3_gpu_nodes")
def tp2_on_3_gpu_nodes(work_dir: Path, tiny_model: Path) -> dict:
    return cluster_probe(work_dir, tiny_model, tp=2, gpus_per_node=3, nodes=2)


@background_scenario("node_lost_mid_job")
def node_lost_mid_job(work_dir: Path, tiny_model: Path) -> dict:
    return cluster_probe(work_dir, tiny_model, probe="node_loss_probe", rows=_NODE_LOSS_ROWS)


@background_scenario("node_lost_while_loading")
def node_lost_while_loading(work_dir: Path, tiny_model: Path) -> dict:
    return cluster_probe(work_dir, tiny_model, probe="node_loss_probe", rows=_NODE_LOSS_ROWS, when="while_starting")


@background_scenario("autoscaling_from_zero")
def scaled_from_zero(work_dir: Path, tiny_model: Path) -> dict:
    return autoscaling_from_zero(work_dir, tiny_model, rows=_NODE_LOSS_ROWS)
