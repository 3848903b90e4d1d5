"""The campaign: a series of rounds toward one goal, as one YAML file.

A campaign names the model, the technique, the backend that runs the jobs, the ordered training
stages of a round (each with a recipe template, datasets and overrides), how candidates are
evaluated, when to stop (the gate), what to keep (retention) and when rounds start (schedule).

Data URIs may contain Airflow templates (``{{ ds }}``): they are rendered for each round, and
validated after rendering, so a schedule or a backfill feeds each round its own data.
"""

from __future__ import annotations

import re
from datetime import date
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeAlias

from pydantic import (
    AfterValidator,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from tuneloop.config import cron, training_jobs
from tuneloop.config.monitoring import Monitoring, OutputFormat, RewardProbe
from tuneloop.recipes import s3_uri
from tuneloop.recipes.catalog import MODELS, Method, Platform, Technique
from tuneloop.recipes.strict import StrictModel, matching
from tuneloop.recipes.tracking_uri import TrackingUri

NAME = re.compile(r"^[a-z][a-z0-9-]{0,31}\Z")
STAGE_NAME = re.compile(r"^[a-z][a-z0-9-]{0,15}\Z")
CRON_PRESETS = frozenset(cron.PRESETS)
S3_FOLDER_EXAMPLE = "s3://my-ml-bucket/tuneloop"


def _not_escrow(uri: str, what: str) -> None:
    """Refuse ``uri`` in the service's escrow bucket: it holds the checkpoints the service
    trains, and ``what`` must go to a bucket the user owns."""
    if s3_uri.is_escrow(uri):
        raise PydanticCustomError(
            "escrow_bucket",
            "{text}",
            {
                "text": f"{s3_uri.shown(uri)} is in the service's escrow bucket, which holds the "
                f"checkpoints it trains; {what} go to a bucket your account owns; fix: use a "
                "folder in an S3 bucket of your own",
                "allowed": f"an s3:// folder in a bucket you own, e.g. {S3_FOLDER_EXAMPLE}",
            },
        )


def _owned_s3_folder(value: str) -> str:
    """The AWS backends' output root: a valid S3 URI in a bucket the user owns."""
    if not s3_uri.looks_like_s3(value):
        raise PydanticCustomError(
            "pattern_mismatch",
            "{value} is not {what}",
            {
                "value": repr(value),
                "what": "an s3:// folder in a bucket you own",
                "allowed": f"e.g. {S3_FOLDER_EXAMPLE}",
            },
        )
    return _owned_folder(value)


def _owned_folder(value: str) -> str:
    """An output root: a local folder, or a valid S3 URI in a bucket the user owns."""
    s3_uri.checked_if_s3(value)
    _not_escrow(value, "job outputs and the round ledger")
    return value


def _job_output(value: str) -> str:
    """An earlier job's output folder: where manifest.json is, never the escrow checkpoint."""
    s3_uri.checked_if_s3(value)
    if s3_uri.is_escrow(value):
        raise PydanticCustomError(
            "escrow_bucket",
            "{text}",
            {
                "text": f"{s3_uri.shown(value)} is in the service's escrow bucket; output_uri "
                "names the training job's output folder, whose manifest.json says where the "
                "checkpoint is; fix: use that job's output folder",
                "allowed": "the job's output folder (output_s3_path/<job name>)",
            },
        )
    return value


def _data_uri(value: str) -> str:
    """A dataset location: with an Airflow template it is checked once rendered, per round."""
    if "{{" in value or "{%" in value:
        return value
    return str(s3_uri.checked_if_s3(value))


S3Folder = Annotated[str, AfterValidator(_owned_s3_folder)]
OutputFolder = Annotated[str, AfterValidator(_owned_folder)]
PathOrS3Uri = Annotated[str, AfterValidator(s3_uri.checked_if_s3)]
JobOutput = Annotated[str, AfterValidator(_job_output)]
DataUri = Annotated[str, AfterValidator(_data_uri)]


if TYPE_CHECKING:
    # To a type checker these are strings; pydantic sees the pattern each must match.
    Region: TypeAlias = str
    InstanceType: TypeAlias = str
    Namespace: TypeAlias = str
    ServiceAccountName: TypeAlias = str
    RoleArn: TypeAlias = str
else:
    Region = matching(r"^[a-z]{2}(-gov)?-[a-z]+-\d$", "an AWS region", "us-east-1")
    InstanceType = matching(
        r"^ml\.[a-z0-9]+\.[a-z0-9]+$", "a SageMaker instance type", "ml.p5.48xlarge"
    )
    Namespace = matching(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "a Kubernetes namespace", "kubeflow")
    # A DNS-1123 subdomain of at most 253 characters (or empty), as the API server checks
    # service account names.
    ServiceAccountName = matching(
        r"^(?=.{0,253}$)([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)?$",
        "a Kubernetes service account name",
        "nova-jobs",
    )
    RoleArn = matching(
        r"^arn:aws[a-z-]*:iam::\d{12}:role/.+$",
        "an IAM role ARN",
        "arn:aws:iam::123456789012:role/SageMakerNovaTraining",
    )


# --- backends ----------------------------------------------------------------------------------

CONNECTION_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,250}\Z")


