"""One protocol for every place a job can run: local, HyperPod, SageMaker training jobs.

A backend knows how to start a job, say how it is doing, stop it, read its log and find it again
by labels. It knows nothing of Airflow or DAGs: operators and triggers drive it through this
protocol only, so exactly-once submission, cancellation and log streaming are written once.

Every backend can be rebuilt from ``config()`` (plain JSON): that is how a trigger, which runs in
another process, talks to the same cluster, region and connection as the operator that deferred.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import json
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from tuneloop.errors import Problem, TuneloopError
from tuneloop.jobs.state import JobState

# Kubernetes object names (and so HyperPod job names) are DNS labels of at most 63 characters;
# the training operator derives pod and service names such as "<job>-worker-15" and RFT adds
# "<job>-rm", so job names keep room for a suffix. SageMaker training job names allow 63.
MAX_JOB_NAME = 48
DIGEST_CHARS = 10
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?\Z")


class JobKind(enum.StrEnum):
    TRAIN = "train"
    EVAL = "eval"


class JobSpec(BaseModel):
    """Everything a backend needs to start one job. Round-trips through JSON (XCom, triggers)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    """Deterministic job name (see ``job_name``): the key that makes submission idempotent."""
    kind: JobKind
    """train or eval."""
    method: str
    """sft, cpt, rft or eval: picks the container image and the launcher's workload shape."""
    recipe: dict[str, Any]
    """The rendered, validated recipe (with model_name_or_path resolved)."""
    inputs: dict[str, str] = {}
    """Channel name -> URI: train, validation, and for RFT the reward function."""
    output_uri: str
    """Folder the job writes into; its results land in ``<output_uri>/<name>/``."""
    labels: dict[str, str] = {}
    """Labels to find the job by (campaign, round, stage); values are label-safe strings."""
    monitoring: dict[str, Any] | None = None
    """Training jobs: the campaign's monitoring settings (JSON) the waiting trigger watches the
    job with; None: not watched live. Not part of the job's name digest."""


class JobStatus(BaseModel):
    """What a backend says about a job at one moment."""

    model_config = ConfigDict(extra="forbid")

    name: str
    state: JobState
    message: str = ""
    """One line a person can read: what the job is doing, or why it ended."""
    failure_reason: str = ""
    """The backend's own failure text (FailureReason, pod log tail, exception)."""
    retryable: bool = False
    """A FAILED job that a new attempt may fix (capacity, quota, spot interruption)."""
    started_at: datetime | None = None
    ended_at: datetime | None = None
    billable_seconds: float | None = None
    """Instance-seconds charged (SageMaker's BillableTimeInSeconds, or wall time x nodes)."""
    result_uri: str = ""
    """Where the job's outputs are read from: the folder with manifest.json or eval-result/,
    or the output.tar.gz holding them."""
    console_url: str = ""
    """A link a person can open to look at the job."""
    labels: dict[str, str] = {}

    @property
    def final(self) -> bool:
        return self.state.final


class LogChunk(BaseModel):
    """New log lines since a cursor, and the cursor to continue from."""

    lines: list[str] = Field(default_factory=list)
    cursor: str = ""
    """Opaque to the caller; backends encode what they need (offset, timestamp, token)."""


class JobError(TuneloopError):
    """A backend refused or could not perform an action."""

    retryable: bool = False


class UserJobError(JobError):
    """Bad recipe, bad data, missing permission: retrying changes nothing."""

    retryable = False


class TransientJobError(JobError):
    """Capacity, quota, throttling or a lost connection: worth retrying with backoff."""

    retryable = True


class JobNotFoundError(JobError):
    """No job of that name exists (never created, or deleted)."""


def job_error(cls: type[JobError], name: str, message: str, fix: str = "") -> JobError:
    return cls([Problem(f"job {name}", message, fix=fix)])


@runtime_checkable
class JobBackend(Protocol):
    """What every backend implements. Blocking calls; triggers run them off the event loop."""

    type: ClassVar[str]

    def config(self) -> dict[str, Any]:
        """JSON-safe settings (connection id, region, cluster, namespace, ...) to rebuild it."""
        ...

    def submit(self, spec: JobSpec) -> JobStatus:
        """Start the job, or return the status of the existing job of that name (idempotent)."""
        ...

    def status(self, name: str) -> JobStatus:
        """The job's status; JobNotFoundError when there is no such job."""
        ...

    def cancel(self, name: str) -> JobStatus:
        """Stop the job and remove what submit created; a finished job is left as it is."""
        ...

    def logs(self, name: str, cursor: str = "") -> LogChunk:
        """Log lines after ``cursor`` (from the start when empty)."""
        ...

    def find(self, labels: Mapping[str, str]) -> list[JobStatus]:
        """Jobs carrying all of ``labels``, oldest first."""
        ...


def constructor_config(backend: Any) -> dict[str, Any]:
    """A backend's ``config()``: its type and every constructor argument, read back from the
    attribute of the same name, so that ``make_backend`` rebuilds an equal backend and a new
    argument cannot be left out."""
    import inspect

    arguments = list(inspect.signature(type(backend).__init__).parameters)[1:]  # not self
    return {"type": backend.type, **{name: getattr(backend, name) for name in arguments}}


async def astatus(backend: JobBackend, name: str) -> JobStatus:
    """``backend.status`` without blocking the event loop (native async when it has one)."""
    native = getattr(backend, "astatus", None)
    if native is not None:
        return await native(name)
    return await asyncio.to_thread(backend.status, name)


async def alogs(backend: JobBackend, name: str, cursor: str = "") -> LogChunk:
    native = getattr(backend, "alogs", None)
    if native is not None:
        return await native(name, cursor)
    return await asyncio.to_thread(backend.logs, name, cursor)


def digest(*parts: Any) -> str:
    """A stable hex digest of JSON-able parts (key order and whitespace do not matter)."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def job_name(
    campaign: str,
    round_number: int,
    stage: str,
    recipe: Mapping[str, Any],
    inputs: Mapping[str, str] | None = None,
) -> str:
    """``<campaign>-r<round>-<stage>-<digest>``: the same inputs always give the same name.

    The digest covers the rendered recipe and the inputs, so a retry or a cleared task finds the
    job it already started, while a changed recipe (or new data) gets a job of its own. The
    readable prefix is shortened when needed so the name stays a valid Kubernetes name and
    SageMaker job name with room for the suffixes the launchers add.
    """
    tail = digest(campaign, round_number, stage, dict(recipe), dict(inputs or {}))[:DIGEST_CHARS]
    prefix = f"{campaign}-r{round_number}-{stage}".lower()
    prefix = re.sub(r"[^a-z0-9-]", "-", prefix)[: MAX_JOB_NAME - DIGEST_CHARS - 1].strip("-")
    return f"{prefix}-{tail}"


def validate_job_name(name: str) -> str:
    if len(name) > MAX_JOB_NAME or not _NAME.match(name):
        raise job_error(
            UserJobError,
            name,
            f"{name!r} is not a valid job name",
            f"use lowercase letters, digits and '-', at most {MAX_JOB_NAME} characters",
        )
    return name
