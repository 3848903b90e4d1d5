"""The Kubernetes objects of a Nova job on HyperPod, built the way the recipes launcher builds them.

The launcher (``hyperpod start-job`` -> ``main.py`` -> ``helm install``) renders one of two
charts (aws/sagemaker-hyperpod-recipes, ``launcher/nova/k8s_templates/{SFT,RFT}``):

- SFT, CPT and evaluation: a ConfigMap ``training-config-<job>`` holding the resolved recipe and
  a Kubeflow ``PyTorchJob`` ``<job>``: one master and ``run.replicas - 1`` workers, container
  ``pytorch`` after an ``init-container``, GPU and EFA requests per instance type, the
  restricted-instance-group toleration and node affinity, the FSx, log and NVMe (``/tmp``) host
  mounts. An evaluation recipe gets host networking (its reward or judge Lambda is called from
  the node) and the cluster CA certificate.
- RFT: separate services, each with its own ConfigMap ``<base>-<service>-config`` whose recipe
  carries the service's ``task_type``: the training PyTorchJob (``omega_rl_train``), vLLM
  generation (StatefulSet, ``storm_gen_vllm``), the rollout hub (Deployment, ``storm_hub``), the
  prompter and reward-based-scoring Jobs (``storm_prompt_loader``, ``storm_rbs``), a NATS
  server (StatefulSet of three with its own ``nats.conf``) with a bootstrap Job
  (``storm_nats_bootstrap``), and Redis when the rollout delegates.

Every container gets the launcher's environment (``X_AMZ_SOURCE_ACCOUNT`` when known,
``INSTANCE_TYPE``, ``AWS_REGION``) and, when the backend names one, the service account.

Names: the PyTorchJob is named after the job, so that a retried submit finds it. The launcher
keeps run names to 40 characters (``main.py`` ``valid_run_name``) so that its longest
suffixed names fit: a StatefulSet name of at most 52 (its pods carry the label
``controller-revision-hash: <name>-<10 characters>``, a label value of at most 63), Service and
Job names that are DNS labels of at most 63. Our job names may be 48 characters, so the RFT side
objects are named from a base of at most 40: the job name itself when it is short enough,
otherwise its first characters and a hash of the whole name, the same on every submit.

Here the objects are plain dicts (no kubernetes import), with our labels and annotations that
let ``status`` and ``cancel`` work from the job name alone.
"""

from __future__ import annotations

import copy
import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from tuneloop.documents import dump_yaml
from tuneloop.jobs.base import JobSpec, UserJobError, job_error
from tuneloop.recipes.catalog import (
    IMAGE_ACCOUNTS,
    INSTANCE_RESOURCES,
    RFT_HYPERPOD_SIDECAR_IMAGES,
    CatalogError,
    InstanceResources,
    Method,
    Platform,
    container_image,
)

KUBEFLOW_GROUP = "kubeflow.org"
KUBEFLOW_VERSION = "v1"
PYTORCHJOBS = "pytorchjobs"

MANAGED_BY_LABEL = "tuneloop.io/managed-by"
MANAGED_BY = "tuneloop"
JOB_LABEL = "tuneloop.io/job"
"""On every object and pod template a job owns, so its parts can be found by label."""
COMPONENT_LABEL = "tuneloop.io/component"
"""On the RFT side objects: vllm-generation, hub, prompter, rbs, nats-server, nats-bootstrap,
redis."""
METHOD_LABEL = "tuneloop.io/method"
KUBEFLOW_JOB_LABEL = "training.kubeflow.org/job-name"
"""Set by the training operator on every pod of a PyTorchJob."""
OUTPUT_ANNOTATION = "tuneloop.io/output-uri"
NODES_ANNOTATION = "tuneloop.io/nodes"

CONTAINER = "pytorch"
RECIPE_KEY = "config.yaml"
RECIPE_MOUNT = "/config"
RESTRICTED_TOLERATION = {
    "key": "sagemaker.amazonaws.com/RestrictedNode",
    "operator": "Equal",
    "value": "Worker",
    "effect": "NoSchedule",
}
INIT_CONTAINER = "init-container"
INIT_IMAGE = "init-container-repo:latest"

# Kubernetes name limits (see the module docstring for where each comes from).
DNS_LABEL_MAX = 63
DNS_SUBDOMAIN_MAX = 253
STATEFULSET_NAME_MAX = 52
SIDE_NAME_BASE_MAX = 40
_HASH_CHARS = 8
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")

NATS_REPLICAS = 3
"""The chart's nats.conf routes to exactly three servers."""

