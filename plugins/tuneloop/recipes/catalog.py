"""What each model supports: methods, platforms, replica counts, instance types and images;
and what storing a checkpoint costs (S3 prices per region and class, checkpoint size estimates).

Facts come from the Nova documentation and the published recipes (sagemaker-hyperpod-recipes,
`nova_recipe_template_parameters.json`, `nova_metadata.json`, the SageMaker training-job
instance tables). Keeping them in one table means a rule changes in one place, and the recipe
models, the preflight checks and the job backends all agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from tuneloop.errors import MessageError

PLACEHOLDER_PREFIX = "@checkpoint:"
"""model_name_or_path of a stage whose starting checkpoint is known only once the previous
stage finishes: ``@checkpoint:<stage>``."""


class Platform(StrEnum):
    """Where a job runs. Checkpoints only work on the platform that trained them."""

    HYPERPOD = "hyperpod"
    SMTJ = "smtj"
    LOCAL = "local"


class Method(StrEnum):
    """The customization a training stage performs."""

    CPT = "cpt"
    SFT = "sft"
    RFT = "rft"


class Technique(StrEnum):
    """How the weights are updated. LoRA and full-rank lineages never mix."""

    FULL = "full"
    LORA = "lora"


class Modality(StrEnum):
    TEXT = "text"
    IMAGE = "image"
    VIDEO = "video"
    DOCUMENT = "document"


ALL_MODALITIES = frozenset(Modality)

Support = dict[Platform, frozenset[Method]]


@dataclass(frozen=True)
class ModelSpec:
    """One model a campaign can customize."""

    model_type: str
    """The recipe's ``run.model_type``, e.g. ``amazon.nova-2-lite-v1:0:256k``."""
    display_name: str
    family: str
    """Recipe shape: ``nova-1`` and ``nova-2`` recipes have different layouts; ``local`` models use
    the ``nova-2`` layout with the local backend's limits."""
    base_model: str
    """Default ``run.model_name_or_path`` (the service's name for the untouched base weights)."""
    context_length: int
    """Longest sequence the model accepts, in tokens."""
    modalities: frozenset[Modality]
    supports: Support = field(default_factory=dict)
    hub_content_name: str = ""
    """SageMaker Public Hub model name, where the service publishes recipes for this model."""

    @property
    def is_nova(self) -> bool:
        return self.family in {"nova-1", "nova-2"}

    @property
    def recipe_shape(self) -> str:
        return "nova-1" if self.family == "nova-1" else "nova-2"

    def methods_on(self, platform: Platform) -> frozenset[Method]:
        return self.supports.get(platform, frozenset())


_NOVA1_SUPPORT: Support = {
    Platform.HYPERPOD: frozenset({Method.CPT, Method.SFT}),
    Platform.SMTJ: frozenset({Method.SFT}),
}
_NOVA2_SUPPORT: Support = {
    Platform.HYPERPOD: frozenset({Method.CPT, Method.SFT, Method.RFT}),
    Platform.SMTJ: frozenset({Method.SFT, Method.RFT}),
}
_LOCAL_SUPPORT: Support = {Platform.LOCAL: frozenset(Method)}

