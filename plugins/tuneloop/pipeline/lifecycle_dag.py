"""The lifecycle DAG: one per campaign, ``tuneloop_<campaign>_lifecycle``.

    plan_lifecycle -> apply_lifecycle -> mirror_lifecycle

It runs daily, on demand, and after each round's record lands (the round DAG's ``decide``
updates the campaign's rounds Asset, `pipeline.dag.lifecycle_asset_uri`). Everything it
decides comes from the ledger (`tuneloop.lifecycle.service`):

- **plan_lifecycle** plans: the retention set, each artifact's action and the monthly cost
  before and after; the plan is written once to the ledger and logged as a table.
- **apply_lifecycle** acts on that plan, unless the run's ``apply`` param says otherwise. With
  ``apply`` empty the campaign's history decides: the campaign's first plan is only shown (a
  person reads it before anything moves), later plans are applied. ``true`` applies even the
  first plan; ``false`` never applies. A plan with nothing to archive or delete is skipped.
- **mirror_lifecycle** mirrors the plan and what apply did to MLflow and refreshes the report;
  a failure there is logged, never raised: the ledger already holds both.

One lifecycle run at a time (``max_active_runs=1``); a round may run beside it: apply asks the
ledger again, before each irreversible step, which rounds and folders are protected.

This module is imported when DAG files are parsed: only ``airflow.sdk`` and tuneloop's light
modules at module level; every task imports what it needs when it runs.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneloop.config.file import CampaignFile, load_campaign
from tuneloop.pipeline.dag import dags_per_campaign, lifecycle_asset_uri

if TYPE_CHECKING:
    from airflow.sdk import DAG

    from tuneloop.config.campaign import Campaign
    from tuneloop.lifecycle.records import LifecyclePlan

LIFECYCLE_SUFFIX = "_lifecycle"
LIFECYCLE_SCHEDULE = "@daily"
APPLY_PARAM = "apply"


def lifecycle_dag_id(campaign: Campaign) -> str:
    """``tuneloop_<campaign>_lifecycle``."""
    return f"{campaign.dag_id}{LIFECYCLE_SUFFIX}"


def lifecycle_dags(folder: str | Path | None = None) -> dict[str, DAG]:
    """``{dag_id: DAG}``: one lifecycle DAG per campaign file in ``folder`` (the campaigns
    folder by default). A broken campaign file has no lifecycle DAG; the round DAG file reports
    its problems (`pipeline.dag.campaign_dags`)."""
    return dags_per_campaign(lifecycle_dag, folder, report_broken=False)


def lifecycle_dag(path: Path) -> DAG:
    """The lifecycle DAG of one campaign file."""
    return build_lifecycle_dag(load_campaign(path))


def build_lifecycle_dag(cf: CampaignFile) -> DAG:
    from airflow.sdk import DAG, Asset, AssetOrTimeSchedule, CronTriggerTimetable

    campaign = cf.campaign
    start = campaign.start_date or datetime(2026, 1, 1).date()
    schedule = AssetOrTimeSchedule(
        timetable=CronTriggerTimetable(LIFECYCLE_SCHEDULE, timezone="UTC"),
        assets=[Asset(lifecycle_asset_uri(campaign))],
    )
    with DAG(
        dag_id=lifecycle_dag_id(campaign),
        description=f"Checkpoint lifecycle of tuneloop campaign {campaign.name}"[:200],
        schedule=schedule,
        start_date=datetime(start.year, start.month, start.day, tzinfo=UTC),
        catchup=False,
        max_active_runs=1,
        params=_params(),
        tags=["tuneloop", "lifecycle", f"campaign:{campaign.name}", *campaign.tags],
        doc_md=_doc(cf),
        default_args={"retries": 1, "retry_delay": timedelta(minutes=1)},
    ) as dag:
        _wire(str(cf.path.resolve()))
    return dag


def _params() -> dict[str, Any]:
    from airflow.sdk import Param

    from tuneloop.pipeline.params import shareable

    return shareable(
        {
            APPLY_PARAM: Param(
                None,
                type=["null", "boolean"],
                title="Apply the plan",
                description="true: archive and delete what the plan says; false: only plan. "
                "Empty: as the campaign's history says (its first lifecycle run only plans, "
                "later runs apply).",
            )
        }
    )


def _doc(cf: CampaignFile) -> str:
    retention = cf.campaign.retention
    return (
        f"**{cf.campaign.name}** checkpoint lifecycle\n\n"
        f"- campaign file: `{cf.path}`\n- keep the last {retention.keep_last} rounds, the "
        f"champion, the base of a running round, the baseline and pinned rounds\n"
        f"- archive to `{retention.archive_storage_class}`; delete intermediates: "
        f"{str(retention.delete_intermediates).lower()}\n"
    )


def _wire(path: str) -> None:
    from airflow.sdk import task

    # A task's argument is an XComArg while the DAG is wired, the plan's JSON when it runs.
    @task(task_id="plan_lifecycle", retries=1)
    def plan_lifecycle(**context: Any) -> dict[str, Any]:
        return plan_lifecycle_task(path, context)

    @task(task_id="apply_lifecycle", retries=0)
    def apply_lifecycle(plan: Any, **context: Any) -> dict[str, Any]:
        return apply_lifecycle_task(path, plan, context)

    @task(task_id="mirror_lifecycle", trigger_rule="all_done", retries=1)
    def mirror_lifecycle(plan: Any, **context: Any) -> dict[str, Any]:
        report = context["ti"].xcom_pull(task_ids="apply_lifecycle", key="report")
        return mirror_lifecycle_task(path, plan, report)

    planned = plan_lifecycle()
    applied = apply_lifecycle(planned)
    applied >> mirror_lifecycle(planned)


# --- task bodies (run in workers) --------------------------------------------------------------


def _campaign(path: str) -> CampaignFile:
    """The campaign file, read now (the lifecycle plans from the campaign as it is today), its
    AWS connection made this process's."""
    from tuneloop import aws
    from tuneloop.config.backend import aws_connection
    from tuneloop.tracking.credentials import mask_environment

    cf = load_campaign(Path(path))
    aws.use_connection(aws_connection(cf.campaign) or aws.DEFAULT_CONN_ID)
    mask_environment()
    aws.mask_environment_secrets()
    return cf


