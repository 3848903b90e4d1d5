"""The trigger a job operator defers to: poll any backend until the job ends, streaming its log,
and stop the job early when its metrics say it is wasting money.

``JobTrigger`` runs in the triggerer, next to hundreds of others, so it holds little: its
settings, a log cursor, the job's curves (bounded, see ``pipeline.monitor``) and a backend shared
with every trigger that has the same backend config (one Kubernetes or boto3 client per cluster
or region, not one per waiting task). Backends are blocking; ``jobs.base.astatus``/``alogs`` run
them in the loop's executor.

**Watching.** Given ``monitoring`` (the campaign's ``Monitoring`` as JSON, with ``live`` true),
``stage`` and ``method``, every new log line the trigger reads (streamed to the task log or
not) is parsed into the canonical series, and after each poll the detectors judge them
(``rounds.monitoring.detect`` with ``final=False``). A warn finding is logged once and carried in
the final event. A fail_round or stop_campaign finding stops the job: the backend's ``cancel``
(StopTrainingJob, deleting the PyTorchJob, SIGTERM to a local job), a bounded wait for the job to
end (`STOP_WAIT`, and never past the deadline), the log read to its end, then a ``stopped``
event.

It ends with one event (see ``job_event``): success, failure, deadline or stopped. A deadline
event lets the operator save the log cursor before giving up, so the next try does not print
again what this one printed; Airflow's own defer timeout stays a backstop for a triggerer that
died. Success and stopped events carry what watching found: ``findings`` (JSON), ``series``
(strict JSON, see ``pipeline.monitor.series_to_json``), ``step`` (the last step logged),
``total_steps`` and ``seconds_per_step`` (the job's pace); a stopped event also carries
``reason``.

**A triggerer that restarts** rebuilds the trigger from its serialized kwargs, whose cursor is
the one the operator deferred with: the new trigger reads the log again from there, so the
curves are rebuilt from the same lines (the task log may show those lines twice, and a warning
logged before may be logged again). On a first deferral that cursor is the log's start, so
nothing is lost; a later try (after a deadline) starts from the cursor the earlier try saved,
and its live checks see the lines from there on. The job's whole curve is judged again once it
ended, from what it left in its output folder.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from tuneloop.config.monitoring import Monitoring
from tuneloop.jobs import make_backend
from tuneloop.jobs.base import (
    JobBackend,
    JobError,
    JobNotFoundError,
    JobState,
    JobStatus,
    alogs,
    astatus,
)

if TYPE_CHECKING:
    from tuneloop.pipeline.monitor import LiveWatch

SUCCESS = "success"
FAILURE = "failure"
DEADLINE = "deadline"
STOPPED = "stopped"
"""Monitoring stopped the job (a fail_round or stop_campaign finding)."""

MAX_BACKOFF = 300.0
"""Longest wait between two polls after transient errors (seconds)."""
LOG_LINE_CHARS = 4000
"""Longer log lines are cut: one runaway line must not swamp the task log."""
STOP_WAIT = 600.0
"""Longest wait (seconds) for a job monitoring stopped to end (a training job takes minutes
to stop); the event comes then, and the operator stops the job again if it still runs."""

_SHARED_BACKENDS: OrderedDict[str, JobBackend] = OrderedDict()
_SHARED_LIMIT = 64


def shared_backend(config: dict[str, Any]) -> JobBackend:
    """One backend per distinct config in this process (they hold clients and connections)."""
    key = json.dumps(config, sort_keys=True, default=str)
    backend = _SHARED_BACKENDS.get(key)
    if backend is None:
        backend = make_backend(dict(config))
        _SHARED_BACKENDS[key] = backend
        if len(_SHARED_BACKENDS) > _SHARED_LIMIT:
            _SHARED_BACKENDS.popitem(last=False)
    else:
        _SHARED_BACKENDS.move_to_end(key)
    return backend


def settle_seconds(min_heartbeat_interval: float) -> float:
    """How long after a task defers its trigger may fire at the earliest.

    A worker notices that the task process it ran has exited (having deferred) within its
    ``[workers] min_heartbeat_interval``; when the trigger fires before the executor reported
    that exit, the scheduler has already queued the task to resume, reads the late report as a
    task whose state "changed externally" and fails the try (a retry, a minute later). A job
    that ends seconds after it was submitted (a small evaluation) would meet that every time."""
    return 1.5 * min_heartbeat_interval + 0.5


def backoff(failures: int, base: float, cap: float = MAX_BACKOFF) -> float:
    """Exponential backoff with full jitter: spreads a thousand triggers hit by one outage."""
    return random.uniform(0.5, 1.0) * min(cap, base * 2 ** max(0, failures - 1))


def job_event(
    outcome: str,
    job_name: str,
    cursor: str,
    status: JobStatus | None = None,
    *,
    message: str = "",
    watch: LiveWatch | None = None,
    reason: str = "",
) -> dict[str, Any]:
    """The payload the operator's ``execute_complete`` receives (plain JSON); with ``watch``,
    what watching the job found (see the module docstring)."""
    payload: dict[str, Any] = {
        "outcome": outcome,
        "job_name": job_name,
        "state": status.state.value if status else "",
        "message": message or (status.message if status else ""),
        "failure_reason": status.failure_reason if status else "",
        "retryable": bool(status.retryable) if status else False,
        "cursor": cursor,
        "status": status.model_dump(mode="json") if status else None,
    }
    if watch is not None:
        payload.update(watch.payload())
    if reason:
        payload["reason"] = reason
    return payload


class JobTrigger(BaseTrigger):
    """Wait for one job to end, logging its new lines, without holding a worker slot.

    :param backend: the backend config (``JobBackend.config()``): type, connection id, region,
        verify, botocore config, cluster, namespace... everything needed to reach the job from
        the triggerer's process.
    :param job_name: the job to wait for.
    :param cursor: where the job's log was read up to (empty: from the start).
    :param poll_interval: seconds between two polls.
    :param deadline: epoch seconds after which a deadline event ends the wait (None: no limit).
    :param stream_logs: log the job's new lines into the task log.
    :param error_backoff: first wait after a transient error; it doubles up to ``MAX_BACKOFF``.
    :param monitoring: the ``config.monitoring.Monitoring`` settings as JSON: watch the job's
        metrics and stop it on a failing finding (None, or ``live`` false: only wait).
    :param stage: the stage the job trains (findings name it).
    :param method: sft, cpt or rft: which detectors apply.
    :param not_before: epoch seconds before which no event fires (see `settle_seconds`).
    """

    def __init__(
        self,
        backend: dict[str, Any],
        job_name: str,
        cursor: str = "",
        poll_interval: float = 30.0,
        deadline: float | None = None,
        stream_logs: bool = True,
        error_backoff: float = 5.0,
        monitoring: dict[str, Any] | None = None,
        stage: str = "",
        method: str = "",
        not_before: float | None = None,
    ) -> None:
        super().__init__()
        self.backend = dict(backend)
        self.job_name = job_name
        self.cursor = cursor
        self.poll_interval = float(poll_interval)
        self.deadline = deadline
        self.stream_logs = stream_logs
        self.error_backoff = float(error_backoff)
        self.monitoring = dict(monitoring) if monitoring is not None else None
        self.stage = stage
        self.method = method
        self.not_before = not_before

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "backend": self.backend,
                "job_name": self.job_name,
                "cursor": self.cursor,
                "poll_interval": self.poll_interval,
                "deadline": self.deadline,
                "stream_logs": self.stream_logs,
                "error_backoff": self.error_backoff,
                "monitoring": self.monitoring,
                "stage": self.stage,
                "method": self.method,
                "not_before": self.not_before,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        async for event in self._wait():
            if self.not_before is not None:
                await asyncio.sleep(max(0.0, self.not_before - time.time()))
            yield event

    async def _wait(self) -> AsyncIterator[TriggerEvent]:
        backend = shared_backend(self.backend)
        watch = self._watch()
        failures = 0
        last_state = ""
        while True:
            try:
                status = await astatus(backend, self.job_name)
                if self.stream_logs or watch is not None:
                    await self._read_new_lines(backend, watch, final=status.final)
            except JobNotFoundError as exc:
                message = f"job {self.job_name} no longer exists: {exc}"
                yield TriggerEvent(job_event(FAILURE, self.job_name, self.cursor, message=message))
                return
            except Exception as exc:
                if not _transient(exc):
                    message = f"cannot poll job {self.job_name}: {type(exc).__name__}: {exc}"
                    yield TriggerEvent(
                        job_event(FAILURE, self.job_name, self.cursor, message=message)
                    )
                    return
                failures += 1
                wait = self._capped(backoff(failures, self.error_backoff))
                self.log.warning(
                    "Polling job %s failed (%s: %s); retrying in %.0fs",
                    self.job_name,
                    type(exc).__name__,
                    exc,
                    wait,
                )
                if wait <= 0:
                    yield TriggerEvent(self._deadline_event(None))
                    return
                await asyncio.sleep(wait)
                continue
            failures = 0
            if status.state.value != last_state:
                last_state = status.state.value
                self.log.info("Job %s is %s: %s", self.job_name, last_state, status.message)
            if watch is not None and self._judge(watch, status) and not status.final:
                yield TriggerEvent(await self._stop(backend, watch, status))
                return
            if status.final:
                outcome = SUCCESS if status.state is JobState.SUCCEEDED else FAILURE
                watched = watch if outcome == SUCCESS else None
                yield TriggerEvent(
                    job_event(outcome, self.job_name, self.cursor, status, watch=watched)
                )
                return
            wait = self._capped(self.poll_interval * random.uniform(0.9, 1.1))
            if wait <= 0:
                yield TriggerEvent(self._deadline_event(status))
                return
            await asyncio.sleep(wait)

    async def on_kill(self) -> None:
        """A person cleared, or marked, the deferred task: stop the job it was waiting for."""
        backend = shared_backend(self.backend)
        status = await asyncio.to_thread(backend.cancel, self.job_name)
        self.log.info("Cancelled job %s: %s", self.job_name, status.state.value)

    async def _read_new_lines(
        self, backend: JobBackend, watch: LiveWatch | None, *, final: bool
    ) -> None:
        """Read the job's new lines: into the task log (``stream_logs``) and the watch."""
        # A final job's log is read to its end, so the last lines come before the event.
        while True:
            chunk = await alogs(backend, self.job_name, self.cursor)
            if self.stream_logs:
                for line in chunk.lines:
                    self.log.info("[%s] %s", self.job_name, line[:LOG_LINE_CHARS])
            if watch is not None:
                watch.feed(chunk.lines)
            moved = chunk.cursor != self.cursor
            self.cursor = chunk.cursor
            if not (final and moved and chunk.lines):
                return

    # -- watching ------------------------------------------------------------------------------

    def _watch(self) -> LiveWatch | None:
        """The watch for this job; None when it is not watched (or its settings are unusable,
        which the operator has already refused: a job is never stopped on a bad setting)."""
        if not self.monitoring:
            return None
        try:
            settings = Monitoring.model_validate(self.monitoring)
            from tuneloop.pipeline.monitor import LiveWatch  # the detectors load when used

            watch = LiveWatch(settings, stage=self.stage, method=self.method)
        except ValueError as exc:  # pydantic's ValidationError, or an unknown method
            self.log.error(
                "Job %s is not watched: bad monitoring settings (%s)", self.job_name, exc
            )
            return None
        return watch if settings.live else None

    def _judge(self, watch: LiveWatch, status: JobStatus) -> bool:
        """Judge the curves after a poll; log new warnings once. True: stop the job."""
        watch.observe(time.time(), status)
        try:
            fresh = watch.judge()
        except Exception as exc:  # the detectors are pure; a bug in them must not stop a job
            self.log.error(
                "Monitoring job %s failed: %s: %s", self.job_name, type(exc).__name__, exc
            )
            return False
        for finding in fresh:
            step = f" at step {finding.step}" if finding.step is not None else ""
            self.log.warning(
                "Job %s: %s%s: %s", self.job_name, finding.detector, step, finding.message
            )
        return bool(watch.failing)

    async def _stop(
        self, backend: JobBackend, watch: LiveWatch, status: JobStatus
    ) -> dict[str, Any]:
        """Stop the job, wait (bounded) for it to end, read its last lines: the stopped event
        (whose state is the job's own: a job that ended by itself meanwhile keeps its end)."""
        reason = watch.reason()
        self.log.warning("Stopping job %s at step %s: %s", self.job_name, watch.last_step, reason)
        status = await self._cancel(backend, status)
        status = await self._until_ended(backend, status)
        try:
            await self._read_new_lines(backend, watch, final=True)
        except Exception as exc:  # a deleted job has no log left to read
            self.log.info("Last lines of job %s not read: %s", self.job_name, exc)
        watch.observe(time.time(), status)
        message = f"monitoring stopped job {self.job_name}: {reason}"
        return job_event(
            STOPPED, self.job_name, self.cursor, status, message=message, watch=watch, reason=reason
        )

    async def _cancel(self, backend: JobBackend, status: JobStatus) -> JobStatus:
        """The backend's cancel, tried again on transient errors within `STOP_WAIT`."""
        ends = time.monotonic() + self._capped(STOP_WAIT)
        failures = 0
        while True:
            try:
                return await asyncio.to_thread(backend.cancel, self.job_name)
            except JobNotFoundError:
                return status.model_copy(update={"state": JobState.STOPPED})
            except Exception as exc:
                failures += 1
                wait = min(backoff(failures, self.error_backoff), ends - time.monotonic())
                if not _transient(exc) or wait <= 0:
                    self.log.error(
                        "Could not stop job %s: %s: %s", self.job_name, type(exc).__name__, exc
                    )
                    return status
                await asyncio.sleep(wait)

    async def _until_ended(self, backend: JobBackend, status: JobStatus) -> JobStatus:
        """Poll a stopping job until it ended, for at most `STOP_WAIT` (and the deadline)."""
        ends = time.monotonic() + self._capped(STOP_WAIT)
        while not status.final:
            wait = min(self.poll_interval, ends - time.monotonic())
            if wait <= 0:
                self.log.warning(
                    "Job %s was still %s when the wait for its stop ended",
                    self.job_name,
                    status.state.value,
                )
                return status
            await asyncio.sleep(wait)
            try:
                status = await astatus(backend, self.job_name)
            except JobNotFoundError:  # the stop deleted it (HyperPod)
                return status.model_copy(update={"state": JobState.STOPPED})
            except Exception as exc:
                if not _transient(exc):
                    self.log.error("Cannot poll job %s while it stops: %s", self.job_name, exc)
                    return status
        return status

    def _capped(self, wait: float) -> float:
        """``wait``, shortened to end at the deadline; 0 when the deadline has passed."""
        if self.deadline is None:
            return wait
        return max(0.0, min(wait, self.deadline - time.time()))

    def _deadline_event(self, status: JobStatus | None) -> dict[str, Any]:
        message = f"job {self.job_name} had not finished by the task's deadline"
        return job_event(DEADLINE, self.job_name, self.cursor, status, message=message)


def _transient(exc: BaseException) -> bool:
    """Errors worth polling again for: throttling, capacity, lost connections, timeouts."""
    if isinstance(exc, JobError):
        return exc.retryable
    return isinstance(exc, ConnectionError | TimeoutError | OSError)