MODELS: dict[str, ModelSpec] = {
    spec.model_type: spec
    for spec in (
        ModelSpec(
            "amazon.nova-micro-v1:0:128k",
            "Nova Micro",
            "nova-1",
            "nova-micro/prod",
            128_000,
            frozenset({Modality.TEXT}),
            _NOVA1_SUPPORT,
            "nova-textgeneration-micro",
        ),
        ModelSpec(
            "amazon.nova-lite-v1:0:300k",
            "Nova Lite",
            "nova-1",
            "nova-lite/prod",
            300_000,
            ALL_MODALITIES,
            _NOVA1_SUPPORT,
            "nova-textgeneration-lite",
        ),
        ModelSpec(
            "amazon.nova-pro-v1:0:300k",
            "Nova Pro",
            "nova-1",
            "nova-pro/prod",
            300_000,
            ALL_MODALITIES,
            _NOVA1_SUPPORT,
            "nova-textgeneration-pro",
        ),
        ModelSpec(
            "amazon.nova-2-lite-v1:0:256k",
            "Nova 2 Lite",
            "nova-2",
            "nova-lite-2/prod",
            256_000,
            ALL_MODALITIES,
            _NOVA2_SUPPORT,
            "nova-textgeneration-lite-v2",
        ),
        # The local backend's models. `tiny-chat` is built from a config on the spot (nothing is
        # downloaded); `hf-causal-lm` is any Hugging Face model directory named by the recipe's
        # model_name_or_path, whose context length is only known once it is loaded.
        ModelSpec(
            "local.tiny-chat-v1",
            "tiny chat model (local)",
            "local",
            "tiny-chat",
            512,
            frozenset({Modality.TEXT}),
            _LOCAL_SUPPORT,
        ),
        ModelSpec(
            "local.hf-causal-lm",
            "Hugging Face causal LM directory (local)",
            "local",
            "",
            1_000_000,
            frozenset({Modality.TEXT}),
            _LOCAL_SUPPORT,
        ),
    )
}

NOVA_MODEL_TYPES = tuple(m for m, spec in MODELS.items() if spec.is_nova)


def model_spec(model_type: str) -> ModelSpec | None:
    return MODELS.get(model_type)


# --- replicas ------------------------------------------------------------------------------

# HyperPod replica counts per model and method, from the Nova docs and recipe parameter specs.
# The SFT docs list Lite at 4/8/16/32; Nova 2 Lite LoRA SFT also accepts a single node.
_HYPERPOD_REPLICAS: dict[tuple[str, Method, Technique | None], tuple[int, ...]] = {
    ("amazon.nova-micro-v1:0:128k", Method.SFT, None): (2, 4, 8),
    ("amazon.nova-micro-v1:0:128k", Method.CPT, None): (2, 4, 8, 16, 32),
    ("amazon.nova-lite-v1:0:300k", Method.SFT, None): (4, 8, 16, 32),
    ("amazon.nova-lite-v1:0:300k", Method.CPT, None): (4, 8, 16, 32),
    ("amazon.nova-pro-v1:0:300k", Method.SFT, None): (6, 12, 24),
    ("amazon.nova-pro-v1:0:300k", Method.CPT, None): (6, 12, 24),
    ("amazon.nova-2-lite-v1:0:256k", Method.SFT, Technique.FULL): (4, 8, 16, 32),
    ("amazon.nova-2-lite-v1:0:256k", Method.SFT, Technique.LORA): (1, 4, 8, 16, 32),
    ("amazon.nova-2-lite-v1:0:256k", Method.CPT, None): (4, 8, 16, 32),
    ("amazon.nova-2-lite-v1:0:256k", Method.RFT, None): (2, 4, 8, 16),
}

