"""The CreateTrainingJob request the SageMaker backend sends is one the service accepts.

Each request is captured where the backend sends it: on the real boto3 client, through
botocore's ``provide-client-params`` event, as ``submit`` calls moto. It is then checked
against botocore's SageMaker model (botocore's own validation, and the patterns, maximums and
enums the service enforces beyond it) and against the names AWS's Nova tooling uses
(``tests/data/smtj_request/nova_tooling.json``).
"""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from fakes.sagemaker import FakeSageMaker
from fakes.service_constraints import matches, operation_input, request_problems
from tuneloop import aws
from tuneloop.jobs import make_backend
from tuneloop.jobs.base import MAX_JOB_NAME, JobKind, JobSpec, UserJobError, validate_job_name
from tuneloop.jobs.smtj import MANAGED_BY_TAG, TrainingJobsBackend, training_job_request
from tuneloop.rounds.specs import job_spec

REPO = Path(__file__).resolve().parents[3]
RECIPES = REPO / "recipes" / "nova"
TOOLING = json.loads(
    (REPO / "tests" / "data" / "smtj_request" / "nova_tooling.json").read_text(encoding="utf-8")
)
REGION = "us-east-1"
ROLE = "arn:aws:iam::123456789012:role/nova-training"
REWARD = "arn:aws:lambda:us-east-1:123456789012:function:SageMaker-reward"
METRICS_LAMBDA = "arn:aws:lambda:us-east-1:123456789012:function:SageMaker-metrics"
ESCROW = "s3://customer-escrow-123456789012-smtj-abc/sft-job/step5"
KMS = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
OPTIONS = {
    "kms_key_id": KMS,
    "subnets": ["subnet-0abc1234", "subnet-0def5678"],
    "security_group_ids": ["sg-0123abcd"],
    "encrypt_inter_container_traffic": True,
    "tags": {"team": "ml platform", "cost-center": "cc/42"},
}
INPUT_SHAPE = operation_input("sagemaker", "CreateTrainingJob")
NAME_META = INPUT_SHAPE.members["TrainingJobName"].metadata


def recipe(path: str, **run: Any) -> dict[str, Any]:
    data = yaml.safe_load((RECIPES / path).read_text(encoding="utf-8"))
    data["run"].update(run)
    return data


# name -> (recipe under recipes/nova, method, job spec inputs, run changes)
CASES: dict[str, tuple[str, str, dict[str, str], dict[str, Any]]] = {
    "sft-full": (
        "nova-2-lite/sft-full.yaml",
        "sft",
        {"train": "s3://{b}/data/train.jsonl", "validation": "s3://{b}/data/val.jsonl"},
        {},
    ),
    "sft-lora-from-checkpoint": (
        "nova-2-lite/sft-lora.yaml",
        "sft",
        {"train": "s3://{b}/data/train.jsonl"},
        {"model_name_or_path": ESCROW},
    ),
    "sft-lora-nova-1": (
        "nova-lite/sft-lora.yaml",
        "sft",
        {"train": "s3://{b}/data/train.jsonl", "validation": "s3://{b}/data/val.jsonl"},
        {},
    ),
    "rft-lora": (
        "nova-2-lite/rft-lora-smtj.yaml",
        "rft",
        {"train": "s3://{b}/data/rft.jsonl", "reward_function": REWARD},
        {"reward_lambda_arn": REWARD, "model_name_or_path": ESCROW},
    ),
    "rft-full": (
        "nova-2-lite/rft-full-smtj.yaml",
        "rft",
        {"train": "s3://{b}/data/rft.jsonl"},
        {"reward_lambda_arn": REWARD},
    ),
    "eval-gen-qa": (
        "nova-2-lite/eval-gen-qa.yaml",
        "eval",
        {"eval": "s3://{b}/data/eval.jsonl"},
        {"model_name_or_path": ESCROW},
    ),
    "eval-benchmark": ("nova-2-lite/eval-benchmark.yaml", "eval", {}, {}),
    "eval-rft": (
        "nova-2-lite/eval-rft.yaml",
        "eval",
        {"eval": "s3://{b}/data/rft.jsonl"},
        {"model_name_or_path": ESCROW},
    ),
}


