"""Mirror the lifecycle into MLflow, and put its latest plan and apply in the round report.

The lifecycle's ledger (`tuneloop.lifecycle.store`: plans and applies, written once) is the
source of truth; MLflow shows it beside the rounds. The rules:

- one run per plan in the campaign's experiment, named ``lifecycle-<nnnn>`` and tagged
  ``tuneloop.kind=lifecycle``, ``tuneloop.campaign`` and ``tuneloop.sequence``; it is found again
  by those tags before one is created, so mirroring a plan twice (or its apply later) fills in
  the same run. It nests under the campaign's run when that run exists;
- params (``keep_last``, ``archive_storage_class``, ``archive_mode``, ``delete_intermediates``,
  ``region``) are logged only when missing: a plan's params never change, and a campaign file
  edited since cannot make a second mirror fail;
- metrics (bytes to archive and delete, the monthly cost before and after, what the plan would
  save; with the apply: bytes archived and deleted, cost saved) are logged at step ``sequence``
  with the plan's time, so logging them again writes rows MLflow already holds;
- ``plan.json`` (and ``apply.json`` once applied) are the run's artifacts, the records as the
  ledger holds them.

Tracking goes where the rounds' goes (`tuneloop.rounds.record.tracking_uri`), with the
credentials of `tuneloop.tracking.credentials`; a campaign with no tracking logs nothing.
After mirroring, the round report is written again with its "Storage" section.

mlflow is imported inside functions (through `tuneloop.tracking.mirror`): DAG files import this
module at parse time.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneloop.artifacts.training_metrics import METRICS_PER_BATCH, PARAMS_PER_BATCH, millis

if TYPE_CHECKING:
    from tuneloop.config.file import CampaignFile
    from tuneloop.lifecycle.records import ApplyReport, LifecyclePlan
    from tuneloop.rounds.ledger import RoundRecord
    from tuneloop.tracking.mirror import Tracker

log = logging.getLogger(__name__)

KIND = "lifecycle"
TAG_SEQUENCE = "tuneloop.sequence"
TAG_APPLIED = "tuneloop.lifecycle.applied"
REPORT_FOLDER = "report"
"""The round report's folder under the campaign root (as the round DAG writes it)."""
PLAN_ARTIFACT = "plan.json"
APPLY_ARTIFACT = "apply.json"


def run_name(sequence: int) -> str:
    return f"lifecycle-{sequence:04d}"


def mirror_lifecycle(
    cf: CampaignFile, plan: LifecyclePlan, report: ApplyReport | None = None
) -> dict[str, str]:
    """Write the round report again, then log ``plan`` (and ``report``, its apply) with that
    report to the campaign's MLflow experiment; idempotent. Returns ``run_id`` and ``run_url``
    (empty when the campaign has no tracking). MLflow failures raise `TrackingError`; the
    ledger already holds the plan, and mirroring again later fills MLflow in."""
    from tuneloop.config.file import for_jobs
    from tuneloop.rounds.record import tracking_uri

    cf = for_jobs(cf)  # a relative local output root, as the round's tasks see it
    report_files = refresh_report(cf)
    uri = tracking_uri(cf)
    if not uri:
        return {}
    from tuneloop.tracking.credentials import mlflow_credentials
    from tuneloop.tracking.mirror import Tracker

    with mlflow_credentials(cf.campaign.backend.mlflow_conn_id):
        tracker = Tracker(uri, cf.campaign.name)
        run_id = _log_plan(tracker, cf, plan, report, report_files)
        return {"run_id": run_id, "run_url": tracker.run_url(run_id)[0]}


def _log_plan(
    tracker: Tracker,
    cf: CampaignFile,
    plan: LifecyclePlan,
    report: ApplyReport | None,
    report_files: list[str],
) -> str:
    from tuneloop.tracking.mirror import REPORT_ARTIFACT, TAG_KIND

    with tracker._calls(f"log lifecycle plan {plan.sequence} of campaign {tracker.campaign!r}"):
        runs = tracker._campaign_runs()
        run = _find(runs, plan.sequence)
        start = millis(plan.created_at.isoformat()) or 0
        if run is None:
            parent = tracker._find(runs, kind="campaign")
            run = tracker._create_run(
                run_name(plan.sequence),
                start,
                {TAG_KIND: KIND, TAG_SEQUENCE: str(plan.sequence)},
                parent=parent.info.run_id if parent is not None else None,
            )
        run_id = str(run.info.run_id)
        _log_values(tracker, run, _params(cf, plan), _metrics(plan, report), report)
        with tempfile.TemporaryDirectory(prefix="tuneloop-mlflow-") as scratch:
            files = [_dump(Path(scratch) / PLAN_ARTIFACT, plan.model_dump(mode="json"))]
            if report is not None:
                files.append(_dump(Path(scratch) / APPLY_ARTIFACT, report.model_dump(mode="json")))
            for path in files:
                tracker.client.log_artifact(run_id, str(path))
        for name in report_files:
            tracker.client.log_artifact(run_id, name, REPORT_ARTIFACT)
        end = millis(report.ended_at.isoformat()) if report is not None else start
        if run.info.status != "FINISHED" or run.info.end_time != end:
            tracker._terminate(run_id, end or start)
    return run_id


