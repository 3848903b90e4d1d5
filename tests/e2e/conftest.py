"""A real Airflow for the end-to-end tests, started once per test session.

The stack, everything on 127.0.0.1 with free ports and state in temporary folders:

- PostgreSQL (Debian's server; a cluster made with initdb) holding Airflow's metadata database
  and Celery's results;
- Redis, Celery's broker;
- an MLflow tracking server the test campaigns report to;
- Airflow 3.3.2's own processes (``tuneloop.demo.embedded_airflow``): api-server, scheduler,
  dag-processor, triggerer and two Celery workers (``worker-1``, ``worker-2``, two slots each)
  with the CeleryExecutor. DAGS_FOLDER is the repository's dags/ (the product's DAG file), so
  every campaign file a test writes into ``stack.campaigns_dir`` becomes a DAG within seconds.
  The components and their settings are in ``topology.py``, which docker-compose.yaml is held
  to.

Where a test waits for the dag-processor (a new campaign's DAG, an import error), it asks for a
parse of the DAG file as the UI's "Reparse" does (``stack.wait_for_dag``, ``stack.wait_for_parse``)
instead of waiting for the parse interval. Waits on Airflow's own clocks are short on this stack:
a dead task is failed after 30 s without heartbeat, and a failed try is retried after 5 s (a task
policy in ``$AIRFLOW_HOME/config/airflow_local_settings.py``; the round DAG's own delay is a
minute).

Tests drive it as users do: the REST API (``stack.client``), the ``airflow`` CLI
(``stack.airflow.cli``) and a browser (``browser_page``). Components can be killed and restarted
one at a time (``stack.airflow.kill("worker-1")``, ``stack.airflow.restart("scheduler")``); the
log of every process is in ``stack.log_dir``. Everything stops at the end of the session, also
when a test fails.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from e2e import services, topology
from e2e.campaigns import DATA_SIZES, Campaign, FakeJobs, campaign_text, write_atomically

T = TypeVar("T")

WORKERS = topology.WORKERS
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]

STARTUP_TIMEOUT = 300.0
"""Seconds the whole stack may take to become healthy (about a minute on 2 idle cores)."""

IDLE_CAMPAIGN = "e2e-idle"
"""A campaign no test runs, written before Airflow starts. Its DAG, parsed at once, shows that
the DAG file loads, carries the file token with which tests ask for a parse, and shows that the
stack's task policy applies (``_check_idle_dag``)."""
IDLE_DAG_ID = "tuneloop_e2e_idle"
IDLE_LIFECYCLE_DAG_ID = f"{IDLE_DAG_ID}_lifecycle"

PARSE_REQUEST_INTERVAL = 5.0
"""Seconds between two parse requests while a test waits for what a parse shows (one parse of
the DAG file takes one to three seconds; a request that comes while one runs waits for it)."""


