"""The end of a round: judge it, write its ledger record once, mirror it to MLflow and the report.

The ledger write is the commit point. A retried ``decide`` task of the same DAG run gets the
record it wrote the first time (same decision, no second write); a different run that tries to
record the same round is refused, so two runs can never both write round n. MLflow and the
report follow the ledger: when the tracking server is down the round is still recorded, and the
next round's decide task mirrors what is missing.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from tuneloop import storage
from tuneloop.config.campaign import BaseCheckpoint
from tuneloop.config.file import CampaignFile
from tuneloop.errors import Problem
from tuneloop.rounds.plan import RoundPlan, campaign_root
from tuneloop.rounds.steps import RoundError, RoundStart

log = logging.getLogger(__name__)

REPORT_FOLDER = "report"


def _parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None


def _seconds(status: dict[str, Any] | None) -> float | None:
    if not status:
        return None
    began, ended = _parse_time(status.get("started_at")), _parse_time(status.get("ended_at"))
    return (ended - began).total_seconds() if began and ended else None


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


def build_and_record(
    cf: CampaignFile,
    *,
    planned: dict[str, Any],
    validated: list[dict[str, Any]],
    results: dict[str, Any],
    points: dict[str, Any],
    evaluation: dict[str, Any],
    baseline: dict[str, Any],
    run_id: str,
) -> Any:
    from tuneloop.artifacts.manifest import Checkpoint
    from tuneloop.rounds.gate import RoundSummary, decide
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

    campaign = cf.campaign
    ledger = Ledger(campaign_root(campaign))
    start = RoundStart.model_validate(planned["start"])
    plan = RoundPlan.model_validate(planned["plan"])
    # Read once: the retry check, the history, the deltas and the report all come from it.
    records = ledger.records()
    existing = next((r for r in records if r.round == start.round), None)
    if existing is not None:
        if existing.run_id == run_id:
            log.info("Round %d was already recorded by this run; reusing it", start.round)
            mirror(cf, records, existing)
            return existing
        raise RoundError(
            [
                Problem(
                    f"round {start.round}",
                    f"already recorded by run {existing.run_id} ({ledger.round_uri(start.round)})",
                    fix="rounds are numbered by the ledger; trigger a new run to plan the next "
                    "round",
                )
            ]
        )

    instance_type = getattr(campaign.backend, "instance_type", None)
    stages = []
    billable = 0.0
    hours = 0.0
    for planned_stage in plan.stages:
        status = results.get(planned_stage.name)
        point = points.get(planned_stage.name)
        if not status or not point or point.get("skipped"):
            continue
        checkpoint = Checkpoint.model_validate(
            {k: v for k, v in point.items() if k in Checkpoint.model_fields}
        )
        seconds = status.get("billable_seconds")
        billable += seconds or 0.0
        hours += gpu_hours(seconds, instance_type)
        stages.append(
            StageRecord(
                name=planned_stage.name,
                method=planned_stage.method,
                technique=planned_stage.technique,
                job_name=status["name"],
                recipe=planned_stage.recipe,
                output_uri=status.get("result_uri") or checkpoint.output_uri,
                checkpoint=checkpoint,
                started_at=_parse_time(status.get("started_at")),
                ended_at=_parse_time(status.get("ended_at")),
                billable_seconds=seconds,
            )
        )
    billable += evaluation.get("billable_seconds") or 0.0
    hours += gpu_hours(evaluation.get("billable_seconds"), instance_type)

    metrics = dict(evaluation.get("metrics") or {})
    base_metrics = dict(baseline.get("metrics") or {})
    digest = baseline_digest(
        plan.evaluation.recipe,
        # The baseline job's name digests the base model with the recipe and data.
        model=str(baseline.get("name", "")),
        data_sha256=next((d["sha256"] for d in validated if d["stage"] == "evaluation"), ""),
    )
    stored = ledger.write_baseline(
        BaselineRecord(
            campaign=campaign.name,
            digest=digest,
            model=str(baseline.get("name", "")),
            run_id=run_id,
            evaluation={k: baseline.get(k) for k in ("name", "result_uri", "console_url")},
            metrics=base_metrics,
            # rft_eval reports the share of positive rewards (the local evaluator does; a Nova
            # reward Lambda may add it to its metrics_list).
            positive_reward_fraction=base_metrics.get("positive_reward_fraction"),
        )
    )
    base_metrics = stored.metrics or base_metrics

    history = history_of(records)
    previous = records[-1] if records else None
    champion = champion_of(records)
    summary_stages = [s.name for s in stages]
    last_checkpoint = (
        stages[-1].output_uri if stages else (start.base_output_uri or plan.base_model)
    )
    lineage = list(stages[-1].checkpoint.lineage) if stages and stages[-1].checkpoint else []
    candidate = RoundSummary(
        round=start.round,
        metrics=metrics,
        checkpoint=last_checkpoint,
        stages=summary_stages,
        methods=[s.method for s in stages],
        lineage=lineage,
        gpu_hours=hours,
    )
    base_lineage = (
        list(campaign.base_model.trained_with)
        if isinstance(campaign.base_model, BaseCheckpoint)
        else []
    )
    decision = decide(
        campaign.gate,
        candidate,
        history,
        stages=campaign.stages,
        technique=campaign.technique,
        baseline=base_metrics,
        baseline_positive_reward_fraction=stored.positive_reward_fraction,
        base_lineage=base_lineage,
    )
    timings = {"plan_round": float(planned.get("seconds") or 0.0)}
    for item in validated:
        timings[f"validate {item['stage']}/{item['channel']}"] = float(item.get("seconds") or 0.0)
    for name, status in results.items():
        seconds = _seconds(status)
        if seconds is not None:
            timings[f"train {name}"] = seconds
    for label, status in (("evaluate", evaluation), ("evaluate baseline", baseline)):
        seconds = _seconds(status)
        if seconds is not None:
            timings[label] = seconds
    record = RoundRecord(
        campaign=campaign.name,
        round=start.round,
        run_id=run_id,
        started_at=_parse_time(planned.get("started_at")),
        ended_at=datetime.now(UTC),
        base=start.base_output_uri or plan.base_model,
        base_round=start.base_round,
        rollback_of=start.rollback_of,
        plan=planned["plan"],
        datasets=[
            DatasetRecord.model_validate({k: v for k, v in d.items() if k != "seconds"})
            for d in validated
        ],
        stages=stages,
        evaluation={
            "job_name": evaluation.get("name"),
            "result_uri": evaluation.get("result_uri"),
            "console_url": evaluation.get("console_url"),
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
        decision=decision,
        timings=timings,
        billable_seconds=billable,
        gpu_hours=hours,
    )
    record = ledger.write(record)
    mirror(cf, [*records, record], record)
    return record


def mirror(cf: CampaignFile, records: list[Any], record: Any) -> dict[str, Any]:
    """The round report (of ``records``, every recorded round) and the MLflow runs for
    ``record``; failures are logged, never raised: the ledger already holds the round."""
    out: dict[str, Any] = {}
    files: list[str] = []
    try:
        files = write_round_report(cf, records)
        out["report"] = files[0] if files else ""
    except Exception as exc:  # the round stands without its report
        log.warning("Could not write the round report: %s", exc)
    uri = tracking_uri(cf)
    if uri:
        try:
            from tuneloop.tracking.mirror import Tracker

            tracked = Tracker(uri, cf.campaign.name).log_round(
                record.model_dump(mode="json"), report_files=files
            )
            out.update(tracked)
            log.info("MLflow: %s", tracked.get("round_url") or tracked)
            if tracked.get("open_with"):
                log.info("Open the MLflow UI with: %s", tracked["open_with"])
        except Exception as exc:  # the ledger holds the round; the next round mirrors again
            log.warning("MLflow tracking failed for round %d: %s", record.round, exc)
    return out


def write_round_report(cf: CampaignFile, records: list[Any]) -> list[str]:
    """The campaign's round report (Markdown and PNG) beside its ledger; [] on S3 roots."""
    from tuneloop.tracking.report import write_report

    root = campaign_root(cf.campaign)
    if storage.is_s3(root):
        return []
    shown = [shown_metrics(cf, r.model_dump(mode="json")) for r in records]
    folder = str(storage.local_path(storage.join(root, REPORT_FOLDER)))
    paths = write_report(
        shown,
        folder,
        campaign=cf.campaign.name,
        primary_metric=cf.campaign.gate.primary_metric,
        baseline=shown[-1].get("baseline") if shown else None,
    )
    return [str(paths.markdown), str(paths.png)]


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