# SageMaker training jobs: instance counts depend on the instance family as well.
# (model, method, technique, instance family) -> counts. Family is the part after "ml.", up to
# the first dot ("p5", "p4d", "g5", ...).
_SMTJ_REPLICAS: dict[tuple[str, Method, Technique, str], tuple[int, ...]] = {
    ("amazon.nova-micro-v1:0:128k", Method.SFT, Technique.LORA, "g5"): (1,),
    ("amazon.nova-micro-v1:0:128k", Method.SFT, Technique.LORA, "g6"): (1,),
    ("amazon.nova-micro-v1:0:128k", Method.SFT, Technique.LORA, "p5"): (1, 2, 4, 8),
    ("amazon.nova-micro-v1:0:128k", Method.SFT, Technique.FULL, "p4d"): (2, 4, 8),
    ("amazon.nova-lite-v1:0:300k", Method.SFT, Technique.LORA, "p5"): (1, 4, 8, 16),
    ("amazon.nova-lite-v1:0:300k", Method.SFT, Technique.LORA, "g5"): (1,),
    ("amazon.nova-lite-v1:0:300k", Method.SFT, Technique.LORA, "g6"): (1,),
    ("amazon.nova-lite-v1:0:300k", Method.SFT, Technique.FULL, "p5"): (2, 4, 8, 16),
    ("amazon.nova-lite-v1:0:300k", Method.SFT, Technique.FULL, "p4d"): (4, 8, 16),
    ("amazon.nova-pro-v1:0:300k", Method.SFT, Technique.LORA, "p5"): (3, 6, 12, 24),
    ("amazon.nova-pro-v1:0:300k", Method.SFT, Technique.LORA, "p4d"): (6, 12, 24),
    ("amazon.nova-pro-v1:0:300k", Method.SFT, Technique.FULL, "p5"): (6, 12, 24),
    ("amazon.nova-2-lite-v1:0:256k", Method.SFT, Technique.LORA, "p5"): (1, 4, 8, 16, 32),
    ("amazon.nova-2-lite-v1:0:256k", Method.SFT, Technique.FULL, "p5"): (4, 8, 16, 32),
    ("amazon.nova-2-lite-v1:0:256k", Method.SFT, Technique.LORA, "p5en"): (1, 4, 8, 16, 32),
    ("amazon.nova-2-lite-v1:0:256k", Method.SFT, Technique.FULL, "p5en"): (4, 8, 16, 32),
    ("amazon.nova-2-lite-v1:0:256k", Method.RFT, Technique.LORA, "p5"): (2, 4, 6, 8),
    ("amazon.nova-2-lite-v1:0:256k", Method.RFT, Technique.FULL, "p5"): (2, 4, 6, 8),
    ("amazon.nova-2-lite-v1:0:256k", Method.RFT, Technique.LORA, "p5en"): (2, 4, 6, 8),
    ("amazon.nova-2-lite-v1:0:256k", Method.RFT, Technique.FULL, "p5en"): (2, 4, 6, 8),
}


def instance_family(instance_type: str) -> str:
    """``ml.p5.48xlarge`` -> ``p5``; ``p4d.24xlarge`` -> ``p4d``."""
    return instance_type.removeprefix("ml.").split(".", 1)[0]


def allowed_replicas(
    model_type: str,
    method: Method,
    technique: Technique,
    platform: Platform,
    instance_type: str | None = None,
) -> tuple[int, ...] | None:
    """Replica counts the service accepts; None when any count is fine (local backend)."""
    if platform is Platform.LOCAL:
        return None
    if platform is Platform.HYPERPOD:
        return _HYPERPOD_REPLICAS.get((model_type, method, technique)) or _HYPERPOD_REPLICAS.get(
            (model_type, method, None)
        )
    if instance_type is None:
        counts: set[int] = set()
        for (m, meth, tech, _family), values in _SMTJ_REPLICAS.items():
            if (m, meth, tech) == (model_type, method, technique):
                counts.update(values)
        return tuple(sorted(counts)) or None
    return _SMTJ_REPLICAS.get((model_type, method, technique, instance_family(instance_type)))


def smtj_instance_families(model_type: str, method: Method, technique: Technique) -> list[str]:
    return sorted(
        {
            fam
            for (m, meth, tech, fam) in _SMTJ_REPLICAS
            if (m, meth, tech) == (model_type, method, technique)
        }
    )


# --- instance types (nova_metadata.json) ---------------------------------------------------

_P5_P4D = ("ml.p5.48xlarge", "ml.p5en.48xlarge", "ml.p4d.24xlarge")
_G_SMALL = ("ml.g5.12xlarge", "ml.g5.48xlarge", "ml.g6.12xlarge", "ml.g6.48xlarge")


