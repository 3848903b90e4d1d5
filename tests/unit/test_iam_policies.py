"""The IAM policies under deploy/iam and the Kubernetes Role under deploy/k8s, checked.

- Every policy parses, is a valid policy document by moto's IAM validator (trust policies by its
  trust-policy validator), uses only known condition operators and documented placeholders.
- Every action exists: an operation of botocore's model for the service, or one of the few IAM
  actions that are not operations (listed below with their source).
- No ``"Resource": "*"`` except for actions that take no resource-level permission (listed).
- Coverage: every AWS call tuneloop makes (found by scanning the package, listed in `CALLS` with
  where it is made) is allowed to the identity that makes it, on the resource it names; and the
  policies refuse what lies outside the campaign's prefixes, jobs, role, function and app.
- The Role in deploy/k8s enforced on a Kubernetes API server (the fake one the HyperPod tests
  use, over HTTP, through the real kubernetes client) while the HyperPod backend runs an SFT and
  an RFT job through their lives: nothing it does is refused, and every rule is used.
- The guide (the README's "A first campaign on AWS") names every file, and its campaign passes the
  command it documents, `tuneloop campaign validate`, on both backends.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from fakes.kube_api import FakeKube, serving, status_body

ROOT = Path(__file__).resolve().parents[2]
IAM = ROOT / "deploy" / "iam"
RBAC = ROOT / "deploy" / "k8s" / "tuneloop-rbac.yaml"
PACKAGE = ROOT / "plugins" / "tuneloop"

SAMPLE = {
    "ACCOUNT_ID": "111122223333",
    "REGION": "us-east-1",
    "BUCKET": "acme-ml-artifacts",
    "PREFIX": "tuneloop",
    "DATA_BUCKET": "acme-ml-data",
    "DATA_PREFIX": "support",
    "JOB_PREFIX": "support-bot",
    "EXECUTION_ROLE": "SageMakerNovaTraining",
    "IMAGE_ACCOUNT": "708977205387",
    "CLUSTER_ID": "abcd1234efgh",
    "EKS_CLUSTER_NAME": "ml-hyperpod-eks",
    "NAMESPACE": "kubeflow",
    "REWARD_FUNCTION": "SageMaker-support-reward",
    "MLFLOW_APP": "app-support",
    "MLFLOW_BUCKET": "acme-mlflow",
    "MLFLOW_PREFIX": "artifacts",
    "VPC_ID": "vpc-0a1b2c3d4e5f67890",
    "AIRFLOW_PRINCIPAL": "arn:aws:iam::111122223333:role/airflow-mwaa",
}
PLACEHOLDER = re.compile(r"\$\{([A-Z_]+)\}")

# Who holds which policies.
WORKER = (
    "worker-s3.json",
    "worker-training-jobs.json",
    "worker-hyperpod.json",
    "worker-reward-lambda.json",
    "worker-mlflow.json",
)
OPERATOR = ("s3-archive-rule.json",)
SMTJ_ROLE = ("training-job-execution-role.json",)
SMTJ_VPC = ("training-job-execution-vpc.json",)
HYPERPOD_ROLE = ("hyperpod-execution-role.json",)
TRUST = ("training-job-execution-trust.json", "worker-trust.json")

# IAM action prefix -> botocore service whose operations are that prefix's actions.
BOTOCORE_SERVICE = {
    "s3": "s3",
    "sagemaker": "sagemaker",
    "logs": "logs",
    "eks": "eks",
    "lambda": "lambda",
    "iam": "iam",
    "ecr": "ecr",
    "cloudwatch": "cloudwatch",
    "sts": "sts",
    "ec2": "ec2",
}
# IAM actions that are no API operation of the same name, from the Service Authorization
# Reference (docs.aws.amazon.com/service-authorization/latest/reference/).
NOT_OPERATIONS = {
    # list_amazons3.html: ListObjectsV2 is authorized as s3:ListBucket, HeadObject as GetObject,
    # Get/PutBucketLifecycleConfiguration as s3:Get/PutLifecycleConfiguration.
    "s3:ListBucket",
    "s3:GetLifecycleConfiguration",
    "s3:PutLifecycleConfiguration",
    # list_awsidentityandaccessmanagementiam.html: PassRole has no API of its own.
    "iam:PassRole",
    # list_awslambda.html: the Invoke API is authorized as lambda:InvokeFunction.
    "lambda:InvokeFunction",
}
# list_amazonsagemakerwithmlflow.html: the MLflow REST API, one action per call.
MLFLOW_ACTIONS = {
    "AccessUI",
    "CreateExperiment",
    "CreateModelVersion",
    "CreateRegisteredModel",
    "CreateRun",
    "DeleteRegisteredModelAlias",
    "GetExperimentByName",
    "GetMetricHistory",
    "GetModelVersion",
    "GetModelVersionByAlias",
    "GetRegisteredModel",
    "GetRun",
    "LogBatch",
    "LogMetric",
    "LogParam",
    "SearchModelVersions",
    "SearchRuns",
    "SetRegisteredModelAlias",
    "SetTag",
    "UpdateRun",
}
# Actions that take no resource-level permission: the service accepts only "*".
STAR_ONLY = {
    "sagemaker:Search": "Search spans every SageMaker resource type; it has no resource type",
    "ecr:GetAuthorizationToken": "the registry login token is account-wide",
    "cloudwatch:PutMetricData": "metrics have no ARN; the statement is held to one namespace",
    "ec2:DescribeDhcpOptions": "EC2 Describe actions take no resource-level permission",
    "ec2:DescribeNetworkInterfaces": "EC2 Describe actions take no resource-level permission",
    "ec2:DescribeSecurityGroups": "EC2 Describe actions take no resource-level permission",
    "ec2:DescribeSubnets": "EC2 Describe actions take no resource-level permission",
    "ec2:DescribeVpcs": "EC2 Describe actions take no resource-level permission",
}
CONDITION_OPERATORS = {
    "StringEquals",
    "StringNotEquals",
    "StringLike",
    "StringNotLike",
    "ArnEquals",
    "ArnLike",
    "Bool",
}


def _text(name: str) -> str:
    return (IAM / name).read_text()


def _filled(text: str) -> str:
    return PLACEHOLDER.sub(lambda m: SAMPLE[m[1]], text)


def _policy(name: str) -> dict[str, Any]:
    return json.loads(_filled(_text(name)))


def _statements(names: Sequence[str]) -> list[dict[str, Any]]:
    return [s for name in names for s in _policy(name)["Statement"]]


def _listed(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _files() -> list[str]:
    return sorted(p.name for p in IAM.glob("*.json"))


# --- a small evaluator: Allow statements, actions, resources, the conditions used here ----------


def _condition_holds(condition: Mapping[str, Any], context: Mapping[str, str]) -> bool:
    for operator, tests in condition.items():
        assert operator in CONDITION_OPERATORS, operator
        for key, wanted in tests.items():
            if key not in context:
                return False
            value, patterns = context[key], _listed(wanted)
            if operator in ("StringEquals", "ArnEquals"):
                matched = value in patterns
            elif operator in ("StringLike", "ArnLike"):
                matched = any(fnmatch.fnmatchcase(value, p) for p in patterns)
            else:
                raise AssertionError(f"{operator} is not evaluated here")
            if not matched:
                return False
    return True


def allowed(
    statements: Sequence[Mapping[str, Any]],
    action: str,
    resource: str,
    context: Mapping[str, str] | None = None,
) -> bool:
    """IAM's rule for identity policies: some Allow matches and no Deny does."""
    verdict = False
    for statement in statements:
        actions = [a.lower() for a in _listed(statement["Action"])]
        if not any(fnmatch.fnmatchcase(action.lower(), a) for a in actions):
            continue
        if not any(fnmatch.fnmatchcase(resource, r) for r in _listed(statement["Resource"])):
            continue
        if not _condition_holds(statement.get("Condition", {}), context or {}):
            continue
        if statement["Effect"] == "Deny":
            return False
        verdict = True
    return verdict


