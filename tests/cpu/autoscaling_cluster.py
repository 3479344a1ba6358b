"""A Ray cluster whose real autoscaler adds and removes nodes on this machine, through Ray's fake
multi-node provider (the one Ray tests its autoscaler with). The head is started with `ray start`
on ports of its own and a temporary directory of its own, and ended by pid: never `ray stop`, and
never ray.cluster_utils.AutoscalingCluster.start(), which runs `ray stop --force` (every Ray on the
machine)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.cpu.conftest import free_port
from tests.cpu.process_tree import end_processes_mentioning
from tests.cpu.ray_heads import FAST_NODE_DEATH, token_auth_environment


@dataclass(frozen=True)
class AutoscalingCluster:
    address: str  # the GCS address a driver joins (RAY_ADDRESS)
    temp_dir: str  # every process of the cluster's names it in its command line
    config_path: Path
    auth_environment: dict[str, str]  # what a driver needs to be let in (see ray_heads.py)


def autoscaling_config(gcs_port: int, head_resources: dict, worker_types: dict, max_workers: int) -> dict:
    """A cluster launcher config for the fake provider: the launcher's keys all present, as its
    validator wants them."""
    return {
        "cluster_name": "herd-fake",
        "max_workers": max_workers,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 5,
        "provider": {
            "type": "fake_multinode",
            "gcs_address": f"127.0.0.1:{gcs_port}",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
        },
        "auth": {"ssh_user": "ubuntu"},
        "head_node_type": "ray.head.default",  # the only head type name the fake provider knows
        "available_node_types": {
            "ray.head.default": {"resources": head_resources, "node_config": {}, "max_workers": 0},
            **{
                name: {"resources": resources, "node_config": {}, "min_workers": 0, "max_workers": count}
                for name, (resources, count) in worker_types.items()
            },
        },
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


@contextmanager
def autoscaling_cluster(
    head_resources: dict, worker_types: dict[str, tuple[dict, int]], max_workers: int
) -> Iterator[AutoscalingCluster]:
    """`worker_types`: name -> (resources, max_workers); every type starts at zero nodes."""
    temp_dir = tempfile.mkdtemp(prefix="ha", dir="/tmp")  # short: Ray's socket paths have a length limit
    port = free_port()
    config_path = Path(temp_dir) / "autoscaling.json"
    config_path.write_text(json.dumps(autoscaling_config(port, head_resources, worker_types, max_workers)))
    resources = dict(head_resources)
    command = [
        str(Path(sys.executable).with_name("ray")),
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        f"--num-cpus={resources.pop('CPU', 0)}",
        f"--num-gpus={resources.pop('GPU', 0)}",
        f"--ray-client-server-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        "--include-dashboard=false",
        f"--autoscaling-config={config_path}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
        f"--system-config={json.dumps(FAST_NODE_DEATH)}",
    ]
    auth = token_auth_environment(temp_dir)
    # The nodes the autoscaler adds are started by its monitor, and so inherit this environment.
    environment = {**os.environ, **auth, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    try:
        subprocess.run(command, check=True, capture_output=True, timeout=180, env=environment)
        yield AutoscalingCluster(f"127.0.0.1:{port}", temp_dir, config_path, auth)
    finally:
        end_processes_mentioning(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
