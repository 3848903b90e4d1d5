"""What a campaign's rounds left in storage, as `Artifact` lines for the lifecycle plan.

Read from the round records and from storage itself, never from a cache:

- **Local folders** (the local backend, or any output that is not an s3:// URI): one Artifact
  per stage output folder (kind ``checkpoint``: the folder holds the weights), per evaluation
  folder and per baseline folder. Its bytes are the sizes of the regular files in it (symbolic
  links are not followed). When the folder has a tarball at
  `local_archive.archive_location`, ``archive_uri`` names it; when only the tarball remains,
  the Artifact is ``LOCAL_ARCHIVE`` and its bytes are the tarball's.
- **Customer S3 objects**: one Artifact per object under each job folder (a stage's outputs:
  kind ``output``; an evaluation's results; the baseline's), with S3's storage class and
  restore header. A stage output named by its ``output/output.tar.gz`` or manifest is listed
  from its job folder, so TensorBoard events and logs are counted too.
- **Escrow checkpoints** (`recipes.s3_uri.is_escrow`): the objects under the checkpoint's
  prefix where this account may list it; where S3 answers AccessDenied, one Artifact for the
  prefix, ``estimated`` and sized by `catalog.estimated_checkpoint_bytes`.
- **The baseline** (round 0): whatever is under ``<campaign_root>/baseline/``.

Things that no longer exist are left out. A URI is listed once (the first line that names it
wins: a stage's checkpoint before its outputs), so two records naming one folder cost once.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from tuneloop import storage
from tuneloop.artifacts.manifest import JOB_TARBALL, MANIFEST, SERVERLESS_MANIFEST
from tuneloop.config.paths import absolute, campaign_root
from tuneloop.lifecycle.local_archive import SUFFIX, archive_location
from tuneloop.lifecycle.records import LOCAL_ARCHIVE_CLASS, LOCAL_CLASS, Artifact, Kind, Owner
from tuneloop.recipes.catalog import estimated_checkpoint_bytes
from tuneloop.recipes.s3_uri import is_escrow
from tuneloop.rounds.specs import BASELINE_STAGE

if TYPE_CHECKING:
    from tuneloop.artifacts.manifest import Checkpoint
    from tuneloop.config.campaign import Campaign
    from tuneloop.rounds.ledger import RoundRecord, StageRecord

EVALUATION_STAGE = "evaluation"

# The ends of a URI that names a file inside a job folder rather than the folder itself.
_FILE_SUFFIXES = ("/" + SERVERLESS_MANIFEST, "/" + JOB_TARBALL, "/" + MANIFEST)


def inventory(campaign: Campaign, records: list[RoundRecord]) -> list[Artifact]:
    """Every artifact the campaign's rounds and baseline left that still exists, each URI once."""
    root = absolute(campaign_root(campaign)).rstrip("/")
    found: dict[str, Artifact] = {}
    lines = [
        *(a for record in records for a in _round_artifacts(root, record)),
        *_baseline_artifacts(root),
    ]
    for artifact in lines:
        found.setdefault(artifact.uri, artifact)
    return list(found.values())


def job_folder(uri: str) -> str:
    """The job folder of an output URI: itself, or the folder of the manifest or
    ``output/output.tar.gz`` it names; without a trailing '/'."""
    text = uri.rstrip("/")
    for suffix in _FILE_SUFFIXES:
        if text.endswith(suffix):
            return text.removesuffix(suffix)
    return text


# --- rounds ----------------------------------------------------------------------------------


def _round_artifacts(root: str, record: RoundRecord) -> Iterator[Artifact]:
    for stage in record.stages:
        yield from _stage_artifacts(root, record.round, stage)
    result_uri = record.evaluation.get("result_uri")
    if isinstance(result_uri, str) and result_uri:
        yield from _folder_artifacts(
            root, job_folder(result_uri), record.round, EVALUATION_STAGE, "evaluation"
        )


def _stage_artifacts(root: str, round_number: int, stage: StageRecord) -> Iterator[Artifact]:
    checkpoint = stage.checkpoint
    folder = job_folder(stage.output_uri or (checkpoint.output_uri if checkpoint else ""))
    if checkpoint is not None and storage.is_s3(checkpoint.uri):
        yield from _s3_checkpoint(checkpoint, folder, round_number, stage.name)
    if folder:
        # A local stage folder holds the weights; an S3 job folder the job's other outputs.
        kind: Kind = "output" if storage.is_s3(folder) else "checkpoint"
        yield from _folder_artifacts(root, folder, round_number, stage.name, kind)


