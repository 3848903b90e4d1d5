"""The local backend's entry point: run one recipe as a local job.

``run_recipe(spec, progress)`` is what ``LocalRunner`` jobs call by default
(``tuneloop.local.train:run_recipe``). It loads the job's recipe (a path, a ``file://`` URI or
the recipe itself), renders it for the local platform, picks the device (and sets torch's
threads: this runs in the job process) and hands it to the stage's trainer:

| method | trainer |
|---|---|
| SFT | ``tuneloop.local.sft:train_sft`` |
| CPT | ``tuneloop.local.sft:train_cpt`` |
| RFT | ``tuneloop.local.rft:train_rft`` |
| evaluation | ``tuneloop.local.evaluate:evaluate`` |

It returns what the trainer returns: a small JSON result (checkpoint, final loss, steps,
seconds) that the runner records in ``status.json``.

The helpers here are shared by every training stage: where a job writes (``job_output_dir``),
what it starts from and how that was trained (``resolve_base``), and the Nova-layout outputs
it leaves (``write_training_outputs``: ``manifest.json`` and ``checkpoint.json``).

Heavy libraries are imported by the trainers, inside functions.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneloop import storage
from tuneloop.artifacts.manifest import MANIFEST, Checkpoint, read_checkpoint, read_checkpoint_uri
from tuneloop.documents import MAX_DOCUMENT_BYTES, Document, load_document
from tuneloop.errors import ConfigError, ModelTypeMismatchError, PlatformMismatchError, Problem
from tuneloop.local import outputs
from tuneloop.recipes.catalog import Method, Platform
from tuneloop.recipes.render import RenderedRecipe, render_recipe
from tuneloop.recipes.rules import RecipeContext

Progress = Callable[[int, int | None], None]


def no_progress(step: int, total: int | None = None) -> None:
    """The progress callback of a job nobody watches."""


TRAINERS: dict[str, str] = {
    "sft": "tuneloop.local.sft:train_sft",
    "cpt": "tuneloop.local.sft:train_cpt",
    "rft": "tuneloop.local.rft:train_rft",
    "eval": "tuneloop.local.evaluate:evaluate",
}
"""The function each recipe kind runs, called as ``function(recipe, spec, progress)``."""

_KIND_METHODS: dict[str, Any] = {"sft": "sft", "cpt": "cpt", "rft": "rft", "eval": None}


def log(message: str) -> None:
    """One line in the job log (the job process's stdout)."""
    print(f"[tuneloop] {message}", flush=True)


# -- recipes --------------------------------------------------------------------------------------


def load_recipe(recipe: Any, kind: str = "") -> RenderedRecipe:
    """Render a job's recipe for the local platform.

    ``recipe`` is a ``RenderedRecipe`` (returned as is), a YAML path or ``file://``/``s3://``
    URI, or the recipe as a mapping. ``kind`` (sft, cpt, rft, eval) names the method when the
    document alone does not say; empty lets the document decide."""
    if isinstance(recipe, RenderedRecipe):
        return recipe
    if isinstance(recipe, Mapping):
        template: Any = Document(data=dict(recipe), source="<job recipe>")
    elif isinstance(recipe, str | Path) and str(recipe):
        text = str(recipe)
        if storage.is_s3(text):
            template = load_document(text, storage.read_text(text, limit=MAX_DOCUMENT_BYTES))
        else:
            template = storage.local_path(text)
    else:
        raise ConfigError([Problem("recipe", "the job has no recipe (a path or a mapping)")])
    method: Any = _KIND_METHODS.get(kind.strip().lower(), "detect") if kind else "detect"
    return render_recipe(template, method=method, context=RecipeContext(platform=Platform.LOCAL))


# -- where a job writes ---------------------------------------------------------------------------


def job_output_dir(spec: Any, recipe: RenderedRecipe | None = None) -> Path:
    """The job's output folder: ``spec.output``, else the recipe's ``run.output_s3_path``,
    else the job directory's ``outputs/``. Created if missing; it must be local."""
    candidates = [getattr(spec, "output", "") or ""]
    if recipe is not None:
        run = getattr(recipe.model, "run", None)
        candidates.append(getattr(run, "output_s3_path", "") or "")
    uri = next((c for c in candidates if c), "")
    if not uri:
        folder = spec.outputs_dir
    elif storage.is_s3(uri):
        raise ConfigError(
            [
                Problem(
                    "output",
                    f"{uri} is on S3; the local backend writes to local folders",
                    allowed="a path or file:// URI",
                )
            ]
        )
    else:
        folder = storage.local_path(uri)
    folder = folder.expanduser().absolute()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# -- what a job starts from -----------------------------------------------------------------------


@dataclass(frozen=True)
class BaseCheckpoint:
    """The model a training job starts from."""

    name_or_path: str
    """What to load: ``tiny-chat``, a model directory or a checkpoint directory."""
    lineage: tuple[Method, ...] = ()
    """Methods applied since the base model, oldest first (empty for a base model)."""
    record: Checkpoint | None = None
    """The earlier job's checkpoint.json, when the base is a job's output."""


def _output_folder_of(path: Path) -> Path | None:
    """The job output folder whose manifest names ``path`` (``path`` itself when it holds a
    manifest.json), or None."""
    if (path / MANIFEST).is_file():
        return path
    parent = path.parent
    if (parent / MANIFEST).is_file():
        try:
            named = storage.local_path(read_checkpoint_uri(str(parent)))
        except ConfigError:
            return None
        if named.absolute() == path.absolute():
            return parent
    return None


def resolve_base(name_or_path: str, *, model_type: str | None = None) -> BaseCheckpoint:
    """What ``run.model_name_or_path`` names, and how it was trained.

    A local job's output folder (holding ``manifest.json``) stands for the checkpoint its
    manifest names. When the checkpoint is a job's output, the lineage comes from that job's
    ``checkpoint.json``, whose platform must be local and whose model type must match
    ``model_type``; a plain model directory or ``tiny-chat`` starts a new lineage."""
    name = str(name_or_path)
    path = storage.local_path(name)
    if storage.is_s3(name) or not path.is_dir():
        return BaseCheckpoint(name)
    folder = _output_folder_of(path)
    if folder is None:
        return BaseCheckpoint(str(path))
    record = read_checkpoint(str(folder), path="run.model_name_or_path")
    target = storage.local_path(read_checkpoint_uri(str(folder), path="run.model_name_or_path"))
    if record is not None:
        if record.platform is not Platform.LOCAL:
            raise PlatformMismatchError(
                "run.model_name_or_path",
                f"{name} was trained on {record.platform.value}, not on the local backend",
                "start from a checkpoint a local job wrote, or from tiny-chat",
            )
        if model_type and record.model_type != model_type:
            raise ModelTypeMismatchError(
                "run.model_type",
                f"{name} is a {record.model_type} checkpoint and the recipe names {model_type}",
                f"set run.model_type to {record.model_type}",
            )
    return BaseCheckpoint(str(target), record.lineage if record else (), record)


# -- what a job leaves ----------------------------------------------------------------------------


def write_training_outputs(
    output_dir: Path, checkpoint_dir: Path, recipe: RenderedRecipe, base: BaseCheckpoint
) -> Checkpoint:
    """``manifest.json`` naming the checkpoint and ``checkpoint.json`` describing it: the
    recipe's model type and technique, lineage = the base's lineage + this recipe's method."""
    if recipe.method is None:
        raise ValueError("an evaluation recipe trains no checkpoint")
    outputs.write_manifest(output_dir, checkpoint_dir)
    return outputs.write_checkpoint_record(
        output_dir,
        checkpoint_dir=checkpoint_dir,
        model_type=recipe.model_type,
        technique=recipe.technique,
        lineage=(*base.lineage, recipe.method),
    )


# -- the entry point ------------------------------------------------------------------------------


def _resolve(target: str) -> Callable[..., Any]:
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)