@dataclass
class Stack:
    """The running services and what tests need to use them."""

    root: Path
    log_dir: Path
    campaigns_dir: Path
    project_dir: Path
    data_dir: Path
    fake_jobs: FakeJobs
    postgres: services.PostgresServer
    redis: services.RedisServer
    mlflow: services.MlflowServer
    airflow: Any  # tuneloop.demo.embedded_airflow.AirflowProcesses
    timings: dict[str, float] = field(default_factory=dict)
    _client: Any = None
    _file_tokens: dict[str, str] = field(default_factory=dict)

    @property
    def client(self) -> Any:
        """The REST API as admin (tuneloop.demo.embedded_airflow.AirflowClient)."""
        if self._client is None:
            self._client = self.airflow.client()
        return self._client

    @property
    def api_url(self) -> str:
        return str(self.airflow.api_url)

    def log(self, name: str) -> str:
        """The log of one process so far: an Airflow component ("scheduler", "worker-1", ...)
        or a service ("postgres", "redis", "mlflow")."""
        path = self.log_dir / f"{name}.log"
        if name in self.airflow.components:
            path = self.airflow.log_path(name)
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    # -- campaigns --

    def write_campaign(self, name: str, text: str | None = None, **options: Any) -> Campaign:
        """Write campaign file ``<name>.yaml`` (``text``, else ``campaign_text`` with
        ``options``) into the campaigns folder; its outputs go under the project folder."""
        output_root = self.project_dir / "outputs"
        if text is None:
            text = campaign_text(
                name,
                output_root=output_root,
                data=self.data_dir,
                mlflow_uri=self.mlflow.url,
                **options,
            )
        path = self.campaigns_dir / f"{name}.yaml"
        write_atomically(path, text)
        return Campaign(name, path, output_root)

    def remove_campaign(self, campaign: Campaign) -> None:
        campaign.path.unlink(missing_ok=True)

    def wait_for_dag(self, dag_id: str, timeout: float = 120.0) -> dict[str, Any]:
        """The DAG as the API shows it, once the dag-processor has parsed it (and it is not
        paused)."""

        def parsed() -> dict[str, Any] | None:
            dag = self.client.dag(dag_id)
            ready = dag and not dag.get("is_paused") and dag.get("is_stale") is not True
            return dag if ready else None

        return self.wait_for_parse(
            parsed, timeout=timeout, what=f"DAG {dag_id} parsed by the dag-processor"
        )

    def wait_for_parse(self, condition: Callable[[], T | None], *, timeout: float, what: str) -> T:
        """Wait for what a parse of the DAG file shows (a campaign's DAG, an import error, one
        gone), asking the dag-processor for that parse now (``request_parse``) rather than
        waiting for its interval; asked again every PARSE_REQUEST_INTERVAL seconds until seen."""
        asked = -PARSE_REQUEST_INTERVAL

        def seen() -> T | None:
            nonlocal asked
            found = condition()
            if not found and time.monotonic() - asked >= PARSE_REQUEST_INTERVAL:
                asked = time.monotonic()
                self.request_parse()
            return found

        return self.client.wait_for(seen, timeout=timeout, what=what, interval=0.5)

    def request_parse(self) -> None:
        """Ask the dag-processor to parse the DAG files at once, as the UI's "Reparse" button
        does (``PUT /api/v2/parseDagFile/{file_token}``): the round DAG file and the lifecycle
        DAG file, each a no-op until a DAG of the file exists (the token comes with it), when
        the dag-processor's own interval has to do."""
        for dag_id in (IDLE_DAG_ID, IDLE_LIFECYCLE_DAG_ID):
            token = self._file_tokens.get(dag_id)
            if token is None:
                dag = self.client.dag(dag_id)
                if dag is None:
                    continue
                token = self._file_tokens[dag_id] = str(dag["file_token"])
            self.client.request("PUT", f"parseDagFile/{token}")

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        """task_id -> state (a mapped task: the states of its instances joined with ',')."""
        states: dict[str, list[str]] = {}
        for ti in self.client.task_instances(dag_id, run_id):
            states.setdefault(ti["task_id"], []).append(str(ti.get("state")))
        return {task: ",".join(sorted(set(values))) for task, values in states.items()}

    def wait_for_run(
        self, dag_id: str, run_id: str, *, timeout: float = 240.0, state: str = "success"
    ) -> dict[str, Any]:
        """Wait until the run has finished (success or failed) and assert it ended in ``state``;
        a run that ends otherwise, or not in time, fails with what its tasks did."""
        try:
            run = self.client.wait_for_run(dag_id, run_id, timeout=timeout)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{self.run_report(dag_id, run_id)}") from None
        if run["state"] != state:
            raise AssertionError(
                f"run {run_id} of {dag_id} ended {run['state']}, not {state}:\n"
                + self.run_report(dag_id, run_id)
            )
        return run

    def run_report(self, dag_id: str, run_id: str) -> str:
        """Each task's state, and the error of every failed try, as the API shows them."""
        lines = []
        try:
            instances = self.client.task_instances(dag_id, run_id)
        except Exception as exc:  # the report must not hide the failure it explains
            return f"(no task instances: {exc})"
        for ti in sorted(instances, key=lambda t: (t.get("start_date") or "~", t["task_id"])):
            index = "" if ti.get("map_index", -1) < 0 else f"[{ti['map_index']}]"
            state, attempt = ti.get("state"), ti.get("try_number")
            lines.append(f"  {ti['task_id']}{index}: {state} (try {attempt})")
            if ti.get("state") in ("failed", "up_for_retry"):
                lines.extend(f"      {e}" for e in self.task_errors(dag_id, run_id, ti))
        return "\n".join(lines)

    def task_errors(self, dag_id: str, run_id: str, ti: dict[str, Any]) -> list[str]:
        """The error lines (with the exception's message) of a task try's log."""
        from urllib.parse import quote

        path = (
            f"dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}/taskInstances/"
            f"{quote(ti['task_id'], safe='')}/logs/{max(int(ti.get('try_number') or 1), 1)}"
        )
        try:
            answer = self.client.request(
                "GET",
                path,
                params={"map_index": ti.get("map_index", -1), "full_content": "true"},
                headers={"Accept": "application/json"},
            )
        except Exception as exc:
            return [f"(log not readable: {exc})"]
        errors = []
        for item in (answer or {}).get("content") or []:
            level = str(item.get("level", "")).lower() if isinstance(item, dict) else ""
            if level in ("error", "critical"):
                details = [d.get("exc_value", "") for d in item.get("error_detail") or []]
                errors.append(" ".join([str(item.get("event", "")), *map(str, details)])[:2000])
        return errors

    def workers_ready(self) -> list[str]:
        """The Celery workers whose log says they are ready to take tasks."""
        return [name for name in WORKERS if self._worker_ready(name, 0)]

    def _worker_ready(self, name: str, offset: int) -> bool:
        return " ready." in self.log(name)[offset:]

    def start_worker(self, name: str, timeout: float = 180.0) -> None:
        """Start a Celery worker again (after ``airflow.kill(name)``) and wait until it takes
        tasks (Airflow's health endpoint does not list workers)."""
        offset = len(self.log(name))
        self.airflow.start_component(name, wait=False)
        services.wait_until(
            lambda: self._worker_ready(name, offset),
            timeout=timeout,
            what=f"Celery {name} ready again (log {self.airflow.log_path(name)})",
            interval=0.5,
        )