# (volume, mount) of every volume the charts use, by the charts' own volume names.
_HOST_PATH_VOLUMES: dict[str, tuple[str, str, str]] = {
    # name: (host path, mount path, hostPath type)
    "fsx-path-main": ("/sagemaker/fsx/main", "/sagemaker/fsx/main", "DirectoryOrCreate"),
    "fsx-path-init": ("/sagemaker/fsx/init", "/sagemaker/fsx/init", "DirectoryOrCreate"),
    "logs": ("/var/log/aws/clusters", "/var/log/aws/clusters", "DirectoryOrCreate"),
    "fsx-path-output-artifacts": (
        "/sagemaker/fsx/output_artifacts",
        "/sagemaker/fsx/output_artifacts",
        "DirectoryOrCreate",
    ),
    # The node's NVMe instance store as the container's /tmp.
    "tmp-storage": ("/opt/dlami/nvme", "/tmp", "Directory"),
    "k8s-ca-cert": ("/etc/kubernetes/pki/ca.crt", "/etc/kubernetes/pki/ca.crt", "File"),
}
CONFIG_VOLUME = "training-config"
SHM_VOLUME = "dshm"

# Requests per RFT service, as the RFT chart's values.yaml sizes them.
_HUB_RESOURCES = {"cpu": "90", "ephemeral-storage": "80Gi", "memory": "720Gi"}
_PROMPTER_RESOURCES = {"cpu": "5", "ephemeral-storage": "50Gi", "memory": "369Gi"}
_RBS_RESOURCES = {"cpu": "85", "ephemeral-storage": "50Gi", "memory": "369Gi"}
_NATS_RESOURCES = {"cpu": "30", "ephemeral-storage": "20Gi", "memory": "256Gi"}
_GENERATION_EXTRA = {"hugepages-2Mi": "20000Mi", "memory": "1600Gi"}
_REDIS_RESOURCES = {
    "requests": {"cpu": "500m", "memory": "2Gi"},
    "limits": {"cpu": "2", "memory": "8Gi"},
}

# RFT services: component -> the recipe's training_config.task_type in its ConfigMap.
RFT_TASK_TYPES: dict[str, str] = {
    "training": "omega_rl_train",
    "vllm-generation": "storm_gen_vllm",
    "hub": "storm_hub",
    "nats-bootstrap": "storm_nats_bootstrap",
    "prompter": "storm_prompt_loader",
    "rbs": "storm_rbs",
}


@dataclass(frozen=True)
class KubeObject:
    """One object to create: its kind (picks the API) and its body."""

    kind: str
    """PyTorchJob, ConfigMap, Service, StatefulSet, Deployment or Job."""
    name: str
    body: dict[str, Any]


@dataclass(frozen=True)
class JobObjects:
    """Everything one job consists of: the training job, then what hangs off it."""

    job: KubeObject
    companions: list[KubeObject] = field(default_factory=list)


# --- names ---------------------------------------------------------------------------------


def side_name_base(job: str) -> str:
    """The stem of a job's RFT side object names: at most ``SIDE_NAME_BASE_MAX`` characters,
    the same for the same job every time, different for different jobs."""
    if len(job) <= SIDE_NAME_BASE_MAX:
        return job
    digest = hashlib.sha256(job.encode()).hexdigest()[:_HASH_CHARS]
    head = job[: SIDE_NAME_BASE_MAX - _HASH_CHARS - 1].rstrip("-")
    return f"{head}-{digest}"


def config_map_name(job: str) -> str:
    """The ConfigMap of an SFT, CPT or evaluation job."""
    return f"training-config-{job}"


def rft_config_map_name(job: str, service: str) -> str:
    return f"{side_name_base(job)}-{service}-config"


def rft_record_config_map(job: str) -> str:
    """The RFT ConfigMap kept with a finished job: the training service's recipe."""
    return rft_config_map_name(job, "training")


def rft_companion_names(job: str) -> list[tuple[str, str]]:
    """(kind, name) of every RFT side object, whether or not a given recipe creates it."""
    base = side_name_base(job)
    names = [
        ("StatefulSet", f"{base}-vllm"),
        ("Service", f"{base}-vllm"),
        ("Deployment", f"{base}-hubcli"),
        ("Service", f"{base}-hubcli"),
        ("Job", f"{base}-prompter"),
        ("Service", f"{base}-prompter"),
        ("Job", f"{base}-rbs"),
        ("Service", f"{base}-rbs"),
        ("StatefulSet", f"{base}-nats-server"),
        ("Service", f"{base}-nats-server"),
        ("Service", f"{base}-nats-server-headless"),
        ("ConfigMap", f"{base}-nats-server-config"),
        ("Job", f"{base}-nats-server-bootstrap"),
        ("Deployment", f"{base}-redis"),
        ("Service", f"{base}-redis"),
    ]
    names += [
        ("ConfigMap", rft_config_map_name(job, service))
        for service in RFT_TASK_TYPES
        if service != "training"
    ]
    return names


def is_dns_subdomain(name: str) -> bool:
    return len(name) <= DNS_SUBDOMAIN_MAX and bool(_DNS_SUBDOMAIN.match(name))


# --- spec to recipe ------------------------------------------------------------------------


