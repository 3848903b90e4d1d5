"""The trigger a job operator defers to: poll any backend until the job ends, streaming its log.

``JobTrigger`` runs in the triggerer, next to hundreds of others, so it holds little: its
settings, a log cursor, and a backend shared with every trigger that has the same backend
config (one Kubernetes or boto3 client per cluster or region, not one per waiting task).
Backends are blocking; ``jobs.base.astatus``/``alogs`` run them in the loop's executor.

It ends with one event (see ``JobEvent``): success, failure, or deadline. A deadline event lets
the operator save the log cursor before giving up, so the next try does not print again what
this one printed; Airflow's own defer timeout stays a backstop for a triggerer that died.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

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

SUCCESS = "success"
FAILURE = "failure"
DEADLINE = "deadline"

MAX_BACKOFF = 300.0
"""Longest wait between two polls after transient errors (seconds)."""
LOG_LINE_CHARS = 4000
"""Longer log lines are cut: one runaway line must not swamp the task log."""

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
) -> dict[str, Any]:
    """The payload the operator's ``execute_complete`` receives (plain JSON)."""
    return {
        "outcome": outcome,
        "job_name": job_name,
        "state": status.state.value if status else "",
        "message": message or (status.message if status else ""),
        "failure_reason": status.failure_reason if status else "",
        "retryable": bool(status.retryable) if status else False,
        "cursor": cursor,
        "status": status.model_dump(mode="json") if status else None,
    }


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
    ) -> None:
        super().__init__()
        self.backend = dict(backend)
        self.job_name = job_name
        self.cursor = cursor
        self.poll_interval = float(poll_interval)
        self.deadline = deadline
        self.stream_logs = stream_logs
        self.error_backoff = float(error_backoff)

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
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        backend = shared_backend(self.backend)
        failures = 0
        last_state = ""
        while True:
            try:
                status = await astatus(backend, self.job_name)
                if self.stream_logs:
                    await self._log_new_lines(backend, final=status.final)
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
            if status.final:
                outcome = SUCCESS if status.state is JobState.SUCCEEDED else FAILURE
                yield TriggerEvent(job_event(outcome, self.job_name, self.cursor, status))
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

    async def _log_new_lines(self, backend: JobBackend, *, final: bool) -> None:
        # A final job's log is read to its end, so the last lines come before the event.
        while True:
            chunk = await alogs(backend, self.job_name, self.cursor)
            for line in chunk.lines:
                self.log.info("[%s] %s", self.job_name, line[:LOG_LINE_CHARS])
            moved = chunk.cursor != self.cursor
            self.cursor = chunk.cursor
            if not (final and moved and chunk.lines):
                return

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
