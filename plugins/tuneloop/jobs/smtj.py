"""SageMaker training jobs: Nova fine-tuning and evaluation as ``CreateTrainingJob`` calls.

There is no training script. A Nova job is the Nova container for the method and region, the
rendered recipe shipped as the input channel ``recipe`` (the container reads it from the
hyperparameter ``sagemaker_recipe_local_path``), the base model as a hyperparameter
(``base_model`` for a model id, ``base_model_location`` for an s3:// checkpoint), the reward
Lambda of RFT as ``reward_lambda_arn`` and the data as the ``train`` and ``validation``
channels. This is the request AWS's own Nova tooling sends (``training_job_request`` names the
sources); building it here keeps the SageMaker SDK off Airflow workers and lets submission be
idempotent.

Submission is describe-before-create on a deterministic name: a job that exists is adopted
(running or finished), never started twice. SageMaker rejects a second job of the same name, so
two workers that race both end up holding the one job.

Outputs land in ``<output_uri>/<job>/output/output.tar.gz``; ``tuneloop.artifacts.manifest``
and ``tuneloop.artifacts.evaluation`` read the manifest and results from it. Logs are the job's
CloudWatch streams, ``/aws/sagemaker/TrainingJobs`` ``<job>/algo-<n>-<epoch>``.

boto3 is imported inside functions (DAG parse-time hygiene); clients come from ``tuneloop.aws``.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, ClassVar

import yaml

from tuneloop import aws, storage
from tuneloop.config import training_jobs
from tuneloop.jobs.base import (
    JobError,
    JobKind,
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
from tuneloop.recipes import s3_uri
from tuneloop.recipes.catalog import (
    CatalogError,
    Method,
    ModelSpec,
    Platform,
    allowed_instance_types,
    container_image,
    model_spec,
)
from tuneloop.recipes.tracking_uri import redacted_uri

LOG_GROUP = "/aws/sagemaker/TrainingJobs"
RECIPE_CHANNEL = "recipe"
RECIPE_FILE = "recipe.yaml"
RECIPE_LOCAL_PATH = f"/opt/ml/input/data/{RECIPE_CHANNEL}/{RECIPE_FILE}"
# The data channels the Nova containers read: aws/nova-forge-sdk
# src/amzn_nova_forge/manager/runtime_manager.py (SMTJRuntimeManager.execute) sends these two,
# as does the notebook of AWS's guide to Nova on SageMaker training jobs. An evaluation job's
# one dataset is "train" too, whatever the job spec calls its input (the Forge SDK's
# evaluator/forge_evaluator.py passes it as the data path that becomes "train").
DATA_CHANNELS = ("train", "validation")
EVAL_DATA_CHANNEL = "train"
MANAGED_BY_TAG = training_jobs.MANAGED_BY_TAG
MANAGED_BY = "tuneloop"
# The SageMaker SDK's default volume. Nova checkpoints go to the service's escrow bucket, not
# the instance volume; the volume only holds the downloaded data (and instances with NVMe
# storage, such as p5, use that instead).
VOLUME_SIZE_GB = 30
# CloudWatch Logs pages per stream and call: bounds one call's work; the cursor keeps the rest.
MAX_LOG_PAGES = 20

# Secondary statuses of an InProgress job that has not started training yet.
_NOT_STARTED = frozenset(
    {
        "Starting",
        "Pending",
        "LaunchingMLInstances",
        "PreparingTrainingStack",
        "Downloading",
        "DownloadingTrainingImage",
        "Interrupted",
        "Restarting",
    }
)
_RAN_OUT_OF_TIME = frozenset({"MaxRuntimeExceeded", "MaxWaitTimeExceeded"})
# FailureReason texts that a new attempt may not hit again.
_RETRYABLE_FAILURE = re.compile(
    r"capacity|insufficient|internal ?(server )?error|internalfailure|spot|interrupt|"
    r"throttl|temporar|service ?unavailable",
    re.IGNORECASE,
)
_TRANSIENT_CODES = frozenset(
    {
        "ResourceLimitExceeded",
        "ThrottlingException",
        "Throttling",
        "ThrottledException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "InternalFailure",
        "InternalServerError",
        "InternalServerException",
        "InternalError",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)
_CREDENTIAL_CODES = frozenset(
    {
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "ExpiredToken",
        "ExpiredTokenException",
        "IncompleteSignature",
        "InvalidSignatureException",
        "MissingAuthenticationToken",
        "SignatureDoesNotMatch",
    }
)
_ACCESS_CODES = frozenset({"AccessDeniedException", "AccessDenied", "NotAuthorized"})
_NOT_FOUND = re.compile(r"not found|could not find|does not exist", re.IGNORECASE)


def console_url(region: str, name: str) -> str:
    """The SageMaker console page of a training job."""
    return f"https://{region}.console.aws.amazon.com/sagemaker/home?region={region}#/jobs/{name}"


def result_uri(output_path: str, name: str) -> str:
    """``<S3OutputPath>/<job>/output/output.tar.gz``: where the job's manifest or results are."""
    return storage.join(output_path, name, "output", "output.tar.gz")


