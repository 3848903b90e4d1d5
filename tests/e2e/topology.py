"""The Airflow the end-to-end tests start: which components, which ``airflow`` commands, which
settings. ``conftest.py`` starts exactly this; ``tests/unit/test_compose_file.py`` holds the
repository's ``docker-compose.yaml`` to the same components and settings, so the deployment
users run and the one the tests drive cannot drift apart.

Everything here is data: no process is started and no service is needed to build it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
WORKERS = ("worker-1", "worker-2")
WORKER_SLOTS = 2
DATABASE = "airflow"
"""The metadata database's name (Celery's results live there too)."""

MLFLOW_DATABASE = "mlflow"
"""The MLflow tracking server's backend store: its own database on the same PostgreSQL."""

POSTGRES_MAJOR = 15
"""PostgreSQL's major version: Debian 12's package, which the stack runs (conftest checks the
server it starts); docker-compose.yaml's image is the same major."""
REDIS_MAJOR_MINOR = (7, 0)
"""Redis's version: Debian 12's package, likewise checked; docker-compose.yaml's image tag."""

MLFLOW_SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
"""The tracking server runs no job runner (MLflow's jobs are not used): one process less."""


def mlflow_server_argv(*, host: str, port: int, workers: int = 1) -> list[str]:
    """The tracking server's ``mlflow`` command. The backend store and the artifact folder are
    given as MLFLOW_BACKEND_STORE_URI and MLFLOW_ARTIFACTS_DESTINATION (`mlflow_server_env`):
    artifacts go through the server (proxied), so clients need no access to the folder."""
    return ["server", "--host", host, "--port", str(port), "--workers", str(workers)]


def mlflow_server_env(*, backend_store_uri: str, artifacts_destination: str) -> dict[str, str]:
    return {
        "MLFLOW_BACKEND_STORE_URI": backend_store_uri,
        "MLFLOW_ARTIFACTS_DESTINATION": artifacts_destination,
        **MLFLOW_SERVER_ENV,
    }


CELERY_WORKER_ARGV = ("celery", "worker")
"""A Celery worker's ``airflow`` command, before its own name and slots."""


def celery_worker(name: str, slots: int = WORKER_SLOTS) -> Any:
    """One Celery worker (``tuneloop.demo.embedded_airflow.Component``), named ``name`` in
    Celery, with its own log-server port (two workers share this machine)."""
    from tuneloop.demo.embedded_airflow import Component, free_port

    return Component(
        name,
        [*CELERY_WORKER_ARGV, "-H", f"{name}@%h", "-c", str(slots)],
        env={"AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port())},
    )


def components(workers: Sequence[str] = WORKERS) -> list[Any]:
    """API server, scheduler, dag-processor and triggerer, and one Celery worker per name."""
    from tuneloop.demo.embedded_airflow import default_components

    return [*default_components(), *(celery_worker(name) for name in workers)]


def celery_settings(*, broker_url: str, database_url: str) -> dict[str, str]:
    """CeleryExecutor on Redis and PostgreSQL, sized for a 2-core machine."""
    return {
        "AIRFLOW__CELERY__BROKER_URL": broker_url,
        # psycopg 3 for the sync and the async engine (Airflow would pick asyncpg otherwise).
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": database_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + database_url,
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(WORKER_SLOTS),
        "AIRFLOW__CORE__PARALLELISM": "8",
        "AIRFLOW__API__WORKERS": "2",
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
        # A task whose process died (a killed worker) is seen within half a minute, not five:
        # its supervisor heartbeats every few seconds (below), so 30 s is many missed beats,
        # and the scheduler looks every 2 s instead of 10.
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
        # A round is a dozen tasks one after another; an idle scheduler looks for the next one
        # twice a second (as the demo's does), not once.
        "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5",
        # Workers notice a deferred task's exit within a second, and its trigger waits 2 s
        # (pipeline.triggers.settle_seconds) rather than 8 s at the default interval; the wait
        # is the one derived from that interval (the dag.test tests turn it off).
        "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
        "AIRFLOW__TUNELOOP__TRIGGER_SETTLE_SECONDS": "",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
    }


def tuneloop_settings(*, campaigns_dir: Path, project_dir: Path, fake_jobs: Path) -> dict[str, str]:
    """Where tuneloop finds campaigns and keeps its files; the tests' fake job backend."""
    return {
        "TUNELOOP_CAMPAIGNS_DIR": str(campaigns_dir),
        "TUNELOOP_PROJECT_DIR": str(project_dir),
        "TUNELOOP_FAKE_JOBS": str(fake_jobs),
        "TUNELOOP_HOME": str(project_dir / "home"),
        # Not inherited from the test process: no crash points, no test DAG folders.
        "TUNELOOP_CRASH_AT": "",
        "TUNELOOP_TEST_CAMPAIGNS": "",
    }


def stack_env(
    airflow_home: Path,
    *,
    port: int,
    database_url: str,
    broker_url: str,
    campaigns_dir: Path,
    project_dir: Path,
    fake_jobs: Path,
) -> dict[str, str]:
    """Every setting the stack's Airflow processes share: the repository's dags/ and plugins/,
    the CeleryExecutor on ``broker_url`` and ``database_url``, and tuneloop's folders."""
    from tuneloop.demo.embedded_airflow import airflow_env

    return airflow_env(
        airflow_home,
        port=port,
        dags_folder=REPO / "dags",
        plugins_folder=REPO / "plugins",
        sql_alchemy_conn=database_url,
        executor="CeleryExecutor",
        extra={
            **celery_settings(broker_url=broker_url, database_url=database_url),
            **tuneloop_settings(
                campaigns_dir=campaigns_dir, project_dir=project_dir, fake_jobs=fake_jobs
            ),
        },
    )