def _find(runs: list[Any], sequence: int) -> Any | None:
    from tuneloop.tracking.mirror import TAG_KIND

    for run in runs:
        tags = run.data.tags
        if tags.get(TAG_KIND) == KIND and tags.get(TAG_SEQUENCE) == str(sequence):
            return run
    return None


def _params(cf: CampaignFile, plan: LifecyclePlan) -> dict[str, str]:
    retention = cf.campaign.retention
    return {
        "keep_last": str(plan.keep_last),
        "archive_storage_class": plan.archive_storage_class,
        "archive_mode": retention.archive_mode,
        "delete_intermediates": str(plan.delete_intermediates).lower(),
        "region": plan.region,
    }


def _metrics(plan: LifecyclePlan, report: ApplyReport | None) -> dict[str, float]:
    values = {
        "bytes_to_archive": float(plan.bytes_to_archive),
        "bytes_to_delete": float(plan.bytes_to_delete),
        "monthly_cost_before": plan.monthly_cost_before,
        "monthly_cost_after": plan.monthly_cost_after,
        "monthly_cost_saved": round(plan.monthly_cost_before - plan.monthly_cost_after, 6),
        "artifacts": float(len(plan.actions)),
        "rounds_kept": float(len(plan.retained)),
    }
    if report is not None:
        failed = sum(1 for r in report.results if r.outcome == "failed")
        values.update(
            {
                "bytes_archived": float(report.bytes_archived),
                "bytes_deleted": float(report.bytes_deleted),
                "applied_monthly_cost_saved": report.monthly_cost_saved,
                "actions_failed": float(failed),
            }
        )
    return values


def _log_values(
    tracker: Tracker,
    run: Any,
    params: Mapping[str, str],
    metrics: Mapping[str, float],
    report: ApplyReport | None,
) -> None:
    """Missing params, every metric at step ``sequence`` (MLflow keeps one row per exact
    repeat), and the applied tag."""
    from mlflow.entities import Metric, Param, RunTag

    run_id = run.info.run_id
    sequence = int(run.data.tags.get(TAG_SEQUENCE, "0"))
    stamp = int(run.info.start_time or 0)
    fresh = [Param(k, v) for k, v in params.items() if k not in run.data.params]
    for i in range(0, len(fresh), PARAMS_PER_BATCH):
        tracker.client.log_batch(run_id, params=fresh[i : i + PARAMS_PER_BATCH])
    points = [Metric(k, v, stamp, sequence) for k, v in metrics.items()]
    for i in range(0, len(points), METRICS_PER_BATCH):
        tracker.client.log_batch(run_id, metrics=points[i : i + METRICS_PER_BATCH])
    applied = "true" if report is not None else "false"
    if run.data.tags.get(TAG_APPLIED) != "true":  # an apply once mirrored stays mirrored
        tracker.client.log_batch(run_id, tags=[RunTag(TAG_APPLIED, applied)])


def _dump(path: Path, data: Mapping[str, Any]) -> Path:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    return path


# --- the round report's storage section ----------------------------------------------------------


def storage_records(cf: CampaignFile) -> dict[str, Any] | None:
    """``{"plan": <latest plan>, "apply": <latest apply or None>}`` as plain mappings for
    `tuneloop.tracking.report.write_report`'s ``storage``; None when nothing was planned yet."""
    from tuneloop.config.file import for_jobs
    from tuneloop.lifecycle.store import LifecycleStore

    store = LifecycleStore.for_campaign(for_jobs(cf).campaign)
    plan = store.latest_plan()
    if plan is None:
        return None
    applies = store.applies()
    latest = max(applies, key=lambda a: a.sequence) if applies else None
    return {
        "plan": plan.model_dump(mode="json"),
        "apply": latest.model_dump(mode="json") if latest is not None else None,
    }


def refresh_report(cf: CampaignFile) -> list[str]:
    """The round report written again from the ledger, with its "Storage" section; [] on S3
    roots (the round DAG writes no report there either). Failures are logged, never raised:
    the report is a view."""
    from tuneloop.config.file import for_jobs
    from tuneloop.rounds.ledger import Ledger

    cf = for_jobs(cf)
    try:
        return write_campaign_report(cf, Ledger.for_campaign(cf.campaign).records())
    except Exception as exc:  # the lifecycle stands without its report
        log.warning("Could not write the round report: %s", exc)
        return []


def write_campaign_report(cf: CampaignFile, records: list[RoundRecord]) -> list[str]:
    """The campaign's round report (Markdown and PNGs) beside its ledger, from ``records`` and
    the lifecycle's latest plan and apply (its "Storage" section); [] on S3 roots. Both the
    round DAG's ``decide`` and the lifecycle write it, so neither drops the other's part."""
    from tuneloop import storage
    from tuneloop.config.paths import campaign_root
    from tuneloop.rounds.record import shown_metrics
    from tuneloop.tracking.report import write_report

    root = campaign_root(cf.campaign)
    if storage.is_s3(root):
        return []
    shown = [shown_metrics(cf, r.model_dump(mode="json")) for r in records]
    paths = write_report(
        shown,
        storage.local_path(storage.join(root, REPORT_FOLDER)),
        campaign=cf.campaign.name,
        primary_metric=cf.campaign.gate.primary_metric,
        baseline=shown[-1].get("baseline") if shown else None,
        storage=storage_records(cf),
    )
    return [str(path) for path in paths.files]
