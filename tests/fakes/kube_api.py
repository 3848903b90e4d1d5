"""A small Kubernetes API server in memory, spoken to over real HTTP by the real client.

It implements what the HyperPod job backend uses: namespaced objects of any kind (create, get,
list with ``labelSelector``, delete) under ``/api/v1`` and ``/apis/<group>/<version>``, and pod
logs (``tailLines``, ``sinceTime``, ``sinceSeconds``, ``timestamps``, ``previous``). Errors come
back as Kubernetes ``Status`` bodies, the way the client expects them.

Tests script a job's life through ``FakeKube``: set the PyTorchJob's conditions, add pods and
change their container states, write log lines, restart containers, inject failures (a 403 on
create, a 500 once, a 429) and count requests per route.

Use the ``fake_kube`` fixture: it starts a server on a free loopback port and writes a
kubeconfig pointing at it (``fake_kube.kubeconfig``).
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import threading
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import pytest

TOKEN = "fake-kube-token"
DEFAULT_NAMESPACE = "kubeflow"
KUBEFLOW_JOB_LABEL = "training.kubeflow.org/job-name"
REPLICA_TYPE_LABEL = "training.kubeflow.org/replica-type"

_KINDS = {
    "pytorchjobs": "PyTorchJob",
    "configmaps": "ConfigMap",
    "pods": "Pod",
    "services": "Service",
    "statefulsets": "StatefulSet",
    "deployments": "Deployment",
    "jobs": "Job",
}
# /api/v1/namespaces/{ns}/{plural}[/{name}[/log]]  and  /apis/{g}/{v}/namespaces/{ns}/...
_PATH = re.compile(
    r"^/(?:api/v1|apis/(?P<group>[^/]+)/(?P<version>[^/]+))"
    r"/namespaces/(?P<ns>[^/]+)/(?P<plural>[^/]+)(?:/(?P<name>[^/]+)(?:/(?P<sub>log))?)?$"
)


def rfc3339_nano(moment: datetime) -> str:
    """Go's RFC3339Nano as the kubelet writes it: nanoseconds with trailing zeros trimmed."""
    moment = moment.astimezone(UTC)
    frac = f"{moment.microsecond:06d}000".rstrip("0")
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + (f".{frac}" if frac else "") + "Z"


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text: str) -> datetime:
    base, _, frac = text.rstrip("Z").partition(".")
    moment = datetime.strptime(base, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    if frac:
        moment += timedelta(microseconds=int(frac[:6].ljust(6, "0")))
    return moment


def status_body(code: int, reason: str, message: str, details: dict | None = None) -> dict:
    """A Kubernetes ``Status`` object, the body of every error response."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure" if code >= 400 else "Success",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details is not None:
        body["details"] = details
    return body


def matches_selector(labels: Mapping[str, str], selector: str) -> bool:
    """Equality, inequality and existence requirements, comma-separated (all must hold)."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = re.split(r"==?", term, maxsplit=1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")
_DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?\Z")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?\Z")
# Kinds whose pod template the API server validates (a custom resource's is not).
_POD_TEMPLATES = {"statefulsets", "deployments", "jobs"}


def _is_subdomain(name: str) -> bool:
    return 0 < len(name) <= 253 and all(_DNS_LABEL.match(p) for p in name.split("."))


def invalid_fields(plural: str, body: dict[str, Any]) -> list[str]:
    """What the API server's validation would refuse in a created object: names (a DNS
    subdomain; a DNS-1035 label for a Service; a Job's name becomes a label value, so at most
    63), label values, and pod templates that mount a volume they do not declare."""
    meta = body.get("metadata") or {}
    name = str(meta.get("name", ""))
    problems = []
    if plural == "services":
        if len(name) > 63 or not _DNS_1035_LABEL.match(name):
            problems.append(f"metadata.name: Invalid value: {name!r}: a DNS-1035 label")
    elif not _is_subdomain(name):
        problems.append(f"metadata.name: Invalid value: {name!r}: a DNS-1123 subdomain")
    if plural == "jobs" and len(name) > 63:
        problems.append(f"metadata.name: Invalid value: {name!r}: must be no more than 63")
    template = (body.get("spec") or {}).get("template") or {}
    labelled = [("metadata.labels", meta.get("labels") or {})]
    if plural in _POD_TEMPLATES:
        labelled.append(
            ("spec.template.metadata.labels", (template.get("metadata") or {}).get("labels") or {})
        )
    for where, labels in labelled:
        for key, value in labels.items():
            if len(str(value)) > 63 or not _LABEL_VALUE.match(str(value)):
                problems.append(f"{where}: Invalid value: {value!r} ({key})")
    if plural in _POD_TEMPLATES:
        pod = template.get("spec") or {}
        declared = {v.get("name") for v in pod.get("volumes") or []}
        for group in ("initContainers", "containers"):
            for container in pod.get(group) or []:
                for mount in container.get("volumeMounts") or []:
                    if mount.get("name") not in declared:
                        problems.append(
                            f"spec.template.spec.{group}.volumeMounts.name: Not found: "
                            f"{mount.get('name')!r}"
                        )
    return problems


