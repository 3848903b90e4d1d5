"""The model catalog: model types, images per region, replica tables, evaluation tasks."""

from __future__ import annotations

import re
import typing

import pytest

from tuneloop.recipes import catalog
from tuneloop.recipes.catalog import (
    EVAL_TASKS,
    MODELS,
    CatalogError,
    Method,
    Platform,
    Technique,
    allowed_replicas,
    container_image,
    instance_family,
)
from tuneloop.recipes.evaluation import EvalTaskName, EvaluationBlock

NOVA_MODELS = {
    # model_type: (base model path, family)
    "amazon.nova-micro-v1:0:128k": ("nova-micro/prod", "nova-1"),
    "amazon.nova-lite-v1:0:300k": ("nova-lite/prod", "nova-1"),
    "amazon.nova-pro-v1:0:300k": ("nova-pro/prod", "nova-1"),
    "amazon.nova-2-lite-v1:0:256k": ("nova-lite-2/prod", "nova-2"),
}
IMAGE = re.compile(
    r"^708977205387\.dkr\.ecr\.us-east-1\.amazonaws\.com/nova-[a-z-]+-repo:[A-Za-z0-9-]+$"
)


@pytest.mark.parametrize("model_type", sorted(NOVA_MODELS))
def test_every_nova_model_is_present(model_type):
    spec = MODELS[model_type]
    base, family = NOVA_MODELS[model_type]
    assert spec.model_type == model_type
    assert spec.base_model == base
    assert spec.family == family
    assert spec.is_nova
    assert spec.recipe_shape == family
    assert catalog.model_spec(model_type) is spec


def test_nova_model_types_tuple():
    assert set(catalog.NOVA_MODEL_TYPES) == set(NOVA_MODELS)
    assert catalog.model_spec("amazon.nova-premier-v1:0") is None


def test_local_models_use_the_nova2_layout_and_only_run_locally():
    for spec in MODELS.values():
        if spec.is_nova:
            continue
        assert spec.recipe_shape == "nova-2"
        assert set(spec.supports) == {Platform.LOCAL}


def test_method_support():
    nova1 = MODELS["amazon.nova-lite-v1:0:300k"]
    nova2 = MODELS["amazon.nova-2-lite-v1:0:256k"]
    assert nova1.methods_on(Platform.HYPERPOD) == {Method.CPT, Method.SFT}
    assert nova1.methods_on(Platform.SMTJ) == {Method.SFT}
    assert nova2.methods_on(Platform.HYPERPOD) == {Method.CPT, Method.SFT, Method.RFT}
    assert nova2.methods_on(Platform.SMTJ) == {Method.SFT, Method.RFT}
    assert nova2.methods_on(Platform.LOCAL) == frozenset()


def _supported() -> list[tuple[str, Method | None, Platform]]:
    cases: list[tuple[str, Method | None, Platform]] = []
    for model_type in sorted(NOVA_MODELS):
        spec = MODELS[model_type]
        for platform in (Platform.HYPERPOD, Platform.SMTJ):
            cases.extend((model_type, m, platform) for m in sorted(spec.methods_on(platform)))
            cases.append((model_type, None, platform))  # evaluation
    return cases


@pytest.mark.parametrize(("model_type", "method", "platform"), _supported())
def test_container_image_in_us_east_1(model_type, method, platform):
    image = container_image(model_type, method, platform, "us-east-1")
    assert IMAGE.match(image), image
    repo = "nova-evaluation-repo" if method is None else "nova-fine-tune-repo"
    assert f"/{repo}:" in image
    tag = image.rsplit(":", 1)[1]
    assert ("SM-TJ" in tag) == (platform is Platform.SMTJ)
    assert ("V2" in tag) == (MODELS[model_type].family == "nova-2")


