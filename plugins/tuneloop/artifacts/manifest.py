"""Checkpoints: what a finished training job produced, read from its manifest.json.

A Nova training job writes ``manifest.json``; its ``checkpoint_s3_bucket`` is the URI the next
stage uses as ``model_name_or_path``. Where the manifest lands depends on the platform:

- SageMaker HyperPod (and the local backend): ``<output>/<job>/manifest.json``;
- SageMaker training jobs: inside ``<output>/<job>/output/output.tar.gz``, at the archive root;
- serverless training jobs: ``<output>/<job>/output/output/manifest.json``.

Every reader here accepts the job folder, the manifest.json itself or the ``.tar.gz``, and tries
those layouts in that order (as the SageMaker SDK does). A tarball is streamed and reading stops
at the manifest, so a large output.tar.gz is never downloaded whole.

The manifest says nothing about how the checkpoint was trained, so tuneloop writes
``checkpoint.json`` (model type, technique, platform and the methods applied since the base
model): beside manifest.json in a folder layout, and for a training job beside the ``output/``
folder (the job's own tarball cannot be changed) or inside the tarball. That is what the
compatibility checks need before the next job is allowed to start.

Only ``checkpoint_s3_bucket`` is accepted. Some SDK documentation speaks of a
``checkpoint_s3_path``, but that is the SDK's own attribute name; the SDK code and the SageMaker
documentation read ``checkpoint_s3_bucket`` from the manifest, and guessing at another key could
start the next stage from the wrong weights after its fleet was provisioned.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tuneloop import storage
from tuneloop.errors import ModelConfigNotFoundError, Problem, StorageError

# The box lives with the rules that judge it (recipes sit below artifacts); readers here build it,
# and it is still importable from here (the `as` marks the re-export for mypy).
from tuneloop.recipes.compat import Checkpoint as Checkpoint

MANIFEST = "manifest.json"
CHECKPOINT_RECORD = "checkpoint.json"
OUTPUT_TARBALL = "output.tar.gz"
CHECKPOINT_KEY = "checkpoint_s3_bucket"

SERVERLESS_MANIFEST = f"output/output/{MANIFEST}"
JOB_TARBALL = f"output/{OUTPUT_TARBALL}"

_FIX = (
    "point it at the output folder of a training job that finished (the folder holding "
    "manifest.json or output/output.tar.gz), copied exactly; check the job succeeded and that "
    "your role can read it"
)


_RECORD_FIX = (
    "checkpoint.json is written by tuneloop when a stage finishes; rewrite it from the round's "
    "ledger record, or run the stage again"
)


def is_tarball(uri: str) -> bool:
    return uri.rstrip("/").endswith((".tar.gz", ".tgz", ".tar"))


@dataclass(frozen=True)
class _Source:
    """Where a job's manifest may be: the manifest.json or the tarball holding it."""

    uri: str
    folder: str
    """The job folder, ``<output>/<job>``: where tuneloop keeps checkpoint.json."""

    @property
    def in_tarball(self) -> bool:
        return is_tarball(self.uri)


def _folder_of(uri: str) -> str:
    """The job folder of a manifest.json or output.tar.gz URI in any of the layouts."""
    if uri.endswith("/" + SERVERLESS_MANIFEST):
        return uri.removesuffix("/" + SERVERLESS_MANIFEST)
    parent = uri.rsplit("/", 1)[0] if "/" in uri else "."
    if is_tarball(uri) and parent.endswith("/output"):
        return parent.removesuffix("/output")
    return parent


def _candidates(output_uri: str) -> list[_Source]:
    """Where to look, in order: the layouts of HyperPod, serverless and training jobs."""
    text = output_uri.rstrip("/")
    if is_tarball(text) or text.endswith(MANIFEST):
        return [_Source(text, _folder_of(text))]
    found = [
        _Source(storage.join(text, name), text)
        for name in (MANIFEST, SERVERLESS_MANIFEST, JOB_TARBALL)
    ]
    if text.endswith("/output"):  # a training job's output/ folder rather than the job folder
        found.append(_Source(storage.join(text, OUTPUT_TARBALL), text.removesuffix("/output")))
    return found


def _read_tar(uri: str, names: set[str]) -> dict[str, bytes]:
    """The wanted root members of a tarball, reading no further than the last one needed."""
    found: dict[str, bytes] = {}
    for member in storage.tar_members(uri, lambda name: name in names):
        found.setdefault(member.name, member.data)
        if set(found) == names:
            break
    return found


