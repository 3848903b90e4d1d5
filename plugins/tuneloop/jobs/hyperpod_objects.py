"""The Kubernetes objects of a Nova job on HyperPod, built the way the recipes launcher builds them.

The launcher (``hyperpod start-job`` -> ``main.py`` -> ``helm install``) creates, for SFT, CPT
and evaluation, a ConfigMap ``training-config-<job>`` holding the resolved recipe and a Kubeflow
``PyTorchJob`` (kubeflow.org/v1) named ``<job>``: one master and ``run.replicas - 1`` workers,
container ``pytorch``, GPU and EFA requests per instance type, the restricted-instance-group
toleration and node affinity, ``restartPolicy: OnFailure``, ``cleanPodPolicy: None``. RFT adds
the generation (vLLM), rollout hub and message-bus workloads beside the training job.

Here the same objects are plain dicts (no kubernetes import), with our deterministic name, our
labels and annotations that let ``status`` and ``cancel`` work from the name alone.
"""

from __future__ import annotations

import copy
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
"""On the RFT side workloads: generation, hub, nats-server, redis."""
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
INIT_IMAGE = "init-container-repo:latest"
# hostPath volumes every Nova container mounts on a restricted instance group node.
_HOST_PATHS = {
    "fsx-main": "/sagemaker/fsx/main",
    "fsx-init": "/sagemaker/fsx/init",
    "fsx-output": "/sagemaker/fsx/output_artifacts",
    "local-nvme": "/opt/dlami/nvme",
}


# The RFT rollout hub is CPU-bound; the chart sizes it at 90 CPUs and 720 GiB.
_HUB_RESOURCES = {"cpu": "90", "memory": "720Gi"}
_NATS_REPLICAS = 3


@dataclass(frozen=True)
class KubeObject:
    """One object to create: its kind (picks the API) and its body."""

    kind: str
    """PyTorchJob, ConfigMap, Service, StatefulSet or Deployment."""
    name: str
    body: dict[str, Any]


@dataclass(frozen=True)
class JobObjects:
    """Everything one job consists of: the training job, then what hangs off it."""

    job: KubeObject
    companions: list[KubeObject] = field(default_factory=list)


def config_map_name(job: str) -> str:
    return f"training-config-{job}"


def rft_companion_names(job: str) -> list[tuple[str, str]]:
    """(kind, name) of every RFT side object, whether or not a given recipe creates it."""
    return [
        ("StatefulSet", f"{job}-vllm"),
        ("Service", f"{job}-vllm"),
        ("Deployment", f"{job}-hubcli"),
        ("StatefulSet", f"{job}-nats-server"),
        ("Service", f"{job}-nats-server"),
        ("Deployment", f"{job}-redis"),
        ("Service", f"{job}-redis"),
    ]


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


def _sidecar_image(which: str, region: str) -> str:
    registry = f"{IMAGE_ACCOUNTS[region]}.dkr.ecr.{region}.amazonaws.com"
    return f"{registry}/{RFT_HYPERPOD_SIDECAR_IMAGES[which]}"


def _affinity(instance_type: str) -> dict[str, Any]:
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
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": terms}]
            }
        }
    }


def _accelerators(resources: InstanceResources) -> dict[str, Any]:
    # Quantities are strings in the Kubernetes API (the typed client rejects numbers).
    amounts: dict[str, Any] = {"nvidia.com/gpu": str(resources.gpus)}
    if resources.efa:
        amounts["vpc.amazonaws.com/efa"] = str(resources.efa)
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _volumes(job: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes: list[dict[str, Any]] = [
        {"name": "recipe", "configMap": {"name": config_map_name(job)}},
        {"name": "shm", "emptyDir": {"medium": "Memory"}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "recipe", "mountPath": RECIPE_MOUNT},
        {"name": "shm", "mountPath": "/dev/shm"},
    ]
    for name, path in _HOST_PATHS.items():
        volumes.append({"name": name, "hostPath": {"path": path, "type": "DirectoryOrCreate"}})
        mounts.append({"name": name, "mountPath": path})
    return volumes, mounts


@dataclass(frozen=True)
class _Context:
    job: str
    namespace: str
    region: str
    instance_type: str
    labels: dict[str, str]
    """Labels of the job object itself."""

    def env(self) -> list[dict[str, str]]:
        return [
            {"name": "JOB_NAME", "value": self.job},
            {"name": "INSTANCE_TYPE", "value": self.instance_type},
            {"name": "AWS_REGION", "value": self.region},
            {"name": "RECIPE_PATH", "value": f"{RECIPE_MOUNT}/{RECIPE_KEY}"},
        ]

    def meta(self, name: str, component: str = "") -> dict[str, Any]:
        labels = {"app": self.job, JOB_LABEL: self.job, MANAGED_BY_LABEL: MANAGED_BY}
        if component:
            labels[COMPONENT_LABEL] = component
        return {"name": name, "namespace": self.namespace, "labels": labels}


def _pod_spec(
    ctx: _Context,
    image: str,
    resources: dict[str, Any],
    *,
    container: str = CONTAINER,
    restart_policy: str | None = None,
    with_init: bool = True,
) -> dict[str, Any]:
    volumes, mounts = _volumes(ctx.job)
    spec: dict[str, Any] = {
        "tolerations": [dict(RESTRICTED_TOLERATION)],
        "affinity": _affinity(ctx.instance_type),
        "volumes": volumes,
        "containers": [
            {
                "name": container,
                "image": image,
                "imagePullPolicy": "Always",
                "env": ctx.env(),
                "resources": resources,
                "volumeMounts": mounts,
                "securityContext": {"capabilities": {"add": ["IPC_LOCK", "SYS_PTRACE"]}},
            }
        ],
    }
    if with_init:
        account = IMAGE_ACCOUNTS[ctx.region]
        spec["initContainers"] = [
            {
                "name": "init-container",
                "image": f"{account}.dkr.ecr.{ctx.region}.amazonaws.com/{INIT_IMAGE}",
                "imagePullPolicy": "Always",
                "volumeMounts": mounts,
            }
        ]
    if restart_policy:
        spec["restartPolicy"] = restart_policy
    return spec


def _replica_spec(ctx: _Context, image: str, count: int, accel: dict[str, Any]) -> dict[str, Any]:
    pod_labels = {"app": ctx.job, JOB_LABEL: ctx.job}
    return {
        "replicas": count,
        "restartPolicy": "OnFailure",
        "template": {
            "metadata": {"labels": pod_labels},
            "spec": _pod_spec(ctx, image, accel),
        },
    }


def _pytorch_job(
    ctx: _Context, image: str, replicas: int, accel: dict[str, Any], annotations: dict[str, str]
) -> KubeObject:
    specs = {"Master": _replica_spec(ctx, image, 1, accel)}
    if replicas > 1:
        specs["Worker"] = _replica_spec(ctx, image, replicas - 1, accel)
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


def _config_map(ctx: _Context, recipe: dict[str, Any]) -> KubeObject:
    name = config_map_name(ctx.job)
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": ctx.meta(name),
        "data": {RECIPE_KEY: dump_yaml(recipe)},
    }
    return KubeObject("ConfigMap", name, body)


