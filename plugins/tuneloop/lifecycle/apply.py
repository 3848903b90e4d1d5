"""Carry out a lifecycle plan: archive and delete, losing nothing whenever it stops.

The rules:

- Only the plan's acting lines (archive, delete) are touched; an apply is recorded once per
  plan, so applying a plan that was applied returns the first report and does nothing.
- Every archive goes copy -> verify -> record (a `Done` in the ledger) -> remove the original,
  and only a local original is ever removed. A crash at any point leaves every file either as
  its original or as a verified copy; the next apply finds the Done (or no Done) and finishes
  the job without doing anything twice:

  - local folder: tarball written, verified against the folder, Done recorded, folder removed
    (renamed aside first, so no half-removed folder is left under its name);
  - customer S3 object, ``archive_mode: copy``: copied onto itself in the archive class
    (`objects.change_storage_class` verifies the copy), its class checked, Done recorded;
  - customer S3 object, ``archive_mode: tags``: tagged for the bucket's lifecycle rule (which
    ``tuneloop lifecycle apply-policy`` writes), Done recorded;
  - escrow checkpoint: tried as a copy; AccessDenied means the service keeps it
    (``retained_by_service``, with its estimated cost), never a failed run.

- Before each destructive step (removing a local folder, changing an object's storage class,
  deleting) the retention set is read afresh from the ledger (``still_protected``): an artifact
  that became protected since the plan was made (a round claimed it as its base, a person
  pinned it) is skipped, and the report says why. A local folder is asked about once more
  after it is set aside (renamed) and before it is deleted: a round that claimed it in between
  gets it back, and a round that looks after that finds it archived and restores it, so no
  round ever starts from a folder that then disappears.
- A delete happens only where the plan says delete and a round newer than the artifact's has
  been recorded (checked against the ledger, not the plan).
- One artifact's failure (AccessDenied on a customer object, a tarball that does not verify)
  is that line's ``failed`` outcome, with the error's words; the rest of the plan goes on.
- ``crash_at(step, uri)`` is called after each step ("tarball-written", "verified", "recorded",
  "original-removed", "copied", "tagged", "deleted"): the seam the crash tests use. Whatever it
  raises stops the apply at once, as a crash would.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from tuneloop.config.campaign import Campaign
from tuneloop.config.paths import absolute, campaign_root
from tuneloop.errors import TuneloopError
from tuneloop.lifecycle import local_archive
from tuneloop.lifecycle.records import (
    LOCAL_ARCHIVE_CLASS,
    ActionResult,
    ApplyReport,
    Artifact,
    Done,
    LifecyclePlan,
    Outcome,
    PlannedAction,
)
from tuneloop.lifecycle.retention import normalised
from tuneloop.lifecycle.store import LifecycleStore
from tuneloop.rounds.ledger import Ledger, RoundRecord

log = logging.getLogger(__name__)

CrashAt = Callable[[str, str], None]
StillProtected = Callable[[], tuple[set[int], set[str]]]

TAGGED_DETAIL = "tagged for the bucket's lifecycle rule (tuneloop lifecycle apply-policy)"
RETAINED_BY_SERVICE = "retained by the service, not archivable from this account"


def apply_plan(
    campaign: Campaign,
    plan: LifecyclePlan,
    *,
    store: LifecycleStore,
    still_protected: StillProtected,
    run_id: str = "",
    crash_at: CrashAt | None = None,
) -> ApplyReport:
    """Carry out ``plan``'s archive and delete lines; record and return the apply report.

    ``still_protected()`` returns, read afresh from the ledger, the rounds nothing of which may
    go (those kept for a reason other than being among the last ``keep_last``: the plan may
    still trim those of intermediate stages) and the protected folder URIs
    (`service.protection_now` builds it); it is called before each destructive step, and an
    artifact of such a round, or in or of such a folder, is skipped.
    """
    stored = store.apply_of(plan.sequence)
    if stored is not None:
        log.info("plan %d was applied already (run %r)", plan.sequence, stored.run_id)
        return stored
    started_at = datetime.now(UTC)
    applier = _Applier(campaign, plan, store, still_protected, crash_at)
    results = []
    try:
        for line in plan.acting():
            results.append(applier.carry_out(line))
    except _Crash as crash:
        raise crash.original from None
    report = _report(plan, results, run_id=run_id, started_at=started_at)
    outcomes = Counter(result.outcome for result in results)
    log.info(
        "plan %d applied: %s",
        plan.sequence,
        ", ".join(f"{count} {outcome}" for outcome, count in sorted(outcomes.items()))
        or "nothing to do",
    )
    return store.write_apply(report)


# --- one line at a time ------------------------------------------------------------------------


class _Crash(BaseException):
    """What ``crash_at`` raised, carried past the per-line error handling."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(str(original))
        self.original = original


