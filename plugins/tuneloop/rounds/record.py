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
from tuneloop.rounds.cost import job_cost, total_cost
from tuneloop.rounds.decision import Decision, RoundSummary
from tuneloop.rounds.findings import failing, stops_campaign
from tuneloop.rounds.gate import decide, decide_failed
from tuneloop.rounds.ledger import (
    BaselineRecord,
    DatasetRecord,
    EvaluationCost,
    JobCost,
    Ledger,
    RoundRecord,
    StageRecord,
    baseline_digest,
    champion_of,
    deltas,
    history_of,
)
from tuneloop.rounds.monitoring import detect
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
    baseline = _stored_baseline(cf, ledger, outcome)
    base_metrics = baseline.metrics
    metrics = dict(evaluation.metrics) if evaluation is not None else {}
    change = _evaluation_change(cf, records, outcome, metrics, base_metrics)
    stages = _stage_records(cf, outcome, change)
    evaluation_cost = None if evaluation is None else _evaluation_cost(cf, outcome, evaluation)
    jobs: list[JobCost] = [*stages, *([evaluation_cost] if evaluation_cost else [])]
    hours = sum(job.gpu_hours for job in jobs)
    cost = total_cost(job.estimated_cost_usd for job in jobs)
    notes = list(dict.fromkeys(job.cost_note for job in jobs if job.cost_note))
    sources = list(dict.fromkeys(job.price_source for job in jobs if job.price_source))
    # The base model's evaluation is counted once: with the round whose run measured it.
    baseline_cost = baseline.cost if baseline.run_id == outcome.run_id else None
    previous = records[-1] if records else None
    champion = champion_of(records)
    failed = _failure(outcome, stages)
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
        evaluation={}
        if evaluation is None
        else {
            "job_name": evaluation.name,
            "result_uri": evaluation.result_uri,
            "console_url": evaluation.console_url,
            "metrics": metrics,
        },
        baseline=base_metrics,
        probes=outcome.probes,
        metrics=metrics,
        failed=failed,
        deltas=deltas(
            metrics,
            previous=previous.metrics if previous else None,
            champion=champion.metrics if champion else None,
            baseline=base_metrics or None,
        ),
        decision=_judge(
            cf,
            outcome,
            stages,
            records,
            baseline,
            RoundSpend(hours, cost, baseline_cost),
            failed,
        ),
        timings=_timings(outcome),
        billable_seconds=sum(job.billable_seconds or 0.0 for job in jobs),
        gpu_hours=hours,
        estimated_cost_usd=cost,
        price_source="; ".join(sources),
        cost_note="; ".join(notes),
        evaluation_cost=evaluation_cost,
        baseline_cost=baseline_cost,
    )


@dataclass(frozen=True)
class RoundSpend:
    """What the round's jobs cost, and the base model's evaluation when this round measured
    it: what the gate adds to the campaign's spend."""

    gpu_hours: float
    cost_usd: float | None
    baseline: EvaluationCost | None

    def summary_fields(self) -> dict[str, Any]:
        return {
            "gpu_hours": self.gpu_hours,
            "cost_usd": self.cost_usd,
            "baseline_gpu_hours": self.baseline.gpu_hours if self.baseline else 0.0,
            "baseline_cost_usd": self.baseline.estimated_cost_usd if self.baseline else 0.0,
        }


def _evaluation_cost(cf: CampaignFile, outcome: RoundOutcome, status: JobStatus) -> EvaluationCost:
    recipe = outcome.planned.plan.evaluation.recipe
    return EvaluationCost(
        job_name=status.name, **job_cost(status.billable_seconds, cf.campaign.backend, recipe)
    )


def _stage_records(
    cf: CampaignFile, outcome: RoundOutcome, evaluation_change: float | None
) -> list[StageRecord]:
    """The stages that ran (a stage the run left out has no job and passed its base through),
    with their curves and what the monitors found on them. A stage monitoring stopped is
    recorded without a checkpoint, with the findings that stopped it."""
    stages = []
    for planned in outcome.planned.plan.stages:
        status = outcome.stages.get(planned.name)
        point = outcome.checkpoints.get(planned.name)
        if status is None or point is None:
            continue
        if point.checkpoint is None and not status.stopped_early:
            continue
        series = outcome.stage_series.get(planned.name) or status.series
        if status.stopped_early:
            findings = list(status.findings)
        else:
            findings = detect(
                series,
                cf.campaign.monitoring,
                stage=planned.name,
                method=planned.method,
                final=True,
                evaluation_change=evaluation_change,
            )
        stages.append(
            StageRecord(
                name=planned.name,
                method=planned.method,
                technique=planned.technique,
                job_name=status.name,
                recipe=planned.recipe,
                output_uri=status.result_uri
                or (point.checkpoint.output_uri if point.checkpoint else ""),
                checkpoint=point.checkpoint,
                started_at=status.started_at,
                ended_at=status.ended_at,
                **job_cost(status.billable_seconds, cf.campaign.backend, planned.recipe),
                series=series,
                findings=findings,
                stopped_early=status.stopped_early,
            )
        )
    return stages


