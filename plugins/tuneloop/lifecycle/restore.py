"""Bring an archived base back before a round trains from it.

The rules:

- `restore_plan` says what of a base is archived, and nothing else: locally, the stage folder
  is gone and its tarball (`local_archive.archive_location`) is there; on S3, the objects
  under the base's output folder, and under its checkpoint prefix when that lies elsewhere,
  that are in GLACIER or DEEP_ARCHIVE and not restored (GLACIER_IR objects are read at once).
  None: nothing to restore, the round goes on.
- The tier is ``retention.restore_tier`` and the copy stays readable ``retention.restore_days``
  days; Expedited is never asked of DEEP_ARCHIVE (S3 refuses it): Standard instead.
- `start_restore` extracts local tarballs (verified against their digest first) and asks S3
  to restore each object (asking again for one whose restore is under way is harmless); it
  returns the objects still being restored, which `pending_restores` then watches.
- An escrow checkpoint prefix the account may not list is left to the service (a warning);
  the base's own output folder must be listable.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tuneloop import storage
from tuneloop.config.campaign import Campaign
from tuneloop.config.paths import absolute, campaign_root
from tuneloop.errors import Problem
from tuneloop.lifecycle import local_archive
from tuneloop.lifecycle.inventory import job_folder
from tuneloop.lifecycle.records import (
    LOCAL_ARCHIVE_CLASS,
    Owner,
    RestoreItem,
    RestorePlan,
    RestoreTier,
)
from tuneloop.lifecycle.retention import normalised
from tuneloop.lifecycle.store import LifecycleError, LifecycleStore

log = logging.getLogger(__name__)

NEEDS_RESTORE = frozenset({"GLACIER", "DEEP_ARCHIVE"})
"""Classes whose objects cannot be read until a restore finishes."""


def restore_plan(
    campaign: Campaign,
    base_output_uri: str,
    base_round: int | None,
    checkpoint_uri: str | None = None,
) -> RestorePlan | None:
    """What must be restored before a round starts from ``base_output_uri`` (round
    ``base_round``'s, when it is one); None when nothing of it is archived."""
    if not base_output_uri:
        return None  # the base model: nothing of the campaign's
    if storage.is_s3(base_output_uri):
        items = _s3_items(base_output_uri, checkpoint_uri)
    else:
        items = _local_items(campaign, base_output_uri)
    if not items:
        return None
    return RestorePlan(
        # 0: a base that is no round of this campaign (a checkpoint trained elsewhere).
        base_round=base_round if base_round is not None else 0,
        base_output_uri=base_output_uri,
        tier=_tier(campaign.retention.restore_tier, items),
        days=campaign.retention.restore_days,
        items=items,
    )


def start_restore(plan: RestorePlan) -> list[str]:
    """Start bringing ``plan``'s items back: local tarballs are extracted now; S3 objects get a
    RestoreObject request. Returns the S3 URIs whose restore has not finished."""
    pending: list[str] = []
    for item in plan.items:
        if item.owner == "local":
            _extract(item)
            continue
        from tuneloop.lifecycle import objects

        tier = _item_tier(plan.tier, item.storage_class)
        state = objects.request_restore(item.uri, days=plan.days, tier=tier)
        log.info("restore of %s (%s, %s tier): %s", item.uri, item.storage_class, tier, state)
        if state in ("not_requested", "in_progress"):
            pending.append(item.uri)
    return pending


def pending_restores(uris: list[str]) -> list[str]:
    """The URIs among ``uris`` whose restore has not finished (an object that is gone, or is
    not archived, waits for nothing)."""
    if not uris:
        return []
    from tuneloop.lifecycle import objects

    waiting = []
    for uri in uris:
        info = objects.head(uri)
        if info is not None and objects.restore_state(info) in ("not_requested", "in_progress"):
            waiting.append(uri)
    return waiting


# --- local -------------------------------------------------------------------------------------


def _local_items(campaign: Campaign, base_output_uri: str) -> list[RestoreItem]:
    folder = absolute(normalised(base_output_uri))
    if Path(folder).is_dir():
        return []
    root = absolute(campaign_root(campaign))
    tarball = local_archive.archive_location(root, folder)
    if not Path(tarball).is_file():
        return []  # not archived (perhaps deleted): the round's own checks say so
    digest = local_archive.read_digest(tarball) or _recorded_digest(
        LifecycleStore.for_campaign(campaign), base_output_uri, folder
    )
    return [
        RestoreItem(
            uri=folder,
            owner="local",
            storage_class=LOCAL_ARCHIVE_CLASS,
            archive_uri=tarball,
            digest=digest,
        )
    ]


def _recorded_digest(store: LifecycleStore, *uris: str) -> str | None:
    """The digest the archive's Done recorded, under any of the names the folder goes by."""
    for uri in dict.fromkeys(u for name in uris for u in (name, normalised(name))):
        done = store.done(uri, "archive")
        if done is not None and done.digest:
            return done.digest
    return None


def _extract(item: RestoreItem) -> None:
    if not item.archive_uri or not item.digest:
        raise LifecycleError(
            [
                Problem(
                    "",
                    "is archived, but no digest of its tarball was found (neither "
                    f"{local_archive.digest_path(item.archive_uri or '')} nor a recorded Done), "
                    "so the tarball cannot be verified",
                    source=item.uri,
                    fix="check the tarball by hand and extract it into the folder",
                )
            ]
        )
    local_archive.extract_tarball(item.archive_uri, item.uri, item.digest)
    log.info("restored %s from %s", item.uri, item.archive_uri)


# --- S3 ----------------------------------------------------------------------------------------


def _s3_items(base_output_uri: str, checkpoint_uri: str | None) -> list[RestoreItem]:
    from tuneloop.lifecycle import objects

    # A training job's output is named by its output.tar.gz; the objects lie in its job folder.
    base = job_folder(normalised(base_output_uri))
    prefixes = [base]
    if checkpoint_uri and storage.is_s3(checkpoint_uri):
        checkpoint = normalised(checkpoint_uri)
        if checkpoint != base and not checkpoint.startswith(base + "/"):
            prefixes.append(checkpoint)
    items: list[RestoreItem] = []
    for prefix in prefixes:
        try:
            found = objects.list_objects(prefix + "/")
        except objects.AccessDeniedError as exc:
            if prefix == base:
                raise
            log.warning("cannot list %s to restore it; the service keeps it (%s)", prefix, exc)
            continue
        for listed in found:
            if listed.storage_class not in NEEDS_RESTORE:
                continue
            # A listing shows restores only where the store supports RestoreStatus: HEAD says.
            info = objects.head(listed.uri) or listed
            if objects.restore_state(info) == "restored":
                continue
            owner: Owner = "escrow" if _is_escrow(info.uri) else "customer"
            items.append(RestoreItem(uri=info.uri, owner=owner, storage_class=info.storage_class))
    return items


def _is_escrow(uri: str) -> bool:
    from tuneloop.recipes.s3_uri import is_escrow

    return is_escrow(uri)


def _tier(tier: RestoreTier, items: list[RestoreItem]) -> RestoreTier:
    """The plan's tier: the campaign's, but never Expedited when DEEP_ARCHIVE is involved."""
    if any(_item_tier(tier, item.storage_class) != tier for item in items):
        return "Standard"
    return tier


def _item_tier(tier: RestoreTier, storage_class: str) -> RestoreTier:
    return "Standard" if tier == "Expedited" and storage_class == "DEEP_ARCHIVE" else tier
