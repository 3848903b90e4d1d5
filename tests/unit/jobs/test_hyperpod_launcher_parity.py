"""Our HyperPod objects against what the Nova recipes launcher deploys for the same recipe.

Each fixture under ``tests/data/hyperpod_launcher/`` describes, in our own terms, the objects
the launcher's Helm chart renders (kinds, names, pod settings, containers, environment names,
volumes, mounts, ports, task types) with the launcher source it was read from. The test renders
our objects for the same recipe and compares their structure with the description.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tuneloop.jobs.base import JobKind, JobSpec
from tuneloop.jobs.hyperpod_objects import KubeObject, build_job_objects
from tuneloop.recipes.catalog import IMAGE_ACCOUNTS, Platform
from tuneloop.recipes.render import render_recipe
from tuneloop.recipes.rules import RecipeContext

ROOT = Path(__file__).resolve().parents[3]
FIXTURES = ROOT / "tests" / "data" / "hyperpod_launcher"
RECIPES = ROOT / "recipes" / "nova" / "nova-2-lite"
JOB = "camp-r1-stage-0123456789"
"""Within the launcher's 40 characters, so our side names use it unchanged, as it does."""
REGION = "us-east-1"
INSTANCE_TYPE = "ml.p5.48xlarge"


def _fixture(name: str) -> dict[str, Any]:
    text = (FIXTURES / f"{name}.yaml").read_text().replace("{job}", JOB)
    return yaml.safe_load(text)


def _render(fixture: dict[str, Any]) -> list[KubeObject]:
    context = RecipeContext(platform=Platform.HYPERPOD, template=True)
    recipe = render_recipe(RECIPES / fixture["recipe"], fixture["overrides"], context=context).data
    for dotted, value in (fixture.get("recipe_edits") or {}).items():
        *parents, leaf = dotted.split(".")
        node = recipe
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    method = fixture["method"]
    spec = JobSpec(
        name=JOB,
        kind=JobKind.EVAL if method == "eval" else JobKind.TRAIN,
        method=method,
        recipe=recipe,
        inputs={"train": "s3://bucket/data.jsonl", "reward": "arn:aws:lambda:x:SageMaker-r"},
        output_uri="s3://bucket/out",
    )
    settings = fixture["settings"]
    objects = build_job_objects(
        spec,
        namespace="kubeflow",
        region=REGION,
        instance_type=INSTANCE_TYPE,
        source_account=settings["source_account"],
        service_account=settings["service_account_name"],
    )
    return [objects.job, *objects.companions]


def _volume(volume: dict[str, Any]) -> str:
    if "hostPath" in volume:
        return f"hostPath {volume['hostPath']['path']}"
    if "configMap" in volume:
        return f"configMap {volume['configMap']['name']}"
    medium = volume["emptyDir"].get("medium", "")
    return f"emptyDir {medium}".strip()


def _container(container: dict[str, Any]) -> dict[str, Any]:
    image = container["image"]
    described: dict[str, Any] = {
        "name": container["name"],
        "image": image.split("/", 1)[1],
        "registry": image.split("/", 1)[0],
        "env": [e["name"] for e in container.get("env") or []],
        "mounts": {m["mountPath"]: m["name"] for m in container.get("volumeMounts") or []},
    }
    if "resources" in container:
        described["resources"] = sorted(container["resources"].get("requests") or {})
    if "ports" in container:
        described["ports"] = [p["containerPort"] for p in container["ports"]]
    capabilities = (container.get("securityContext") or {}).get("capabilities") or {}
    if capabilities:
        described["capabilities"] = capabilities["add"]
    return described


def _affinity_target(affinity: dict[str, Any], kind: str) -> str:
    if kind == "podAffinity":
        terms = affinity.get(kind, {}).get("preferredDuringSchedulingIgnoredDuringExecution", [])
        terms = [t["podAffinityTerm"] for t in terms]
    else:
        terms = affinity.get(kind, {}).get("requiredDuringSchedulingIgnoredDuringExecution", [])
    [term] = terms
    [expression] = term["labelSelector"]["matchExpressions"]
    assert expression["key"] == "workload-type"
    [value] = expression["values"]
    return str(value)


def _pod(pod: dict[str, Any]) -> dict[str, Any]:
    affinity = pod.get("affinity") or {}
    node_terms = affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    described: dict[str, Any] = {
        "hostNetwork": pod.get("hostNetwork", False),
        "serviceAccountName": pod.get("serviceAccountName", ""),
        "tolerations": [t["key"] for t in pod.get("tolerations") or []],
        "node_affinity": [e["key"] for e in node_terms["nodeSelectorTerms"][0]["matchExpressions"]],
        "volumes": {v["name"]: _volume(v) for v in pod.get("volumes") or []},
        "containers": [_container(c) for c in pod["containers"]],
        "initContainers": [_container(c) for c in pod.get("initContainers") or []],
    }
    for key in ("dnsPolicy", "restartPolicy", "enableServiceLinks", "shareProcessNamespace"):
        if key in pod:
            described[key] = pod[key]
    if "podAffinity" in affinity:
        described["pod_affinity"] = _affinity_target(affinity, "podAffinity")
        described["pod_anti_affinity"] = _affinity_target(affinity, "podAntiAffinity")
    return described


def _service_port(port: dict[str, Any]) -> str:
    text = f"{port['port']}->{port['targetPort']}"
    return f"{port['name']} {text}" if "name" in port else text