def _failure(outcome: RoundOutcome, stages: list[StageRecord]) -> str:
    """Why the round failed before it could be judged ("" when it did not): monitoring
    stopped a job, or a detector whose policy fails the round fired on a finished job."""
    stopped = next((p.stopped for p in outcome.checkpoints.values() if p and p.stopped), "")
    if stopped:
        return stopped
    for stage in stages:
        fired = failing(stage.findings)
        if fired:
            return f"the {stage.name} job's {fired[0].detector} monitor fired: {fired[0].message}"
    return ""


def _evaluation_change(
    cf: CampaignFile,
    records: list[RoundRecord],
    outcome: RoundOutcome,
    metrics: dict[str, float],
    baseline: dict[str, float],
) -> float | None:
    """How much the round's primary metric improved over what it started from (its base
    round's, or the base model's), signed so that positive is better; None when unknown. The
    overfitting monitor reads it when an RFT stage has no validation reward."""
    gate = cf.campaign.gate
    value = metrics.get(gate.primary_metric)
    base_round = outcome.planned.start.base_round
    base = next((r.metrics for r in records if r.round == base_round), None)
    reference = (base if base_round is not None and base is not None else baseline).get(
        gate.primary_metric
    )
    if value is None or reference is None:
        return None
    return value - reference if gate.higher_is_better else reference - value


def _stored_baseline(cf: CampaignFile, ledger: Ledger, outcome: RoundOutcome) -> BaselineRecord:
    """The base model's evaluation as the ledger keeps it: the first one recorded for this
    recipe, model and data wins, so every round compares with the same numbers."""
    baseline = outcome.baseline
    metrics = dict(baseline.metrics)
    cost = _evaluation_cost(cf, outcome, baseline)
    stored = ledger.write_baseline(
        BaselineRecord(
            campaign=cf.campaign.name,
            digest=outcome_baseline_digest(outcome),
            model=baseline.name,
            run_id=outcome.run_id,
            evaluation={
                "name": baseline.name,
                "result_uri": baseline.result_uri,
                "console_url": baseline.console_url,
            },
            metrics=metrics,
            gpu_hours=cost.gpu_hours,
            cost=cost,
            # The probe scores the base model's evaluation answers with the RFT reward function
            # on every backend; else rft_eval reports the share itself (the local evaluator
            # does; a Nova reward Lambda may add it to its metrics_list).
            positive_reward_fraction=outcome.baseline_positive_fraction
            if outcome.baseline_positive_fraction is not None
            else metrics.get("positive_reward_fraction"),
        )
    )
    return stored if stored.metrics else stored.model_copy(update={"metrics": metrics})


def outcome_baseline_digest(outcome: RoundOutcome) -> str:
    """The digest the round's baseline evaluation is recorded under in the ledger."""
    eval_data = next((d.sha256 for d in outcome.datasets if d.stage == "evaluation"), "")
    return baseline_digest(
        outcome.planned.plan.evaluation.recipe,
        # The baseline job's name digests the base model with the recipe and data.
        model=outcome.baseline.name,
        data_sha256=eval_data,
    )


def _judge(
    cf: CampaignFile,
    outcome: RoundOutcome,
    stages: list[StageRecord],
    records: list[RoundRecord],
    baseline: BaselineRecord,
    spend: RoundSpend,
    failed: str,
) -> Decision:
    campaign = cf.campaign
    start = outcome.planned.start
    base_lineage: list[Method] = (
        list(campaign.base_model.trained_with)
        if isinstance(campaign.base_model, BaseCheckpoint)
        else []
    )
    if failed:
        return decide_failed(
            campaign.gate,
            start.round,
            history_of(records),
            stages=campaign.stages,
            technique=campaign.technique,
            why=failed,
            stop_campaign=any(stops_campaign(s.findings) for s in stages),
            baseline=baseline.metrics,
            base_lineage=base_lineage,
            ran=list(outcome.planned.start.stages),
            **spend.summary_fields(),
        )
    last = stages[-1] if stages else None
    assert outcome.evaluation is not None  # a round without evaluation failed (above)
    candidate = RoundSummary(
        round=start.round,
        metrics=dict(outcome.evaluation.metrics),
        checkpoint=last.output_uri
        if last
        else (start.base_output_uri or outcome.planned.plan.base_model),
        stages=[s.name for s in stages],
        methods=[s.method for s in stages],
        lineage=list(last.checkpoint.lineage) if last and last.checkpoint else [],
        **spend.summary_fields(),
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
        low_positive_rewards=campaign.reward_probe.low_positive_rewards,
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