def make_spec(case: str, bucket: str, campaign: str = "demo") -> JobSpec:
    path, method, inputs, run = CASES[case]
    body = recipe(path, **run)
    if case == "eval-gen-qa":
        body["processor"]["lambda_arn"] = METRICS_LAMBDA
    if case == "eval-rft":
        body["rl_env"]["reward_lambda_arn"] = REWARD
    filled = {name: uri.format(b=bucket) for name, uri in inputs.items()}
    kind = JobKind.EVAL if method == "eval" else JobKind.TRAIN
    stage = "eval" if method == "eval" else method
    return job_spec(campaign, 1, stage, kind, method, body, filled, f"s3://{bucket}/outputs")


@pytest.fixture(scope="module")
def bucket(s3_server: str) -> str:
    import boto3

    name = f"smtj-request-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_server, region_name=REGION).create_bucket(Bucket=name)
    return name


@contextlib.contextmanager
def sent_requests(endpoint: str) -> Iterator[list[dict[str, Any]]]:
    """Every CreateTrainingJob the backend's SageMaker client sends while inside, as the
    parameters the client was called with (botocore's ``provide-client-params`` event fires on
    each call of the real client, before its own validation)."""
    client = aws.client("sagemaker", REGION, conn_id=None, endpoint_url=endpoint)
    captured: list[dict[str, Any]] = []

    def capture(params: dict[str, Any], **_: Any) -> None:
        captured.append(json.loads(json.dumps(params)))

    event = "provide-client-params.sagemaker.CreateTrainingJob"
    client.meta.events.register(event, capture)
    try:
        yield captured
    finally:
        client.meta.events.unregister(event, capture)


