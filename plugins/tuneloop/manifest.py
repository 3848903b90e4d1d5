"""Checkpoints: what a finished training job produced, read from its manifest.json.

A Nova training job writes ``manifest.json`` in its output folder; its ``checkpoint_s3_bucket``
is the URI the next stage uses as ``model_name_or_path``. The manifest says nothing about how the
checkpoint was trained, so tuneloop writes ``checkpoint.json`` beside it (model type, technique,
platform and the methods applied since the base model): that is what the compatibility checks
need before the next job is allowed to start.
"""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict

from tuneloop import storage
from tuneloop.errors import ModelConfigNotFoundError
from tuneloop.recipes.catalog import Method, Platform, Technique

MANIFEST = "manifest.json"
CHECKPOINT_RECORD = "checkpoint.json"


class Checkpoint(BaseModel):
    """A trained checkpoint and how it came to be."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    uri: str
    """The manifest's `checkpoint_s3_bucket`: what the next stage passes as model_name_or_path."""
    model_type: str
    """The model variant it was trained from."""
    technique: Technique
    """LoRA or full-rank."""
    platform: Platform
    """Where it was trained; checkpoints only work on that platform."""
    lineage: tuple[Method, ...] = ()
    """Training methods applied since the base model, oldest first."""
    output_uri: str = ""
    """The job output folder holding manifest.json."""

    @property
    def origin(self) -> Method | None:
        """The method that started this lineage; it decides what may follow."""
        return self.lineage[0] if self.lineage else None


def read_checkpoint_uri(output_uri: str, *, path: str = "base_checkpoint") -> str:
    """The `checkpoint_s3_bucket` of the manifest in a job's output folder.

    Raises ModelConfigNotFoundError when the manifest is missing or carries no checkpoint URI:
    starting a job from it would fail on the service after the fleet was provisioned.
    """
    manifest_uri = (
        output_uri if output_uri.endswith(MANIFEST) else storage.join(output_uri, MANIFEST)
    )
    fix = (
        "point it at the output folder of a training job that finished (the folder holding "
        "manifest.json), copied exactly; check the job succeeded and that your role can read it"
    )
    try:
        text = storage.read_text(manifest_uri)
    except FileNotFoundError:
        raise ModelConfigNotFoundError(path, f"no manifest at {manifest_uri}", fix) from None
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelConfigNotFoundError(
            path, f"{manifest_uri} is not valid JSON ({exc.msg}, line {exc.lineno})", fix
        ) from None
    uri = manifest.get("checkpoint_s3_bucket") if isinstance(manifest, dict) else None
    if not isinstance(uri, str) or not uri:
        raise ModelConfigNotFoundError(path, f"{manifest_uri} has no checkpoint_s3_bucket", fix)
    return uri


def read_checkpoint(output_uri: str, *, path: str = "base_checkpoint") -> Checkpoint | None:
    """The checkpoint of a job output folder, or None when no checkpoint.json describes it.

    The manifest must exist either way (ModelConfigNotFoundError otherwise).
    """
    return read_checkpoint_record(output_uri, read_checkpoint_uri(output_uri, path=path))


def read_checkpoint_record(output_uri: str, uri: str) -> Checkpoint | None:
    """The checkpoint.json beside a manifest whose checkpoint_s3_bucket is ``uri``, if any."""
    folder = output_uri.removesuffix(MANIFEST).rstrip("/")
    try:
        record = json.loads(storage.read_text(storage.join(folder, CHECKPOINT_RECORD)))
    except FileNotFoundError:
        return None
    record.setdefault("output_uri", folder)
    record["uri"] = uri
    return Checkpoint.model_validate(record)
