"""Airflow operators that run one training or evaluation job, exactly once, on any backend.

``TrainingJobOperator`` and ``EvaluationJobOperator`` share ``JobOperator``: it drives a backend
through the job protocol only (``jobs.base``), so HyperPod, SageMaker training jobs and the local
backend all behave alike.

**Exactly once.** A job's name is a digest of what it does (``jobs.base.job_name``), so a task
first looks its job up: it adopts a running job, returns a finished one and creates one only
when none exists. The handle (job name and attempt) goes to Airflow's task state
(``ResumableJobMixin``) before the task waits, so a retry reconnects to the job it started.

**What a FAILED or STOPPED job with our name means.** Its name fixes its recipe and inputs, so
starting it again with the same name is impossible on every backend and rerunning is a
decision, taken this way:

- FAILED and ``retryable`` (capacity, quota, spot interruption): a new attempt, after a backoff,
  as job ``<name>-a<n>``.
- STOPPED: someone stopped it; either this task cancelled it because a person cleared or
  marked the task (and the task running again is the rerun they asked for), or it was stopped
  outside Airflow and the task failed saying so. A new try therefore starts a new attempt.
- FAILED and not retryable (bad recipe, bad data, no permission): when this task already failed
  because of it (recorded in task state as it failed), the task running again means a person
  cleared it to rerun: a new attempt. Otherwise the worker died between the job's end and the
  task's verdict, and the task fails now with the job's reason, without a second job.

**Waiting** is deferred to ``JobTrigger``: no worker slot, no attempt ceiling; the deadline is
``execution_timeout`` (counted from the start of the try, across deferrals). The job's new log
lines reach the task log; the log cursor is kept in task state, so a retry prints only what no
earlier try printed.

**Errors.** Capacity, quota and throttling (``TransientJobError``, retryable FAILED jobs) are
retried with exponential backoff, waiting deferred, until the deadline. User errors
(``UserJobError``, a non-retryable FAILED job) fail the task at once, without Airflow retries,
with the backend's failure reason in the message.

**Watching.** A training job given ``monitoring`` (the campaign's ``Monitoring``, as JSON; the
argument, else the job's own ``monitoring`` field) is watched while the trigger waits: its log
lines become curves, the detectors judge them, and a fail_round or stop_campaign finding stops
the job (``pipeline.triggers``). The task then does not fail: it returns the job's status with
``stopped_early`` (the reason), ``findings``, ``series`` (the curves read live) and
``saved_gpu_hours``: the job's remaining steps at its pace so far, on ``run.replicas``
instances of ``instance_type`` (the argument, else the backend's; an unknown type counts one
GPU per instance, as the ledger does), or None when the job's total steps are unknown. The
round then fails at its gate. A job that ran to its end returns the curves read live and the
warnings as ``series`` and ``findings``. Clearing the task after a stop starts a new attempt,
as for any STOPPED job.

**Cancelling.** ``on_kill``, the trigger's ``on_kill`` (a person cleared or marked the deferred
task) and the failure callback stop the job this task started or adopted, never any other job,
and never after the task succeeded.
"""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, TypeVar

from airflow.sdk import BaseOperator, BaseOperatorLink, ResumableJobMixin
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException
from pydantic import ValidationError

from tuneloop.config.monitoring import Monitoring
from tuneloop.errors import Problem, TuneloopError
from tuneloop.jobs import make_backend
from tuneloop.jobs.base import (
    DIGEST_CHARS,
    MAX_JOB_NAME,
    JobBackend,
    JobError,
    JobKind,
    JobNotFoundError,
    JobSpec,
    JobState,
    JobStatus,
    TransientJobError,
    validate_job_name,
)
from tuneloop.links import is_http, mlflow_link_url
from tuneloop.pipeline.triggers import DEADLINE, STOPPED, SUCCESS, JobTrigger, settle_seconds

if TYPE_CHECKING:
    from airflow.sdk import Context
    from airflow.sdk.types import TaskInstanceKey

HANDLE_KEY = "tuneloop_job"
CURSOR_KEY = "tuneloop_log_cursor"
REPORTED_KEY = "tuneloop_reported_failure"
TRY_KEY = "tuneloop_try"
WAIT_KEY = "tuneloop_wait"
SUBMITTED_KEY = "tuneloop_submitted"
CONSOLE_URL_KEY = "job_console_url"
MLFLOW_URL_KEY = "mlflow_run_url"

