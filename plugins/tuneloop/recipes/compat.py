"""Preflight compatibility: can this stage start from that checkpoint, with this data and reward?

Each check raises a typed error carrying the service's own wording, the values that clash and
the fix, before any job exists. The rules come from the Nova iterative-training documentation:

| lineage began with | may continue with                        |
|--------------------|------------------------------------------|
| SFT full-rank      | SFT full-rank, RFT full-rank             |
| SFT LoRA           | SFT LoRA, RFT LoRA                       |
| RFT full-rank      | RFT full-rank                            |
| RFT LoRA           | RFT LoRA                                 |
| CPT (full-rank)    | CPT, SFT full-rank, RFT full-rank        |

LoRA and full-rank never mix, every round keeps the same model_type, and a checkpoint is only
usable on the platform that trained it. CPT is not in the service's matrix: it trains all weights,
so tuneloop treats it as the start of a full-rank lineage.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

from tuneloop.errors import (
    DataLocationError,
    IncompatibleTechniqueError,
    ModelTypeMismatchError,
    PlatformMismatchError,
    RewardFunctionError,
)
from tuneloop.recipes import s3_uri
from tuneloop.recipes.catalog import Method, Platform, Technique


class Checkpoint(BaseModel):
    """A trained checkpoint and how it came to be: what every check below judges.

    ``tuneloop.artifacts.manifest`` reads it from a job's output (and re-exports it); it is
    defined here so the rules that judge it need nothing above the recipes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    uri: str
    """The manifest's `checkpoint_s3_bucket`: what the next stage passes as model_name_or_path."""
    model_type: str
    """The model variant it was trained from."""
    technique: Technique
    """LoRA or full-rank."""
    platform: Platform
    """Where it was trained; checkpoints only work on that platform."""
    lineage: tuple[Method, ...] = ()
    """Training methods applied since the base model, oldest first."""
    output_uri: str = ""
    """The job output folder holding manifest.json (or output/output.tar.gz)."""

    @property
    def origin(self) -> Method | None:
        """The method that started this lineage; it decides what may follow."""
        return self.lineage[0] if self.lineage else None


ALLOWED_AFTER: dict[Method, frozenset[Method]] = {
    Method.SFT: frozenset({Method.SFT, Method.RFT}),
    Method.RFT: frozenset({Method.RFT}),
    Method.CPT: frozenset({Method.CPT, Method.SFT, Method.RFT}),
}


def method_technique(method: Method, technique: Technique) -> Technique:
    """The technique a stage actually trains with: CPT is always full-rank."""
    return Technique.FULL if method is Method.CPT else technique


def _label(method: Method, technique: Technique) -> str:
    return f"{method.value.upper()} ({'LoRA' if technique is Technique.LORA else 'full-rank'})"


def check_technique(
    base: Checkpoint, method: Method, technique: Technique, *, path: str = "technique"
) -> None:
    """Raise IncompatibleTechniqueError if ``method``/``technique`` may not follow ``base``."""
    technique = method_technique(method, technique)
    if base.technique is not technique:
        raise IncompatibleTechniqueError(
            path,
            f"checkpoint {base.uri} was trained {_label(base.origin or method, base.technique)}"
            f" and this stage is {_label(method, technique)}; LoRA and full-rank checkpoints "
            "cannot be mixed",
            f"use technique: {base.technique.value} for every stage that continues from it, or "
            "start a new lineage from the base model",
        )
    origin = base.origin
    if origin is not None and method not in ALLOWED_AFTER[origin]:
        allowed = ", ".join(_label(m, technique) for m in sorted(ALLOWED_AFTER[origin]))
        raise IncompatibleTechniqueError(
            path,
            f"a lineage that began with {_label(origin, base.technique)} may continue only with "
            f"{allowed}; this stage is {_label(method, technique)}",
            f"drop the {method.value.upper()} stage, or start a new lineage from the base model",
        )


def check_model_type(base: Checkpoint, model_type: str, *, path: str = "model_type") -> None:
    if base.model_type != model_type:
        raise ModelTypeMismatchError(
            path,
            f"checkpoint {base.uri} was trained from {base.model_type}, the recipe says "
            f"{model_type}",
            f"set model_type: {base.model_type} (it must stay the same across every round), or "
            "check that model_name_or_path was copied from the right manifest.json",
        )