class _Skip(Exception):
    """The artifact is protected now, or there is nothing left to do: the line is skipped."""


@dataclass
class _Applier:
    campaign: Campaign
    plan: LifecyclePlan
    store: LifecycleStore
    still_protected: StillProtected
    crash_at: CrashAt | None
    _records: list[RoundRecord] | None = field(default=None, init=False)

    def carry_out(self, line: PlannedAction) -> ActionResult:
        artifact = line.artifact
        try:
            if line.action == "archive":
                return self._archive(line)
            return self._delete(line)
        except _Skip as skip:
            return _result(line, "skipped", str(skip))
        except (TuneloopError, OSError) as exc:
            log.warning("%s %s failed: %s", line.action, artifact.uri, exc)
            return _result(line, "failed", _words(exc))
        except Exception as exc:  # one artifact's surprise must not stop the others
            log.exception("%s %s failed", line.action, artifact.uri)
            return _result(line, "failed", f"{type(exc).__name__}: {_words(exc)}")

    # --- steps shared by every kind of artifact ---------------------------------------------

    def _step(self, step: str, uri: str) -> None:
        if self.crash_at is None:
            return
        try:
            self.crash_at(step, uri)
        except BaseException as exc:
            raise _Crash(exc) from exc

    def _check_not_protected(self, artifact: Artifact) -> None:
        """Skip the line when the ledger, read now, protects the artifact."""
        why = self._protected_now(artifact)
        if why is not None:
            raise _Skip(why)

    def _protected_now(self, artifact: Artifact) -> str | None:
        """Why the ledger, read now, protects the artifact; None when it does not."""
        retained, protected = self.still_protected()
        if artifact.round in retained:
            return f"round {artifact.round} is kept now (the ledger, read again, keeps it)"
        for folder in self._folders_of(artifact):
            for kept in map(normalised, protected):
                if folder == kept or folder.startswith(kept + "/"):
                    return f"{kept} is now the base of a pending round"
        return None

    def _remove_local(self, artifact: Artifact, folder: str) -> None:
        """Remove a local folder unless a round claims it meanwhile: the ledger is asked once
        more after the folder is set aside, so a round whose ``restore_base`` found the folder
        in place (its claim came first) gets it back, and one that looks later finds it
        archived and restores it."""
        self._check_not_protected(artifact)
        if not local_archive.remove_folder(
            folder, keep_if=lambda: self._protected_now(artifact) is not None
        ):
            raise _Skip(self._protected_now(artifact) or "claimed while it was being removed")

    def _folders_of(self, artifact: Artifact) -> list[str]:
        """The URIs a protected folder is compared with: the artifact's own, and the output
        folder of the stage it belongs to (an escrow checkpoint lives outside that folder)."""
        folders = [normalised(artifact.uri)]
        for record in self._records_now():
            if record.round == artifact.round:
                folders += [
                    normalised(s.output_uri) for s in record.stages if s.name == artifact.stage
                ]
        return folders

    def _records_now(self, *, fresh: bool = False) -> list[RoundRecord]:
        if self._records is None or fresh:
            self._records = Ledger.for_campaign(self.campaign).records()
        return self._records

    def _record(self, line: PlannedAction, outcome: Outcome, **fields: object) -> Done:
        done = Done(
            uri=line.artifact.uri,
            action=line.action,
            outcome=outcome,
            bytes=line.artifact.bytes,
            sequence=self.plan.sequence,
            **fields,  # type: ignore[arg-type]
        )
        return self.store.record_done(done)

    # --- archive ------------------------------------------------------------------------------

    def _archive(self, line: PlannedAction) -> ActionResult:
        owner = line.artifact.owner
        if owner == "local":
            return self._archive_local(line)
        if owner == "escrow":
            return self._archive_escrow(line)
        if self.campaign.retention.archive_mode == "tags":
            return self._tag(line)
        return self._copy(line)

    def _archive_local(self, line: PlannedAction) -> ActionResult:
        artifact = line.artifact
        folder = absolute(artifact.uri)
        done = self.store.done(artifact.uri, "archive")
        if done is not None and done.archive_uri and done.digest:
            return self._finish_local(line, folder, done)
        if not Path(folder).is_dir():
            raise _Skip("the folder no longer exists")
        self._check_not_protected(artifact)
        tarball = artifact.archive_uri or local_archive.archive_location(
            absolute(campaign_root(self.campaign)), folder
        )
        digest, _ = local_archive.write_tarball(folder, tarball)
        self._step("tarball-written", artifact.uri)
        if not local_archive.verify_tarball(tarball, digest, folder):
            return _result(line, "failed", f"{tarball} does not match {folder}; the folder is kept")
        self._step("verified", artifact.uri)
        done = self._record(
            line,
            "archived",
            archive_uri=tarball,
            digest=digest,
            storage_class=LOCAL_ARCHIVE_CLASS,
        )
        self._step("recorded", artifact.uri)
        return self._finish_local(line, folder, done)

    def _finish_local(self, line: PlannedAction, folder: str, done: Done) -> ActionResult:
        """The tarball is recorded: remove the folder once the tarball still verifies."""
        artifact = line.artifact
        tarball, digest = done.archive_uri or "", done.digest or ""
        if not Path(folder).is_dir():
            local_archive.remove_folder(folder)  # a removal cut short leaves a hidden leftover
            if not local_archive.verify_tarball(tarball, digest):
                return _result(line, "failed", f"{tarball} is missing or does not verify")
            raise _Skip(f"already archived to {tarball}")
        if not local_archive.verify_tarball(tarball, digest, folder):
            return _result(
                line,
                "failed",
                f"{tarball} is missing or no longer matches {folder}; the folder is kept",
            )
        self._remove_local(artifact, folder)
        self._step("original-removed", artifact.uri)
        return _result(
            line, "archived", f"archived to {tarball}", archive_uri=tarball, digest=digest
        )

    def _copy(self, line: PlannedAction) -> ActionResult:
        """Copy a customer object onto itself in the archive class, verified, then recorded."""
        from tuneloop.lifecycle import objects

        artifact = line.artifact
        target = line.target_class or self.plan.archive_storage_class
        if self.store.done(artifact.uri, "archive") is not None:
            raise _Skip("already archived")
        info = objects.head(artifact.uri)
        if info is None:
            raise _Skip("the object no longer exists")
        if info.storage_class != target:
            self._check_not_protected(artifact)
            info = objects.change_storage_class(artifact.uri, target)
            self._step("copied", artifact.uri)
            info = objects.head(artifact.uri) or info
            if info.storage_class != target:
                return _result(
                    line,
                    "failed",
                    f"S3 reports storage class {info.storage_class} after the copy, not {target}",
                )
        self._step("verified", artifact.uri)
        digest = _object_digest(info)
        self._record(line, "archived", digest=digest, storage_class=target)
        self._step("recorded", artifact.uri)
        return _result(line, "archived", f"moved to {target}", digest=digest)

    def _tag(self, line: PlannedAction) -> ActionResult:
        from tuneloop.lifecycle import objects

        artifact = line.artifact
        target = line.target_class or self.plan.archive_storage_class
        if self.store.done(artifact.uri, "archive") is not None:
            raise _Skip(f"already {TAGGED_DETAIL}")
        if objects.head(artifact.uri) is None:
            raise _Skip("the object no longer exists")
        self._check_not_protected(artifact)
        objects.tag_for_archive(artifact.uri, target)
        self._step("tagged", artifact.uri)
        self._record(line, "archived", storage_class=target)
        self._step("recorded", artifact.uri)
        return _result(line, "archived", TAGGED_DETAIL)

    def _archive_escrow(self, line: PlannedAction) -> ActionResult:
        """An escrow checkpoint: the service owns the bucket; try, and report what the account
        may do."""
        from tuneloop.lifecycle import objects

        if line.artifact.estimated:
            # The account may not even list the prefix: there is no object to act on.
            return self._retained_by_service(line)
        try:
            return self._copy(line)
        except objects.AccessDeniedError:
            return self._retained_by_service(line)

    def _retained_by_service(self, line: PlannedAction) -> ActionResult:
        artifact = line.artifact
        cost = line.monthly_cost_before or _monthly_cost(artifact, self.plan.region)
        estimate = " (size estimated)" if artifact.estimated else ""
        return _result(
            line,
            "retained_by_service",
            f"{RETAINED_BY_SERVICE}; about {_dollars(cost)} a month{estimate}",
        )

    # --- delete -------------------------------------------------------------------------------

    def _delete(self, line: PlannedAction) -> ActionResult:
        artifact = line.artifact
        if self.store.done(artifact.uri, "delete") is not None:
            raise _Skip("already deleted")
        if not self._newer_round_recorded(artifact.round):
            raise _Skip(f"no round newer than round {artifact.round} is recorded yet")
        if artifact.owner == "local":
            return self._delete_local(line)
        from tuneloop.lifecycle import objects

        try:
            return self._delete_object(line)
        except objects.AccessDeniedError:
            if artifact.owner == "escrow" or artifact.estimated:
                return self._retained_by_service(line)
            raise

    def _delete_object(self, line: PlannedAction) -> ActionResult:
        from tuneloop.lifecycle import objects

        artifact = line.artifact
        if artifact.estimated:
            # A prefix the account may not list: there is no object to delete.
            raise objects.AccessDeniedError(artifact.uri, "list")
        if objects.head(artifact.uri) is None:
            self._record(line, "deleted")
            raise _Skip("the object no longer exists")
        self._check_not_protected(artifact)
        objects.delete_object(artifact.uri)
        self._step("deleted", artifact.uri)
        self._record(line, "deleted")
        return _result(line, "deleted", "deleted")

    def _delete_local(self, line: PlannedAction) -> ActionResult:
        artifact = line.artifact
        folder = absolute(artifact.uri)
        tarball = artifact.archive_uri
        if not Path(folder).is_dir() and not (tarball and Path(tarball).exists()):
            local_archive.remove_folder(folder)
            self._record(line, "deleted")
            raise _Skip("the folder no longer exists")
        self._remove_local(artifact, folder)
        if tarball:
            local_archive.remove_tarball(tarball)
        self._step("deleted", artifact.uri)
        self._record(line, "deleted")
        return _result(line, "deleted", "deleted" + (" with its tarball" if tarball else ""))

    def _newer_round_recorded(self, round_number: int) -> bool:
        # Records are written once and never removed: one seen is there for good, so the
        # ledger is read again only while none is seen yet.
        for fresh in (False, True):
            if any(r.round > round_number for r in self._records_now(fresh=fresh)):
                return True
        return False