def recipe_prefix(output_uri: str, name: str) -> str:
    """The S3 folder the recipe channel reads: ``<output_uri>/<job>/recipe/``."""
    return storage.join(output_uri, name, RECIPE_CHANNEL) + "/"


def recipe_yaml(recipe: Mapping[str, Any]) -> str:
    """The rendered recipe as the YAML file the container reads (stable: same recipe, same
    bytes, so a re-upload by a retry or a racing worker changes nothing)."""
    return yaml.safe_dump(dict(recipe), sort_keys=False, default_flow_style=False)


# --- the request --------------------------------------------------------------------------


def _user_error(name: str, message: str, fix: str) -> JobError:
    return job_error(UserJobError, name, message, fix)


def _method(spec: JobSpec) -> Method | None:
    """The training method, or None for evaluation."""
    if spec.method == "eval" or spec.kind is JobKind.EVAL:
        return None
    try:
        return Method(spec.method)
    except ValueError:
        raise _user_error(
            spec.name,
            f"method {spec.method!r} is not a training method",
            f"use one of {', '.join(m.value for m in Method)} or eval",
        ) from None


def _data_type(method: Method | None) -> str:
    """S3DataType of the data channels: Nova SFT (and CPT) read Converse JSONL; RFT and
    evaluation read their files as plain S3 objects."""
    return "Converse" if method in (Method.SFT, Method.CPT) else "S3Prefix"


def _is_lambda(value: str) -> bool:
    return value.startswith("arn:aws") and ":lambda:" in value


def _channel(name: str, uri: str, data_type: str) -> dict[str, Any]:
    return {
        "ChannelName": name,
        "DataSource": {
            "S3DataSource": {
                "S3DataType": data_type,
                "S3Uri": uri,
                "S3DataDistributionType": "FullyReplicated",
            }
        },
        "InputMode": "File",
    }