def method_of(spec: JobSpec) -> Method | None:
    """The catalog method of a spec; None for evaluation."""
    if spec.method == "eval":
        return None
    try:
        return Method(spec.method)
    except ValueError:
        raise job_error(
            UserJobError,
            spec.name,
            f"method {spec.method!r} is not one HyperPod runs",
            "use sft, cpt, rft or eval",
        ) from None


def instance_resources(instance_type: str, job: str) -> InstanceResources:
    try:
        return INSTANCE_RESOURCES[instance_type]
    except KeyError:
        raise job_error(
            UserJobError,
            job,
            f"instance_type {instance_type!r} is not a Nova training instance type",
            f"use one of {', '.join(INSTANCE_RESOURCES)}",
        ) from None


def recipe_document(spec: JobSpec) -> dict[str, Any]:
    """The recipe as the job reads it: ``run.name`` is the job name and, where the recipe left
    them empty, the output path and data come from the spec (as the launcher's overrides do)."""
    recipe = copy.deepcopy(spec.recipe)
    run = recipe.setdefault("run", {})
    run["name"] = spec.name
    if not run.get("output_s3_path"):
        run["output_s3_path"] = spec.output_uri
    filled = {
        "train": "data_s3_path",
        "validation": "validation_data_s3_path",
        "reward": "reward_lambda_arn",
    }
    for channel, key in filled.items():
        if spec.inputs.get(channel) and not run.get(key):
            run[key] = spec.inputs[channel]
    return recipe


def output_uri(recipe: dict[str, Any]) -> str:
    """``<run.output_s3_path>/`` with exactly one trailing slash."""
    return str(recipe.get("run", {}).get("output_s3_path", "")).rstrip("/") + "/"


def _replicas(run: dict[str, Any], key: str, default: int, job: str) -> int:
    value = run.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise job_error(
            UserJobError,
            job,
            f"run.{key} is {value!r}; it must be a positive integer",
            f"set run.{key} in the recipe",
        )
    return value


def _image(model_type: str, method: Method | None, region: str, job: str) -> str:
    try:
        return container_image(model_type, method, Platform.HYPERPOD, region)
    except CatalogError as exc:
        raise job_error(UserJobError, job, str(exc), "pick a supported region or model") from None


def _registry(region: str) -> str:
    return f"{IMAGE_ACCOUNTS[region]}.dkr.ecr.{region}.amazonaws.com"


def _sidecar_image(which: str, region: str) -> str:
    return f"{_registry(region)}/{RFT_HYPERPOD_SIDECAR_IMAGES[which]}"


def _accelerators(resources: InstanceResources) -> dict[str, str]:
    # Quantities are strings in the Kubernetes API (the typed client rejects numbers).
    amounts = {"nvidia.com/gpu": str(resources.gpus)}
    if resources.efa:
        amounts["vpc.amazonaws.com/efa"] = str(resources.efa)
    return amounts


def _fixed(amounts: dict[str, str]) -> dict[str, Any]:
    """Requests equal to limits, as the charts size every GPU and CPU service."""
    return {"requests": dict(amounts), "limits": dict(amounts)}


# --- pod parts -----------------------------------------------------------------------------


def _volume(name: str, config_map: str = "") -> dict[str, Any]:
    if name == CONFIG_VOLUME:
        return {"name": name, "configMap": {"name": config_map}}
    if name == SHM_VOLUME:
        return {"name": name, "emptyDir": {"medium": "Memory"}}
    host, _, kind = _HOST_PATH_VOLUMES[name]
    return {"name": name, "hostPath": {"path": host, "type": kind}}


def _mount(name: str) -> dict[str, Any]:
    if name == CONFIG_VOLUME:
        return {"name": name, "mountPath": RECIPE_MOUNT}
    if name == SHM_VOLUME:
        return {"name": name, "mountPath": "/dev/shm"}
    mount: dict[str, Any] = {"name": name, "mountPath": _HOST_PATH_VOLUMES[name][1]}
    if name == "k8s-ca-cert":
        mount["readOnly"] = True
    return mount


# The volumes every Nova pod declares, and what its main container mounts of them.
_MAIN_VOLUMES = (
    "fsx-path-main",
    "fsx-path-init",
    CONFIG_VOLUME,
    SHM_VOLUME,
    "logs",
    "fsx-path-output-artifacts",
)
_MAIN_MOUNTS = ("fsx-path-main", CONFIG_VOLUME, SHM_VOLUME, "logs", "fsx-path-output-artifacts")
_INIT_MOUNTS = ("fsx-path-init", CONFIG_VOLUME, "logs", "k8s-ca-cert")


def _field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