DEADLINE_GRACE = 60.0
"""Seconds Airflow's defer timeout is given beyond the trigger's own deadline: the trigger
ends the wait itself (and hands back its log cursor); Airflow's timeout is the backstop."""

T = TypeVar("T")


def attempt_name(name: str, attempt: int) -> str:
    """The job name of attempt ``attempt``: ``name`` first, then ``<name>-a<n>``.

    The readable part is shortened when needed so the digest (the name's tail) survives and the
    name stays within ``MAX_JOB_NAME``."""
    if attempt <= 1:
        return name
    suffix = f"-a{attempt}"
    if len(name) + len(suffix) > MAX_JOB_NAME:
        tail = name[-(DIGEST_CHARS + 1) :]
        head = name[: MAX_JOB_NAME - len(suffix) - len(tail)].rstrip("-")
        name = head + tail
    return name + suffix


class Handle(NamedTuple):
    """What task state holds about the job a task started or adopted."""

    job: str
    """The spec's name: the job the task is about (attempt 1's name)."""
    name: str
    """The job actually waited for (this attempt's name)."""
    attempt: int

    def to_json(self) -> dict[str, Any]:
        return self._asdict()

    @classmethod
    def parse(cls, value: Any) -> Handle | None:
        if not isinstance(value, dict):
            return None
        try:
            return cls(str(value["job"]), str(value["name"]), int(value["attempt"]))
        except (KeyError, TypeError, ValueError):
            return None


class JobDeadlineExceededError(TuneloopError, AirflowException):
    """The job had not ended by the try's ``execution_timeout``. An AirflowException, not an
    AirflowFailException, so Airflow's retries apply: the next try reconnects to the job."""