# --- the documents -------------------------------------------------------------------------------


def test_every_policy_is_a_valid_document_by_moto() -> None:
    from moto.iam.policy_validation import (
        IAMPolicyDocumentValidator,
        IAMTrustPolicyDocumentValidator,
    )

    assert set(_files()) == set(WORKER + OPERATOR + SMTJ_ROLE + SMTJ_VPC + HYPERPOD_ROLE + TRUST)
    for name in _files():
        text = _filled(_text(name))
        validator = IAMTrustPolicyDocumentValidator if name in TRUST else IAMPolicyDocumentValidator
        validator(text).validate()
        document = json.loads(text)
        assert document["Version"] == "2012-10-17", name
        assert isinstance(document["Statement"], list) and document["Statement"], name
        sids = [s["Sid"] for s in document["Statement"]]
        assert len(set(sids)) == len(sids), f"{name}: Sids repeat"
        for statement in document["Statement"]:
            assert statement["Effect"] == "Allow", (name, statement["Sid"])
            assert "NotAction" not in statement and "NotResource" not in statement
            assert set(statement.get("Condition", {})) <= CONDITION_OPERATORS, name
            if name == "training-job-execution-trust.json":
                assert statement["Principal"] == {"Service": "sagemaker.amazonaws.com"}
                source = statement["Condition"]["StringEquals"]["aws:SourceAccount"]
                assert source == SAMPLE["ACCOUNT_ID"]
            if name == "worker-trust.json":
                assert statement["Principal"] == {"AWS": SAMPLE["AIRFLOW_PRINCIPAL"]}


def test_a_placeholder_left_in_is_refused_by_the_validator() -> None:
    from moto.iam.exceptions import MalformedPolicyDocument
    from moto.iam.policy_validation import IAMPolicyDocumentValidator

    broken = _policy("worker-s3.json")
    broken["Statement"][0]["Resource"] = "arn:aws:s3:::${BUCKET"
    broken["Statement"][0]["Effect"] = "Allowed"
    with pytest.raises(MalformedPolicyDocument):
        IAMPolicyDocumentValidator(json.dumps(broken)).validate()


def _readme_rows(section: str) -> list[list[str]]:
    text = (IAM / "README.md").read_text()
    body = text.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    return [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in body.splitlines()
        if line.startswith("| `")
    ]


def test_every_placeholder_and_file_is_documented_in_the_readme() -> None:
    documented = {m for row in _readme_rows("Placeholders") for m in PLACEHOLDER.findall(row[0])}
    used = {m for name in _files() for m in PLACEHOLDER.findall(_text(name))}
    used |= set(PLACEHOLDER.findall(RBAC.read_text()))
    assert used == documented == set(SAMPLE)
    rows = {row[0].strip("`"): row for row in _readme_rows("The files")}
    assert set(rows) == set(_files())
    for name, row in rows.items():
        listed = set(PLACEHOLDER.findall(row[3]))
        if listed:  # "as <other file>" otherwise
            assert listed == set(PLACEHOLDER.findall(_text(name))), name


