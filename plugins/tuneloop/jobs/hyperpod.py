"""Nova jobs on SageMaker HyperPod (EKS orchestration), through the Kubernetes API.

We create the objects the Nova recipes launcher would create (see ``hyperpod_objects``) with
the kubernetes client ourselves instead of running ``hyperpod start-job``: the launcher appends
a random suffix to every job name, needs helm, the v2 CLI and a NeMo checkout on the worker, and
ignores helm's exit code. Creating the objects directly gives each job our deterministic name,
so a retried or cleared task finds the job it already started (describe-before-create), and
every object is found again by name on the next submit.

RFT: we create the services the launcher's RFT chart creates (vLLM generation, rollout hub,
prompter and reward-based scoring, the NATS message bus with its bootstrap Job, Redis when the
rollout delegates; each with its own ConfigMap, see ``hyperpod_objects``) instead of driving
the launcher and adopting its job by label. Driving the launcher would make exactly-once depend
on a helm release whose name we do not choose; creating the objects by name means a partly
created set (a crash between two creates) is completed by the next submit, never duplicated.
Every side object carries an ownerReference to the PyTorchJob, so deleting the job also lets
Kubernetes collect them. The first status check that sees the training job finished deletes
them, so they stop holding nodes; the PyTorchJob and its training ConfigMap stay as the record
of the run.

Each container gets the environment the launcher sets: ``X_AMZ_SOURCE_ACCOUNT`` (the backend's
``source_account``, or, when it connects through EKS, the account of its AWS credentials),
``INSTANCE_TYPE`` and ``AWS_REGION``. ``service_account_name`` names the service account the
pods run as (the launcher's ``cluster.service_account_name``).

Authentication: with ``kubeconfig`` the file is used as it is. Without it, HyperPod's
DescribeCluster names the EKS cluster (``Orchestrator.Eks.ClusterArn``), EKS's DescribeCluster
gives its endpoint and CA, and a bearer token is presigned from the same credentials, renewed
before its 15-minute lifetime ends. ``cluster`` may also be that EKS cluster's ARN. The AWS
clients and credentials come from ``tuneloop.aws``: the connection ``aws_conn_id`` inside
Airflow, boto3's default chain outside.

Cancel deletes a running job and everything submit created. A job that already finished is
left in place (its status and pods are the record of what happened) and its status returned.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from tuneloop import aws
from tuneloop.errors import Problem
from tuneloop.jobs.base import (
    JobError,
    JobNotFoundError,
    JobSpec,
    JobState,
    JobStatus,
    LogChunk,
    TransientJobError,
    UserJobError,
    constructor_config,
    job_error,
    validate_job_name,
)
from tuneloop.jobs.hyperpod_objects import (
    COMPONENT_LABEL,
    CONTAINER,
    JOB_LABEL,
    KUBEFLOW_GROUP,
    KUBEFLOW_JOB_LABEL,
    KUBEFLOW_VERSION,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    METHOD_LABEL,
    NODES_ANNOTATION,
    OUTPUT_ANNOTATION,
    PYTORCHJOBS,
    KubeObject,
    build_job_objects,
    config_map_name,
    is_dns_subdomain,
    owned_by,
    rft_companion_names,
    rft_record_config_map,
)

# Seconds an API call may take before we call the cluster unreachable.
REQUEST_TIMEOUT = 30
# EKS tokens are presigned STS URLs valid for 15 minutes; renew well before.
TOKEN_LIFETIME = 10 * 60
_IMAGE_ERRORS = frozenset({"ImagePullBackOff", "ErrImagePull", "InvalidImageName"})
_RUNNING_CONDITIONS = frozenset({"Created", "Running", "Restarting", "Suspended"})
_ACCOUNT = re.compile(r"^[0-9]{12}\Z")


class _NotFound(Exception):
    """The API answered 404 for the object itself (not for its namespace)."""


class _AlreadyExists(Exception):
    """The API answered 409 to a create: someone created the object first."""


@dataclass(frozen=True)
class _Health:
    """What the job object and its pods say, before logs are fetched."""

    state: JobState
    message: str
    failure_reason: str = ""
    retryable: bool = False
    log_pod: str = ""
    """A pod whose log tail explains the failure."""
    log_container: str = CONTAINER
    previous: bool = False
    """Read the log of the container's previous (crashed) instance."""