@dataclass(frozen=True)
class _Context:
    job: str
    namespace: str
    region: str
    instance_type: str
    labels: dict[str, str]
    """Labels of the job object itself."""
    launcher_env: dict[str, str]
    service_account: str

    @property
    def base(self) -> str:
        return side_name_base(self.job)

    def env(self) -> list[dict[str, Any]]:
        return [{"name": key, "value": value} for key, value in self.launcher_env.items()]

    def meta(self, name: str, component: str = "") -> dict[str, Any]:
        labels = {JOB_LABEL: self.job, MANAGED_BY_LABEL: MANAGED_BY}
        if component:
            labels[COMPONENT_LABEL] = component
        return {"name": name, "namespace": self.namespace, "labels": labels}

    def pod_labels(self, component: str, workload: str, **extra: str) -> dict[str, str]:
        """Labels of an RFT service pod: the chart's ``workload-type`` (which the pod
        affinities read) and ours, by which the backend finds the pods."""
        return {
            **extra,
            "workload-type": f"{workload}-{self.base}",
            JOB_LABEL: self.job,
            COMPONENT_LABEL: component,
        }

    def init_container(self) -> dict[str, Any]:
        return {
            "name": INIT_CONTAINER,
            "image": f"{_registry(self.region)}/{INIT_IMAGE}",
            "imagePullPolicy": "Always",
            "env": self.env(),
            "volumeMounts": [_mount(name) for name in _INIT_MOUNTS],
        }


def _node_affinity(instance_type: str) -> dict[str, Any]:
    """Only nodes of the restricted instance group, of the requested instance type."""
    terms = [
        {"key": "node.kubernetes.io/instance-type", "operator": "In", "values": [instance_type]},
        {
            "key": "sagemaker.amazonaws.com/instance-group-type",
            "operator": "In",
            "values": ["Restricted"],
        },
    ]
    return {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": terms}]
        }
    }


def _workload_term(workload: str, weight: int | None = None) -> dict[str, Any]:
    term = {
        "labelSelector": {
            "matchExpressions": [{"key": "workload-type", "operator": "In", "values": [workload]}]
        },
        "topologyKey": "kubernetes.io/hostname",
    }
    return term if weight is None else {"weight": weight, "podAffinityTerm": term}


def _affinity(ctx: _Context, workload: str = "") -> dict[str, Any]:
    """Node affinity; for RFT pods also the chart's packing: GPU services together, CPU
    services together, never a CPU service on a GPU service's node."""
    affinity: dict[str, Any] = {"nodeAffinity": _node_affinity(ctx.instance_type)}
    if workload:
        other = "cpu-only" if workload == "gpu-intensive" else "gpu-intensive"
        affinity["podAffinity"] = {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                _workload_term(f"{workload}-{ctx.base}", weight=100)
            ]
        }
        affinity["podAntiAffinity"] = {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                _workload_term(f"{other}-{ctx.base}")
            ]
        }
    return affinity


def _pod_spec(
    ctx: _Context,
    containers: list[dict[str, Any]],
    volumes: list[dict[str, Any]],
    *,
    workload: str = "",
    restart_policy: str = "",
    host_network: bool = False,
    init: bool = False,
    side_service: bool = False,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "tolerations": [dict(RESTRICTED_TOLERATION)],
        "affinity": _affinity(ctx, workload),
    }
    if ctx.service_account:
        spec["serviceAccountName"] = ctx.service_account
    if host_network:
        spec["hostNetwork"] = True
        spec["dnsPolicy"] = "ClusterFirstWithHostNet"
    if side_service:
        spec["enableServiceLinks"] = False
    if restart_policy:
        spec["restartPolicy"] = restart_policy
    if init:
        spec["initContainers"] = [ctx.init_container()]
    spec["containers"] = containers
    spec["volumes"] = volumes
    return spec


def _container(
    name: str,
    image: str,
    env: list[dict[str, Any]],
    resources: dict[str, Any],
    mounts: list[dict[str, Any]],
    **extra: Any,
) -> dict[str, Any]:
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": "Always",
        "env": env,
        "resources": resources,
        "volumeMounts": mounts,
        **extra,
    }


# --- SFT, CPT, evaluation ------------------------------------------------------------------


def _trainer_pod(
    ctx: _Context, image: str, accel: dict[str, str], lambda_access: bool
) -> dict[str, Any]:
    """The pod of the SFT chart: init container, ``pytorch`` with the FSx, log and NVMe
    mounts; with Lambda access, host networking and the cluster CA certificate."""
    names = [*_MAIN_VOLUMES, "tmp-storage"]
    mounts = [*_MAIN_MOUNTS, "tmp-storage"]
    if lambda_access:
        names.append("k8s-ca-cert")
        mounts.append("k8s-ca-cert")
    container = _container(
        CONTAINER,
        image,
        ctx.env(),
        _fixed(accel),
        [_mount(name) for name in mounts],
        securityContext={"capabilities": {"add": ["IPC_LOCK"]}},
    )
    spec = _pod_spec(
        ctx,
        [container],
        [_volume(name, config_map_name(ctx.job)) for name in names],
        host_network=lambda_access,
        init=True,
    )
    if not lambda_access:
        # The chart's init container always mounts the CA certificate but declares the volume
        # only with Lambda access; a pod naming a volume it lacks is refused, so the mount
        # goes with the volume.
        init = spec["initContainers"][0]
        init["volumeMounts"] = [m for m in init["volumeMounts"] if m["name"] != "k8s-ca-cert"]
    return spec