# What the API server's query decoding takes as true (Go's strconv.ParseBool): the kubernetes
# client up to 36 sends Python's "True", from 37 on "true".
_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})


def _flag(query: dict[str, str], name: str) -> bool:
    return query.get(name, "") in _TRUE


@dataclass
class _Failure:
    method: str
    plural: str
    code: int
    times: int
    message: str


@dataclass
class _ContainerLog:
    """Log lines of one container instance: (time, text)."""

    lines: list[tuple[datetime, str]] = field(default_factory=list)


class FakeKube:
    """In-memory objects, scripted job life, injected errors and request counts."""

    def __init__(self, namespaces: tuple[str, ...] = (DEFAULT_NAMESPACE,)) -> None:
        self.namespaces = set(namespaces)
        self._objects: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        self._logs: dict[tuple[str, str, str], list[_ContainerLog]] = {}
        self._failures: list[_Failure] = []
        self._lock = threading.RLock()
        self.requests: Counter[tuple[str, str]] = Counter()
        """(method, plural) -> requests received, including failed ones."""
        self.creates: Counter[str] = Counter()
        """plural -> objects actually created."""
        self.deletes: Counter[str] = Counter()
        self.log_queries: list[dict[str, str]] = []
        self.server: ThreadingHTTPServer | None = None
        self.kubeconfig: Path | None = None
        self._clock = datetime(2026, 1, 1, tzinfo=UTC)

    # --- server ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self.server is not None, "server not started"
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> None:
        fake = self

        class Handler(_Handler):
            kube = fake

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def write_kubeconfig(self, path: Path, namespace: str = DEFAULT_NAMESPACE) -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": TOKEN}}],
            "contexts": [
                {
                    "name": "fake",
                    "context": {"cluster": "fake", "user": "fake", "namespace": namespace},
                }
            ],
            "current-context": "fake",
        }
        path.write_text(json.dumps(config), encoding="utf-8")  # JSON is YAML
        self.kubeconfig = path
        return path

    # --- objects --------------------------------------------------------------------------

    def objects(self, plural: str, namespace: str = DEFAULT_NAMESPACE) -> list[dict[str, Any]]:
        with self._lock:
            return [copy.deepcopy(o) for o in self._objects.get((namespace, plural), {}).values()]

    def get(self, plural: str, name: str, namespace: str = DEFAULT_NAMESPACE) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self._objects[(namespace, plural)][name])

    def exists(self, plural: str, name: str, namespace: str = DEFAULT_NAMESPACE) -> bool:
        with self._lock:
            return name in self._objects.get((namespace, plural), {})

    def put(self, plural: str, obj: dict[str, Any], namespace: str = DEFAULT_NAMESPACE) -> dict:
        """Store an object directly (as if someone else created it); not counted as a request."""
        with self._lock:
            stored = self._stamp(copy.deepcopy(obj), plural, namespace)
            self._objects.setdefault((namespace, plural), {})[stored["metadata"]["name"]] = stored
            return copy.deepcopy(stored)

    def created(self, plural: str) -> int:
        """How many objects of this kind were created through the API."""
        return self.creates[plural]

    def count(self, method: str, plural: str) -> int:
        return self.requests[(method.upper(), plural)]

    def fail(
        self, method: str, plural: str, code: int, times: int = 1, message: str = "injected"
    ) -> None:
        """The next ``times`` requests of ``method`` on ``plural`` answer ``code``."""
        with self._lock:
            self._failures.append(_Failure(method.upper(), plural, code, times, message))

    # --- scripting a job's life -----------------------------------------------------------

    def tick(self, seconds: float = 1.0) -> datetime:
        """Advance the fake clock (used for timestamps of conditions and log lines)."""
        with self._lock:
            self._clock += timedelta(seconds=seconds)
            return self._clock

    def set_job_conditions(
        self,
        name: str,
        conditions: list[str | tuple[str, str, str] | dict[str, Any]],
        *,
        start_time: datetime | None = None,
        completion_time: datetime | None = None,
        namespace: str = DEFAULT_NAMESPACE,
    ) -> None:
        """Replace a PyTorchJob's status.conditions.

        Each entry is a type (``"Running"``), a ``(type, reason, message)`` tuple or a full dict.
        Entries are given ascending transition times; only the last one stays ``True``, the way
        the training operator leaves earlier conditions in the list as ``False``.
        """
        with self._lock:
            job = self._objects[(namespace, "pytorchjobs")][name]
            built = []
            for index, entry in enumerate(conditions):
                if isinstance(entry, dict):
                    built.append(entry)
                    continue
                kind, reason, message = (entry, "", "") if isinstance(entry, str) else entry
                built.append(
                    {
                        "type": kind,
                        "status": "True" if index == len(conditions) - 1 else "False",
                        "reason": reason or f"PyTorchJob{kind}",
                        "message": message or f"PyTorchJob {name} is {kind.lower()}.",
                        "lastTransitionTime": rfc3339(self.tick()),
                        "lastUpdateTime": rfc3339(self._clock),
                    }
                )
            status = job.setdefault("status", {})
            status["conditions"] = built
            if start_time is not None:
                status["startTime"] = rfc3339(start_time)
            if completion_time is not None:
                status["completionTime"] = rfc3339(completion_time)

    def add_pod(
        self,
        name: str,
        *,
        job: str | None = None,
        replica_type: str = "master",
        phase: str = "Running",
        container: str = "pytorch",
        labels: Mapping[str, str] | None = None,
        namespace: str = DEFAULT_NAMESPACE,
    ) -> dict[str, Any]:
        """A pod with one running container; ``job`` adds the training operator's labels."""
        pod_labels = dict(labels or {})
        if job is not None:
            pod_labels[KUBEFLOW_JOB_LABEL] = job
            pod_labels[REPLICA_TYPE_LABEL] = replica_type
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": pod_labels},
            "spec": {"containers": [{"name": container, "image": "example/image:latest"}]},
            "status": {
                "phase": phase,
                "conditions": [{"type": "PodScheduled", "status": "True"}],
                "containerStatuses": [
                    {
                        "name": container,
                        "ready": phase == "Running",
                        "restartCount": 0,
                        "image": "example/image:latest",
                        "imageID": "",
                        "state": {"running": {"startedAt": rfc3339(self._clock)}}
                        if phase == "Running"
                        else {"waiting": {"reason": "ContainerCreating"}},
                    }
                ],
            },
        }
        with self._lock:
            self._logs[(namespace, name, container)] = [_ContainerLog()]
        return self.put("pods", pod, namespace)

    def set_container_state(
        self,
        pod: str,
        *,
        waiting: tuple[str, str] | None = None,
        restart_count: int | None = None,
        phase: str | None = None,
        namespace: str = DEFAULT_NAMESPACE,
    ) -> None:
        """Put the pod's first container in a waiting state such as
        ``("CrashLoopBackOff", "back-off 5m0s restarting failed container")``."""
        with self._lock:
            obj = self._objects[(namespace, "pods")][pod]
            status = obj["status"]["containerStatuses"][0]
            if waiting is not None:
                status["state"] = {"waiting": {"reason": waiting[0], "message": waiting[1]}}
                status["ready"] = False
            if restart_count is not None:
                status["restartCount"] = restart_count
            if phase is not None:
                obj["status"]["phase"] = phase

    def make_unschedulable(
        self, pod: str, message: str, namespace: str = DEFAULT_NAMESPACE
    ) -> None:
        with self._lock:
            obj = self._objects[(namespace, "pods")][pod]
            obj["status"] = {
                "phase": "Pending",
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": message,
                    }
                ],
            }

    def write_log(
        self, pod: str, *lines: str, container: str = "pytorch", namespace: str = DEFAULT_NAMESPACE
    ) -> None:
        """Append lines to the running container's log, one fake-clock millisecond apart."""
        with self._lock:
            log = self._logs.setdefault((namespace, pod, container), [_ContainerLog()])[-1]
            for line in lines:
                self._clock += timedelta(milliseconds=1)
                log.lines.append((self._clock, line))

    def restart_container(
        self, pod: str, container: str = "pytorch", namespace: str = DEFAULT_NAMESPACE
    ) -> None:
        """The container exits and starts again: its log so far becomes the previous log."""
        with self._lock:
            self._logs.setdefault((namespace, pod, container), [_ContainerLog()]).append(
                _ContainerLog()
            )
            obj = self._objects[(namespace, "pods")][pod]
            for status in obj["status"]["containerStatuses"]:
                if status["name"] == container:
                    status["restartCount"] = status.get("restartCount", 0) + 1
                    status["state"] = {"running": {"startedAt": rfc3339(self.tick())}}

    # --- request handling (called by the handler) ----------------------------------------

    def _stamp(self, obj: dict[str, Any], plural: str, namespace: str) -> dict[str, Any]:
        meta = obj.setdefault("metadata", {})
        meta.setdefault("namespace", namespace)
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", rfc3339(self.tick()))
        meta["resourceVersion"] = str(int(meta.get("resourceVersion", "0")) + 1)
        obj.setdefault("kind", _KINDS.get(plural, plural))
        return obj

    def _injected(self, method: str, plural: str) -> _Failure | None:
        for failure in self._failures:
            if failure.method == method and failure.plural == plural and failure.times > 0:
                failure.times -= 1
                return failure
        return None

    def handle(
        self, method: str, path: str, query: dict[str, str], body: dict | None
    ) -> tuple[int, Any]:
        match = _PATH.match(path)
        if not match:
            return 404, "404 page not found"
        ns, plural, name, sub = match["ns"], match["plural"], match["name"], match["sub"]
        with self._lock:
            self.requests[(method, plural)] += 1
            failure = self._injected(method, plural)
            if failure is not None:
                reasons = {403: "Forbidden", 409: "AlreadyExists", 429: "TooManyRequests"}
                return failure.code, status_body(
                    failure.code, reasons.get(failure.code, "InternalError"), failure.message
                )
            if ns not in self.namespaces:
                return 404, status_body(
                    404,
                    "NotFound",
                    f'namespaces "{ns}" not found',
                    {"name": ns, "kind": "namespaces"},
                )
            bucket = self._objects.setdefault((ns, plural), {})
            if sub == "log":
                return self._log(ns, name, query)
            if method == "POST" and name is None:
                return self._create(bucket, plural, ns, body or {})
            if method == "GET" and name is None:
                return self._list(bucket, plural, query)
            if name not in bucket:
                return 404, _not_found(plural, name)
            if method == "GET":
                return 200, copy.deepcopy(bucket[name])
            if method == "DELETE":
                bucket.pop(name)
                self.deletes[plural] += 1
                return 200, status_body(200, "", "", {"name": name, "kind": plural})
        return 405, status_body(405, "MethodNotAllowed", f"{method} is not supported here")

    def _create(self, bucket: dict, plural: str, ns: str, body: dict) -> tuple[int, Any]:
        name = body.get("metadata", {}).get("name", "")
        problems = invalid_fields(plural, body)
        if problems:
            kind = _KINDS.get(plural, plural)
            return 422, status_body(
                422,
                "Invalid",
                f'{kind} "{name}" is invalid: {"; ".join(problems)}',
                {"name": name, "kind": plural},
            )
        if name in bucket:
            return 409, status_body(
                409,
                "AlreadyExists",
                f'{plural} "{name}" already exists',
                {"name": name, "kind": plural},
            )
        stored = self._stamp(copy.deepcopy(body), plural, ns)
        bucket[name] = stored
        self.creates[plural] += 1
        return 201, copy.deepcopy(stored)

    def _list(self, bucket: dict, plural: str, query: dict[str, str]) -> tuple[int, Any]:
        selector = query.get("labelSelector", "")
        items = [
            copy.deepcopy(o)
            for o in bucket.values()
            if matches_selector(o.get("metadata", {}).get("labels") or {}, selector)
        ]
        kind = _KINDS.get(plural, plural)
        return 200, {
            "kind": f"{kind}List",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": "1"},
            "items": items,
        }

    def _log(self, ns: str, pod: str, query: dict[str, str]) -> tuple[int, Any]:
        self.log_queries.append(dict(query))
        if pod not in self._objects.get((ns, "pods"), {}):
            return 404, _not_found("pods", pod)
        spec = self._objects[(ns, "pods")][pod]["spec"]
        container = query.get("container") or spec["containers"][0]["name"]
        instances = self._logs.get((ns, pod, container))
        if instances is None:
            return 400, status_body(
                400, "BadRequest", f"container {container} is not valid for pod {pod}"
            )
        waiting = _waiting_reason(self._objects[(ns, "pods")][pod], container)
        if waiting and not _flag(query, "previous") and not instances[-1].lines:
            return 400, status_body(
                400,
                "BadRequest",
                f'container "{container}" in pod "{pod}" is waiting to start: {waiting}',
            )
        if _flag(query, "previous"):
            if len(instances) < 2:
                return 400, status_body(
                    400,
                    "BadRequest",
                    f'previous terminated container "{container}" in pod "{pod}" not found',
                )
            lines = instances[-2].lines
        else:
            lines = instances[-1].lines
        if "sinceTime" in query:
            since = _parse_time(query["sinceTime"])
            lines = [(t, text) for t, text in lines if t >= since]
        elif "sinceSeconds" in query:
            since = self._clock - timedelta(seconds=int(query["sinceSeconds"]))
            lines = [(t, text) for t, text in lines if t >= since]
        if "tailLines" in query:
            tail = int(query["tailLines"])
            lines = lines[-tail:] if tail else []
        stamp = _flag(query, "timestamps")
        return 200, "".join(
            (f"{rfc3339_nano(t)} {text}\n" if stamp else f"{text}\n") for t, text in lines
        )


