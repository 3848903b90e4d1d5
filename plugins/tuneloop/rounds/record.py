"""The end of a round: judge it and write its ledger record once.

The ledger write is the commit point. A retried ``decide`` task of the same DAG run gets the
record it wrote the first time (same decision, no second write); a different run that tries to
record the same round is refused, so two runs can never both write round n. The mirrors (MLflow,
the report) follow the ledger and are the decide task's business (`pipeline.tasks`): when the
tracking server is down the round is still recorded, and the next round mirrors what is missing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tuneloop import storage
from tuneloop.config.campaign import BaseCheckpoint
from tuneloop.config.file import CampaignFile
from tuneloop.config.paths import campaign_root
from tuneloop.errors import Problem
from tuneloop.jobs.base import JobStatus
from tuneloop.recipes.catalog import Method
from tuneloop.rounds.boxes import RoundOutcome
from tuneloop.rounds.decision import Decision, RoundSummary
from tuneloop.rounds.gate import decide
from tuneloop.rounds.ledger import (
    BaselineRecord,
    DatasetRecord,
    Ledger,
    RoundRecord,
    StageRecord,
    baseline_digest,
    champion_of,
    deltas,
    gpu_hours,
    history_of,
)
from tuneloop.rounds.start import RoundError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecordedRound:
    """The round's ledger record, and every record of the campaign up to it (the mirrors show
    them all)."""

    record: RoundRecord
    records: list[RoundRecord]


def record_round(cf: CampaignFile, outcome: RoundOutcome) -> RecordedRound:
    """Judge the round with the gate and write its record once; a retry of the run that wrote
    it gets that record back."""
    ledger = Ledger(campaign_root(cf.campaign))
    # Read once: the retry check, the history, the deltas and the report all come from it.
    records = ledger.records()
    number = outcome.planned.start.round
    existing = next((r for r in records if r.round == number), None)
    if existing is not None:
        if existing.run_id != outcome.run_id:
            raise RoundError(_recorded_by_another_run(ledger, existing))
        log.info("Round %d was already recorded by this run; reusing it", number)
        return RecordedRound(existing, records)
    record = ledger.write(_round_record(cf, ledger, records, outcome))
    return RecordedRound(record, [*records, record])


def _recorded_by_another_run(ledger: Ledger, existing: RoundRecord) -> list[Problem]:
    return [
        Problem(
            f"round {existing.round}",
            f"already recorded by run {existing.run_id} ({ledger.round_uri(existing.round)})",
            fix="rounds are numbered by the ledger; trigger a new run to plan the next round",
        )
    ]


def _round_record(
    cf: CampaignFile, ledger: Ledger, records: list[RoundRecord], outcome: RoundOutcome
) -> RoundRecord:
    campaign = cf.campaign
    planned, evaluation = outcome.planned, outcome.evaluation
    instance_type = getattr(campaign.backend, "instance_type", None)
    stages = _stage_records(outcome)
    billed = [s.billable_seconds for s in stages] + [evaluation.billable_seconds]
    hours = sum(gpu_hours(seconds, instance_type) for seconds in billed)
    baseline = _stored_baseline(cf, ledger, outcome)
    base_metrics = baseline.metrics
    metrics = dict(evaluation.metrics)
    previous = records[-1] if records else None
    champion = champion_of(records)
    return RoundRecord(
        campaign=campaign.name,
        round=planned.start.round,
        run_id=outcome.run_id,
        started_at=planned.started_at,
        ended_at=datetime.now(UTC),
        base=planned.start.base_output_uri or planned.plan.base_model,
        base_round=planned.start.base_round,
        rollback_of=planned.start.rollback_of,
        plan=planned.plan.model_dump(mode="json"),
        campaign_sha256=planned.campaign.sha256,
        datasets=[
            DatasetRecord.model_validate(d.model_dump(exclude={"seconds"}))
            for d in outcome.datasets
        ],
        stages=stages,
        evaluation={
            "job_name": evaluation.name,
            "result_uri": evaluation.result_uri,
            "console_url": evaluation.console_url,
            "metrics": metrics,
        },
        baseline=base_metrics,
        metrics=metrics,
        deltas=deltas(
            metrics,
            previous=previous.metrics if previous else None,
            champion=champion.metrics if champion else None,
            baseline=base_metrics or None,
        ),
        decision=_judge(cf, outcome, stages, records, baseline, hours),
        timings=_timings(outcome),
        billable_seconds=sum(seconds or 0.0 for seconds in billed),
        gpu_hours=hours,
    )


def _stage_records(outcome: RoundOutcome) -> list[StageRecord]:
    """The stages that ran (a stage the run left out has no job and passed its base through)."""
    stages = []
    for planned in outcome.planned.plan.stages:
        status = outcome.stages.get(planned.name)
        point = outcome.checkpoints.get(planned.name)
        if status is None or point is None or point.checkpoint is None:
            continue
        stages.append(
            StageRecord(
                name=planned.name,
                method=planned.method,
                technique=planned.technique,
                job_name=status.name,
                recipe=planned.recipe,
                output_uri=status.result_uri or point.checkpoint.output_uri,
                checkpoint=point.checkpoint,
                started_at=status.started_at,
                ended_at=status.ended_at,
                billable_seconds=status.billable_seconds,
            )
        )
    return stages


def _stored_baseline(cf: CampaignFile, ledger: Ledger, outcome: RoundOutcome) -> BaselineRecord:
    """The base model's evaluation as the ledger keeps it: the first one recorded for this
    recipe, model and data wins, so every round compares with the same numbers."""
    baseline = outcome.baseline
    metrics = dict(baseline.metrics)
    eval_data = next((d.sha256 for d in outcome.datasets if d.stage == "evaluation"), "")
    digest = baseline_digest(
        outcome.planned.plan.evaluation.recipe,
        # The baseline job's name digests the base model with the recipe and data.
        model=baseline.name,
        data_sha256=eval_data,
    )
    stored = ledger.write_baseline(
        BaselineRecord(
            campaign=cf.campaign.name,
            digest=digest,
            model=baseline.name,
            run_id=outcome.run_id,
            evaluation={
                "name": baseline.name,
                "result_uri": baseline.result_uri,
                "console_url": baseline.console_url,
            },
            metrics=metrics,
            # rft_eval reports the share of positive rewards (the local evaluator does; a Nova
            # reward Lambda may add it to its metrics_list).
            positive_reward_fraction=metrics.get("positive_reward_fraction"),
        )
    )
    return stored if stored.metrics else stored.model_copy(update={"metrics": metrics})


def _judge(
    cf: CampaignFile,
    outcome: RoundOutcome,
    stages: list[StageRecord],
    records: list[RoundRecord],
    baseline: BaselineRecord,
    hours: float,
) -> Decision:
    campaign = cf.campaign
    start = outcome.planned.start
    last = stages[-1] if stages else None
    candidate = RoundSummary(
        round=start.round,
        metrics=dict(outcome.evaluation.metrics),
        checkpoint=last.output_uri
        if last
        else (start.base_output_uri or outcome.planned.plan.base_model),
        stages=[s.name for s in stages],
        methods=[s.method for s in stages],
        lineage=list(last.checkpoint.lineage) if last and last.checkpoint else [],
        gpu_hours=hours,
    )
    base_lineage: list[Method] = (
        list(campaign.base_model.trained_with)
        if isinstance(campaign.base_model, BaseCheckpoint)
        else []
    )
    return decide(
        campaign.gate,
        candidate,
        history_of(records),
        stages=campaign.stages,
        technique=campaign.technique,
        baseline=baseline.metrics,
        baseline_positive_reward_fraction=baseline.positive_reward_fraction,
        base_lineage=base_lineage,
    )


def _timings(outcome: RoundOutcome) -> dict[str, float]:
    """Seconds per step: planning, each dataset's check, each job."""
    timings = {"plan_round": outcome.planned.seconds}
    for check in outcome.datasets:
        timings[f"validate {check.stage}/{check.channel}"] = check.seconds
    jobs: list[tuple[str, JobStatus | None]] = [
        *((f"train {name}", status) for name, status in outcome.stages.items()),
        ("evaluate", outcome.evaluation),
        ("evaluate baseline", outcome.baseline),
    ]
    for label, status in jobs:
        if status is not None and status.started_at and status.ended_at:
            timings[label] = (status.ended_at - status.started_at).total_seconds()
    return timings


def tracking_uri(cf: CampaignFile) -> str:
    """The campaign's MLflow URI; a local campaign without one gets a SQLite store beside its
    ledger, so the demo has an MLflow UI to open with no server."""
    backend = cf.campaign.backend
    if backend.mlflow_uri:
        return backend.mlflow_uri
    root = campaign_root(cf.campaign)
    if backend.type == "local" and not storage.is_s3(root):
        return f"sqlite:///{storage.local_path(root) / 'mlflow.db'}"
    return ""


def shown_metrics(cf: CampaignFile, record: dict[str, Any]) -> dict[str, Any]:
    """The record with only the metrics the campaign asks to record (and the gate's), so the
    report's table and plot are not drowned by every number an evaluation emits."""
    campaign = cf.campaign
    wanted = {*campaign.evaluation.metrics, campaign.gate.primary_metric, *campaign.gate.targets}
    if not campaign.evaluation.metrics:
        return record
    for key in ("metrics", "baseline"):
        record[key] = {k: v for k, v in (record.get(key) or {}).items() if k in wanted}
    return record
