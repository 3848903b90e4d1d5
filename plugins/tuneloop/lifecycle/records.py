"""The lifecycle's boxes: an artifact, the plan's line for it, a plan, what apply did, a pin.

Every box round-trips through JSON: plans and apply reports are written once to the ledger
(`lifecycle.store`), mirrored to MLflow and shown by the CLI. Byte counts and costs are whole
numbers of bytes and US dollars a month.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Owner = Literal["customer", "escrow", "local"]
"""Who holds an artifact: an S3 object in the customer's bucket (the job's output path), an
object in a service-owned escrow bucket (Nova checkpoints), or a folder on the local backend."""

Kind = Literal["checkpoint", "output", "evaluation", "baseline"]
"""What an artifact is: model weights (an escrow checkpoint or a local stage folder), a training
job's other outputs (manifest, output.tar.gz, TensorBoard events, logs), an evaluation's results,
or the base model's evaluation."""

ActionName = Literal["keep", "archive", "delete", "none"]
"""keep: retained; archive: moved to the archive storage class (a tarball locally); delete:
removed (``delete_intermediates``); none: nothing to do (already archived, too small to be worth
archiving, or not the account's to act on)."""

StorageClass = Literal["GLACIER", "DEEP_ARCHIVE", "GLACIER_IR"]
RestoreTier = Literal["Expedited", "Standard", "Bulk"]

LOCAL_CLASS = "LOCAL"
"""The storage class of a local folder; priced as S3 STANDARD, what the same bytes would cost in
the campaign's region, so a local campaign shows what its lifecycle would save on AWS."""
LOCAL_ARCHIVE_CLASS = "LOCAL_ARCHIVE"
"""The storage class of a local folder that lives on as a tarball under ``archive/``; priced
as the campaign's archive storage class."""


class _Box(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Artifact(_Box):
    """One thing a round left in storage: an S3 object, or a local stage folder."""

    uri: str
    round: int = Field(ge=0)
    """The round that produced it; 0 for the base model's evaluation."""
    stage: str
    """The stage name, ``evaluation`` or ``baseline``."""
    kind: Kind
    owner: Owner
    bytes: int = Field(ge=0)
    """Its size; for an escrow checkpoint that cannot be listed, the catalog's estimate."""
    estimated: bool = False
    """``bytes`` is an estimate (an escrow prefix this account may not list)."""
    storage_class: str = "STANDARD"
    """S3's storage class, `LOCAL_CLASS` or `LOCAL_ARCHIVE_CLASS`."""
    restore: str | None = None
    """S3's ``x-amz-restore`` header, when a restore was asked for."""
    archive_uri: str | None = None
    """Where a local folder's tarball is (``<campaign>/archive/...tar.gz``), once archived."""


class PlannedAction(_Box):
    """The plan's line for one artifact."""

    artifact: Artifact
    action: ActionName
    reason: str
    """One phrase: why it is kept, archived, deleted or left alone."""
    target_class: str | None = None
    """The storage class an archive moves it to."""
    monthly_cost_before: float = 0.0
    """Estimated US dollars a month where it is now."""
    monthly_cost_after: float = 0.0
    """Estimated US dollars a month once the action is done."""


class RetainedRound(_Box):
    """A round the retention set keeps, and every reason it is kept."""

    round: int = Field(ge=0)
    reasons: list[str]


class LifecyclePlan(_Box):
    """What the lifecycle would do now, derived from the ledger alone."""

    version: Literal[1] = 1
    campaign: str
    sequence: int = Field(ge=1)
    """The plan's number in the campaign (1 for the first)."""
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    run_id: str = ""
    """The Airflow run (or ``cli-...``) that planned it."""
    archive_storage_class: StorageClass
    delete_intermediates: bool
    keep_last: int
    region: str
    """The region whose prices the costs use."""
    prices_source: str
    """Where the price table comes from, and its date."""
    retained: list[RetainedRound]
    actions: list[PlannedAction]
    monthly_cost_before: float
    monthly_cost_after: float
    bytes_to_archive: int = 0
    bytes_to_delete: int = 0
    first: bool = False
    """The campaign's first plan: a lifecycle run only plans it; ``apply`` acts."""

    def acting(self) -> list[PlannedAction]:
        """The lines that change something: archive and delete."""
        return [a for a in self.actions if a.action in ("archive", "delete")]


Outcome = Literal["archived", "deleted", "retained_by_service", "skipped", "failed"]


class ActionResult(_Box):
    """What apply did about one planned line."""

    uri: str
    action: ActionName
    outcome: Outcome
    detail: str = ""
    """What happened, in one phrase (the error's words for failed; why, for skipped)."""
    bytes: int = 0
    archive_uri: str | None = None
    digest: str | None = None
    """sha256 of a local tarball, or the checksum S3 reported for the copy."""
    monthly_cost_saved: float = 0.0


class ApplyReport(_Box):
    """One apply: the plan it carried out and what happened to each line."""

    version: Literal[1] = 1
    campaign: str
    sequence: int = Field(ge=1)
    """The plan's sequence number: an apply is recorded once per plan."""
    run_id: str = ""
    started_at: datetime
    ended_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    results: list[ActionResult]
    bytes_archived: int = 0
    bytes_deleted: int = 0
    monthly_cost_before: float = 0.0
    monthly_cost_after: float = 0.0

    @property
    def monthly_cost_saved(self) -> float:
        return round(self.monthly_cost_before - self.monthly_cost_after, 6)


class Pin(_Box):
    """A person asked that a round be kept whatever the retention rules say."""

    version: Literal[1] = 1
    campaign: str
    round: int = Field(ge=1)
    pinned_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    by: str = ""
    reason: str = ""


class Done(_Box):
    """A finished action on one artifact, written once before anything irreversible follows
    (a local original is removed only after its Done exists): what makes a second apply, or
    an apply after a crash, do nothing twice and lose nothing."""

    uri: str
    action: ActionName
    outcome: Outcome
    archive_uri: str | None = None
    digest: str | None = None
    bytes: int = 0
    storage_class: str | None = None
    done_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    sequence: int = 0
    """The plan it carried out."""


class RestoreItem(_Box):
    """One archived thing a round's base needs back."""

    uri: str
    """An S3 object, or the local stage folder to recreate."""
    owner: Owner
    storage_class: str
    archive_uri: str | None = None
    """The local tarball to extract."""
    digest: str | None = None


class RestorePlan(_Box):
    """What ``restore_base`` brings back before a round trains from an archived base."""

    base_round: int
    base_output_uri: str
    tier: RestoreTier
    days: int = Field(ge=1)
    items: list[RestoreItem]