@pytest.mark.parametrize(
    ("model_type", "method", "platform", "tag"),
    [
        ("amazon.nova-lite-v1:0:300k", Method.SFT, Platform.HYPERPOD, "SM-HP-SFT-latest"),
        ("amazon.nova-lite-v1:0:300k", Method.SFT, Platform.SMTJ, "SM-TJ-SFT-latest"),
        ("amazon.nova-lite-v1:0:300k", Method.CPT, Platform.HYPERPOD, "HP-CPT-latest"),
        ("amazon.nova-2-lite-v1:0:256k", Method.SFT, Platform.HYPERPOD, "SM-HP-SFT-V2-latest"),
        ("amazon.nova-2-lite-v1:0:256k", Method.SFT, Platform.SMTJ, "SM-TJ-SFT-V2-latest"),
        ("amazon.nova-2-lite-v1:0:256k", Method.CPT, Platform.HYPERPOD, "SM-HP-CPT-V2-latest"),
        ("amazon.nova-2-lite-v1:0:256k", Method.RFT, Platform.SMTJ, "SM-TJ-RFT-V2-latest"),
        (
            "amazon.nova-2-lite-v1:0:256k",
            Method.RFT,
            Platform.HYPERPOD,
            "SM-HP-RFT-TRAIN-V2-latest",
        ),
        ("amazon.nova-2-lite-v1:0:256k", None, Platform.HYPERPOD, "SM-HP-Eval-V2-latest"),
        ("amazon.nova-2-lite-v1:0:256k", None, Platform.SMTJ, "SM-TJ-Eval-V2-latest"),
    ],
)
def test_container_image_tags(model_type, method, platform, tag):
    assert container_image(model_type, method, platform, "us-east-1").endswith(":" + tag)


def test_container_image_uses_the_regions_account():
    image = container_image("amazon.nova-2-lite-v1:0:256k", Method.SFT, Platform.SMTJ, "us-west-2")
    assert image.startswith("176779409107.dkr.ecr.us-west-2.amazonaws.com/")


@pytest.mark.parametrize("region", ["eu-north-1", "ap-south-1", ""])
def test_unsupported_region_raises(region):
    with pytest.raises(CatalogError, match="not supported for region"):
        container_image("amazon.nova-2-lite-v1:0:256k", Method.SFT, Platform.HYPERPOD, region)


def test_rft_regions_are_the_launchers_per_platform():
    model = "amazon.nova-2-lite-v1:0:256k"
    # HyperPod: the launcher's RFT regions (eu-central-1 and eu-west-2, no us-west-2).
    image = container_image(model, Method.RFT, Platform.HYPERPOD, "eu-central-1")
    assert image.startswith("874160969292.dkr.ecr.eu-central-1.amazonaws.com/")
    container_image(model, Method.RFT, Platform.HYPERPOD, "eu-west-2")
    with pytest.raises(CatalogError, match="RFT recipes are not supported for region 'us-west-2'"):
        container_image(model, Method.RFT, Platform.HYPERPOD, "us-west-2")
    # Training jobs: where an SM-TJ-RFT image is published.
    container_image(model, Method.RFT, Platform.SMTJ, "us-west-2")
    container_image(model, Method.SFT, Platform.SMTJ, "eu-west-2")
    with pytest.raises(CatalogError, match="RFT recipes are not supported for region 'eu-west-2'"):
        container_image(model, Method.RFT, Platform.SMTJ, "eu-west-2")


def test_no_image_for_unsupported_method_or_model():
    with pytest.raises(CatalogError, match="no CPT image on smtj"):
        container_image("amazon.nova-lite-v1:0:300k", Method.CPT, Platform.SMTJ, "us-east-1")
    with pytest.raises(CatalogError, match="no RFT image"):
        container_image("amazon.nova-lite-v1:0:300k", Method.RFT, Platform.HYPERPOD, "us-east-1")
    with pytest.raises(CatalogError, match="no container image"):
        container_image("local.tiny-chat-v1", Method.SFT, Platform.LOCAL, "us-east-1")
    with pytest.raises(CatalogError, match="no container image"):
        container_image("amazon.nova-9", Method.SFT, Platform.HYPERPOD, "us-east-1")


