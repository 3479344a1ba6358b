"""A `herd serve` process for tests: its own Ray (under a temporary directory of its own), a log file,
and an end that takes every process it started with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.cpu.process_tree import end_processes_mentioning

REPO = Path(__file__).resolve().parents[2]


class ServiceProcess:
    def __init__(
        self,
        service_file: Path,
        keys_file: Path | None,
        port: int,
        log_file: Path,
        cluster: dict[str, str] | None = None,
        log_format: str = "text",
    ) -> None:
        """`cluster`: RAY_ADDRESS and its authentication, for a service whose replicas run on a
        cluster; without it the service starts a Ray of its own, as on a laptop. `log_format`: herd's
        --log-format."""
        self.service_file, self.keys_file = service_file, keys_file
        self.port = port
        self.log_file = log_file
        self.ray_dir = tempfile.mkdtemp(prefix="hs", dir="/tmp")  # short: Ray's socket paths have a length limit
        os.makedirs(os.path.join(self.ray_dir, "ray"))
        command = [sys.executable, "submit.py", "serve", str(service_file), "--port", str(port)]
        command += ["--log-format", log_format]
        if keys_file is not None:
            command += ["--keys", str(keys_file)]
        environment = {**os.environ, "RAY_TMPDIR": self.ray_dir, "PYTHONUNBUFFERED": "1"}
        environment.pop("RAY_ADDRESS", None)
        environment.update(cluster or {})
        self._log = open(log_file, "w")  # noqa: SIM115 - open for the process's whole life
        self.process = subprocess.Popen(
            command, cwd=REPO, env=environment, start_new_session=True, stdout=self._log, stderr=subprocess.STDOUT
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log()
            try:
                httpx.get(f"{self.base_url}/models", timeout=2)
                return
            except httpx.HTTPError:
                time.sleep(0.3)
        raise AssertionError(f"the service did not answer within {timeout_s}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL, as a crash: the process, its Ray and its engines end at once (also the end of a
        test: what a graceful stop would save is the next server's to resume, as a crash's is)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        end_processes_mentioning(self.ray_dir)
        self._log.close()