class HyperPodJobBackend:
    """Runs Nova jobs as Kubeflow PyTorchJobs on a HyperPod cluster's EKS."""

    type: ClassVar[str] = "hyperpod"

    def __init__(
        self,
        cluster: str,
        region: str,
        namespace: str = "kubeflow",
        aws_conn_id: str | None = "aws_default",
        kubeconfig: str | None = None,
        context: str | None = None,
        instance_type: str = "ml.p5.48xlarge",
        max_restarts: int = 5,
        log_lines: int = 50,
        service_account_name: str = "",
        source_account: str = "",
    ) -> None:
        self.cluster = cluster
        self.region = region
        self.namespace = namespace
        self.aws_conn_id = aws_conn_id
        self.kubeconfig = kubeconfig
        self.context = context
        self.instance_type = instance_type
        self.max_restarts = max_restarts
        self.log_lines = log_lines
        if service_account_name and not is_dns_subdomain(service_account_name):
            raise _setting_error(
                UserJobError,
                "service_account_name",
                f"{service_account_name!r} is not a Kubernetes service account name",
                "use lowercase letters, digits, '-' and '.', at most 253 characters, starting "
                "and ending with a letter or digit (or leave it empty for the namespace's "
                "default service account)",
            )
        self.service_account_name = service_account_name
        if source_account and not _ACCOUNT.match(source_account):
            raise _setting_error(
                UserJobError,
                "source_account",
                f"{source_account!r} is not an AWS account id",
                "use the 12-digit account id, or leave it empty to look it up",
            )
        self.source_account = source_account
        self._looked_up_account: str | None = None
        self._client: Any = None
        self._client_lock = threading.Lock()

    def config(self) -> dict[str, Any]:
        return constructor_config(self)

    @property
    def console_url(self) -> str:
        region = self.region
        return (
            f"https://{region}.console.aws.amazon.com/sagemaker/home?region={region}"
            f"#/cluster-management/{self.cluster}"
        )

    # --- protocol -------------------------------------------------------------------------

    def submit(self, spec: JobSpec) -> JobStatus:
        validate_job_name(spec.name)
        objects = build_job_objects(
            spec,
            namespace=self.namespace,
            region=self.region,
            instance_type=self.instance_type,
            source_account=self._source_account(),
            service_account=self.service_account_name,
        )
        job = self._get_job(spec.name)
        if job is None:
            try:
                job = self._create(objects.job)
            except _AlreadyExists:
                job = self._get_job(spec.name)
                if job is None:  # created and deleted again between our two calls
                    raise job_error(
                        TransientJobError, spec.name, "the job was deleted while being created"
                    ) from None
        if _managed(job):
            for companion in objects.companions:
                self._ensure(owned_by(companion, job), spec.name)
        return self._status_of(job)

    def status(self, name: str) -> JobStatus:
        job = self._get_job(name)
        if job is None:
            raise job_error(
                JobNotFoundError,
                name,
                f"no PyTorchJob {name!r} in namespace {self.namespace!r}",
            )
        return self._status_of(job)

    def cancel(self, name: str) -> JobStatus:
        job = self._get_job(name)
        if job is None:
            self._delete_companions(name, rft=True)
            return JobStatus(
                name=name,
                state=JobState.STOPPED,
                message="no such job (already deleted); nothing left to stop",
                console_url=self.console_url,
            )
        settled = _health_of_job(job)
        if settled is not None and settled.state.final:
            return self._status_of(job)
        # Judged by the job's own conditions: a job whose pods crash-loop is still holding its
        # nodes, so it is deleted like any running job.
        status = self._status_of(job)
        self._delete("PyTorchJob", name, name)
        self._delete_companions(name, rft=_labels(job).get(METHOD_LABEL) == "rft")
        return status.model_copy(
            update={
                "state": JobState.STOPPED,
                "message": f"cancelled; the job was {status.state.value.lower()}",
                "ended_at": datetime.now(UTC),
            }
        )

    def logs(self, name: str, cursor: str = "") -> LogChunk:
        position = _LogCursor.parse(cursor)
        pod = self._read("Pod", f"{name}-master-0", name)
        if pod is None:
            if self._get_job(name) is None:
                raise job_error(JobNotFoundError, name, f"no PyTorchJob {name!r}")
            return LogChunk(lines=[], cursor=position.dump())
        uid = pod.get("metadata", {}).get("uid", "")
        restarts = _restart_count(pod, CONTAINER)
        same_pod = position.pod == uid
        streams: list[tuple[list[tuple[tuple[str, int], str]], bool]] = []
        if same_pod and restarts > position.restarts:
            # The container the cursor was reading has exited; the kubelet keeps its log as
            # "previous" (only the latest one, so a second restart in between loses one log).
            continues = restarts == position.restarts + 1
            previous = self._pod_log(name, pod, position.since, previous=True)
            streams.append((previous, continues))
            streams.append((self._pod_log(name, pod, position.since), False))
        else:
            streams.append((self._pod_log(name, pod, position.since), same_pod))
        lines, moved = position.advance(streams)
        if same_pod and restarts > position.restarts + 1:
            lost = restarts - position.restarts - 1
            lines.insert(0, f"[the logs of {lost} earlier run(s) of the container are gone]")
        return LogChunk(lines=lines, cursor=moved.at(uid, restarts).dump())

    def find(self, labels: Mapping[str, str]) -> list[JobStatus]:
        selector = ",".join(
            f"{key}={value}" for key, value in {**labels, MANAGED_BY_LABEL: MANAGED_BY}.items()
        )
        api = self._custom()
        listing = self._call(
            "list",
            "PyTorchJob",
            f"selector {selector}",
            lambda: api.list_namespaced_custom_object(
                KUBEFLOW_GROUP,
                KUBEFLOW_VERSION,
                self.namespace,
                PYTORCHJOBS,
                label_selector=selector,
                _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT,
            ),
        )
        jobs = sorted(
            _decoded(listing).get("items", []),
            key=lambda j: (j["metadata"].get("creationTimestamp", ""), j["metadata"]["name"]),
        )
        # Found jobs are described from their own status only; status(name) adds pod health.
        return [self._status_of(job, with_pods=False) for job in jobs]

    def _source_account(self) -> str:
        """``X_AMZ_SOURCE_ACCOUNT``: the configured account; through EKS, the account of the
        credentials in use (STS GetCallerIdentity, once); with a kubeconfig and none
        configured, none (the launcher, too, leaves it out when it cannot tell)."""
        if self.source_account or self.kubeconfig:
            return self.source_account
        if self._looked_up_account is None:
            from botocore.exceptions import BotoCoreError, ClientError

            sts = aws.client("sts", self.region, conn_id=self.aws_conn_id)
            try:
                self._looked_up_account = str(sts.get_caller_identity()["Account"])
            except (BotoCoreError, ClientError) as exc:
                raise _setting_error(
                    TransientJobError,
                    "aws_conn_id",
                    f"cannot tell the AWS account of the connection: {exc}",
                    "set the backend's source_account, or check the connection's credentials",
                ) from None
        return self._looked_up_account

    # --- status ---------------------------------------------------------------------------

    def _status_of(self, job: dict[str, Any], with_pods: bool = True) -> JobStatus:
        name = job["metadata"]["name"]
        settled = _health_of_job(job)
        health = settled
        if health is None:
            pods = self._job_pods(name, job) if with_pods else []
            health = _health_of_pods(job, pods, self.max_restarts)
        if health.state is JobState.FAILED and with_pods:
            tail = self._log_tail(name, health)
            if tail:
                failure = health.failure_reason
                health = _with_reason(health, f"{failure}\n{tail}" if failure else tail)
        finished = settled is not None and settled.state.final
        if finished and with_pods and _labels(job).get(METHOD_LABEL) == "rft":
            self._release_rft_workloads(name)
        return self._to_status(job, health, finished)

    def _to_status(self, job: dict[str, Any], health: _Health, finished: bool) -> JobStatus:
        """``finished``: the job's own conditions say it ended (not only its pods' health)."""
        meta, status = job["metadata"], job.get("status") or {}
        started = _time(status.get("startTime"))
        ended = None
        if finished:
            ended = _time(status.get("completionTime")) or _time(
                _latest_true(status.get("conditions") or []).get("lastTransitionTime")
            )
        elif health.state.final:
            # Failed by pod health: the PyTorchJob still runs (and bills) until cancelled.
            ended = datetime.now(UTC)
        billable = None
        nodes = _node_count(job)
        if started is not None and nodes:
            billable = max(0.0, ((ended or datetime.now(UTC)) - started).total_seconds()) * nodes
        output = (meta.get("annotations") or {}).get(OUTPUT_ANNOTATION, "")
        return JobStatus(
            name=meta["name"],
            state=health.state,
            message=health.message,
            failure_reason=health.failure_reason,
            retryable=health.retryable,
            started_at=started,
            ended_at=ended,
            billable_seconds=billable,
            result_uri=f"{output}{meta['name']}/" if output else "",
            console_url=self.console_url,
            labels=dict(meta.get("labels") or {}),
        )

    def _job_pods(self, name: str, job: dict[str, Any]) -> list[dict[str, Any]]:
        selectors = [f"{KUBEFLOW_JOB_LABEL}={name}"]
        if _labels(job).get(METHOD_LABEL) == "rft":
            selectors.append(f"{JOB_LABEL}={name},{COMPONENT_LABEL}")  # the side workloads
        pods: list[dict[str, Any]] = []
        api = self._core()
        for selector in selectors:
            listing = self._call(
                "list",
                "Pod",
                name,
                functools.partial(
                    api.list_namespaced_pod,
                    self.namespace,
                    label_selector=selector,
                    _preload_content=False,
                    _request_timeout=REQUEST_TIMEOUT,
                ),
            )
            pods += _decoded(listing).get("items", [])
        return pods

    def _log_tail(self, name: str, health: _Health) -> str:
        pod = health.log_pod or f"{name}-master-0"
        api = self._core()
        for previous in (True, False) if health.previous else (False,):
            try:
                response = self._call(
                    "read the log of",
                    "Pod",
                    name,
                    functools.partial(
                        api.read_namespaced_pod_log,
                        pod,
                        self.namespace,
                        container=health.log_container,
                        tail_lines=self.log_lines,
                        previous=previous,
                        _preload_content=False,
                        _request_timeout=REQUEST_TIMEOUT,
                    ),
                )
            except (JobError, _NotFound):
                continue  # a missing log must not hide the failure itself
            text = response.data.decode("utf-8", "replace").rstrip("\n")
            if text:
                return f"last {self.log_lines} log lines of {pod}:\n{text}"
        return ""

    def _release_rft_workloads(self, name: str) -> None:
        """Delete the RFT side workloads of a finished job (they would keep GPU nodes busy)."""
        api = self._apps()
        listing = self._call(
            "list",
            "StatefulSet",
            name,
            lambda: api.list_namespaced_stateful_set(
                self.namespace,
                label_selector=f"{JOB_LABEL}={name}",
                _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT,
            ),
        )
        if _decoded(listing).get("items"):
            self._delete_companions(name, rft=True, keep_record=True)

    # --- logs -----------------------------------------------------------------------------

    def _pod_log(
        self, name: str, pod: dict[str, Any], since: str, previous: bool = False
    ) -> list[tuple[tuple[str, int], str]]:
        """(timestamp key, text) of the master container's log lines at or after ``since``."""
        query: list[tuple[str, str]] = [("container", CONTAINER), ("timestamps", "true")]
        if previous:
            query.append(("previous", "true"))
        if since:
            query.append(("sinceTime", since))
        pod_name = pod["metadata"]["name"]
        api = self._api()

        def read() -> Any:
            # sinceTime is part of the API but not of the generated client's method; build the
            # same request with the client's own serializer, auth and connection pool.
            if not hasattr(api, "param_serialize"):
                return read_with_the_older_client()
            method, url, headers, body, post = api.param_serialize(
                method="GET",
                resource_path="/api/v1/namespaces/{namespace}/pods/{name}/log",
                path_params={"namespace": self.namespace, "name": pod_name},
                query_params=query,
                header_params={"Accept": "text/plain"},
                auth_settings=["BearerToken"],
            )
            response = api.call_api(
                method, url, headers, body, post, _request_timeout=REQUEST_TIMEOUT
            )
            response.read()
            if response.status == 400:
                return None  # no such container instance yet (waiting to start) or any more
            if not 200 <= response.status <= 299:
                from kubernetes.client.exceptions import ApiException

                raise ApiException.from_response(http_resp=response, body=None, data=None)
            return response

        def read_with_the_older_client() -> Any:
            # kubernetes up to 36 (Amazon MWAA's Airflow 3.3.1 constraints pin 36.0.3): one
            # call_api that raises ApiException for any status outside 2xx.
            from kubernetes.client.exceptions import ApiException

            try:
                return api.call_api(
                    "/api/v1/namespaces/{namespace}/pods/{name}/log",
                    "GET",
                    path_params={"namespace": self.namespace, "name": pod_name},
                    query_params=query,
                    header_params={"Accept": "text/plain"},
                    auth_settings=["BearerToken"],
                    _return_http_data_only=True,
                    _preload_content=False,
                    _request_timeout=REQUEST_TIMEOUT,
                )
            except ApiException as exc:
                if exc.status == 400:
                    return None  # as above: no such container instance, yet or any more
                raise

        try:
            response = self._call("read the log of", "Pod", name, read)
        except _NotFound:
            return []
        if response is None:
            return []
        entries = []
        for raw in response.data.decode("utf-8", "replace").splitlines():
            stamp, _, text = raw.partition(" ")
            entries.append((_timestamp_key(stamp), text))
        return entries

    # --- objects --------------------------------------------------------------------------

    def _get_job(self, name: str) -> dict[str, Any] | None:
        return self._read("PyTorchJob", name, name)

    def _read(self, kind: str, obj: str, job: str) -> dict[str, Any] | None:
        try:
            return _decoded(self._call("read", kind, job, self._ops(kind, obj)["read"]))
        except _NotFound:
            return None

    def _create(self, obj: KubeObject) -> dict[str, Any]:
        create = self._ops(obj.kind, obj.name, obj.body)["create"]
        return _decoded(self._call("create", obj.kind, obj.name, create))

    def _ensure(self, obj: KubeObject, job: str) -> None:
        """Create ``obj`` unless it exists (a 409 means someone else just created it)."""
        if self._read(obj.kind, obj.name, job) is not None:
            return
        with contextlib.suppress(_AlreadyExists):
            self._call("create", obj.kind, job, self._ops(obj.kind, obj.name, obj.body)["create"])

    def _delete(self, kind: str, obj: str, job: str) -> None:
        with contextlib.suppress(_NotFound):
            self._call("delete", kind, job, self._ops(kind, obj)["delete"])

    def _delete_companions(self, job: str, *, rft: bool, keep_record: bool = False) -> None:
        """Delete what submit created beside the PyTorchJob; ``keep_record`` keeps the
        ConfigMap holding the training recipe."""
        record = ("ConfigMap", rft_record_config_map(job) if rft else config_map_name(job))
        names = rft_companion_names(job) if rft else []
        if not keep_record:
            names.append(record)
        for kind, obj in names:
            self._delete(kind, obj, job)

    def _ops(
        self, kind: str, name: str, body: dict[str, Any] | None = None
    ) -> dict[str, Callable[[], Any]]:
        """read / create / delete of one object; responses stay raw (see ``_decoded``)."""
        ns = self.namespace
        raw = {"_preload_content": False, "_request_timeout": REQUEST_TIMEOUT}
        background = {"propagation_policy": "Background", **raw}
        if kind == "PyTorchJob":
            api = self._custom()
            args = (KUBEFLOW_GROUP, KUBEFLOW_VERSION, ns, PYTORCHJOBS)
            return {
                "read": lambda: api.get_namespaced_custom_object(*args, name, **raw),
                "create": lambda: api.create_namespaced_custom_object(*args, body, **raw),
                "delete": lambda: api.delete_namespaced_custom_object(*args, name, **background),
            }
        core, apps, batch = self._core(), self._apps(), self._batch()
        methods = {
            "Pod": (core, "pod"),
            "ConfigMap": (core, "config_map"),
            "Service": (core, "service"),
            "StatefulSet": (apps, "stateful_set"),
            "Deployment": (apps, "deployment"),
            "Job": (batch, "job"),
        }
        api, suffix = methods[kind]
        return {
            "read": lambda: getattr(api, f"read_namespaced_{suffix}")(name, ns, **raw),
            "create": lambda: getattr(api, f"create_namespaced_{suffix}")(ns, body, **raw),
            "delete": lambda: getattr(api, f"delete_namespaced_{suffix}")(name, ns, **background),
        }

    # --- API calls and errors --------------------------------------------------------------

    def _call(self, action: str, kind: str, job: str, call: Callable[[], Any]) -> Any:
        """One API call; errors become typed job errors, except that a 404 for the object
        raises _NotFound and a 409 on create raises _AlreadyExists for the caller to handle."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            result = call()
        except ApiException as exc:
            raise self._api_error(exc, action, kind, job) from None
        except (HTTPError, OSError) as exc:
            raise job_error(
                TransientJobError,
                job,
                f"cannot reach the Kubernetes API of cluster {self.cluster!r}: {exc}",
                "retry; check the network path to the cluster's API endpoint",
            ) from None
        return result

    def _api_error(self, exc: Any, action: str, kind: str, job: str) -> Exception:
        code = int(getattr(exc, "status", 0) or 0)
        body = _status_body(exc)
        message = body.get("message") or getattr(exc, "reason", "") or str(exc)
        details = body.get("details") or {}
        what = f"{action} {kind} in namespace {self.namespace!r}"
        if code == 404 and details.get("kind") == "namespaces":
            return job_error(
                UserJobError,
                job,
                f"namespace {self.namespace!r} does not exist in cluster {self.cluster!r}",
                "create it, or set the backend's namespace to the one the Kubeflow training "
                "operator serves (usually kubeflow)",
            )
        if code == 404 and kind == "PyTorchJob" and not body:
            return job_error(
                UserJobError,
                job,
                f"cluster {self.cluster!r} has no PyTorchJob API ({KUBEFLOW_GROUP}/v1)",
                "install the Kubeflow training operator (HyperPod's training-operators chart)",
            )
        if code == 404:
            return _NotFound(message)
        if code == 409 and action == "create":
            return _AlreadyExists(message)
        if code in (401, 403):
            return job_error(
                UserJobError,
                job,
                f"not allowed to {what}: {message}",
                "the IAM role mapped in the EKS cluster's access entries needs Kubernetes RBAC "
                f"to create, get, list and delete pytorchjobs.{KUBEFLOW_GROUP}, configmaps, "
                f"services, statefulsets, deployments, jobs.batch and to read pods and pods/log in "
                f"namespace {self.namespace!r} (bind it to a Role or ClusterRole granting these)",
            )
        if code == 429 or code >= 500 or code == 0:
            return job_error(
                TransientJobError,
                job,
                f"the Kubernetes API could not {what} (HTTP {code}): {message}",
                "retry later",
            )
        return job_error(
            UserJobError, job, f"the Kubernetes API refused to {what} (HTTP {code}): {message}"
        )

    # --- clients ---------------------------------------------------------------------------

    def _api(self) -> Any:
        """The kubernetes ApiClient, built once per backend instance."""
        with self._client_lock:
            if self._client is None:
                self._client = self._connect()
            return self._client

    def _custom(self) -> Any:
        from kubernetes.client import CustomObjectsApi

        return CustomObjectsApi(self._api())

    def _core(self) -> Any:
        from kubernetes.client import CoreV1Api

        return CoreV1Api(self._api())

    def _apps(self) -> Any:
        from kubernetes.client import AppsV1Api

        return AppsV1Api(self._api())

    def _batch(self) -> Any:
        from kubernetes.client import BatchV1Api

        return BatchV1Api(self._api())

    def _connect(self) -> Any:
        if self.kubeconfig:
            return self._client_from_kubeconfig()
        return self._client_from_eks()

    def _client_from_kubeconfig(self) -> Any:
        from kubernetes import config

        try:
            return config.new_client_from_config(
                config_file=self.kubeconfig, context=self.context, persist_config=False
            )
        except Exception as exc:  # the loader raises ConfigException, OSError, YAML errors
            raise _setting_error(
                UserJobError,
                "kubeconfig",
                f"kubeconfig {self.kubeconfig!r} cannot be used: {exc}",
                "point kubeconfig at a readable file (and context at one of its contexts), or "
                "leave kubeconfig empty to connect through the AWS connection",
            ) from None

    def _client_from_eks(self) -> Any:
        import base64

        from kubernetes.client import ApiClient, Configuration

        eks_name = self._eks_cluster_name()
        eks = aws.client("eks", self.region, conn_id=self.aws_conn_id)
        cluster = self._aws(lambda: eks.describe_cluster(name=eks_name)["cluster"], eks_name)
        session = aws.session(self.region, conn_id=self.aws_conn_id)
        sts_url = (
            f"https://sts.{self.region}.amazonaws.com/?Action=GetCallerIdentity&Version=2011-06-15"
        )

        def token() -> str:
            return eks_token(session, eks_name, sts_url)

        configuration = Configuration()
        configuration.host = cluster["endpoint"]
        authority = cluster.get("certificateAuthority", {}).get("data", "")
        if authority:
            configuration.ca_cert_data = base64.b64decode(authority).decode("utf-8", "replace")
        configuration.api_key = {"BearerToken": token()}
        configuration.api_key_prefix = {"BearerToken": "Bearer"}
        issued = [time.monotonic()]

        def renew(config: Any) -> None:
            if time.monotonic() - issued[0] > TOKEN_LIFETIME:
                config.api_key["BearerToken"] = token()
                issued[0] = time.monotonic()

        # The client's constructor sets the hook to None, which is all its types say of it.
        configuration.refresh_api_key_hook = renew  # type: ignore[assignment]
        return ApiClient(configuration)

    def _eks_cluster_name(self) -> str:
        """The EKS cluster behind the HyperPod cluster (or named directly by its ARN)."""
        if self.cluster.startswith("arn:") and ":eks:" in self.cluster:
            return self.cluster.rsplit("/", 1)[-1]
        sagemaker = aws.client("sagemaker", self.region, conn_id=self.aws_conn_id)
        described = self._aws(lambda: sagemaker.describe_cluster(ClusterName=self.cluster), "")
        arn = described.get("Orchestrator", {}).get("Eks", {}).get("ClusterArn", "")
        if not arn:
            raise _setting_error(
                UserJobError,
                "cluster",
                f"HyperPod cluster {self.cluster!r} is not orchestrated by Amazon EKS",
                "Nova jobs need a HyperPod cluster created with an EKS orchestrator",
            )
        return arn.rsplit("/", 1)[-1]

    def _aws(self, call: Callable[[], Any], eks_name: str) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        what = f"EKS cluster {eks_name!r}" if eks_name else f"HyperPod cluster {self.cluster!r}"
        try:
            return call()
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code, message = error.get("Code", ""), error.get("Message", str(exc))
            if code in ("ResourceNotFoundException", "ValidationException", "NotFoundException"):
                raise _setting_error(
                    UserJobError,
                    "cluster",
                    f"{what} not found in region {self.region!r}: {message}",
                    "check the backend's cluster and region",
                ) from None
            if code in ("AccessDeniedException", "AccessDenied", "UnauthorizedOperation"):
                raise _setting_error(
                    UserJobError,
                    "cluster",
                    f"not allowed to describe {what}: {message}",
                    "grant the connection's role sagemaker:DescribeCluster and eks:DescribeCluster",
                ) from None
            failed = f"describing {what} failed: {message}"
            raise _setting_error(TransientJobError, "cluster", failed) from None
        except BotoCoreError as exc:
            failed = f"describing {what} failed: {exc}"
            raise _setting_error(TransientJobError, "cluster", failed) from None


# --- pure helpers ------------------------------------------------------------------------


EKS_TOKEN_PREFIX = "k8s-aws-v1."
EKS_TOKEN_URL_SECONDS = 60
"""How long the presigned URL inside a token may be used: what EKS's own tooling asks for; the
API server accepts the token for 15 minutes from the signature."""


def eks_token(session: Any, cluster_name: str, sts_url: str) -> str:
    """A bearer token for an EKS cluster, made with ``session``'s credentials (the Airflow
    connection's, not the process's): a presigned STS GetCallerIdentity URL that names the
    cluster in its signed ``x-k8s-aws-id`` header, base64url without padding, after
    ``k8s-aws-v1.``. This is what ``aws eks get-token`` prints. It is made here rather than
    with the Amazon provider's helper because that helper took no session before provider
    9.35, and Amazon MWAA's Airflow 3.3.1 ships 9.34.0."""
    import base64

    from botocore.signers import RequestSigner

    credentials = session.get_credentials()
    if credentials is None:
        raise JobError("no AWS credentials to sign an EKS token with")
    signer = RequestSigner(
        service_id=session.client("sts").meta.service_model.service_id,
        region_name=session.region_name,
        signing_name="sts",
        signature_version="v4",
        credentials=credentials,
        event_emitter=session.events,
    )
    url = signer.generate_presigned_url(
        request_dict={
            "method": "GET",
            "url": sts_url,
            "body": {},
            "headers": {"x-k8s-aws-id": cluster_name},
            "context": {},
        },
        region_name=session.region_name,
        expires_in=EKS_TOKEN_URL_SECONDS,
        operation_name="",
    )
    encoded = base64.urlsafe_b64encode(url.encode("utf-8")).decode("ascii")
    return EKS_TOKEN_PREFIX + encoded.rstrip("=")