def test_every_action_exists() -> None:
    import botocore.session

    session = botocore.session.get_session()
    operations = {
        prefix: set(session.get_service_model(service).operation_names)
        for prefix, service in BOTOCORE_SERVICE.items()
    }
    for name in _files():
        for statement in _policy(name)["Statement"]:
            for action in _listed(statement["Action"]):
                assert "*" not in action, f"{name}: {action}: name each action"
                prefix, _, operation = action.partition(":")
                if prefix == "sagemaker-mlflow":
                    assert operation in MLFLOW_ACTIONS, f"{name}: {action}"
                elif action not in NOT_OPERATIONS:
                    assert operation in operations[prefix], f"{name}: {action} is no operation"


def test_star_resources_only_where_the_service_takes_nothing_narrower() -> None:
    for name in _files():
        for statement in _policy(name)["Statement"]:
            if "Resource" not in statement:
                continue
            if "*" in _listed(statement["Resource"]):
                assert _listed(statement["Resource"]) == ["*"], name
                for action in _listed(statement["Action"]):
                    assert action in STAR_ONLY, f"{name}: {action} on '*'"
            for resource in _listed(statement["Resource"]):
                assert resource == "*" or resource.startswith("arn:aws:"), resource


def test_the_ecr_statement_covers_every_nova_image_and_region_account() -> None:
    from tuneloop.recipes import catalog

    repositories = set()
    for model_type in catalog.MODELS:
        for method in [*catalog.Method, None]:
            for platform in (catalog.Platform.SMTJ, catalog.Platform.HYPERPOD):
                try:
                    image = catalog.container_image(model_type, method, platform, "us-east-1")
                except catalog.CatalogError:
                    continue
                repositories.add(image.split("/", 1)[1].split(":")[0])
    repositories |= {i.split(":")[0] for i in catalog.RFT_HYPERPOD_SIDECAR_IMAGES.values()}
    assert repositories
    readme = (IAM / "README.md").read_text()
    for region, account in catalog.IMAGE_ACCOUNTS.items():
        assert f"`{account}` ({region})" in readme
    for role in (SMTJ_ROLE, HYPERPOD_ROLE):
        statements = _statements(role)
        for repository in repositories:
            arn = f"arn:aws:ecr:us-east-1:708977205387:repository/{repository}"
            for action in ("ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"):
                assert allowed(statements, action, arn), (role, repository)


def test_job_prefix_is_how_every_job_name_begins() -> None:
    from tuneloop.jobs.base import job_name

    assert job_name("support-bot", 12, "rft", {"a": 1}).startswith(SAMPLE["JOB_PREFIX"])
    assert job_name("Support_Bot", 1, "sft", {}).startswith("support-bot")
    long = "a" * 60
    assert job_name(long, 1, "sft", {}).startswith("a" * 37)
    assert not job_name(long, 1, "sft", {}).startswith("a" * 38)


# --- coverage: every AWS call the code makes --------------------------------------------------

OUT = f"arn:aws:s3:::{SAMPLE['BUCKET']}/{SAMPLE['PREFIX']}"
DATA = f"arn:aws:s3:::{SAMPLE['DATA_BUCKET']}/{SAMPLE['DATA_PREFIX']}"
OUT_BUCKET = f"arn:aws:s3:::{SAMPLE['BUCKET']}"
DATA_BUCKET = f"arn:aws:s3:::{SAMPLE['DATA_BUCKET']}"
AT = f"{SAMPLE['REGION']}:{SAMPLE['ACCOUNT_ID']}"
JOB = f"arn:aws:sagemaker:{AT}:training-job/support-bot-r3-sft-0a1b2c3d4e"
LOG_GROUP = f"arn:aws:logs:{AT}:log-group:/aws/sagemaker/TrainingJobs"
REWARD = f"arn:aws:lambda:{AT}:function:{SAMPLE['REWARD_FUNCTION']}"
APP = f"arn:aws:sagemaker:{AT}:mlflow-app/{SAMPLE['MLFLOW_APP']}"
ARTIFACTS = f"arn:aws:s3:::{SAMPLE['MLFLOW_BUCKET']}/{SAMPLE['MLFLOW_PREFIX']}"
ROLE = f"arn:aws:iam::{SAMPLE['ACCOUNT_ID']}:role/{SAMPLE['EXECUTION_ROLE']}"
LEDGER = f"{OUT}/support-bot/rounds/0003.json"
STAGE_OBJECT = f"{OUT}/support-bot/rounds/0001/support-bot-r1-sft-0a1b2c3d4e/output/output.tar.gz"


def _listing(prefix: str) -> dict[str, str]:
    return {"s3:prefix": prefix}


@dataclass(frozen=True)
class Call:
    """One AWS API call of the code: the operation, where it is made, the IAM actions it needs
    and the resource (and condition context) they are asked for."""

    service: str
    operation: str
    where: str
    needs: tuple[tuple[str, str, Mapping[str, str]], ...]
    who: tuple[str, ...] = WORKER


def _needs(*items: tuple[str, str] | tuple[str, str, Mapping[str, str]]) -> tuple[Any, ...]:
    return tuple((i[0], i[1], i[2] if len(i) == 3 else {}) for i in items)


