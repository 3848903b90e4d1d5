"""Airflow for the integration tests: a migrated SQLite database and helpers to run DAGs.

The environment (a throwaway AIRFLOW_HOME, the test DAGs folder) is set by ``airflow_env``,
imported from tests/conftest.py before anything imports Airflow. The database is migrated once
per session.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from airflow_env import AIRFLOW_ENV
from airflow_env import AIRFLOW_HOME as _HOME

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
DAGS = Path(__file__).resolve().parent / "dags"


@pytest.fixture(scope="session")
def airflow_db() -> Iterator[Path]:
    """A migrated Airflow metadata database for this session."""
    from airflow.utils import db

    db.initdb()
    yield _HOME


@pytest.fixture(scope="session")
def dags(airflow_db: Path) -> dict[str, Any]:
    """The test DAGs, parsed from the DAGs folder (dag.test needs them serialized from there)."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    assert not bag.import_errors, bag.import_errors
    return bag.dags


class Airflow:
    """Run the test DAGs and look at what Airflow recorded."""

    def __init__(self, dags: dict[str, Any]) -> None:
        self.dags = dags

    def run_dag(self, dag: Any, conf: dict[str, Any], logical_date: datetime | None = None) -> Any:
        """``dag.test()`` with ``conf``: runs every task in this process, triggers inline."""
        return dag.test(run_conf=conf, logical_date=logical_date)

    def task_instance(self, dag_id: str, run_id: str, task_id: str) -> Any:
        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.session import create_session
        from sqlalchemy import select

        with create_session() as session:
            ti = session.scalar(
                select(TaskInstance).where(
                    TaskInstance.dag_id == dag_id,
                    TaskInstance.run_id == run_id,
                    TaskInstance.task_id == task_id,
                )
            )
            session.expunge(ti)
            return ti

    def rerun_task(self, dag: Any, run_id: str, task_id: str) -> Any:
        """Clear one task of an existing run and run it again, as a person clearing it in the UI
        would, keeping the run (and so the task's state store). Returns the task instance."""
        from airflow.models.taskinstance import TaskInstance, clear_task_instances
        from airflow.sdk.definitions.dag import _run_task
        from airflow.utils.session import create_session
        from airflow.utils.state import DagRunState, TaskInstanceState
        from sqlalchemy import select

        with create_session() as session:
            ti = session.scalar(
                select(TaskInstance).where(
                    TaskInstance.dag_id == dag.dag_id,
                    TaskInstance.run_id == run_id,
                    TaskInstance.task_id == task_id,
                )
            )
            clear_task_instances([ti], session, dag_run_state=DagRunState.RUNNING)
            session.flush()
            ti.try_number += 1
            ti.state = TaskInstanceState.SCHEDULED
            session.commit()
            session.refresh(ti)
            session.expunge(ti)
        _run_task(ti=ti, task=dag.task_dict[task_id], run_triggerer=True)
        return self.task_instance(dag.dag_id, run_id, task_id)

    def run_dag_in_subprocess(
        self,
        dag_id: str,
        conf: dict[str, Any],
        logical_date: datetime,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """``dag.test()`` in a child process, which dies on purpose where ``env`` sets
        TUNELOOP_CRASH_AT (``fakes.crash_points``)."""
        argv, child_env = self._child(dag_id, conf, logical_date, env)
        return subprocess.run(argv, env=child_env, capture_output=True, text=True, timeout=180)

    def start_dag_in_subprocess(
        self, dag_id: str, conf: dict[str, Any], logical_date: datetime, log: Path
    ) -> subprocess.Popen[bytes]:
        """The same, not waited for, in its own process group (to be killed), output to ``log``."""
        argv, child_env = self._child(dag_id, conf, logical_date, None)
        with log.open("wb") as out:
            return subprocess.Popen(
                argv, env=child_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    @staticmethod
    def _child(
        dag_id: str, conf: dict[str, Any], logical_date: datetime, env: dict[str, str] | None
    ) -> tuple[list[str], dict[str, str]]:
        import json

        code = (
            "import json, sys\n"
            "from datetime import datetime\n"
            "from fakes import crash_points\n"
            "crash_points.install_from_env()\n"
            "from airflow.dag_processing.dagbag import DagBag\n"
            f"bag = DagBag(dag_folder={str(DAGS)!r})\n"
            f"bag.dags[{dag_id!r}].test(run_conf=json.loads(sys.argv[1]),"
            f" logical_date=datetime.fromisoformat({logical_date.isoformat()!r}))\n"
        )
        pythonpath = os.pathsep.join([str(REPO / "plugins"), str(TESTS)])
        child_env = {**os.environ, **AIRFLOW_ENV, "PYTHONPATH": pythonpath, **(env or {})}
        return [sys.executable, "-c", code, json.dumps(conf)], child_env

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        """An XCom value as stored in the metadata database."""
        import json

        from airflow.models.xcom import XComModel
        from airflow.utils.session import create_session
        from sqlalchemy import select

        with create_session() as session:
            value = session.scalar(
                select(XComModel.value).where(
                    XComModel.dag_id == dag_id,
                    XComModel.run_id == run_id,
                    XComModel.task_id == task_id,
                    XComModel.key == key,
                )
            )
        try:
            return json.loads(value) if isinstance(value, str) else value
        except json.JSONDecodeError:
            return value


@pytest.fixture(scope="session")
def airflow(dags: dict[str, Any]) -> Airflow:
    return Airflow(dags)


@pytest.fixture
def local_backend(tmp_path: Path) -> dict[str, Any]:
    """A local backend config whose jobs run the instant entry point, under tmp_path."""
    from tuneloop.jobs.local import LocalJobBackend

    backend = LocalJobBackend(
        str(tmp_path / "jobs"),
        entrypoint="fakes.instant_jobs:run",
        python_path=[str(TESTS)],
        grace=2.0,
    )
    return backend.config()