def allowed_instance_types(model_type: str, method: Method | None) -> tuple[str, ...]:
    """Instance types a training (method) or evaluation (None) job may use."""
    spec = MODELS[model_type]
    if not spec.is_nova:
        return ()
    if method is Method.CPT:
        return ("ml.p5.48xlarge",)
    if method is Method.RFT:
        return ("ml.p5.48xlarge", "ml.p5en.48xlarge")
    if method is Method.SFT:
        if model_type in ("amazon.nova-micro-v1:0:128k", "amazon.nova-lite-v1:0:300k"):
            return _P5_P4D + _G_SMALL
        return _P5_P4D
    # evaluation
    if model_type in ("amazon.nova-micro-v1:0:128k", "amazon.nova-lite-v1:0:300k"):
        return (
            "ml.p5.48xlarge",
            "ml.g5.12xlarge",
            "ml.g5.24xlarge",
            "ml.g5.48xlarge",
            "ml.g6.12xlarge",
            "ml.g6.24xlarge",
            "ml.g6.48xlarge",
        )
    if model_type == "amazon.nova-pro-v1:0:300k":
        return ("ml.p5.48xlarge",)
    return ("ml.p5.48xlarge", "ml.p4d.24xlarge")


# --- container images ------------------------------------------------------------------------

# Account that hosts the Nova images in each region: the regions the Nova launcher accepts for
# any Nova job (aws/sagemaker-hyperpod-recipes@2631995,
# launcher/nova/constants/init_container_constants.py, INIT_CONTAINER_REGION_ACCOUNT_MAP).
IMAGE_ACCOUNTS: dict[str, str] = {
    "us-east-1": "708977205387",
    "us-west-2": "176779409107",
    "ap-northeast-1": "878185805882",
    "eu-central-1": "874160969292",
    "eu-west-2": "470633809225",
}
# Regions where the RFT images are published, per platform. HyperPod: the regions the Nova
# launcher deploys RFT to (same repository, launcher/nova/constants/rft_container_constants.py,
# RFT_REGION_ACCOUNT_MAP; it has no us-west-2). Training jobs: the regions with an
# SM-TJ-RFT-V2 image (launcher/recipe_templatization/nova/nova_regional_parameters.json, the
# nova_lite_v2_smtj_*_rft recipes).
RFT_REGIONS: dict[Platform, frozenset[str]] = {
    Platform.HYPERPOD: frozenset({"us-east-1", "ap-northeast-1", "eu-central-1", "eu-west-2"}),
    Platform.SMTJ: frozenset({"us-east-1", "us-west-2", "ap-northeast-1"}),
}

# (recipe family, method or "eval", platform) -> repository:tag
_IMAGES: dict[tuple[str, str, Platform], str] = {
    ("nova-1", "sft", Platform.SMTJ): "nova-fine-tune-repo:SM-TJ-SFT-latest",
    ("nova-1", "sft", Platform.HYPERPOD): "nova-fine-tune-repo:SM-HP-SFT-latest",
    ("nova-1", "cpt", Platform.HYPERPOD): "nova-fine-tune-repo:HP-CPT-latest",
    ("nova-1", "eval", Platform.SMTJ): "nova-evaluation-repo:SM-TJ-Eval-latest",
    ("nova-1", "eval", Platform.HYPERPOD): "nova-evaluation-repo:SM-HP-Eval-latest",
    ("nova-2", "sft", Platform.SMTJ): "nova-fine-tune-repo:SM-TJ-SFT-V2-latest",
    ("nova-2", "sft", Platform.HYPERPOD): "nova-fine-tune-repo:SM-HP-SFT-V2-latest",
    ("nova-2", "cpt", Platform.HYPERPOD): "nova-fine-tune-repo:SM-HP-CPT-V2-latest",
    ("nova-2", "rft", Platform.SMTJ): "nova-fine-tune-repo:SM-TJ-RFT-V2-latest",
    ("nova-2", "rft", Platform.HYPERPOD): "nova-fine-tune-repo:SM-HP-RFT-TRAIN-V2-latest",
    ("nova-2", "eval", Platform.SMTJ): "nova-evaluation-repo:SM-TJ-Eval-V2-latest",
    ("nova-2", "eval", Platform.HYPERPOD): "nova-evaluation-repo:SM-HP-Eval-V2-latest",
}
# The extra workloads of a HyperPod RFT job (generation, rollout hub, message bus, cache).
RFT_HYPERPOD_SIDECAR_IMAGES: dict[str, str] = {
    "generation": "nova-fine-tune-repo:SM-HP-RFT-GENERATION-V2-latest",
    "storm": "nova-fine-tune-repo:SM-HP-RFT-STORM-V2-latest",
    "nats-server": "nova-fine-tune-repo:SM-HP-RFT-NATS-server-V2-latest",
    "nats-reloader": "nova-fine-tune-repo:SM-HP-RFT-NATS-reloader-V2-latest",
    "redis": "nova-fine-tune-repo:SM-HP-RFT-REDIS-V2-latest",
}