class _Backoff(Exception):
    """Wait (deferred), then run the look-up again; ``ready`` may then be created at once."""

    def __init__(self, reason: str, failures: int, ready: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.failures = failures
        self.ready = ready


# Airflow 3 resolves a link where the task runs: the worker calls ``get_link`` whenever a try
# ends or defers and stores the URL as XCom ``_link_<class>``, which the API server shows. The UI
# shows http(s) links only, so both links are absolute http(s) URLs or empty.


class JobConsoleLink(BaseOperatorLink):
    """The backend's page for the job: the SageMaker console (training job, HyperPod cluster),
    or for a local job its page on the Airflow API server (``tuneloop.web``); empty until a job
    exists."""

    name = "Job console"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        url = _xcom_text(ti_key, CONSOLE_URL_KEY)
        return url if is_http(url) else ""


class MlflowRunLink(BaseOperatorLink):
    """The MLflow run of this task: the URL a task pushed as XCom ``mlflow_run_url``, else the
    API server's page that finds the task's run when it is opened (``/tuneloop/mlflow``): the
    round's runs are created later, when ``decide`` mirrors the round."""

    name = "MLflow run"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        url = _xcom_text(ti_key, MLFLOW_URL_KEY)
        if is_http(url):
            return url
        map_index = getattr(ti_key, "map_index", -1)
        return mlflow_link_url(
            ti_key.dag_id, ti_key.run_id, ti_key.task_id, -1 if map_index is None else map_index
        )


def _xcom_text(ti_key: TaskInstanceKey, key: str) -> str:
    from airflow.sdk.execution_time.xcom import XCom

    value = XCom.get_value(ti_key=ti_key, key=key)
    return value if isinstance(value, str) else ""


def cancel_job_on_failure(context: Context) -> None:
    """Failure callback of every job operator: stop the job the failed task started."""
    task = context.get("task")
    if isinstance(task, JobOperator):
        task.cancel_started_job(context, why="the task failed")


class JobOperator(ResumableJobMixin, BaseOperator):
    """Run one job on a backend and wait for it, deferred. Returns the final ``JobStatus``.

    :param backend: the backend config, as ``make_backend`` takes it and a backend's
        ``config()`` returns it (templated).
    :param job: the ``JobSpec`` fields (templated; may be an XComArg). Its ``name`` decides
        which job this is: compute it with ``jobs.base.job_name``.
    :param poll_interval: seconds between two looks at the job while waiting.
    :param stream_logs: copy the job's log lines into the task log.
    :param retry_backoff: first wait (seconds) before retrying after a transient error or a
        retryable job failure; it doubles each time, up to ``max_retry_backoff``.
    :param mlflow_run_url: the stage's MLflow run URL (templated), shown as the "MLflow run"
        link; a task may instead push XCom ``mlflow_run_url`` itself.
    :param monitoring: training jobs: the ``Monitoring`` settings (JSON) to watch the job with
        while it runs; None: the job's own ``monitoring`` field, else not watched.
    :param instance_type: what the job's instances are, for the GPU-hours a stop saves; None:
        the backend's ``instance_type`` (the local backend has none: one GPU per instance).
    """

    template_fields: Sequence[str] = ("backend", "job", "mlflow_run_url")
    template_fields_renderers: ClassVar[dict[str, str]] = {"backend": "json", "job": "json"}
    operator_extra_links = (JobConsoleLink(), MlflowRunLink())
    external_id_key = HANDLE_KEY
    ui_color = "#e8f0fe"

    job_kind: ClassVar[JobKind | None] = None
    """The kind of job this operator runs (None: any)."""

    def __init__(
        self,
        *,
        backend: dict[str, Any],
        job: dict[str, Any] | Any,
        poll_interval: float = 30.0,
        stream_logs: bool = True,
        retry_backoff: float = 60.0,
        max_retry_backoff: float = 1800.0,
        mlflow_run_url: str = "",
        monitoring: dict[str, Any] | None = None,
        instance_type: str | None = None,
        **kwargs: Any,
    ) -> None:
        # The job is cancelled first, then the user's callbacks run (from the call or the DAG's
        # default_args, which passing our own would otherwise replace).
        defaults = kwargs.get("default_args") or {}
        callbacks = (
            kwargs.pop("on_failure_callback", None) or defaults.get("on_failure_callback") or []
        )
        if not isinstance(callbacks, list):
            callbacks = [callbacks]
        super().__init__(on_failure_callback=[cancel_job_on_failure, *callbacks], **kwargs)
        self.backend = backend
        self.job = job
        self.poll_interval = poll_interval
        self.stream_logs = stream_logs
        self.retry_backoff = retry_backoff
        self.max_retry_backoff = max_retry_backoff
        self.mlflow_run_url = mlflow_run_url
        self.monitoring = monitoring
        self.instance_type = instance_type
        self._deadline: float | None = None
        self._ready = ""
        self._started: str = ""
        self._succeeded = False
        self._seen: dict[str, JobStatus] = {}
        self._result: dict[str, Any] | None = None

    # -- entry points ----------------------------------------------------------------------

    def execute(self, context: Context) -> dict[str, Any]:
        _mask_environment_secrets()
        if not self.job:
            # The round DAG passes no job for a stage the run does not include.
            raise AirflowSkipException("no job to run: this stage is not part of this run")
        timeout = self.execution_timeout
        self._deadline = time.time() + timeout.total_seconds() if timeout else None
        self._remember(context, TRY_KEY, {"deadline": self._deadline})
        # Both link keys always exist, so the links read "" rather than a missing XCom; a task
        # that learns the MLflow run's URL later may overwrite it.
        context["ti"].xcom_push(key=MLFLOW_URL_KEY, value=self.mlflow_run_url or "")
        context["ti"].xcom_push(key=CONSOLE_URL_KEY, value="")
        return self._guarded(context, lambda: self.execute_resumable(context))

    def resume_after_wait(self, context: Context, event: Any = None, **resume: Any) -> Any:
        """Back from a backoff wait: look the job up again (and maybe create ``ready``)."""
        wait = self._restore(context, resume, WAIT_KEY)
        self._ready = str(wait.get("ready") or "")
        failures = int(wait.get("failures") or 0)
        return self._guarded(context, lambda: self.execute_resumable(context), failures)

    def execute_complete(self, context: Context, event: dict[str, Any], **resume: Any) -> Any:
        """Back from ``JobTrigger``: the job ended, or the deadline came first."""
        _mask_environment_secrets()  # a resumed task is a new process
        self._restore(context, resume, TRY_KEY)
        store = context.get("task_state_store")
        waited = Handle.parse(store.get(HANDLE_KEY) if store is not None else resume.get("handle"))
        name = str(event.get("job_name") or (waited.name if waited else ""))
        self._started = name
        self._save_cursor(context, name, str(event.get("cursor", "")))
        outcome = event.get("outcome")
        status = JobStatus.model_validate(event["status"]) if event.get("status") else None
        if outcome == SUCCESS and status is not None:
            return self._finish(context, status, _watched(event))
        if outcome == STOPPED:
            return self._stopped(context, name, event, status)
        if outcome == DEADLINE:
            raise self._deadline_error(
                f"{event.get('message')}; it keeps running and a retry reconnects to it"
            )
        if status is not None and status.retryable and waited is not None:
            ready = attempt_name(waited.job, waited.attempt + 1)
            failure = _Backoff(_reason_text(status), waited.attempt, ready)
            return self._guarded(context, lambda: _raise(failure))
        self._report(context, name)
        raise AirflowFailException(self._failure_message(name, event))

    def on_kill(self) -> None:
        if self._started and not self._succeeded:
            self._cancel(self._started, why="the task was killed")

    # -- ResumableJobMixin ----------------------------------------------------------------

    def submit_job(self, context: Context) -> dict[str, Any]:
        """Adopt this task's job, or create it: see the module docstring for the rules."""
        spec = self.spec
        _ = self.watching  # bad settings fail the task before a job is started
        store = context.get("task_state_store")
        stored = Handle.parse(store.get(HANDLE_KEY)) if store is not None else None
        reported = store.get(REPORTED_KEY) if store is not None else None
        attempt = stored.attempt if stored is not None and stored.job == spec.name else 1
        wait_reason = ""
        while True:
            name = attempt_name(spec.name, attempt)
            status = self._lookup(name)
            if status is None:
                if stored is not None and name == stored.name:
                    # An earlier try submitted it: starting it again would run it twice.
                    raise AirflowFailException(self._lost_message(context, name))
                if wait_reason and self._ready != name:
                    raise _Backoff(wait_reason, attempt - 1, ready=name)
                return self._create(context, spec, name, attempt).to_json()
            if not status.final or status.state is JobState.SUCCEEDED:
                self.log.info("Adopting job %s (%s)", name, status.state.value)
                self._adopted(context, name, status)
                return Handle(spec.name, name, attempt).to_json()
            if status.state is JobState.FAILED and status.retryable:
                wait_reason = _reason_text(status)
            elif status.state is JobState.STOPPED or reported == name:
                self.log.info("Job %s ended %s earlier; starting a new attempt", name, status.state)
                wait_reason = ""
            else:
                self._report(context, name)
                raise AirflowFailException(
                    self._failure_message(name, _status_event(status))
                    + " (reported now: the worker stopped before it could report it; "
                    "clear the task to run the job again)"
                )
            attempt += 1

    def get_job_status(self, external_id: Any, context: Context) -> str:
        handle = Handle.parse(external_id)
        if handle is None or handle.job != self.spec.name:
            # The recipe or inputs changed since that job was started: it is not this job.
            return "STALE"
        status = self._lookup(handle.name)
        return status.state.value if status is not None else "NOT_FOUND"

    def is_job_active(self, status: str) -> bool:
        return status in (JobState.PENDING.value, JobState.RUNNING.value)

    def is_job_succeeded(self, status: str) -> bool:
        return status == JobState.SUCCEEDED.value

    def poll_until_complete(self, external_id: Any, context: Context) -> Any:
        """Defer to ``JobTrigger``, or conclude at once when the job has already ended."""
        handle = Handle.parse(external_id)
        assert handle is not None, external_id
        self._started = handle.name
        status = self._seen.pop(handle.name, None) or self._status(handle.name)
        if status.final:
            return self._conclude(context, handle, status)
        self.defer(
            trigger=JobTrigger(
                backend=self.backend,
                job_name=handle.name,
                cursor=self._cursor(context, handle.name),
                poll_interval=self.poll_interval,
                deadline=self._deadline,
                stream_logs=self.stream_logs,
                monitoring=self.watching,
                stage=self.spec.labels.get("stage", "") or self.task_id,
                method=self.spec.method,
                not_before=time.time() + _settle_seconds(),
            ),
            method_name="execute_complete",
            kwargs={"deadline": self._deadline},
            timeout=self._defer_timeout(),
        )

    def get_job_result(self, external_id: Any, context: Context) -> dict[str, Any]:
        if self._result is not None:
            return self._result
        handle = Handle.parse(external_id)
        assert handle is not None, external_id
        self._started = handle.name
        status = self._seen.pop(handle.name, None) or self._status(handle.name)
        self._print_logs(context, handle.name)
        return self._finish(context, status)

    # -- the job ----------------------------------------------------------------------------

    @cached_property
    def spec(self) -> JobSpec:
        """The rendered ``job`` as a JobSpec (a user error names the field and the fix)."""
        value = self.job.model_dump() if isinstance(self.job, JobSpec) else self.job
        try:
            spec = JobSpec.model_validate(value)
        except ValidationError as exc:
            problems = [
                Problem(
                    "job." + ".".join(str(p) for p in error["loc"]),
                    error["msg"],
                    fix="pass the JobSpec fields (name, kind, method, recipe, output_uri, ...)",
                )
                for error in exc.errors()
            ]
            raise TuneloopError(problems) from None
        if self.job_kind is not None and spec.kind != self.job_kind:
            raise TuneloopError(
                [
                    Problem(
                        "job.kind",
                        f"{type(self).__name__} runs {self.job_kind.value} jobs, not {spec.kind}",
                        fix=f"set kind to {self.job_kind.value} or use the other operator",
                    )
                ]
            )
        validate_job_name(spec.name)
        return spec

    @cached_property
    def watching(self) -> dict[str, Any] | None:
        """The monitoring settings the trigger watches this job with (None: not watched)."""
        if self.job_kind is not JobKind.TRAIN:
            return None
        value = self.monitoring
        if value is None:
            value = getattr(self.spec, "monitoring", None)
        if value is None:
            return None
        if isinstance(value, Monitoring):
            value = value.model_dump(mode="json")
        try:
            settings = Monitoring.model_validate(value)
        except ValidationError as exc:
            problems = [
                Problem(
                    "monitoring." + ".".join(str(p) for p in error["loc"]),
                    error["msg"],
                    fix="use the fields of the campaign's monitoring: section",
                )
                for error in exc.errors()
            ]
            raise TuneloopError(problems) from None
        return settings.model_dump(mode="json") if settings.live else None

    @cached_property
    def job_backend(self) -> JobBackend:
        return make_backend(dict(self.backend))

    def _lookup(self, name: str) -> JobStatus | None:
        try:
            status = self._status(name)
        except JobNotFoundError:
            return None
        self._seen[name] = status
        return status

    def _status(self, name: str) -> JobStatus:
        return self._call(self.job_backend.status, name)

    def _create(self, context: Context, spec: JobSpec, name: str, attempt: int) -> Handle:
        attempt_spec = spec if name == spec.name else spec.model_copy(update={"name": name})
        self.log.info("Submitting job %s (attempt %d) to the %s backend", name, attempt, self._kind)
        self._remember(context, SUBMITTED_KEY, {"name": name, "host": socket.gethostname()})
        status = self._call(self.job_backend.submit, attempt_spec)
        self._started = name
        self._seen[name] = status
        self._push_console_url(context, status)
        return Handle(spec.name, name, attempt)

    def _lost_message(self, context: Context, name: str) -> str:
        store = context.get("task_state_store")
        submitted = store.get(SUBMITTED_KEY) if store is not None else None
        if not isinstance(submitted, dict):
            submitted = {}
        by = submitted.get("host") if submitted.get("name") == name else None
        text = (
            f"job {name} was submitted by an earlier try of this task"
            f"{f' on {by}' if by else ''}, but the {self._kind} backend cannot find it from "
            f"this worker ({socket.gethostname()}); no second job is started"
        )
        if self._kind == "local":
            root = dict(self.backend).get("root", "")
            text += (
                f". Local jobs live under the jobs root {root}: every worker must see the same "
                "folder (shared storage; backend.jobs_root in the campaign file)"
            )
        return text + ". Clear the task to start the job anew once that is fixed"

    def _adopted(self, context: Context, name: str, status: JobStatus) -> None:
        self._started = name
        self._push_console_url(context, status)

    def _conclude(self, context: Context, handle: Handle, status: JobStatus) -> dict[str, Any]:
        """A job found already ended, without deferring."""
        self._print_logs(context, handle.name)
        if status.state is JobState.SUCCEEDED:
            return self._finish(context, status)
        if status.retryable:
            ready = attempt_name(handle.job, handle.attempt + 1)
            raise _Backoff(_reason_text(status), handle.attempt, ready)
        self._report(context, handle.name)
        raise AirflowFailException(self._failure_message(handle.name, _status_event(status)))

    def _finish(
        self, context: Context, status: JobStatus, watched: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The task's return value for a SUCCEEDED job (with what watching it found)."""
        if self._result is None:
            self._push_console_url(context, status)
            self._result = {**self.job_result(status), **(watched or {})}
            self._succeeded = True
            self.log.info("Job %s succeeded: %s", status.name, status.result_uri)
        return self._result

    def _stopped(
        self, context: Context, name: str, event: dict[str, Any], status: JobStatus | None
    ) -> dict[str, Any]:
        """The task's return value for a job monitoring stopped: its status, why, what was
        found and what stopping it saved. The task succeeds; the round's gate fails it."""
        # Here, not at module level: DAG files import this module, the detectors need not load.
        from tuneloop.pipeline.monitor import recipe_instances, recipe_total_steps, saved_gpu_hours

        reason = str(event.get("reason") or event.get("message") or "monitoring stopped it")
        status = self._settled(name, status, reason)
        self._push_console_url(context, status)
        spec = self.spec
        step = _number(event.get("step"), int)
        total = _number(event.get("total_steps"), int) or recipe_total_steps(spec.recipe)
        saving = saved_gpu_hours(
            step,
            total,
            _number(event.get("seconds_per_step"), float),
            instances=recipe_instances(spec.recipe),
            instance_type=self._instance_type,
        )
        saved = (
            f"about {saving.gpu_hours:.3g} GPU-hours saved ({saving.basis()})"
            if saving is not None
            else "the GPU-hours saved are unknown (the job's total steps or pace are unknown)"
        )
        self.log.warning(
            "Stopped job %s at step %s of %s: %s; %s",
            name,
            "?" if step is None else step,
            "?" if total is None else total,
            reason,
            saved,
        )
        self._result = {
            **JobOperator.job_result(self, status),
            **_watched(event),
            "stopped_early": reason,
            "saved_gpu_hours": saving.gpu_hours if saving is not None else None,
        }
        self._succeeded = True
        return self._result

    def _settled(self, name: str, status: JobStatus | None, reason: str) -> JobStatus:
        """The stopped job's status; stopped again when the trigger's wait for its end ran out
        (never raises: a retry of this task would start the job anew)."""
        if status is not None and status.final:
            return status
        self._cancel(name, why=f"monitoring stopped it: {reason}")
        try:
            status = self.job_backend.status(name)
        except Exception as exc:
            self.log.warning("Cannot look at stopped job %s: %s", name, exc)
        return status or JobStatus(name=name, state=JobState.STOPPED, message=reason)

    def job_result(self, status: JobStatus) -> dict[str, Any]:
        """What the task returns (XCom): the final status as JSON."""
        return status.model_dump(mode="json")

    # -- cancelling ----------------------------------------------------------------------------

    def cancel_started_job(self, context: Context, *, why: str) -> None:
        """Stop the job this task started or adopted, if it still runs (never raises)."""
        name = self._started
        if not name:
            store = context.get("task_state_store")
            try:
                handle = Handle.parse(store.get(HANDLE_KEY)) if store is not None else None
            except Exception as exc:
                self.log.warning("Cannot read the job handle from task state: %s", exc)
                handle = None
            name = handle.name if handle else ""
        if name and not self._succeeded:
            self._cancel(name, why=why)

    def _cancel(self, name: str, *, why: str) -> None:
        try:
            status = self.job_backend.status(name)
            if status.state in (JobState.SUCCEEDED, JobState.STOPPED):
                return
            # A FAILED status may still hold nodes: HyperPod reports a crash-looping job FAILED
            # from its pods while the PyTorchJob runs on. Every backend's cancel leaves a job
            # that really ended as it is.
            status = self.job_backend.cancel(name)
            if status.state is JobState.STOPPED:
                self.log.warning("Cancelled job %s because %s", name, why)
        except Exception as exc:
            self.log.error("Could not cancel job %s (%s): %s", name, why, exc)

    # -- task state: reported failures, log cursor ---------------------------------------

    def _report(self, context: Context, name: str) -> None:
        """Record that the task fails because of job ``name``: a later run is a rerun."""
        store = context.get("task_state_store")
        if store is not None:
            store.set(REPORTED_KEY, name)

    def _remember(self, context: Context, key: str, value: dict[str, Any]) -> None:
        store = context.get("task_state_store")
        if store is not None:
            store.set(key, value)

    def _restore(self, context: Context, resume: dict[str, Any], key: str) -> dict[str, Any]:
        """What the task deferred with: the resume kwargs, else what it kept in task state
        (``dag.test()`` hands a resumed task the event only)."""
        store = context.get("task_state_store")
        saved = store.get(key) if store is not None and not resume else None
        values: dict[str, Any] = resume or (saved if isinstance(saved, dict) else {})
        deadline = values.get("deadline")
        self._deadline = float(deadline) if isinstance(deadline, int | float) else None
        return values

    def _cursor(self, context: Context, name: str) -> str:
        store = context.get("task_state_store")
        saved = store.get(CURSOR_KEY) if store is not None else None
        if isinstance(saved, dict) and saved.get("name") == name:
            return str(saved.get("cursor", ""))
        return ""

    def _save_cursor(self, context: Context, name: str, cursor: str) -> None:
        store = context.get("task_state_store")
        if store is not None and name:
            store.set(CURSOR_KEY, {"name": name, "cursor": cursor})

    def _print_logs(self, context: Context, name: str) -> None:
        """Log the job's lines no try has logged yet (a job that ended before we deferred)."""
        if not self.stream_logs:
            return
        cursor = start = self._cursor(context, name)
        while True:
            chunk = self._call(self.job_backend.logs, name, cursor)
            for line in chunk.lines:
                self.log.info("[%s] %s", name, line)
            if not chunk.lines or chunk.cursor == cursor:
                break
            cursor = chunk.cursor
        if cursor != start:
            self._save_cursor(context, name, cursor)

    # -- errors and waits ------------------------------------------------------------------

    def _guarded(self, context: Context, run: Callable[[], T], failures: int = 0) -> T:
        """Run ``run``; turn job errors into Airflow's outcomes and backoffs into waits."""
        try:
            return run()
        except _Backoff as wait:
            self._wait(context, wait.reason, wait.failures, wait.ready)
        except TransientJobError as exc:
            self._wait(context, str(exc), failures + 1, self._ready)
        except (JobError, TuneloopError) as exc:
            raise AirflowFailException(f"{self._describe()}: {exc}") from None
        raise AssertionError("unreachable: _wait defers or raises")

    def _wait(self, context: Context, reason: str, failures: int, ready: str) -> None:
        from airflow.providers.standard.triggers.temporal import TimeDeltaTrigger

        delay = min(self.max_retry_backoff, self.retry_backoff * 2 ** max(0, failures - 1))
        if self._deadline is not None and time.time() + delay > self._deadline:
            raise self._deadline_error(f"gave up at the task's deadline; last error: {reason}")
        self.log.warning("%s: %s; trying again in %.0fs", self._describe(), reason, delay)
        self._remember(
            context, WAIT_KEY, {"deadline": self._deadline, "failures": failures, "ready": ready}
        )
        self.defer(
            trigger=TimeDeltaTrigger(timedelta(seconds=delay)),
            method_name="resume_after_wait",
            kwargs={"deadline": self._deadline, "failures": failures, "ready": ready},
            timeout=self._defer_timeout(),
        )

    def _call(self, function: Callable[..., T], *args: Any) -> T:
        """A backend call, repeated briefly on transient errors (longer waits are deferred)."""
        # Two short waits (at most 1 s and 3 s) inside the worker; longer ones are deferred.
        quick = (min(1.0, self.retry_backoff), min(3.0, 3 * self.retry_backoff))
        for wait in (*quick, None):
            try:
                return function(*args)
            except TransientJobError as exc:
                if wait is None:
                    raise
                self.log.warning("Backend call failed (%s); again in %.0fs", exc, wait)
                time.sleep(wait)
        raise AssertionError("unreachable")

    def _defer_timeout(self) -> timedelta | None:
        if self._deadline is None:
            return None
        return timedelta(seconds=max(1.0, self._deadline - time.time()) + DEADLINE_GRACE)

    def _failure_message(self, name: str, event: dict[str, Any]) -> str:
        state = event.get("state") or "unknown state"
        reason = event.get("failure_reason") or event.get("message") or "no reason given"
        text = f"{self._describe()}: job {name} ended {state}: {reason}"
        if state == JobState.STOPPED.value:
            text += "; it was stopped outside this task; clear the task to run it again"
        return text

    def _describe(self) -> str:
        return f"{type(self).__name__} {self.task_id}"

    def _deadline_error(self, message: str) -> JobDeadlineExceededError:
        return JobDeadlineExceededError([Problem("", message, source=self._describe())])

    @property
    def _instance_type(self) -> str | None:
        if self.instance_type:
            return self.instance_type
        configured = (
            dict(self.backend).get("instance_type") if isinstance(self.backend, dict) else None
        )
        return str(configured) if configured else None

    @property
    def _kind(self) -> str:
        return str(self.backend.get("type", "?")) if isinstance(self.backend, dict) else "?"

    def _push_console_url(self, context: Context, status: JobStatus) -> None:
        if status.console_url:
            context["ti"].xcom_push(key=CONSOLE_URL_KEY, value=status.console_url)


class TrainingJobOperator(JobOperator):
    """Run one training job (SFT, CPT or RFT stage). Returns the final JobStatus as JSON; its
    ``result_uri`` is the output folder holding manifest.json."""

    job_kind = JobKind.TRAIN
    ui_color = "#d2e3fc"


class EvaluationJobOperator(JobOperator):
    """Run one evaluation job. Returns the final JobStatus as JSON plus ``metrics``
    (``{name: value}``, read from the job's eval-result/results_*.json)."""

    job_kind = JobKind.EVAL
    ui_color = "#ceead6"

    def job_result(self, status: JobStatus) -> dict[str, Any]:
        from tuneloop.artifacts.evaluation import read_eval_metrics

        result = super().job_result(status)
        try:
            result["metrics"] = read_eval_metrics(status.result_uri)
        except TuneloopError as exc:
            raise AirflowFailException(
                f"{self._describe()}: job {status.name} succeeded but its results are not "
                f"usable: {exc}"
            ) from None
        return result


def _reason_text(status: JobStatus) -> str:
    reason = status.failure_reason or status.message or "no reason given"
    return f"job {status.name} ended {status.state.value} (retryable): {reason}"


def _status_event(status: JobStatus) -> dict[str, Any]:
    return {
        "state": status.state.value,
        "message": status.message,
        "failure_reason": status.failure_reason,
    }


def _raise(error: BaseException) -> Any:
    raise error


def _settle_seconds() -> float:
    """``[tuneloop] trigger_settle_seconds`` when set, else `triggers.settle_seconds` for this
    deployment's ``[workers] min_heartbeat_interval``."""
    from airflow.configuration import conf

    configured = str(conf.get("tuneloop", "trigger_settle_seconds", fallback="") or "").strip()
    if configured:
        return max(0.0, float(configured))
    return settle_seconds(conf.getint("workers", "min_heartbeat_interval", fallback=5))


def _watched(event: dict[str, Any]) -> dict[str, Any]:
    """What the trigger's watch found, as the task returns it: ``series`` and ``findings``
    (nothing when the job was not watched)."""
    if "series" not in event and "findings" not in event:
        return {}
    from tuneloop.pipeline.monitor import series_from_json, series_to_json

    series = event.get("series")
    findings = event.get("findings")
    return {
        # Through series_from_json and back: malformed points are dropped, order restored.
        "series": series_to_json(series_from_json(series)) if isinstance(series, dict) else {},
        "findings": list(findings) if isinstance(findings, list) else [],
    }


def _number(value: Any, kind: type[T]) -> T | None:
    """``value`` as an int or float, or None when it is not a finite number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value):
        return None
    return kind(value)  # type: ignore[call-arg]


def _mask_environment_secrets() -> None:
    """Register the AWS and MLflow secrets of this task process's environment with Airflow's
    secrets masker, as the round's other tasks do: a job's log lines reach the task log."""
    from tuneloop import aws
    from tuneloop.tracking.credentials import mask_environment

    mask_environment()
    aws.mask_environment_secrets()
