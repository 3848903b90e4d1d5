"""embedded_airflow: settings and passwords without processes; then a real Airflow (api-server,
scheduler, dag-processor, triggerer on SQLite) on a folder of small test DAGs, driven through
AirflowClient, with the triggerer killed and started again and nothing left after ``stop``."""

from __future__ import annotations

import os
import signal
import socket
import stat
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tuneloop.demo.embedded_airflow import (
    AirflowApiError,
    AirflowClient,
    AirflowProcesses,
    Component,
    airflow_env,
    default_components,
    ensure_password,
    free_port,
    passwords_file,
)

# Airflow's start (up to 300 s, in the first test that uses it), a DAG's parse (180 s) and a
# run (240 s) may each take long on a busy machine: more than pytest's default limit together.
pytestmark = pytest.mark.timeout(900)

# --- without processes -------------------------------------------------------------------------


def test_free_port_can_be_bound() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_airflow_env_points_everything_at_the_home_and_port(tmp_path: Path) -> None:
    env = airflow_env(
        tmp_path / "home",
        port=18123,
        dags_folder=tmp_path / "dags",
        plugins_folder=tmp_path / "plugins",
        extra={"AIRFLOW__CORE__PARALLELISM": "3"},
    )
    assert env["AIRFLOW_HOME"] == str(tmp_path / "home")
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == f"sqlite:///{tmp_path / 'home/airflow.db'}"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:18123/execution/"
    assert env["AIRFLOW__API__PORT"] == "18123"
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(tmp_path / "dags")
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] == "False"
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] == "admin:admin"
    assert env["AIRFLOW__CORE__PARALLELISM"] == "3"
    logs = {
        env["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"],
        env["AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT"],
    }
    assert len(logs) == 2 and not logs & {"8793", "8794", "18123"}
    postgres = airflow_env(
        tmp_path,
        port=1,
        dags_folder=tmp_path,
        plugins_folder=tmp_path,
        sql_alchemy_conn="postgresql+psycopg2://u@127.0.0.1:5/db",
        executor="CeleryExecutor",
    )
    assert postgres["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql")
    assert postgres["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"


def test_password_file_is_written_once_private_and_kept(tmp_path: Path) -> None:
    env = {"AIRFLOW_HOME": str(tmp_path)}
    path = passwords_file(env)
    assert path == tmp_path / "simple_auth_manager_passwords.json.generated"
    first = ensure_password(path)
    assert len(first) >= 12
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_password(path) == first
    other = ensure_password(path, "viewer")
    assert other != first and ensure_password(path) == first
    assert passwords_file({**env, "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": "/x/p"}) == (
        Path("/x/p")
    )


def test_processes_see_only_the_airflow_settings_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "postgresql://elsewhere/prod")
    monkeypatch.setenv("AIRFLOW_CONFIG", "/elsewhere/airflow.cfg")
    monkeypatch.setenv("TUNELOOP_SOMETHING", "kept")
    env = airflow_env(tmp_path, port=2, dags_folder=tmp_path, plugins_folder=tmp_path)
    processes = AirflowProcesses(
        env,
        [Component("scheduler", ["scheduler"]), Component("w", ["celery", "worker"], {"X": "1"})],
        tmp_path / "logs",
    )
    scheduler = processes.process_env("scheduler")
    assert scheduler["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("sqlite:///")
    assert "AIRFLOW_CONFIG" not in scheduler and "X" not in scheduler
    assert scheduler["TUNELOOP_SOMETHING"] == "kept"
    assert processes.process_env("w")["X"] == "1"
    assert scheduler["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert processes.api_url == "http://127.0.0.1:2"
    assert [c.health_key for c in default_components()] == [
        None,
        "scheduler",
        "dag_processor",
        "triggerer",
    ]
    with pytest.raises(ValueError, match="unique"):
        AirflowProcesses(env, [Component("a", ["x"]), Component("a", ["y"])], tmp_path)


def test_wait_for_returns_the_value_or_names_what_it_waited_for() -> None:
    client = AirflowClient("http://127.0.0.1:9", "admin", "unused")
    seen = iter([None, False, {"ok": 1}])
    assert client.wait_for(lambda: next(seen), timeout=30, what="x", interval=0.01) == {"ok": 1}
    with pytest.raises(TimeoutError, match=r"the answer: not within 0s \(last seen: \[\]\)"):
        client.wait_for(lambda: [], timeout=0, what="the answer")
    client.close()


# --- a real Airflow ----------------------------------------------------------------------------

DAGS = {
    "embedded_basic.py": """
        from datetime import datetime, timedelta

        from airflow.providers.standard.sensors.time_delta import TimeDeltaSensor
        from airflow.sdk import DAG, task

        with DAG("embedded_basic", schedule=None, start_date=datetime(2026, 1, 1)):

            @task
            def answer(**context):
                print("computing the answer")
                return {"value": 42, "conf": context["dag_run"].conf}

            wait = TimeDeltaSensor(task_id="wait", delta=timedelta(seconds=1), deferrable=True)
            answer() >> wait
        """,
    "embedded_failing.py": """
        from datetime import datetime

        from airflow.sdk import DAG, task

        with DAG("embedded_failing", schedule=None, start_date=datetime(2026, 1, 1)):

            @task(retries=0)
            def fail():
                raise ValueError("the detail a user needs")

            fail()
        """,
    "embedded_sleeper.py": """
        import time
        from datetime import datetime

        from airflow.sdk import DAG, task

        with DAG("embedded_sleeper", schedule=None, start_date=datetime(2026, 1, 1)):

            @task
            def sleep_long():
                time.sleep(600)

            sleep_long()
        """,
}


@pytest.fixture(scope="module")
def airflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowProcesses]:
    root = tmp_path_factory.mktemp("embedded")
    dags = root / "dags"
    dags.mkdir()
    for name, text in DAGS.items():
        (dags / name).write_text(textwrap.dedent(text))
    env = airflow_env(
        root / "home",
        port=free_port(),
        dags_folder=dags,
        plugins_folder=root / "plugins",
        extra={"AIRFLOW__CORE__PARALLELISM": "2"},
    )
    processes = AirflowProcesses(env, default_components(), root / "logs")
    processes.start(timeout=300)
    try:
        yield processes
    finally:
        processes.stop()


def _parsed(client: AirflowClient, dag_id: str) -> dict:
    return client.wait_for(lambda: client.dag(dag_id), timeout=180, what=f"{dag_id} parsed")


@pytest.mark.slow
def test_a_triggered_run_succeeds_with_a_deferred_task(airflow: AirflowProcesses) -> None:
    client = airflow.client()
    assert airflow.unhealthy(airflow.components) == []
    assert _parsed(client, "embedded_basic")["is_paused"] is False
    run = client.trigger("embedded_basic", {"who": "test"})
    done = client.wait_for_run("embedded_basic", run["dag_run_id"], timeout=240)
    assert done["state"] == "success", done
    assert done["run_type"] == "manual"
    states = {ti["task_id"]: ti["state"] for ti in client.task_instances(*_key(done))}
    assert states == {"answer": "success", "wait": "success"}
    assert client.xcom(*_key(done), "answer") == {"value": 42, "conf": {"who": "test"}}
    assert "computing the answer" in client.task_log(*_key(done), "answer", 1)
    assert [r["dag_run_id"] for r in client.dag_runs("embedded_basic")] == [run["dag_run_id"]]
    with pytest.raises(AirflowApiError) as missing:
        client.dag_run("embedded_basic", "no-such-run")
    assert missing.value.status == 404
    assert client.dag("no_such_dag") is None


@pytest.mark.slow
def test_a_failed_task_log_carries_the_exception(airflow: AirflowProcesses) -> None:
    client = airflow.client()
    _parsed(client, "embedded_failing")
    run = client.trigger("embedded_failing")
    done = client.wait_for_run("embedded_failing", run["dag_run_id"], timeout=240)
    assert done["state"] == "failed"
    [ti] = client.task_instances(*_key(done))
    assert (ti["task_id"], ti["state"], ti["try_number"]) == ("fail", "failed", 1)
    log = client.task_log(*_key(done), "fail", 1)
    assert "ValueError: the detail a user needs" in log


@pytest.mark.slow
def test_a_killed_triggerer_is_started_again_and_runs_triggers(airflow: AirflowProcesses) -> None:
    client = airflow.client()
    _parsed(client, "embedded_basic")
    old = airflow.pids()["triggerer"]
    airflow.kill("triggerer")
    assert not airflow.running("triggerer")
    assert not psutil.pid_exists(old) or psutil.Process(old).status() == psutil.STATUS_ZOMBIE
    airflow.start_component("triggerer")  # waits for a heartbeat of the new process
    assert airflow.pids()["triggerer"] != old
    assert "triggerer" not in airflow.unhealthy(["triggerer"])
    run = client.trigger("embedded_basic")
    done = client.wait_for_run("embedded_basic", run["dag_run_id"], timeout=240)
    assert done["state"] == "success", done


@pytest.mark.slow
def test_cli_import_errors_and_the_password(airflow: AirflowProcesses) -> None:
    listed = airflow.cli("dags", "list", "-o", "plain")
    assert "embedded_basic" in listed.stdout
    assert airflow.cli("no-such-command", check=False).returncode != 0
    dags = Path(airflow.env["AIRFLOW__CORE__DAGS_FOLDER"])
    (dags / "embedded_broken.py").write_text(
        "from airflow.sdk import DAG\nraise ValueError('nope')\n"
    )
    client = airflow.client()
    errors = client.wait_for(
        lambda: [e for e in client.import_errors() if "embedded_broken" in e["filename"]],
        timeout=180,
        what="the import error of embedded_broken.py",
    )
    assert "nope" in errors[0]["stack_trace"]
    with pytest.raises(AirflowApiError) as refused:
        AirflowClient(airflow.api_url, "admin", "wrong").dags()
    assert refused.value.status == 401
    assert "embedded_basic" in {d["dag_id"] for d in client.dags()}


@pytest.mark.slow
def test_stop_leaves_no_process_behind_even_with_a_task_running(
    airflow: AirflowProcesses,
) -> None:
    client = airflow.client()
    _parsed(client, "embedded_sleeper")
    run = client.trigger("embedded_sleeper")

    def running() -> bool:
        tis = client.task_instances("embedded_sleeper", run["dag_run_id"])
        return any(ti["state"] == "running" for ti in tis)

    client.wait_for(running, timeout=240, what="sleep_long running")
    groups = set(airflow.pids().values())
    family = []
    for pid in groups:
        family.append(psutil.Process(pid))
        family.extend(psutil.Process(pid).children(recursive=True))
    own_groups = {p.pid for p in family if _pgid(p.pid) == p.pid} - groups
    assert own_groups, "the task process runs in a process group of its own"
    began = time.monotonic()
    airflow.stop(grace=10)
    assert time.monotonic() - began < 120  # the grace, not the task's 600 s sleep
    assert airflow.pids() == {}
    left = [p for p in family if p.is_running() and _status(p) != psutil.STATUS_ZOMBIE]
    assert left == []
    in_groups = [  # zombies are dead (some containers' init never reaps them)
        (p.pid, p.name())
        for p in psutil.process_iter()
        if _pgid(p.pid) in groups | own_groups and _status(p) != psutil.STATUS_ZOMBIE
    ]
    assert in_groups == []
    airflow.stop()  # idempotent
    with pytest.raises(Exception, match="not running"):
        airflow.kill("scheduler", signal.SIGTERM)


def _key(run: dict) -> tuple[str, str]:
    return run["dag_id"], run["dag_run_id"]


def _status(process: psutil.Process) -> str:
    try:
        return str(process.status())
    except psutil.Error:
        return psutil.STATUS_ZOMBIE


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None