def _replica_spec(count: int, labels: dict[str, str], pod: dict[str, Any]) -> dict[str, Any]:
    return {
        "replicas": count,
        "restartPolicy": "OnFailure",
        "template": {"metadata": {"labels": dict(labels)}, "spec": copy.deepcopy(pod)},
    }


def _pytorch_job(
    ctx: _Context,
    replicas: int,
    pod_labels: dict[str, str],
    pod: dict[str, Any],
    annotations: dict[str, str],
) -> KubeObject:
    specs = {"Master": _replica_spec(1, pod_labels, pod)}
    if replicas > 1:
        specs["Worker"] = _replica_spec(replicas - 1, pod_labels, pod)
    body = {
        "apiVersion": f"{KUBEFLOW_GROUP}/{KUBEFLOW_VERSION}",
        "kind": "PyTorchJob",
        "metadata": {
            "name": ctx.job,
            "namespace": ctx.namespace,
            "labels": dict(ctx.labels),
            "annotations": annotations,
        },
        "spec": {"runPolicy": {"cleanPodPolicy": "None"}, "pytorchReplicaSpecs": specs},
    }
    return KubeObject("PyTorchJob", ctx.job, body)


def _config_map(ctx: _Context, name: str, data: dict[str, str], component: str = "") -> KubeObject:
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": ctx.meta(name, component),
        "data": data,
    }
    return KubeObject("ConfigMap", name, body)


# --- RFT -----------------------------------------------------------------------------------


def rft_service_recipe(recipe: dict[str, Any], service: str) -> dict[str, Any]:
    """The recipe one RFT service reads: ``run`` and ``training_config`` with the service's
    ``task_type`` (what the launcher writes to ``<job>-<service>_hydra.yaml``)."""
    training = copy.deepcopy(recipe.get("training_config") or {})
    training["task_type"] = RFT_TASK_TYPES[service]
    return {"run": copy.deepcopy(recipe.get("run") or {}), "training_config": training}


def _service(
    ctx: _Context,
    name: str,
    component: str,
    selector: dict[str, str],
    ports: list[dict[str, Any]],
    *,
    headless: bool = False,
    **extra: Any,
) -> KubeObject:
    spec: dict[str, Any] = {"selector": selector}
    if headless:
        spec["clusterIP"] = "None"
    if ports:
        spec["ports"] = ports
    spec.update(extra)
    body = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": ctx.meta(name, component),
        "spec": spec,
    }
    return KubeObject("Service", name, body)


def _service_volumes(ctx: _Context, service: str, *, ca_cert: bool = False) -> list[dict[str, Any]]:
    config = rft_config_map_name(ctx.job, service)
    volumes = [_volume(name, config) for name in _MAIN_VOLUMES]
    if ca_cert:
        volumes.append(_volume("k8s-ca-cert"))
    return volumes


def _service_mounts(*, ca_cert: bool = False) -> list[dict[str, Any]]:
    mounts = [_mount(name) for name in _MAIN_MOUNTS]
    if ca_cert:
        mounts.append(_mount("k8s-ca-cert"))
    return mounts


def _apps_object(
    ctx: _Context,
    kind: str,
    name: str,
    component: str,
    replicas: int,
    pod_labels: dict[str, str],
    pod: dict[str, Any],
    *,
    selector: dict[str, str],
    **spec_extra: Any,
) -> KubeObject:
    body = {
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": ctx.meta(name, component),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": dict(selector)},
            **spec_extra,
            "template": {"metadata": {"labels": pod_labels}, "spec": pod},
        },
    }
    return KubeObject(kind, name, body)


def _batch_job(
    ctx: _Context, name: str, component: str, pod_labels: dict[str, str], pod: dict[str, Any]
) -> KubeObject:
    body = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": ctx.meta(name, component),
        "spec": {"template": {"metadata": {"labels": pod_labels}, "spec": pod}},
    }
    return KubeObject("Job", name, body)


def _rft_training_pod(ctx: _Context, image: str, accel: dict[str, str]) -> dict[str, Any]:
    env = [
        _field_env("SVC_NAME", f"metadata.labels['{KUBEFLOW_JOB_LABEL}']"),
        _field_env("NAMESPACE", "metadata.namespace"),
        *ctx.env(),
    ]
    container = _container(
        CONTAINER,
        image,
        env,
        _fixed(accel),
        _service_mounts(),
        securityContext={"capabilities": {"add": ["IPC_LOCK"]}},
    )
    return _pod_spec(ctx, [container], _service_volumes(ctx, "training"), workload="gpu-intensive")


