"""The round as data: what each task of a round receives and returns.

Every box is a pydantic model that round-trips through JSON. A task body validates its XCom
input into a box once and returns ``model_dump(mode="json")``; nothing on the round path passes
loose dicts around. In the order a round makes them::

    conf (RoundConf) -> plan_round -> PlannedRound(campaign snapshot, RoundStart, RoundPlan,
                                                   datasets to check, the first job)
      -> validate_data (one per DatasetItem) -> DatasetCheck
      -> train_<stage> -> StageOutcome -> checkpoint_<stage> -> StageCheckpoint (+ next job)
      -> evaluate -> EvalOutcome
      -> decide(RoundOutcome) -> Decision (rounds/decision.py) + the ledger's RoundRecord
      -> finish -> CampaignStop

The gate's own boxes (`RoundSummary`, `Decision`) live in `tuneloop.rounds.decision`, so the
gate imports nothing of job backends.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tuneloop.artifacts.manifest import Checkpoint
from tuneloop.config.file import CampaignFile, for_jobs, parse_campaign, read_campaign_text
from tuneloop.jobs.base import JobSpec, JobStatus
from tuneloop.recipes.catalog import Method, Platform, Technique
from tuneloop.rounds.findings import Finding
from tuneloop.rounds.ledger import DatasetRecord

# --- the campaign, read once per round ---------------------------------------------------------


class CampaignSnapshot(BaseModel):
    """The campaign file as ``plan_round`` read it. Every later task of the round rebuilds the
    campaign from this text, so an edit to the file while a round runs cannot change how that
    round is judged; the next round plans with the edited file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    """Where it was read from: problems name this file and its lines."""
    text: str
    sha256: str
    """Digest of ``text`` (UTF-8): which version of the file planned the round."""

    @classmethod
    def read(cls, path: str | Path) -> CampaignSnapshot:
        text = read_campaign_text(path)
        return cls(path=str(path), text=text, sha256=hashlib.sha256(text.encode()).hexdigest())

    def load(self) -> CampaignFile:
        """The campaign as a round's tasks use it (see `config.file.for_jobs`); a snapshot
        that no longer parses raises the same CampaignError the file would."""
        return for_jobs(parse_campaign(self.text, self.path))


# --- where the round starts --------------------------------------------------------------------


class RoundConf(BaseModel):
    """What a person (or the previous round) may say in a run's conf: the round DAG's Params.

    Every field is optional: an empty conf continues the campaign as the ledger says. Unknown
    keys and values of the wrong type are refused by `start.parse_conf`, naming the Param and
    what it accepts, before anything is planned."""

    model_config = ConfigDict(extra="forbid", strict=True)

    base_checkpoint: str | None = None
    """A job output folder (holding manifest.json) to start from instead of the ledger's."""
    start_from_round: int | None = Field(default=None, ge=1)
    """Restart from round k's checkpoint with the rollback adjustments (a manual rollback)."""
    rollback: bool | None = None
    """Plan the round as the round after a rollback; None: as the ledger's latest decision says."""
    stages: list[str] | None = None
    """Stage names to run; None or empty: every stage."""
    data_overrides: dict[str, dict[str, str]] | None = None
    """stage -> {train|validation: uri} replacing the campaign's data for this round."""
    dry_run: bool = False
    """Plan, render and validate, then stop before any job."""
    reason: str | None = None
    """Why this round runs (recorded in the ledger)."""
    after_finish: bool = False
    """Run a round although the campaign has finished (target met, max_rounds, stop)."""


class RoundStart(BaseModel):
    """Where a round starts, decided from the run's conf and the ledger."""

    campaign: str
    round: int
    base_output_uri: str = ""
    """The job output folder (holding manifest.json) the round starts from; empty: the base."""
    base_round: int | None = None
    rollback: bool = False
    rollback_of: int | None = None
    stages: list[str] = []
    """Stage names to run (all when empty)."""
    data_overrides: dict[str, dict[str, str]] = {}
    """stage -> {train|validation: uri} replacing the campaign's data for this round."""
    dry_run: bool = False
    reason: str = ""
    """Why this round runs (the previous decision, a manual trigger, a schedule)."""


# --- the plan ----------------------------------------------------------------------------------


class PlannedStage(BaseModel):
    name: str
    method: Method
    technique: Technique
    template: str
    job_name: str
    """The stage's run name, ``<campaign>-r<nnnn>-<stage>`` (recipes carry it as run.name until
    the job is specified); the job itself is named by `jobs.base.job_name`."""
    model_name_or_path: str
    """The stage's starting weights; `@checkpoint:<stage>` until that stage finishes."""
    datasets: dict[str, str]
    output_uri: str
    recipe: dict[str, Any]
    warnings: list[str] = []


