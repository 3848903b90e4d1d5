"""The worker dies at the worst moments; clearing and rerunning the task still makes ONE job.

Each case runs the DAG in a child process that really dies (``os._exit`` at the crash point
``TUNELOOP_CRASH_AT`` names, where ``fakes.crash_points`` wraps the operator, or SIGKILL from here
while the task is deferred), then clears the task in the same DAG run and runs it again here,
keeping the task's state.
"""

from __future__ import annotations

import os
import signal
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from fakes.crash_points import CRASH_ENV, CRASH_EXIT_CODE
from tuneloop.jobs.base import JobSpec, JobState, job_name
from tuneloop.jobs.local import LocalJobBackend
from tuneloop.pipeline.operators import HANDLE_KEY

pytestmark = pytest.mark.slow  # each case starts Airflow in a child process


def make_job(tmp_path: Path, **fake: Any) -> dict[str, Any]:
    recipe = {"run": {"model_type": "tiny-chat"}, "fake": fake}
    return JobSpec(
        name=job_name("crash", 1, "sft", recipe),
        kind="train",
        method="sft",
        recipe=recipe,
        output_uri=str(tmp_path / "out"),
        labels={"campaign": "crash", "round": "1", "stage": "sft"},
    ).model_dump(mode="json")


def run_id_of(dag_id: str, logical_date: datetime) -> str:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return session.scalar(
            select(DagRun.run_id).where(
                DagRun.dag_id == dag_id, DagRun.logical_date == logical_date
            )
        )


def stored_handle(run_id: str) -> Any:
    from airflow.models.task_state_store import TaskStateStoreModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return session.scalar(
            select(TaskStateStoreModel.value).where(
                TaskStateStoreModel.run_id == run_id, TaskStateStoreModel.key == HANDLE_KEY
            )
        )


def jobs_created(backend: dict[str, Any]) -> list[str]:
    return [status.name for status in LocalJobBackend(backend["root"]).find({"campaign": "crash"})]


@pytest.mark.parametrize(
    ("crash_at", "handle_persisted", "job_state"),
    [
        ("after_submit", False, {JobState.PENDING, JobState.RUNNING}),
        ("deferring", True, {JobState.PENDING, JobState.RUNNING}),
        ("after_complete", True, {JobState.SUCCEEDED}),
    ],
)
def test_crash_then_clear_makes_one_job(
    airflow: Any,
    dags: dict,
    local_backend: dict,
    tmp_path: Path,
    crash_at: str,
    handle_persisted: bool,
    job_state: set[JobState],
) -> None:
    # The job waits for its release until the crash, so that it is still running when the task
    # would defer (a task that finds its job ended concludes it without deferring).
    release = tmp_path / "release"
    job = make_job(tmp_path, log_lines=2, wait_for=str(release))
    if crash_at == "after_complete":
        release.touch()
    day = {"after_submit": 2, "after_complete": 3, "deferring": 5}[crash_at]
    when = datetime(2026, 1, day, tzinfo=UTC)
    child = airflow.run_dag_in_subprocess(
        "tuneloop_train", {"backend": local_backend, "job": job}, when, {CRASH_ENV: crash_at}
    )
    assert child.returncode == CRASH_EXIT_CODE, child.stderr[-3000:]
    assert jobs_created(local_backend) == [job["name"]]
    backend = LocalJobBackend(local_backend["root"])
    assert backend.status(job["name"]).state in job_state
    run_id = run_id_of("tuneloop_train", when)
    assert (stored_handle(run_id) is not None) is handle_persisted

    release.touch()
    ti = airflow.rerun_task(dags["tuneloop_train"], run_id, "train")
    assert ti.state == "success"
    assert jobs_created(local_backend) == [job["name"]]
    assert airflow.xcom("tuneloop_train", run_id, "train")["state"] == "SUCCEEDED"


def test_crash_during_deferral_then_clear_adopts_the_running_job(
    airflow: Any, dags: dict, local_backend: dict, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    job = make_job(tmp_path, wait_for=str(release))
    when = datetime(2026, 1, 4, tzinfo=UTC)
    conf = {"backend": local_backend, "job": job}
    child = airflow.start_dag_in_subprocess("tuneloop_train", conf, when, tmp_path / "child.log")
    backend = LocalJobBackend(local_backend["root"])
    try:
        # The task has deferred (its handle is stored) and its job runs: it waits for release.
        deadline = time.monotonic() + 240  # generous: the child starts Airflow on a busy machine
        while True:
            assert child.poll() is None, (tmp_path / "child.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the task never deferred with its job running"
            run_id = run_id_of("tuneloop_train", when)
            # A stored handle means the job was submitted: its status can be read.
            if (
                run_id
                and stored_handle(run_id) is not None
                and backend.status(job["name"]).state is JobState.RUNNING
            ):
                break
            time.sleep(0.2)
    finally:
        os.killpg(child.pid, signal.SIGKILL)  # the worker and its in-line trigger die
        child.wait()
    assert backend.status(job["name"]).state is JobState.RUNNING

    release.touch()
    ti = airflow.rerun_task(dags["tuneloop_train"], run_id, "train")
    assert ti.state == "success"
    assert jobs_created(local_backend) == [job["name"]]
