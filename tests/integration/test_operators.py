"""The job operators run by Airflow (dag.test): real job processes on the local backend, and a
scripted backend for the states a local job cannot reach (retryable failures, throttling)."""

from __future__ import annotations

import json
import re
import threading
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest

from tuneloop.errors import Problem
from tuneloop.jobs.base import (
    JobNotFoundError,
    JobSpec,
    JobState,
    JobStatus,
    LogChunk,
    TransientJobError,
    UserJobError,
    job_name,
)
from tuneloop.jobs.local import LocalJobBackend
from tuneloop.links import mlflow_link_url
from tuneloop.pipeline.operators import (
    CONSOLE_URL_KEY,
    EvaluationJobOperator,
    JobConsoleLink,
    JobOperator,
    MlflowRunLink,
    TrainingJobOperator,
    attempt_name,
)


class ScriptedBackend:
    """A backend whose answers a test writes down: a list of states per job, errors to raise.

    Instances built from the same ``script`` id share one script, as the operator's backend and
    the trigger's (rebuilt from ``config()``) must."""

    type: ClassVar[str] = f"{__name__}:ScriptedBackend"
    scripts: ClassVar[dict[str, dict[str, Any]]] = {}
    lock = threading.Lock()

    def __init__(self, script: str) -> None:
        self.script = script

    @classmethod
    def new(cls, script: str, **plan: Any) -> dict[str, Any]:
        """Register a script; returns the backend config. ``plan`` keys: ``states`` (job name ->
        states, the last one repeats), ``submit_errors`` (exceptions ``submit`` raises first),
        ``failure`` (job name -> (reason, retryable))."""
        cls.scripts[script] = {
            "states": plan.get("states", {}),
            "submit_errors": list(plan.get("submit_errors", [])),
            "failure": plan.get("failure", {}),
            "jobs": {},
            "submits": 0,
            "cancels": [],
        }
        return {"type": cls.type, "script": script}

    @property
    def plan(self) -> dict[str, Any]:
        return self.scripts[self.script]

    def config(self) -> dict[str, Any]:
        return {"type": self.type, "script": self.script}

    def submit(self, spec: JobSpec) -> JobStatus:
        with self.lock:
            self.plan["submits"] += 1
            if self.plan["submit_errors"]:
                raise self.plan["submit_errors"].pop(0)
            self.plan["jobs"].setdefault(spec.name, {"polls": 0, "stopped": False})
        return self.status(spec.name)

    def status(self, name: str) -> JobStatus:
        with self.lock:
            job = self.plan["jobs"].get(name)
            if job is None:
                raise JobNotFoundError([Problem("name", f"no job {name}")])
            states = self.plan["states"].get(name, ["SUCCEEDED"])
            state = "STOPPED" if job["stopped"] else states[min(job["polls"], len(states) - 1)]
            job["polls"] += 1
        reason, retryable = self.plan["failure"].get(name, ("", False))
        failed = state == "FAILED"
        return JobStatus(
            name=name,
            state=JobState(state),
            failure_reason=reason if failed else "",
            retryable=retryable and failed,
            result_uri=f"scripted://{name}",
            console_url=f"https://console.example/{name}",
        )

    def cancel(self, name: str) -> JobStatus:
        with self.lock:
            self.plan["cancels"].append(name)
            self.plan["jobs"][name]["stopped"] = True
        return self.status(name)

    def logs(self, name: str, cursor: str = "") -> LogChunk:
        return LogChunk(lines=[], cursor=cursor)

    def find(self, labels: Mapping[str, str]) -> list[JobStatus]:
        return [self.status(name) for name in self.plan["jobs"]]


def make_job(tmp_path: Path, kind: str = "train", method: str = "sft", **fake: Any) -> dict:
    recipe = {"run": {"model_type": "tiny-chat"}, "fake": fake}
    return JobSpec(
        name=job_name("it", 1, method, recipe),
        kind=kind,
        method=method,
        recipe=recipe,
        output_uri=str(tmp_path / "out"),
        labels={"campaign": "it", "round": "1", "stage": method},
    ).model_dump(mode="json")


def job_dirs(backend: dict[str, Any]) -> list[str]:
    return sorted(p.name for p in Path(backend["root"]).iterdir() if not p.name.startswith("."))


def printed(out: str, name: str, number: int) -> int:
    """How often the job's log line ``number`` appears in the task log output."""
    return len(re.findall(rf"\] {name} line {number}\b", out))


# -- the local backend, real job processes ---------------------------------------------------