def _connection_id(value: str) -> str:
    if value and not CONNECTION_ID.match(value):
        raise PydanticCustomError(
            "connection_id",
            "{value} is not an Airflow connection id (letters, digits, '_', '-' and '.')",
            {"value": repr(value)},
        )
    return value


ConnectionId = Annotated[str, AfterValidator(_connection_id)]


class LocalBackend(StrictModel):
    """Run every job on this machine with the local training backend."""

    type: Literal["local"] = "local"
    """Backend kind."""
    output_root: OutputFolder = ".tuneloop"
    """Folder for job outputs, checkpoints and the round ledger (a path or file:// URI)."""
    mlflow_uri: TrackingUri = ""
    """MLflow tracking URI; empty uses a SQLite store under output_root. Never with
    credentials (``user:password@``): see mlflow_conn_id."""
    mlflow_conn_id: ConnectionId = ""
    """Airflow connection (type HTTP) whose login and password are the MLflow tracking
    server's user and password, handed to MLflow's client in memory only (and masked in task
    logs); empty: MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD from the environment."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the trainer runs: CUDA when available (auto), or forced."""
    entrypoint: str = ""
    """Run jobs with your own trainer, ``module:function`` called as ``function(spec,
    progress)``; empty: tuneloop's embedded trainer."""
    python_path: list[str] = []
    """Folders put in front of sys.path in job processes, to import ``entrypoint`` from."""
    jobs_root: PathOrS3Uri = ""
    """Folder where job processes keep their status, log and outputs; empty:
    ``<output_root>/<campaign>/jobs``. With several Airflow workers it must be storage every
    worker sees (NFS, EFS): a retry on another worker adopts a running job only if it can see
    it, and fails rather than start a second one."""

    @property
    def platform(self) -> Platform:
        return Platform.LOCAL


class _AwsBackend(StrictModel):
    region: Region
    """AWS region of the cluster or training jobs, e.g. us-east-1."""
    instance_type: InstanceType = "ml.p5.48xlarge"
    """Instance type of the training nodes."""
    output_root: S3Folder
    """S3 folder (customer-owned) for job outputs and the round ledger."""
    mlflow_uri: TrackingUri = ""
    """MLflow tracking server URI or SageMaker managed MLflow app ARN; empty disables MLflow.
    Never with credentials (``user:password@``): see mlflow_conn_id."""
    mlflow_conn_id: ConnectionId = ""
    """Airflow connection (type HTTP) whose login and password are the MLflow tracking
    server's user and password, handed to MLflow's client in memory only (and masked in task
    logs); empty: MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD from the environment."""
    aws_conn_id: str = "aws_default"
    """Airflow connection with the AWS credentials."""
    price_per_hour: dict[InstanceType, Annotated[float, Field(ge=0.0, allow_inf_nan=False)]] = {}
    """US dollars per instance-hour by instance type, replacing tuneloop's on-demand price
    table in cost estimates and the USD budget: a HyperPod cluster's node-hour rate (billed
    whether the nodes are busy or not), a savings plan's rate, or a price the table lacks."""


