"""A campaign file on disk: parsed, validated, and what its first round starts from.

Keeps the parsed document beside the model, so every later check can point at the line the
user wrote.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tuneloop import storage
from tuneloop.artifacts.manifest import Checkpoint, read_checkpoint_record, read_checkpoint_uri
from tuneloop.config.campaign import Campaign
from tuneloop.config.paths import absolute
from tuneloop.documents import Document, load_document, problems_from_validation_error
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
    """The campaign file's text; a missing or unreadable file is a CampaignError naming it."""
    source = str(path)
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CampaignError([Problem("", "file not found", source=source)]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CampaignError([Problem("", f"cannot read file: {exc}", source=source)]) from None


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


def find_template(cf: CampaignFile, reference: str) -> Path | None:
    path = Path(reference)
    if path.is_absolute():
        return path if path.is_file() else None
    here = cf.path.resolve().parent
    for folder in (here, here.parent, recipes_root()):
        candidate = folder / path
        if candidate.is_file():
            return candidate
    return None


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