def submitted_request(
    s3_server: str, spec: JobSpec, options: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The request ``submit`` sent for ``spec``, and moto's description of the job it made."""
    backend = TrainingJobsBackend(REGION, ROLE, aws_conn_id=None, endpoint_url=s3_server, **options)
    with sent_requests(s3_server) as sent:
        backend.submit(spec)
    [request] = sent
    client = aws.client("sagemaker", REGION, conn_id=None, endpoint_url=s3_server)
    return request, client.describe_training_job(TrainingJobName=spec.name)


def check_against_tooling(request: dict[str, Any], method: str) -> None:
    """Channel, hyperparameter and environment names are the Nova tooling's."""
    names = TOOLING["hyperparameters"]
    hyperparameters = request["HyperParameters"]
    assert set(hyperparameters) <= set(names.values())
    assert hyperparameters[names["recipe"]] == TOOLING["recipe_container_path"]
    assert (names["base_model_id"] in hyperparameters) != (
        names["base_model_s3"] in hyperparameters
    )
    assert request.get("Environment", {}) == TOOLING["environment"]
    assert not set(request) & set(TOOLING["not_sent"])
    assert request["AlgorithmSpecification"]["TrainingInputMode"] == TOOLING["training_input_mode"]
    channels = {c["ChannelName"]: c for c in request["InputDataConfig"]}
    recipe_channel = channels.pop(TOOLING["recipe_channel"])
    assert (
        recipe_channel["DataSource"]["S3DataSource"]["S3DataType"]
        == (TOOLING["recipe_channel_data_type"])
    )
    if method == "eval":
        assert set(channels) <= {TOOLING["evaluation_data_channel"]}
    else:
        assert TOOLING["data_channels"][0] in channels
        assert set(channels) <= set(TOOLING["data_channels"])
    for channel in channels.values():
        source = channel["DataSource"]["S3DataSource"]
        assert source["S3DataType"] == TOOLING["s3_data_type"][method]
        assert source["S3DataDistributionType"] == TOOLING["s3_data_distribution_type"]


def check_against_the_model(request: dict[str, Any]) -> None:
    """Nothing the service would refuse: botocore's validation, then what it leaves out."""
    assert request_problems("sagemaker", "CreateTrainingJob", request) == []
    assert set(INPUT_SHAPE.required_members) <= set(request)
    name = request["TrainingJobName"]
    assert len(name) <= NAME_META["max"] and matches(NAME_META["pattern"], name)
    hyperparameters = request["HyperParameters"]
    limits = INPUT_SHAPE.members["HyperParameters"]
    assert len(hyperparameters) <= limits.metadata["max"]
    for key, value in hyperparameters.items():
        assert isinstance(value, str), (key, value)
        assert len(key) <= limits.key.metadata["max"]
        assert len(value) <= limits.value.metadata["max"]


@pytest.mark.parametrize("with_options", [False, True], ids=["plain", "vpc-kms-tags"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_the_request_sent_is_one_the_service_accepts(
    s3_server: str, bucket: str, case: str, with_options: bool
) -> None:
    spec = make_spec(case, bucket, campaign=f"c-{uuid.uuid4().hex[:6]}")
    options = OPTIONS if with_options else {}
    request, described = submitted_request(s3_server, spec, options)

    check_against_the_model(request)
    check_against_tooling(request, spec.method)
    assert described["TrainingJobName"] == spec.name  # moto took it

    hyperparameters = request["HyperParameters"]
    base = spec.recipe["run"]["model_name_or_path"]
    if base.startswith("s3://"):
        assert hyperparameters["base_model_location"] == base
    else:
        assert hyperparameters["base_model"] == base
    assert ("reward_lambda_arn" in hyperparameters) == (spec.method == "rft")
    assert ("eval_lambda_arn" in hyperparameters) == (case == "eval-gen-qa")
    if spec.method == "rft":
        assert hyperparameters["reward_lambda_arn"] == REWARD
    if case == "eval-gen-qa":
        assert hyperparameters["eval_lambda_arn"] == METRICS_LAMBDA
    assert request["ResourceConfig"]["InstanceCount"] == spec.recipe["run"]["replicas"]

    tags = {tag["Key"]: tag["Value"] for tag in request["Tags"]}
    assert tags[MANAGED_BY_TAG] == "tuneloop" and tags["stage"] == spec.labels["stage"]
    if with_options:
        assert request["OutputDataConfig"]["KmsKeyId"] == KMS
        assert request["VpcConfig"] == {
            "Subnets": OPTIONS["subnets"],
            "SecurityGroupIds": OPTIONS["security_group_ids"],
        }
        assert request["EnableInterContainerTrafficEncryption"] is True
        assert tags["team"] == "ml platform" and tags["cost-center"] == "cc/42"
        assert described["VpcConfig"] == request["VpcConfig"]
    else:
        assert "KmsKeyId" not in request["OutputDataConfig"]
        assert "VpcConfig" not in request
        assert "EnableInterContainerTrafficEncryption" not in request
        assert set(tags) == {"campaign", "round", "stage", MANAGED_BY_TAG}


def request_for(spec: JobSpec, **options: Any) -> dict[str, Any]:
    return training_job_request(
        spec,
        region=REGION,
        role_arn=ROLE,
        instance_type="ml.p5.48xlarge",
        max_runtime_seconds=3600,
        **options,
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"kms_key_id": "key with spaces"}, "is not a KMS key id"),
        ({"subnets": ["subnet-1"]}, "needs both subnets and security_group_ids"),
        ({"security_group_ids": ["sg-1"]}, "needs both subnets and security_group_ids"),
        (
            {"subnets": ["subnet_1"], "security_group_ids": ["sg-1"]},
            "is not a subnet or security group id",
        ),
        (
            {"subnets": [f"subnet-{i}" for i in range(17)], "security_group_ids": ["sg-1"]},
            "17 subnets given",
        ),
        ({"tags": {"aws:owner": "me"}}, "reserved for AWS"),
        ({"tags": {"stage": "mine"}}, "tuneloop sets this key itself"),
        ({"tags": {"team": "a#b"}}, "allow letters, digits, spaces"),
        ({"tags": {"k" * 129: "v"}}, "keys are 1-128 characters"),
        ({"tags": {f"t{i}": "v" for i in range(47)}}, "set at most 46 tags of your own"),
    ],
)
def test_settings_the_service_would_refuse_are_refused_first(options, message) -> None:
    spec = make_spec("sft-full", "data-bucket")
    with pytest.raises(UserJobError, match=message) as info:
        request_for(spec, **options)
    assert info.value.problems[0].fix
    # At the limit, the request is one the service accepts.
    fitting = request_for(spec, tags={f"t{i}": "v" * 256 for i in range(46)})
    check_against_the_model(fitting)


def test_cpt_has_no_training_job_image_and_is_refused_before_any_call(
    s3_server: str, bucket: str
) -> None:
    body = recipe("nova-2-lite/cpt.yaml")
    inputs = {"train": f"s3://{bucket}/data/corpus.jsonl"}
    spec = job_spec("demo", 1, "cpt", JobKind.TRAIN, "cpt", body, inputs, f"s3://{bucket}/o")
    backend = TrainingJobsBackend(REGION, ROLE, aws_conn_id=None, endpoint_url=s3_server)
    with sent_requests(s3_server) as sent, pytest.raises(UserJobError, match="no CPT image"):
        backend.submit(spec)
    assert sent == []