class CatalogError(MessageError):
    """A model, method, platform or region combination the service does not offer.

    It names no field: the caller knows which one chose the combination and places the message
    there, so ``str(error)`` is the bare message."""


def container_image(model_type: str, method: Method | None, platform: Platform, region: str) -> str:
    """Full image URI of the job container; method None means evaluation."""
    spec = MODELS.get(model_type)
    if spec is None or not spec.is_nova:
        raise CatalogError(f"no container image for model_type {model_type!r}")
    account = IMAGE_ACCOUNTS.get(region)
    if account is None:
        raise CatalogError(
            f"Nova recipes are not supported for region '{region}' "
            f"(images are published in {', '.join(sorted(IMAGE_ACCOUNTS))})"
        )
    rft_regions = RFT_REGIONS.get(platform, frozenset())
    if method is Method.RFT and region not in rft_regions:
        raise CatalogError(
            f"Nova RFT recipes are not supported for region '{region}' on {platform.value} "
            f"(RFT images are published there in {', '.join(sorted(rft_regions))})"
        )
    key = (spec.recipe_shape, method.value if method else "eval", platform)
    repo_tag = _IMAGES.get(key)
    if repo_tag is None:
        what = method.value.upper() if method else "evaluation"
        raise CatalogError(f"{spec.display_name} has no {what} image on {platform.value}")
    return f"{account}.dkr.ecr.{region}.amazonaws.com/{repo_tag}"


# --- evaluation tasks ----------------------------------------------------------------------


@dataclass(frozen=True)
class EvalTask:
    strategy: str
    metric: str
    bring_your_own_data: bool
    families: frozenset[str]
    """Recipe families that offer the task."""
    subtasks: tuple[str, ...] = ()
    multimodal: bool = False


_BOTH = frozenset({"nova-1", "nova-2"})
_ALL = frozenset({"nova-1", "nova-2", "local"})