CALLS = [
    # tuneloop.storage: the ledger, reports, manifests, results; data/reader.py: datasets.
    Call(
        "s3",
        "GetObject",
        "storage.read_text, read_if_exists, open_binary, tar_members",
        _needs(("s3:GetObject", LEDGER)),
    ),
    Call(
        "s3",
        "GetObject",
        "data/reader.py (dataset validation)",
        _needs(("s3:GetObject", f"{DATA}/2026-11-23/sft-train.jsonl")),
    ),
    Call("s3", "HeadObject", "storage.exists", _needs(("s3:GetObject", LEDGER))),
    Call(
        "s3",
        "ListObjectsV2",
        "storage.list_names (ledger), artifacts/evaluation.py, artifacts/series.py",
        _needs(("s3:ListBucket", OUT_BUCKET, _listing("tuneloop/support-bot/rounds/"))),
    ),
    Call(
        "s3",
        "ListObjectsV2",
        "data sets: a missing file is reported as missing, not as refused",
        _needs(("s3:ListBucket", DATA_BUCKET, _listing("support/2026-11-23/sft-train.jsonl"))),
    ),
    Call(
        "s3",
        "PutObject",
        "storage.write_once (If-None-Match), its probe; jobs/smtj.py recipe upload",
        _needs(("s3:PutObject", LEDGER)),
    ),
    Call("s3", "DeleteObject", "storage._remove_probe", _needs(("s3:DeleteObject", LEDGER))),
    # tuneloop.lifecycle.objects and pipeline/restore.py: archive, restore, delete.
    Call(
        "s3",
        "HeadObject",
        "lifecycle/objects._head_response, pipeline/restore.py",
        _needs(("s3:GetObject", STAGE_OBJECT)),
    ),
    Call(
        "s3",
        "ListObjectsV2",
        "lifecycle/objects.list_objects",
        _needs(("s3:ListBucket", OUT_BUCKET, _listing("tuneloop/support-bot/rounds/0001/"))),
    ),
    Call(
        "s3",
        "CopyObject",
        "lifecycle/objects._copy_whole (TaggingDirective COPY)",
        _needs(
            ("s3:GetObject", STAGE_OBJECT),
            ("s3:PutObject", STAGE_OBJECT),
            ("s3:GetObjectTagging", STAGE_OBJECT),
            ("s3:PutObjectTagging", STAGE_OBJECT),
        ),
    ),
    Call(
        "s3", "GetObjectTagging", "lifecycle/objects", _needs(("s3:GetObjectTagging", STAGE_OBJECT))
    ),
    Call(
        "s3",
        "CreateMultipartUpload",
        "lifecycle/objects._copy_multipart (with the source's tags)",
        _needs(("s3:PutObject", STAGE_OBJECT), ("s3:PutObjectTagging", STAGE_OBJECT)),
    ),
    Call(
        "s3",
        "UploadPartCopy",
        "lifecycle/objects._copy_part",
        _needs(("s3:GetObject", STAGE_OBJECT), ("s3:PutObject", STAGE_OBJECT)),
    ),
    Call(
        "s3",
        "CompleteMultipartUpload",
        "lifecycle/objects._copy_multipart",
        _needs(("s3:PutObject", STAGE_OBJECT)),
    ),
    Call(
        "s3",
        "AbortMultipartUpload",
        "lifecycle/objects._abort",
        _needs(("s3:AbortMultipartUpload", STAGE_OBJECT)),
    ),
    Call(
        "s3",
        "PutObjectTagging",
        "lifecycle/objects.tag_for_archive",
        _needs(("s3:PutObjectTagging", STAGE_OBJECT)),
    ),
    Call(
        "s3",
        "RestoreObject",
        "lifecycle/objects.request_restore",
        _needs(("s3:RestoreObject", STAGE_OBJECT)),
    ),
    Call(
        "s3",
        "DeleteObject",
        "lifecycle/objects.delete_object",
        _needs(("s3:DeleteObject", STAGE_OBJECT)),
    ),
    Call(
        "s3",
        "GetBucketLifecycleConfiguration",
        "lifecycle/objects.apply_policy (tuneloop lifecycle apply-policy)",
        _needs(("s3:GetLifecycleConfiguration", OUT_BUCKET)),
        who=OPERATOR,
    ),
    Call(
        "s3",
        "PutBucketLifecycleConfiguration",
        "lifecycle/objects.apply_policy (tuneloop lifecycle apply-policy)",
        _needs(("s3:PutLifecycleConfiguration", OUT_BUCKET)),
        who=OPERATOR,
    ),
    # jobs/smtj.py: SageMaker training jobs.
    Call(
        "sagemaker",
        "CreateTrainingJob",
        "jobs/smtj.py submit (Tags, RoleArn)",
        _needs(
            ("sagemaker:CreateTrainingJob", JOB),
            ("sagemaker:AddTags", JOB),
            ("iam:PassRole", ROLE, {"iam:PassedToService": "sagemaker.amazonaws.com"}),
        ),
    ),
    Call(
        "sagemaker",
        "DescribeTrainingJob",
        "jobs/smtj.py _describe",
        _needs(("sagemaker:DescribeTrainingJob", JOB)),
    ),
    Call(
        "sagemaker",
        "StopTrainingJob",
        "jobs/smtj.py cancel",
        _needs(("sagemaker:StopTrainingJob", JOB)),
    ),
    Call("sagemaker", "Search", "jobs/smtj.py find", _needs(("sagemaker:Search", "*"))),
    Call(
        "logs",
        "DescribeLogStreams",
        "jobs/smtj.py _log_streams",
        _needs(("logs:DescribeLogStreams", LOG_GROUP)),
    ),
    Call(
        "logs",
        "GetLogEvents",
        "jobs/smtj.py logs",
        _needs(
            (
                "logs:GetLogEvents",
                f"{LOG_GROUP}:log-stream:support-bot-r3-sft-0a1b2c3d4e/algo-1-1764979200",
            )
        ),
    ),
    # jobs/hyperpod.py: the EKS cluster behind the HyperPod cluster.
    Call(
        "sagemaker",
        "DescribeCluster",
        "jobs/hyperpod.py _eks_cluster_name",
        _needs(
            ("sagemaker:DescribeCluster", f"arn:aws:sagemaker:{AT}:cluster/{SAMPLE['CLUSTER_ID']}")
        ),
    ),
    Call(
        "eks",
        "DescribeCluster",
        "jobs/hyperpod.py _client_from_eks",
        _needs(("eks:DescribeCluster", f"arn:aws:eks:{AT}:cluster/{SAMPLE['EKS_CLUSTER_NAME']}")),
    ),
    # pipeline/reward_lambda.py and cli/reward.py: LambdaHook.invoke_lambda.
    Call(
        "lambda",
        "Invoke",
        "pipeline/reward_lambda.py lambda_invoker",
        _needs(("lambda:InvokeFunction", REWARD)),
    ),
]
# tracking/mirror.py, tracking/job_runs.py, web/runs.py: MlflowClient calls and their actions.
MLFLOW_CALLS = {
    "get_experiment_by_name": "GetExperimentByName",
    "create_experiment": "CreateExperiment",
    "create_run": "CreateRun",
    "get_run": "GetRun",
    "search_runs": "SearchRuns",
    "update_run": "UpdateRun",
    "set_terminated": "UpdateRun",
    "set_tag": "SetTag",
    "log_batch": "LogBatch",
    "get_metric_history": "GetMetricHistory",
    "create_registered_model": "CreateRegisteredModel",
    "get_registered_model": "GetRegisteredModel",
    "create_model_version": "CreateModelVersion",  # then GetModelVersion until it is READY
    "search_model_versions": "SearchModelVersions",
    "get_model_version_by_alias": "GetModelVersionByAlias",
    "set_registered_model_alias": "SetRegisteredModelAlias",
    "delete_registered_model_alias": "DeleteRegisteredModelAlias",
}
# Calls that need no permission: sts:GetCallerIdentity is always allowed (jobs/hyperpod.py asks
# it for the account; the EKS token is a presigned GetCallerIdentity URL, hyperpod.eks_token).
NO_PERMISSION = {("sts", "GetCallerIdentity")}
# What the training job and the HyperPod pods do under their execution role.
EXECUTION_NEEDS = _needs(
    ("s3:GetObject", f"{DATA}/2026-11-23/sft-train.jsonl"),
    ("s3:ListBucket", DATA_BUCKET, _listing("support/2026-11-23/")),
    (
        "s3:GetObject",
        f"{OUT}/support-bot/rounds/0001/support-bot-r1-sft-0a1b2c3d4e/recipe/recipe.yaml",
    ),
    ("s3:PutObject", STAGE_OBJECT),
    ("s3:ListBucket", OUT_BUCKET, _listing("tuneloop/support-bot/rounds/0001/")),
    ("ecr:GetAuthorizationToken", "*"),
    ("lambda:InvokeFunction", REWARD),
    ("lambda:InvokeFunction", f"{REWARD}:$LATEST"),
    ("sagemaker-mlflow:LogBatch", APP),
    ("sagemaker-mlflow:CreateRun", APP),
)
SMTJ_ONLY_NEEDS = _needs(
    ("logs:CreateLogStream", f"{LOG_GROUP}:log-stream:support-bot-r1-sft-0a1b2c3d4e/algo-1"),
    ("logs:PutLogEvents", f"{LOG_GROUP}:log-stream:support-bot-r1-sft-0a1b2c3d4e/algo-1"),
    ("logs:CreateLogGroup", LOG_GROUP),
    ("cloudwatch:PutMetricData", "*", {"cloudwatch:namespace": "/aws/sagemaker/TrainingJobs"}),
)