RETRY_DELAY_SECONDS = 5
"""The round DAG's retry_delay on this stack (the DAG's own is a minute; see
``_write_local_settings``)."""


def _check_idle_dag(stack: Stack, dag: dict[str, Any]) -> None:
    """The idle campaign's DAG came from the DAG file, and the stack's task policy shortened
    its retry delay (else a killed worker's retry would wait the DAG's minute)."""
    assert dag["dag_id"] == IDLE_DAG_ID and dag.get("file_token"), dag
    task = stack.client.request("GET", f"dags/{IDLE_DAG_ID}/tasks/decide")
    delay = task.get("retry_delay") or {}
    seconds = delay.get("seconds") if isinstance(delay, dict) else delay
    assert seconds == RETRY_DELAY_SECONDS, (
        f"the task policy in {stack.airflow.home}/config/airflow_local_settings.py did not "
        f"apply: decide's retry_delay is {delay!r}"
    )


def _write_local_settings(airflow_home: Path) -> None:
    """``$AIRFLOW_HOME/config/airflow_local_settings.py`` with a task policy that shortens every
    task's retry_delay to RETRY_DELAY_SECONDS: a test whose worker is killed waits for Airflow's
    retry, and what the retry does, not how long Airflow waits before it, is what it checks."""
    config = airflow_home / "config"
    config.mkdir(parents=True, exist_ok=True)
    (config / "airflow_local_settings.py").write_text(
        '"""Cluster policy of the end-to-end test stack (tests/e2e/conftest.py)."""\n\n'
        "from datetime import timedelta\n\n\n"
        "def task_policy(task):\n"
        f"    task.retry_delay = timedelta(seconds={RETRY_DELAY_SECONDS})\n",
        encoding="utf-8",
    )


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """PostgreSQL, Redis, MLflow and Airflow (CeleryExecutor, two workers), started once."""
    from tuneloop.demo.embedded_airflow import AirflowProcesses
    from tuneloop.local.demo_task import write_demo_data

    started = time.monotonic()
    root = tmp_path_factory.mktemp("e2e")
    log_dir = root / "logs"
    campaigns_dir = root / "campaigns"
    project_dir = root / "project"
    data_dir = project_dir / "data"
    for folder in (log_dir, campaigns_dir, project_dir):
        folder.mkdir(parents=True, exist_ok=True)
    write_demo_data(data_dir, sizes=DATA_SIZES)
    fake_jobs = FakeJobs(root / "fake-jobs.json")

    postgres = services.PostgresServer(log_dir)
    redis = services.RedisServer(root / "redis", log_dir)
    mlflow = services.MlflowServer(
        root / "mlflow", log_dir, backend_store_uri=postgres.url(topology.MLFLOW_DATABASE)
    )
    airflow: Any = None
    timings: dict[str, float] = {}
    try:
        postgres.start()
        postgres.create_database(topology.DATABASE)
        postgres.create_database(topology.MLFLOW_DATABASE)
        redis.start()
        services.check_versions(postgres, redis)
        mlflow.start()  # takes a few seconds; Airflow migrates meanwhile
        timings["postgres+redis"] = time.monotonic() - started

        env = topology.stack_env(
            root / "airflow",
            port=services.free_port(),
            database_url=postgres.url(topology.DATABASE),
            broker_url=redis.url,
            campaigns_dir=campaigns_dir,
            project_dir=project_dir,
            fake_jobs=fake_jobs.path,
        )
        _write_local_settings(root / "airflow")
        airflow = AirflowProcesses(env, topology.components(WORKERS), log_dir=log_dir)
        result = Stack(
            root=root,
            log_dir=log_dir,
            campaigns_dir=campaigns_dir,
            project_dir=project_dir,
            data_dir=data_dir,
            fake_jobs=fake_jobs,
            postgres=postgres,
            redis=redis,
            mlflow=mlflow,
            airflow=airflow,
            timings=timings,
        )
        # Parsed by the dag-processor's first parse, while the other components start.
        idle = result.write_campaign(IDLE_CAMPAIGN)
        mark = time.monotonic()
        airflow.migrate()
        timings["airflow db migrate"] = time.monotonic() - mark
        mark = time.monotonic()
        airflow.start(timeout=STARTUP_TIMEOUT)
        services.wait_until(
            lambda: len(result.workers_ready()) == len(WORKERS),
            timeout=STARTUP_TIMEOUT,
            what=f"Celery workers {', '.join(WORKERS)} ready (logs in {log_dir})",
            interval=0.5,
        )
        timings["airflow components healthy"] = time.monotonic() - mark
        mark = time.monotonic()
        _check_idle_dag(result, result.wait_for_dag(idle.dag_id, timeout=STARTUP_TIMEOUT))
        timings["DAG file parsed"] = time.monotonic() - mark
        mlflow.wait_healthy()
        timings["total"] = time.monotonic() - started
        _report(f"e2e stack up in {timings['total']:.1f} s ({_format(timings)}); logs: {log_dir}")
        yield result
    finally:
        mark = time.monotonic()
        stops = {"mlflow": mlflow.stop, "redis": redis.stop}
        if airflow is not None:
            # Nothing outlives the session that needs a clean shutdown; what has not stopped
            # after 10 s is killed.
            stops["airflow"] = functools.partial(airflow.stop, grace=10.0)
        # Side by side (each waits for its processes' grace period); PostgreSQL last, once no
        # Airflow process holds a connection.
        with ThreadPoolExecutor(len(stops)) as pool:
            futures = {name: pool.submit(_timed, stop) for name, stop in stops.items()}
        stopped = {name: future.result() for name, future in futures.items()}
        stopped["postgres"] = _timed(postgres.stop)
        _report(f"e2e stack stopped in {time.monotonic() - mark:.1f} s ({_format(stopped)})")
        # Job processes the fake trainer started live in the project folder's job roots; none
        # may outlive the session.
        _kill_leftover_jobs(project_dir)