def training_job_request(
    spec: JobSpec,
    *,
    region: str,
    role_arn: str,
    instance_type: str,
    max_runtime_seconds: int,
    kms_key_id: str = "",
    subnets: Sequence[str] = (),
    security_group_ids: Sequence[str] = (),
    encrypt_inter_container_traffic: bool = False,
    tags: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The ``CreateTrainingJob`` request for a job spec (pure: no AWS call).

    Each input becomes a channel of that name (``train``, ``validation``; an evaluation's one
    dataset is ``train``), except a Lambda ARN, which is the RFT reward function (it wins over
    ``run.reward_lambda_arn``; evaluation recipes carry theirs in the recipe). Raises
    UserJobError for anything the service would refuse after the request was sent, or accept
    and then fail on: not a Nova model, no image for the method in the region, an instance type
    the model cannot use, data outside S3, RFT without a reward function, a KMS key, subnet,
    security group or tag the service's model does not allow.

    What AWS's Nova tooling sends, and so what this sends (aws/nova-forge-sdk
    ``src/amzn_nova_forge/manager/runtime_manager.py`` ``SMTJRuntimeManager.execute``, which
    calls aws/sagemaker-python-sdk ``ModelTrainer.from_recipe``:
    ``sagemaker-train/src/sagemaker/train/sm_recipes/utils.py`` ``_get_args_from_nova_recipe``
    and ``model_trainer.py`` ``_create_training_job_args``):

    - the recipe as channel ``recipe`` and ``sagemaker_recipe_local_path`` pointing at it;
      hyperparameter values are strings;
    - ``OutputDataConfig`` with the optional ``KmsKeyId``; ``VpcConfig`` from subnets and
      security groups; ``StoppingCondition.MaxRuntimeInSeconds``; ``TensorBoardOutputConfig``;
    - no ``CheckpointConfig``: Nova jobs write checkpoints to the service's escrow bucket and
      name it in manifest.json; no ``Environment``; no ``EnableNetworkIsolation``: RFT calls
      the reward Lambda and judge evaluations call Bedrock from the job;
    - no ``ResourceConfig.VolumeKmsKeyId``: the service refuses one on instance types with
      local NVMe storage (p4d, p5, p5en, g5, g6: every type Nova jobs run on), whose volumes
      the instance's hardware encrypts.
    """
    name = spec.name
    run = _run_section(spec)
    model = _nova_model(name, run)
    method = _method(spec)
    image = _image(name, model, method, region, instance_type)
    replicas = _replicas(name, run)
    base = _base_model(name, run, model)
    _require_s3(
        name,
        "output_uri",
        spec.output_uri,
        "training jobs write to S3; set the campaign's output root to s3://bucket/prefix",
    )
    hyperparameters = {"sagemaker_recipe_local_path": RECIPE_LOCAL_PATH}
    hyperparameters["base_model_location" if storage.is_s3(base) else "base_model"] = base
    channels, reward = _data_channels(spec, method, str(run.get("reward_lambda_arn") or ""))
    hyperparameters.update(_lambda_hyperparameters(spec, method, reward))
    channels.append(_channel(RECIPE_CHANNEL, recipe_prefix(spec.output_uri, name), "S3Prefix"))
    output: dict[str, str] = {"S3OutputPath": spec.output_uri}
    if kms_key_id:
        output["KmsKeyId"] = _kms_key(name, kms_key_id)
    request: dict[str, Any] = {
        "TrainingJobName": name,
        "AlgorithmSpecification": {"TrainingImage": image, "TrainingInputMode": "File"},
        "RoleArn": role_arn,
        "HyperParameters": hyperparameters,
        "InputDataConfig": channels,
        "OutputDataConfig": output,
        "ResourceConfig": {
            "InstanceType": instance_type,
            "InstanceCount": replicas,
            "VolumeSizeInGB": VOLUME_SIZE_GB,
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": max_runtime_seconds},
        # Beside the job's output folder, where tuneloop reads the curves back
        # (``pipeline.round_artifacts.job_folder``).
        "TensorBoardOutputConfig": {
            "S3OutputPath": storage.join(spec.output_uri, name, "tensorboard")
        },
        "Tags": _tags(name, spec.labels, tags or {}),
    }
    vpc = _vpc_config(name, subnets, security_group_ids)
    if vpc:
        request["VpcConfig"] = vpc
    if encrypt_inter_container_traffic:
        request["EnableInterContainerTrafficEncryption"] = True
    return request


def _kms_key(name: str, key: str) -> str:
    problem, fix = training_jobs.kms_key_problem(key)
    if problem:
        raise _user_error(name, problem, fix)
    return key


def _vpc_config(
    name: str, subnets: Sequence[str], security_group_ids: Sequence[str]
) -> dict[str, list[str]] | None:
    """``VpcConfig``, or None without subnets and security groups (the job runs in the
    service's network)."""
    subnets, groups = list(subnets), list(security_group_ids)
    problem, fix = training_jobs.vpc_problem(subnets, groups)
    if problem:
        raise _user_error(name, problem, fix)
    if not subnets:
        return None
    return {"SecurityGroupIds": groups, "Subnets": subnets}


def _tags(name: str, labels: Mapping[str, str], extra: Mapping[str, str]) -> list[dict[str, str]]:
    """The job's labels, the backend's own tags and the managed-by tag, as ``Tags``."""
    problem, fix = training_jobs.tags_problem(extra, reserved=(*labels, MANAGED_BY_TAG))
    if problem:
        raise _user_error(name, problem, fix)
    merged = {**extra, **labels, MANAGED_BY_TAG: MANAGED_BY}
    return [{"Key": key, "Value": value} for key, value in sorted(merged.items())]


def _run_section(spec: JobSpec) -> dict[str, Any]:
    run = spec.recipe.get("run")
    return run if isinstance(run, dict) else {}


def _nova_model(name: str, run: Mapping[str, Any]) -> ModelSpec:
    model_type = str(run.get("model_type") or "")
    model = model_spec(model_type)
    if model is None or not model.is_nova:
        raise _user_error(
            name,
            f"run.model_type {model_type!r} is not a Nova model",
            "SageMaker training jobs run Nova models; use the local backend for other models",
        )
    return model


def _image(
    name: str, model: ModelSpec, method: Method | None, region: str, instance_type: str
) -> str:
    """The job's container image, once the model may run ``method`` on ``instance_type``."""
    try:
        image = container_image(model.model_type, method, Platform.SMTJ, region)
    except CatalogError as exc:
        raise _user_error(name, str(exc), "pick a region and method the catalog lists") from None
    allowed = allowed_instance_types(model.model_type, method)
    if instance_type not in allowed:
        raise _user_error(
            name,
            f"{model.display_name} {method.value.upper() if method else 'evaluation'} jobs do "
            f"not run on {instance_type}",
            f"set the backend's instance_type to one of {', '.join(allowed)}",
        )
    return image


def _replicas(name: str, run: Mapping[str, Any]) -> int:
    replicas = run.get("replicas", 1)
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 1:
        raise _user_error(
            name, f"run.replicas {replicas!r} is not a positive instance count", "set 1 or more"
        )
    return replicas


def _base_model(name: str, run: Mapping[str, Any], model: ModelSpec) -> str:
    base = str(run.get("model_name_or_path") or "")
    if not base:
        raise _user_error(
            name,
            "run.model_name_or_path is empty",
            f"use the base model ({model.base_model}) or an earlier job's checkpoint_s3_bucket",
        )
    if s3_uri.looks_like_s3(base):
        _require_s3(name, "run.model_name_or_path", base, "")
    return base


def _require_s3(name: str, what: str, uri: str, not_s3_fix: str) -> None:
    """Refuse ``uri`` unless it is a whole, valid S3 URI: the service reads a URI with user
    info, a port or a malformed bucket otherwise than the user meant, or fails on it after the
    job was created. ``not_s3_fix`` is the fix for a value that is no S3 URI at all."""
    if not s3_uri.looks_like_s3(uri):
        # Whatever URI it is, its user info (which may be a secret) is not printed.
        text = s3_uri.shown(redacted_uri(uri))
        raise _user_error(name, f"{what} {text} is not an s3:// URI", not_s3_fix)
    defect = s3_uri.s3_uri_defect(uri)
    if defect is not None:
        raise _user_error(
            name, f"{what} {s3_uri.shown(uri)} is not a valid S3 URI: {defect.reason}", defect.fix
        )


def _data_channels(
    spec: JobSpec, method: Method | None, reward: str
) -> tuple[list[dict[str, Any]], str]:
    """The data channels of the inputs, and the reward function (a Lambda ARN input wins over
    ``reward``, the recipe's)."""
    data_type = _data_type(method)
    channels = []
    inputs = sorted(spec.inputs.items())
    data = [(name, uri) for name, uri in inputs if not _is_lambda(uri)]
    lambdas = [uri for _, uri in inputs if _is_lambda(uri)]
    if lambdas:
        reward = lambdas[-1]
    if method is None and len(data) > 1:
        raise _user_error(
            spec.name,
            f"an evaluation reads one dataset; it was given {len(data)} "
            f"({', '.join(name for name, _ in data)})",
            "give the evaluation job one dataset",
        )
    for input_name, uri in data:
        channel = EVAL_DATA_CHANNEL if method is None else input_name
        if channel not in DATA_CHANNELS:
            raise _user_error(
                spec.name,
                f"input {input_name!r} is not a channel Nova training jobs read",
                f"name the inputs {' and '.join(DATA_CHANNELS)}",
            )
        _require_s3(
            spec.name,
            f"input {input_name} =",
            uri,
            "training jobs read their data from S3; upload it to your own bucket",
        )
        channels.append(_channel(channel, uri, data_type))
    return channels, reward


def _lambda_hyperparameters(spec: JobSpec, method: Method | None, reward: str) -> dict[str, str]:
    """RFT's reward function (required), an evaluation's processor Lambda (when it has one)."""
    if method is Method.RFT:
        if not reward:
            raise _user_error(
                spec.name,
                "RFT needs a reward function and none was given",
                "set run.reward_lambda_arn to the ARN of your reward Lambda",
            )
        return {"reward_lambda_arn": reward}
    processor = spec.recipe.get("processor")
    eval_lambda = processor.get("lambda_arn") if isinstance(processor, dict) else None
    if method is None and eval_lambda:
        return {"eval_lambda_arn": str(eval_lambda)}
    return {}


# --- the status ---------------------------------------------------------------------------


def _instance_count(description: Mapping[str, Any]) -> int:
    resources = description.get("ResourceConfig") or {}
    groups = resources.get("InstanceGroups") or []
    if groups:
        return sum(int(group.get("InstanceCount", 0)) for group in groups) or 1
    return int(resources.get("InstanceCount") or 1)


def _state(description: Mapping[str, Any]) -> tuple[JobState, str, bool]:
    """(state, message, retryable) of a DescribeTrainingJob answer."""
    status = description.get("TrainingJobStatus", "")
    secondary = description.get("SecondaryStatus", "")
    reason = description.get("FailureReason", "")
    if status == "InProgress":
        if secondary in _NOT_STARTED:
            return JobState.PENDING, f"waiting to train ({secondary})", False
        return JobState.RUNNING, f"in progress ({secondary or 'Training'})", False
    if status == "Completed":
        return JobState.SUCCEEDED, "completed", False
    if status == "Failed":
        retryable = bool(_RETRYABLE_FAILURE.search(reason))
        return JobState.FAILED, f"failed: {reason or 'no reason given'}", retryable
    if status in ("Stopping", "Stopped") and secondary in _RAN_OUT_OF_TIME:
        return JobState.FAILED, f"stopped by the service ({secondary})", False
    if status in ("Stopping", "Stopped", "Deleting"):
        return JobState.STOPPED, status.lower(), False
    return JobState.PENDING, f"status {status or 'unknown'}", False


def status_from_description(
    description: Mapping[str, Any], region: str, labels: Mapping[str, str] | None = None
) -> JobStatus:
    """A JobStatus from a DescribeTrainingJob answer (or a Search result's TrainingJob)."""
    name = description["TrainingJobName"]
    state, message, retryable = _state(description)
    reason = description.get("FailureReason", "") if state is JobState.FAILED else ""
    if description.get("SecondaryStatus") in _RAN_OUT_OF_TIME:
        reason = reason or f"{description['SecondaryStatus']}: the job ran past its time limit"
    billable = description.get("BillableTimeInSeconds")
    output_path = (description.get("OutputDataConfig") or {}).get("S3OutputPath", "")
    started: datetime | None = description.get("TrainingStartTime")
    ended: datetime | None = description.get("TrainingEndTime")
    return JobStatus(
        name=name,
        state=state,
        message=message,
        failure_reason=reason,
        retryable=retryable,
        started_at=started,
        ended_at=ended if state.final else None,
        # BillableTimeInSeconds is wall-clock time per instance; SageMaker bills it once per
        # instance, so instance-seconds are BillableTimeInSeconds x InstanceCount.
        billable_seconds=(
            float(billable) * _instance_count(description) if billable is not None else None
        ),
        result_uri=result_uri(output_path, name) if output_path else "",
        console_url=console_url(region, name),
        labels=dict(labels or {}),
    )


# --- errors -------------------------------------------------------------------------------


def _client_error(
    exc: Exception,
    name: str,
    action: str,
    backend: TrainingJobsBackend,
    service: str = "sagemaker",
) -> JobError:
    """A typed JobError for what boto3 raised during ``service``'s ``action``."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        NoCredentialsError,
        NoRegionError,
        PartialCredentialsError,
    )

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        text = str(error.get("Message", "")) or str(exc)
        http = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        message = f"{action} failed: {code}: {text}"
        if code in ("ResourceNotFound", "ResourceNotFoundException"):
            return job_error(JobNotFoundError, name, message)
        if code == "ResourceLimitExceeded":
            fix = (
                f"wait for other {backend.instance_type} jobs to finish, or ask for a higher "
                "'training job usage' quota in Service Quotas"
            )
            return job_error(TransientJobError, name, message, fix)
        if code in _TRANSIENT_CODES or http >= 500:
            return job_error(TransientJobError, name, message, "retry later")
        if code in _ACCESS_CODES:
            fix = f"allow the caller of connection {backend.aws_conn_id!r} {service}:{action}"
            if action == "CreateTrainingJob":
                fix += (
                    f" and iam:PassRole on {backend.role_arn}; the role itself needs S3 read on "
                    "the data and write on the output path"
                )
            return job_error(UserJobError, name, message, fix)
        if code in _CREDENTIAL_CODES:
            fix = f"refresh the AWS credentials of connection {backend.aws_conn_id!r}"
            return job_error(UserJobError, name, message, fix)
        fix = (
            "the service's message names the field; check the recipe, the role ARN, the "
            "instance type and the S3 URIs"
        )
        return job_error(UserJobError, name, message, fix)
    if isinstance(exc, NoCredentialsError | PartialCredentialsError | NoRegionError):
        fix = f"configure AWS credentials and region for connection {backend.aws_conn_id!r}"
        return job_error(UserJobError, name, f"{action} failed: {exc}", fix)
    if isinstance(exc, BotoCoreError):
        return job_error(TransientJobError, name, f"{action} failed: {exc}", "retry later")
    raise exc


def _error_code(exc: Exception) -> tuple[str, str]:
    response = getattr(exc, "response", None) or {}
    error = response.get("Error", {})
    return str(error.get("Code", "")), str(error.get("Message", ""))


def _is_not_found(exc: Exception) -> bool:
    code, message = _error_code(exc)
    if code in ("ResourceNotFound", "ResourceNotFoundException"):
        return True
    return code == "ValidationException" and bool(_NOT_FOUND.search(message))


def _is_duplicate(exc: Exception) -> bool:
    code, message = _error_code(exc)
    return code == "ResourceInUse" or (
        code == "ValidationException" and "already exists" in message.lower()
    )


# --- logs cursor --------------------------------------------------------------------------


def _decode_cursor(name: str, cursor: str) -> dict[str, str]:
    """``{stream: next forward token}``; empty for the start of the log."""
    if not cursor:
        return {}
    try:
        tokens = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (ValueError, TypeError):
        tokens = None
    if not isinstance(tokens, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in tokens.items()
    ):
        raise _user_error(
            name, f"log cursor {cursor[:40]!r} was not returned by this backend", "start from ''"
        )
    return tokens


def _encode_cursor(tokens: Mapping[str, str]) -> str:
    text = json.dumps(dict(sorted(tokens.items())), separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode()


# --- the backend --------------------------------------------------------------------------


class TrainingJobsBackend:
    """Runs Nova jobs as SageMaker training jobs in one region, under one execution role.

    Clients come from `tuneloop.aws`: inside Airflow from the connection ``aws_conn_id`` (None,
    or a connection that does not exist: boto3's default credential chain), outside Airflow from
    the default chain. ``endpoint_url`` points the SageMaker client elsewhere (a VPC endpoint, a
    test server); CloudWatch Logs uses the connection's or boto3's configured endpoint and S3
    also honours TUNELOOP_S3_ENDPOINT_URL, as ``tuneloop.storage`` does.

    ``kms_key_id`` encrypts the job's output in ``output_uri`` (the checkpoints in the escrow
    bucket always use SageMaker's own keys); ``subnets`` and ``security_group_ids`` run the jobs
    in your VPC (it must reach S3, and for RFT the reward Lambda); ``tags`` are added to every
    job beside its labels.
    """

    type: ClassVar[str] = "smtj"

    def __init__(
        self,
        region: str,
        role_arn: str,
        instance_type: str = "ml.p5.48xlarge",
        aws_conn_id: str | None = "aws_default",
        max_runtime_seconds: int = 86400,
        endpoint_url: str | None = None,
        verify: bool | str | None = None,
        botocore_config: dict[str, Any] | None = None,
        kms_key_id: str = "",
        subnets: list[str] | None = None,
        security_group_ids: list[str] | None = None,
        encrypt_inter_container_traffic: bool = False,
        tags: dict[str, str] | None = None,
    ) -> None:
        self.region = region
        self.role_arn = role_arn
        self.instance_type = instance_type
        self.aws_conn_id = aws_conn_id
        self.max_runtime_seconds = max_runtime_seconds
        self.endpoint_url = endpoint_url
        self.verify = verify
        self.botocore_config = dict(botocore_config) if botocore_config else None
        self.kms_key_id = kms_key_id
        self.subnets = list(subnets) if subnets else None
        self.security_group_ids = list(security_group_ids) if security_group_ids else None
        self.encrypt_inter_container_traffic = encrypt_inter_container_traffic
        self.tags = dict(tags) if tags else None

    def config(self) -> dict[str, Any]:
        return constructor_config(self)

    # -- clients --

    def _client(self, service: str) -> Any:
        """The process's boto3 client for ``service`` with this backend's connection, region and
        settings (`tuneloop.aws`); ``endpoint_url`` applies to SageMaker only."""
        return aws.client(
            service,
            self.region,
            conn_id=self.aws_conn_id,
            endpoint_url=self.endpoint_url if service == "sagemaker" else None,
            config=self.botocore_config,
            verify=self.verify,
        )

    def _call(self, name: str, action: str, service: str = "sagemaker", **kwargs: Any) -> Any:
        """One API call, its failures turned into typed JobErrors."""
        from botocore import xform_name
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self._client(service), xform_name(action))(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise _client_error(exc, name, action, self, service) from None

    def _describe(self, name: str) -> dict[str, Any] | None:
        """DescribeTrainingJob, or None when no job has that name."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self._client("sagemaker").describe_training_job(TrainingJobName=name)
        except ClientError as exc:
            if _is_not_found(exc):
                return None
            raise _client_error(exc, name, "DescribeTrainingJob", self) from None
        except BotoCoreError as exc:
            raise _client_error(exc, name, "DescribeTrainingJob", self) from None

    def _status(self, description: Mapping[str, Any]) -> JobStatus:
        return status_from_description(description, self.region)

    # -- the protocol --

    def submit(self, spec: JobSpec) -> JobStatus:
        """Adopt the job of this name if it exists; otherwise upload the recipe and create it."""
        name = validate_job_name(spec.name)
        existing = self._describe(name)
        if existing is not None:
            return self._status(existing)
        request = training_job_request(
            spec,
            region=self.region,
            role_arn=self.role_arn,
            instance_type=self.instance_type,
            max_runtime_seconds=self.max_runtime_seconds,
            kms_key_id=self.kms_key_id,
            subnets=self.subnets or (),
            security_group_ids=self.security_group_ids or (),
            encrypt_inter_container_traffic=self.encrypt_inter_container_traffic,
            tags=self.tags,
        )
        self._upload_recipe(spec)
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client("sagemaker").create_training_job(**request)
        except ClientError as exc:
            if not _is_duplicate(exc):
                raise _client_error(exc, name, "CreateTrainingJob", self) from None
            # Another submit of the same job won the race: adopt the job it created.
        except BotoCoreError as exc:
            raise _client_error(exc, name, "CreateTrainingJob", self) from None
        created = self._describe(name)
        if created is None:  # created but not yet readable: report it as starting
            return JobStatus(
                name=name,
                state=JobState.PENDING,
                message="created",
                result_uri=result_uri(spec.output_uri, name),
                console_url=console_url(self.region, name),
                labels=dict(spec.labels),
            )
        return self._status(created)

    def _upload_recipe(self, spec: JobSpec) -> str:
        """Put the recipe where the recipe channel reads it. The same recipe always gives the
        same bytes at the same key, so a retry or a racing worker rewrites nothing new."""
        uri = storage.join(recipe_prefix(spec.output_uri, spec.name), RECIPE_FILE)
        bucket, key = storage.split_s3(uri)
        body = recipe_yaml(spec.recipe).encode()
        self._call(spec.name, "PutObject", "s3", Bucket=bucket, Key=key, Body=body)
        return uri

    def status(self, name: str) -> JobStatus:
        description = self._describe(name)
        if description is None:
            raise job_error(
                JobNotFoundError, name, f"no training job named {name} in {self.region}"
            )
        return self._status(description)

    def cancel(self, name: str) -> JobStatus:
        """StopTrainingJob for a job in progress; a job that ended (or is stopping) is left as
        it is. SageMaker keeps the job's record and outputs; nothing else was created."""
        current = self.status(name)
        if current.final:
            return current
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client("sagemaker").stop_training_job(TrainingJobName=name)
        except ClientError as exc:
            # It ended between the describe and the stop: report how it ended.
            code, _ = _error_code(exc)
            if code != "ValidationException" or _is_not_found(exc):
                raise _client_error(exc, name, "StopTrainingJob", self) from None
            after = self.status(name)
            if not after.final:
                raise _client_error(exc, name, "StopTrainingJob", self) from None
            return after
        except BotoCoreError as exc:
            raise _client_error(exc, name, "StopTrainingJob", self) from None
        return self.status(name)

    def logs(self, name: str, cursor: str = "") -> LogChunk:
        """New lines of all the job's log streams since ``cursor``, in timestamp order.

        The cursor holds each stream's next forward token, so a line is returned exactly once
        even when instances log at the same millisecond or a stream appears late. Lines are
        prefixed with ``[algo-N]`` once the job has more than one stream.
        """
        tokens = _decode_cursor(name, cursor)
        streams = self._log_streams(name)
        if streams is None:
            return LogChunk(lines=[], cursor=cursor)
        prefixed = len(streams) > 1
        events: list[tuple[int, int, str]] = []
        for order, stream in enumerate(streams):
            token = tokens.get(stream)
            for _ in range(MAX_LOG_PAGES):
                kwargs: dict[str, Any] = {"nextToken": token} if token else {}
                page = self._call(
                    name,
                    "GetLogEvents",
                    "logs",
                    logGroupName=LOG_GROUP,
                    logStreamName=stream,
                    startFromHead=True,
                    **kwargs,
                )
                host = stream.split("/", 1)[-1].rsplit("-", 1)[0]
                for event in page.get("events", []):
                    text = str(event.get("message", "")).rstrip("\n")
                    line = f"[{host}] {text}" if prefixed else text
                    events.append((int(event.get("timestamp", 0)), order, line))
                new = page.get("nextForwardToken")
                if not new or new == token:
                    break
                token = new
            if token:
                tokens[stream] = token
        events.sort(key=lambda event: (event[0], event[1]))
        return LogChunk(lines=[line for _, _, line in events], cursor=_encode_cursor(tokens))

    def _log_streams(self, name: str) -> list[str] | None:
        """The job's stream names, sorted; None while the log group does not exist yet."""
        from botocore.exceptions import BotoCoreError, ClientError

        streams: list[str] = []
        try:
            pages = self._client("logs").get_paginator("describe_log_streams")
            for page in pages.paginate(logGroupName=LOG_GROUP, logStreamNamePrefix=f"{name}/"):
                streams.extend(item["logStreamName"] for item in page.get("logStreams", []))
        except ClientError as exc:
            if _error_code(exc)[0] == "ResourceNotFoundException":
                return None
            raise _client_error(exc, name, "DescribeLogStreams", self, "logs") from None
        except BotoCoreError as exc:
            raise _client_error(exc, name, "DescribeLogStreams", self, "logs") from None
        return sorted(streams)

    def find(self, labels: Mapping[str, str]) -> list[JobStatus]:
        """tuneloop's training jobs tagged with all of ``labels``, oldest first (SageMaker
        Search on tags; a job can take a few seconds to appear in it after creation)."""
        wanted = {**labels, MANAGED_BY_TAG: MANAGED_BY}
        filters = [
            {"Name": f"Tags.{key}", "Operator": "Equals", "Value": value}
            for key, value in sorted(wanted.items())
        ]
        found: list[tuple[float, JobStatus]] = []
        token = ""
        while True:
            kwargs: dict[str, Any] = {"NextToken": token} if token else {}
            page = self._call(
                f"with labels {dict(labels)}",
                "Search",
                Resource="TrainingJob",
                SearchExpression={"Filters": filters, "Operator": "And"},
                SortBy="CreationTime",
                SortOrder="Ascending",
                **kwargs,
            )
            for result in page.get("Results", []):
                job = result.get("TrainingJob") or {}
                tags = {tag["Key"]: tag["Value"] for tag in job.get("Tags", [])}
                # Check every tag here too: the filter is the service's; this is the contract.
                if "TrainingJobName" not in job or any(tags.get(k) != v for k, v in wanted.items()):
                    continue
                job_labels = {k: v for k, v in tags.items() if k != MANAGED_BY_TAG}
                status = status_from_description(job, self.region, job_labels)
                created = job.get("CreationTime")
                found.append(
                    (created.timestamp() if isinstance(created, datetime) else 0.0, status)
                )
            token = page.get("NextToken") or ""
            if not token:
                break
        found.sort(key=lambda item: (item[0], item[1].name))
        return [status for _, status in found]