def _locate_and_read(
    output_uri: str, path: str, *, with_record: bool
) -> tuple[_Source, bytes, bytes | None]:
    """Find the manifest; return where, its bytes and (when asked, and the manifest is in a
    tarball) the checkpoint.json bytes read in the same pass."""
    tried = _candidates(output_uri)
    for source in tried:
        try:
            if not source.in_tarball:
                return source, storage.read_text(source.uri).encode(), None
            wanted = {MANIFEST, CHECKPOINT_RECORD} if with_record else {MANIFEST}
            members = _read_tar(source.uri, wanted)
        except FileNotFoundError:
            continue
        if MANIFEST not in members:
            raise ModelConfigNotFoundError(
                path,
                f"{source.uri} holds no {MANIFEST} at its root (the job wrote no checkpoint: "
                "it may have failed, or been an evaluation job)",
                _FIX,
            )
        return source, members[MANIFEST], members.get(CHECKPOINT_RECORD)
    uris = [source.uri for source in tried]
    where = uris[0] if len(uris) == 1 else f"{', '.join(uris[:-1])} or {uris[-1]}"
    raise ModelConfigNotFoundError(path, f"no manifest at {where}", _FIX)


def _checkpoint_uri(source: _Source, data: bytes, path: str) -> str:
    where = source.uri + (f" ({MANIFEST})" if source.in_tarball else "")
    try:
        manifest: Any = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        detail = f"{exc.msg}, line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else exc
        raise ModelConfigNotFoundError(
            path, f"{where} is not valid JSON ({detail})", _FIX
        ) from None
    uri = manifest.get(CHECKPOINT_KEY) if isinstance(manifest, dict) else None
    if isinstance(uri, str) and uri:
        return uri
    if isinstance(manifest, dict):
        held = f"it holds: {', '.join(sorted(manifest))}" if manifest else "it is empty"
    else:
        held = f"it is a JSON {type(manifest).__name__}, not an object"
    raise ModelConfigNotFoundError(path, f"{where} has no {CHECKPOINT_KEY} ({held})", _FIX)


def read_checkpoint_uri(output_uri: str, *, path: str = "base_checkpoint") -> str:
    """The `checkpoint_s3_bucket` of a job's manifest.

    ``output_uri`` is the job folder, the manifest.json or the output.tar.gz (local path, file://
    or s3://). Raises ModelConfigNotFoundError when no manifest exists or it carries no
    checkpoint URI: starting a job from it would fail on the service after the fleet was
    provisioned.
    """
    source, data, _ = _locate_and_read(output_uri, path, with_record=False)
    return _checkpoint_uri(source, data, path)


def read_checkpoint(output_uri: str, *, path: str = "base_checkpoint") -> Checkpoint | None:
    """The checkpoint of a job output, or None when no checkpoint.json describes it.

    The manifest must exist either way (ModelConfigNotFoundError otherwise). A tarball is read
    once for both files.
    """
    source, data, record = _locate_and_read(output_uri, path, with_record=True)
    uri = _checkpoint_uri(source, data, path)
    return _record(source, uri, record)


def read_checkpoint_record(output_uri: str, uri: str) -> Checkpoint | None:
    """The checkpoint.json that goes with a job output whose checkpoint_s3_bucket is ``uri``.

    Looked for in the job folder (beside manifest.json, or beside a training job's ``output/``),
    then inside the job's output.tar.gz. None when there is none.
    """
    sources = _candidates(output_uri)
    record = _read_record_file(storage.join(sources[0].folder, CHECKPOINT_RECORD))
    if record is not None:
        return _checkpoint(record, sources[0].folder, uri)
    for source in sources:
        if not source.in_tarball:
            continue
        try:
            data = _read_tar(source.uri, {CHECKPOINT_RECORD}).get(CHECKPOINT_RECORD)
        except FileNotFoundError:
            continue
        if data is None:
            return None
        return _checkpoint(
            _parse_record(data, f"{source.uri} ({CHECKPOINT_RECORD})"), source.folder, uri
        )
    return None


def _parse_record(data: str | bytes, where: str) -> dict[str, Any]:
    try:
        record = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StorageError(
            [Problem("", f"{where} is not valid JSON ({exc})", fix=_RECORD_FIX)]
        ) from None
    if not isinstance(record, dict):
        raise StorageError([Problem("", f"{where} is not a JSON object", fix=_RECORD_FIX)])
    return record


def _read_record_file(uri: str) -> dict[str, Any] | None:
    try:
        text = storage.read_text(uri)
    except FileNotFoundError:
        return None
    return _parse_record(text, uri)


def _record(source: _Source, uri: str, in_tarball: bytes | None) -> Checkpoint | None:
    beside = _read_record_file(storage.join(source.folder, CHECKPOINT_RECORD))
    if beside is not None:
        return _checkpoint(beside, source.folder, uri)
    if in_tarball is not None:
        where = f"{source.uri} ({CHECKPOINT_RECORD})"
        return _checkpoint(_parse_record(in_tarball, where), source.folder, uri)
    return None


def _checkpoint(record: dict[str, Any], folder: str, uri: str) -> Checkpoint:
    record = dict(record)
    record.setdefault("output_uri", folder)
    record["uri"] = uri
    return Checkpoint.model_validate(record)