class HyperPodBackend(_AwsBackend):
    """Run jobs on a SageMaker HyperPod cluster orchestrated by EKS."""

    type: Literal["hyperpod"] = "hyperpod"
    """Backend kind."""
    cluster: str = Field(min_length=1, max_length=63)
    """HyperPod cluster name."""
    namespace: Namespace = "kubeflow"
    """Kubernetes namespace the jobs run in."""
    service_account_name: ServiceAccountName = ""
    """Kubernetes service account the jobs' pods run as (for example one bound to an IAM role);
    empty: the namespace's default service account."""

    @property
    def platform(self) -> Platform:
        return Platform.HYPERPOD


class TrainingJobsBackend(_AwsBackend):
    """Run jobs as SageMaker training jobs."""

    type: Literal["smtj"] = "smtj"
    """Backend kind."""
    role_arn: RoleArn
    """IAM role the training jobs run as."""
    max_runtime_seconds: Annotated[int, Field(ge=60, le=28 * 24 * 3600)] = 86_400
    """Stop a job that runs longer than this."""
    kms_key_id: str = ""
    """KMS key (id, ARN or alias) that encrypts the jobs' output in output_root; empty: S3's
    default encryption."""
    subnets: list[str] = []
    """Subnets the jobs run in (with security_group_ids); empty: the service's network."""
    security_group_ids: Annotated[list[str], Field(validate_default=True)] = []
    """Security groups of the jobs in your VPC (with subnets)."""
    encrypt_inter_container_traffic: bool = False
    """Encrypt the traffic between a job's instances."""
    tags: dict[str, str] = {}
    """Tags added to every job, beside its campaign, round and stage."""

    @field_validator("kms_key_id")
    @classmethod
    def _kms_key_the_service_takes(cls, value: str) -> str:
        if value:
            _refuse_training_job_setting(training_jobs.kms_key_problem(value))
        return value

    @field_validator("security_group_ids")
    @classmethod
    def _a_whole_vpc(cls, value: list[str], info: ValidationInfo) -> list[str]:
        subnets = info.data.get("subnets")
        if subnets is not None:  # None: subnets itself was refused
            _refuse_training_job_setting(training_jobs.vpc_problem(subnets, value))
        return value

    @field_validator("tags")
    @classmethod
    def _tags_the_service_takes(cls, value: dict[str, str]) -> dict[str, str]:
        _refuse_training_job_setting(training_jobs.tags_problem(value))
        return value

    @property
    def platform(self) -> Platform:
        return Platform.SMTJ


def _refuse_training_job_setting(problem_and_fix: tuple[str, str]) -> None:
    problem, fix = problem_and_fix
    if problem:
        raise PydanticCustomError("training_job_setting", f"{problem}; {fix}")


Backend = Annotated[
    LocalBackend | HyperPodBackend | TrainingJobsBackend, Field(discriminator="type")
]


# --- stages, evaluation ------------------------------------------------------------------------


def _relaxable(rules: list[str]) -> list[str]:
    from tuneloop.data.rules import RELAXABLE

    unknown = [rule for rule in rules if rule not in RELAXABLE]
    if unknown:
        raise ValueError(
            f"cannot relax {', '.join(map(repr, unknown))} (relaxable: {', '.join(RELAXABLE)})"
        )
    return rules


RelaxedRules = Annotated[list[str], AfterValidator(_relaxable)]