_MMLU_SUBJECTS = (
    "abstract_algebra",
    "anatomy",
    "astronomy",
    "business_ethics",
    "clinical_knowledge",
    "college_biology",
    "college_chemistry",
    "college_computer_science",
    "college_mathematics",
    "college_medicine",
    "college_physics",
    "computer_security",
    "conceptual_physics",
    "econometrics",
    "electrical_engineering",
    "elementary_mathematics",
    "formal_logic",
    "global_facts",
    "high_school_biology",
    "high_school_chemistry",
    "high_school_computer_science",
    "high_school_european_history",
    "high_school_geography",
    "high_school_government_and_politics",
    "high_school_macroeconomics",
    "high_school_mathematics",
    "high_school_microeconomics",
    "high_school_physics",
    "high_school_psychology",
    "high_school_statistics",
    "high_school_us_history",
    "high_school_world_history",
    "human_aging",
    "human_sexuality",
    "international_law",
    "jurisprudence",
    "logical_fallacies",
    "machine_learning",
    "management",
    "marketing",
    "medical_genetics",
    "miscellaneous",
    "moral_disputes",
    "moral_scenarios",
    "nutrition",
    "philosophy",
    "prehistory",
    "professional_accounting",
    "professional_law",
    "professional_medicine",
    "professional_psychology",
    "public_relations",
    "security_studies",
    "sociology",
    "us_foreign_policy",
    "virology",
    "world_religions",
)
_BBH_TASKS = (
    "boolean_expressions",
    "causal_judgement",
    "date_understanding",
    "disambiguation_qa",
    "dyck_languages",
    "formal_fallacies",
    "geometric_shapes",
    "hyperbaton",
    "logical_deduction_five_objects",
    "logical_deduction_seven_objects",
    "logical_deduction_three_objects",
    "movie_recommendation",
    "multistep_arithmetic_two",
    "navigate",
    "object_counting",
    "penguins_in_a_table",
    "reasoning_about_colored_objects",
    "ruin_names",
    "salient_translation_error_detection",
    "snarks",
    "sports_understanding",
    "temporal_sequences",
    "tracking_shuffled_objects_five_objects",
    "tracking_shuffled_objects_seven_objects",
    "tracking_shuffled_objects_three_objects",
    "web_of_lies",
    "word_sorting",
)
_MATH_TOPICS = (
    "algebra",
    "counting_and_probability",
    "geometry",
    "intermediate_algebra",
    "number_theory",
    "prealgebra",
    "precalculus",
)
_MMMU_SUBJECTS = (
    "accounting",
    "agriculture",
    "architecture_and_engineering",
    "art",
    "art_theory",
    "basic_medical_science",
    "biology",
    "chemistry",
    "clinical_medicine",
    "computer_science",
    "design",
    "economics",
    "electronics",
    "energy_and_power",
    "finance",
    "geography",
    "history",
    "literature",
    "manage",
    "marketing",
    "materials",
    "math",
    "mechanical_engineering",
    "music",
    "pharmacy",
    "physics",
    "psychology",
    "public_health",
    "sociology",
)

EVAL_TASKS: dict[str, EvalTask] = {
    "mmlu": EvalTask("zs_cot", "accuracy", False, _BOTH, _MMLU_SUBJECTS),
    "mmlu_pro": EvalTask("zs_cot", "accuracy", False, _BOTH),
    "bbh": EvalTask("fs_cot", "accuracy", False, _BOTH, _BBH_TASKS),
    "gpqa": EvalTask("zs_cot", "accuracy", False, _BOTH),
    "math": EvalTask("zs_cot", "exact_match", False, _BOTH, _MATH_TOPICS),
    "strong_reject": EvalTask(
        "zs",
        "deflection",
        False,
        _BOTH,
        ("dangerous_or_sensitive_topics", "offensive_language"),
    ),
    "ifeval": EvalTask("zs", "accuracy", False, _BOTH),
    "mmmu": EvalTask("zs_cot", "accuracy", False, _BOTH, _MMMU_SUBJECTS, multimodal=True),
    "gen_qa": EvalTask("gen_qa", "all", True, _ALL),
    "llm_judge": EvalTask("judge", "all", True, frozenset({"nova-1"})),
    "rubric_llm_judge": EvalTask("judge", "all", True, frozenset({"nova-2"})),
    "rft_eval": EvalTask("rft_eval", "all", True, frozenset({"nova-2", "local"})),
}