def _setting_error(cls: type[JobError], setting: str, message: str, fix: str = "") -> JobError:
    """An error about the backend's own settings (or a cursor), not about one job."""
    return cls([Problem(f"backend.{setting}", message, fix=fix or None)])


def _labels(obj: dict[str, Any]) -> dict[str, str]:
    return obj.get("metadata", {}).get("labels") or {}


def _managed(job: dict[str, Any]) -> bool:
    return _labels(job).get(MANAGED_BY_LABEL) == MANAGED_BY


def _decoded(response: Any) -> dict[str, Any]:
    """The JSON body of a response read with ``_preload_content=False``."""
    if isinstance(response, dict):
        return response
    return json.loads(response.data)


def _status_body(exc: Any) -> dict[str, Any]:
    body = getattr(exc, "body", None)
    if body is None and getattr(exc, "data", None) is not None:
        body = exc.data
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    try:
        parsed = json.loads(body) if isinstance(body, str) else {}
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) and parsed.get("kind") == "Status" else {}


def _time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _latest_true(conditions: list[dict[str, Any]]) -> dict[str, Any]:
    """The True condition with the latest lastTransitionTime (later in the list wins ties)."""
    best: dict[str, Any] = {}
    best_key = ""
    for condition in conditions:
        if str(condition.get("status")) != "True":
            continue
        key = str(condition.get("lastTransitionTime") or "")
        if not best or key >= best_key:
            best, best_key = condition, key
    return best