def _timed(stop: Any) -> float:
    """Run ``stop``; how long it took (a failure to stop is reported, not raised, so every
    other service still stops)."""
    mark = time.monotonic()
    try:
        stop()
    except Exception as exc:
        _report(f"e2e stack: {stop!r} failed: {exc}")
    return time.monotonic() - mark


def _format(timings: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.1f} s" for k, v in timings.items() if k != "total")


_REPORT: list[str] = []
WORKER_REPORT_KEY = "e2e_stack_report"
"""Where a pytest-xdist worker puts the lines for the controller (`pytest_sessionfinish`)."""


def _report(line: str) -> None:
    """A line for the end of pytest's output (start and stop times of the stack)."""
    _REPORT.append(line)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _REPORT:
        terminalreporter.section("end-to-end stack")
        for line in _REPORT:
            terminalreporter.write_line(line)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """In a pytest-xdist worker, hand the lines to the controller, which prints them
    (tests/conftest.py): a worker's own terminal summary is never shown."""
    output = getattr(session.config, "workeroutput", None)
    if output is not None and _REPORT:
        output[WORKER_REPORT_KEY] = list(_REPORT)


def _kill_leftover_jobs(project_dir: Path) -> None:
    """SIGKILL the process group of any local job still running under ``project_dir``."""
    import psutil

    own_group = os.getpgid(0)
    for process in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error, OSError):
            cmdline = " ".join(process.info["cmdline"] or [])
            if str(project_dir) in cmdline and "tuneloop.local" in cmdline:
                group = os.getpgid(process.info["pid"])
                if group != own_group:
                    os.killpg(group, signal.SIGKILL)


# -- browser -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium, headless, driven by Playwright (its own driver; no browser download).

    Per module: Playwright's sync API keeps an event loop in this thread while it is open, and
    code that runs its own loop afterwards (``dag.test()``'s inline triggers) must not meet it."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing; install Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def browser_page(browser: Any, stack: Stack) -> Iterator[Any]:
    """A fresh browser context logged in to the Airflow UI as admin."""
    context = browser.new_context(base_url=stack.api_url, viewport={"width": 1400, "height": 900})
    context.set_default_timeout(60_000)
    page = context.new_page()
    try:
        login(page, stack.airflow.password("admin"))
        yield page
    finally:
        context.close()


def login(page: Any, password: str, username: str = "admin") -> None:
    """Log in at /auth/login (SimpleAuthManager's form) and wait for the UI's home page."""
    page.goto("/auth/login")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(lambda url: "/auth/login" not in url)
