"""Every name and label value a HyperPod job creates stays within Kubernetes' limits, for any
campaign name, and stays the same on every submit of the same job."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from fakes.kube_api import FakeKube, fake_kube  # noqa: F401
from tuneloop.config.campaign import NAME, STAGE_NAME
from tuneloop.jobs.base import MAX_JOB_NAME, JobKind, JobSpec, job_name
from tuneloop.jobs.hyperpod import HyperPodJobBackend
from tuneloop.jobs.hyperpod_objects import (
    DNS_LABEL_MAX,
    SIDE_NAME_BASE_MAX,
    STATEFULSET_NAME_MAX,
    KubeObject,
    build_job_objects,
    rft_companion_names,
    side_name_base,
)
from tuneloop.pipeline.operators import attempt_name
from tuneloop.recipes.catalog import Platform
from tuneloop.recipes.render import render_recipe
from tuneloop.recipes.rules import RecipeContext

RECIPES = Path(__file__).resolve().parents[3] / "recipes" / "nova" / "nova-2-lite"
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?\Z")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?\Z")
# The most workers a Nova recipe runs (CPT on 32 nodes): pods "<job>-worker-31".
_MOST_WORKERS = 31


def _rft_recipe() -> dict[str, Any]:
    context = RecipeContext(platform=Platform.HYPERPOD, template=True)
    recipe = render_recipe(RECIPES / "rft-full.yaml", {}, context=context).data
    recipe["training_config"]["rollout"]["delegate"] = True  # Redis too: every side object
    return recipe


_RECIPE = _rft_recipe()


def _spec(name: str) -> JobSpec:
    return JobSpec(
        name=name,
        kind=JobKind.TRAIN,
        method="rft",
        recipe=_RECIPE,
        inputs={"train": "s3://b/p.jsonl", "reward": "arn:aws:lambda:x:SageMaker-r"},
        output_uri="s3://b/out",
    )


def _objects(name: str) -> list[KubeObject]:
    built = build_job_objects(
        _spec(name), namespace="kubeflow", region="us-east-1", instance_type="ml.p5.48xlarge"
    )
    return [built.job, *built.companions]


def _is_label(name: str, limit: int = DNS_LABEL_MAX) -> bool:
    return len(name) <= limit and bool(_DNS_LABEL.match(name))


def _label_values(obj: KubeObject) -> list[str]:
    body = obj.body
    values = list((body["metadata"].get("labels") or {}).values())
    spec = body.get("spec") or {}
    templates = [r["template"] for r in (spec.get("pytorchReplicaSpecs") or {}).values()]
    if "template" in spec:
        templates.append(spec["template"])
    for template in templates:
        values += (template.get("metadata") or {}).get("labels", {}).values()
        affinity = template["spec"].get("affinity") or {}
        for kind in ("podAffinity", "podAntiAffinity"):
            for rule in affinity.get(kind, {}).values():
                for term in rule:
                    term = term.get("podAffinityTerm", term)
                    for expression in term["labelSelector"]["matchExpressions"]:
                        values += expression["values"]
    return [str(v) for v in values]


def _check(obj: KubeObject) -> None:
    name = obj.name
    if obj.kind == "StatefulSet":
        # Its pods carry "controller-revision-hash: <name>-<10 characters>", a label value.
        assert _is_label(name, STATEFULSET_NAME_MAX), name
        replicas = obj.body["spec"]["replicas"]
        assert _is_label(f"{name}-{replicas - 1}"), name  # pod name = host name
    elif obj.kind == "Service":
        assert len(name) <= DNS_LABEL_MAX and _DNS_1035.match(name), name
    elif obj.kind == "Job":
        assert _is_label(name), name  # the job-name label of its pods
    elif obj.kind == "PyTorchJob":
        # The training operator names pods and Services "<job>-worker-<i>" (DNS-1035 labels).
        assert _DNS_1035.match(name), name
        assert len(f"{name}-worker-{_MOST_WORKERS}") <= DNS_LABEL_MAX, name
    else:
        assert len(name) <= 253 and all(_DNS_LABEL.match(p) for p in name.split(".")), name
    for value in _label_values(obj):
        assert len(value) <= DNS_LABEL_MAX and _LABEL_VALUE.match(value), (name, value)


@settings(max_examples=100, deadline=None)
@given(
    # Any name the campaign model accepts, up to its 32 characters, odd dashes included.
    campaign=st.from_regex(NAME, fullmatch=True),
    round_number=st.integers(min_value=1, max_value=100_000),
    stage=st.from_regex(STAGE_NAME, fullmatch=True),
    attempt=st.integers(min_value=1, max_value=99),
)
def test_every_name_fits_for_any_campaign(
    campaign: str, round_number: int, stage: str, attempt: int
) -> None:
    name = attempt_name(job_name(campaign, round_number, stage, _RECIPE), attempt)
    assert len(name) <= MAX_JOB_NAME
    objects = _objects(name)
    for obj in objects:
        _check(obj)
    names = [(o.kind, o.name) for o in objects]
    assert len(set(names)) == len(names)
    # Cancel finds every side object by name alone.
    assert set(names) - {("PyTorchJob", name)} <= set(rft_companion_names(name)) | {
        ("ConfigMap", f"{side_name_base(name)}-training-config")
    }


@settings(max_examples=150, deadline=None)
@given(
    first=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=30, max_size=48),
    second=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=30, max_size=48),
)
def test_shortened_bases_are_stable_and_distinct(first: str, second: str) -> None:
    assert side_name_base(first) == side_name_base(first)
    assert len(side_name_base(first)) <= SIDE_NAME_BASE_MAX
    if first != second:
        assert side_name_base(first) != side_name_base(second)


def test_a_long_rft_job_is_created_once_and_cancelled_whole(
    fake_kube: FakeKube,  # noqa: F811
) -> None:
    """The fake API refuses what the real one would (Service and Job names over 63, invalid
    label values, mounts of undeclared volumes); a 48-character job gets through, is adopted by
    a second submit, and leaves nothing behind when cancelled."""
    backend = HyperPodJobBackend(
        cluster="nova-hp",
        region="us-east-1",
        kubeconfig=str(fake_kube.kubeconfig),
        source_account="123456789012",
    )
    name = job_name("a-campaign-with-a-rather-long-name", 12, "rft", _RECIPE)
    assert len(name) == MAX_JOB_NAME
    backend.submit(_spec(name))
    backend.submit(_spec(name))

    assert fake_kube.created("pytorchjobs") == 1
    base = side_name_base(name)
    assert base != name and len(base) <= SIDE_NAME_BASE_MAX
    assert fake_kube.exists("statefulsets", f"{base}-nats-server")
    assert fake_kube.exists("jobs", f"{base}-nats-server-bootstrap")
    created = sum(fake_kube.created(p) for p in ("statefulsets", "deployments", "services", "jobs"))
    assert created == len([kind for kind, _ in rft_companion_names(name) if kind != "ConfigMap"])

    fake_kube.set_job_conditions(name, ["Created", "Running"])
    backend.cancel(name)
    for plural in ("pytorchjobs", "statefulsets", "deployments", "services", "jobs", "configmaps"):
        assert fake_kube.objects(plural) == [], plural
