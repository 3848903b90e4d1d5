"""The round ledger: one immutable JSON record per round, the campaign's source of truth.

Layout under the campaign root (``config.paths.campaign_root(campaign)``, a folder or an s3://
prefix)::

    rounds/0001.json        one RoundRecord per round, written once
    baselines/<digest>.json the base model's evaluation, one per evaluation recipe + data

A record is written exactly once, with `storage.write_once` (a hard link locally, ``If-None-Match:
*`` on S3: both refuse a name that exists). Two runs that both believe they are round n therefore
cannot both record it: the second gets `RoundAlreadyRecordedError`. A retry of the run that wrote
the record gets the stored record back. An S3-compatible store that ignores ``If-None-Match`` would
tell both runs they recorded the round, so the ledger writes to no store that has not shown, once
per process and bucket, that it honours the condition (`storage.require_conditional_writes`). The
ledger speaks URIs only; how they are read, listed and written is `tuneloop.storage`'s business.

Round numbers, the champion and the history are derived from the records, never from dates, so
schedules, manual triggers and backfills agree on them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tuneloop import storage
from tuneloop.artifacts.manifest import Checkpoint
from tuneloop.config.paths import campaign_root
from tuneloop.errors import Problem, TuneloopError
from tuneloop.recipes.catalog import Method, Technique
from tuneloop.recipes.prices import gpus_per_instance
from tuneloop.rounds.decision import Action, Decision, RoundSummary
from tuneloop.rounds.findings import Finding

if TYPE_CHECKING:
    from tuneloop.config.campaign import Campaign

log = logging.getLogger(__name__)

ROUNDS = "rounds"
BASELINES = "baselines"
CLAIMS = "claims"
RECORD_NAME = re.compile(r"^(\d{4,})\.json$")
CLAIM_NAME = re.compile(r"^(\d{4,})-(\d+)\.json$")
DIGEST = re.compile(r"^[0-9a-f]{8,64}$")
_R = TypeVar("_R", bound=BaseModel)


class LedgerError(TuneloopError):
    """The ledger holds something it cannot use, or refused a write."""


class RoundAlreadyRecordedError(LedgerError):
    """Another run already recorded this round."""


class RoundNotFoundError(LedgerError):
    """No record exists for the round asked for."""


class RoundClaimedError(LedgerError):
    """Another run that is still active claimed this round first."""


# --- records -------------------------------------------------------------------------------------


class _Record(BaseModel):
    # A NaN loss is what the divergence monitor reports: the curves keep it, written as the
    # string "NaN" (JSON has no NaN; pydantic's default would write null and fail the read).
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="strings")


class JobCost(_Record):
    """What one job was billed and what that cost (`rounds.cost.job_cost` fills it)."""

    billable_seconds: float | None = None
    """Instance-seconds billed; None when the backend does not say."""
    instance_type: str = ""
    """The instance type it ran on; ``local`` for the local backend ("" in older records)."""
    instance_count: int = Field(default=1, ge=1)
    """Instances it asked for (the recipe's ``run.replicas``)."""
    instance_hours: float = Field(default=0.0, ge=0.0)
    gpu_hours: float = Field(default=0.0, ge=0.0)
    """Instance-hours times the instance type's GPUs: 0 on CPU-only instances and locally."""
    price_per_hour: float | None = None
    """US dollars per instance-hour used for the estimate; None: unknown."""
    estimated_cost_usd: float | None = None
    """Instance-hours times the price; 0 for local jobs; None when the price is unknown."""
    price_region: str = ""
    """The region whose price was used (us-east-1 stands in for an unlisted region)."""
    price_source: str = ""
    """Where the price comes from: the price table's page and date, or the campaign's
    backend.price_per_hour."""
    cost_note: str = ""
    """Why the cost is unknown, or what stands in (another region's price, a free local
    job)."""


class EvaluationCost(JobCost):
    """The cost of an evaluation job (the round's, or the base model's)."""

    job_name: str = ""


class StageRecord(JobCost):
    """One training stage of a round, as it ran."""

    name: str
    method: Method
    technique: Technique
    job_name: str
    recipe: dict[str, Any]
    """The rendered recipe the job ran with."""
    output_uri: str
    """The job's output folder (manifest.json): the next stage's or round's starting point."""
    checkpoint: Checkpoint | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    training_metrics: dict[str, list[tuple[int, float]]] = {}
    """Training curves (metric -> [(step, value)]) where the job wrote them."""
    series: dict[str, list[tuple[int, float]]] = {}
    """The normalized curves the monitors read (`artifacts.series` names: train_loss,
    reward_mean, reward_error_rate, ...)."""
    findings: list[Finding] = []
    """What the training monitors found on this stage's curves."""
    stopped_early: str = ""
    """Why monitoring stopped the job before it ended ("" when it was not stopped)."""


class DatasetRecord(_Record):
    """One dataset a round validated before training."""

    stage: str
    """The stage (or ``evaluation``) that reads it."""
    channel: str
    """train, validation or eval."""
    uri: str
    sha256: str
    records: int
    ok: bool
    errors: int = 0
    report: dict[str, Any] = {}
    """The validator's JSON report."""


class RoundRecord(_Record):
    """Everything about one round: what ran, what it scored, what was decided."""

    version: Literal[1] = 1
    campaign: str
    round: int = Field(ge=1)
    run_id: str = Field(min_length=1)
    """The Airflow run that recorded the round."""
    started_at: datetime | None = None
    ended_at: datetime | None = None
    recorded_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    base: str
    """What the round started from: a checkpoint's output folder or the base model."""
    base_round: int | None = None
    """The round whose checkpoint it started from; None for the base model."""
    rollback_of: int | None = None
    """The round that regressed, when this round restarted from the champion because of it."""
    plan: dict[str, Any] = {}
    """The RoundPlan, as JSON."""
    campaign_sha256: str = ""
    """The sha256 of the campaign file the round was planned and judged with (its snapshot);
    empty in records written before snapshots."""
    datasets: list[DatasetRecord] = []
    stages: list[StageRecord] = []
    evaluation: dict[str, Any] = {}
    """Job name, result_uri and what else the evaluation step reports."""
    baseline: dict[str, float] = {}
    """The base model's metrics (evaluated once per campaign)."""
    probes: list[dict[str, Any]] = []
    """The reward-function probes run before the round's RFT stages (`rounds.reward_probe`
    reports, as JSON)."""
    metrics: dict[str, float]
    failed: str = ""
    """Why the round failed before it could be judged on its evaluation (monitoring stopped a
    training job, or a detector whose policy fails the round fired); "" for a judged round."""
    deltas: dict[str, dict[str, float]] = {}
    """``previous``, ``champion``, ``baseline`` -> metric -> this round's value minus theirs."""
    decision: Decision
    timings: dict[str, float] = {}
    """Seconds per step (validate, train_<stage>, evaluate, ...)."""
    billable_seconds: float = 0.0
    """Instance-seconds billed for the round's jobs."""
    gpu_hours: float = Field(default=0.0, ge=0.0)
    """GPU-hours billed for the round's jobs, training and evaluation (the base model's
    evaluation is counted apart, in ``baseline_cost``): the gate's budget reads it."""
    estimated_cost_usd: float | None = None
    """US dollars the round's training and evaluation jobs cost (estimated from the price
    table or backend.price_per_hour); None when a job's price is unknown (and in records
    written before costs were recorded)."""
    price_source: str = ""
    """Where the prices of the estimate come from."""
    cost_note: str = ""
    """Why the cost is unknown, or what stands in for a price."""
    evaluation_cost: EvaluationCost | None = None
    """The round's evaluation job, billed."""
    baseline_cost: EvaluationCost | None = None
    """The base model's evaluation when this round's run measured it (it is measured once per
    evaluation recipe and data, and counted in the campaign's spend with the round that
    measured it); None when an earlier round's measurement was reused."""

    @model_validator(mode="after")
    def _decision_is_this_rounds(self) -> RoundRecord:
        if self.decision.round != self.round:
            raise ValueError(
                f"the decision is about round {self.decision.round}, the record is round "
                f"{self.round}"
            )
        return self

    def summary(self) -> RoundSummary:
        """What the gate reads about this round."""
        last = self.stages[-1] if self.stages else None
        lineage = list(last.checkpoint.lineage) if last and last.checkpoint else []
        return RoundSummary(
            round=self.round,
            metrics=self.metrics,
            checkpoint=last.output_uri if last else self.base,
            stages=[s.name for s in self.stages],
            methods=[s.method for s in self.stages],
            lineage=lineage,
            promoted=self.decision.promoted,
            action=self.decision.action,
            gpu_hours=self.gpu_hours,
            cost_usd=self.estimated_cost_usd,
            baseline_gpu_hours=self.baseline_cost.gpu_hours if self.baseline_cost else 0.0,
            baseline_cost_usd=(
                self.baseline_cost.estimated_cost_usd if self.baseline_cost else 0.0
            ),
            failed=bool(self.failed),
        )

    def spent_gpu_hours(self) -> float:
        """GPU-hours the campaign spent on this round, the base model's evaluation included."""
        return self.gpu_hours + (self.baseline_cost.gpu_hours if self.baseline_cost else 0.0)

    def spent_usd(self) -> float | None:
        """US dollars the campaign spent on this round, the base model's evaluation included;
        None when a price is unknown."""
        baseline = self.baseline_cost.estimated_cost_usd if self.baseline_cost else 0.0
        if self.estimated_cost_usd is None or baseline is None:
            return None
        return self.estimated_cost_usd + baseline


class RoundClaim(_Record):
    """A run's claim on a round, written once before anything is spent on it.

    Round n's claims are ``claims/<n>-<attempt>.json``: the first run to plan round n writes
    attempt 1; a later run may take the round over (attempt 2, ...) only when the claimant ended
    without recording the round (it failed, or was marked failed)."""

    version: Literal[1] = 1
    campaign: str
    round: int = Field(ge=1)
    attempt: int = Field(default=1, ge=1)
    run_id: str = Field(min_length=1)
    """The Airflow run that claimed the round."""
    dag_id: str = ""
    logical_date: datetime | None = None
    claimed_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    base_output_uri: str = ""
    """The output folder the round starts from (empty: the base model, or a claim written
    before claims named their base): the lifecycle never archives it while the round runs."""
    base_round: int | None = None


class BaselineRecord(_Record):
    """The base model's evaluation, reused by every round evaluated the same way."""

    version: Literal[1] = 1
    campaign: str
    digest: str
    """`baseline_digest` of the evaluation recipe, data and base model."""
    model: str
    """The base model (or checkpoint) that was evaluated."""
    run_id: str = Field(min_length=1)
    recorded_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    evaluation: dict[str, Any] = {}
    metrics: dict[str, float]
    positive_reward_fraction: float | None = None
    """Share of positive rewards the base model earned on the RFT data, when probed."""
    gpu_hours: float = 0.0
    """GPU-hours its evaluation job was billed."""
    cost: EvaluationCost | None = None
    """Its evaluation job, billed (None in records written before costs were recorded)."""


# --- helpers for the round DAG ---------------------------------------------------------------


def deltas(
    metrics: Mapping[str, float],
    *,
    previous: Mapping[str, float] | None = None,
    champion: Mapping[str, float] | None = None,
    baseline: Mapping[str, float] | None = None,
) -> dict[str, dict[str, float]]:
    """This round's metrics minus each reference's, for the metrics both have.

    References that are None (no previous round, no champion yet) are left out.
    """
    references = {"previous": previous, "champion": champion, "baseline": baseline}
    return {
        label: {
            name: round(value - reference[name], 10)
            for name, value in metrics.items()
            if name in reference
        }
        for label, reference in references.items()
        if reference is not None
    }


def gpu_hours(billable_seconds: float | None, instance_type: str | None = None) -> float:
    """GPU-hours of a job billed ``billable_seconds`` instance-seconds, counted as its record
    counts them (`recipes.prices.gpus_per_instance`): none for the local backend (``None``)
    or a CPU-only type, one GPU per instance for a type the catalog does not know."""
    if not billable_seconds:
        return 0.0
    return billable_seconds * gpus_per_instance(instance_type) / 3600.0


# Fields of a rendered evaluation recipe that change from one run to the next without changing
# what is measured.
_VOLATILE_RUN_FIELDS = frozenset(
    {
        "name",
        "output_s3_path",
        "model_name_or_path",
        "mlflow_run_name",
        "mlflow_experiment_name",
        "mlflow_tracking_uri",
    }
)


def baseline_digest(recipe: Mapping[str, Any], *, model: str, data_sha256: str = "") -> str:
    """A key for the base model's evaluation: same recipe, data and model -> same digest.

    Run names, output paths and tracking settings are left out, so every round of a campaign
    (and a re-run of it) finds the baseline measured the first time.
    """
    run = {k: v for k, v in dict(recipe.get("run") or {}).items() if k not in _VOLATILE_RUN_FIELDS}
    canonical = json.dumps(
        {"recipe": {**recipe, "run": run}, "model": model, "data": data_sha256},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# --- the ledger ----------------------------------------------------------------------------------


class Ledger:
    """The rounds recorded under one campaign root."""

    def __init__(self, root: str) -> None:
        self.root = root.rstrip("/")

    @classmethod
    def for_campaign(cls, campaign: Campaign) -> Ledger:
        """The ledger of a `Campaign`, in its folder under the output root."""
        return cls(campaign_root(campaign))

    def round_uri(self, number: int) -> str:
        return storage.join(self.root, ROUNDS, f"{number:04d}.json")

    def baseline_uri(self, digest: str) -> str:
        return storage.join(self.root, BASELINES, f"{_checked_digest(digest)}.json")

    # --- rounds -----------------------------------------------------------------------------

    def write(self, record: RoundRecord) -> RoundRecord:
        """Record a round once. Returns the stored record.

        Raises RoundAlreadyRecordedError when another run recorded the round first; a retry of
        the run that recorded it gets the stored record back, unchanged.
        """
        uri = self.round_uri(record.round)
        if self._publish_once(uri, record.model_dump_json(indent=2)):
            return record
        try:
            existing = self._load(uri)
        except RoundNotFoundError:
            # S3 answered "conflict" while the other write is still in flight.
            existing = None
        if existing is not None and existing.run_id == record.run_id:
            return existing
        by = (
            f"by run {existing.run_id!r} at {existing.recorded_at.isoformat(timespec='seconds')}"
            if existing is not None
            else "by another run writing it at this moment"
        )
        raise RoundAlreadyRecordedError(
            [
                Problem(
                    f"round {record.round}",
                    f"already recorded {by}; run {record.run_id!r} cannot record it again (a "
                    "round is written once)",
                    source=uri,
                    fix=f"look at that run instead; the next round to run is "
                    f"{self.next_round()}, and two runs of one campaign must not overlap "
                    "(max_active_runs=1)",
                )
            ]
        )

    def read(self, number: int) -> RoundRecord:
        """The record of round ``number``; RoundNotFoundError when it was never recorded."""
        return self._load(self.round_uri(number))

    def records(self) -> list[RoundRecord]:
        """Every recorded round, in round order."""
        return [self._load(uri) for _, uri in self._round_files()]

    def latest(self) -> RoundRecord | None:
        files = self._round_files()
        return self._load(files[-1][1]) if files else None

    def next_round(self) -> int:
        """1 + the highest recorded round (1 for a new campaign)."""
        files = self._round_files()
        return files[-1][0] + 1 if files else 1

    def champion(self) -> RoundRecord | None:
        """The best round so far: the latest promoted round that was not rolled back.

        A round that regressed is never promoted by the gate; a round named by a later record's
        ``rollback_of`` (a rollback decided by hand, for instance) loses its title, and the
        promoted round before it is champion again. None: the base model is still the best.
        """
        return champion_of(self.records())

    def history(self) -> list[RoundSummary]:
        """What the gate reads about every recorded round, with ``promoted`` cleared for the
        rounds that were rolled back, so the gate and `champion` agree."""
        return history_of(self.records())

    # --- claims -----------------------------------------------------------------------------

    def claim_uri(self, number: int, attempt: int) -> str:
        return storage.join(self.root, CLAIMS, f"{number:04d}-{attempt}.json")

    def claims(self, number: int | None = None) -> list[RoundClaim]:
        """Every claim (or round ``number``'s), in round and attempt order."""
        folder = storage.join(self.root, CLAIMS)
        found = []
        for name in storage.list_names(folder):
            match = CLAIM_NAME.match(name)
            if match and (number is None or int(match.group(1)) == number):
                found.append((int(match.group(1)), int(match.group(2)), name))
        return [self._load_claim(storage.join(folder, name)) for *_, name in sorted(found)]

    def claim(
        self,
        claim: RoundClaim,
        *,
        is_active: Callable[[str], bool],
    ) -> RoundClaim:
        """Claim ``claim.round`` for ``claim.run_id``, once. Returns the claim that holds.

        A retry of the claiming run gets its own claim back. While another run's claim holds
        and ``is_active(its run_id)`` says that run is still queued or running, this raises
        RoundClaimedError naming it; a claim whose run has ended without recording the round is
        taken over with the next attempt number. A recorded round cannot be claimed again.
        """
        number = claim.round
        try:
            recorded: RoundRecord | None = self.read(number)
        except RoundNotFoundError:
            recorded = None
        if recorded is not None:
            raise RoundAlreadyRecordedError(
                [
                    Problem(
                        f"round {number}",
                        f"already recorded by run {recorded.run_id!r}; run {claim.run_id!r} "
                        "cannot run it again",
                        source=self.round_uri(number),
                        fix=f"the next round to run is {self.next_round()}",
                    )
                ]
            )
        while True:
            held = self.claims(number)
            latest = held[-1] if held else None
            if latest is not None and latest.run_id == claim.run_id:
                return latest
            if latest is not None and is_active(latest.run_id):
                raise RoundClaimedError(_claimed_problems(latest, claim, self))
            attempt = latest.attempt + 1 if latest is not None else 1
            mine = claim.model_copy(update={"attempt": attempt})
            uri = self.claim_uri(number, attempt)
            if self._publish_once(uri, mine.model_dump_json(indent=2)):
                return mine
            # Another run wrote this attempt first: look again (it is theirs unless it is ours).

    def _load_claim(self, uri: str) -> RoundClaim:
        text = storage.read_if_exists(uri)
        if text is None:
            raise LedgerError([Problem("", "the claim disappeared while it was read", source=uri)])
        return _parse(RoundClaim, uri, text)

    # --- the baseline -----------------------------------------------------------------------

    def read_baseline(self, digest: str) -> BaselineRecord | None:
        """The base model's evaluation recorded under ``digest``, if any."""
        uri = self.baseline_uri(digest)
        text = storage.read_if_exists(uri)
        if text is None:
            return None
        return _parse(BaselineRecord, uri, text)

    def write_baseline(self, record: BaselineRecord) -> BaselineRecord:
        """Record the base model's evaluation once; returns the stored one (the first writer's
        when two runs measured it, since it is the same measurement)."""
        uri = self.baseline_uri(record.digest)
        if self._publish_once(uri, record.model_dump_json(indent=2)):
            return record
        existing = self.read_baseline(record.digest)
        return existing if existing is not None else record

    # --- writing and reading ----------------------------------------------------------------

    def _publish_once(self, uri: str, text: str) -> bool:
        """Create ``uri`` with ``text`` unless it exists. True when this call created it.

        On S3, the first write of the process to the ledger's bucket checks that the store
        honours conditional writes (a probe under the ledger's root): on a store that ignores
        them this raises ConditionalWritesUnsupportedError before anything is written, since
        every writer would be told it recorded the round.
        """
        storage.require_conditional_writes(self.root)
        try:
            storage.write_once(uri, text.encode("utf-8"))
        except storage.ObjectExistsError:
            return False
        return True

    def _load(self, uri: str) -> RoundRecord:
        text = storage.read_if_exists(uri)
        if text is None:
            raise RoundNotFoundError(
                [
                    Problem(
                        "",
                        "no round record here: the round was never recorded",
                        source=uri,
                        fix="Ledger.records() lists the rounds recorded so far",
                    )
                ]
            )
        record = _parse(RoundRecord, uri, text)
        match = RECORD_NAME.match(uri.rsplit("/", 1)[-1])
        if match and int(match.group(1)) != record.round:
            raise LedgerError(
                [
                    Problem(
                        "round",
                        f"holds round {record.round}, but its name says round "
                        f"{int(match.group(1))}",
                        source=uri,
                        fix="records are never renamed or copied by hand; move the file out of "
                        "rounds/",
                    )
                ]
            )
        return record

    def _round_files(self) -> list[tuple[int, str]]:
        """(round, uri) of every record file under rounds/, in round order."""
        folder = storage.join(self.root, ROUNDS)
        found = []
        for name in storage.list_names(folder):
            match = RECORD_NAME.match(name)
            if match:
                found.append((int(match.group(1)), storage.join(folder, name)))
            elif not name.startswith("."):  # dot files are writes in progress
                log.warning("ignoring %s: not a round record (rounds/NNNN.json)", name)
        return sorted(found)


def _claimed_problems(held: RoundClaim, wanted: RoundClaim, ledger: Ledger) -> list[Problem]:
    return [
        Problem(
            f"round {held.round}",
            f"is being run by run {held.run_id!r} (claimed at "
            f"{held.claimed_at.isoformat(timespec='seconds')}); run {wanted.run_id!r} stops here, "
            "before any job",
            source=ledger.claim_uri(held.round, held.attempt),
            fix="wait for that run: the next round continues from what it records; to take the "
            "round over, stop that run (mark it failed) and trigger again",
        )
    ]


def champion_of(records: list[RoundRecord]) -> RoundRecord | None:
    """``Ledger.champion`` of records already read (in round order)."""
    eligible = _champion_eligible(records)
    return next((r for r in reversed(records) if r.round in eligible), None)


def history_of(records: list[RoundRecord]) -> list[RoundSummary]:
    """``Ledger.history`` of records already read (in round order)."""
    eligible = _champion_eligible(records)
    return [r.summary().model_copy(update={"promoted": r.round in eligible}) for r in records]


def _champion_eligible(records: list[RoundRecord]) -> set[int]:
    rolled_back = {r.rollback_of for r in records if r.rollback_of is not None}
    return {
        r.round
        for r in records
        if r.decision.promoted
        and r.decision.action is not Action.ROLLBACK
        and r.round not in rolled_back
    }


def _checked_digest(digest: str) -> str:
    if not DIGEST.match(digest):
        raise LedgerError(
            [
                Problem(
                    "digest",
                    f"{digest!r} is not a baseline digest (8-64 lowercase hex characters)",
                    fix="use ledger.baseline_digest(...)",
                )
            ]
        )
    return digest


def _parse(model: type[_R], uri: str, text: str) -> _R:
    fix = (
        "records are written once by the round DAG and never edited; restore the file from a "
        "backup or move it out of the ledger folder"
    )
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LedgerError(
            [Problem("", f"not valid JSON ({exc.msg}, line {exc.lineno})", source=uri, fix=fix)]
        ) from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise LedgerError(
            [
                Problem(
                    ".".join(str(part) for part in error["loc"]),
                    f"not a {model.__name__}: {error['msg']}",
                    source=uri,
                    fix=fix,
                )
                for error in exc.errors()
            ]
        ) from None