def test_inputs_are_the_channels_nova_reads() -> None:
    spec = make_spec("sft-full", "data-bucket")
    other = spec.model_copy(update={"inputs": {"train": "s3://b/t.jsonl", "extra": "s3://b/x"}})
    with pytest.raises(UserJobError, match="'extra' is not a channel Nova training jobs read"):
        request_for(other)
    evaluation = make_spec("eval-gen-qa", "data-bucket")
    two = evaluation.model_copy(update={"inputs": {"eval": "s3://b/e", "more": "s3://b/m"}})
    with pytest.raises(UserJobError, match="an evaluation reads one dataset"):
        request_for(two)
    # Whatever the spec calls an evaluation's dataset, the job reads it as "train".
    [data, _] = request_for(evaluation)["InputDataConfig"]
    assert data["ChannelName"] == TOOLING["evaluation_data_channel"]


def test_the_fake_service_refuses_what_the_model_forbids(s3_server: str) -> None:
    """The HTTP fake the other SageMaker tests use checks requests as the service does: a
    request botocore lets through but the model forbids is a ValidationException."""
    from botocore.exceptions import ClientError

    fake = FakeSageMaker(REGION).start()
    try:
        client = aws.client("sagemaker", REGION, conn_id=None, endpoint_url=fake.endpoint)
        request = request_for(make_spec("sft-full", "data-bucket"))
        bad = {
            **request,
            "TrainingJobName": "under_score-" + "x" * 60,
            "Tags": [{"Key": "team", "Value": "a#b"}],
        }
        with pytest.raises(ClientError) as info:
            client.create_training_job(**bad)
        error = info.value.response["Error"]
        assert error["Code"] == "ValidationException"
        assert "3 validation errors detected" in error["Message"]
        assert "regular expression pattern" in error["Message"]
        assert "less than or equal to 63" in error["Message"]
        assert fake.jobs == {} and len(fake.refused) == 1
        client.create_training_job(**request)
        assert set(fake.jobs) == {request["TrainingJobName"]}
    finally:
        fake.stop()


# --- names: always valid, the same on every retry ------------------------------------------

CAMPAIGNS = st.from_regex(r"[a-z][a-z0-9-]{0,31}", fullmatch=True)
STAGES = st.from_regex(r"[a-z][a-z0-9-]{0,15}", fullmatch=True)
VALUES = st.one_of(st.integers(), st.floats(allow_nan=False), st.text(max_size=20), st.none())
RECIPES_BODIES = st.dictionaries(st.text(min_size=1, max_size=10), VALUES, max_size=5)
INPUTS = st.dictionaries(
    st.sampled_from(["train", "validation", "reward_function"]),
    st.text(min_size=1, max_size=40).map(lambda text: f"s3://bucket/{text}"),
    max_size=3,
)


@settings(max_examples=300, deadline=None)
@given(
    campaign=CAMPAIGNS,
    round_number=st.integers(min_value=0, max_value=10**12),
    stage=STAGES,
    body=RECIPES_BODIES,
    inputs=INPUTS,
)
def test_job_names_fit_sagemaker_and_stay_stable(
    campaign: str, round_number: int, stage: str, body: dict[str, Any], inputs: dict[str, str]
) -> None:
    body = {**body, "run": {"name": "", "model_type": "amazon.nova-2-lite-v1:0:256k"}}
    spec = job_spec(campaign, round_number, stage, JobKind.TRAIN, "sft", body, inputs, "s3://b/o")
    name = spec.name
    assert len(name) <= min(MAX_JOB_NAME, NAME_META["max"])
    assert matches(NAME_META["pattern"], name)
    assert validate_job_name(name) == name
    # The readable part is the campaign's, as far as it fits.
    assert name.startswith(campaign[: min(len(campaign), 20)].rstrip("-"))
    # A retry plans the job again: from the same recipe and inputs (in any key order), and from
    # the recipe the first attempt stored, whose run name is already set to the job's name.
    again = job_spec(
        campaign,
        round_number,
        stage,
        JobKind.TRAIN,
        "sft",
        dict(reversed(list(body.items()))),
        dict(reversed(list(inputs.items()))),
        "s3://b/o",
    )
    from_stored = job_spec(
        campaign, round_number, stage, JobKind.TRAIN, "sft", spec.recipe, inputs, "s3://b/o"
    )
    assert again.name == from_stored.name == name
    assert spec.recipe["run"]["name"] == name