# Metrics each bring-your-own-data task reports (what a campaign's gate may target).
EVAL_METRICS: dict[str, tuple[str, ...]] = {
    # The service's results carry both the long names and the short ones (em, qem, f1).
    "gen_qa": (
        "rouge1",
        "rouge2",
        "rougeL",
        "exact_match",
        "quasi_exact_match",
        "f1_score",
        "f1_score_quasi",
        "bleu",
        "em",
        "qem",
        "f1",
    ),
    "llm_judge": ("winrate", "a_scores", "b_scores", "ties", "score"),
    "rubric_llm_judge": ("winrate", "a_scores", "b_scores", "ties", "score"),
}


def eval_metrics(task: str) -> tuple[str, ...] | None:
    """Metric names a task reports; None when the reward function decides (rft_eval)."""
    if task in EVAL_METRICS:
        return EVAL_METRICS[task]
    spec = EVAL_TASKS.get(task)
    if spec is None or task == "rft_eval":
        return None
    return (spec.metric,)


# --- instance resources -------------------------------------------------------------------


@dataclass(frozen=True)
class InstanceResources:
    gpus: int
    efa: int
    """EFA interfaces the instance type exposes (0: no EFA, the request is left out)."""


# Accelerators per instance type (EC2 instance type specifications): what one node offers. The
# HyperPod backend requests them per pod; the ledger counts GPU-hours with them.
INSTANCE_RESOURCES: dict[str, InstanceResources] = {
    "ml.p5.48xlarge": InstanceResources(8, 32),
    "ml.p5e.48xlarge": InstanceResources(8, 32),
    "ml.p5en.48xlarge": InstanceResources(8, 16),
    "ml.p4d.24xlarge": InstanceResources(8, 4),
    "ml.p4de.24xlarge": InstanceResources(8, 4),
    "ml.g5.12xlarge": InstanceResources(4, 0),
    "ml.g5.24xlarge": InstanceResources(4, 0),
    "ml.g5.48xlarge": InstanceResources(8, 1),
    "ml.g6.12xlarge": InstanceResources(4, 0),
    "ml.g6.24xlarge": InstanceResources(4, 0),
    "ml.g6.48xlarge": InstanceResources(8, 1),
}


# --- storage prices ------------------------------------------------------------------------

STORAGE_PRICES_SOURCE = (
    "Amazon S3 pricing (https://aws.amazon.com/s3/pricing/), storage, first 50 TB a month, "
    "US East (N. Virginia), as quoted on 2026-03 by costnimbus.com's S3 storage class guide; "
    "read 2026-12-05. Other regions are not in the table yet: they are priced as us-east-1."
)
"""Where `STORAGE_PRICES` comes from and when it was read: plans carry it beside their
costs, so an estimate can be checked against the page it came from."""

STORAGE_PRICES_DEFAULT_REGION = "us-east-1"
"""The region whose prices stand in for a region the table does not list."""

STORAGE_PRICES: dict[str, dict[str, float]] = {
    # USD per GB-month, first tier (the first 50 TB a month of STANDARD; the archive classes
    # have one tier). A region is listed only with all four classes from one source.
    "us-east-1": {
        "STANDARD": 0.023,
        "GLACIER_IR": 0.004,
        "GLACIER": 0.0036,  # S3 Glacier Flexible Retrieval
        "DEEP_ARCHIVE": 0.00099,
    },
}
"""Region -> storage class -> US dollars per GB-month (GB = 2**30 bytes)."""

GB = 1024**3

ARCHIVE_OBJECT_OVERHEAD_STANDARD_BYTES = 8 * 1024
"""Each object in GLACIER or DEEP_ARCHIVE is billed 8 KB of S3 metadata at the STANDARD
price (its name and user metadata, kept readable)..."""
ARCHIVE_OBJECT_OVERHEAD_ARCHIVE_BYTES = 32 * 1024
"""...and 32 KB of index at its own class's price: 40 KB per object in all, which is why
archiving small objects costs more than it saves."""
GLACIER_IR_MIN_BILLABLE_BYTES = 128 * 1024
"""GLACIER_IR bills a smaller object as 128 KB."""
MIN_STORAGE_DAYS: dict[str, int] = {"GLACIER_IR": 90, "GLACIER": 90, "DEEP_ARCHIVE": 180}
"""An object deleted, overwritten or moved out of these classes sooner is billed for the
rest of the period: archiving something that will be needed back soon is not a saving."""