@pytest.mark.slow  # the session's first dag.test starts Airflow's in-process API (~5-10 s)
def test_training_job_runs_once_and_returns_its_status(
    airflow: Any,
    dags: dict,
    local_backend: dict,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    job = make_job(tmp_path, log_lines=3, sleep=0.5)
    url = "http://mlflow.example/#/experiments/1/runs/abc"
    run = airflow.run_dag(
        dags["tuneloop_train"], {"backend": local_backend, "job": job, "mlflow_run_url": url}
    )
    assert run.state == "success"
    result = airflow.xcom("tuneloop_train", run.run_id, "train")
    assert result["state"] == "SUCCEEDED" and result["name"] == job["name"]
    assert Path(result["result_uri"], "manifest.json").is_file()
    assert job_dirs(local_backend) == [job["name"]]
    out = capsys.readouterr().out
    for i in (1, 2, 3):
        assert printed(out, job["name"], i) == 1, out

    # Extra links, as the worker stored them for the API server.
    console = airflow.xcom("tuneloop_train", run.run_id, "train", "_link_JobConsoleLink")
    assert console == result["console_url"] and console.startswith("http")  # the job's page
    assert airflow.xcom("tuneloop_train", run.run_id, "train", "_link_MlflowRunLink") == url

    # A second run of the same job (same name) adopts the finished job: still one job.
    conf = {"backend": local_backend, "job": job, "mlflow_run_url": ""}
    again = airflow.run_dag(dags["tuneloop_train"], conf)
    assert again.state == "success"
    assert airflow.xcom("tuneloop_train", again.run_id, "train")["name"] == job["name"]
    assert job_dirs(local_backend) == [job["name"]]
    # No URL given: the link is the API server's page that finds the task's MLflow run.
    assert airflow.xcom("tuneloop_train", again.run_id, "train", "_link_MlflowRunLink") == (
        mlflow_link_url("tuneloop_train", again.run_id, "train")
    )


def test_evaluation_operator_returns_metrics(
    airflow: Any, dags: dict, local_backend: dict, tmp_path: Path
) -> None:
    job = make_job(tmp_path, kind="eval", method="eval", metrics={"accuracy": 0.8, "f1": 0.6})
    run = airflow.run_dag(dags["tuneloop_evaluate"], {"backend": local_backend, "job": job})
    assert run.state == "success"
    result = airflow.xcom("tuneloop_evaluate", run.run_id, "evaluate")
    assert result["metrics"] == {"accuracy": 0.8, "f1": 0.6}
    assert result["state"] == "SUCCEEDED"


def test_job_spec_may_come_from_an_upstream_task(
    airflow: Any, dags: dict, local_backend: dict, tmp_path: Path
) -> None:
    job = make_job(tmp_path)
    run = airflow.run_dag(dags["tuneloop_train_from_xcom"], {"backend": local_backend, "job": job})
    assert run.state == "success"
    assert airflow.xcom("tuneloop_train_from_xcom", run.run_id, "train")["name"] == job["name"]


def test_user_error_fails_at_once_with_the_reason_and_a_clear_reruns(
    airflow: Any,
    dags: dict,
    local_backend: dict,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"stage=sft": {"fail": "row 7 has no assistant turn"}}))
    backend = {**local_backend, "env": {"TUNELOOP_FAKE_JOBS": str(script)}}
    job = make_job(tmp_path)
    dag = dags["tuneloop_train"]
    run = airflow.run_dag(dag, {"backend": backend, "job": job})
    assert run.state == "failed"
    ti = airflow.task_instance("tuneloop_train", run.run_id, "train")
    assert ti.state == "failed" and ti.try_number == 1
    assert "row 7 has no assistant turn" in capsys.readouterr().out

    # The user fixes the data and clears the task: a new attempt of the same job runs.
    script.write_text(json.dumps({}))
    ti = airflow.rerun_task(dag, run.run_id, "train")
    assert ti.state == "success"
    assert job_dirs(backend) == sorted([job["name"], attempt_name(job["name"], 2)])


