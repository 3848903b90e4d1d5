"""The SageMaker training jobs backend, against moto (S3, CloudWatch Logs, one real
CreateTrainingJob) and a fake SageMaker endpoint over HTTP (progress, stop, races, errors)."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from fakes.sagemaker import COMPLETED, STARTING, TRAINING, FakeSageMaker
from tuneloop.jobs import make_backend
from tuneloop.jobs.base import (
    JobBackend,
    JobKind,
    JobNotFoundError,
    JobSpec,
    JobState,
    TransientJobError,
    UserJobError,
    job_name,
)
from tuneloop.jobs.smtj import (
    LOG_GROUP,
    MANAGED_BY_TAG,
    RECIPE_LOCAL_PATH,
    TrainingJobsBackend,
    recipe_yaml,
    status_from_description,
    training_job_request,
)

REPO = Path(__file__).resolve().parents[3]
RECIPES = REPO / "recipes" / "nova" / "nova-2-lite"
ROLE = "arn:aws:iam::123456789012:role/nova-training"
REGION = "us-east-1"
REWARD = "arn:aws:lambda:us-east-1:123456789012:function:SageMaker-reward"
ESCROW = "s3://customer-escrow-123456789012-smtj-abc/job-1/step5"
# One retry, so a test of a persistent failure does not sit in botocore's backoff.
FAST_RETRIES = {"retries": {"total_max_attempts": 2, "mode": "standard"}}


def recipe(name: str, **run: Any) -> dict[str, Any]:
    data = yaml.safe_load((RECIPES / name).read_text(encoding="utf-8"))
    data["run"].update(run)
    return data


def make_spec(
    bucket: str = "data-bucket",
    *,
    method: str = "sft",
    recipe_file: str = "sft-lora.yaml",
    stage: str = "sft",
    labels: dict[str, str] | None = None,
    inputs: dict[str, str] | None = None,
    **run: Any,
) -> JobSpec:
    body = recipe(recipe_file, **run)
    inputs = (
        inputs
        if inputs is not None
        else {
            "train": f"s3://{bucket}/data/train.jsonl",
            "validation": f"s3://{bucket}/data/val.jsonl",
        }
    )
    labels = labels if labels is not None else {"campaign": "demo", "round": "1", "stage": stage}
    return JobSpec(
        name=job_name("demo", 1, stage, body, inputs),
        kind=JobKind.EVAL if method == "eval" else JobKind.TRAIN,
        method=method,
        recipe=body,
        inputs=inputs,
        output_uri=f"s3://{bucket}/outputs",
        labels=labels,
    )


def channel(request: dict[str, Any], name: str) -> dict[str, Any]:
    [found] = [c for c in request["InputDataConfig"] if c["ChannelName"] == name]
    return found["DataSource"]["S3DataSource"]


def request_for(spec: JobSpec, **kwargs: Any) -> dict[str, Any]:
    settings = {
        "region": REGION,
        "role_arn": ROLE,
        "instance_type": "ml.p5.48xlarge",
        "max_runtime_seconds": 7200,
    }
    return training_job_request(spec, **{**settings, **kwargs})


# --- the request (no service) -------------------------------------------------------------


def test_sft_request_carries_recipe_channel_base_model_and_converse_data() -> None:
    spec = make_spec(replicas=4)
    request = request_for(spec)
    assert request["TrainingJobName"] == spec.name
    assert request["AlgorithmSpecification"] == {
        "TrainingImage": "708977205387.dkr.ecr.us-east-1.amazonaws.com/"
        "nova-fine-tune-repo:SM-TJ-SFT-V2-latest",
        "TrainingInputMode": "File",
    }
    assert request["HyperParameters"] == {
        "sagemaker_recipe_local_path": RECIPE_LOCAL_PATH,
        "base_model": "nova-lite-2/prod",
    }
    assert channel(request, "train") == {
        "S3DataType": "Converse",
        "S3Uri": "s3://data-bucket/data/train.jsonl",
        "S3DataDistributionType": "FullyReplicated",
    }
    assert channel(request, "validation")["S3DataType"] == "Converse"
    assert channel(request, "recipe") == {
        "S3DataType": "S3Prefix",
        "S3Uri": f"s3://data-bucket/outputs/{spec.name}/recipe/",
        "S3DataDistributionType": "FullyReplicated",
    }
    assert request["ResourceConfig"]["InstanceType"] == "ml.p5.48xlarge"
    assert request["ResourceConfig"]["InstanceCount"] == 4
    assert request["OutputDataConfig"] == {"S3OutputPath": "s3://data-bucket/outputs"}
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 7200}
    assert request["RoleArn"] == ROLE
    assert {t["Key"]: t["Value"] for t in request["Tags"]} == {
        "campaign": "demo",
        "round": "1",
        "stage": "sft",
        MANAGED_BY_TAG: "tuneloop",
    }


def test_rft_request_from_a_checkpoint_with_reward_function() -> None:
    spec = make_spec(
        method="rft",
        recipe_file="rft-lora-smtj.yaml",
        stage="rft",
        inputs={"train": "s3://data-bucket/rft.jsonl", "reward": REWARD},
        model_name_or_path=ESCROW,
        replicas=2,
    )
    request = request_for(spec, instance_type="ml.p5en.48xlarge")
    assert request["HyperParameters"] == {
        "sagemaker_recipe_local_path": RECIPE_LOCAL_PATH,
        "base_model_location": ESCROW,
        "reward_lambda_arn": REWARD,
    }
    assert request["AlgorithmSpecification"]["TrainingImage"].endswith(":SM-TJ-RFT-V2-latest")
    assert channel(request, "train")["S3DataType"] == "S3Prefix"
    assert sorted(c["ChannelName"] for c in request["InputDataConfig"]) == ["recipe", "train"]
    # The reward function may also come from the recipe itself.
    from_recipe = make_spec(
        method="rft", recipe_file="rft-lora-smtj.yaml", stage="rft", reward_lambda_arn=REWARD
    )
    assert request_for(from_recipe)["HyperParameters"]["reward_lambda_arn"] == REWARD


def test_eval_request_uses_the_evaluation_image_and_plain_s3_data() -> None:
    spec = make_spec(
        method="eval",
        recipe_file="eval-gen-qa.yaml",
        stage="eval",
        inputs={"train": "s3://data-bucket/eval.jsonl"},
        model_name_or_path=ESCROW,
    )
    request = request_for(spec)
    assert request["AlgorithmSpecification"]["TrainingImage"].endswith(
        "nova-evaluation-repo:SM-TJ-Eval-V2-latest"
    )
    assert channel(request, "train")["S3DataType"] == "S3Prefix"
    assert request["HyperParameters"]["base_model_location"] == ESCROW
    assert "eval_lambda_arn" not in request["HyperParameters"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_type": "local.tiny-chat-v1"}, "is not a Nova model"),
        ({"model_name_or_path": ""}, "run.model_name_or_path is empty"),
        ({"replicas": 0}, "is not a positive instance count"),
    ],
)
def test_recipe_problems_are_refused_before_any_call(change, message) -> None:
    with pytest.raises(UserJobError, match=message) as info:
        request_for(make_spec(**change))
    assert info.value.problems[0].fix


def test_request_refusals_name_the_fix() -> None:
    with pytest.raises(UserJobError, match=r"do not run on ml\.g5\.12xlarge") as info:
        request_for(make_spec(), instance_type="ml.g5.12xlarge")
    assert "ml.p5.48xlarge" in info.value.problems[0].fix
    with pytest.raises(UserJobError, match="not supported for region 'eu-west-2'"):
        request_for(make_spec(method="rft", recipe_file="rft-lora-smtj.yaml"), region="eu-west-2")
    with pytest.raises(UserJobError, match=r"input train = '/tmp/train\.jsonl' is not an s3://"):
        request_for(make_spec(inputs={"train": "/tmp/train.jsonl"}))
    with pytest.raises(UserJobError, match="RFT needs a reward function"):
        request_for(make_spec(method="rft", recipe_file="rft-lora-smtj.yaml", inputs={}))
    local_output = make_spec().model_copy(update={"output_uri": "/tmp/out"})
    with pytest.raises(UserJobError, match="output_uri '/tmp/out' is not an s3:// URI"):
        request_for(local_output)


@pytest.mark.parametrize(
    ("status", "secondary", "reason", "state", "retryable"),
    [
        ("InProgress", "Starting", "", JobState.PENDING, False),
        ("InProgress", "Downloading", "", JobState.PENDING, False),
        ("InProgress", "LaunchingMLInstances", "", JobState.PENDING, False),
        ("InProgress", "Training", "", JobState.RUNNING, False),
        ("InProgress", "Uploading", "", JobState.RUNNING, False),
        ("Completed", "Completed", "", JobState.SUCCEEDED, False),
        (
            "Failed",
            "Failed",
            "CapacityError: Unable to provision requested ML compute capacity.",
            JobState.FAILED,
            True,
        ),
        (
            "Failed",
            "Failed",
            "InternalServerError: We encountered an internal error. Please try again.",
            JobState.FAILED,
            True,
        ),
        ("Failed", "Failed", "AlgorithmError: invalid recipe key", JobState.FAILED, False),
        ("Stopping", "Stopping", "", JobState.STOPPED, False),
        ("Stopped", "Stopped", "", JobState.STOPPED, False),
        ("Stopped", "MaxRuntimeExceeded", "", JobState.FAILED, False),
    ],
)
def test_status_mapping(status, secondary, reason, state, retryable) -> None:
    description = {
        "TrainingJobName": "job-1",
        "TrainingJobStatus": status,
        "SecondaryStatus": secondary,
        "OutputDataConfig": {"S3OutputPath": "s3://b/out/"},
        "ResourceConfig": {"InstanceType": "ml.p5.48xlarge", "InstanceCount": 4},
        "BillableTimeInSeconds": 100,
    }
    if reason:
        description["FailureReason"] = reason
    job = status_from_description(description, "us-west-2")
    assert (job.state, job.retryable) == (state, retryable)
    if reason:
        assert job.failure_reason == reason and reason in job.message
    if secondary == "MaxRuntimeExceeded":
        assert "MaxRuntimeExceeded" in job.failure_reason
    assert job.billable_seconds == 400.0  # per-instance seconds x 4 instances
    assert job.result_uri == "s3://b/out/job-1/output/output.tar.gz"
    assert job.console_url == (
        "https://us-west-2.console.aws.amazon.com/sagemaker/home?region=us-west-2#/jobs/job-1"
    )


# --- against moto: S3, logs and one real CreateTrainingJob ------------------------------------


@pytest.fixture
def bucket(s3_server: str) -> str:
    import boto3

    name = f"smtj-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server, region_name=REGION).create_bucket(Bucket=name)
    return name


def test_create_and_describe_on_moto(s3_server: str, bucket: str) -> None:
    import boto3

    backend = TrainingJobsBackend(REGION, ROLE, aws_conn_id=None, endpoint_url=s3_server)
    # moto is shared by the session: labels unique to this test keep find() to its own job.
    spec = make_spec(bucket, labels={"campaign": bucket, "round": "1", "stage": "sft"}, replicas=4)

    submitted = backend.submit(spec)
    # moto completes a job the moment it is created.
    assert submitted.state is JobState.SUCCEEDED
    assert submitted.result_uri == f"s3://{bucket}/outputs/{spec.name}/output/output.tar.gz"
    assert submitted.console_url.endswith(f"#/jobs/{spec.name}")
    assert backend.status(spec.name) == submitted

    s3 = boto3.client("s3", endpoint_url=s3_server, region_name=REGION)
    stored = s3.get_object(Bucket=bucket, Key=f"outputs/{spec.name}/recipe/recipe.yaml")
    assert yaml.safe_load(stored["Body"].read()) == spec.recipe

    sagemaker = boto3.client("sagemaker", endpoint_url=s3_server, region_name=REGION)
    described = sagemaker.describe_training_job(TrainingJobName=spec.name)
    assert described["HyperParameters"]["sagemaker_recipe_local_path"] == RECIPE_LOCAL_PATH
    assert described["ResourceConfig"]["InstanceCount"] == 4
    assert {c["ChannelName"] for c in described["InputDataConfig"]} == {
        "train",
        "validation",
        "recipe",
    }

    # moto would accept a duplicate name; describe-before-create never sends one.
    assert backend.submit(spec) == submitted
    listed = sagemaker.list_training_jobs(NameContains=spec.name)["TrainingJobSummaries"]
    assert len(listed) == 1

    # A finished job is left as it is (moto's StopTrainingJob would answer 500).
    assert backend.cancel(spec.name).state is JobState.SUCCEEDED
    [found] = backend.find({"campaign": bucket, "stage": "sft", "round": "1"})
    assert found.name == spec.name and found.labels["stage"] == "sft"
    assert found.state is JobState.SUCCEEDED and found.result_uri == submitted.result_uri
    assert backend.find({"campaign": bucket, "stage": "rft"}) == []


@pytest.fixture
def logs_client(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    import boto3

    # The backend's logs client follows boto3's configured endpoint, as in production.
    monkeypatch.setenv("AWS_ENDPOINT_URL_CLOUDWATCH_LOGS", s3_server)
    client = boto3.client("logs", endpoint_url=s3_server, region_name=REGION)
    with contextlib.suppress(client.exceptions.ResourceAlreadyExistsException):
        client.create_log_group(logGroupName=LOG_GROUP)
    return client


def put_lines(client: Any, stream: str, lines: list[tuple[int, str]]) -> None:
    with contextlib.suppress(client.exceptions.ResourceAlreadyExistsException):
        client.create_log_stream(logGroupName=LOG_GROUP, logStreamName=stream)
    events = [{"timestamp": ts, "message": text} for ts, text in lines]
    client.put_log_events(logGroupName=LOG_GROUP, logStreamName=stream, logEvents=events)


def test_logs_cursor_never_repeats_or_drops_lines(logs_client: Any) -> None:
    backend = TrainingJobsBackend(REGION, ROLE, aws_conn_id=None)
    name = f"logs-{uuid.uuid4().hex[:8]}"
    assert backend.logs(name).lines == []  # no stream yet: nothing, and no error

    base = int(time.time() * 1000) - 60_000  # CloudWatch refuses events days old
    put_lines(logs_client, f"{name}/algo-1-1750000000", [(base, "step 1\n"), (base + 2, "step 2")])
    first = backend.logs(name)
    assert first.lines == ["step 1", "step 2"]
    assert backend.logs(name, first.cursor).lines == []

    # A second instance starts logging, with a line older than the first instance's last.
    put_lines(logs_client, f"{name}/algo-2-1750000000", [(base + 1, "worker up")])
    put_lines(logs_client, f"{name}/algo-1-1750000000", [(base + 3, "step 3")])
    second = backend.logs(name, first.cursor)
    assert second.lines == ["[algo-1] step 3"] or second.lines == [
        "[algo-2] worker up",
        "[algo-1] step 3",
    ]
    assert sorted(second.lines) == ["[algo-1] step 3", "[algo-2] worker up"]
    assert backend.logs(name, second.cursor).lines == []
    # From the start, every line once, in timestamp order.
    assert backend.logs(name).lines == [
        "[algo-1] step 1",
        "[algo-2] worker up",
        "[algo-1] step 2",
        "[algo-1] step 3",
    ]
    # Another job whose name starts the same is not mixed in.
    put_lines(logs_client, f"{name}0/algo-1-1750000000", [(base, "other job")])
    assert "other job" not in " ".join(backend.logs(name).lines)

    with pytest.raises(UserJobError, match="was not returned by this backend"):
        backend.logs(name, "not-a-cursor")


# --- against the fake endpoint: progress, stop, races, errors ---------------------------------


@pytest.fixture(scope="module")
def fake_service(s3_server: str):
    service = FakeSageMaker(REGION).start()
    yield service
    service.stop()


@pytest.fixture
def fake(fake_service: FakeSageMaker) -> FakeSageMaker:
    fake_service.reset()
    return fake_service


@pytest.fixture(scope="module")
def backend(fake_service: FakeSageMaker) -> TrainingJobsBackend:
    # One backend for the module: building boto3 clients (the SageMaker model is large) is
    # most of a test's time otherwise.
    return TrainingJobsBackend(
        REGION,
        ROLE,
        aws_conn_id=None,
        endpoint_url=fake_service.endpoint,
        botocore_config=FAST_RETRIES,
    )


def test_status_walks_from_pending_to_succeeded(
    fake: FakeSageMaker, backend: TrainingJobsBackend, bucket: str
) -> None:
    spec = make_spec(bucket, replicas=4)
    first = backend.submit(spec)  # its describe shows the job Starting
    assert (first.state, first.message) == (JobState.PENDING, "waiting to train (Starting)")
    assert backend.status(spec.name).state is JobState.PENDING  # Downloading
    running = backend.status(spec.name)
    assert running.state is JobState.RUNNING and running.started_at is not None
    assert running.ended_at is None and running.billable_seconds is None
    done = backend.status(spec.name)
    assert done.state is JobState.SUCCEEDED
    assert done.ended_at is not None and done.ended_at >= done.started_at
    assert done.billable_seconds == fake.billable_seconds * 4
    assert done.result_uri == f"s3://{bucket}/outputs/{spec.name}/output/output.tar.gz"
    assert fake.creates == {spec.name: 1}


def test_double_submit_creates_once(
    fake: FakeSageMaker, backend: TrainingJobsBackend, bucket: str
) -> None:
    spec = make_spec(bucket)
    backend.submit(spec)
    again = backend.submit(spec)
    # A second backend (another worker, a retried task) adopts the same job.
    other = make_backend(backend.config()).submit(spec)
    assert again.name == other.name == spec.name
    assert fake.creates == {spec.name: 1}
    assert fake.calls["CreateTrainingJob"] == 1


def test_a_lost_race_adopts_the_winners_job(
    fake: FakeSageMaker, backend: TrainingJobsBackend, bucket: str
) -> None:
    spec = make_spec(bucket)
    fake.race_next_create()
    status = backend.submit(spec)
    assert status.name == spec.name and status.state is JobState.PENDING
    # Our create was refused as a duplicate; the one job is the other submitter's.
    assert fake.calls["CreateTrainingJob"] == 1
    assert fake.creates == {spec.name: 1}
    assert backend.submit(spec).name == spec.name
    assert fake.calls["CreateTrainingJob"] == 1


@pytest.mark.parametrize(
    ("code", "status", "error", "text"),
    [
        ("ValidationException", 400, UserJobError, "Invalid S3Uri"),
        ("AccessDeniedException", 400, UserJobError, "not authorized to perform"),
        ("ResourceLimitExceeded", 400, TransientJobError, "account-level service limit"),
        ("ThrottlingException", 400, TransientJobError, "Rate exceeded"),
        ("InternalFailure", 500, TransientJobError, "internal failure"),
    ],
)
def test_create_errors_are_typed(
    fake: FakeSageMaker, backend: TrainingJobsBackend, bucket: str, code, status, error, text
) -> None:
    spec = make_spec(bucket)
    fake.fail_next("CreateTrainingJob", code, text, status=status, times=2)
    with pytest.raises(error) as info:
        backend.submit(spec)
    [problem] = info.value.problems
    assert code in problem.message and text in problem.message and problem.fix
    assert problem.path == f"job {spec.name}"
    assert fake.creates == {}
    if code == "AccessDeniedException":
        assert ROLE in problem.fix
    if code == "ResourceLimitExceeded":
        assert "quota" in problem.fix


def test_one_server_error_is_retried(
    fake: FakeSageMaker, backend: TrainingJobsBackend, bucket: str
) -> None:
    spec = make_spec(bucket)
    fake.fail_next("CreateTrainingJob", "InternalFailure", status=500)
    assert backend.submit(spec).name == spec.name
    assert fake.calls["CreateTrainingJob"] == 2 and fake.creates == {spec.name: 1}


def test_failed_job_reports_reason_and_retryable(
    fake: FakeSageMaker, backend: TrainingJobsBackend, bucket: str
) -> None:
    reason = "CapacityError: Unable to provision requested ML compute capacity."
    fake.script_next(STARTING, ("Failed", "Failed", reason))
    spec = make_spec(bucket)
    backend.submit(spec)
    failed = backend.status(spec.name)
    assert failed.state is JobState.FAILED and failed.retryable
    assert failed.failure_reason == reason


def test_cancel_stops_and_is_idempotent(
    fake: FakeSageMaker, backend: TrainingJobsBackend, bucket: str
) -> None:
    fake.script_next(STARTING, TRAINING)
    spec = make_spec(bucket)
    backend.submit(spec)
    stopping = backend.cancel(spec.name)
    assert stopping.state is JobState.STOPPED and stopping.message == "stopping"
    assert fake.calls["StopTrainingJob"] == 1
    stopped = backend.cancel(spec.name)
    assert (stopped.state, stopped.message) == (JobState.STOPPED, "stopped")
    assert backend.cancel(spec.name).state is JobState.STOPPED
    assert fake.calls["StopTrainingJob"] == 1  # a stopped job is not stopped again


def test_cancel_leaves_a_finished_job_alone(
    fake: FakeSageMaker, backend: TrainingJobsBackend, bucket: str
) -> None:
    fake.script_next(COMPLETED)
    spec = make_spec(bucket)
    backend.submit(spec)
    assert backend.cancel(spec.name).state is JobState.SUCCEEDED
    assert fake.calls["StopTrainingJob"] == 0
    # It finished between our describe and our stop: the service refuses the stop.
    fake.script_next(STARTING, TRAINING, COMPLETED)
    racing = make_spec(bucket, stage="sft2")
    backend.submit(racing)  # describe showed Starting; the job is now Training
    backend.status(racing.name)  # showed Training; the job is now Completed
    assert backend.cancel(racing.name).state is JobState.SUCCEEDED
    assert fake.calls["StopTrainingJob"] == 0


def test_cancel_through_server_errors(
    fake: FakeSageMaker, backend: TrainingJobsBackend, bucket: str
) -> None:
    fake.script_next(STARTING, TRAINING)
    spec = make_spec(bucket)
    backend.submit(spec)
    # What moto does for StopTrainingJob: a server error every time.
    fake.fail_next("StopTrainingJob", "InternalFailure", "not implemented", status=500, times=2)
    with pytest.raises(TransientJobError, match="StopTrainingJob failed: InternalFailure"):
        backend.cancel(spec.name)
    # One server error is retried by the client and the stop goes through.
    fake.fail_next("StopTrainingJob", "InternalFailure", status=500)
    assert backend.cancel(spec.name).state is JobState.STOPPED


def test_unknown_jobs(fake: FakeSageMaker, backend: TrainingJobsBackend) -> None:
    with pytest.raises(JobNotFoundError, match="no training job named nope-1"):
        backend.status("nope-1")
    with pytest.raises(JobNotFoundError):
        backend.cancel("nope-1")
    fake.fail_next("DescribeTrainingJob", "AccessDeniedException", "no describe for you")
    with pytest.raises(UserJobError, match="DescribeTrainingJob failed: AccessDeniedException"):
        backend.status("nope-1")


def test_find_by_labels_oldest_first(
    fake: FakeSageMaker, backend: TrainingJobsBackend, bucket: str
) -> None:
    first = make_spec(bucket, stage="sft", labels={"campaign": "a", "stage": "sft"})
    second = make_spec(bucket, stage="rft", labels={"campaign": "a", "stage": "rft"})
    other = make_spec(bucket, stage="x", labels={"campaign": "b", "stage": "sft"})
    for spec in (first, second, other):
        backend.submit(spec)
    # A job started by something else, with the same tag, is not ours.
    fake.handle(
        "CreateTrainingJob",
        {"TrainingJobName": "someone-elses-job", "Tags": [{"Key": "campaign", "Value": "a"}]},
    )
    found = backend.find({"campaign": "a"})
    assert [job.name for job in found] == [first.name, second.name]
    assert found[0].labels == {"campaign": "a", "stage": "sft"}
    assert [job.name for job in backend.find({"campaign": "a", "stage": "rft"})] == [second.name]
    assert backend.find({"campaign": "c"}) == []


def test_config_round_trips_through_the_registry(backend: TrainingJobsBackend) -> None:
    config = backend.config()
    assert json.loads(json.dumps(config)) == config
    assert config["type"] == "smtj"
    rebuilt = make_backend(config)
    assert isinstance(rebuilt, TrainingJobsBackend) and isinstance(rebuilt, JobBackend)
    assert rebuilt.config() == config
    defaults = TrainingJobsBackend(REGION, ROLE).config()
    assert defaults == {
        "type": "smtj",
        "region": REGION,
        "role_arn": ROLE,
        "instance_type": "ml.p5.48xlarge",
        "aws_conn_id": "aws_default",
        "max_runtime_seconds": 86400,
        "endpoint_url": None,
        "verify": None,
        "botocore_config": None,
        "kms_key_id": "",
        "subnets": None,
        "security_group_ids": None,
        "encrypt_inter_container_traffic": False,
        "tags": None,
    }
    vpc = TrainingJobsBackend(
        REGION, ROLE, subnets=["subnet-1"], security_group_ids=["sg-1"], tags={"team": "ml"}
    )
    assert make_backend(json.loads(json.dumps(vpc.config()))).config() == vpc.config()


def test_recipe_yaml_is_stable() -> None:
    body = recipe("sft-lora.yaml")
    assert recipe_yaml(body) == recipe_yaml(json.loads(json.dumps(body)))
    assert yaml.safe_load(recipe_yaml(body)) == body