def _generation(ctx: _Context, replicas: int, accel: dict[str, str]) -> list[KubeObject]:
    name = f"{ctx.base}-vllm"
    app = {"app": name}
    health = {"httpGet": {"path": "/health", "port": 8000}}
    container = _container(
        "vllm",
        _sidecar_image("generation", ctx.region),
        [
            _field_env("MY_POD_NAME", "metadata.name"),
            _field_env("POD_IP", "status.podIP"),
            _field_env("NAMESPACE", "metadata.namespace"),
            *ctx.env(),
        ],
        _fixed({**accel, **_GENERATION_EXTRA}),
        _service_mounts(ca_cert=True),
        ports=[{"containerPort": 8000}],
        startupProbe={"periodSeconds": 10, "failureThreshold": 720, **health},
        livenessProbe={
            **health,
            "failureThreshold": 30,
            "initialDelaySeconds": 900,
            "periodSeconds": 30,
            "successThreshold": 1,
            "timeoutSeconds": 5,
        },
    )
    pod = _pod_spec(
        ctx,
        [container],
        _service_volumes(ctx, "vllm-generation", ca_cert=True),
        workload="gpu-intensive",
        restart_policy="Always",
        host_network=True,
        side_service=True,
    )
    component = "vllm-generation"
    return [
        _service(
            ctx,
            name,
            component,
            app,
            [{"name": "sg", "port": 8000, "targetPort": 7000}],
            type="ClusterIP",
        ),
        _apps_object(
            ctx,
            "StatefulSet",
            name,
            component,
            replicas,
            ctx.pod_labels(component, "gpu-intensive", **app),
            pod,
            selector=app,
            serviceName=name,
            podManagementPolicy="Parallel",
        ),
    ]


def _hub(ctx: _Context, replicas: int) -> list[KubeObject]:
    name = f"{ctx.base}-hubcli"
    app = {"app": name}
    container = _container(
        "hubcli",
        _sidecar_image("storm", ctx.region),
        [{"name": "NAMESPACE", "value": ctx.namespace}, *ctx.env()],
        _fixed(_HUB_RESOURCES),
        _service_mounts(ca_cert=True),
    )
    pod = _pod_spec(
        ctx,
        [container],
        _service_volumes(ctx, "hub", ca_cert=True),
        workload="cpu-only",
        restart_policy="Always",
        host_network=True,
        side_service=True,
    )
    pod["shareProcessNamespace"] = True
    return [
        _service(ctx, name, "hub", app, [], headless=True),
        _apps_object(
            ctx,
            "Deployment",
            name,
            "hub",
            replicas,
            ctx.pod_labels("hub", "cpu-only", **app, run_id=ctx.base),
            pod,
            selector=app,
        ),
    ]


def _prompter_and_scoring(ctx: _Context) -> list[KubeObject]:
    """The prompt loader and the reward-based-scoring service: a Job and a headless Service
    each; the prompter first runs the init container."""
    objects: list[KubeObject] = []
    parts = (("prompter", "promptcli", _PROMPTER_RESOURCES), ("rbs", "rbscli", _RBS_RESOURCES))
    for component, container_name, resources in parts:
        name = f"{ctx.base}-{component}"
        app = {"app": name}
        prompter = component == "prompter"
        container = _container(
            container_name,
            _sidecar_image("storm", ctx.region),
            ctx.env(),
            _fixed(resources),
            _service_mounts(),
        )
        pod = _pod_spec(
            ctx,
            [container],
            _service_volumes(ctx, component, ca_cert=prompter),
            workload="cpu-only",
            restart_policy="OnFailure",
            init=prompter,
            side_service=True,
        )
        pod["dnsPolicy"] = "ClusterFirst"
        objects.append(_service(ctx, name, component, app, [], headless=True))
        labels = ctx.pod_labels(component, "cpu-only", **app, run_id=ctx.base)
        objects.append(_batch_job(ctx, name, component, labels, pod))
    return objects


def nats_config(base: str) -> str:
    """The NATS server configuration of the chart: a cluster of three routed through the
    headless Service, JetStream on, the chart's limits."""
    routes = ",\n".join(
        f"      nats://{base}-nats-server-{i}.{base}-nats-server-headless:6222"
        for i in range(NATS_REPLICAS)
    )
    return (
        "{\n"
        '  "cluster": {\n'
        f'    "name": {base}-nats-server,\n'
        '    "no_advertise": true,\n'
        '    "port": 6222,\n'
        f'    "routes": [\n{routes}\n    ]\n'
        "  },\n"
        '  "write_deadline": "1200s",\n'
        '  "max_pending": 536870912,\n'
        '  "max_payload": 50331648,\n'
        '  "http_port": 8222,\n'
        '  "prof_port": 65432,\n'
        '  "jetstream": {\n'
        '    "enabled": true,\n'
        '    "max_buffered_msgs": 50000,\n'
        '    "max_buffered_size": 4096mib,\n'
        '    "max_memory_store": 185220464640\n'
        "  },\n"
        '  "lame_duck_duration": "30s",\n'
        '  "lame_duck_grace_period": "10s",\n'
        '  "pid_file": "/var/run/nats/nats.pid",\n'
        '  "port": 4222,\n'
        '  "server_name": $SERVER_NAME,\n'
        '  "debug": false\n'
        "}\n"
    )