_LOCAL_CLASSES = {"LOCAL": "STANDARD"}
"""A local folder is priced as if it were in S3 STANDARD, so a plan shows what the same
campaign would pay on AWS (the local archive class is priced by the caller as its archive
class)."""


def storage_prices(region: str) -> dict[str, float]:
    """The price list of ``region``; an unlisted region gets us-east-1's."""
    return STORAGE_PRICES.get(region) or STORAGE_PRICES[STORAGE_PRICES_DEFAULT_REGION]


def storage_monthly_cost(nbytes: int, storage_class: str, region: str) -> float:
    """Estimated US dollars a month to store one object of ``nbytes`` in ``storage_class``.

    Per-object overheads are included: 40 KB for GLACIER and DEEP_ARCHIVE (8 KB at the
    STANDARD price, 32 KB at the class's), a 128 KB minimum for GLACIER_IR. ``LOCAL`` is
    priced as STANDARD; an unknown class as STANDARD; an unlisted region as us-east-1.
    """
    prices = storage_prices(region)
    storage_class = _LOCAL_CLASSES.get(storage_class, storage_class)
    standard = prices["STANDARD"]
    price = prices.get(storage_class, standard)
    billed = max(nbytes, 0)
    if storage_class in ("GLACIER", "DEEP_ARCHIVE"):
        return (
            (billed + ARCHIVE_OBJECT_OVERHEAD_ARCHIVE_BYTES) * price
            + ARCHIVE_OBJECT_OVERHEAD_STANDARD_BYTES * standard
        ) / GB
    if storage_class == "GLACIER_IR":
        billed = max(billed, GLACIER_IR_MIN_BILLABLE_BYTES)
    return billed * price / GB


# Estimated checkpoint sizes for escrow checkpoints this account may not list. Amazon does not
# publish Nova parameter counts, so these are orders of magnitude, not measurements: about
# 10 billion parameters for Micro, Lite and Nova 2 Lite, about 100 billion for Pro, at 2 bytes
# a parameter (bf16 full weights). A LoRA checkpoint holds adapters only: estimated at 1% of
# the full weights. They feed cost estimates only, and a plan marks them ``estimated``.
_ORDER_OF_MAGNITUDE_PARAMETERS: dict[str, int] = {
    "amazon.nova-micro-v1:0:128k": 10**10,
    "amazon.nova-lite-v1:0:300k": 10**10,
    "amazon.nova-pro-v1:0:300k": 10**11,
    "amazon.nova-2-lite-v1:0:256k": 10**10,
}
BF16_BYTES_PER_PARAMETER = 2
LORA_FRACTION_OF_FULL = 100
"""A LoRA checkpoint is estimated at 1/100 of the full weights."""

ESCROW_CHECKPOINT_BYTES: dict[str, int] = {
    model_type: parameters * BF16_BYTES_PER_PARAMETER
    for model_type, parameters in _ORDER_OF_MAGNITUDE_PARAMETERS.items()
}
"""Nova model type -> estimated bytes of a full-rank checkpoint (an order of magnitude: the
parameter counts are not public)."""


def estimated_checkpoint_bytes(model_type: str, technique: str) -> int:
    """The estimated size of one escrow checkpoint of ``model_type`` trained with
    ``technique`` (``full`` or ``lora``); 0 for a model with no escrow checkpoints (the local
    backend's models, whose checkpoints are folders that are measured)."""
    full = ESCROW_CHECKPOINT_BYTES.get(model_type, 0)
    if str(technique) == Technique.LORA.value:
        return full // LORA_FRACTION_OF_FULL
    return full
