"""Servers the end-to-end tests start on loopback: PostgreSQL, Redis and an MLflow tracking server.

Every server is a real program (Debian's PostgreSQL and Redis, the venv's ``mlflow``), started in
its own process group with its output in a log file, on a free port, with its state in a
temporary folder. ``stop`` ends the whole group (SIGKILL after a grace period) and is idempotent;
every process started here is also stopped when the interpreter exits, so a failing or
interrupted session leaves nothing behind.

PostgreSQL refuses to run as root: as root its cluster belongs to the ``postgres`` system user
(created by Debian's package) and the server runs as that user through ``runuser``; otherwise it
runs as the current user.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from e2e import topology

T = TypeVar("T")

VENV_BIN = Path(sys.executable).parent
POSTGRES_ROOT = Path("/usr/lib/postgresql")
POSTGRES_USER = "postgres"


class ServiceError(RuntimeError):
    """A server did not start, or stopped on its own."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(
    condition: Callable[[], T | bool | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.2,
    alive: Callable[[], None] | None = None,
) -> T:
    """Poll ``condition`` until it returns something truthy; raise TimeoutError naming ``what``.

    ``alive`` is called on every poll and raises when the thing waited on has died (so a crash
    fails at once instead of at the deadline).
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        if alive is not None:
            alive()
        try:
            last = condition()
        except Exception as exc:  # a refused connection is an answer too: not ready yet
            last = exc
        else:
            if last:
                return last  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not after {timeout:.0f} s (last seen: {last!r})")
        time.sleep(interval)


def tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file (empty when there is none)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# -- processes -----------------------------------------------------------------------------------

_STARTED: list[ManagedProcess] = []


class ManagedProcess:
    """One program in its own process group, output appended to ``log_path``.

    ``stop`` sends ``stop_signal`` to the group (or to ``stop_pid()`` when given, e.g. a server
    behind ``runuser``), waits up to ``grace`` seconds, then SIGKILLs the group; ``kill`` sends a
    signal to the whole group at once (a crash, as the tests inject it).
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        stop_signal: int = signal.SIGTERM,
        stop_pid: Callable[[], int | None] | None = None,
    ) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = log_path
        self.env = dict(env) if env is not None else dict(os.environ)
        self.cwd = cwd
        self.stop_signal = stop_signal
        self.stop_pid = stop_pid
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if self.running:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"--- start: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if self not in _STARTED:
            _STARTED.append(self)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        """Raise ServiceError (with the log's tail) when the process has exited."""
        if self.proc is None:
            raise ServiceError(f"{self.name} was never started")
        code = self.proc.poll()
        if code is not None:
            raise ServiceError(
                f"{self.name} exited with code {code}; log {self.log_path}:\n{tail(self.log_path)}"
            )

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the whole process group (a no-op when it is gone)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def stop(self, grace: float = 15.0) -> None:
        """End the process and everything it started; idempotent."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            target = self.stop_pid() if self.stop_pid else None
            if target:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(target, self.stop_signal)
            else:
                self.kill(self.stop_signal)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=grace)
        # Children that outlived the leader (or ignored the signal) go with the group.
        self.kill(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)


@atexit.register
def _stop_everything() -> None:
    for process in reversed(_STARTED):
        with contextlib.suppress(Exception):
            process.stop(grace=5.0)


# -- PostgreSQL ----------------------------------------------------------------------------------


def postgres_bin() -> Path:
    """The newest installed PostgreSQL server's bin folder (Debian: /usr/lib/postgresql/N/bin)."""
    found = sorted(
        (p.parent for p in POSTGRES_ROOT.glob("*/bin/postgres") if p.parent.name == "bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not found:
        raise ServiceError(
            f"no PostgreSQL server under {POSTGRES_ROOT}; install Debian's package: "
            "apt-get install postgresql (`make test` does it as root)"
        )
    return found[-1]


def _as_root() -> bool:
    return os.geteuid() == 0


class PostgresServer:
    """A throwaway PostgreSQL cluster on 127.0.0.1:<free port>, TCP only, trust authentication.

    Durability is switched off (fsync, synchronous_commit, full_page_writes): the cluster lives
    for one test session.
    """

    def __init__(self, log_dir: Path, port: int | None = None) -> None:
        self.bin = postgres_bin()
        self.port = port or free_port()
        self.log_dir = log_dir
        # Not under pytest's temporary folders: those are private to root (0700), and the server
        # runs as the postgres user when the tests run as root.
        self.root = Path(tempfile.mkdtemp(prefix="tuneloop-e2e-pg-"))
        self.data = self.root / "data"
        self.user = POSTGRES_USER
        self.process: ManagedProcess | None = None

    def _as_owner(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", POSTGRES_USER, "--", *argv] if _as_root() else argv

    def initdb(self) -> None:
        if _as_root():
            shutil.chown(self.root, user=POSTGRES_USER, group=POSTGRES_USER)
        argv = [
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            self.user,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
        ]
        done = subprocess.run(
            self._as_owner(argv), capture_output=True, text=True, timeout=180, cwd=self.root
        )
        if done.returncode != 0:
            raise ServiceError(
                f"initdb failed ({done.returncode}): {' '.join(argv)}\n"
                f"{done.stdout[-2000:]}{done.stderr[-2000:]}"
            )

    def _postmaster_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.data / "postmaster.pid").read_text().splitlines()[0])
        return None

    def start(self, timeout: float = 60.0) -> None:
        self.initdb()
        argv = [
            str(self.bin / "postgres"),
            "-D",
            str(self.data),
            "-p",
            str(self.port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "unix_socket_directories=",
            "-c",
            "max_connections=300",
            "-c",
            "shared_buffers=64MB",
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
        ]
        # SIGINT to the postmaster itself is PostgreSQL's fast shutdown (runuser, in between,
        # would turn a group-wide SIGTERM into SIGTERM plus SIGKILL 2 s later).
        self.process = ManagedProcess(
            "postgres",
            self._as_owner(argv),
            self.log_dir / "postgres.log",
            cwd=self.root,
            stop_signal=signal.SIGINT,
            stop_pid=self._postmaster_pid,
        )
        self.process.start()
        wait_until(
            self._accepts_connections,
            timeout=timeout,
            what=f"PostgreSQL on port {self.port} (log {self.process.log_path})",
            alive=self.process.check_alive,
        )

    def _accepts_connections(self) -> bool:
        import psycopg

        with psycopg.connect(self.dsn("postgres"), connect_timeout=3):
            return True

    def dsn(self, database: str) -> str:
        return f"host=127.0.0.1 port={self.port} user={self.user} dbname={database}"

    def url(self, database: str, driver: str = "psycopg") -> str:
        """A SQLAlchemy URL (``postgresql+<driver>://``); ``driver=""`` gives ``postgresql://``."""
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        return f"{scheme}://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create database ``name``; returns its SQLAlchemy URL."""
        import psycopg

        with psycopg.connect(self.dsn("postgres"), autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(grace=20.0)
        shutil.rmtree(self.root, ignore_errors=True)


def _version(argv: list[str], pattern: str) -> tuple[int, ...]:
    import re

    printed = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout
    found = re.search(pattern, printed)
    if found is None:
        raise ServiceError(f"{' '.join(argv)} printed no version: {printed.strip()[:200]}")
    return tuple(int(part) for part in found.groups())


def check_versions(postgres: PostgresServer, redis: RedisServer) -> None:
    """The PostgreSQL and Redis the stack runs are the versions docker-compose.yaml names
    (`topology.POSTGRES_MAJOR`, `topology.REDIS_MAJOR_MINOR`), so what users run is what the
    tests ran."""
    (pg_major,) = _version([str(postgres.bin / "postgres"), "--version"], r"\) (\d+)\.")
    redis_version = _version([redis.binary, "--version"], r"v=(\d+)\.(\d+)\.")
    expected = (topology.POSTGRES_MAJOR, topology.REDIS_MAJOR_MINOR)
    if (pg_major, redis_version) != expected:
        raise ServiceError(
            f"this machine runs PostgreSQL {pg_major} and Redis "
            f"{'.'.join(map(str, redis_version))}; the e2e topology and docker-compose.yaml name "
            f"PostgreSQL {expected[0]} and Redis {'.'.join(map(str, expected[1]))}: change "
            "tests/e2e/topology.py and the images in docker-compose.yaml together"
        )


# -- Redis ---------------------------------------------------------------------------------------


class RedisServer:
    """``redis-server`` on 127.0.0.1:<free port>, no persistence."""

    def __init__(self, work_dir: Path, log_dir: Path, port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if not binary:
            raise ServiceError(
                "redis-server is not installed; install Debian's package: apt-get install "
                "redis-server (`make test` does it as root)"
            )
        self.binary = binary
        self.port = port or free_port()
        work_dir.mkdir(parents=True, exist_ok=True)
        self.process = ManagedProcess(
            "redis",
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--dir",
                str(work_dir),
            ],
            log_dir / "redis.log",
            cwd=work_dir,
        )

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def ping(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(64).startswith(b"+PONG")

    def start(self, timeout: float = 30.0) -> None:
        self.process.start()
        wait_until(
            self.ping,
            timeout=timeout,
            what=f"redis-server on port {self.port} (log {self.process.log_path})",
            alive=self.process.check_alive,
        )

    def stop(self) -> None:
        self.process.stop(grace=10.0)


# -- MLflow --------------------------------------------------------------------------------------


class MlflowServer:
    """An MLflow tracking server as docker-compose.yaml runs one (`topology.mlflow_server_argv`):
    its backend store ``backend_store_uri`` (the stack's PostgreSQL), artifacts proxied into a
    local folder. One uvicorn worker and no job runner keep it to two processes.
    """

    def __init__(
        self, work_dir: Path, log_dir: Path, *, backend_store_uri: str, port: int | None = None
    ) -> None:
        self.port = port or free_port()
        work_dir.mkdir(parents=True, exist_ok=True)
        self.work_dir = work_dir
        env = {
            **os.environ,
            **topology.mlflow_server_env(
                backend_store_uri=backend_store_uri,
                artifacts_destination=str(work_dir / "artifacts"),
            ),
        }
        self.process = ManagedProcess(
            "mlflow",
            [
                str(VENV_BIN / "mlflow"),
                *topology.mlflow_server_argv(host="127.0.0.1", port=self.port),
            ],
            log_dir / "mlflow.log",
            env=env,
            cwd=work_dir,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def healthy(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/health", timeout=3) as response:
            return response.status == 200

    def start(self) -> None:
        self.process.start()

    def _api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"{self.url}/api/2.0/mlflow/{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"{}")

    def runs(self, experiment: str, filter_string: str = "") -> list[dict[str, Any]]:
        """The runs of experiment ``experiment`` (by name) matching ``filter_string``, through
        the server's REST API; each with ``tags`` as a plain mapping. [] when there is no such
        experiment."""
        query = urllib.parse.urlencode({"experiment_name": experiment})
        try:
            found = self._api("GET", f"experiments/get-by-name?{query}")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return []
            raise
        body = {
            "experiment_ids": [found["experiment"]["experiment_id"]],
            "filter": filter_string,
            "max_results": 1000,
        }
        runs = self._api("POST", "runs/search", body).get("runs", [])
        for run in runs:
            tags = run.get("data", {}).get("tags", [])
            run["tags"] = {t["key"]: t["value"] for t in tags}
        return runs

    def wait_healthy(self, timeout: float = 120.0) -> None:
        wait_until(
            self.healthy,
            timeout=timeout,
            what=f"MLflow server on port {self.port} (log {self.process.log_path})",
            alive=self.process.check_alive,
            interval=0.5,
        )

    def stop(self) -> None:
        self.process.stop(grace=15.0)


__all__ = [
    "ManagedProcess",
    "MlflowServer",
    "PostgresServer",
    "RedisServer",
    "ServiceError",
    "free_port",
    "postgres_bin",
    "tail",
    "wait_until",
]