@functools.cache
def _calls_in_code() -> frozenset[tuple[str, str]]:
    """(service, Operation) of every AWS call in the package, by the forms the code uses."""
    import botocore.session
    from botocore import xform_name

    session = botocore.session.get_session()
    snake = {
        service: {xform_name(op): op for op in session.get_service_model(service).operation_names}
        for service in ("s3", "sagemaker", "logs", "eks", "lambda", "sts")
    }
    found: set[tuple[str, str]] = set()
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        # Names bound to boto3 clients in this file: `x = s3_client()`, `x = aws.client("svc"`.
        clients = {
            m[1]: "s3" for m in re.finditer(r"(\w+) = (?:storage\.)?s3_client\(\)$", text, re.M)
        }
        clients.update(re.findall(r"(\w+) = aws\.client\(\s*\"(\w+)\"", text))
        names = "|".join(map(re.escape, clients))
        receiver = r"s3_client\(\)|self\._client\(\"(?P<svc>\w+)\"\)" + (
            f"|{names}" if names else ""
        )
        for match in re.finditer(rf"(?<![\w.])(?P<rx>{receiver})\.(?P<op>\w+)\(", text):
            service = match["svc"] or clients.get(match["rx"], "s3")
            name = match["op"]
            if name == "get_paginator":
                paginated = re.match(r"get_paginator\(\"(\w+)\"\)", text[match.start("op") :])
                assert paginated is not None
                name = paginated[1]
            if service not in snake:
                raise AssertionError(f"{path}: a {service} client: add its calls to CALLS")
            if name in snake[service]:
                found.add((service, snake[service][name]))
            elif name != "meta":
                raise AssertionError(f"{path}: {match[0]} is no {service} operation")
        # self._call(name, "Operation"[, "service"]) in jobs/smtj.py
        # (jobs/hyperpod.py has a _call too, whose second argument is a Kubernetes kind)
        for match in re.finditer(r"self\._call\(\s*[^,]+,\s*\"(\w+)\"(?:,\s*\"(\w+)\")?", text):
            service = match[2] or "sagemaker"
            if match[1] in snake[service].values():
                found.add((service, match[1]))
        if "invoke_lambda(" in text:  # the provider's LambdaHook: Lambda's Invoke
            found.add(("lambda", "Invoke"))
        if "eks_token(" in text:  # a presigned GetCallerIdentity
            found.add(("sts", "GetCallerIdentity"))
    return frozenset(found)