def test_a_retried_submit_adopts_the_job_by_its_name(s3_server: str, bucket: str) -> None:
    """Exactly-once launch rests on the name: a second worker rebuilding the backend and the
    spec finds the job and sends no second CreateTrainingJob."""
    longest = "c" + "-x" * 15 + "z"  # 32 characters, the longest campaign name
    spec = make_spec("rft-lora", bucket, campaign=longest[:-6] + uuid.uuid4().hex[:6])
    backend = TrainingJobsBackend(REGION, ROLE, aws_conn_id=None, endpoint_url=s3_server)
    with sent_requests(s3_server) as sent:
        first = backend.submit(spec)
        retried = make_backend(json.loads(json.dumps(backend.config())))
        rebuilt = make_spec("rft-lora", bucket, campaign=spec.labels["campaign"])
        assert rebuilt.name == spec.name
        assert retried.submit(rebuilt).name == first.name == spec.name
    assert len(sent) == 1
    assert re.fullmatch(r"[a-z0-9-]+", spec.name) and len(spec.name) <= MAX_JOB_NAME


# --- the same settings from the campaign file ---------------------------------------------

CLAIMS = Path(__file__).resolve().parents[3] / "recipes/campaigns/examples/claims-smtj.yaml"


def claims_with_backend(**settings: Any) -> str:
    document = yaml.safe_load(CLAIMS.read_text())
    document["backend"].update(settings)
    return yaml.safe_dump(document, sort_keys=False)


@pytest.mark.parametrize(
    ("settings", "where", "message"),
    [
        ({"kms_key_id": "key with spaces"}, "backend.kms_key_id", "is not a KMS key id"),
        ({"subnets": ["subnet-1"]}, "backend.security_group_ids", "needs both subnets"),
        (
            {"subnets": ["subnet_1"], "security_group_ids": ["sg-1"]},
            "backend.security_group_ids",
            "is not a subnet or security group id",
        ),
        ({"tags": {"round": "7"}}, "backend.tags", "tuneloop sets this key itself"),
        ({"tags": {f"t{i}": "v" for i in range(47)}}, "backend.tags", "at most 46 tags"),
    ],
)
def test_a_campaign_setting_the_service_would_refuse_is_one_located_line(
    settings: dict[str, Any], where: str, message: str
) -> None:
    from tuneloop.config.file import parse_campaign
    from tuneloop.errors import CampaignError

    with pytest.raises(CampaignError) as error:
        parse_campaign(claims_with_backend(**settings), CLAIMS)
    [problem] = error.value.problems
    line = problem.format()
    assert "\n" not in line and line.startswith(f"{CLAIMS}:{problem.line}: {where}: ")
    assert message in line and problem.line is not None


def test_the_campaigns_settings_reach_the_request(s3_server: str, bucket: str) -> None:
    from tuneloop.config.backend import job_backend_config
    from tuneloop.config.file import parse_campaign

    settings = {
        "kms_key_id": "alias/tuneloop-output",
        "subnets": ["subnet-0abc123"],
        "security_group_ids": ["sg-0abc123"],
        "encrypt_inter_container_traffic": True,
        "tags": {"team": "claims", "cost-center": "ml 42"},
    }
    campaign = parse_campaign(claims_with_backend(**settings), CLAIMS).campaign
    config = job_backend_config(campaign)
    assert {name: config[name] for name in settings} == settings
    plain = job_backend_config(parse_campaign(CLAIMS.read_text(), CLAIMS).campaign)
    assert not set(settings) & set(plain)  # unset: nothing new in the backend's configuration

    config.update(aws_conn_id=None, endpoint_url=s3_server, role_arn=ROLE, region=REGION)
    backend = make_backend(config)
    spec = make_spec("sft-full", bucket, campaign="claims-settings")
    with sent_requests(s3_server) as sent:
        backend.submit(spec)
    [request] = sent
    check_against_the_model(request)
    assert request["OutputDataConfig"]["KmsKeyId"] == "alias/tuneloop-output"
    assert request["VpcConfig"] == {
        "SecurityGroupIds": ["sg-0abc123"],
        "Subnets": ["subnet-0abc123"],
    }
    assert request["EnableInterContainerTrafficEncryption"] is True
    tags = {tag["Key"]: tag["Value"] for tag in request["Tags"]}
    assert tags["team"] == "claims" and tags["cost-center"] == "ml 42"
    assert tags["campaign"] == "claims-settings" and tags[MANAGED_BY_TAG] == "tuneloop"