def plan_lifecycle_task(path: str, context: dict[str, Any]) -> dict[str, Any]:
    """Plan the campaign's lifecycle from the ledger, record the plan, log it as a table."""
    from tuneloop.config.paths import campaign_root
    from tuneloop.lifecycle.service import plan_campaign
    from tuneloop.pipeline.tasks import log, user_errors
    from tuneloop.tracking.lifecycle_text import format_plan

    with user_errors():
        cf = _campaign(path)
        plan = plan_campaign(cf, run_id=str(context.get("run_id", "")))
    log.info("%s", format_plan(plan, root=campaign_root(cf.campaign)))
    return plan.model_dump(mode="json")


def should_apply(plan: LifecyclePlan, apply: bool | None) -> tuple[bool, str]:
    """Whether this run applies ``plan``, and why (or why not)."""
    if apply is False:
        return False, "the run's apply param is false: this run only plans"
    if plan.first and apply is not True:
        return False, (
            "this is the campaign's first lifecycle plan: it is only shown; the next run "
            "applies (or trigger this DAG with apply: true)"
        )
    if not plan.acting():
        return False, "the plan archives and deletes nothing"
    return True, "applying" if apply is None else "the run's apply param is true"


def apply_lifecycle_task(
    path: str, planned: dict[str, Any], context: dict[str, Any]
) -> dict[str, Any]:
    """Carry out the plan (or skip, see `should_apply`); a line that failed fails the task
    once the report is recorded and pushed (XCom key ``report``) for the mirror."""
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    from tuneloop.config.paths import campaign_root
    from tuneloop.lifecycle.records import LifecyclePlan
    from tuneloop.lifecycle.service import apply_campaign
    from tuneloop.pipeline.tasks import log, user_errors
    from tuneloop.tracking.lifecycle_text import format_apply

    plan = LifecyclePlan.model_validate(planned)
    apply = (context.get("params") or {}).get(APPLY_PARAM)
    go, why = should_apply(plan, apply if isinstance(apply, bool) else None)
    if not go:
        raise AirflowSkipException(f"Lifecycle plan {plan.sequence} not applied: {why}")
    with user_errors():
        cf = _campaign(path)
        _, report = apply_campaign(cf, run_id=str(context.get("run_id", "")), plan=plan)
    payload = report.model_dump(mode="json")
    context["ti"].xcom_push(key="report", value=payload)
    log.info("%s", format_apply(plan, report, root=campaign_root(cf.campaign)))
    failed = [r for r in report.results if r.outcome == "failed"]
    if failed:
        lines = "\n".join(f"  {r.uri}: {r.action}: {r.detail}" for r in failed)
        raise AirflowFailException(
            f"{len(failed)} lifecycle action(s) failed (nothing was removed before its copy "
            f"was verified; the next run tries them again):\n{lines}"
        )
    return payload


def mirror_lifecycle_task(
    path: str, planned: dict[str, Any], report: dict[str, Any] | None
) -> dict[str, Any]:
    """Mirror the plan and what apply did to MLflow and the report; never raises."""
    from tuneloop.lifecycle.records import ApplyReport, LifecyclePlan
    from tuneloop.pipeline.tasks import log

    plan = LifecyclePlan.model_validate(planned)
    applied = ApplyReport.model_validate(report) if report else None
    try:
        from tuneloop.tracking.lifecycle import mirror_lifecycle

        cf = _campaign(path)
        mirrored = mirror_lifecycle(cf, plan, applied)
    except Exception as exc:  # the ledger holds the plan and the report; the next run mirrors
        log.warning("Could not mirror lifecycle plan %d: %s", plan.sequence, exc)
        return {"mirrored": False, "error": str(exc)}
    log.info("Lifecycle plan %d mirrored: %s", plan.sequence, mirrored)
    return {"mirrored": True}
