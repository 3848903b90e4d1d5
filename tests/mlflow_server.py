"""A real ``mlflow server`` for tests: started on a port, stopped, and started again on the same
backend store and port (a tracking outage and its end)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

START_LIMIT = 240.0
"""Seconds a server may take to answer /health: generous, for a machine busy with other work."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class MlflowServer:
    """``mlflow server`` in lean mode (one worker, no job execution) on ``port``, its database
    and artifacts under ``root``; each start appends to ``root/server.log``."""

    def __init__(self, root: Path, port: int | None = None, allowed_hosts: str = "") -> None:
        self.root = root
        self.port = port or free_port()
        self.allowed_hosts = allowed_hosts or "localhost:*,127.0.0.1:*"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.root / 'mlflow.db'}",
            "--default-artifact-root",
            str(self.root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--allowed-hosts",
            self.allowed_hosts,
        ]

    def start(self) -> None:
        """Start it and return once it answers (raises if it exits or stays silent)."""
        self.root.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its workers share its process group: stopped together
            )
        deadline = time.monotonic() + START_LIMIT
        while not self.answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mlflow server did not start:\n{self.log.read_text()}")
            time.sleep(0.3)

    def answers(self) -> bool:
        try:
            # /health answers whatever host name was used.
            health = f"http://127.0.0.1:{self.port}/health"
            with urllib.request.urlopen(health, timeout=10) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the server and everything in its process group; the port refuses connections
        once this returns."""
        process, self.process = self.process, None
        if process is None:
            return
        self._signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._signal_group(process.pid, signal.SIGKILL)
            process.wait()
        # Workers in the group may outlive the leader by a moment; the port is free once the
        # whole group is gone.
        if not self._group_gone(process.pid, within=60):
            self._signal_group(process.pid, signal.SIGKILL)
            self._group_gone(process.pid, within=60)

    @classmethod
    def _group_gone(cls, group: int, within: float) -> bool:
        deadline = time.monotonic() + within
        while cls._signal_group(group, 0):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    @staticmethod
    def _signal_group(group: int, signal_number: int) -> bool:
        """Send ``signal_number`` (0: none, only look) to the group; False when it is gone."""
        try:
            os.killpg(group, signal_number)
        except (ProcessLookupError, PermissionError):
            return False
        return True