def test_rft_sidecar_images_live_in_the_fine_tune_repo():
    assert set(catalog.RFT_HYPERPOD_SIDECAR_IMAGES) == {
        "generation",
        "storm",
        "nats-server",
        "nats-reloader",
        "redis",
    }
    for repo_tag in catalog.RFT_HYPERPOD_SIDECAR_IMAGES.values():
        assert repo_tag.startswith("nova-fine-tune-repo:SM-HP-RFT-")


# --- replicas and instances ------------------------------------------------------------------


def test_instance_family():
    assert instance_family("ml.p5.48xlarge") == "p5"
    assert instance_family("ml.p5en.48xlarge") == "p5en"
    assert instance_family("p4d.24xlarge") == "p4d"


def test_allowed_replicas_lookups():
    lite2 = "amazon.nova-2-lite-v1:0:256k"
    hp, smtj = Platform.HYPERPOD, Platform.SMTJ
    assert allowed_replicas(lite2, Method.SFT, Technique.LORA, hp) == (1, 4, 8, 16, 32)
    assert allowed_replicas(lite2, Method.SFT, Technique.FULL, hp) == (4, 8, 16, 32)
    assert allowed_replicas(lite2, Method.RFT, Technique.LORA, hp) == (2, 4, 8, 16)
    assert allowed_replicas(
        "amazon.nova-lite-v1:0:300k", Method.SFT, Technique.FULL, smtj, "ml.p4d.24xlarge"
    ) == (4, 8, 16)
    # Without an instance type, every count some family accepts.
    assert allowed_replicas("amazon.nova-lite-v1:0:300k", Method.SFT, Technique.FULL, smtj) == (
        2,
        4,
        8,
        16,
    )
    assert allowed_replicas(lite2, Method.CPT, Technique.FULL, smtj) is None
    assert allowed_replicas(lite2, Method.SFT, Technique.FULL, Platform.LOCAL) is None
    assert catalog.smtj_instance_families(lite2, Method.RFT, Technique.FULL) == ["p5", "p5en"]


def test_allowed_instance_types():
    assert catalog.allowed_instance_types("amazon.nova-2-lite-v1:0:256k", Method.CPT) == (
        "ml.p5.48xlarge",
    )
    assert "ml.p4d.24xlarge" not in catalog.allowed_instance_types(
        "amazon.nova-2-lite-v1:0:256k", Method.RFT
    )
    assert catalog.allowed_instance_types("amazon.nova-pro-v1:0:300k", None) == ("ml.p5.48xlarge",)
    assert catalog.allowed_instance_types("local.tiny-chat-v1", Method.SFT) == ()


# --- evaluation tasks ------------------------------------------------------------------------


def test_evaluation_task_literal_matches_catalog():
    assert set(typing.get_args(EvalTaskName)) == set(EVAL_TASKS)
    assert len(typing.get_args(EvalTaskName)) == len(EVAL_TASKS)


def test_evaluation_strategy_and_metric_literals_cover_catalog():
    fields = EvaluationBlock.model_fields
    strategies = set(typing.get_args(fields["strategy"].annotation))
    metrics = set(typing.get_args(fields["metric"].annotation))
    assert {task.strategy for task in EVAL_TASKS.values()} == strategies
    assert {task.metric for task in EVAL_TASKS.values()} == metrics


def test_eval_tasks_by_family():
    assert EVAL_TASKS["llm_judge"].families == {"nova-1"}
    assert EVAL_TASKS["rubric_llm_judge"].families == {"nova-2"}
    assert "nova-1" not in EVAL_TASKS["rft_eval"].families
    assert EVAL_TASKS["mmmu"].multimodal
    byod = {name for name, task in EVAL_TASKS.items() if task.bring_your_own_data}
    assert byod == {"gen_qa", "llm_judge", "rubric_llm_judge", "rft_eval"}


def test_eval_metrics():
    assert "rouge1" in catalog.eval_metrics("gen_qa")
    assert catalog.eval_metrics("mmlu") == ("accuracy",)
    assert catalog.eval_metrics("math") == ("exact_match",)
    assert catalog.eval_metrics("rft_eval") is None
    assert catalog.eval_metrics("nope") is None
