"""A campaign file on disk: parsed, validated, and what its first round starts from.

Keeps the parsed document beside the model, so every later check can point at the line the
user wrote.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tuneloop import storage
from tuneloop.artifacts.manifest import Checkpoint, read_checkpoint_record, read_checkpoint_uri
from tuneloop.config.campaign import Campaign
from tuneloop.config.paths import absolute, project_dir
from tuneloop.documents import (
    Document,
    load_document,
    problems_from_validation_error,
    read_config_text,
)
from tuneloop.errors import CampaignError, ConfigError, ModelConfigNotFoundError, Problem
from tuneloop.recipes import compat
from tuneloop.recipes.catalog import MODELS, PLACEHOLDER_PREFIX, Platform

RECIPES_DIR_ENV = "TUNELOOP_RECIPES_DIR"
CAMPAIGNS_ENV = "TUNELOOP_CAMPAIGNS_DIR"


def recipes_root() -> Path:
    """The repository's recipes/ folder (override with TUNELOOP_RECIPES_DIR)."""
    configured = os.environ.get(RECIPES_DIR_ENV)
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[3] / "recipes"


def campaigns_folder() -> Path:
    """Where campaign files live: $TUNELOOP_CAMPAIGNS_DIR, else recipes/campaigns/."""
    configured = os.environ.get(CAMPAIGNS_ENV, "").strip()
    return Path(configured) if configured else recipes_root() / "campaigns"


@dataclass
class CampaignFile:
    campaign: Campaign
    document: Document

    @property
    def path(self) -> Path:
        return Path(self.document.source)

    def line(self, *loc: str | int) -> int | None:
        return self.document.line_of(loc)

    def problem(self, loc: tuple[str | int, ...], message: str, **kwargs: Any) -> Problem:
        return self.document.problem(loc, message, **kwargs)


def load_campaign(path: str | Path) -> CampaignFile:
    """Parse and validate the campaign's own fields (recipes are checked by `plan_round`)."""
    return parse_campaign(read_campaign_text(path), path)


def read_campaign_text(path: str | Path) -> str:
    """The campaign file's text; a missing, unreadable, oversized or non-regular file (a FIFO,
    a device, a folder) is a CampaignError naming it, and no more than the size cap is read."""
    try:
        return read_config_text(path)
    except ConfigError as exc:
        raise CampaignError(exc.problems) from None


def parse_campaign(text: str, source: str | Path) -> CampaignFile:
    """A campaign file's ``text`` (read from ``source``, which problems name), parsed and
    validated with the same errors as `load_campaign`: a round's tasks rebuild the campaign
    from the text its plan read, not from the file as it is now."""
    try:
        document = load_document(source, text)
    except ConfigError as exc:
        raise CampaignError(exc.problems) from None
    try:
        campaign = Campaign.model_validate(document.data)
    except ValidationError as exc:
        raise CampaignError(problems_from_validation_error(exc, Campaign, document)) from None
    return CampaignFile(campaign, document)


def for_jobs(cf: CampaignFile) -> CampaignFile:
    """The campaign as a round's jobs see it: a local output root made absolute (job processes
    and Airflow tasks run from other working directories). ``cf`` itself is unchanged."""
    backend = cf.campaign.backend
    if backend.platform is not Platform.LOCAL:
        return cf
    local = backend.model_copy(update={"output_root": absolute(backend.output_root)})
    return replace(cf, campaign=cf.campaign.model_copy(update={"backend": local}))


def load_for_rounds(path: str | Path) -> CampaignFile:
    """The campaign file as a round's tasks load it (see `for_jobs`)."""
    return for_jobs(load_campaign(path))


# --- the plan ----------------------------------------------------------------------------------


RECIPE_ROOTS_ENV = "TUNELOOP_RECIPE_ROOTS"


def recipe_roots() -> list[Path]:
    """The folders recipe templates may be read from, symlinks followed: the repository's
    recipes/ (`recipes_root`), the campaigns folder (`campaigns_folder`: its path is set by
    whoever runs tuneloop, so templates kept beside the campaigns there stay usable), and each
    folder in $TUNELOOP_RECIPE_ROOTS (separated by the path separator, ``:`` on Linux; a
    relative one is taken from the project folder, ``$TUNELOOP_PROJECT_DIR``).

    A campaign cannot add a root itself: the file whose references are being confined must not
    be able to widen its own confinement."""
    named = [recipes_root(), campaigns_folder()]
    for part in os.environ.get(RECIPE_ROOTS_ENV, "").split(os.pathsep):
        if part.strip():
            named.append(project_dir() / part.strip())  # an absolute part replaces the base
    real = [folder.resolve() for folder in named]
    # A root inside another adds nothing (recipes/campaigns is inside recipes/ by default).
    return [
        root
        for index, root in enumerate(real)
        if root not in real[:index]
        and not any(root != other and root.is_relative_to(other) for other in real)
    ]


def find_template(cf: CampaignFile, reference: str) -> Path | None:
    """The recipe template a campaign's ``recipe:`` names, or None when there is none it may
    use (not found, outside the recipe roots, or not a regular file); `locate_recipe` says
    which."""
    try:
        return locate_recipe(cf, reference, ())
    except CampaignError:
        return None


