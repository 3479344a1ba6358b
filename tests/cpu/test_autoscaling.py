"""Scaling up from zero GPUs on Ray's real autoscaler, and what herd reads of a cluster's node types.

The cluster test uses a fake engine (named so): two CPU cores cannot host a real engine per node, and
what is under test is how replicas get their nodes from the autoscaler, not what they generate.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from jobs.capacity import (
    ClusterShape,
    addable_slots,
    autoscaling_config_path,
    choose_device,
    node_types_from_config,
    replica_count,
    replicas_up_now,
)
from schemas import SpecError, parse_job
from schemas.job import JobSpec
from tests.cpu.conftest import read_rows

REPO = Path(__file__).resolve().parents[2]
SHARDS = 1000  # shards to run: more than any cluster here holds replicas


def _job(tmp_path: Path, tp: int = 1, **resources: object) -> JobSpec:
    return parse_job(
        {
            "input": {"path": str(tmp_path / "in.jsonl"), "prompt_column": "prompt"},
            "model": {"path": str(tmp_path / "model"), "tensor_parallel_size": tp},
            "output": {"path": str(tmp_path / "out")},
            "resources": resources,
        }
    )


def _shipped_cluster(nodes_up: list[dict] | None = None) -> ClusterShape:
    config = yaml.safe_load((REPO / "ray_cluster.yaml").read_text())
    types, limit, head = node_types_from_config(config, "ray_cluster.yaml")
    return ClusterShape(nodes_up or [{"CPU": 0.0}], types, limit, head, "ray_cluster.yaml")


def test_the_shipped_cluster_with_no_gpu_up_runs_on_gpu_with_replicas_from_its_node_types(tmp_path):
    shape = _shipped_cluster()
    assert choose_device("auto", shape) == "gpu"
    # 70B (TP 8): one per 8x A100 node, two such nodes at most.
    assert replica_count(_job(tmp_path, tp=8), shape, "gpu", SHARDS) == 2
    # 13B (TP 2): the A100 nodes first (4 each), then the A10G nodes (2 each) within max_workers 6.
    assert addable_slots(shape, "gpu", 2) == 2 * 4 + 4 * 2
    assert replica_count(_job(tmp_path, tp=2, max_replicas=5), shape, "gpu", SHARDS) == 5
    assert replica_count(_job(tmp_path, tp=2, replicas=40), shape, "gpu", SHARDS) == 16


def test_no_more_replicas_start_than_there_are_shards_to_run(tmp_path):
    # Each would hold GPUs, and make the autoscaler start a node, for nothing.
    shape = _shipped_cluster()
    assert replica_count(_job(tmp_path, tp=2), shape, "gpu", 3) == 3
    assert replica_count(_job(tmp_path, tp=2, replicas=4), shape, "gpu", 1) == 1
    assert replica_count(_job(tmp_path, accelerator="gpu", replicas=3), ClusterShape([{"CPU": 0.0}]), "gpu", 2) == 2


def test_replicas_started_while_planning_are_only_those_the_nodes_up_now_hold(tmp_path):
    # Before the plan, herd does not know how many shards there are: it never makes the autoscaler add
    # a node for them, and never starts more than the job would run.
    assert replicas_up_now(_job(tmp_path, tp=2), _shipped_cluster(), "gpu") == 0
    one_a100_node = [{"CPU": 96.0, "GPU": 8.0}]
    assert replicas_up_now(_job(tmp_path, tp=2), _shipped_cluster(one_a100_node), "gpu") == 4
    assert replicas_up_now(_job(tmp_path, tp=2, max_replicas=3), _shipped_cluster(one_a100_node), "gpu") == 3
    assert replicas_up_now(_job(tmp_path, tp=8), _shipped_cluster(one_a100_node), "gpu") == 1
    # On CPU one engine already uses the node's cores.
    assert replicas_up_now(_job(tmp_path), ClusterShape([{"CPU": 16.0}]), "cpu") == 1


def test_a_replica_no_node_type_can_hold_fails_at_once_naming_the_largest(tmp_path):
    largest = "the largest node has 0, and the largest node type the autoscaler can add has 8"
    with pytest.raises(SpecError, match=f"needs 16 GPUs on one node; {largest}"):
        replica_count(_job(tmp_path, tp=16), _shipped_cluster(), "gpu", SHARDS)


def test_node_types_that_list_no_resources_are_named_in_the_refusal(tmp_path):
    config = {"head_node_type": "head", "available_node_types": {"head": {"resources": {"CPU": 0}}, "g5": {}}}
    types, limit, head = node_types_from_config(config, "bootstrap.yaml")
    shape = ClusterShape([{"CPU": 0.0}], types, limit, head, "bootstrap.yaml")
    assert choose_device("auto", shape) == "cpu"
    with pytest.raises(SpecError, match="node types g5 list no resources"):
        replica_count(_job(tmp_path), shape, "cpu", SHARDS)


def test_without_readable_node_types_auto_decides_from_what_is_up_and_gpu_asks_anyway(tmp_path):
    cpu_only = ClusterShape([{"CPU": 0.0}])
    assert choose_device("auto", cpu_only) == "cpu"
    with pytest.raises(SpecError, match=r"set resources\.accelerator: gpu"):
        replica_count(_job(tmp_path), cpu_only, "cpu", SHARDS)
    assert replica_count(_job(tmp_path, accelerator="gpu", replicas=3), cpu_only, "gpu", SHARDS) == 3
    assert choose_device("cpu", ClusterShape([{"GPU": 8.0}])) == "cpu"


def test_max_replicas_goes_with_auto_only(tmp_path):
    with pytest.raises(SpecError, match="max_replicas applies to replicas: auto"):
        _job(tmp_path, replicas=2, max_replicas=3)


def test_the_autoscaler_config_is_found_by_the_gcs_port_of_its_monitor(tmp_path):
    proc = tmp_path / "proc"
    for pid, port, config in [("101", 6379, "/other.yaml"), ("102", 6380, "/ours.yaml")]:
        (proc / pid).mkdir(parents=True)
        arguments = ["python", "/ray/autoscaler/_private/monitor.py", f"--gcs-address=10.0.0.1:{port}"]
        (proc / pid / "cmdline").write_bytes("\0".join([*arguments, f"--autoscaling-config={config}"]).encode())
    assert autoscaling_config_path(6380, proc) == Path("/ours.yaml")
    assert autoscaling_config_path(6381, proc) is None
    assert autoscaling_config_path(6380, tmp_path / "no-proc") is None


@pytest.mark.background_scenario("autoscaling_from_zero")
def test_fake_engine_jobs_scale_a_cluster_up_from_zero_gpus_and_survive_a_lost_node(scenario_result):
    """A head with no GPU and no CPU for replicas (the shipped shape) and one GPU worker type at zero
    nodes. A TP=2 job asking for 2 replicas makes the autoscaler add 2 nodes; then `replicas: auto`
    with max_replicas 3 gets a third, loses a node mid-job with max_replica_restarts 0, and finishes.
    The cluster uses token authentication, and the driver joins it as from a user's shell: RAY_ADDRESS
    and a token, without RAY_AUTH_MODE (herd turns token mode on; Ray would refuse the driver)."""
    reports, log = scenario_result["reports"], scenario_result["log"]
    assert set(reports) == {"start", "explicit", "auto"}, scenario_result["stdout"][-2000:] + log[-4000:]

    assert reports["start"]["gpu_nodes"] == 0
    explicit = reports["explicit"]
    assert explicit["exit_code"] == 0 and explicit["replicas"] == 2
    assert explicit["gpu_nodes_after"] >= 2  # one replica (TP 2) per 2-GPU node, all added on demand
    assert "2 replica(s) on gpu" in log and "the autoscaler can add: gpu-2x (2 GPUs, up to 4)" in log

    auto = reports["auto"]
    assert auto["replicas"] == 3, auto  # the node types allow 4; max_replicas says 3
    assert auto["nodes_lost"] == 1 and auto["exit_code"] == 0, (auto, log[-4000:])
    # Replaced although max_replica_restarts is 0: a lost node is not a crash.
    assert auto["replicas_replaced"] >= 1, (auto, log[-4000:])
    assert "its node is gone (preempted or lost)" in log
    for name in ("explicit", "auto"):
        written = [row["id"] for row in read_rows(str(scenario_result["output"] / name / "data"))]
        assert sorted(written) == scenario_result["ids"], name  # every row once