def _nats(ctx: _Context) -> list[KubeObject]:
    """The message bus: its nats.conf, a headless Service for the cluster routes, a client
    Service, the StatefulSet of three servers (with the config reloader beside each) and the
    Job that creates the streams."""
    name = f"{ctx.base}-nats-server"
    component = "nats-server"
    selector = {
        "app.kubernetes.io/component": "nats",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/name": "nats",
    }
    port = {"nats": 4222, "cluster": 6222, "monitor": 8222, "prom": 9090}

    def ports(*names: str, protocol: dict[str, str]) -> list[dict[str, Any]]:
        return [
            {"appProtocol": protocol[n], "name": n, "port": port[n], "targetPort": n} for n in names
        ]

    protocols = {"nats": "tcp", "cluster": "tcp", "monitor": "http", "prom": "http"}
    config = _config_map(ctx, f"{name}-config", {"nats.conf": nats_config(ctx.base)}, component)
    headless = _service(
        ctx,
        f"{name}-headless",
        component,
        selector,
        ports("nats", "cluster", "monitor", "prom", protocol=protocols),
        headless=True,
        publishNotReadyAddresses=True,
    )
    client = _service(ctx, name, component, selector, ports("nats", "monitor", protocol=protocols))

    def probe(path: str, failures: int, period: int) -> dict[str, Any]:
        return {
            "httpGet": {"path": path, "port": "monitor"},
            "failureThreshold": failures,
            "initialDelaySeconds": 10,
            "periodSeconds": period,
            "successThreshold": 1,
            "timeoutSeconds": 5,
        }

    own_mounts = [
        {"name": "config", "mountPath": "/etc/nats-config"},
        {"name": "pid", "mountPath": "/var/run/nats"},
    ]
    server = _container(
        "nats",
        _sidecar_image("nats-server", ctx.region),
        [_field_env("MY_POD_NAME", "metadata.name"), *ctx.env()],
        _fixed(_NATS_RESOURCES),
        own_mounts + [m for m in _service_mounts() if m["name"] != CONFIG_VOLUME],
        ports=[{"containerPort": port[n], "name": n} for n in ("nats", "cluster", "monitor")],
        livenessProbe=probe("/healthz?js-enabled-only=true", 3, 30),
        readinessProbe=probe("/healthz?js-server-only=true", 3, 10),
        startupProbe=probe("/healthz", 90, 10),
    )
    reloader = {
        "name": "reloader",
        "image": _sidecar_image("nats-reloader", ctx.region),
        "imagePullPolicy": "Always",
        "volumeMounts": list(own_mounts),
    }
    volumes = [
        {"name": "config", "configMap": {"name": f"{name}-config"}},
        {"name": "pid", "emptyDir": {}},
    ] + [v for v in _service_volumes(ctx, "nats-server") if v["name"] != CONFIG_VOLUME]
    pod = _pod_spec(ctx, [server, reloader], volumes, workload="cpu-only", side_service=True)
    pod["shareProcessNamespace"] = True
    pod["terminationGracePeriodSeconds"] = 60
    servers = _apps_object(
        ctx,
        "StatefulSet",
        name,
        component,
        NATS_REPLICAS,
        ctx.pod_labels(component, "cpu-only", **selector, run_id=ctx.base),
        pod,
        selector=selector,
        serviceName=f"{name}-headless",
        podManagementPolicy="Parallel",
    )
    bootstrap_container = _container(
        "bootstrap",
        _sidecar_image("storm", ctx.region),
        ctx.env(),
        {},
        _service_mounts(),
    )
    del bootstrap_container["resources"]
    bootstrap_pod = _pod_spec(
        ctx,
        [bootstrap_container],
        _service_volumes(ctx, "nats-bootstrap"),
        workload="cpu-only",
        restart_policy="OnFailure",
        side_service=True,
    )
    bootstrap_pod["shareProcessNamespace"] = True
    bootstrap = _batch_job(
        ctx,
        f"{name}-bootstrap",
        "nats-bootstrap",
        ctx.pod_labels("nats-bootstrap", "cpu-only"),
        bootstrap_pod,
    )
    return [config, headless, client, servers, bootstrap]


def _redis(ctx: _Context, replicas: int) -> list[KubeObject]:
    name = f"{ctx.base}-redis"
    app = {"app": name}
    container = _container(
        "redis",
        _sidecar_image("redis", ctx.region),
        ctx.env(),
        copy.deepcopy(_REDIS_RESOURCES),
        [{"name": "redis-tmp", "mountPath": "/data"}],
        ports=[{"containerPort": 6379}],
    )
    pod = _pod_spec(
        ctx,
        [container],
        [{"name": "redis-tmp", "emptyDir": {}}],
        workload="cpu-only",
        restart_policy="Always",
        side_service=True,
    )
    pod["dnsPolicy"] = "ClusterFirst"
    pod["shareProcessNamespace"] = True
    return [
        _service(ctx, name, "redis", app, [{"port": 6379, "targetPort": 6379}]),
        _apps_object(
            ctx,
            "Deployment",
            name,
            "redis",
            replicas,
            ctx.pod_labels("redis", "cpu-only", **app),
            pod,
            selector=app,
        ),
    ]


