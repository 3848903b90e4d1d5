"""The lifecycle plan: one line per artifact, saying what happens to it and why, with costs.

Pure: the ledger's records, the inventory's artifacts and the retention set in, a
`LifecyclePlan` out; nothing is read or written here. The first rule that matches decides:

1. an artifact in (or of a stage whose folder is) a protected folder -> keep: a claimed,
   running or next round starts from it;
2. evaluation results and the baseline -> keep: they are the records' evidence;
3. an artifact of a round not recorded yet -> keep: it is being written;
4. a retained round -> keep, with its reasons; except that with ``delete_intermediates`` an
   intermediate stage (any but the last stage of the round's record) of a round that a newer
   record supersedes is deleted when the round is kept only for being among the last
   ``keep_last`` (the champion, a pinned round and a pending round's base keep every stage);
5. any other round (a candidate) -> delete with ``delete_intermediates`` once a newer
   round's record exists; otherwise archive to ``retention.archive_storage_class``, unless
   the artifact is already archived, is an S3 object under ``min_archive_bytes`` (the
   archive classes bill a per-object overhead), or is a ``manifest.json`` / checkpoint record
   that planning reads (kept readable), or (``archive_mode: tags``) an object tagged by an
   earlier apply, which the bucket's lifecycle rule moves. Escrow checkpoints are planned like
   the rest: apply tries, and reports what the service keeps.

Costs come from `recipes.catalog.storage_monthly_cost` in the plan's region
(``retention.region``, else the backend's region, else us-east-1): a local folder is priced
as STANDARD, its tarball as the archive class. Lines are ordered by round, stage and URI, so
the same inputs always give the same plan.
"""

from __future__ import annotations

from collections.abc import Iterable

from tuneloop.config.campaign import Campaign
from tuneloop.lifecycle.records import (
    LOCAL_ARCHIVE_CLASS,
    LOCAL_CLASS,
    Artifact,
    LifecyclePlan,
    PlannedAction,
    RetainedRound,
)
from tuneloop.lifecycle.retention import NEXT_BASE, kept_only_as_recent, normalised
from tuneloop.recipes.catalog import (
    ARCHIVE_OBJECT_OVERHEAD_ARCHIVE_BYTES,
    ARCHIVE_OBJECT_OVERHEAD_STANDARD_BYTES,
    GLACIER_IR_MIN_BILLABLE_BYTES,
    MIN_STORAGE_DAYS,
    STORAGE_PRICES_DEFAULT_REGION,
    STORAGE_PRICES_SOURCE,
    storage_monthly_cost,
)
from tuneloop.rounds.ledger import RoundRecord

READ_BY_PLANNING = frozenset({"manifest.json", "checkpoint.json"})
"""Object names a round's planning reads from a base's output folder: never archived."""
ARCHIVED_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE", LOCAL_ARCHIVE_CLASS})
"""Classes that need a restore to be read: an artifact there is not moved again."""
EVIDENCE_KINDS = frozenset({"evaluation", "baseline"})


def plan_lifecycle(
    campaign: Campaign,
    records: list[RoundRecord],
    artifacts: list[Artifact],
    *,
    retained: dict[int, list[str]],
    protected: set[str],
    sequence: int,
    first: bool,
    run_id: str = "",
    tagged: frozenset[str] = frozenset(),
) -> LifecyclePlan:
    """The plan for ``artifacts`` under ``campaign.retention`` (see the module's rules).

    ``tagged``: S3 objects an earlier apply tagged for the bucket's lifecycle rule."""
    retention = campaign.retention
    region = plan_region(campaign)
    ledger = _Ledger(records, protected, tagged)
    archive_class = retention.archive_storage_class
    actions = [
        _priced(_decide(artifact, ledger, retained, campaign), archive_class, region)
        for artifact in sorted(artifacts, key=_order)
    ]
    return LifecyclePlan(
        campaign=campaign.name,
        sequence=sequence,
        run_id=run_id,
        archive_storage_class=retention.archive_storage_class,
        delete_intermediates=retention.delete_intermediates,
        keep_last=retention.keep_last,
        region=region,
        prices_source=STORAGE_PRICES_SOURCE,
        retained=[
            RetainedRound(round=number, reasons=list(reasons))
            for number, reasons in sorted(retained.items())
        ],
        actions=actions,
        monthly_cost_before=_total(a.monthly_cost_before for a in actions),
        monthly_cost_after=_total(a.monthly_cost_after for a in actions),
        bytes_to_archive=sum(a.artifact.bytes for a in actions if a.action == "archive"),
        bytes_to_delete=sum(a.artifact.bytes for a in actions if a.action == "delete"),
        first=first,
    )


