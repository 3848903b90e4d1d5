"""Airflow's own processes on this machine, started as subprocesses and driven over REST.

``make demo`` runs the round DAGs here (API server, scheduler, dag-processor and triggerer on
SQLite with the LocalExecutor); the end-to-end tests run the same processes on PostgreSQL with
the CeleryExecutor and Celery workers. A component is an argv list after the ``airflow``
executable plus its own environment, so any topology fits::

    env = airflow_env(home, port=free_port(), dags_folder=dags, plugins_folder=plugins)
    airflow = AirflowProcesses(env, default_components(), log_dir=home / "logs" / "processes")
    airflow.start()                    # db migrate, every component, wait until healthy
    client = airflow.client()          # REST API v2 as admin (JWT from POST /auth/token)
    run = client.trigger("my_dag")
    client.wait_for_run("my_dag", run["dag_run_id"], timeout=300)
    airflow.stop()

Rules:

- Every component runs in its own session (process group). ``stop`` sends SIGTERM to each main
  process (Airflow then stops its own children in order), and after a grace period SIGKILL to
  the group and to every process the component started (task processes put themselves in groups
  of their own), so nothing outlives ``stop``. Output goes to ``log_dir/<name>.log``.
- The processes see only the Airflow settings given here: ``AIRFLOW*`` variables of the calling
  process are not inherited (a shell's ``AIRFLOW_HOME`` or database URL must not leak in).
- Users are SimpleAuthManager's (``admin`` with role admin). The password file is written before
  the API server starts (``simple_auth_manager_passwords.json.generated`` in AIRFLOW_HOME, mode
  0600), so the manager never prints a password into a log, and ``airflow standalone`` on the
  same home logs in with the same password.
- The log servers of the scheduler (LocalExecutor), the workers and the triggerer get free ports,
  so two of these Airflows can run side by side.

Only the standard library, httpx (installed with Airflow) and ``tuneloop.errors`` are imported
here; psutil (also an Airflow dependency) is imported when processes are stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx

from tuneloop.errors import MessageError

T = TypeVar("T")

SIMPLE_AUTH_MANAGER = (
    "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
)
PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"
PASSWORDS_FILE_ENV = "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"

MIGRATE_ARGV = ("db", "migrate")
"""What creates or upgrades the metadata database before any component starts (``migrate``;
docker-compose.yaml's airflow-init service runs the same)."""

HEALTH_KEYS = {"scheduler": "scheduler", "dag-processor": "dag_processor", "triggerer": "triggerer"}
"""The first argv word of a component -> its entry in /api/v2/monitor/health."""

_TAIL_CHARS = 4000
CHILDREN_KILLED_AFTER = 5.0
"""Seconds after SIGTERM after which ``stop`` kills the children of a component still running."""


class EmbeddedAirflowError(MessageError):
    """This Airflow did not start or answered with an error. Nothing the user wrote is at fault,
    so ``str()`` is the message alone, with no file or line in front of it."""


class AirflowStartError(EmbeddedAirflowError):
    """A component did not start, or Airflow did not become healthy in time."""


class AirflowApiError(EmbeddedAirflowError):
    """The REST API answered with an error status."""

    def __init__(self, method: str, url: str, status: int, body: str) -> None:
        self.method = method
        self.url = url
        self.status = status
        self.body = body
        super().__init__(f"{method} {url} -> HTTP {status}: {body[:1000]}")


class AirflowCliError(EmbeddedAirflowError):
    """An ``airflow`` CLI command failed."""

    def __init__(self, args: list[str], result: subprocess.CompletedProcess[str]) -> None:
        self.result = result
        output = (result.stdout or "") + (result.stderr or "")
        super().__init__(
            f"airflow {' '.join(args)} exited with {result.returncode}:\n{output[-_TAIL_CHARS:]}"
        )


@dataclass
class Component:
    """One Airflow process: ``airflow <argv...>`` with ``env`` added for this process only."""

    name: str
    """Unique: "api-server", "scheduler", "dag-processor", "triggerer", "worker-1", ..."""
    argv: list[str]
    """After the airflow executable, e.g. ["scheduler"] or ["celery", "worker", "-c", "2"]."""
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment for this process (e.g. a worker's own worker_log_server_port)."""

    @property
    def health_key(self) -> str | None:
        """Its entry in the health endpoint's answer, if it has one."""
        return HEALTH_KEYS.get(self.argv[0]) if self.argv else None


def default_components() -> list[Component]:
    """API server, scheduler, dag-processor and triggerer (what a LocalExecutor Airflow needs)."""
    return [
        Component("api-server", ["api-server"]),
        Component("scheduler", ["scheduler"]),
        Component("dag-processor", ["dag-processor"]),
        Component("triggerer", ["triggerer"]),
    ]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def airflow_executable() -> str:
    """The ``airflow`` next to this Python (the virtualenv's), else the one on PATH."""
    beside = Path(sys.executable).with_name("airflow")
    if beside.exists():
        return str(beside)
    found = shutil.which("airflow")
    if found is None:
        raise AirflowStartError(
            f"no airflow executable next to {sys.executable} or on PATH; "
            "fix: install apache-airflow into this environment (make install)"
        )
    return found


def airflow_env(
    home: Path,
    *,
    port: int,
    dags_folder: Path,
    plugins_folder: Path,
    sql_alchemy_conn: str | None = None,
    executor: str = "LocalExecutor",
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The settings of an Airflow whose API server listens on 127.0.0.1:``port``.

    ``sql_alchemy_conn`` None is SQLite at ``home/airflow.db``. ``extra`` is applied last (any
    ``AIRFLOW__SECTION__KEY`` or other variable). The log-server ports are free ports chosen now.
    """
    home = Path(home).absolute()
    base_url = f"http://127.0.0.1:{port}"
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(Path(dags_folder).absolute()),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(Path(plugins_folder).absolute()),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": executor,
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base_url}/execution/",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sql_alchemy_conn
        or f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": base_url,
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        # New and changed DAG files are seen within seconds (defaults: 300 s and 30 s).
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "10",
        "AIRFLOW__DAG_PROCESSOR__PRINT_STATS_INTERVAL": "300",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        # A worker notices a deferred task's exit within a second, so a job's trigger fires 2 s
        # after the task deferred at the earliest (pipeline.triggers.settle_seconds), not 8 s:
        # the demo's evaluations take seconds.
        "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
    }
    env.update(extra or {})
    return env


def passwords_file(env: Mapping[str, str]) -> Path:
    """Where SimpleAuthManager keeps the passwords of an Airflow with these settings."""
    configured = env.get(PASSWORDS_FILE_ENV)
    return Path(configured) if configured else Path(env["AIRFLOW_HOME"]) / PASSWORDS_FILE


def ensure_password(path: Path, username: str = "admin") -> str:
    """The user's password in SimpleAuthManager's file, generated and written (0600) if missing."""
    passwords: dict[str, str] = {}
    if path.exists():
        text = path.read_text(encoding="utf-8").strip()
        passwords = json.loads(text) if text else {}
    if username not in passwords:
        passwords[username] = secrets.token_urlsafe(12)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            stream.write(json.dumps(passwords) + "\n")
        os.replace(temporary, path)
    return passwords[username]


def _utc(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _tail(path: Path, chars: int = _TAIL_CHARS) -> str:
    try:
        with open(path, "rb") as stream:
            stream.seek(0, os.SEEK_END)
            size = stream.tell()
            stream.seek(max(0, size - chars))
            return stream.read().decode("utf-8", "replace")
    except OSError:
        return ""


class AirflowProcesses:
    """Start, watch, signal and stop a set of Airflow components sharing one configuration."""

    def __init__(self, env: Mapping[str, str], components: list[Component], log_dir: Path) -> None:
        names = [c.name for c in components]
        if len(set(names)) != len(names):
            raise ValueError(f"component names must be unique: {names}")
        self.env = dict(env)
        self.components = {c.name: c for c in components}
        self.log_dir = Path(log_dir)
        self.home = Path(self.env["AIRFLOW_HOME"])
        port = self.env.get("AIRFLOW__API__PORT", "8080")
        self.api_url = f"http://127.0.0.1:{port}"
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._started_at: dict[str, datetime] = {}
        self._migrated = False

    # -- environment --

    def process_env(self, name: str | None = None) -> dict[str, str]:
        """The full environment of a component (or of CLI commands when ``name`` is None)."""
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        env = {**inherited, **self.env}
        if name is not None:
            env.update(self.components[name].env)
        bin_dir = str(Path(airflow_executable()).parent)
        path = env.get("PATH", "")
        if bin_dir not in path.split(os.pathsep):
            env["PATH"] = os.pathsep.join(p for p in (bin_dir, path) if p)
        return env

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def password(self, username: str = "admin") -> str:
        path = passwords_file(self.env)
        try:
            return str(json.loads(path.read_text(encoding="utf-8"))[username])
        except (OSError, ValueError, KeyError):
            raise AirflowStartError(f"no password for {username!r} in {path}") from None

    def client(self, username: str = "admin") -> AirflowClient:
        return AirflowClient(self.api_url, username, self.password(username))

    # -- the airflow CLI --

    def cli(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """``airflow <args>`` with these settings; AirflowCliError on failure if ``check``."""
        result = subprocess.run(
            [airflow_executable(), *args],
            env=self.process_env(),
            cwd=self.home,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AirflowCliError(list(args), result)
        return result

    def migrate(self) -> None:
        """``airflow db migrate`` (creates or upgrades the metadata database)."""
        self.home.mkdir(parents=True, exist_ok=True)
        try:
            self.cli(*MIGRATE_ARGV, timeout=600)
        except AirflowCliError as exc:
            raise AirflowStartError(f"the metadata database could not be migrated: {exc}") from None
        self._migrated = True

    # -- processes --

    def start(self, timeout: float = 300.0) -> None:
        """Migrate (once), start every component, wait until all of them are healthy."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        ensure_password(passwords_file(self.env), "admin")
        if not self._migrated:
            self.migrate()
        try:
            for name in self.components:
                if not self.running(name):
                    self._spawn(name)
            self.wait_healthy(list(self.components), timeout=timeout)
        except BaseException:
            self.stop()
            raise

    def start_component(self, name: str, *, wait: bool = True, timeout: float = 180.0) -> None:
        """Start one component again (after ``kill`` or ``stop``); waits until it is healthy."""
        if self.running(name):
            raise AirflowStartError(f"{name} is already running (pid {self._processes[name].pid})")
        self._spawn(name)
        if wait:
            self.wait_healthy([name], timeout=timeout)

    def restart(self, name: str, *, grace: float = 20.0, timeout: float = 180.0) -> None:
        """Stop one component (SIGTERM, SIGKILL after ``grace``) and start it again."""
        self._stop_names([name], grace)
        self.start_component(name, timeout=timeout)

    def stop(self, grace: float = 20.0) -> None:
        """Stop every component: SIGTERM to its main process (which shuts its own children down
        in order, as under a process supervisor; children still there after 5 s are killed so
        that it can finish), then, after ``grace`` seconds, SIGKILL to its
        whole process group and to every process it started (task processes run in groups of
        their own). Returns when all of them are gone. Idempotent."""
        self._stop_names(list(self._processes), grace)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to one component's whole process group (with SIGKILL, also to the
        processes it started in groups of their own: all of it dies, as on a lost machine)."""
        process = self._processes.get(name)
        if process is None or process.poll() is not None:
            raise AirflowStartError(f"{name} is not running")
        family = _descendants(process.pid) if sig == signal.SIGKILL else {}
        _signal_group(process.pid, sig)
        for member in family.values():
            _kill(member)
        if sig == signal.SIGKILL:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=30)

    def running(self, name: str) -> bool:
        process = self._processes.get(name)
        return process is not None and process.poll() is None

    def pids(self) -> dict[str, int]:
        """Process id (= process group id) of every component started and still running."""
        return {n: p.pid for n, p in self._processes.items() if p.poll() is None}

    @property
    def started_at(self) -> dict[str, datetime]:
        """When each component was last started (UTC)."""
        return dict(self._started_at)

    def returncode(self, name: str) -> int | None:
        process = self._processes.get(name)
        return None if process is None else process.poll()

    def __enter__(self) -> AirflowProcesses:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- health --

    def health(self) -> dict[str, Any] | None:
        """The API server's /api/v2/monitor/health answer, or None while it does not answer."""
        try:
            response = httpx.get(f"{self.api_url}/api/v2/monitor/health", timeout=5)
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        try:
            return dict(response.json())
        except ValueError:
            return None

    def unhealthy(self, names: Iterable[str]) -> list[str]:
        """Which of these components are not (yet) healthy: not running, API not answering, or
        no heartbeat from the process started last (an older process's record does not count)."""
        names = list(names)
        waiting = [n for n in names if not self.running(n)]
        health = self.health()
        if health is None:
            return [*waiting, "api-server" if "api-server" in names else "API"]
        if health.get("metadatabase", {}).get("status") != "healthy":
            waiting.append("metadatabase")
        for name in names:
            key = self.components[name].health_key
            if key is None or name in waiting:
                continue
            entry = health.get(key) or {}
            beat = _utc(entry.get(f"latest_{key}_heartbeat"))
            started = self._started_at.get(name)
            if entry.get("status") != "healthy" or beat is None or (started and beat < started):
                waiting.append(name)
        return waiting

    def wait_healthy(self, names: Iterable[str] | None = None, *, timeout: float = 300.0) -> None:
        """Wait until the components are healthy; a component that exits meanwhile fails at once
        with the end of its log."""
        names = list(self.components) if names is None else list(names)
        deadline = time.monotonic() + timeout
        waiting = names
        while True:
            for name in names:
                code = self.returncode(name)
                if code is not None:
                    raise AirflowStartError(
                        f"airflow {name} exited with {code} while starting; "
                        f"the end of {self.log_path(name)}:\n{_tail(self.log_path(name))}"
                    )
            waiting = self.unhealthy(names)
            if not waiting:
                return
            if time.monotonic() >= deadline:
                logs = "\n".join(
                    f"--- {self.log_path(n)}:\n{_tail(self.log_path(n), 1500)}"
                    for n in waiting
                    if n in self.components
                )
                raise AirflowStartError(
                    f"Airflow was not healthy within {timeout:.0f}s; waiting for "
                    f"{', '.join(waiting)}\n{logs}"
                )
            time.sleep(0.5)

    # -- internals --

    def _spawn(self, name: str) -> None:
        component = self.components[name]
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path(name), "ab") as log:
            stamp = datetime.now(UTC).isoformat(timespec="seconds")
            log.write(f"\n=== {stamp} airflow {' '.join(component.argv)}\n".encode())
            log.flush()
            self._started_at[name] = datetime.now(UTC)
            self._processes[name] = subprocess.Popen(
                [airflow_executable(), *component.argv],
                env=self.process_env(name),
                cwd=self.home,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _stop_names(self, names: list[str], grace: float) -> None:
        processes = {n: self._processes[n] for n in names if n in self._processes}
        family: dict[int, Any] = {}  # pid -> psutil.Process (knows if its pid was reused)
        for process in processes.values():
            if process.poll() is None:
                family.update(_descendants(process.pid))
                _signal_pid(process.pid, signal.SIGTERM)
        began = time.monotonic()
        children_deadline: float | None = began + min(CHILDREN_KILLED_AFTER, grace / 2)
        while time.monotonic() < began + grace:
            alive = [p for p in processes.values() if p.poll() is None]
            if children_deadline is not None and time.monotonic() >= children_deadline:
                # A main process still waiting on its children (the scheduler's LocalExecutor
                # can wait forever on a worker that never took its stop message, and its workers
                # ignore SIGTERM): the children go, so the main process can finish its shutdown.
                for process in alive:
                    for member in _descendants(process.pid).values():
                        _kill(member)
                    _signal_pid(process.pid, signal.SIGTERM)  # "signal again to not wait"
                children_deadline = None
            for process in alive:  # children started while stopping count too
                family.update(_descendants(process.pid))
            if not alive and not any(_alive(member) for member in family.values()):
                break
            time.sleep(0.2)
        for process in processes.values():
            if process.poll() is None:  # not yet reaped: its group id cannot be someone else's
                _signal_group(process.pid, signal.SIGKILL)
        for member in family.values():
            _kill(member)
        for process in processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=30)


def _descendants(pid: int) -> dict[int, Any]:
    import psutil

    try:
        return {child.pid: child for child in psutil.Process(pid).children(recursive=True)}
    except psutil.Error:
        return {}


def _alive(member: Any) -> bool:
    import psutil

    try:
        return bool(member.is_running()) and member.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _kill(member: Any) -> None:
    import psutil

    with contextlib.suppress(psutil.Error):
        member.kill()  # psutil refuses if the pid now belongs to another process


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _signal_pid(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


# --- REST --------------------------------------------------------------------------------------


class AirflowClient:
    """Airflow's REST API v2, authenticated with a JWT from ``POST /auth/token``.

    Paths are relative to ``/api/v2/`` (``"dags"``) unless they start with ``/`` (``"/auth/..."``).
    """

    def __init__(self, base_url: str, username: str, password: str, *, timeout: float = 30) -> None:
        self.base_url = base_url.rstrip("/")
        self.username = username
        self._password = password
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)
        self._token: str | None = None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AirflowClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _login(self) -> str:
        response = self._http.post(
            "/auth/token", json={"username": self.username, "password": self._password}
        )
        if response.status_code not in (200, 201):
            raise AirflowApiError("POST", "/auth/token", response.status_code, response.text)
        self._token = str(response.json()["access_token"])
        return self._token

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """The JSON answer (text if it is not JSON, None if empty); AirflowApiError on >= 400."""
        url = path if path.startswith("/") else f"/api/v2/{path}"
        extra_headers = dict(kwargs.pop("headers", None) or {})
        for attempt in (1, 2):
            token = self._token or self._login()
            headers = {**extra_headers, "Authorization": f"Bearer {token}"}
            response = self._http.request(method, url, headers=headers, **kwargs)
            if response.status_code != 401 or attempt == 2:
                break
            self._token = None  # expired: log in again once
        if response.status_code >= 400:
            raise AirflowApiError(method, url, response.status_code, response.text)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            return response.text

    def _pages(self, path: str, key: str, **params: Any) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        while True:
            page = self.request("GET", path, params={**params, "limit": 100, "offset": len(items)})
            batch = page.get(key) or []
            items.extend(batch)
            if not batch or len(items) >= int(page.get("total_entries", len(items))):
                return items

    # -- DAGs --

    def dags(self) -> list[dict[str, Any]]:
        return self._pages("dags", "dags")

    def dag(self, dag_id: str) -> dict[str, Any] | None:
        """The DAG, or None while no dag-processor has parsed it."""
        try:
            return dict(self.request("GET", f"dags/{quote(dag_id, safe='')}"))
        except AirflowApiError as exc:
            if exc.status == 404:
                return None
            raise

    def unpause(self, dag_id: str) -> None:
        self.request("PATCH", f"dags/{quote(dag_id, safe='')}", json={"is_paused": False})

    def pause(self, dag_id: str) -> None:
        self.request("PATCH", f"dags/{quote(dag_id, safe='')}", json={"is_paused": True})

    def import_errors(self) -> list[dict[str, Any]]:
        return self._pages("importErrors", "import_errors")

    # -- runs --

    def trigger(
        self,
        dag_id: str,
        conf: Mapping[str, Any] | None = None,
        *,
        run_id: str | None = None,
        logical_date: str | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"logical_date": logical_date, "conf": dict(conf or {})}
        if run_id is not None:
            body["dag_run_id"] = run_id
        return dict(self.request("POST", f"dags/{quote(dag_id, safe='')}/dagRuns", json=body))

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return dict(self.request("GET", self._run_path(dag_id, run_id)))

    def dag_runs(self, dag_id: str) -> list[dict[str, Any]]:
        """Every run of the DAG, oldest first."""
        return self._pages(
            f"dags/{quote(dag_id, safe='')}/dagRuns", "dag_runs", order_by="run_after"
        )

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        return self._pages(f"{self._run_path(dag_id, run_id)}/taskInstances", "task_instances")

    def xcom(
        self,
        dag_id: str,
        run_id: str,
        task_id: str,
        key: str = "return_value",
        map_index: int = -1,
    ) -> Any:
        path = (
            f"{self._run_path(dag_id, run_id)}/taskInstances/{quote(task_id, safe='')}"
            f"/xcomEntries/{quote(key, safe='')}"
        )
        value = self.request("GET", path, params={"map_index": map_index})["value"]
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return json.loads(value)
        return value

    def task_log(
        self, dag_id: str, run_id: str, task_id: str, try_number: int, map_index: int = -1
    ) -> str:
        """The log of one try as text: a line per record, and an exception's type and message
        after the record that carries it."""
        path = (
            f"{self._run_path(dag_id, run_id)}/taskInstances/{quote(task_id, safe='')}"
            f"/logs/{try_number}"
        )
        answer = self.request(
            "GET",
            path,
            params={"map_index": map_index, "full_content": "true"},
            headers={"Accept": "application/json"},
        )
        content = answer.get("content") if isinstance(answer, dict) else answer
        if isinstance(content, str):
            return content
        lines = []
        for item in content or []:
            if isinstance(item, dict):
                when = str(item.get("timestamp") or "")[:19]
                level = str(item.get("level") or "").upper()
                text = " ".join(p for p in (when, level, str(item.get("event", ""))) if p)
                lines.append(text)
                for error in item.get("error_detail") or []:  # an exception: type and message
                    if isinstance(error, dict):
                        value = str(error.get("exc_value", "")).rstrip()
                        lines.append(f"{error.get('exc_type', 'Exception')}: {value}")
            else:
                lines.append(str(item))
        return "\n".join(lines)

    @staticmethod
    def _run_path(dag_id: str, run_id: str) -> str:
        return f"dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}"

    # -- waiting --

    def wait_for(
        self,
        condition: Callable[[], T | bool | None],
        *,
        timeout: float,
        what: str,
        interval: float = 0.5,
    ) -> T:
        """Poll ``condition`` until it returns something truthy (returned); TimeoutError naming
        ``what`` and the last value seen after ``timeout`` seconds. Connection errors and
        5xx answers (an API server restarting) count as "not yet"."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            try:
                last = condition()
                if last:
                    return last
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
            except AirflowApiError as exc:
                if exc.status < 500:
                    raise
                last = str(exc)
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{what}: not within {timeout:.0f}s (last seen: {last!r})")
            time.sleep(interval)

    def wait_for_run(
        self,
        dag_id: str,
        run_id: str,
        *,
        timeout: float,
        states: Iterable[str] = ("success", "failed"),
    ) -> dict[str, Any]:
        """The run, once its state is one of ``states``."""
        wanted = set(states)

        def reached() -> dict[str, Any] | None:
            run = self.dag_run(dag_id, run_id)
            return run if run.get("state") in wanted else None

        return self.wait_for(
            reached, timeout=timeout, what=f"run {run_id} of {dag_id} in state {sorted(wanted)}"
        )