def locate_recipe(cf: CampaignFile, reference: str, loc: tuple[str | int, ...]) -> Path:
    """The real path of the recipe template that ``reference`` (the campaign's field at
    ``loc``, e.g. ``stages[0].recipe``) names. Nothing is opened here.

    A relative reference is looked up in the campaign file's folder, then that folder's
    parent, then each recipe root (`recipe_roots`); the first that exists is the one meant.
    Whichever it is, its real path (``..`` and symlinks resolved) must lie inside a recipe
    root: the campaign's own folder is a place to look, not a root, so a campaign kept
    elsewhere names repository templates relatively (``nova/nova-2-lite/sft-lora.yaml``) or
    its own through a symlink into a root or a folder added to $TUNELOOP_RECIPE_ROOTS. An
    absolute reference outside the roots is refused whether or not it exists (the answer must
    not tell a campaign which files the machine has).
    Only a regular file counts (a folder, FIFO or device is refused, not opened).

    Raises CampaignError with one problem at ``loc``: not found, outside the roots, or not a
    regular file; the message never shows anything read from the file.
    """
    roots = recipe_roots()
    target = _recipe_target(cf, reference, roots)
    if target is None:
        raise CampaignError(
            [
                cf.problem(
                    (*loc, "recipe"),
                    f"recipe template {reference!r} not found",
                    fix=f"give a path relative to {cf.path.parent}, its parent, or a recipe "
                    f"root ({_shown_roots(roots)})",
                )
            ]
        )
    if not _inside(target, roots):
        raise CampaignError(
            [
                cf.problem(
                    (*loc, "recipe"),
                    f"recipe template {reference!r} is outside the recipe roots, so it is not read",
                    allowed=f"templates inside {_shown_roots(roots)}",
                    fix=f"put the template under {recipes_root()}, or add its folder to "
                    f"${RECIPE_ROOTS_ENV} (folders separated by {os.pathsep!r})",
                )
            ]
        )
    if not _regular_file(target):
        raise CampaignError(
            [
                cf.problem(
                    (*loc, "recipe"),
                    f"recipe template {reference!r} is not a regular file",
                    fix="name a recipe YAML file",
                )
            ]
        )
    return target


def _recipe_target(cf: CampaignFile, reference: str, roots: list[Path]) -> Path | None:
    """The real path ``reference`` names: the first candidate that exists; for an absolute
    reference outside the roots, that path itself, unchecked (None when nothing exists)."""
    if not reference or "\x00" in reference:
        return None
    path = Path(reference)
    if path.is_absolute():
        candidates = [path]
    else:
        here = cf.path.resolve().parent
        candidates = [folder / path for folder in (here, here.parent, *roots)]
    for candidate in candidates:
        try:
            real = candidate.resolve()
            if path.is_absolute() and not _inside(real, roots):
                return real  # refused without asking whether it exists
            if real.exists():
                return real
        except (OSError, RuntimeError):  # a name too long, a symlink loop
            continue
    return None


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def _regular_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.stat().st_mode)  # stat, not open: a FIFO would block
    except OSError:
        return False


def _shown_roots(roots: list[Path]) -> str:
    return ", ".join(str(root) for root in roots)


def resolve_base(cf: CampaignFile, *, offline: bool) -> tuple[str, Checkpoint | None]:
    """Round 1's model_name_or_path and, for an earlier checkpoint, what it is.

    Offline, an earlier checkpoint is described from the campaign file alone; online its
    manifest.json must exist (the service would fail with "Model config not found" otherwise).
    """
    campaign = cf.campaign
    base = campaign.base_model
    spec_base = _model_base(campaign)
    if isinstance(base, str) and (not base or base == spec_base):
        return spec_base, None
    if isinstance(base, str):
        if compat.ESCROW_BUCKET.match(base):
            raise CampaignError(
                [
                    cf.problem(
                        ("base_model",),
                        f"{base} is a checkpoint URI; base_model names the training job's output "
                        "folder, whose manifest.json says where the checkpoint is",
                        fix="use the job's output folder (output_s3_path/<job name>), or the "
                        "{output_uri, technique, trained_with} form for a job tuneloop did not "
                        "run",
                    )
                ]
            )
        if offline:
            # Read from the manifest when the round starts; until then, say where it comes from.
            local = campaign.platform is Platform.LOCAL
            return (base if local else f"{PLACEHOLDER_PREFIX}base"), None
        if campaign.platform is Platform.LOCAL and not _looks_like_output(base):
            if not storage.local_path(base).is_dir():
                raise ModelConfigNotFoundError(
                    "base_model",
                    f"{base} is neither a model directory nor a job output folder",
                    "name a Hugging Face model directory on disk, or the output folder of a "
                    "finished training job (the one holding manifest.json)",
                )
            return base, None  # a model directory on disk, not a job output
        uri = read_checkpoint_uri(base, path="base_model")
        return uri, read_checkpoint_record(base, uri)
    declared = Checkpoint(
        uri=f"{PLACEHOLDER_PREFIX}base",
        model_type=campaign.model_type,
        technique=base.technique,
        platform=campaign.platform,
        lineage=tuple(base.trained_with),
        output_uri=base.output_uri,
    )
    if offline:
        return declared.uri, declared
    uri = read_checkpoint_uri(base.output_uri, path="base_model.output_uri")
    return uri, declared.model_copy(update={"uri": uri})


def _looks_like_output(path: str) -> bool:
    return storage.exists(storage.join(path, "manifest.json"))


def _model_base(campaign: Campaign) -> str:
    return MODELS[campaign.model_type].base_model
