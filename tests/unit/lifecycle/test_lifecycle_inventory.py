"""The inventory: what a campaign's rounds left, read from a local campaign tree and from S3."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from lifecycle_ledgers import (
    ESCROW,
    NOVA,
    checkpoint,
    continuing,
    local_campaign,
    round_record,
    stage_record,
)
from lifecycle_ledgers import s3_campaign as campaign_on_s3
from tuneloop import aws, storage
from tuneloop.config.campaign import Campaign
from tuneloop.lifecycle.inventory import folder_bytes, inventory, job_folder
from tuneloop.lifecycle.local_archive import archive_location, write_tarball
from tuneloop.lifecycle.records import LOCAL_ARCHIVE_CLASS, LOCAL_CLASS, Artifact
from tuneloop.recipes.catalog import estimated_checkpoint_bytes
from tuneloop.rounds.ledger import RoundRecord, StageRecord


def stage(name: str, output_uri: str, checkpoint_uri: str, *, model_type: str) -> StageRecord:
    held = checkpoint(checkpoint_uri, job_folder(output_uri), model_type=model_type)
    return stage_record(name, output_uri, checkpoint=held)


def record(n: int, stages: list[StageRecord], result_uri: str = "") -> RoundRecord:
    return round_record(
        n,
        stages,
        continuing(n, champion=n),
        metrics={"exact_match": 0.5},
        evaluation={"job_name": f"demo-r{n}-eval", "result_uri": result_uri} if result_uri else {},
    )


def by_uri(artifacts: list[Artifact]) -> dict[str, Artifact]:
    uris = [a.uri for a in artifacts]
    assert len(uris) == len(set(uris)), "an artifact is listed twice"
    return {a.uri: a for a in artifacts}


def test_job_folder_of_each_layout() -> None:
    job = "s3://out/demo/rounds/0001/demo-r1-sft"
    assert job_folder(f"{job}/output/output.tar.gz") == job
    assert job_folder(f"{job}/output/output/manifest.json") == job
    assert job_folder(f"{job}/manifest.json") == job
    assert job_folder(f"{job}/") == job
    assert (
        job_folder("/campaigns/demo/rounds/0001/demo-r1-sft")
        == "/campaigns/demo/rounds/0001/demo-r1-sft"
    )


# --- the local backend ---------------------------------------------------------------------


def write(path: Path, nbytes: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * nbytes)


def local_job(root: Path, relative: str, sizes: dict[str, int]) -> Path:
    folder = root / relative
    for name, nbytes in sizes.items():
        write(folder / name, nbytes)
    return folder


def archived(root: Path, folder: Path) -> Path:
    """Archive ``folder`` as the lifecycle does, then remove it: only the tarball remains."""
    tarball = Path(archive_location(str(root), str(folder)))
    write_tarball(str(folder), str(tarball))
    for path in sorted(folder.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    folder.rmdir()
    return tarball


@pytest.fixture
def local_tree(tmp_path: Path) -> tuple[Campaign, list[RoundRecord], Path]:
    """A campaign as the local backend leaves it after three rounds: round 1 on disk (with a
    symbolic link that must not count), round 2's stage archived away, round 3 on disk with a
    tarball beside it, one stage whose folder is gone for good, and two baseline jobs (one
    archived)."""
    root = tmp_path / "out" / "demo"
    outside = tmp_path / "elsewhere" / "huge.bin"
    write(outside, 10_000)
    r1_sft = local_job(
        root,
        "rounds/0001/demo-r1-sft",
        {"manifest.json": 40, "checkpoint/model.safetensors": 1000, "tensorboard/events": 60},
    )
    os.symlink(outside, r1_sft / "checkpoint" / "linked.bin")
    os.symlink(outside.parent, r1_sft / "linked-folder")
    r1_eval = local_job(root, "rounds/0001/demo-r1-eval", {"eval-result/results.json": 30})
    r2_sft = local_job(root, "rounds/0002/demo-r2-sft", {"checkpoint/model.safetensors": 2000})
    r2_tarball = archived(root, r2_sft)
    r3_sft = local_job(root, "rounds/0003/demo-r3-sft", {"checkpoint/model.safetensors": 3000})
    write_tarball(str(r3_sft), archive_location(str(root), str(r3_sft)))
    gone = root / "rounds/0003/demo-r3-rft"
    local_job(root, "baseline/demo-r0-baseline-a", {"eval-result/results.json": 70})
    baseline_b = local_job(root, "baseline/demo-r0-baseline-b", {"eval-result/results.json": 80})
    archived(root, baseline_b)

    def local_stage(name: str, folder: Path) -> StageRecord:
        return stage(name, str(folder), str(folder / "checkpoint"), model_type="local.tiny")

    records = [
        record(1, [local_stage("sft", r1_sft)], result_uri=str(r1_eval)),
        record(2, [local_stage("sft", r2_sft)]),
        # Round 3 names round 2's folder again (a stage that passed it through): listed once.
        record(3, [local_stage("sft", r3_sft), local_stage("rft", gone)]),
    ]
    assert r2_tarball.is_file()
    return local_campaign(str(tmp_path / "out")), records, root


def test_local_campaign_tree(local_tree: tuple[Campaign, list[RoundRecord], Path]) -> None:
    the_campaign, records, root = local_tree
    found = by_uri(inventory(the_campaign, records))
    r1 = str(root / "rounds/0001/demo-r1-sft")
    r2 = str(root / "rounds/0002/demo-r2-sft")
    r3 = str(root / "rounds/0003/demo-r3-sft")
    evaluation = str(root / "rounds/0001/demo-r1-eval")
    baseline_a = str(root / "baseline/demo-r0-baseline-a")
    baseline_b = str(root / "baseline/demo-r0-baseline-b")
    assert set(found) == {r1, r2, r3, evaluation, baseline_a, baseline_b}

    # Regular files only: neither the linked file nor the linked folder counts.
    assert found[r1].bytes == 1100
    assert (found[r1].storage_class, found[r1].archive_uri) == (LOCAL_CLASS, None)
    assert (found[r1].owner, found[r1].kind, found[r1].round, found[r1].stage) == (
        "local",
        "checkpoint",
        1,
        "sft",
    )

    tarball = archive_location(str(root), r2)
    assert found[r2].storage_class == LOCAL_ARCHIVE_CLASS
    assert found[r2].archive_uri == tarball
    assert found[r2].bytes == Path(tarball).stat().st_size

    assert found[r3].storage_class == LOCAL_CLASS and found[r3].bytes == 3000
    assert found[r3].archive_uri == archive_location(str(root), r3)

    assert (found[evaluation].kind, found[evaluation].stage, found[evaluation].bytes) == (
        "evaluation",
        "evaluation",
        30,
    )
    assert found[baseline_a].model_dump(include={"round", "stage", "kind", "bytes"}) == {
        "round": 0,
        "stage": "baseline",
        "kind": "baseline",
        "bytes": 70,
    }
    assert found[baseline_b].storage_class == LOCAL_ARCHIVE_CLASS
    assert found[baseline_b].archive_uri == archive_location(str(root), baseline_b)


def test_the_same_folder_is_listed_once(
    local_tree: tuple[Campaign, list[RoundRecord], Path],
) -> None:
    the_campaign, records, root = local_tree
    again = record(4, list(records[0].stages))
    found = inventory(the_campaign, [*records, again])
    r1 = [a for a in found if a.uri == str(root / "rounds/0001/demo-r1-sft")]
    assert len(r1) == 1 and r1[0].round == 1


def test_a_campaign_that_left_nothing(tmp_path: Path) -> None:
    assert inventory(local_campaign(str(tmp_path)), []) == []


def test_folder_bytes_follows_no_link(tmp_path: Path) -> None:
    write(tmp_path / "a" / "b" / "c.bin", 5)
    write(tmp_path / "target.bin", 500)
    os.symlink(tmp_path / "target.bin", tmp_path / "a" / "link.bin")
    os.mkfifo(tmp_path / "a" / "fifo")
    assert folder_bytes(tmp_path / "a") == 5


def test_demo_layout_inventory(tmp_path: Path) -> None:
    """The demo's own layout (job folders named by the job, results under eval-result/), read
    through records whose stage output is the job folder and whose checkpoint is inside it."""
    root = tmp_path / "demo"
    sft = local_job(
        root,
        "rounds/0001/demo-r1-sft-41cbfbdd0d",
        {
            "checkpoint/model.safetensors": 111,
            "manifest.json": 1,
            "checkpoint.json": 2,
            "tensorboard/events.out.tfevents.1": 3,
            "training.log": 4,
        },
    )
    the_record = record(
        1,
        [stage("sft", str(sft), str(sft / "checkpoint"), model_type="local.tiny-chat-v1")],
    )
    (artifact,) = inventory(local_campaign(str(tmp_path)), [the_record])
    assert artifact.uri == str(sft) and artifact.bytes == 121


# --- S3 --------------------------------------------------------------------------------------


def put(uri: str, nbytes: int, storage_class: str = "STANDARD") -> None:
    bucket, key = storage.split_s3(uri)
    storage.s3_client().put_object(
        Bucket=bucket, Key=key, Body=b"x" * nbytes, StorageClass=storage_class
    )


@pytest.fixture
def s3_campaign(s3_server: str) -> Iterator[tuple[Campaign, list[RoundRecord], str]]:
    """Two rounds of a training-jobs campaign on S3: outputs in the customer's bucket (one
    object archived, one restored), checkpoints in an escrow bucket, a baseline."""
    client = storage.s3_client()
    bucket = f"out-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    if ESCROW not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
        client.create_bucket(Bucket=ESCROW)
    root = f"s3://{bucket}/tuneloop/demo"
    r1 = f"{root}/rounds/0001/demo-r1-sft"
    put(f"{r1}/output/output.tar.gz", 500)
    put(f"{r1}/tensorboard/events.out.tfevents.1", 70, "GLACIER")
    put(f"{r1}/recipe/recipe.yaml", 9)
    put(f"{r1}-other/output/output.tar.gz", 1)  # a sibling whose name begins the same
    r1_eval = f"{root}/rounds/0001/demo-r1-eval"
    put(f"{r1_eval}/output/output.tar.gz", 40)
    r2 = f"{root}/rounds/0002/demo-r2-sft"
    put(f"{r2}/output/output.tar.gz", 600)
    put(f"{root}/baseline/demo-r0-baseline/output/output.tar.gz", 33)
    run = uuid.uuid4().hex[:8]
    escrow_r1 = f"s3://{ESCROW}/{run}/demo-r1-sft/step_10"
    put(f"{escrow_r1}/weights.safetensors", 4000)
    put(f"{escrow_r1}/config.json", 20)
    escrow_r2 = f"s3://{ESCROW}/{run}/demo-r2-sft/step_10/"  # written with a trailing '/'

    def s3_stage(folder: str, checkpoint_uri: str) -> StageRecord:
        return stage("sft", f"{folder}/output/output.tar.gz", checkpoint_uri, model_type=NOVA)

    records = [
        record(1, [s3_stage(r1, escrow_r1)], result_uri=f"{r1_eval}/output/output.tar.gz"),
        record(2, [s3_stage(r2, escrow_r2)]),  # its escrow checkpoint is gone
    ]
    yield campaign_on_s3(bucket), records, root


def test_s3_campaign(s3_campaign: tuple[Campaign, list[RoundRecord], str]) -> None:
    the_campaign, records, root = s3_campaign
    found = by_uri(inventory(the_campaign, records))
    r1 = f"{root}/rounds/0001/demo-r1-sft"
    escrow_r1 = records[0].stages[0].checkpoint.uri  # type: ignore[union-attr]
    assert set(found) == {
        f"{r1}/output/output.tar.gz",
        f"{r1}/tensorboard/events.out.tfevents.1",
        f"{r1}/recipe/recipe.yaml",
        f"{root}/rounds/0001/demo-r1-eval/output/output.tar.gz",
        f"{root}/rounds/0002/demo-r2-sft/output/output.tar.gz",
        f"{root}/baseline/demo-r0-baseline/output/output.tar.gz",
        f"{escrow_r1}/weights.safetensors",
        f"{escrow_r1}/config.json",
    }
    tarball = found[f"{r1}/output/output.tar.gz"]
    assert (tarball.owner, tarball.kind, tarball.round, tarball.stage, tarball.bytes) == (
        "customer",
        "output",
        1,
        "sft",
        500,
    )
    assert tarball.storage_class == "STANDARD" and tarball.restore is None
    events = found[f"{r1}/tensorboard/events.out.tfevents.1"]
    assert events.storage_class == "GLACIER"
    weights = found[f"{escrow_r1}/weights.safetensors"]
    assert (weights.owner, weights.kind, weights.bytes, weights.estimated) == (
        "escrow",
        "checkpoint",
        4000,
        False,
    )
    evaluation = found[f"{root}/rounds/0001/demo-r1-eval/output/output.tar.gz"]
    assert (evaluation.kind, evaluation.stage, evaluation.round) == ("evaluation", "evaluation", 1)
    baseline = found[f"{root}/baseline/demo-r0-baseline/output/output.tar.gz"]
    assert (baseline.kind, baseline.stage, baseline.round, baseline.owner) == (
        "baseline",
        "baseline",
        0,
        "customer",
    )


@contextmanager
def listing_denied(endpoint: str, bucket: str) -> Iterator[None]:
    """Run the block as an IAM user who may do anything in S3 except list ``bucket``.

    The bucket gets the policy an escrow bucket has for this account (ListBucket denied), but
    moto stores bucket policies without enforcing them; it enforces identity policies once
    authentication is switched on (``/moto-api/reset-auth``), so the same Deny is also the
    user's own policy. Authentication is switched back off, and the client cache cleared,
    after the block."""
    import boto3
    import requests

    deny = {
        "Effect": "Deny",
        "Action": "s3:ListBucket",
        "Resource": f"arn:aws:s3:::{bucket}",
    }
    storage.s3_client().put_bucket_policy(
        Bucket=bucket,
        Policy=json.dumps({"Version": "2012-10-17", "Statement": [{**deny, "Principal": "*"}]}),
    )
    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1")
    user = f"lister-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    iam.put_user_policy(
        UserName=user,
        PolicyName="s3-but-not-escrow-listing",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}, deny],
            }
        ),
    )
    key = iam.create_access_key(UserName=user)["AccessKey"]
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ["AWS_ACCESS_KEY_ID"] = key["AccessKeyId"]
    os.environ["AWS_SECRET_ACCESS_KEY"] = key["SecretAccessKey"]
    answer = requests.post(f"{endpoint}/moto-api/reset-auth", data=b"0", timeout=10)
    previous = answer.json()["PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT"]
    try:
        yield
    finally:
        requests.post(f"{endpoint}/moto-api/reset-auth", data=str(previous).encode(), timeout=10)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        aws.clear()
        storage.s3_client().delete_bucket_policy(Bucket=bucket)


def test_an_escrow_prefix_this_account_may_not_list_is_estimated(
    s3_server: str, s3_campaign: tuple[Campaign, list[RoundRecord], str]
) -> None:
    the_campaign, records, root = s3_campaign
    with listing_denied(s3_server, ESCROW):
        found = by_uri(inventory(the_campaign, records))
    escrow_r1 = records[0].stages[0].checkpoint.uri  # type: ignore[union-attr]
    escrow_r2 = records[1].stages[0].checkpoint.uri.rstrip("/")  # type: ignore[union-attr]
    expected = estimated_checkpoint_bytes(NOVA, "lora")
    assert expected > 0
    for n, prefix in ((1, escrow_r1), (2, escrow_r2)):
        artifact = found[prefix]
        assert artifact.model_dump(
            include={"round", "stage", "kind", "owner", "bytes", "estimated"}
        ) == {
            "round": n,
            "stage": "sft",
            "kind": "checkpoint",
            "owner": "escrow",
            "bytes": expected,
            "estimated": True,
        }
    # The customer's own objects are still listed object by object.
    assert f"{root}/rounds/0001/demo-r1-sft/output/output.tar.gz" in found
    assert not any(uri.startswith(f"{escrow_r1}/") for uri in found)


def test_a_customer_checkpoint_outside_the_job_folder_is_listed(
    s3_campaign: tuple[Campaign, list[RoundRecord], str],
) -> None:
    the_campaign, _, root = s3_campaign
    checkpoints = f"{root}/checkpoints/demo-r3-sft"
    put(f"{checkpoints}/model.bin", 77)
    r3 = f"{root}/rounds/0003/demo-r3-sft"
    put(f"{r3}/manifest.json", 5)
    put(f"{r3}/checkpoint/model.bin", 88)
    records = [
        record(3, [stage("sft", f"{r3}/", f"{r3}/checkpoint", model_type=NOVA)]),
        record(4, [stage("sft", f"{r3}/", checkpoints, model_type=NOVA)]),
    ]
    found = by_uri(inventory(the_campaign, records))
    assert found[f"{checkpoints}/model.bin"].kind == "checkpoint"
    assert found[f"{checkpoints}/model.bin"].owner == "customer"
    assert found[f"{r3}/checkpoint/model.bin"].kind == "output"
    assert found[f"{r3}/manifest.json"].round == 3
