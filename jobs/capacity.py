"""What the cluster can hold: the nodes up now and the node types its autoscaler can add.

The device and the number of replicas are decided from both, so a cluster that scales from zero GPU
workers (herd's own ray_cluster.yaml) runs GPU replicas: each replica's placement group is the
request that makes the autoscaler add a node. The arithmetic here is pure; `cluster_shape` is the
one function that asks Ray.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from schemas.errors import SpecError
from schemas.job import JobSpec


@dataclass(frozen=True)
class NodeType:
    """A kind of node the autoscaler can start, up to `max_count` of them."""

    name: str
    resources: dict[str, float]
    max_count: int


@dataclass(frozen=True)
class ClusterShape:
    nodes_up: list[dict[str, float]]  # the resources of each node alive now
    # What the autoscaler can add; None where herd cannot read its configuration (no autoscaler, or
    # a driver that is not on the head node).
    node_types: list[NodeType] | None = None
    max_workers: int | None = None  # the autoscaler's limit on worker nodes in all
    head_type: str | None = None
    source: str = field(default="", compare=False)  # where the node types were read, for the log


def _resource(device: str) -> str:
    return "GPU" if device == "gpu" else "CPU"


def _slots(resources: dict[str, float], device: str, tensor_parallel_size: int) -> int:
    """Replicas of this size one node holds (a replica never spans nodes)."""
    return int(resources.get(_resource(device), 0) // tensor_parallel_size)


def choose_device(accelerator: str, shape: ClusterShape) -> str:
    if accelerator != "auto":
        return accelerator
    if any(node.get("GPU", 0) >= 1 for node in shape.nodes_up):
        return "gpu"
    types = shape.node_types or []
    return "gpu" if any(node.resources.get("GPU", 0) >= 1 and node.max_count > 0 for node in types) else "cpu"


def addable_slots(shape: ClusterShape, device: str, tensor_parallel_size: int) -> int:
    """Replicas the cluster holds once the autoscaler has added every node it may: the biggest node
    types first, as many as the autoscaler's own worker limit allows."""
    if shape.node_types is None:
        return 0
    slots = 0
    workers_left = shape.max_workers if shape.max_workers is not None else 1 << 30
    kinds = sorted(shape.node_types, key=lambda node: -_slots(node.resources, device, tensor_parallel_size))
    for node in kinds:
        if node.name == shape.head_type:
            slots += _slots(node.resources, device, tensor_parallel_size)  # always up, not a worker
            continue
        count = min(node.max_count, workers_left)
        workers_left -= count
        slots += count * _slots(node.resources, device, tensor_parallel_size)
    return slots


def useful_replicas(count: int, shards: int) -> int:
    """No more replicas than shards to run: an idle replica still holds its GPUs, and on an
    autoscaling cluster its placement group makes the autoscaler start a node for nothing."""
    return max(1, min(count, shards))


def replica_count(job: JobSpec, shape: ClusterShape, device: str, shards: int) -> int:
    """How many replicas to start for `shards` shards to run: the job's number or `auto`, within what
    the cluster can hold."""
    tp = job.model.tensor_parallel_size
    up_now = sum(_slots(node, device, tp) for node in shape.nodes_up)
    possible = max(up_now, addable_slots(shape, device, tp))
    wanted = job.resources.replicas
    if possible < 1 and shape.node_types is None and job.resources.accelerator == "gpu":
        # Asked for GPUs where herd cannot read the autoscaler: ask for them and wait (bounded by
        # resources.capacity_timeout_s) rather than refuse a cluster that may well provide them.
        return useful_replicas(1 if wanted == "auto" else wanted, shards)
    if possible < 1:
        raise SpecError(_no_room_message(job, shape, device))
    if wanted == "auto":
        # On CPU a second engine would compete with the first for the cores that the driver and Ray
        # leave (docs/clusters.md: one engine thread beat two on 2 cores).
        count = possible if device == "gpu" else 1
        return useful_replicas(min(count, job.resources.max_replicas or count), shards)
    return useful_replicas(min(wanted, possible), shards)