def check_platform(base: Checkpoint, platform: Platform, *, path: str = "backend") -> None:
    if base.platform is not platform:
        raise PlatformMismatchError(
            path,
            f"checkpoint {base.uri} was trained on {base.platform.value} and this job would run"
            f" on {platform.value}",
            f"run this stage on {base.platform.value}; checkpoints are usable only on the "
            "platform that trained them",
        )


def check_continuation(
    base: Checkpoint | None,
    *,
    method: Method,
    technique: Technique,
    model_type: str,
    platform: Platform,
    path: str = "",
) -> None:
    """Every check a stage must pass before it starts from ``base`` (None = the base model)."""
    if base is None:
        return
    prefix = f"{path}." if path else ""
    check_model_type(base, model_type, path=f"{prefix}model_type")
    check_platform(base, platform, path=f"{prefix}platform")
    check_technique(base, method, technique, path=f"{prefix}technique")


def after_stage(base: Checkpoint, method: Method, technique: Technique, uri: str) -> Checkpoint:
    """The checkpoint a stage produces from ``base`` (for planning a lineage ahead of time)."""
    lineage = base.lineage if base.lineage else ()
    return base.model_copy(
        update={
            "uri": uri,
            "technique": method_technique(method, technique),
            "lineage": (*lineage, method),
        }
    )


def check_lineage(
    methods: Sequence[Method],
    *,
    technique: Technique,
    model_type: str,
    platform: Platform,
    base: Checkpoint | None = None,
    paths: Sequence[str] = (),
) -> None:
    """Check a whole sequence of stages, each starting from the previous one's checkpoint.

    Later rounds repeat the same stages from the last checkpoint. A lineage is judged by its
    first method and every method may follow itself, so if one round passes, so do the rounds
    after it.
    """
    current = base
    for index, method in enumerate(methods):
        path = paths[index] if index < len(paths) else f"stages[{index}]"
        check_continuation(
            current,
            method=method,
            technique=technique,
            model_type=model_type,
            platform=platform,
            path=path,
        )
        if current is None:
            current = Checkpoint(
                uri=f"<checkpoint of {path}>",
                model_type=model_type,
                technique=method_technique(method, technique),
                platform=platform,
                lineage=(method,),
            )
        else:
            current = after_stage(current, method, technique, f"<checkpoint of {path}>")


# --- data and reward function ----------------------------------------------------------------

# Whatever comes before the bucket (user info) does not make it another bucket.
ESCROW_BUCKET = re.compile(r"^\s*s3://([^/@]*@)?customer-escrow-", re.IGNORECASE)


def check_data_location(uri: str, *, path: str) -> None:
    """Training and validation data must live in a customer-owned bucket, never in escrow."""
    if s3_uri.is_escrow(uri):
        raise DataLocationError(
            path,
            f"{s3_uri.shown(uri)} is in a service escrow bucket, which holds model checkpoints, "
            "not datasets",
            "copy the dataset to an S3 bucket your account owns, in the cluster's account and "
            "region, and point the path there",
        )


LAMBDA_ARN = re.compile(
    r"^arn:aws[a-z-]*:lambda:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):function:"
    r"(?P<name>[A-Za-z0-9_-]{1,64})(:[A-Za-z0-9$_-]+)?$"
)


def lambda_function_name(arn: str) -> str | None:
    match = LAMBDA_ARN.match(arn)
    return match.group("name") if match else None


def check_reward_function(arn: str, platform: Platform, *, path: str) -> None:
    """The reward function must be a Lambda ARN; on HyperPod its name must contain 'SageMaker'."""
    if platform is Platform.LOCAL:
        if not re.match(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*\Z", arn):
            raise RewardFunctionError(
                path,
                f"{arn!r} is not a Python callable reference",
                "name it as module:function, e.g. tuneloop.local.demo_task:reward",
            )
        return
    name = lambda_function_name(arn)
    if name is None:
        raise RewardFunctionError(
            path,
            f"{arn!r} is not a Lambda function ARN",
            "use arn:aws:lambda:<region>:<account-id>:function:<function-name>",
        )
    if platform is Platform.HYPERPOD and "SageMaker" not in name:
        raise RewardFunctionError(
            path,
            f"Lambda function name {name!r} must contain 'SageMaker' for RFT on HyperPod (the "
            "cluster's execution role may only invoke functions named that way)",
            f"deploy the function as e.g. 'SageMaker-{name}' and use that ARN",
        )
