"""Building blocks shared by every recipe model: the strict base, the `run` block, common ranges.

Field docstrings are the reference documentation (see `tuneloop recipe fields`): each says what
the field does; the default and the accepted range are declared on the field itself. Ranges that
depend on the model, the platform or another field live in `rules.py`, where an error can name
both fields and the catalog entry that decided it.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    field_validator,
)
from pydantic_core import PydanticCustomError

from tuneloop.recipes import s3_uri
from tuneloop.recipes.catalog import MODELS

# Re-exported: the recipe models import them from here.
from tuneloop.recipes.strict import StrictModel as StrictModel
from tuneloop.recipes.strict import matching as matching
from tuneloop.recipes.tracking_uri import TrackingUri

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
NonNegativeFloat = Annotated[float, Field(ge=0.0)]
LearningRate = Annotated[float, Field(gt=0.0, le=1.0)]
WarmupSteps = Annotated[int, Field(ge=1, le=20)]


def _null_string_to_none(value: Any) -> Any:
    # Nova 2 templates write `peft_scheme: "null"` (a string) where Nova 1 writes null.
    if isinstance(value, str) and value.strip().lower() in {"null", "none", ""}:
        return None
    return value


NullString = BeforeValidator(_null_string_to_none)


def _path_or_s3_uri(value: str) -> str:
    # A campaign's data URI whose Airflow template failed to render arrives as written; the
    # template's own error already names the line, so one problem is told once.
    if "{{" in value or "{%" in value:
        return value
    return str(s3_uri.checked_if_s3(value))


# A local path passes (the platform rules say where one is allowed); a value written as s3:...
# must be a whole, valid S3 URI, not only begin like one.
PathOrS3Uri = Annotated[str, AfterValidator(_path_or_s3_uri)]

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")


class RunConfig(StrictModel):
    """The `run` block: what to train, on which data, where results go."""

    name: str = Field(default="", max_length=63)
    """Job name. A DNS label: lowercase letters, digits and '-'. Campaigns set it per round."""
    model_type: str
    """The Nova model variant, e.g. `amazon.nova-2-lite-v1:0:256k`. Must stay the same across
    every round of a campaign."""
    model_name_or_path: PathOrS3Uri
    """The weights to start from: the model's base (e.g. `nova-lite-2/prod`) or the
    `checkpoint_s3_bucket` URI of an earlier job's manifest.json."""
    replicas: PositiveInt = 4
    """Number of compute instances. Allowed counts depend on model, method and platform."""
    data_s3_path: PathOrS3Uri = ""
    """Training data (JSONL) in a customer-owned bucket, same account and region as the cluster.
    Ignored by SageMaker training jobs, which read the `train` channel."""
    validation_data_s3_path: PathOrS3Uri = ""
    """Optional validation data (JSONL), same rules as `data_s3_path`."""
    output_s3_path: PathOrS3Uri = ""
    """Where the job writes manifest.json and TensorBoard logs (required on HyperPod)."""
    mlflow_tracking_uri: TrackingUri = ""
    """MLflow tracking server or SageMaker managed MLflow app ARN; empty disables MLflow. Never
    with credentials (``user:password@``): the recipe is copied into job requests, records and
    logs; the MLflow client reads them from its environment."""
    mlflow_experiment_name: str = ""
    """MLflow experiment name."""
    mlflow_run_name: str = ""
    """MLflow run name."""

    @field_validator("name")
    @classmethod
    def _dns_label(cls, value: str) -> str:
        if value and not DNS_LABEL.match(value):
            raise PydanticCustomError(
                "dns_label",
                "'{value}' is not a valid job name",
                {
                    "value": value,
                    "allowed": "lowercase letters, digits and '-', 1-63 characters,"
                    " starting and ending with a letter or digit",
                },
            )
        return value

    @field_validator("model_type")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if value not in MODELS:
            raise PydanticCustomError(
                "unknown_model_type",
                "unknown model_type '{value}'",
                {"value": value, "allowed": ", ".join(MODELS)},
            )
        return value


class Nova1Sched(StrictModel):
    """Learning-rate schedule (Nova 1 and Nova 2 CPT layout)."""

    name: str = "CosineAnnealing"
    """Scheduler name; the service uses cosine annealing."""
    warmup_steps: WarmupSteps = 10
    """Steps over which the learning rate ramps up."""
    constant_steps: NonNegativeInt = 0
    """Steps held at the peak learning rate after warm-up."""
    min_lr: Probability = 1e-6
    """Learning rate at the end of the decay; must be lower than `lr`."""


class LrScheduler(StrictModel):
    """Learning-rate schedule (Nova 2 SFT layout)."""

    warmup_steps: WarmupSteps = 15
    """Steps over which the learning rate ramps up."""
    min_lr: Probability = 1e-6
    """Learning rate at the end of the decay; must be lower than `lr`."""


class OptimConfig(StrictModel):
    """Optimizer settings (Nova 2 layout)."""

    lr: LearningRate = 1e-5
    """Peak learning rate."""
    weight_decay: Probability = 0.0
    """L2 regularization strength; 0.01-0.1 regularizes more."""
    adam_beta1: Probability = 0.9
    """Adam beta1."""
    adam_beta2: Probability = 0.95
    """Adam beta2."""