def _node_count(job: dict[str, Any]) -> int:
    annotated = (job["metadata"].get("annotations") or {}).get(NODES_ANNOTATION, "")
    if annotated.isdigit():
        return int(annotated)
    specs = job.get("spec", {}).get("pytorchReplicaSpecs") or {}
    return sum(int(s.get("replicas") or 0) for s in specs.values())


def _health_of_job(job: dict[str, Any]) -> _Health | None:
    """The answer when the job's conditions settle it; None when the pods must be looked at."""
    name = job["metadata"]["name"]
    conditions = (job.get("status") or {}).get("conditions") or []
    latest = _latest_true(conditions)
    kind = latest.get("type", "")
    if not kind:
        return _Health(JobState.PENDING, "waiting for the training operator to start the job")
    if kind == "Succeeded":
        return _Health(JobState.SUCCEEDED, f"PyTorchJob {name} succeeded")
    if kind == "Failed":
        reason = f"{latest.get('reason', '')}: {latest.get('message', '')}".strip(": ")
        return _Health(
            JobState.FAILED, f"PyTorchJob {name} failed: {reason}", failure_reason=reason
        )
    if kind not in _RUNNING_CONDITIONS:
        return _Health(JobState.RUNNING, f"PyTorchJob {name} is {kind}")
    return None