def _waiting_reason(pod: dict[str, Any], container: str) -> str:
    for status in pod.get("status", {}).get("containerStatuses") or []:
        if status["name"] == container:
            return (status.get("state", {}).get("waiting") or {}).get("reason", "")
    return "ContainerCreating"


def _not_found(plural: str, name: str | None) -> dict[str, Any]:
    group = "kubeflow.org" if plural == "pytorchjobs" else ""
    what = f"{plural}.{group}" if group else plural
    return status_body(
        404, "NotFound", f'{what} "{name}" not found', {"name": name, "kind": plural}
    )


class _Handler(BaseHTTPRequestHandler):
    kube: FakeKube

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def _serve(self, method: str) -> None:
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self._reply(401, status_body(401, "Unauthorized", "Unauthorized"))
            return
        body = json.loads(raw) if raw else None
        code, payload = self.kube.handle(method, parts.path, query, body)
        self._reply(code, payload)

    def _reply(self, code: int, payload: Any) -> None:
        if isinstance(payload, str):
            data = payload.encode()
            kind = "text/plain; charset=utf-8"
        else:
            data = json.dumps(payload).encode()
            kind = "application/json"
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        if code == 429:
            # The client's connection pool honours Retry-After; 0 keeps tests fast.
            self.send_header("Retry-After", "0")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_PATCH(self) -> None:
        self._serve("PATCH")


K = TypeVar("K", bound=FakeKube)


@contextlib.contextmanager
def serving(kube: K, kubeconfig: Path) -> Iterator[K]:
    """``kube`` running, with a kubeconfig for it at ``kubeconfig``; stopped afterwards."""
    kube.start()
    kube.write_kubeconfig(kubeconfig)
    try:
        yield kube
    finally:
        kube.stop()


@pytest.fixture
def fake_kube(tmp_path: Path) -> Iterator[FakeKube]:
    """A running fake API server with namespace ``kubeflow`` and a kubeconfig for it."""
    with serving(FakeKube(), tmp_path / "kubeconfig") as kube:
        yield kube