def test_the_scan_finds_the_calls_it_should() -> None:
    found = _calls_in_code()
    # Each form the scan reads, seen at least once (a scan that finds nothing proves nothing).
    for call in [
        ("s3", "ListObjectsV2"),  # get_paginator
        ("s3", "CopyObject"),  # s3_client().op(
        ("s3", "GetObjectTagging"),  # client.op(
        ("sagemaker", "Search"),  # self._call(..., "Search")
        ("logs", "GetLogEvents"),  # self._call(..., "GetLogEvents", "logs")
        ("logs", "DescribeLogStreams"),  # self._client("logs").get_paginator
        ("eks", "DescribeCluster"),
        ("sagemaker", "DescribeCluster"),
        ("lambda", "Invoke"),
        ("sts", "GetCallerIdentity"),
    ]:
        assert call in found, call


def test_every_aws_call_in_the_code_is_listed() -> None:
    listed = {(c.service, c.operation) for c in CALLS} | NO_PERMISSION
    missing = _calls_in_code() - listed
    assert not missing, f"AWS calls with no entry in CALLS (add them and their actions): {missing}"


@pytest.mark.parametrize("call", CALLS, ids=lambda c: f"{c.service}:{c.operation}:{c.where[:30]}")
def test_every_listed_call_is_allowed(call: Call) -> None:
    statements = _statements(call.who)
    for action, resource, context in call.needs:
        assert allowed(statements, action, resource, context), (call.where, action, resource)


def test_every_mlflow_call_is_allowed_on_the_app() -> None:
    statements = _statements(("worker-mlflow.json",))
    used = set()
    for path in (PACKAGE / "tracking", PACKAGE / "web"):
        for file in path.glob("*.py"):
            used |= set(re.findall(r"client(?:\(\))?\.(\w+)\(", file.read_text()))
    used -= {"log_artifact", "log_artifacts"}  # straight to S3, below
    assert "log_batch" in used
    assert used <= set(MLFLOW_CALLS), (
        f"MlflowClient calls with no action: {used - set(MLFLOW_CALLS)}"
    )
    for name in used:
        assert allowed(statements, f"sagemaker-mlflow:{MLFLOW_CALLS[name]}", APP), name
    assert allowed(statements, "sagemaker-mlflow:GetModelVersion", APP)
    assert allowed(statements, "s3:PutObject", f"{ARTIFACTS}/3/abc/artifacts/round.json")
    assert allowed(
        statements,
        "s3:ListBucket",
        f"arn:aws:s3:::{SAMPLE['MLFLOW_BUCKET']}",
        _listing("artifacts/3/"),
    )


@pytest.mark.parametrize("role", [SMTJ_ROLE, HYPERPOD_ROLE], ids=["smtj", "hyperpod"])
def test_the_execution_roles_allow_what_the_jobs_do(role: tuple[str, ...]) -> None:
    statements = _statements(role)
    needs = EXECUTION_NEEDS + (SMTJ_ONLY_NEEDS if role == SMTJ_ROLE else ())
    for action, resource, context in needs:
        assert allowed(statements, action, resource, context), (role, action, resource)


# --- least privilege: what lies outside is refused ---------------------------------------------


def test_the_worker_policies_refuse_what_lies_outside_the_campaign() -> None:
    worker = _statements(WORKER)
    refused = [
        ("s3:GetObject", f"{OUT_BUCKET}/other/rounds/0001.json", {}),
        ("s3:PutObject", f"{DATA}/2026-11-23/sft-train.jsonl", {}),
        ("s3:DeleteObject", f"{DATA}/2026-11-23/sft-train.jsonl", {}),
        ("s3:ListBucket", OUT_BUCKET, _listing("other/")),
        ("s3:ListBucket", OUT_BUCKET, {}),  # the whole bucket: no prefix given
        ("s3:ListBucket", OUT_BUCKET, _listing("tuneloop-other/")),
        ("s3:PutLifecycleConfiguration", OUT_BUCKET, {}),
        ("s3:DeleteBucket", OUT_BUCKET, {}),
        ("sagemaker:CreateTrainingJob", f"arn:aws:sagemaker:{AT}:training-job/other-r1-sft-0", {}),
        ("sagemaker:DeleteCluster", f"arn:aws:sagemaker:{AT}:cluster/{SAMPLE['CLUSTER_ID']}", {}),
        ("iam:PassRole", ROLE, {"iam:PassedToService": "ec2.amazonaws.com"}),
        ("iam:PassRole", ROLE, {}),
        (
            "iam:PassRole",
            f"arn:aws:iam::{SAMPLE['ACCOUNT_ID']}:role/Admin",
            {"iam:PassedToService": "sagemaker.amazonaws.com"},
        ),
        ("lambda:InvokeFunction", f"arn:aws:lambda:{AT}:function:other", {}),
        ("lambda:UpdateFunctionCode", REWARD, {}),
        ("sagemaker-mlflow:CreateRun", f"arn:aws:sagemaker:{AT}:mlflow-app/other", {}),
        ("sagemaker-mlflow:DeleteExperiment", APP, {}),
        ("logs:GetLogEvents", f"arn:aws:logs:{AT}:log-group:/aws/lambda/other:log-stream:x", {}),
        ("eks:DescribeCluster", f"arn:aws:eks:{AT}:cluster/other", {}),
    ]
    for action, resource, context in refused:
        assert not allowed(worker, action, resource, context), (action, resource, context)


