"""The Ray heads that tests start on their own (`ray start --head`), and their authentication.

Ray 2.60's `ray start --head` turns token authentication on only where a token already exists
(`~/.ray/auth_token`, which any local `ray.init()` writes), and a driver given an address never turns
it on by itself. So the same head has no authentication on a fresh machine and has it once any test
has called `ray.init()`: a test that assumes either passes or fails by the order tests run in. The
tests' heads say it outright: token authentication, with a token of their own in their temporary
directory, given to the head (and so to every process it starts) and to every client.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

from tests.cpu.conftest import free_port

# Tests about a lost node have the cluster declare it dead after ~3 s of failed health checks instead
# of Ray's default ~15 s (5 checks 3 s apart): the loss is under test, not how long Ray takes to see it.
FAST_NODE_DEATH = {"health_check_period_ms": 1000, "health_check_timeout_ms": 1000, "health_check_failure_threshold": 3}


def token_auth_environment(temp_dir: str) -> dict[str, str]:
    """The variables under which a head, its nodes and its clients use the cluster's own token."""
    token = Path(temp_dir) / "auth_token"
    if not token.exists():
        token.write_text(secrets.token_hex(32))  # as `ray get-auth-token --generate` makes one
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}


def start_ray_head(temp_dir: str, num_cpus: int, dashboard_port: int | None = None) -> str:
    """`ray start --head` on 127.0.0.1 with its files under `temp_dir` (end it with
    process_tree.end_processes_mentioning(temp_dir)); returns the address drivers join (RAY_ADDRESS).
    With `dashboard_port`, the dashboard (and the Jobs API) listens there."""
    port = free_port()
    dashboard = ["--include-dashboard=false"]
    if dashboard_port is not None:
        dashboard = [
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard_port}",
            f"--dashboard-agent-listen-port={free_port()}",
        ]
    subprocess.run(
        [
            str(Path(sys.executable).with_name("ray")),
            "start",
            "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            f"--num-cpus={num_cpus}",
            f"--temp-dir={temp_dir}",
            "--disable-usage-stats",
            *dashboard,
        ],
        check=True,
        capture_output=True,
        timeout=180,
        env={**os.environ, **token_auth_environment(temp_dir)},
    )
    return f"127.0.0.1:{port}"