class Datasets(StrictModel):
    train: DataUri = Field(min_length=1)
    """Training data (JSONL). May use Airflow templates such as {{ ds }}."""
    validation: DataUri = ""
    """Optional validation data (JSONL)."""
    allow: RelaxedRules = []
    """Dataset rules relaxed to warnings for these files (see `tuneloop data rules`)."""


def flatten_overrides(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c.d": 2}`` -> ``{"a.b": 1, "c.d": 2}``."""
    flat: dict[str, Any] = {}
    for key, item in value.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(item, dict) and item:
            flat.update(flatten_overrides(item, path))
        else:
            flat[path] = item
    return flat


class Stage(StrictModel):
    """One training job of a round, started from the previous stage's checkpoint."""

    method: Method
    """cpt, sft or rft."""
    name: str = ""
    """Stage name used in task ids and job names; defaults to the method."""
    recipe: str = Field(min_length=1)
    """Recipe template: a path relative to this file, to its folder's parent, or to recipes/."""
    datasets: Datasets
    """Where this stage's data lives."""
    reward_function: str = ""
    """RFT only: reward Lambda ARN (module:function on the local backend)."""
    overrides: dict[str, Any] = {}
    """Recipe fields to change, as dotted paths or nested mappings."""

    @model_validator(mode="after")
    def _defaults(self) -> Stage:
        if not self.name:
            self.name = self.method.value
        return self

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if value and not STAGE_NAME.match(value):
            raise ValueError(
                f"{value!r} is not a valid stage name (lowercase letters, digits "
                "and '-', starting with a letter, at most 16 characters)"
            )
        return value

    @property
    def flat_overrides(self) -> dict[str, Any]:
        return flatten_overrides(self.overrides)


class Evaluation(StrictModel):
    """How every round's candidate (and the base model, once) is evaluated."""

    recipe: str = Field(min_length=1)
    """Evaluation recipe template."""
    dataset: DataUri = ""
    """Evaluation data (gen_qa, judge and rft_eval tasks); empty for built-in benchmarks."""
    reward_function: str = ""
    """rft_eval only: reward Lambda ARN (module:function on the local backend)."""
    metrics: list[str] = Field(default_factory=list)
    """Metrics to record each round; the gate's metrics must be among them."""
    output_format: OutputFormat | None = None
    """The shape every answer must have (json, or a regex): evaluation then reports
    ``format_compliance``, the share of answers that have it, which the gate may target."""
    perplexity_dataset: DataUri = ""
    """Local backend: text of the domain (JSONL, CPT format) on which evaluation reports
    ``perplexity``."""
    allow: RelaxedRules = []
    """Dataset rules relaxed to warnings for the evaluation data."""
    overrides: dict[str, Any] = {}
    """Recipe fields to change."""

    @property
    def flat_overrides(self) -> dict[str, Any]:
        return flatten_overrides(self.overrides)


# --- gate, retention, schedule -----------------------------------------------------------------


class Target(StrictModel):
    at_least: float | None = None
    """The metric must reach this value."""
    at_most: float | None = None
    """The metric must not exceed this value (for losses and error rates)."""

    @model_validator(mode="after")
    def _one_bound(self) -> Target:
        if (self.at_least is None) == (self.at_most is None):
            raise ValueError("set exactly one of at_least and at_most")
        return self


class Rollback(StrictModel):
    """How the round after a rollback differs from the one that regressed."""

    lr_scale: Annotated[float, Field(gt=0.0, le=1.0)] = 0.5
    """Multiply every stage's learning rate by this (half by default)."""
    overrides: dict[str, dict[str, Any]] = {}
    """Extra recipe overrides per stage name for the retried round."""


class Budget(StrictModel):
    """What the campaign may spend, in US dollars, GPU-hours or both: the gate stops before a
    round would pass either, and a round is refused before its first job when the spend
    already passes it (or would with the next round's projected cost)."""

    usd: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] | None = None
    """US dollars, estimated from the price table (or backend.price_per_hour); local jobs
    cost nothing."""
    gpu_hours: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] | None = None
    """GPU-hours (instance-hours times the instance type's GPUs)."""

    @model_validator(mode="after")
    def _one_limit_at_least(self) -> Budget:
        if self.usd is None and self.gpu_hours is None:
            raise PydanticCustomError(
                "budget_empty",
                "names no limit: set usd, gpu_hours or both (e.g. {usd: 500}), or remove budget",
            )
        return self


