"""A small SageMaker endpoint over real HTTP, for what moto cannot show.

moto's training jobs are Completed the moment they are created, accept duplicate names and do not
implement StopTrainingJob. This server speaks the protocol botocore uses for SageMaker (JSON 1.1:
``POST /`` with ``X-Amz-Target: SageMaker.<Operation>``), so the real boto3 client talks to it
unchanged. It implements CreateTrainingJob, DescribeTrainingJob, StopTrainingJob,
ListTrainingJobs, Search (tag filters), AddTags and ListTags.

Like the service, it refuses (ValidationException) a CreateTrainingJob that breaks a constraint
of botocore's SageMaker model that botocore itself does not check on the client: name pattern,
maximum lengths and sizes, enums (``fakes.service_constraints``).

A job walks through a script of (TrainingJobStatus, SecondaryStatus, FailureReason) steps, one
step per DescribeTrainingJob, and stays on the last. Tests can queue service errors per
operation, count the creates, and run a callback as a job completes (to write its outputs where
the service would, at the moment it would).
"""

from __future__ import annotations

import io
import json
import tarfile
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from fakes.service_constraints import request_problems

Step = tuple[str, str, str]
# Operations whose requests are checked against the service model as the service checks them.
VALIDATED = frozenset({"CreateTrainingJob"})

STARTING: Step = ("InProgress", "Starting", "")
DOWNLOADING: Step = ("InProgress", "Downloading", "")
TRAINING: Step = ("InProgress", "Training", "")
COMPLETED: Step = ("Completed", "Completed", "")
STOPPED: Step = ("Stopped", "Stopped", "")
DEFAULT_SCRIPT: tuple[Step, ...] = (STARTING, DOWNLOADING, TRAINING, COMPLETED)

# What the service answers for a name it does not know, and for a name that is taken.
NOT_FOUND = "Requested resource not found."
NAME_TAKEN = (
    "Training job names must be unique within an AWS account and region, and a training job "
    "with this name already exists ({arn})"
)


@dataclass
class FakeJob:
    request: dict[str, Any]
    script: list[Step]
    created: float
    step: int = 0
    tags: list[dict[str, str]] = field(default_factory=list)
    started: float | None = None
    ended: float | None = None

    @property
    def name(self) -> str:
        return self.request["TrainingJobName"]

    @property
    def current(self) -> Step:
        return self.script[min(self.step, len(self.script) - 1)]

    def advance(self) -> None:
        if self.step < len(self.script) - 1:
            self.step += 1
        self.settle()

    def settle(self) -> None:
        """Start and end times for the state the job is in now."""
        status, secondary, _ = self.current
        now = time.time()
        if secondary == "Training" and self.started is None:
            self.started = now
        if status in ("Completed", "Failed", "Stopped"):
            self.started = self.started or now
            self.ended = self.ended or now


@dataclass
class Failure:
    code: str
    message: str
    status: int


class ServiceError(Exception):
    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