def replicas_up_now(job: JobSpec, shape: ClusterShape, device: str) -> int:
    """The replicas worth starting before the plan says how many shards there are: as many as the job
    would run, within what the nodes up now hold, so that no node is added for a job that may turn out
    to hold few shards (or none left to run)."""
    up_now = sum(_slots(node, device, job.model.tensor_parallel_size) for node in shape.nodes_up)
    return min(replica_count(job, shape, device, sys.maxsize), up_now)


def _no_room_message(job: JobSpec, shape: ClusterShape, device: str) -> str:
    tp = job.model.tensor_parallel_size
    resource = _resource(device)
    largest = max((node.get(resource, 0) for node in shape.nodes_up), default=0)
    message = f"model.tensor_parallel_size {tp} needs {tp} {resource}s on one node; the largest node has {largest:g}"
    if shape.node_types is not None:
        largest_type = max((node.resources.get(resource, 0) for node in shape.node_types), default=0)
        message += f", and the largest node type the autoscaler can add has {largest_type:g} ({shape.source})"
        unsized = [node.name for node in shape.node_types if not node.resources and node.name != shape.head_type]
        if unsized:
            # The cluster launcher may fill these in from the instance type, but not in the file herd reads.
            message += (
                f"; node types {', '.join(unsized)} list no resources: give each its `resources:` in the "
                "cluster config, or set resources.accelerator: gpu"
            )
    elif device == "cpu" and job.resources.accelerator == "auto":
        message += (
            "; if this cluster adds GPU nodes on demand, set resources.accelerator: gpu (herd reads the "
            "autoscaler's node types only on the head node)"
        )
    return message


def describe_cluster(shape: ClusterShape, device: str) -> str:
    """What is up and what may come, for the log."""
    resource = _resource(device)
    up = sum(node.get(resource, 0) for node in shape.nodes_up)
    text = f"{len(shape.nodes_up)} node(s) up with {up:g} {resource}s"
    if shape.node_types is not None:
        kinds = ", ".join(
            f"{node.name} ({node.resources.get(resource, 0):g} {resource}s, up to {node.max_count})"
            for node in shape.node_types
            if node.name != shape.head_type
        )
        text += f"; the autoscaler can add: {kinds or 'nothing'}"
    return text


def node_types_from_config(config: dict, source: str) -> tuple[list[NodeType], int | None, str | None]:
    """The node types of a Ray cluster launcher / autoscaler configuration (`available_node_types`)."""
    head = config.get("head_node_type")
    types = []
    for name, spec in (config.get("available_node_types") or {}).items():
        resources = {key: float(value) for key, value in (spec.get("resources") or {}).items()}
        count = 1 if name == head else int(spec.get("max_workers", config.get("max_workers", 0)))
        types.append(NodeType(name, resources, count))
    limit = config.get("max_workers")
    return types, int(limit) if limit is not None else None, head


def autoscaling_config_path(gcs_port: int, proc: Path = Path("/proc")) -> Path | None:
    """The configuration file of this cluster's autoscaler, when it runs on this machine (the head
    node, where `submit` runs the driver). `ray up` starts it with
    `--autoscaling-config=~/ray_bootstrap_config.yaml`; its `--gcs-address` tells which cluster is ours
    where several run on one machine."""
    if not proc.is_dir():
        return None  # not Linux: no process table to read
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            arguments = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue  # ended meanwhile, or not ours to read
        if not any("autoscaler" in argument and argument.endswith("/monitor.py") for argument in arguments):
            continue
        options = dict(
            argument.split("=", 1) for argument in arguments if argument.startswith("--") and "=" in argument
        )
        address, config = options.get("--gcs-address", ""), options.get("--autoscaling-config")
        if config and address.rsplit(":", 1)[-1] == str(gcs_port):
            return Path(os.path.expanduser(config))
    return None


def cluster_shape() -> ClusterShape:
    """The cluster this driver is connected to: its nodes, and its autoscaler's node types if any."""
    import ray
    import yaml

    nodes = [dict(node["Resources"]) for node in ray.nodes() if node.get("Alive")]
    port = int(ray.get_runtime_context().gcs_address.rsplit(":", 1)[-1])
    path = autoscaling_config_path(port)
    if path is None:
        return ClusterShape(nodes)
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return ClusterShape(nodes)  # unreadable: decide from what is up, as without an autoscaler
    types, limit, head = node_types_from_config(config, str(path))
    return ClusterShape(nodes, types, limit, head, source=str(path))