def test_the_vpc_policy_attaches_interfaces_in_the_campaign_vpc_only() -> None:
    statements = _statements(SMTJ_VPC)
    vpc = {"ec2:Vpc": f"arn:aws:ec2:{AT}:vpc/{SAMPLE['VPC_ID']}"}
    subnet = f"arn:aws:ec2:{AT}:subnet/subnet-0123456789abcdef0"
    interface = f"arn:aws:ec2:{AT}:network-interface/eni-0123456789abcdef0"
    assert allowed(statements, "ec2:CreateNetworkInterface", subnet, vpc)
    assert allowed(statements, "ec2:CreateNetworkInterfacePermission", interface, vpc)
    assert allowed(statements, "ec2:DeleteNetworkInterface", interface, vpc)
    assert allowed(statements, "ec2:DescribeSubnets", "*")
    other = {"ec2:Vpc": f"arn:aws:ec2:{AT}:vpc/vpc-other"}
    assert not allowed(statements, "ec2:CreateNetworkInterface", subnet, other)
    assert not allowed(statements, "ec2:CreateNetworkInterface", subnet)
    assert not allowed(statements, "ec2:RunInstances", subnet, vpc)


def test_the_execution_roles_never_write_the_data_or_other_prefixes() -> None:
    for role in (SMTJ_ROLE, HYPERPOD_ROLE):
        statements = _statements(role)
        assert not allowed(statements, "s3:PutObject", f"{DATA}/x.jsonl")
        assert not allowed(statements, "s3:GetObject", f"{OUT_BUCKET}/other/x")
        assert not allowed(statements, "s3:DeleteObject", STAGE_OBJECT)
        assert not allowed(statements, "lambda:InvokeFunction", f"arn:aws:lambda:{AT}:function:x")
    smtj = _statements(SMTJ_ROLE)
    assert not allowed(smtj, "cloudwatch:PutMetricData", "*", {"cloudwatch:namespace": "Other"})


# --- the Kubernetes Role, enforced --------------------------------------------------------------


def _rbac() -> tuple[dict[str, Any], dict[str, Any]]:
    text = RBAC.read_text().replace("${NAMESPACE}", SAMPLE["NAMESPACE"])
    role, binding = list(yaml.safe_load_all(text))
    return role, binding


def test_the_role_binding_binds_the_access_entry_group_to_the_role() -> None:
    role, binding = _rbac()
    assert role["kind"] == "Role" and binding["kind"] == "RoleBinding"
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "kubeflow"
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "tuneloop-jobs"}
    ]
    assert "--kubernetes-groups tuneloop-jobs" in guide_text()


_PATH = re.compile(
    r"^/(?:api/v1|apis/(?P<group>[^/]+)/[^/]+)/namespaces/[^/]+/(?P<plural>[^/]+)"
    r"(?:/(?P<name>[^/]+)(?:/(?P<sub>log))?)?$"
)


class RbacKube(FakeKube):
    """The fake API server, refusing (403) whatever the Role does not grant, and noting each
    (group, resource, verb) it was asked for."""

    def __init__(self, rules: list[dict[str, Any]]) -> None:
        super().__init__()
        self.rules = rules
        self.asked: set[tuple[str, str, str]] = set()
        self.refused: list[tuple[str, str, str]] = []

    def handle(
        self, method: str, path: str, query: dict[str, str], body: dict | None
    ) -> tuple[int, Any]:
        match = _PATH.match(path)
        if match is not None:
            resource = match["plural"] + (f"/{match['sub']}" if match["sub"] else "")
            verb = {"POST": "create", "DELETE": "delete", "PUT": "update", "PATCH": "patch"}.get(
                method, "get" if match["name"] else "list"
            )
            request = (match["group"] or "", resource, verb)
            self.asked.add(request)
            if not any(
                request[0] in rule["apiGroups"]
                and resource in rule["resources"]
                and verb in rule["verbs"]
                for rule in self.rules
            ):
                self.refused.append(request)
                return 403, status_body(403, "Forbidden", f"{verb} {resource} is not granted")
        return super().handle(method, path, query, body)


@pytest.fixture
def rbac_kube(tmp_path: Path) -> Iterator[RbacKube]:
    role, _ = _rbac()
    with serving(RbacKube(role["rules"]), tmp_path / "kubeconfig") as kube:
        yield kube