class FakeSageMaker:
    """The fake service: start() it, point a client's endpoint_url at ``endpoint``."""

    account = "123456789012"

    def __init__(self, region: str = "us-east-1", billable_seconds: int = 120) -> None:
        self.region = region
        self.billable_seconds = billable_seconds
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.reset()

    def reset(self) -> None:
        """Forget every job, call, script and queued error (one server for many tests)."""
        with self._lock:
            self.jobs: dict[str, FakeJob] = {}
            self.calls: Counter[str] = Counter()
            self.creates: Counter[str] = Counter()
            self.refused: list[tuple[str, list[str]]] = []
            self._scripts: deque[list[Step]] = deque()
            self._failures: dict[str, deque[Failure]] = {}
            self._race_next_create = False
            self._on_completed: list[Callable[[FakeJob], None]] = []
            self._completed: set[str] = set()

    # -- what tests control --

    def script_next(self, *steps: Step) -> None:
        """The next created job walks through ``steps`` instead of the default script."""
        self._scripts.append(list(steps))

    def fail_next(
        self, operation: str, code: str, message: str = "", status: int = 400, times: int = 1
    ) -> None:
        """Answer the next ``times`` calls of ``operation`` with a service error."""
        queue = self._failures.setdefault(operation, deque())
        for _ in range(times):
            queue.append(Failure(code, message or f"injected {code}", status))

    def race_next_create(self) -> None:
        """Another client creates the same job just before the next CreateTrainingJob lands:
        that one is stored (and counted) and ours is refused as a duplicate name."""
        self._race_next_create = True

    def when_completed(self, callback: Callable[[FakeJob], None]) -> None:
        """Call ``callback(job)`` once per job, just before the first answer that shows it
        Completed: a test writes the job's output.tar.gz there, as the service does when a job
        ends. It runs while the fake holds its lock, so it must not call the fake."""
        with self._lock:
            self._on_completed.append(callback)

    def arn(self, name: str) -> str:
        return f"arn:aws:sagemaker:{self.region}:{self.account}:training-job/{name}"

    @property
    def endpoint(self) -> str:
        assert self._server is not None, "start() the fake first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeSageMaker:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                target = self.headers.get("X-Amz-Target", "")
                operation = target.rsplit(".", 1)[-1]
                try:
                    fake.validate(operation, body)
                    status, answer = 200, fake.handle(operation, body)
                except ServiceError as error:
                    status = error.status
                    answer = {"__type": error.code, "message": error.message}
                data = json.dumps(answer, default=str).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/x-amz-json-1.1")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("x-amzn-RequestId", f"fake-{time.monotonic_ns()}")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # -- the service --

    def validate(self, operation: str, body: dict[str, Any]) -> None:
        """Refuse a request the service's model does not allow, in the service's words."""
        if operation not in VALIDATED:
            return
        found = request_problems("sagemaker", operation, body)
        if found:
            with self._lock:
                self.calls[operation] += 1
                self.refused.append((operation, found))
            count = len(found)
            raise ServiceError(
                "ValidationException",
                f"{count} validation error{'s' if count > 1 else ''} detected: " + "; ".join(found),
            )

    def handle(self, operation: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.calls[operation] += 1
            queue = self._failures.get(operation)
            if queue:
                failure = queue.popleft()
                raise ServiceError(failure.code, failure.message, failure.status)
            handler = getattr(self, f"_op_{operation}", None)
            if handler is None:
                raise ServiceError("UnknownOperationException", f"{operation} is not faked", 400)
            return handler(body)

    def _job(self, name: str) -> FakeJob:
        job = self.jobs.get(name)
        if job is None:
            raise ServiceError("ValidationException", NOT_FOUND)
        return job

    def _store(self, request: dict[str, Any]) -> FakeJob:
        script = self._scripts.popleft() if self._scripts else list(DEFAULT_SCRIPT)
        job = FakeJob(request, script, time.time(), tags=list(request.get("Tags", [])))
        job.settle()
        self.jobs[job.name] = job
        self.creates[job.name] += 1
        return job

    def _op_CreateTrainingJob(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body["TrainingJobName"]
        if self._race_next_create:
            self._race_next_create = False
            self._store(body)
        if name in self.jobs:
            raise ServiceError("ResourceInUse", NAME_TAKEN.format(arn=self.arn(name)))
        self._store(body)
        return {"TrainingJobArn": self.arn(name)}

    def _description(self, job: FakeJob) -> dict[str, Any]:
        status, secondary, reason = job.current
        if status == "Completed" and job.name not in self._completed:
            self._completed.add(job.name)
            for callback in self._on_completed:
                callback(job)
        answer: dict[str, Any] = {
            key: value for key, value in job.request.items() if key not in ("Tags",)
        }
        answer.update(
            TrainingJobArn=self.arn(job.name),
            TrainingJobStatus=status,
            SecondaryStatus=secondary,
            CreationTime=job.created,
            LastModifiedTime=time.time(),
        )
        if reason:
            answer["FailureReason"] = reason
        if job.started is not None:
            answer["TrainingStartTime"] = job.started
        if job.ended is not None:
            answer["TrainingEndTime"] = job.ended
            answer["BillableTimeInSeconds"] = self.billable_seconds
            answer["TrainingTimeInSeconds"] = self.billable_seconds
        return answer

    def _op_DescribeTrainingJob(self, body: dict[str, Any]) -> dict[str, Any]:
        job = self._job(body["TrainingJobName"])
        answer = self._description(job)
        job.advance()
        return answer

    def _op_StopTrainingJob(self, body: dict[str, Any]) -> dict[str, Any]:
        job = self._job(body["TrainingJobName"])
        status = job.current[0]
        if status != "InProgress":
            raise ServiceError(
                "ValidationException",
                f"The request was rejected because the training job is in status {status}.",
            )
        # The job is in script[step] now; the next describe shows it stopping.
        job.script = [*job.script[: job.step], ("Stopping", "Stopping", ""), STOPPED]
        return {}

    def _op_ListTrainingJobs(self, body: dict[str, Any]) -> dict[str, Any]:
        contains = body.get("NameContains", "")
        jobs = sorted(self.jobs.values(), key=lambda job: job.created)
        return {
            "TrainingJobSummaries": [
                {
                    "TrainingJobName": job.name,
                    "TrainingJobArn": self.arn(job.name),
                    "CreationTime": job.created,
                    "TrainingJobStatus": job.current[0],
                }
                for job in jobs
                if contains in job.name
            ]
        }

    def _op_Search(self, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("Resource") != "TrainingJob":
            raise ServiceError("ValidationException", "only TrainingJob is faked")
        filters = (body.get("SearchExpression") or {}).get("Filters", [])
        results = []
        for job in sorted(self.jobs.values(), key=lambda job: job.created):
            tags = {tag["Key"]: tag["Value"] for tag in job.tags}
            if all(
                f["Name"].startswith("Tags.") and tags.get(f["Name"][5:]) == f["Value"]
                for f in filters
            ):
                results.append({"TrainingJob": {**self._description(job), "Tags": job.tags}})
        return {"Results": results}

    def _by_arn(self, arn: str) -> FakeJob:
        return self._job(arn.rsplit("/", 1)[-1])

    def _op_AddTags(self, body: dict[str, Any]) -> dict[str, Any]:
        job = self._by_arn(body["ResourceArn"])
        job.tags.extend(body.get("Tags", []))
        return {"Tags": job.tags}

    def _op_ListTags(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"Tags": self._by_arn(body["ResourceArn"]).tags}


def output_tarball(members: dict[str, bytes | str], *, dot_prefix: bool = False) -> bytes:
    """An ``output.tar.gz`` as a training job leaves it: ``members`` (path -> content) packed
    in order, with ``./`` before each name when ``dot_prefix`` (as ``tar -C dir .`` writes)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, content in members.items():
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(f"./{name}" if dot_prefix else name)
            info.size = len(data)
            info.mtime = int(time.time())
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