def _describe(obj: KubeObject) -> dict[str, Any]:
    body, spec = obj.body, obj.body.get("spec") or {}
    described: dict[str, Any] = {
        "kind": obj.kind,
        "name": obj.name,
        "labels": body["metadata"].get("labels") or {},
    }
    if obj.kind == "ConfigMap":
        described["data"] = sorted(body["data"])
        recipe = yaml.safe_load(body["data"].get("config.yaml", "{}")) or {}
        described["task_type"] = (recipe.get("training_config") or {}).get("task_type")
    elif obj.kind == "Service":
        described["selector"] = spec["selector"]
        described["ports"] = [_service_port(p) for p in spec.get("ports") or []]
        described["headless"] = spec.get("clusterIP") == "None"
        described["publishNotReadyAddresses"] = spec.get("publishNotReadyAddresses", False)
    elif obj.kind == "PyTorchJob":
        replicas = spec["pytorchReplicaSpecs"]
        described["replicas"] = {k: r["replicas"] for k, r in replicas.items()}
        [policy] = {r["restartPolicy"] for r in replicas.values()}
        described["restartPolicy"] = policy
        templates = [r["template"] for r in replicas.values()]
        assert all(t == templates[0] for t in templates), "master and workers differ"
        described["pod_labels"] = templates[0]["metadata"]["labels"]
        described["pod"] = _pod(templates[0]["spec"])
    else:
        for key in ("replicas", "serviceName", "podManagementPolicy"):
            if key in spec:
                described[key] = spec[key]
        described["pod_labels"] = spec["template"]["metadata"]["labels"]
        described["pod"] = _pod(spec["template"]["spec"])
    return described


def _declared_mounts(pod: dict[str, Any]) -> None:
    """What the launcher mounts without declaring the volume is an error in its chart (the pod
    would be refused); we leave such a mount out, so the description does too."""
    for container in pod.get("initContainers", []) + pod.get("containers", []):
        container["mounts"] = {
            path: volume for path, volume in container["mounts"].items() if volume in pod["volumes"]
        }


def _compare(expected: dict[str, Any], ours: dict[str, Any], where: str) -> None:
    for key, value in expected.items():
        if key in ("kind", "name"):
            continue
        if key in ("labels", "pod_labels"):
            subset = {k: ours[key].get(k) for k in value}
            assert subset == value, f"{where}: {key}"
        elif key == "pod":
            _declared_mounts(value)
            for pod_key, pod_value in value.items():
                assert pod_key in ours["pod"], f"{where}: pod.{pod_key} missing"
                if pod_key in ("containers", "initContainers"):
                    assert [c["name"] for c in ours["pod"][pod_key]] == [
                        c["name"] for c in pod_value
                    ], f"{where}: {pod_key}"
                    for want, got in zip(pod_value, ours["pod"][pod_key], strict=True):
                        here = f"{where}: container {want['name']}"
                        assert got["registry"] == (
                            f"{IMAGE_ACCOUNTS[REGION]}.dkr.ecr.{REGION}.amazonaws.com"
                        ), here
                        for field, wanted in want.items():
                            assert got.get(field) == wanted, f"{here}: {field}"
                else:
                    assert ours["pod"][pod_key] == pod_value, f"{where}: pod.{pod_key}"
        else:
            assert ours.get(key) == value, f"{where}: {key}"


@pytest.mark.parametrize("name", ["sft", "eval", "rft"])
def test_our_objects_have_the_launchers_structure(name: str) -> None:
    fixture = _fixture(name)
    assert fixture["source"]["repo"] == "aws/sagemaker-hyperpod-recipes"
    assert len(fixture["source"]["commit"]) == 40
    ours = {(o.kind, o.name): _describe(o) for o in _render(fixture)}
    expected = {(o["kind"], o["name"]): o for o in fixture["objects"]}
    # The same objects, no more and no fewer (apart from what the fixture says we leave out).
    assert set(ours) == set(expected)
    omitted = {(o["kind"], o["name"]) for o in fixture.get("omitted", [])}
    assert not omitted & set(ours)
    for key, description in expected.items():
        _compare(description, ours[key], f"{name} {key[0]} {key[1]}")


def test_every_pod_mounts_only_what_it_declares() -> None:
    """The API server refuses a pod template that mounts an undeclared volume (the training
    operator's pods included, though a PyTorchJob itself is not validated)."""
    for name in ("sft", "eval", "rft"):
        for obj in _render(_fixture(name)):
            if obj.kind in ("ConfigMap", "Service"):
                continue
            pod = _describe(obj)["pod"]
            for container in pod["containers"] + pod["initContainers"]:
                assert set(container["mounts"].values()) <= set(pod["volumes"]), obj.name


def test_rft_service_configs_keep_the_recipe_and_name_their_task() -> None:
    objects = {o.name: o for o in _render(_fixture("rft"))}
    hub = yaml.safe_load(objects[f"{JOB}-hub-config"].body["data"]["config.yaml"])
    assert hub["run"]["name"] == JOB
    assert hub["run"]["reward_lambda_arn"] == "arn:aws:lambda:x:SageMaker-r"
    assert hub["training_config"]["rollout"]["delegate"] is True
    conf = objects[f"{JOB}-nats-server-config"].body["data"]["nats.conf"]
    for i in range(3):
        assert f"nats://{JOB}-nats-server-{i}.{JOB}-nats-server-headless:6222" in conf
    assert "pass" not in conf