def test_the_role_grants_exactly_what_the_hyperpod_backend_does(rbac_kube: RbacKube) -> None:
    from tuneloop.jobs.base import JobKind, JobSpec, JobState
    from tuneloop.jobs.hyperpod import HyperPodJobBackend
    from tuneloop.recipes.catalog import Platform
    from tuneloop.recipes.render import render_recipe
    from tuneloop.recipes.rules import RecipeContext

    kube = rbac_kube
    backend = HyperPodJobBackend(
        cluster="nova-hp", region="us-east-1", kubeconfig=str(kube.kubeconfig), log_lines=5
    )
    recipes = ROOT / "recipes" / "nova" / "nova-2-lite"
    context = RecipeContext(platform=Platform.HYPERPOD, template=True)

    def spec(name: str, method: str, template: str, **overrides: Any) -> JobSpec:
        recipe = render_recipe(recipes / template, overrides, context=context).data
        inputs = {"train": "s3://acme-ml-data/support/train.jsonl"}
        if method == "rft":
            inputs["reward"] = "arn:aws:lambda:us-east-1:111122223333:function:SageMaker-r"
        return JobSpec(
            name=name,
            kind=JobKind.TRAIN,
            method=method,
            recipe=recipe,
            inputs=inputs,
            output_uri="s3://acme-ml-artifacts/tuneloop/support-bot/rounds/0001",
            labels={"campaign": "support-bot", "round": "1", "stage": method},
        )

    # SFT: submit (twice: the second finds it), watch a crash loop with logs, cancel.
    sft = spec("support-bot-r1-sft-0a1b2c3d4e", "sft", "sft-full.yaml", **{"run.replicas": 4})
    backend.submit(sft)
    backend.submit(sft)
    kube.add_pod(f"{sft.name}-master-0", job=sft.name)
    kube.write_log(f"{sft.name}-master-0", "step 1", "CUDA error")
    kube.restart_container(f"{sft.name}-master-0")
    kube.write_log(f"{sft.name}-master-0", "step 1")
    kube.set_container_state(
        f"{sft.name}-master-0", waiting=("CrashLoopBackOff", ""), restart_count=9
    )
    kube.set_job_conditions(sft.name, ["Created", "Running"])
    assert backend.status(sft.name).state is JobState.FAILED
    assert backend.logs(sft.name).lines == ["step 1"]
    assert [s.name for s in backend.find({"campaign": "support-bot"})] == [sft.name]
    assert backend.cancel(sft.name).state is JobState.STOPPED

    # RFT: its side workloads are created, released when it finishes, deleted on cancel.
    rft_overrides = {
        "run.replicas": 2,
        "run.generation_replicas": 3,
        "run.rollout_worker_replicas": 2,
    }
    finished = spec("support-bot-r1-rft-0a1b2c3d4e", "rft", "rft-full.yaml", **rft_overrides)
    running = spec("support-bot-r2-rft-0a1b2c3d4e", "rft", "rft-full.yaml", **rft_overrides)
    backend.submit(finished)
    backend.submit(running)
    assert kube.created("statefulsets") and kube.created("deployments")
    kube.set_job_conditions(finished.name, ["Created", "Running", "Succeeded"])
    assert backend.status(finished.name).state is JobState.SUCCEEDED
    kube.set_job_conditions(running.name, ["Created", "Running"])
    assert backend.cancel(running.name).state is JobState.STOPPED
    assert kube.objects("statefulsets") == [] and kube.objects("deployments") == []

    assert kube.refused == []
    granted = {
        (group, resource, verb)
        for rule in _rbac()[0]["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert granted == kube.asked, f"granted but unused: {granted - kube.asked}"


def test_the_role_refuses_what_it_does_not_grant(rbac_kube: RbacKube) -> None:
    from tuneloop.jobs.base import UserJobError
    from tuneloop.jobs.hyperpod import HyperPodJobBackend

    # A Role without pytorchjobs create: the backend says which RBAC it needs.
    rbac_kube.rules = [r for r in rbac_kube.rules if "pytorchjobs" not in r["resources"]]
    backend = HyperPodJobBackend(
        cluster="nova-hp", region="us-east-1", kubeconfig=str(rbac_kube.kubeconfig)
    )
    with pytest.raises(UserJobError, match=r"pytorchjobs\.kubeflow\.org"):
        backend.status("support-bot-r1-sft-0a1b2c3d4e")
    assert rbac_kube.refused == [("kubeflow.org", "pytorchjobs", "get")]


# --- the guide ----------------------------------------------------------------------------------

GUIDE_HEADING = "## A first campaign on AWS\n"


def guide_text() -> str:
    """The README's guide: its section, up to the next section."""
    readme = (ROOT / "README.md").read_text()
    start = readme.index(GUIDE_HEADING)
    end = readme.find("\n## ", start + len(GUIDE_HEADING))
    return readme[start : end if end >= 0 else None]


def _yaml_blocks() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", guide_text(), re.S)


def test_the_guide_names_every_policy_file() -> None:
    text = guide_text()
    for name in _files():
        assert Path(name).stem in text, name
    assert "deploy/k8s/tuneloop-rbac.yaml" in text


@pytest.mark.parametrize("backend", ["hyperpod", "smtj"])
def test_the_guides_campaign_validates_with_the_documented_command(
    backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tuneloop.cli.main import main

    campaign, smtj_backend = _yaml_blocks()
    document = yaml.safe_load(campaign)
    if backend == "smtj":
        document["backend"] = yaml.safe_load(smtj_backend)["backend"]
        assert "`training_config.global_batch_size: 128`" in guide_text()
        document["stages"][1]["overrides"] = {"training_config.global_batch_size": 128}
    path = tmp_path / "support-bot.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))

    assert main(["campaign", "validate", str(path), "--offline", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "DAG tuneloop_support_bot" in out
    assert "s3://acme-ml-artifacts/tuneloop/support-bot/rounds/0001/" in out
    # The campaign's names are the sample values the policies are checked with.
    assert document["name"] == SAMPLE["JOB_PREFIX"]
    assert f"function:{SAMPLE['REWARD_FUNCTION']}" in campaign
    assert f"mlflow-app/{SAMPLE['MLFLOW_APP']}" in campaign