def _health_of_pods(job: dict[str, Any], pods: list[dict[str, Any]], max_restarts: int) -> _Health:
    """A job the operator calls Created/Running/Restarting/Suspended, judged by its pods."""
    name = job["metadata"]["name"]
    kind = _latest_true((job.get("status") or {}).get("conditions") or []).get("type", "")
    # The master first: its log is the one that explains a failure.
    pods = sorted(pods, key=lambda p: p["metadata"]["name"] != f"{name}-master-0")
    for pod in pods:
        pod_name = pod["metadata"]["name"]
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            waiting = (status.get("state") or {}).get("waiting") or {}
            reason, message = waiting.get("reason", ""), waiting.get("message", "")
            if reason in _IMAGE_ERRORS:
                image = status.get("image", "")
                text = f"pod {pod_name} cannot pull image {image}: {reason} {message}".strip()
                return _Health(JobState.FAILED, text, failure_reason=text)
    for pod in pods:
        pod_name = pod["metadata"]["name"]
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            waiting = (status.get("state") or {}).get("waiting") or {}
            restarts = int(status.get("restartCount") or 0)
            container = status.get("name", CONTAINER)
            if waiting.get("reason") == "CrashLoopBackOff":
                text = (
                    f"pod {pod_name} container {container} is in CrashLoopBackOff "
                    f"after {restarts} restart(s)"
                )
                return _Health(JobState.FAILED, text, text, False, pod_name, container, True)
            if restarts > max_restarts:
                text = (
                    f"pod {pod_name} container {container} restarted {restarts} times "
                    f"(more than max_restarts={max_restarts})"
                )
                crashed = bool(waiting) or "terminated" in (status.get("state") or {})
                return _Health(JobState.FAILED, text, text, False, pod_name, container, crashed)
    for pod in pods:
        for condition in (pod.get("status") or {}).get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("reason") == (
                "Unschedulable"
            ):
                return _Health(
                    JobState.PENDING,
                    f"waiting for capacity: pod {pod['metadata']['name']} cannot be scheduled: "
                    f"{condition.get('message', '')}".rstrip(": "),
                )
    running = any((p.get("status") or {}).get("phase") == "Running" for p in pods)
    if kind == "Created" and not running:
        return _Health(JobState.PENDING, f"PyTorchJob {name} created; waiting for its pods")
    if kind == "Restarting":
        return _Health(JobState.RUNNING, f"PyTorchJob {name} is restarting failed pods")
    if kind == "Suspended":
        return _Health(JobState.RUNNING, f"PyTorchJob {name} is suspended (queued)")
    return _Health(JobState.RUNNING, f"PyTorchJob {name} is running")