def plan_region(campaign: Campaign) -> str:
    """The region whose prices a plan uses: retention.region, the backend's, or us-east-1."""
    backend_region = getattr(campaign.backend, "region", None)
    return campaign.retention.region or backend_region or STORAGE_PRICES_DEFAULT_REGION


class _Ledger:
    """What the rules ask of the records: stage folders, last stages, newer rounds."""

    def __init__(
        self, records: list[RoundRecord], protected: set[str], tagged: frozenset[str]
    ) -> None:
        self.tagged = tagged
        self.by_round = {record.round: record for record in records}
        self.latest = max(self.by_round) if self.by_round else 0
        self.protected = {normalised(uri) for uri in protected}
        latest = self.by_round.get(self.latest)
        self.next_base = normalised(latest.decision.next_base or "") if latest else ""

    def stage_folder(self, artifact: Artifact) -> str:
        record = self.by_round.get(artifact.round)
        for stage in record.stages if record else []:
            if stage.name == artifact.stage:
                return normalised(stage.output_uri)
        return ""

    def protecting_folder(self, artifact: Artifact) -> str | None:
        """The protected folder ``artifact`` is, lies in, or whose stage produced it."""
        stage_folder = self.stage_folder(artifact)
        if stage_folder in self.protected:
            return stage_folder  # an escrow checkpoint lives elsewhere, but is this stage's
        uri = normalised(artifact.uri)
        return next(
            (f for f in sorted(self.protected) if uri == f or uri.startswith(f"{f}/")), None
        )

    def is_intermediate(self, artifact: Artifact) -> bool:
        record = self.by_round.get(artifact.round)
        if record is None or not record.stages:
            return False
        names = [stage.name for stage in record.stages]
        return artifact.stage in names and artifact.stage != names[-1]

    def newer_round(self, round_number: int) -> int | None:
        """The first recorded round after ``round_number``: its record supersedes it."""
        return min((n for n in self.by_round if n > round_number), default=None)


def _decide(
    artifact: Artifact, ledger: _Ledger, retained: dict[int, list[str]], campaign: Campaign
) -> PlannedAction:
    retention = campaign.retention
    folder = ledger.protecting_folder(artifact)
    if folder is not None:
        why = NEXT_BASE if folder == ledger.next_base else "base of a claimed or running round"
        return _line(artifact, "keep", f"{why}: never archived or deleted")
    if artifact.kind in EVIDENCE_KINDS:
        return _line(artifact, "keep", "evaluation results: the record's evidence")
    if artifact.round not in ledger.by_round:
        return _line(artifact, "keep", "round not recorded yet")
    newer = ledger.newer_round(artifact.round)
    reasons = retained.get(artifact.round)
    if reasons is not None:
        if (
            retention.delete_intermediates
            and newer is not None
            and ledger.is_intermediate(artifact)
            and kept_only_as_recent(reasons)
        ):
            return _delete(artifact, f"intermediate checkpoint; round {newer}'s record exists")
        return _line(artifact, "keep", "; ".join(reasons))
    if retention.delete_intermediates and newer is not None:
        return _delete(artifact, f"superseded by round {newer}")
    return _archive(artifact, campaign, ledger)