class PlannedEvaluation(BaseModel):
    template: str
    job_name: str
    """The evaluation's run name (see `PlannedStage.job_name`)."""
    task: str
    model_name_or_path: str
    dataset: str
    metrics: list[str]
    output_uri: str
    recipe: dict[str, Any]
    warnings: list[str] = []


class RoundPlan(BaseModel):
    """Every recipe of a round, rendered and checked: what the ledger records as the plan."""

    campaign: str
    round: int
    platform: Platform
    model_type: str
    technique: Technique
    base_model: str
    stages: list[PlannedStage]
    evaluation: PlannedEvaluation
    monitoring: dict[str, Any] | None = None
    """The campaign's monitoring settings (JSON) its training jobs are watched with while they
    run; None when ``monitoring.live`` is false."""


class DatasetItem(BaseModel):
    """One dataset of the round to check: what a validate_data task is mapped over."""

    stage: str
    """The stage that trains on it, or ``evaluation``."""
    channel: str
    """train, validation or eval."""
    uri: str
    format: str
    """The data format's name in `tuneloop.data.registry`."""
    allow: list[str] = []
    """Rules the campaign relaxes for this dataset."""
    max_length: int | None = None
    model_type: str
    """The model the data is checked for."""
    aws_conn_id: str | None = None
    """The Airflow connection that reads it (the campaign backend's; None on the local one)."""


class PlannedRound(BaseModel):
    """What plan_round returns: everything the round's later tasks need, the campaign included."""

    campaign: CampaignSnapshot
    start: RoundStart
    plan: RoundPlan
    round_root: str
    """The folder of the round's job outputs (see `config.paths.round_root`)."""
    datasets: list[DatasetItem]
    first_job: JobSpec | None
    """The first stage's job; None when the run leaves that stage out."""
    started_at: datetime
    seconds: float
    """How long planning took."""


# --- what the round's steps produced -----------------------------------------------------------


class DatasetCheck(DatasetRecord):
    """What validate_data found in one dataset: the ledger's DatasetRecord, plus timing."""

    seconds: float = 0.0


class StageOutcome(JobStatus):
    """What a train_<stage> task returns: its job's final status, and what watching it found."""

    # What an operator may add beyond the status is not the round's business.
    model_config = ConfigDict(extra="ignore")

    series: dict[str, list[tuple[int, float]]] = {}
    """The curves read from the job's log while it ran (`artifacts.series` names)."""
    findings: list[Finding] = []
    """What the monitors found while the job ran."""
    stopped_early: str = ""
    """Why monitoring stopped the job ("" when it ran to its end)."""
    saved_gpu_hours: float | None = None
    """The GPU-hours the rest of a stopped job would have taken, estimated at its pace."""


class EvalOutcome(StageOutcome):
    """What an evaluate task returns: its job's final status and the metrics it reported."""

    metrics: dict[str, float] = {}


class StageCheckpoint(BaseModel):
    """What a checkpoint_<stage> task returns: the checkpoint the stage produced (or, for a
    stage the run left out, the one it passes through) and the job that starts from it."""

    stage: str
    uri: str
    """What the next stage or the evaluation starts from."""
    skipped: bool = False
    stopped: str = ""
    """Why monitoring stopped this stage's job or an earlier one ("" when none was): no later
    stage and no evaluation runs, and the round is recorded as failed."""
    checkpoint: Checkpoint | None = None
    """The stage's checkpoint, its output folder included; None when the stage was skipped."""
    next_job: JobSpec | None = None
    """The next stage's job (None when that stage is left out), or the evaluation's."""


class CampaignStop(BaseModel):
    """What the finish task returns: where the campaign stands when it stops."""

    rounds: int
    """Rounds recorded."""
    champion_round: int | None
    """None: no round beat the base model."""
    reason: str
    """The latest decision's reason."""


class RoundOutcome(BaseModel):
    """Everything ``decide`` judges and records: the round's one input box."""

    planned: PlannedRound
    datasets: list[DatasetCheck]
    stages: dict[str, StageOutcome | None]
    """Stage name -> its training job's status; None for a stage the run left out."""
    checkpoints: dict[str, StageCheckpoint | None]
    evaluation: EvalOutcome | None
    """None when monitoring stopped a training job: the round failed before its evaluation."""
    probes: list[dict[str, Any]] = []
    """The reward-function probes (`rounds.reward_probe.ProbeReport` as JSON) run before the
    round's RFT jobs."""
    stage_series: dict[str, dict[str, list[tuple[int, float]]]] = {}
    """Stage name -> its curves as the finished job left them (output folder, job's MLflow
    run) merged with what was read live; `decide` reads them before the round is judged."""
    baseline_positive_fraction: float | None = None
    """The base model's share of positive rewards from the RFT reward function, when measured
    (its evaluation answers scored by the probe)."""
    baseline: EvalOutcome
    """The base model's evaluation (one job for the whole campaign)."""
    run_id: str