def _with_reason(health: _Health, reason: str) -> _Health:
    return _Health(
        health.state,
        health.message,
        reason,
        health.retryable,
        health.log_pod,
        health.log_container,
        health.previous,
    )


def _restart_count(pod: dict[str, Any], container: str) -> int:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == container:
            return int(status.get("restartCount") or 0)
    return 0


def _timestamp_key(stamp: str) -> tuple[str, int]:
    """An RFC3339(Nano) UTC timestamp as (seconds part, nanoseconds), comparable as a tuple;
    the kubelet trims trailing zeros of the fraction, so the strings alone do not sort."""
    base, _, frac = stamp.rstrip("Z").partition(".")
    digits = "".join(c for c in frac if c.isdigit())[:9]
    return base, int(digits.ljust(9, "0")) if digits else 0


def _format_key(key: tuple[str, int]) -> str:
    return f"{key[0]}.{key[1]:09d}Z"


@dataclass(frozen=True)
class _LogCursor:
    """Where a log reader stands: the pod instance and container restart it read, the
    timestamp of the last line it got and how many lines carried that exact timestamp."""

    pod: str = ""
    restarts: int = 0
    last: tuple[str, int] | None = None
    same: int = 0

    @classmethod
    def parse(cls, text: str) -> _LogCursor:
        if not text:
            return cls()
        try:
            data = json.loads(text)
            last = _timestamp_key(data["t"]) if data.get("t") else None
            return cls(str(data.get("p", "")), int(data.get("r", 0)), last, int(data.get("n", 0)))
        except (ValueError, TypeError, KeyError):
            raise _setting_error(
                UserJobError, "cursor", f"log cursor {text!r} is not one this backend wrote"
            ) from None

    def dump(self) -> str:
        data: dict[str, Any] = {"p": self.pod, "r": self.restarts, "n": self.same}
        if self.last is not None:
            data["t"] = _format_key(self.last)
        return json.dumps(data, separators=(",", ":"))

    @property
    def since(self) -> str:
        """The sinceTime to ask for; lines at that very time are filtered here."""
        return _format_key(self.last) if self.last else ""

    def at(self, pod: str, restarts: int) -> _LogCursor:
        return _LogCursor(pod, restarts, self.last, self.same)

    def advance(
        self, streams: list[tuple[list[tuple[tuple[str, int], str]], bool]]
    ) -> tuple[list[str], _LogCursor]:
        """New lines of each stream, in order, and the cursor after them.

        A stream that continues the one this cursor read skips the lines it already returned
        (those before ``last``, and the first ``same`` lines at ``last``); another stream only
        skips lines from before ``last``.
        """
        out: list[str] = []
        last, same = self.last, self.same
        for entries, continues in streams:
            seen_at_last = 0
            stream_last, stream_same = last, same if continues else 0
            for key, text in entries:
                if self.last is not None:
                    if key < self.last:
                        continue
                    if continues and key == self.last:
                        seen_at_last += 1
                        if seen_at_last <= self.same:
                            continue
                out.append(text)
                if key == stream_last:
                    stream_same += 1
                else:
                    stream_last, stream_same = key, 1
            last, same = stream_last, stream_same
        return out, _LogCursor(self.pod, self.restarts, last, same)