class Gate(StrictModel):
    """When a round is good enough, when to roll back, and when to stop."""

    primary_metric: str = Field(min_length=1)
    """The metric that ranks rounds and picks the champion."""
    higher_is_better: bool = True
    """Whether a larger primary metric is better."""
    targets: dict[str, float | Target] = {}
    """Metric -> threshold (a number means at least). Every target met: promote and finish."""
    regression_tolerance: Annotated[float, Field(ge=0.0)] = 0.01
    """Roll back when the primary metric falls below the champion by more than this."""
    min_improvement: Annotated[float, Field(ge=0.0)] = 0.005
    """Smaller gains than this count as a plateau."""
    plateau_rounds: Annotated[int, Field(ge=1, le=20)] = 2
    """Consecutive plateau rounds before switching technique or stopping."""
    max_rounds: Annotated[int, Field(ge=1, le=100)] = 5
    """Stop after this many rounds (3-5 is typical; more suggests diminishing returns)."""
    budget: Budget | None = None
    """What the campaign may spend in all: ``{usd: 500}``, ``{gpu_hours: 100}`` or both. The
    base model's evaluation counts, once."""
    budget_gpu_hours: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] | None = None
    """Deprecated: the same as ``budget: {gpu_hours: ...}``."""
    rollback: Rollback = Rollback()
    """Adjustments for the round after a rollback."""
    on_plateau: Literal["switch", "stop"] = "switch"
    """After plateau_rounds: switch which stages the next rounds run (another method, as the
    compatibility matrix allows), or stop."""

    @field_validator("budget", mode="before")
    @classmethod
    def _budget_has_units(cls, value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            raise PydanticCustomError(
                "budget_units",
                f"{value} names no unit: write budget: {{usd: {value}}} for US dollars or "
                f"budget: {{gpu_hours: {value}}} for GPU-hours",
            )
        return value

    @model_validator(mode="after")
    def _one_gpu_hour_budget(self) -> Gate:
        both = self.budget is not None and self.budget.gpu_hours is not None
        if both and self.budget_gpu_hours is not None:
            raise PydanticCustomError(
                "budget_twice",
                "budget_gpu_hours and budget.gpu_hours are both set: keep budget.gpu_hours "
                "and remove budget_gpu_hours (its older spelling)",
            )
        return self

    def gpu_hour_budget(self) -> float | None:
        """The GPU-hour limit, from ``budget.gpu_hours`` or the older ``budget_gpu_hours``."""
        if self.budget is not None and self.budget.gpu_hours is not None:
            return self.budget.gpu_hours
        return self.budget_gpu_hours

    def usd_budget(self) -> float | None:
        return self.budget.usd if self.budget is not None else None

    def target_bounds(self) -> dict[str, Target]:
        return {
            name: t if isinstance(t, Target) else Target(at_least=t)
            for name, t in self.targets.items()
        }


class Retention(StrictModel):
    """What the lifecycle keeps, archives and deletes of the rounds' checkpoints and outputs.

    The retention set comes from the ledger alone: the champion, the last ``keep_last``
    rounds, the base of a claimed or running round and of the next round, and pinned rounds
    are kept; evaluation results and the baseline always stay. Every other round's outputs
    are archived (or deleted, with ``delete_intermediates``)."""

    keep_last: Annotated[int, Field(ge=1)] = 3
    """How many of the latest recorded rounds are kept as they are (neither archived nor
    deleted); the champion, pinned rounds and the base of a running or next round are kept
    besides. With delete_intermediates, a kept round's intermediate stages may still go once a
    newer round is recorded; its last stage stays."""
    archive_storage_class: Literal["GLACIER", "DEEP_ARCHIVE", "GLACIER_IR"] = "GLACIER"
    """The S3 storage class a round's outputs move to once no rule keeps them: GLACIER
    (Flexible Retrieval: restores take minutes to hours), DEEP_ARCHIVE (cheapest, restores
    take about 12 hours) or GLACIER_IR (read at once, no restore). On the local backend a
    round's folder becomes a tarball under the campaign's archive/ instead."""
    delete_intermediates: bool = False
    """Delete, rather than archive, what no rule keeps: a round's intermediate stages (all
    but its last) once a newer round's record exists, and whole superseded rounds. Pinned
    rounds and the base of a running or next round are never deleted."""
    archive_mode: Literal["copy", "tags"] = "copy"
    """How S3 objects are archived: copy (each object is copied onto itself in the archive
    class, multipart above 5 GB, checksums compared) or tags (each object is tagged and a
    bucket lifecycle rule, written by ``tuneloop lifecycle apply-policy``, moves it)."""
    restore_tier: Literal["Standard", "Bulk", "Expedited"] = "Standard"
    """The retrieval tier asked for when a round's base is archived: Standard (3-5 hours,
    about 12 from DEEP_ARCHIVE), Bulk (slower, cheaper) or Expedited (1-5 minutes; not
    available for DEEP_ARCHIVE). GLACIER_IR objects need no restore."""
    restore_days: Annotated[int, Field(ge=1, le=365)] = 7
    """How many days a restored copy stays readable before S3 removes it again."""
    min_archive_bytes: Annotated[int, Field(ge=0)] = 131072
    """S3 objects smaller than this stay where they are: each archived object is billed
    40 KB of overhead (GLACIER, DEEP_ARCHIVE) or at least 128 KB (GLACIER_IR), and lifecycle
    rules skip objects under 128 KB by default."""
    region: Region | None = None
    """The AWS region whose storage prices the plan's cost estimates use; null: the
    backend's region, or us-east-1 on the local backend."""

    @field_validator("restore_tier")
    @classmethod
    def _tier_for_class(cls, value: str, info: ValidationInfo) -> str:
        # S3 refuses an Expedited restore from DEEP_ARCHIVE: say so when the file is read,
        # not when a rollback is waiting on its base.
        if value == "Expedited" and info.data.get("archive_storage_class") == "DEEP_ARCHIVE":
            raise PydanticCustomError(
                "restore_tier",
                "{text}",
                {
                    "text": "Expedited restores are not offered for DEEP_ARCHIVE; fix: use "
                    "Standard or Bulk, or archive to GLACIER",
                    "allowed": "Standard or Bulk with DEEP_ARCHIVE",
                },
            )
        return value


class BaseCheckpoint(StrictModel):
    """A checkpoint trained outside this campaign, to start round 1 from."""

    output_uri: JobOutput = Field(min_length=1)
    """The training job's output folder (the one holding manifest.json)."""
    technique: Technique
    """How it was trained: lora or full."""
    trained_with: list[Method] = Field(min_length=1)
    """Methods applied since the base model, oldest first (e.g. [sft])."""


def _base_model_form(value: Any) -> str:
    # A mapping is a declared checkpoint, anything else a name or URI: only that form's errors
    # are told (an untagged union would add "Input should be a valid string" to every mistake
    # in the mapping). The tags are ones the error formatter leaves out of a field's path.
    return "dict" if isinstance(value, dict | BaseCheckpoint) else "str"


BaseModelReference = Annotated[
    Annotated[str, Tag("str")] | Annotated[BaseCheckpoint, Tag("dict")],
    Discriminator(_base_model_form),
]


class Campaign(StrictModel):
    """A series of rounds toward one goal."""

    name: str
    """Campaign name: lowercase letters, digits and '-', at most 32 characters. The DAG is
    tuneloop_<name>."""
    description: str = ""
    """Shown in the Airflow UI."""
    backend: Backend
    """Where jobs run: local, hyperpod or smtj."""
    model_type: str
    """The model variant; it stays the same in every round."""
    technique: Technique
    """lora or full; it stays the same in every round (CPT stages are always full)."""
    base_model: BaseModelReference = ""
    """Round 1 starts here: empty for the model's base weights, or an earlier checkpoint."""
    stages: list[Stage] = Field(min_length=1)
    """Training stages of each round, in order."""
    evaluation: Evaluation
    """How candidates are scored."""
    gate: Gate
    """Stop, continue and rollback rules."""
    retention: Retention = Retention()
    """Checkpoint lifecycle."""
    monitoring: Monitoring = Monitoring()
    """Detectors over the training curves and what each does when it fires."""
    reward_probe: RewardProbe = RewardProbe()
    """How an RFT stage's reward function is tried before its job."""
    schedule: str | None = None
    """Cron expression or preset (@daily, @weekly, ...) that starts rounds; null: manual only."""
    trigger_on_data: list[str] = []
    """URIs whose update starts a round (Airflow Assets)."""
    start_date: date | None = None
    """First date a schedule or backfill covers."""
    tags: list[str] = []
    """Extra Airflow DAG tags."""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME.match(value):
            raise ValueError(
                f"{value!r} is not a valid campaign name (lowercase letters, digits "
                "and '-', starting with a letter, at most 32 characters)"
            )
        return value

    @field_validator("model_type")
    @classmethod
    def _model(cls, value: str) -> str:
        if value not in MODELS:
            raise ValueError(f"unknown model_type {value!r} (allowed: {', '.join(MODELS)})")
        return value

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str | None) -> str | None:
        # Checked here, field by field: Airflow would otherwise refuse the DAG when it parses
        # the file ("61 99 * * 9"), or schedule a run that never comes ("0 0 30 2 *").
        problems = cron.schedule_problems(value) if value is not None else []
        if problems:
            raise PydanticCustomError(
                "cron",
                "{text}",
                {
                    "text": f"not a schedule: {'; '.join(problems)}; fix: {cron.FIX}",
                    "allowed": cron.ALLOWED,
                },
            )
        return value

    @field_validator("trigger_on_data")
    @classmethod
    def _asset_uris(cls, value: list[str]) -> list[str]:
        for uri in value:
            if not re.match(r"^[a-z][a-z0-9+.-]*://\S+\Z", uri):
                raise ValueError(f"{uri!r} is not a URI (e.g. s3://bucket/prefix/)")
            s3_uri.checked_if_s3(uri)
        return value

    @field_validator("base_model")
    @classmethod
    def _base_model_uri(cls, value: str | BaseCheckpoint) -> str | BaseCheckpoint:
        # An escrow URI here gets its own explanation when the plan resolves it.
        return s3_uri.checked_if_s3(value) if isinstance(value, str) else value

    @field_validator("trigger_on_data")
    @classmethod
    def _not_with_once(cls, value: list[str], info: ValidationInfo) -> list[str]:
        # Beside data triggers a schedule becomes a cron timetable, and @once is no cron: Airflow
        # would refuse the DAG when it parses the file.
        if value and info.data.get("schedule") == "@once":
            raise PydanticCustomError(
                "schedule_with_data",
                "{text}",
                {
                    "text": "data triggers cannot be combined with schedule: @once; fix: drop "
                    "the schedule, or use a preset such as @daily or a cron expression",
                    "allowed": "a schedule that is a cron expression or a preset other than "
                    "@once, or no schedule",
                },
            )
        return value

    @property
    def platform(self) -> Platform:
        return self.backend.platform

    @property
    def dag_id(self) -> str:
        return f"tuneloop_{self.name.replace('-', '_')}"
