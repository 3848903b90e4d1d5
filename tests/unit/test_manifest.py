"""Reading a finished job's manifest.json and the checkpoint.json written beside it."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from tuneloop.errors import ModelConfigNotFoundError
from tuneloop.manifest import (
    CHECKPOINT_RECORD,
    MANIFEST,
    Checkpoint,
    read_checkpoint,
    read_checkpoint_uri,
)
from tuneloop.recipes.catalog import Method, Platform, Technique

ESCROW_URI = "s3://customer-escrow-123456789012-hp-abc123/my-sft-run-x1y2z/step100"


@pytest.fixture
def job_folder(tmp_path):
    folder = tmp_path / "outputs" / "my-sft-run-x1y2z"
    folder.mkdir(parents=True)
    return folder


def write_manifest(folder, content):
    text = content if isinstance(content, str) else json.dumps(content)
    (folder / MANIFEST).write_text(text, encoding="utf-8")


def test_valid_manifest_returns_checkpoint_uri(job_folder):
    write_manifest(job_folder, {"checkpoint_s3_bucket": ESCROW_URI, "other": 1})
    assert read_checkpoint_uri(str(job_folder)) == ESCROW_URI
    assert read_checkpoint_uri(str(job_folder) + "/") == ESCROW_URI
    assert read_checkpoint_uri(str(job_folder / MANIFEST)) == ESCROW_URI
    assert read_checkpoint_uri(f"file://{job_folder}") == ESCROW_URI


def test_missing_manifest_raises_model_config_not_found(job_folder):
    with pytest.raises(ModelConfigNotFoundError) as info:
        read_checkpoint_uri(str(job_folder))
    [problem] = info.value.problems
    assert problem.message.startswith("Model config not found")
    assert str(job_folder / MANIFEST) in problem.message
    assert problem.path == "base_checkpoint"
    assert "manifest.json" in problem.fix


def test_missing_folder_raises_model_config_not_found(tmp_path):
    with pytest.raises(ModelConfigNotFoundError, match="Model config not found"):
        read_checkpoint_uri(str(tmp_path / "never-ran"), path="stages.sft.base")


def test_error_path_is_the_callers(job_folder):
    with pytest.raises(ModelConfigNotFoundError) as info:
        read_checkpoint_uri(str(job_folder), path="stages[0].base_checkpoint")
    assert info.value.problems[0].path == "stages[0].base_checkpoint"


@pytest.mark.parametrize(
    "content",
    [
        {},
        {"checkpoint_s3_bucket": ""},
        {"checkpoint_s3_bucket": None},
        {"checkpoint_s3_path": ESCROW_URI},
        [ESCROW_URI],
    ],
)
def test_manifest_without_checkpoint_uri_raises(job_folder, content):
    write_manifest(job_folder, content)
    with pytest.raises(ModelConfigNotFoundError) as info:
        read_checkpoint_uri(str(job_folder))
    [problem] = info.value.problems
    assert "Model config not found" in problem.message
    assert "has no checkpoint_s3_bucket" in problem.message
    assert problem.fix


def test_manifest_that_is_not_json_raises(job_folder):
    write_manifest(job_folder, "{not json")
    with pytest.raises(ModelConfigNotFoundError, match="is not valid JSON"):
        read_checkpoint_uri(str(job_folder))


def test_read_checkpoint_reads_record_beside_manifest(job_folder):
    write_manifest(job_folder, {"checkpoint_s3_bucket": ESCROW_URI})
    record = {
        "model_type": "amazon.nova-2-lite-v1:0:256k",
        "technique": "lora",
        "platform": "hyperpod",
        "lineage": ["sft", "rft"],
    }
    (job_folder / CHECKPOINT_RECORD).write_text(json.dumps(record), encoding="utf-8")

    checkpoint = read_checkpoint(str(job_folder))
    assert checkpoint == Checkpoint(
        uri=ESCROW_URI,
        model_type="amazon.nova-2-lite-v1:0:256k",
        technique=Technique.LORA,
        platform=Platform.HYPERPOD,
        lineage=(Method.SFT, Method.RFT),
        output_uri=str(job_folder),
    )
    assert checkpoint.origin is Method.SFT
    # Pointing at the manifest itself finds the same record.
    assert read_checkpoint(str(job_folder / MANIFEST)) == checkpoint


def test_manifest_uri_wins_over_record(job_folder):
    write_manifest(job_folder, {"checkpoint_s3_bucket": ESCROW_URI})
    record = {
        "uri": "s3://stale",
        "model_type": "m",
        "technique": "full",
        "platform": "smtj",
        "output_uri": "s3://out/job",
    }
    (job_folder / CHECKPOINT_RECORD).write_text(json.dumps(record), encoding="utf-8")
    checkpoint = read_checkpoint(str(job_folder))
    assert checkpoint.uri == ESCROW_URI
    assert checkpoint.output_uri == "s3://out/job"
    assert checkpoint.origin is None


def test_read_checkpoint_without_record_returns_none(job_folder):
    write_manifest(job_folder, {"checkpoint_s3_bucket": ESCROW_URI})
    assert read_checkpoint(str(job_folder)) is None


def test_read_checkpoint_needs_the_manifest(job_folder):
    (job_folder / CHECKPOINT_RECORD).write_text("{}", encoding="utf-8")
    with pytest.raises(ModelConfigNotFoundError):
        read_checkpoint(str(job_folder))


def test_checkpoint_is_frozen_and_strict():
    checkpoint = Checkpoint(uri="s3://x", model_type="m", technique="full", platform="smtj")
    assert checkpoint.technique is Technique.FULL and checkpoint.platform is Platform.SMTJ
    with pytest.raises(ValidationError):
        checkpoint.uri = "s3://y"
    with pytest.raises(ValidationError):
        Checkpoint(uri="s3://x", model_type="m", technique="qlora", platform="smtj")
    with pytest.raises(ValidationError):
        Checkpoint(uri="s3://x", model_type="m", technique="full", platform="smtj", extra=1)


# --- on S3 -----------------------------------------------------------------------------------


@pytest.fixture
def bucket(s3_server):
    import uuid

    import boto3

    name = f"outputs-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=s3_server)
    client.create_bucket(Bucket=name)
    return client, name


def test_manifest_on_s3(bucket):
    client, name = bucket
    client.put_object(
        Bucket=name,
        Key="runs/job-1/manifest.json",
        Body=json.dumps({"checkpoint_s3_bucket": ESCROW_URI}).encode(),
    )
    assert read_checkpoint_uri(f"s3://{name}/runs/job-1") == ESCROW_URI
    assert read_checkpoint(f"s3://{name}/runs/job-1/") is None


def test_missing_manifest_on_s3(bucket):
    _, name = bucket
    with pytest.raises(ModelConfigNotFoundError) as info:
        read_checkpoint_uri(f"s3://{name}/runs/never-ran")
    assert f"s3://{name}/runs/never-ran/manifest.json" in info.value.problems[0].message


def test_missing_bucket_on_s3(s3_server):
    with pytest.raises(ModelConfigNotFoundError, match="Model config not found"):
        read_checkpoint_uri("s3://no-such-bucket-for-tuneloop/job")