def run_recipe(spec: Any, progress: Progress | None = None) -> Any:
    """Run the job's recipe: the runner's default entry point. Returns the trainer's result."""
    started = time.monotonic()
    recipe = load_recipe(spec.recipe, getattr(spec, "kind", "") or "")
    log(f"job {spec.name}: {recipe.kind} recipe for {recipe.model_type} ({recipe.source})")
    for problem in recipe.warnings:
        log(f"warning: {problem.format()}")
    ignored = ignored_fields_of(recipe)
    if ignored:
        log("ignored on the local backend (no local meaning): " + ", ".join(ignored))

    from tuneloop.local.device import choose_device

    device = choose_device()  # the job process: sets torch's threads too
    log(f"device: {device.describe()}")
    function = _resolve(TRAINERS[recipe.kind])
    result = function(recipe, spec, progress or no_progress)
    if isinstance(result, dict):
        result.setdefault("seconds", round(time.monotonic() - started, 2))
    log(f"job {spec.name} finished in {time.monotonic() - started:.1f}s")
    return result


def ignored_fields_of(recipe: RenderedRecipe) -> list[str]:
    """The recipe fields the local SFT/CPT trainer ignores ([] for other methods, whose
    trainers report their own)."""
    if recipe.method not in (Method.SFT, Method.CPT):
        return []
    from tuneloop.local.recipe_map import ignored_fields

    return ignored_fields(recipe.model, recipe.data)