def _archive(artifact: Artifact, campaign: Campaign, ledger: _Ledger) -> PlannedAction:
    retention = campaign.retention
    target = retention.archive_storage_class
    current = artifact.storage_class
    if current == target or current in ARCHIVED_CLASSES:
        return _line(artifact, "none", f"already archived ({current})")
    if (
        retention.archive_mode == "tags"
        and artifact.owner != "local"
        and artifact.uri in ledger.tagged
    ):
        return _line(
            artifact,
            "none",
            f"tagged for {target}: the bucket's lifecycle rule moves it "
            "(tuneloop lifecycle apply-policy)",
        )
    if artifact.owner != "local" and artifact.bytes < retention.min_archive_bytes:
        return _line(
            artifact,
            "none",
            f"{artifact.bytes} bytes, under min_archive_bytes ({retention.min_archive_bytes}): "
            f"{_overhead(target)}",
        )
    if artifact.owner != "local" and _name(artifact.uri) in READ_BY_PLANNING:
        return _line(artifact, "none", "read by planning: kept readable")
    if artifact.owner == "local":
        return _line(
            artifact,
            "archive",
            f"not retained: tarball under archive/, priced as {target}",
            target_class=LOCAL_ARCHIVE_CLASS,
        )
    reason = f"not retained: to {target} (billed at least {MIN_STORAGE_DAYS[target]} days)"
    if artifact.owner == "escrow":
        reason += "; escrow: tried, the service may keep it"
    return _line(artifact, "archive", reason, target_class=target)


def _delete(artifact: Artifact, reason: str) -> PlannedAction:
    days = MIN_STORAGE_DAYS.get(artifact.storage_class)
    if days is not None:
        reason += f" (in {artifact.storage_class}: billed at least {days} days)"
    if artifact.owner == "escrow":
        reason += "; escrow: tried, the service may keep it"
    return _line(artifact, "delete", reason)


def _overhead(target: str) -> str:
    if target == "GLACIER_IR":
        return f"GLACIER_IR bills at least {GLACIER_IR_MIN_BILLABLE_BYTES // 1024} KB an object"
    overhead = ARCHIVE_OBJECT_OVERHEAD_ARCHIVE_BYTES + ARCHIVE_OBJECT_OVERHEAD_STANDARD_BYTES
    return f"{target} bills {overhead // 1024} KB more an object"


def _line(
    artifact: Artifact, action: str, reason: str, *, target_class: str | None = None
) -> PlannedAction:
    return PlannedAction.model_validate(
        {"artifact": artifact, "action": action, "reason": reason, "target_class": target_class}
    )


def _priced(line: PlannedAction, archive_class: str, region: str) -> PlannedAction:
    artifact = line.artifact
    current = _priced_class(artifact.storage_class, archive_class)
    before = storage_monthly_cost(artifact.bytes, current, region)
    if line.action == "delete":
        after = 0.0
    elif line.action == "archive" and line.target_class:
        after = storage_monthly_cost(
            artifact.bytes, _priced_class(line.target_class, archive_class), region
        )
    else:
        after = before
    return line.model_copy(
        update={"monthly_cost_before": round(before, 6), "monthly_cost_after": round(after, 6)}
    )


def _priced_class(storage_class: str, archive_class: str) -> str:
    # A local folder costs what it would in S3 STANDARD; its tarball what the archive class
    # would, so the local backend's plans show the saving the same campaign makes on AWS.
    if storage_class == LOCAL_ARCHIVE_CLASS:
        return archive_class
    return "STANDARD" if storage_class == LOCAL_CLASS else storage_class


def _order(artifact: Artifact) -> tuple[int, str, str, str]:
    # Round, stage and URI; the whole artifact breaks a tie, so input order never shows.
    return (artifact.round, artifact.stage, artifact.uri, artifact.model_dump_json())


def _name(uri: str) -> str:
    return normalised(uri).rsplit("/", 1)[-1]


def _total(costs: Iterable[float]) -> float:
    return round(sum(costs), 6)
