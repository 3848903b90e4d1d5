"""The local backend: jobs are processes on this machine, run by ``tuneloop.local.runner``.

This module only translates between the job protocol (``jobs.base``) and ``LocalRunner``: the
runner already makes submission idempotent by name, tells a dead process from a running one and
stops a job's whole process group. What the translation adds:

- a job writes into ``<spec.output_uri>/<spec.name>``, which is also its ``result_uri``;
- the protocol's labels, states and log cursor (a byte offset, carried as a string);
- the runner's errors as typed job errors (a bad spec is the user's, a full disk is not).

Only the standard library and tuneloop's light modules are imported: triggers poll ``status``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any, ClassVar

from tuneloop import storage
from tuneloop.errors import Problem, TuneloopError
from tuneloop.jobs.base import (
    JobError,
    JobNotFoundError,
    JobSpec,
    JobStatus,
    LogChunk,
    TransientJobError,
    UserJobError,
    constructor_config,
    job_error,
)
from tuneloop.jobs.state import JobState
from tuneloop.links import job_page_url
from tuneloop.local import runner as local

# A launcher that could not start the process (fork failed, the machine was busy) may well
# succeed on a second try; every other local failure repeats itself.
_RETRYABLE_REASONS = frozenset({local.REASON_NOT_STARTED})


class LocalJobBackend:
    """Jobs as detached processes under ``root`` (one folder per job).

    ``entrypoint`` (``module:function``) is what a job process calls, ``python_path`` the folders
    it imports that from; by default the job runs its recipe with the embedded trainer. ``env``
    is added to the job's environment; ``grace`` is how long ``cancel`` waits after SIGTERM.
    """

    type: ClassVar[str] = "local"

    def __init__(
        self,
        root: str,
        entrypoint: str | None = None,
        python_path: list[str] | None = None,
        env: dict[str, str] | None = None,
        grace: float = 10.0,
    ) -> None:
        self.root = str(root)
        self.entrypoint = entrypoint
        self.python_path = list(python_path or [])
        self.env = dict(env or {})
        self.grace = float(grace)
        self.runner = local.LocalRunner(storage.local_path(self.root), env=self.env, grace=grace)

    def config(self) -> dict[str, Any]:
        return constructor_config(self)

    # -- the protocol --

    def submit(self, spec: JobSpec) -> JobStatus:
        output = storage.join(spec.output_uri, spec.name)
        if storage.is_s3(output):
            raise job_error(
                UserJobError,
                spec.name,
                f"output_uri {spec.output_uri} is on S3; local jobs write to local folders",
                "use a path or a file:// URI as the campaign's output root for the local backend",
            )
        local_spec = local.JobSpec(
            name=spec.name,
            output=output,
            recipe=dict(spec.recipe),
            kind=spec.method,
            labels=dict(spec.labels),
            entrypoint=self.entrypoint or local.DEFAULT_ENTRYPOINT,
            python_path=self.python_path,
        )
        with _translated(spec.name):
            return self._status(self.runner.submit(local_spec))

    def status(self, name: str) -> JobStatus:
        with _translated(name):
            return self._status(self.runner.status(name))

    def cancel(self, name: str) -> JobStatus:
        with _translated(name):
            return self._status(self.runner.cancel(name, grace=self.grace))

    def logs(self, name: str, cursor: str = "") -> LogChunk:
        """Whole lines after byte offset ``cursor``; a final job's unterminated last line too."""
        offset = int(cursor) if cursor.strip().isdigit() else 0
        with _translated(name):
            chunk = self.runner.logs(name, offset)
            text, end = chunk.text, chunk.cursor
            if text and not text.endswith("\n"):
                partial = text.rsplit("\n", 1)[-1]
                if not self.runner.status(name).final:
                    # Leave the unfinished line for the next call: printing it now would split
                    # it in the task log.
                    text = text[: len(text) - len(partial)]
                    end -= len(partial.encode("utf-8"))
        return LogChunk(lines=text.splitlines(), cursor=str(end))

    def find(self, labels: Mapping[str, str]) -> list[JobStatus]:
        with _translated("*"):
            return [self._status(found) for found in self.runner.find(labels)]

    # -- translation --

    def _status(self, found: local.JobStatus) -> JobStatus:
        spec = self.runner.spec(found.name)
        failed = found.state is JobState.FAILED
        started, ended = _time(found.started_at), _time(found.ended_at)
        message = found.message.splitlines()[0] if found.message else found.summary()
        return JobStatus(
            name=found.name,
            state=found.state,
            message=message,
            failure_reason=_failure_reason(found) if failed else "",
            retryable=failed and found.reason in _RETRYABLE_REASONS,
            started_at=started,
            ended_at=ended,
            # One machine, so instance-seconds are wall seconds.
            billable_seconds=(ended - started).total_seconds() if started and ended else None,
            result_uri=spec.output,
            # The job's page on the Airflow API server (tuneloop.web): the UI shows only http(s)
            # links, and a browser may not open a folder on the worker.
            console_url=job_page_url(str(self.runner.root), found.name),
            labels=dict(spec.labels),
        )


def _failure_reason(found: local.JobStatus) -> str:
    reason = f"[{found.reason}] " if found.reason else ""
    return f"{reason}{found.message}".strip()


def _time(value: str | None) -> datetime | None:
    return local.parse_iso(value)


@contextlib.contextmanager
def _translated(name: str) -> Iterator[None]:
    """Turn the runner's errors into the protocol's typed job errors."""
    try:
        yield
    except JobError:
        raise
    except local.JobNotFoundError as error:
        raise JobNotFoundError(error.problems) from error
    except TuneloopError as error:
        raise UserJobError(error.problems) from error
    except PermissionError as error:
        raise job_error(
            UserJobError, name, str(error), "let this user write the jobs folder"
        ) from error
    except OSError as error:
        # A full disk or a busy file system: worth another try later.
        raise TransientJobError(
            [Problem(f"job {name}", f"{type(error).__name__}: {error}")]
        ) from error
