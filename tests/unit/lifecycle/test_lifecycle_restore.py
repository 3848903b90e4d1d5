"""Restore: what of a base is archived, bringing local tarballs back, and S3 restores (moto)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from lifecycle_ledgers import files_of, local_campaign, s3_campaign, stage_folder, stage_uri
from tuneloop.lifecycle.local_archive import (
    archive_location,
    digest_path,
    remove_folder,
    write_tarball,
)
from tuneloop.lifecycle.records import LOCAL_ARCHIVE_CLASS, Done
from tuneloop.lifecycle.restore import pending_restores, restore_plan, start_restore
from tuneloop.lifecycle.store import LifecycleError, LifecycleStore


def base_folder(root: Path) -> Path:
    """Round 2's last stage folder of campaign "demo" under ``root``: the base to restore."""
    return stage_folder(
        Path(stage_uri(root / "demo", 2, "rft")),
        weights=os.urandom(50_000),
        manifest='{"checkpoint": "r2"}',
    )


def archive(folder: Path, root: Path) -> tuple[str, str]:
    tarball = archive_location(str(root / "demo"), str(folder))
    digest, _ = write_tarball(str(folder), tarball)
    remove_folder(str(folder))
    return tarball, digest


# --- local -------------------------------------------------------------------------------------


def test_local_restore_brings_back_identical_files(tmp_path: Path) -> None:
    campaign = local_campaign(tmp_path)
    folder = base_folder(tmp_path)
    before = files_of(folder)
    tarball, digest = archive(folder, tmp_path)

    plan = restore_plan(campaign, str(folder), 2)
    assert plan is not None
    (item,) = plan.items
    assert item.owner == "local" and item.storage_class == LOCAL_ARCHIVE_CLASS
    assert (item.uri, item.archive_uri, item.digest) == (str(folder), tarball, digest)
    assert plan.base_round == 2 and plan.tier == "Standard" and plan.days == 7

    assert start_restore(plan) == []
    assert files_of(folder) == before
    assert restore_plan(campaign, str(folder), 2) is None


def test_nothing_to_restore_when_the_folder_is_there_or_was_never_archived(
    tmp_path: Path,
) -> None:
    campaign = local_campaign(tmp_path)
    folder = base_folder(tmp_path)
    assert restore_plan(campaign, str(folder), 2) is None
    assert restore_plan(campaign, str(tmp_path / "demo" / "rounds" / "0009" / "x"), 9) is None
    assert restore_plan(campaign, "", None) is None


def test_the_digest_comes_from_the_recorded_done_when_its_file_is_gone(tmp_path: Path) -> None:
    campaign = local_campaign(tmp_path)
    folder = base_folder(tmp_path)
    before = files_of(folder)
    tarball, digest = archive(folder, tmp_path)
    os.unlink(digest_path(tarball))
    store = LifecycleStore.for_campaign(campaign)
    store.record_done(
        Done(
            uri=str(folder),
            action="archive",
            outcome="archived",
            archive_uri=tarball,
            digest=digest,
        )
    )
    plan = restore_plan(campaign, str(folder), 2)
    assert plan is not None and plan.items[0].digest == digest
    start_restore(plan)
    assert files_of(folder) == before


def test_a_tarball_with_no_digest_anywhere_is_not_extracted(tmp_path: Path) -> None:
    campaign = local_campaign(tmp_path)
    folder = base_folder(tmp_path)
    tarball, _ = archive(folder, tmp_path)
    os.unlink(digest_path(tarball))
    plan = restore_plan(campaign, str(folder), 2)
    assert plan is not None
    with pytest.raises(LifecycleError, match="no digest"):
        start_restore(plan)
    assert not folder.exists()


def test_a_damaged_tarball_is_not_extracted(tmp_path: Path) -> None:
    from tuneloop.lifecycle.local_archive import LocalArchiveError

    campaign = local_campaign(tmp_path)
    folder = base_folder(tmp_path)
    tarball, _ = archive(folder, tmp_path)
    with open(tarball, "r+b") as handle:
        handle.seek(100)
        handle.write(b"\0" * 16)
    plan = restore_plan(campaign, str(folder), 2)
    assert plan is not None
    with pytest.raises(LocalArchiveError, match="does not match its digest"):
        start_restore(plan)
    assert not folder.exists()


# --- S3 ----------------------------------------------------------------------------------------