def _rft_objects(
    ctx: _Context,
    recipe: dict[str, Any],
    image: str,
    accel: dict[str, str],
    annotations: dict[str, str],
) -> JobObjects:
    run = recipe["run"]
    job = ctx.job
    replicas = _replicas(run, "replicas", 1, job)
    generation = _replicas(run, "generation_replicas", 1, job)
    rollout = _replicas(run, "rollout_worker_replicas", 1, job)
    pod_labels = {"app": job, JOB_LABEL: job, "workload-type": f"gpu-intensive-{ctx.base}"}
    training = _pytorch_job(
        ctx, replicas, pod_labels, _rft_training_pod(ctx, image, accel), annotations
    )
    companions = [
        _config_map(
            ctx,
            rft_config_map_name(job, service),
            {RECIPE_KEY: dump_yaml(rft_service_recipe(recipe, service))},
            "" if service == "training" else service,
        )
        for service in RFT_TASK_TYPES
    ]
    companions += _nats(ctx)
    companions += _hub(ctx, rollout)
    companions += _prompter_and_scoring(ctx)
    companions += _generation(ctx, generation, accel)
    rollout_config = (recipe.get("training_config") or {}).get("rollout") or {}
    if rollout_config.get("delegate") is True:
        companions = _redis(ctx, _replicas(run, "redis_replicas", 1, job)) + companions
    return JobObjects(training, companions)


# --- the job -------------------------------------------------------------------------------


def build_job_objects(
    spec: JobSpec,
    *,
    namespace: str,
    region: str,
    instance_type: str,
    source_account: str = "",
    service_account: str = "",
) -> JobObjects:
    """The PyTorchJob and its companions (ConfigMaps, RFT services) for one spec.

    ``source_account``: the AWS account the launcher passes as ``X_AMZ_SOURCE_ACCOUNT`` (left
    out when empty, as the launcher does when it cannot tell). ``service_account``: the
    Kubernetes service account every pod runs as (the namespace's default when empty).

    Raises UserJobError for what the cluster would reject anyway (unknown instance type,
    unsupported region or model, bad replica counts), before anything is created.
    """
    method = method_of(spec)
    recipe = recipe_document(spec)
    run = recipe["run"]
    model_type = str(run.get("model_type", ""))
    image = _image(model_type, method, region, spec.name)
    replicas = 1 if method is None else _replicas(run, "replicas", 1, spec.name)
    accel = _accelerators(instance_resources(instance_type, spec.name))
    labels = {
        "app": spec.name,
        **spec.labels,
        JOB_LABEL: spec.name,
        MANAGED_BY_LABEL: MANAGED_BY,
        METHOD_LABEL: spec.method,
    }
    launcher_env = {"INSTANCE_TYPE": instance_type, "AWS_REGION": region}
    if source_account:
        launcher_env = {"X_AMZ_SOURCE_ACCOUNT": source_account, **launcher_env}
    ctx = _Context(
        spec.name, namespace, region, instance_type, labels, launcher_env, service_account
    )
    nodes = replicas
    if method is Method.RFT:
        nodes += _replicas(run, "generation_replicas", 1, spec.name)
    annotations = {OUTPUT_ANNOTATION: output_uri(recipe), NODES_ANNOTATION: str(nodes)}
    if method is Method.RFT:
        return _rft_objects(ctx, recipe, image, accel, annotations)
    # The launcher gives Lambda access to every recipe with an evaluation section.
    pod = _trainer_pod(ctx, image, accel, lambda_access=bool(recipe.get("evaluation")))
    pod_labels = {"app": spec.name, JOB_LABEL: spec.name}
    job = _pytorch_job(ctx, replicas, pod_labels, pod, annotations)
    config = _config_map(ctx, config_map_name(spec.name), {RECIPE_KEY: dump_yaml(recipe)})
    return JobObjects(job, [config])


def owned_by(obj: KubeObject, owner: dict[str, Any]) -> KubeObject:
    """``obj`` with an ownerReference to the PyTorchJob ``owner``, so that deleting the job
    lets Kubernetes garbage-collect it even if our own cleanup never runs."""
    body = copy.deepcopy(obj.body)
    meta = owner.get("metadata", {})
    if meta.get("uid"):
        body["metadata"]["ownerReferences"] = [
            {
                "apiVersion": f"{KUBEFLOW_GROUP}/{KUBEFLOW_VERSION}",
                "kind": "PyTorchJob",
                "name": meta.get("name", obj.name),
                "uid": meta["uid"],
                "blockOwnerDeletion": False,
            }
        ]
    return KubeObject(obj.kind, obj.name, body)
