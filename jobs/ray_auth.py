"""How herd authenticates to a Ray cluster: with the token Ray itself would use, wherever there is one.

A Ray 2.60 head uses token authentication when it was started with `RAY_AUTH_MODE=token` or where a
token already existed (`~/.ray/auth_token`, which a local `ray.init()` writes). A client that sends a
token is accepted by a head with or without authentication, so herd sends one whenever it has one.
"""

from __future__ import annotations

import os
from pathlib import Path


def ray_auth_token() -> str | None:
    """`$RAY_AUTH_TOKEN`, else the file at `$RAY_AUTH_TOKEN_PATH` or `~/.ray/auth_token`: Ray's order."""
    token = os.environ.get("RAY_AUTH_TOKEN")
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    if not token and path.is_file():
        token = path.read_text().strip()
    return token or None


def auth_headers() -> dict[str, str]:
    """For the Ray Jobs API (the dashboard's HTTP address)."""
    token = ray_auth_token()
    return {"Authorization": f"Bearer {token}"} if token else {}


def use_token_for_drivers() -> None:
    """For a driver about to join a cluster by its address. Ray turns token mode on by itself only for
    a cluster it finds on this machine, never for an address, and a cluster with authentication then
    refuses the driver with a bare "Failed to connect to Ray cluster". `RAY_AUTH_MODE`, when set,
    decides."""
    if "RAY_AUTH_MODE" in os.environ or ray_auth_token() is None:
        return
    from ray._raylet import Config

    os.environ["RAY_AUTH_MODE"] = "token"
    # Ray reads its settings when it is imported; read them again, as Ray does where it turns this on.
    Config.initialize("")
