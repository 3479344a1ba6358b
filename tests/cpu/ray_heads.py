"""The authentication of the Ray heads that tests start on their own (`ray start --head`).

Ray 2.60's `ray start --head` turns token authentication on only where a token already exists
(`~/.ray/auth_token`, which any local `ray.init()` writes), and a driver given an address never turns
it on by itself. So the same head has no authentication on a fresh machine and has it once any test
has called `ray.init()`: a test that assumes either passes or fails by the order tests run in. The
tests' heads say it outright: token authentication, with a token of their own in their temporary
directory, given to the head (and so to every process it starts) and to every client.
"""

from __future__ import annotations

import secrets
from pathlib import Path


def token_auth_environment(temp_dir: str) -> dict[str, str]:
    """The variables under which a head, its nodes and its clients use the cluster's own token."""
    token = Path(temp_dir) / "auth_token"
    if not token.exists():
        token.write_text(secrets.token_hex(32))  # as `ray get-auth-token --generate` makes one
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