def _s3_checkpoint(
    checkpoint: Checkpoint, folder: str, round_number: int, stage: str
) -> Iterator[Artifact]:
    """The objects of a checkpoint kept apart from its job folder: an escrow prefix, or a
    customer prefix elsewhere (one inside the job folder is listed with it)."""
    prefix = checkpoint.uri.rstrip("/")
    if not is_escrow(prefix):
        if not _inside(prefix, folder):
            yield from _s3_artifacts(prefix, round_number, stage, "checkpoint", "customer")
        return
    from tuneloop.lifecycle.objects import AccessDeniedError

    try:
        yield from list(_s3_artifacts(prefix, round_number, stage, "checkpoint", "escrow"))
    except AccessDeniedError:
        # The service owns escrow buckets; an account without s3:ListBucket on them still pays
        # for what they hold, so the plan shows an estimate rather than nothing.
        yield Artifact(
            uri=prefix,
            round=round_number,
            stage=stage,
            kind="checkpoint",
            owner="escrow",
            bytes=estimated_checkpoint_bytes(checkpoint.model_type, checkpoint.technique.value),
            estimated=True,
        )


def _inside(uri: str, folder: str) -> bool:
    return bool(folder) and (uri == folder or uri.startswith(folder.rstrip("/") + "/"))


# --- the baseline ----------------------------------------------------------------------------


def _baseline_artifacts(root: str) -> Iterator[Artifact]:
    folder = storage.join(root, BASELINE_STAGE)
    if storage.is_s3(folder):
        yield from _s3_artifacts(folder, 0, BASELINE_STAGE, "baseline", "customer")
        return
    for job in _baseline_jobs(root, Path(storage.local_path(folder))):
        yield from _local_artifacts(root, str(job), 0, BASELINE_STAGE, "baseline")


def _baseline_jobs(root: str, folder: Path) -> list[Path]:
    """The baseline's job folders: those on disk, and those that live on only as a tarball."""
    jobs = {p for p in _children(folder) if p.is_dir() and not p.is_symlink()}
    tarballs = Path(archive_location(root, str(folder / "job"))).parent
    for tarball in _children(tarballs):
        job = folder / tarball.name.removesuffix(SUFFIX)
        if tarball.name.endswith(SUFFIX) and Path(archive_location(root, str(job))) == tarball:
            jobs.add(job)
    return sorted(jobs)


def _children(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []


# --- one folder ------------------------------------------------------------------------------


def _folder_artifacts(
    root: str, folder: str, round_number: int, stage: str, kind: Kind
) -> Iterator[Artifact]:
    if storage.is_s3(folder):
        yield from _s3_artifacts(folder, round_number, stage, kind, "customer")
    else:
        yield from _local_artifacts(root, folder, round_number, stage, kind)


def _s3_artifacts(
    prefix: str, round_number: int, stage: str, kind: Kind, owner: Owner
) -> Iterator[Artifact]:
    """One Artifact per object under ``prefix`` (a folder: siblings that share its name's
    beginning are not under it)."""
    from tuneloop.lifecycle.objects import list_objects

    for info in list_objects(prefix.rstrip("/") + "/"):
        yield Artifact(
            uri=info.uri,
            round=round_number,
            stage=stage,
            kind=kind,
            owner=owner,
            bytes=info.bytes,
            storage_class=info.storage_class,
            restore=info.restore,
        )


def _local_artifacts(
    root: str, folder: str, round_number: int, stage: str, kind: Kind
) -> Iterator[Artifact]:
    """The folder as one Artifact: on disk (LOCAL, with its tarball if one was written), as a
    tarball only (LOCAL_ARCHIVE), or nothing when neither exists."""
    uri = folder.rstrip("/")
    path = storage.local_path(absolute(uri))
    tarball = None if storage.is_s3(root) else Path(archive_location(root, str(path)))
    archive_uri = str(tarball) if tarball is not None and tarball.is_file() else None
    if path.is_dir() and not path.is_symlink():
        nbytes, storage_class = folder_bytes(path), LOCAL_CLASS
    elif tarball is not None and archive_uri is not None:
        nbytes, storage_class = _size(tarball), LOCAL_ARCHIVE_CLASS
    else:
        return
    yield Artifact(
        uri=uri,
        round=round_number,
        stage=stage,
        kind=kind,
        owner="local",
        bytes=nbytes,
        storage_class=storage_class,
        archive_uri=archive_uri,
    )


def folder_bytes(folder: Path) -> int:
    """The sizes of the regular files under ``folder``, following no symbolic link."""
    return sum(_regular_sizes(folder))


def _regular_sizes(folder: Path) -> Iterable[int]:
    # os.walk does not descend into linked folders; lstat does not follow linked files. A file
    # removed while the walk runs simply no longer counts.
    for directory, _, names in os.walk(folder):
        for name in names:
            try:
                status = os.lstat(os.path.join(directory, name))
            except FileNotFoundError:
                continue
            if stat.S_ISREG(status.st_mode):
                yield status.st_size


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
