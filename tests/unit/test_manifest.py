"""Reading a finished job's manifest.json (in a folder or an output.tar.gz) and checkpoint.json."""

from __future__ import annotations

import json
import os

import pytest
from pydantic import ValidationError

from fakes.sagemaker import output_tarball
from tuneloop.artifacts.manifest import (
    CHECKPOINT_RECORD,
    MANIFEST,
    OUTPUT_TARBALL,
    Checkpoint,
    read_checkpoint,
    read_checkpoint_record,
    read_checkpoint_uri,
)
from tuneloop.errors import ModelConfigNotFoundError, StorageError
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


# --- SageMaker training jobs: manifest.json inside output/output.tar.gz ----------------------

LINEAGE = {
    "model_type": "amazon.nova-2-lite-v1:0:256k",
    "technique": "lora",
    "platform": "smtj",
    "lineage": ["sft"],
}


def truncated_after_manifest(manifest: dict) -> bytes:
    """A tarball cut short inside a big member that follows the manifest: readable only by a
    reader that stops once it has the manifest."""
    data = output_tarball({MANIFEST: json.dumps(manifest), "big.bin": os.urandom(2_000_000)})
    return data[: len(data) // 2]


@pytest.fixture
def smtj_job(tmp_path):
    """Writes ``<out>/<job>/output/output.tar.gz`` and returns the job folder."""
    folder = tmp_path / "outputs" / "my-sft-run-x1y2z"

    def write(members: dict, *, dot_prefix: bool = False, raw: bytes | None = None):
        (folder / "output").mkdir(parents=True, exist_ok=True)
        data = raw if raw is not None else output_tarball(members, dot_prefix=dot_prefix)
        (folder / "output" / OUTPUT_TARBALL).write_bytes(data)
        return folder

    return write


@pytest.mark.parametrize("dot_prefix", [False, True])
def test_manifest_in_training_job_tarball(smtj_job, dot_prefix):
    folder = smtj_job(
        {MANIFEST: json.dumps({"checkpoint_s3_bucket": ESCROW_URI}), "logs/x.txt": "x"},
        dot_prefix=dot_prefix,
    )
    tarball = folder / "output" / OUTPUT_TARBALL
    assert read_checkpoint_uri(str(folder)) == ESCROW_URI
    assert read_checkpoint_uri(f"file://{folder}/") == ESCROW_URI
    assert read_checkpoint_uri(str(tarball)) == ESCROW_URI
    assert read_checkpoint_uri(str(folder / "output")) == ESCROW_URI
    assert read_checkpoint(str(folder)) is None


def test_lineage_record_inside_the_tarball(smtj_job):
    folder = smtj_job(
        {
            MANIFEST: json.dumps({"checkpoint_s3_bucket": ESCROW_URI}),
            CHECKPOINT_RECORD: json.dumps(LINEAGE),
        }
    )
    expected = Checkpoint(
        uri=ESCROW_URI,
        model_type="amazon.nova-2-lite-v1:0:256k",
        technique=Technique.LORA,
        platform=Platform.SMTJ,
        lineage=(Method.SFT,),
        output_uri=str(folder),
    )
    assert read_checkpoint(str(folder)) == expected
    assert read_checkpoint(str(folder / "output" / OUTPUT_TARBALL)) == expected
    assert read_checkpoint_record(str(folder), ESCROW_URI) == expected
    # One written beside the job's output/ folder (the tarball cannot change) wins.
    (folder / CHECKPOINT_RECORD).write_text(json.dumps({**LINEAGE, "lineage": ["cpt", "sft"]}))
    assert read_checkpoint(str(folder)).lineage == (Method.CPT, Method.SFT)
    assert read_checkpoint_record(str(folder), ESCROW_URI).lineage == (Method.CPT, Method.SFT)


def test_serverless_layout(tmp_path):
    folder = tmp_path / "job"
    nested = folder / "output" / "output"
    nested.mkdir(parents=True)
    (nested / MANIFEST).write_text(json.dumps({"checkpoint_s3_bucket": ESCROW_URI}))
    (folder / CHECKPOINT_RECORD).write_text(json.dumps(LINEAGE))
    assert read_checkpoint_uri(str(folder)) == ESCROW_URI
    assert read_checkpoint(str(nested / MANIFEST)).output_uri == str(folder)


def test_tarball_without_manifest_is_a_clear_error(smtj_job):
    folder = smtj_job({"my-eval/eval_results/results_1.json": "{}"})
    with pytest.raises(ModelConfigNotFoundError) as info:
        read_checkpoint_uri(str(folder), path="stages.rft.base")
    [problem] = info.value.problems
    assert problem.path == "stages.rft.base"
    assert f"{folder}/output/output.tar.gz holds no manifest.json at its root" in problem.message
    assert problem.fix


def test_tarball_manifest_without_checkpoint_bucket_is_refused(smtj_job):
    # Only checkpoint_s3_bucket is read: an SDK attribute name in a manifest is not guessed at.
    folder = smtj_job({MANIFEST: json.dumps({"checkpoint_s3_path": ESCROW_URI})})
    with pytest.raises(ModelConfigNotFoundError) as info:
        read_checkpoint_uri(str(folder))
    message = info.value.problems[0].message
    assert "output.tar.gz (manifest.json) has no checkpoint_s3_bucket" in message
    assert "it holds: checkpoint_s3_path" in message


def test_missing_everywhere_names_every_layout(tmp_path):
    with pytest.raises(ModelConfigNotFoundError) as info:
        read_checkpoint_uri(str(tmp_path / "job"))
    message = info.value.problems[0].message
    for layout in (MANIFEST, "output/output/manifest.json", "output/output.tar.gz"):
        assert f"{tmp_path}/job/{layout}" in message
    with pytest.raises(ModelConfigNotFoundError, match=r"no manifest at .*/x/output\.tar\.gz"):
        read_checkpoint_uri(str(tmp_path / "x" / "output.tar.gz"))


def test_reading_stops_at_the_manifest(smtj_job):
    folder = smtj_job({}, raw=truncated_after_manifest({"checkpoint_s3_bucket": ESCROW_URI}))
    assert read_checkpoint_uri(str(folder)) == ESCROW_URI
    # A reader that needs the whole archive sees it is broken, and says so.
    with pytest.raises(StorageError, match=r"is not a readable tar\.gz archive"):
        read_checkpoint(str(folder))


def test_a_file_that_is_not_a_tarball(smtj_job):
    folder = smtj_job({}, raw=b"this is not gzip")
    with pytest.raises(StorageError, match=r"output\.tar\.gz is not a readable tar\.gz archive"):
        read_checkpoint_uri(str(folder))


def test_training_job_tarball_on_s3(bucket):
    client, name = bucket
    tarball = output_tarball(
        {
            MANIFEST: json.dumps({"checkpoint_s3_bucket": ESCROW_URI}),
            CHECKPOINT_RECORD: json.dumps(LINEAGE),
        }
    )
    client.put_object(Bucket=name, Key="out/job-2/output/output.tar.gz", Body=tarball)
    folder = f"s3://{name}/out/job-2"
    assert read_checkpoint_uri(folder) == ESCROW_URI
    assert read_checkpoint_uri(f"{folder}/output/output.tar.gz") == ESCROW_URI
    checkpoint = read_checkpoint(folder + "/")
    assert checkpoint.platform is Platform.SMTJ and checkpoint.output_uri == folder
    assert read_checkpoint_record(folder, ESCROW_URI) == checkpoint

    client.put_object(
        Bucket=name,
        Key="out/job-3/output/output.tar.gz",
        Body=truncated_after_manifest({"checkpoint_s3_bucket": ESCROW_URI}),
    )
    assert read_checkpoint_uri(f"s3://{name}/out/job-3") == ESCROW_URI

    client.put_object(
        Bucket=name, Key="out/job-4/output/output.tar.gz", Body=output_tarball({"a.txt": "a"})
    )
    with pytest.raises(ModelConfigNotFoundError, match=r"holds no manifest\.json at its root"):
        read_checkpoint_uri(f"s3://{name}/out/job-4")