@pytest.fixture
def bucket(s3_server: str) -> str:
    from tuneloop.storage import s3_client

    name = f"restore-{uuid.uuid4().hex[:12]}"
    s3_client().create_bucket(Bucket=name)
    return name


def put(bucket: str, key: str, storage_class: str = "STANDARD") -> str:
    from tuneloop.storage import s3_client

    s3_client().put_object(Bucket=bucket, Key=key, Body=b"weights", StorageClass=storage_class)
    return f"s3://{bucket}/{key}"


def test_s3_restore_of_archived_objects(bucket: str) -> None:
    from tuneloop.lifecycle import objects

    campaign = s3_campaign(bucket, restore_tier="Bulk", restore_days=3)
    base = f"s3://{bucket}/tuneloop/demo/rounds/0002/demo-r0002-sft"
    glacier = put(
        bucket, "tuneloop/demo/rounds/0002/demo-r0002-sft/output/output.tar.gz", "GLACIER"
    )
    put(bucket, "tuneloop/demo/rounds/0002/demo-r0002-sft/manifest.json")
    put(bucket, "tuneloop/demo/rounds/0002/demo-r0002-sft/events.out", "GLACIER_IR")
    put(bucket, "tuneloop/demo/rounds/0002/demo-r0002-sft-other/x", "GLACIER")  # a sibling
    checkpoint = f"s3://{bucket}/checkpoints/r2"
    deep = put(bucket, "checkpoints/r2/model.bin", "DEEP_ARCHIVE")

    plan = restore_plan(campaign, base, 2, checkpoint)
    assert plan is not None
    assert {(i.uri, i.storage_class, i.owner) for i in plan.items} == {
        (glacier, "GLACIER", "customer"),
        (deep, "DEEP_ARCHIVE", "customer"),
    }
    assert (plan.tier, plan.days) == ("Bulk", 3)
    assert set(pending_restores([glacier, deep])) == {glacier, deep}

    still = start_restore(plan)
    # moto finishes a restore at once; S3 would take hours, and the trigger would wait.
    assert still == []
    assert pending_restores([glacier, deep]) == []
    for uri in (glacier, deep):
        info = objects.head(uri)
        assert info is not None and objects.restore_state(info) == "restored"
    assert restore_plan(campaign, base, 2, checkpoint) is None


@pytest.mark.parametrize(
    ("storage_class", "tier"),
    [("DEEP_ARCHIVE", "Standard"), ("GLACIER", "Expedited")],
    ids=["never-asked-of-deep-archive", "kept-for-glacier"],
)
def test_expedited_is_asked_of_glacier_only(bucket: str, storage_class: str, tier: str) -> None:
    campaign = s3_campaign(bucket, restore_tier="Expedited")
    base = f"s3://{bucket}/tuneloop/demo/rounds/0001/demo-r0001-sft"
    put(bucket, "tuneloop/demo/rounds/0001/demo-r0001-sft/output/output.tar.gz", storage_class)
    plan = restore_plan(campaign, base, 1)
    assert plan is not None and plan.tier == tier
    # objects.request_restore refuses Expedited for DEEP_ARCHIVE: it is never asked for it.
    assert start_restore(plan) == []


def test_nothing_archived_on_s3_means_no_plan(bucket: str) -> None:
    campaign = s3_campaign(bucket)
    base = f"s3://{bucket}/tuneloop/demo/rounds/0001/demo-r0001-sft"
    put(bucket, "tuneloop/demo/rounds/0001/demo-r0001-sft/output/output.tar.gz")
    assert restore_plan(campaign, base, 1) is None
    assert pending_restores([]) == []


def test_a_training_job_base_named_by_its_tarball_is_restored_from_its_job_folder(
    bucket: str,
) -> None:
    """A training job's output is recorded as ``<job>/output/output.tar.gz``: what lies beside
    it in the job folder (TensorBoard events, logs) is the base's too."""
    campaign = s3_campaign(bucket)
    job = "tuneloop/demo/rounds/0001/demo-r0001-sft"
    tarball = put(bucket, f"{job}/output/output.tar.gz", "GLACIER")
    events = put(bucket, f"{job}/tensorboard/events.out", "GLACIER")
    plan = restore_plan(campaign, tarball, 1)
    assert plan is not None
    assert {item.uri for item in plan.items} == {tarball, events}