# --- the report ----------------------------------------------------------------------------------


def _result(line: PlannedAction, outcome: Outcome, detail: str, **fields: object) -> ActionResult:
    acted = outcome in ("archived", "deleted")
    saved = line.monthly_cost_before - line.monthly_cost_after if acted else 0.0
    return ActionResult(
        uri=line.artifact.uri,
        action=line.action,
        outcome=outcome,
        detail=detail,
        bytes=line.artifact.bytes if acted else 0,
        monthly_cost_saved=round(max(saved, 0.0), 6),
        **fields,  # type: ignore[arg-type]
    )


def _report(
    plan: LifecyclePlan, results: list[ActionResult], *, run_id: str, started_at: datetime
) -> ApplyReport:
    saved = sum(r.monthly_cost_saved for r in results)
    return ApplyReport(
        campaign=plan.campaign,
        sequence=plan.sequence,
        run_id=run_id,
        started_at=started_at,
        results=results,
        bytes_archived=sum(r.bytes for r in results if r.outcome == "archived"),
        bytes_deleted=sum(r.bytes for r in results if r.outcome == "deleted"),
        monthly_cost_before=round(plan.monthly_cost_before, 6),
        monthly_cost_after=round(plan.monthly_cost_before - saved, 6),
    )


def _words(exc: BaseException) -> str:
    """The error's own words, on one line."""
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def _dollars(amount: float) -> str:
    """US dollars as a person reads them: cents, or four decimals below one cent (a small
    object's cost would otherwise read $0.00)."""
    return f"${amount:,.2f}" if amount >= 0.01 or amount == 0 else f"${amount:.4f}"


def _object_digest(info: object) -> str | None:
    """The checksum S3 reported for an object (``ALGORITHM:value``), else its ETag."""
    checksum = getattr(info, "checksum", None)
    if checksum:
        return f"{checksum[0]}:{checksum[1]}"
    etag = getattr(info, "etag", "")
    return str(etag).strip('"') or None


def _monthly_cost(artifact: Artifact, region: str) -> float:
    from tuneloop.recipes.catalog import storage_monthly_cost

    return storage_monthly_cost(artifact.bytes, artifact.storage_class, region)