def _service(ctx: _Context, name: str, component: str, port: int) -> KubeObject:
    body = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": ctx.meta(name, component),
        "spec": {
            "clusterIP": "None",
            "selector": {JOB_LABEL: ctx.job, COMPONENT_LABEL: component},
            "ports": [{"name": component, "port": port, "targetPort": port}],
        },
    }
    return KubeObject("Service", name, body)


def _workload(
    ctx: _Context,
    kind: str,
    name: str,
    component: str,
    image: str,
    replicas: int,
    resources: dict[str, Any],
) -> KubeObject:
    """A StatefulSet or Deployment of one RFT component, pinned to the restricted group."""
    selector = {JOB_LABEL: ctx.job, COMPONENT_LABEL: component}
    spec: dict[str, Any] = {
        "replicas": replicas,
        "selector": {"matchLabels": selector},
        "template": {
            "metadata": {"labels": {"app": ctx.job, **selector}},
            "spec": _pod_spec(ctx, image, resources, container=component, with_init=False),
        },
    }
    if kind == "StatefulSet":
        spec["serviceName"] = name
        spec["podManagementPolicy"] = "Parallel"
    body = {
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": ctx.meta(name, component),
        "spec": spec,
    }
    return KubeObject(kind, name, body)


def _rft_companions(
    ctx: _Context, run: dict[str, Any], recipe: dict[str, Any], accel: dict[str, Any]
) -> list[KubeObject]:
    job, region = ctx.job, ctx.region
    generation = _replicas(run, "generation_replicas", 1, job)
    rollout = _replicas(run, "rollout_worker_replicas", 1, job)
    cpu_only = {"requests": dict(_HUB_RESOURCES), "limits": dict(_HUB_RESOURCES)}
    small = {"requests": {"cpu": "2", "memory": "8Gi"}}
    objects = [
        _workload(
            ctx,
            "StatefulSet",
            f"{job}-vllm",
            "generation",
            _sidecar_image("generation", region),
            generation,
            accel,
        ),
        _service(ctx, f"{job}-vllm", "generation", 8000),
        _workload(
            ctx,
            "Deployment",
            f"{job}-hubcli",
            "hub",
            _sidecar_image("storm", region),
            rollout,
            cpu_only,
        ),
        _workload(
            ctx,
            "StatefulSet",
            f"{job}-nats-server",
            "nats-server",
            _sidecar_image("nats-server", region),
            _NATS_REPLICAS,
            small,
        ),
        _service(ctx, f"{job}-nats-server", "nats-server", 4222),
    ]
    rollout_config = recipe.get("training_config", {}).get("rollout", {})
    if rollout_config.get("delegate") is True:
        objects += [
            _workload(
                ctx,
                "Deployment",
                f"{job}-redis",
                "redis",
                _sidecar_image("redis", region),
                1,
                small,
            ),
            _service(ctx, f"{job}-redis", "redis", 6379),
        ]
    return objects


def build_job_objects(
    spec: JobSpec, *, namespace: str, region: str, instance_type: str
) -> JobObjects:
    """The PyTorchJob and its companions (ConfigMap, RFT side workloads) for one spec.

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
    ctx = _Context(spec.name, namespace, region, instance_type, labels)
    nodes = replicas
    companions = [_config_map(ctx, recipe)]
    if method is Method.RFT:
        companions += _rft_companions(ctx, run, recipe, accel)
        nodes += _replicas(run, "generation_replicas", 1, spec.name)
    annotations = {OUTPUT_ANNOTATION: output_uri(recipe), NODES_ANNOTATION: str(nodes)}
    return JobObjects(_pytorch_job(ctx, image, replicas, accel, annotations), companions)


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