@pytest.mark.slow
def test_a_worker_that_cannot_see_the_job_fails_instead_of_starting_a_second(
    airflow: Any,
    dags: dict,
    local_backend: dict,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A retry on a worker whose jobs root does not hold the job an earlier try started (the
    root is not shared storage) must not submit it again: it fails, saying why."""
    import shutil

    job = make_job(tmp_path)
    dag = dags["tuneloop_train"]
    run = airflow.run_dag(dag, {"backend": local_backend, "job": job})
    assert run.state == "success"
    root = Path(local_backend["root"])
    shutil.move(root, tmp_path / "elsewhere")  # what another worker's own jobs root looks like
    capsys.readouterr()

    ti = airflow.rerun_task(dag, run.run_id, "train")
    assert ti.state == "failed"
    assert not root.exists() or job_dirs(local_backend) == []  # nothing was submitted again
    out = capsys.readouterr().out
    assert f"job {job['name']} was submitted by an earlier try of this task on " in out
    assert "no second job is started" in out
    assert f"Local jobs live under the jobs root {root}: every worker must see" in out


def test_failure_callback_cancels_the_job_at_the_deadline(
    airflow: Any, dags: dict, local_backend: dict, tmp_path: Path
) -> None:
    dag = dags["tuneloop_train"]
    task = dag.task_dict["train"]
    saved = task.execution_timeout
    from datetime import timedelta

    task.execution_timeout = timedelta(seconds=1.5)
    try:
        job = make_job(tmp_path, sleep=60)
        run = airflow.run_dag(dag, {"backend": local_backend, "job": job})
    finally:
        task.execution_timeout = saved
    assert run.state == "failed"
    backend = LocalJobBackend(local_backend["root"])
    assert backend.status(job["name"]).state is JobState.STOPPED


@pytest.mark.slow
def test_log_lines_reach_the_task_log_once_across_a_retry(
    airflow: Any,
    dags: dict,
    local_backend: dict,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The job prints 5 of its 10 lines, then waits until try 1 has reached its deadline (the
    # DAG's retry callback releases it); try 2 reconnects and streams the rest.
    release = tmp_path / "release"
    job = make_job(tmp_path, log_lines=10, wait_after=5, wait_for=str(release))
    run = airflow.run_dag(dags["tuneloop_train_retry"], {"backend": local_backend, "job": job})
    assert run.state == "success"
    assert release.exists()
    ti = airflow.task_instance("tuneloop_train_retry", run.run_id, "train")
    assert ti.try_number == 2
    out = capsys.readouterr().out
    assert "had not finished by the task's deadline" in out
    for i in range(1, 11):
        assert printed(out, job["name"], i) == 1, (i, out)
    # The lines printed after the release reached try 2's log.
    deadline_at = out.index("had not finished by the task's deadline")
    assert all(out.index(f"{job['name']} line {i}") > deadline_at for i in range(6, 11)), out
    assert job_dirs(local_backend) == [job["name"]]


def test_on_kill_cancels_the_job_this_task_started(local_backend: dict, tmp_path: Path) -> None:
    from airflow.sdk.exceptions import TaskDeferred

    job = make_job(tmp_path, sleep=60)
    operator = TrainingJobOperator(task_id="train", backend=local_backend, job=job)
    context = {"ti": _TaskInstance(), "task_state_store": _StateStore()}
    with pytest.raises(TaskDeferred):
        operator.execute(context)
    backend = LocalJobBackend(local_backend["root"])
    assert backend.status(job["name"]).state in (JobState.PENDING, JobState.RUNNING)
    operator.on_kill()
    assert backend.status(job["name"]).state is JobState.STOPPED

    # Another task's operator that never started or adopted anything cancels nothing.
    other_job = make_job(tmp_path, method="rft", sleep=60)
    backend.submit(JobSpec.model_validate(other_job))
    bystander = TrainingJobOperator(task_id="other", backend=local_backend, job=other_job)
    bystander.on_kill()
    assert backend.status(other_job["name"]).state is not JobState.STOPPED
    backend.cancel(other_job["name"])


# -- the scripted backend: transient and retryable errors ------------------------------------


def test_transient_submit_errors_are_retried_with_backoff(
    airflow: Any, dags: dict, tmp_path: Path
) -> None:
    throttled = TransientJobError([Problem("job", "ThrottlingException: Rate exceeded")])
    backend = ScriptedBackend.new(
        "throttled", submit_errors=[throttled, throttled, throttled, throttled]
    )
    job = make_job(tmp_path)
    run = airflow.run_dag(dags["tuneloop_train"], {"backend": backend, "job": job})
    assert run.state == "success"
    plan = ScriptedBackend.scripts["throttled"]
    assert plan["submits"] == 5 and list(plan["jobs"]) == [job["name"]]
    assert plan["cancels"] == []


def test_retryable_failure_starts_a_new_attempt(airflow: Any, dags: dict, tmp_path: Path) -> None:
    job = make_job(tmp_path)
    backend = ScriptedBackend.new(
        "capacity",
        states={job["name"]: ["PENDING", "FAILED"]},
        failure={job["name"]: ("InsufficientCapacity: no ml.p5.48xlarge", True)},
    )
    run = airflow.run_dag(dags["tuneloop_train"], {"backend": backend, "job": job})
    assert run.state == "success"
    plan = ScriptedBackend.scripts["capacity"]
    second = attempt_name(job["name"], 2)
    assert list(plan["jobs"]) == [job["name"], second]
    assert airflow.xcom("tuneloop_train", run.run_id, "train")["name"] == second


@pytest.mark.parametrize(
    ("plan", "expected"),
    [
        ({"failure": ("AccessDenied: role cannot read s3://data", False)}, "AccessDenied"),
        ({"submit_error": "ValidationException: bad recipe field lr"}, "bad recipe field lr"),
    ],
)
def test_user_errors_fail_without_retry(
    airflow: Any,
    dags: dict,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    plan: dict,
    expected: str,
) -> None:
    job = make_job(tmp_path)
    script = f"user-{expected[:6]}"
    if "failure" in plan:
        backend = ScriptedBackend.new(
            script, states={job["name"]: ["FAILED"]}, failure={job["name"]: plan["failure"]}
        )
    else:
        error = UserJobError([Problem("recipe", plan["submit_error"])])
        backend = ScriptedBackend.new(script, submit_errors=[error])
    dag = dags["tuneloop_train"]
    task = dag.task_dict["train"]
    task.retries = 3  # would be used, were the error retryable
    try:
        run = airflow.run_dag(dag, {"backend": backend, "job": job})
    finally:
        task.retries = 0
    assert run.state == "failed"
    assert airflow.task_instance("tuneloop_train", run.run_id, "train").try_number == 1
    assert expected in capsys.readouterr().out
    assert len(ScriptedBackend.scripts[script]["jobs"]) <= 1


# -- declarations -------------------------------------------------------------------------------


def test_template_fields_are_declared_and_rendered(
    airflow: Any, dags: dict, local_backend: dict, tmp_path: Path
) -> None:
    from airflow.models.renderedtifields import RenderedTaskInstanceFields as RTIF
    from airflow.utils.session import create_session

    for cls in (JobOperator, TrainingJobOperator, EvaluationJobOperator):
        assert set(cls.template_fields) == {"backend", "job", "mlflow_run_url"}
    job = make_job(tmp_path)
    run = airflow.run_dag(dags["tuneloop_train"], {"backend": local_backend, "job": job})
    ti = airflow.task_instance("tuneloop_train", run.run_id, "train")
    with create_session() as session:
        rendered = RTIF.get_templated_fields(ti, session=session)
    assert rendered["job"]["name"] == job["name"]
    assert rendered["backend"]["root"] == local_backend["root"]


def test_plugin_registers_both_links() -> None:
    from tuneloop_plugin import TuneloopPlugin

    names = {link.name for link in TuneloopPlugin.operator_extra_links}
    assert names == {JobConsoleLink.name, MlflowRunLink.name} == {"Job console", "MLflow run"}
    assert {type(link) for link in TrainingJobOperator.operator_extra_links} == {
        JobConsoleLink,
        MlflowRunLink,
    }
    assert CONSOLE_URL_KEY == "job_console_url"


def test_attempt_names_keep_the_digest_and_the_length_limit() -> None:
    name = job_name("a-very-long-campaign-name-indeed", 12, "sft-stage", {"x": 1})
    assert attempt_name(name, 1) == name
    second = attempt_name(name, 2)
    assert second.endswith(name[-11:] + "-a2") and len(second) <= 48


class _TaskInstance:
    """What execute needs of a task instance outside a worker: somewhere to push XCom."""

    stats_tags: ClassVar[dict[str, str]] = {}

    def __init__(self) -> None:
        self.xcom: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value


class _StateStore(defaultdict):
    """Task state outside a worker (the worker's accessor has the same get/set)."""

    def __init__(self) -> None:
        super().__init__(lambda: None)

    def set(self, key: str, value: Any) -> None:
        self[key] = value


def test_failure_callback_keeps_the_users_callbacks(airflow_db: Any) -> None:
    from datetime import datetime

    from airflow.sdk import DAG

    from tuneloop.pipeline.operators import cancel_job_on_failure

    def alert(context: Any) -> None:
        """A user's own callback."""

    with DAG(
        "callbacks",
        schedule=None,
        start_date=datetime(2026, 1, 1),
        default_args={"on_failure_callback": alert},
    ):
        from_defaults = TrainingJobOperator(task_id="a", backend={}, job={})
        given = TrainingJobOperator(task_id="b", backend={}, job={}, on_failure_callback=alert)
    for operator in (from_defaults, given):
        assert operator.on_failure_callback == [cancel_job_on_failure, alert]
