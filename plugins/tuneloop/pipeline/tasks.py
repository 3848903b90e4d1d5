"""The round DAG's task bodies: XCom in, validated once into a box (`tuneloop.rounds.boxes`),
the round's steps called, the result box out as JSON.

Imported only inside running tasks (never at parse time). The campaign file is read once per
round, by ``plan_round``; every later task rebuilds the campaign from the snapshot in the plan.
After the ledger holds a round, ``decide`` mirrors it to MLflow and refreshes the report.

A user mistake (a broken campaign, an invalid dataset, a missing checkpoint) fails the task at
once with the problem's own words and no retry; everything else is left to Airflow's retries.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from tuneloop.config.paths import campaign_root
from tuneloop.errors import TuneloopError

if TYPE_CHECKING:
    from tuneloop.artifacts.manifest import Checkpoint
    from tuneloop.config.file import CampaignFile
    from tuneloop.lifecycle.records import RestorePlan
    from tuneloop.rounds.boxes import CampaignSnapshot, RoundStart
    from tuneloop.rounds.decision import Decision
    from tuneloop.rounds.ledger import RoundRecord

log = logging.getLogger(__name__)

BRANCHES = {"continue": "next_round", "rollback": "rollback", "finish": "finish", "stop": "finish"}


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn tuneloop's typed errors into a failure Airflow does not retry."""
    from airflow.sdk.exceptions import AirflowFailException

    try:
        yield
    except TuneloopError as exc:
        raise AirflowFailException(str(exc)) from None


def _template_context(context: dict[str, Any]) -> dict[str, Any]:
    """The Airflow variables data URIs may use; a run without a logical date (a manual
    trigger) uses the day it runs."""
    from tuneloop.config.templating import sample_template_context

    logical = context.get("logical_date") or context["dag_run"].run_after
    values = sample_template_context(logical.date())
    for key in ("ds", "ds_nodash", "ts", "ts_nodash", "data_interval_start", "data_interval_end"):
        if context.get(key) is not None:
            values[key] = context[key]
    values["run_id"] = context.get("run_id", values["run_id"])
    values["params"] = dict(context.get("params") or {})
    return values


def _campaign(snapshot: CampaignSnapshot) -> CampaignFile:
    """The round's campaign from its snapshot; this process's storage calls then use the
    campaign's AWS connection (the ledger, checkpoints and results live under its output root),
    and Airflow's masker knows the MLflow password and the AWS secrets of this process's
    environment."""
    from tuneloop import aws
    from tuneloop.config.backend import aws_connection
    from tuneloop.tracking.credentials import mask_environment

    cf = snapshot.load()
    aws.use_connection(aws_connection(cf.campaign) or aws.DEFAULT_CONN_ID)
    mask_environment()
    aws.mask_environment_secrets()
    return cf


def plan_round_task(path: str, context: dict[str, Any]) -> dict[str, Any]:
    """Read the campaign file (the only time in the round), decide where the round starts,
    plan and check every recipe, and claim the round in the ledger: a `PlannedRound`.

    A base the lifecycle archived is planned from its checkpoint as the ledger recorded it (its
    manifest may be in Glacier or a tarball); what ``restore_base`` must bring back goes to
    XCom key ``restore`` (a `RestorePlan`, or ``{}``)."""
    from tuneloop.config.paths import round_root
    from tuneloop.rounds.boxes import CampaignSnapshot, PlannedRound
    from tuneloop.rounds.datasets import datasets_to_validate
    from tuneloop.rounds.plan import plan_started_round
    from tuneloop.rounds.specs import stage_job
    from tuneloop.rounds.start import parse_conf, start_round
    from tuneloop.tracking.credentials import check_connection

    started = time.monotonic()
    with user_errors():
        conf = parse_conf(getattr(context["dag_run"], "conf", None))
        snapshot = CampaignSnapshot.read(path)
        cf = _campaign(snapshot)
        check_connection(cf)
        start = start_round(cf, conf)
        restore, archived_base = archived_base_of(cf, start)
        plan = plan_started_round(
            cf, start, _template_context(context), archived_base=archived_base
        )
        root = round_root(cf.campaign, start.round)
        datasets = datasets_to_validate(cf, plan)
        first_job = stage_job(plan, root, 0, plan.base_model, start.stages)
        if not start.dry_run:
            _claim(cf, start, context)
    log.info(
        "Round %d of %s starts from %s%s%s (campaign file sha256 %s)",
        start.round,
        start.campaign,
        start.base_output_uri or plan.base_model,
        " with the rollback adjustments" if start.rollback else "",
        f" ({start.reason})" if start.reason else "",
        snapshot.sha256[:12],
    )
    if restore is not None:
        log.info(
            "Round %d's base (round %s) is archived: restore_base brings back %d item(s)",
            start.round,
            restore.base_round,
            len(restore.items),
        )
    # {} rather than None: Airflow reads an XCom of None as missing.
    context["ti"].xcom_push(key="restore", value=restore.model_dump(mode="json") if restore else {})
    planned = PlannedRound(
        campaign=snapshot,
        start=start,
        plan=plan,
        round_root=root,
        datasets=datasets,
        first_job=first_job,
        started_at=datetime.now(UTC),
        seconds=time.monotonic() - started,
    )
    return planned.model_dump(mode="json")


def archived_base_of(
    cf: CampaignFile, start: RoundStart
) -> tuple[RestorePlan | None, Checkpoint | None]:
    """What the lifecycle archived of the round's base: the `RestorePlan` that brings it back
    and the base's checkpoint as the ledger recorded it; (None, None) when the round starts from
    the base model or from a base that is not archived."""
    from tuneloop.lifecycle.restore import restore_plan

    if not start.base_output_uri:
        return None, None
    checkpoint = recorded_checkpoint(cf, start.base_output_uri)
    plan = restore_plan(
        cf.campaign,
        start.base_output_uri,
        start.base_round,
        checkpoint.uri if checkpoint is not None else None,
    )
    return (plan, checkpoint) if plan is not None else (None, None)


def recorded_checkpoint(cf: CampaignFile, output_uri: str) -> Checkpoint | None:
    """The checkpoint the ledger recorded for the stage whose output folder is ``output_uri``
    (None: no recorded stage wrote there, e.g. a base override from outside the campaign)."""
    from tuneloop.rounds.ledger import Ledger

    wanted = output_uri.rstrip("/")
    for record in reversed(Ledger(campaign_root(cf.campaign)).records()):
        for stage in record.stages:
            if stage.output_uri.rstrip("/") == wanted and stage.checkpoint is not None:
                return stage.checkpoint
    return None


ACTIVE_RUN_STATES = frozenset({"queued", "running"})


def run_state(state: Any) -> str:
    """A DAG run state as its plain name: the Task SDK hands back an enum whose ``str()`` is
    ``DagRunState.RUNNING``, the REST API a string."""
    return str(getattr(state, "value", state)).lower().rsplit(".", 1)[-1]


def _run_is_active(context: dict[str, Any]) -> Any:
    """``is_active(run_id)``: whether that run of this task's DAG is queued or running."""
    dag_id = _dag_id(context)
    ti = context["ti"]

    def is_active(run_id: str) -> bool:
        from airflow.sdk.exceptions import AirflowRuntimeError

        try:
            return run_state(ti.get_dagrun_state(dag_id, run_id)) in ACTIVE_RUN_STATES
        except AirflowRuntimeError as exc:
            detail = exc.error.detail if isinstance(exc.error.detail, dict) else {}
            if detail.get("status_code") != 404:
                raise
            # The run was deleted: it holds nothing any more.
            log.warning("Run %s of %s no longer exists; its claim is taken over", run_id, dag_id)
            return False

    return is_active


def _dag_id(context: dict[str, Any]) -> str:
    return str(getattr(context["dag_run"], "dag_id", "") or context["dag"].dag_id)


def _claim(cf: CampaignFile, start: RoundStart, context: dict[str, Any]) -> None:
    """Claim the round in the ledger for this run before anything is spent on it; the claim
    names the round's base, which the lifecycle then keeps until the round is recorded."""
    from tuneloop.rounds.ledger import Ledger, RoundClaim

    number = start.round
    claim = Ledger(campaign_root(cf.campaign)).claim(
        RoundClaim(
            campaign=cf.campaign.name,
            round=number,
            base_output_uri=start.base_output_uri,
            base_round=start.base_round,
            run_id=str(context["run_id"]),
            dag_id=_dag_id(context),
            logical_date=getattr(context["dag_run"], "logical_date", None),
        ),
        is_active=_run_is_active(context),
    )
    log.info("Round %d claimed by run %s (attempt %d)", number, claim.run_id, claim.attempt)


def round_in_progress(path: str, context: dict[str, Any]) -> str | None:
    """The run of another round still in progress, if any: the latest claim's run, when its
    round is not recorded yet and that run is still queued or running. A run waits for it
    rather than plan the same round and be refused. (It runs before this run's round is
    planned, so it reads the campaign file for the ledger's place.)"""
    from tuneloop.rounds.boxes import CampaignSnapshot
    from tuneloop.rounds.ledger import Ledger

    ledger = Ledger(campaign_root(_campaign(CampaignSnapshot.read(path)).campaign))
    claims = ledger.claims()
    if not claims:
        return None
    latest = claims[-1]
    if latest.run_id == str(context["run_id"]) or latest.round < ledger.next_round():
        return None
    return latest.run_id if _run_is_active(context)(latest.run_id) else None


def validate_task(item: dict[str, Any]) -> dict[str, Any]:
    """Check one dataset of the round: a `DatasetItem` in, a `DatasetCheck` out."""
    from tuneloop.rounds.boxes import DatasetItem
    from tuneloop.rounds.datasets import validate_dataset

    started = time.monotonic()
    dataset = DatasetItem.model_validate(item)
    if dataset.aws_conn_id:
        from tuneloop import aws

        aws.use_connection(dataset.aws_conn_id)
    with user_errors():
        check = validate_dataset(dataset)
    check.seconds = time.monotonic() - started
    log.info(
        "%s/%s %s: %d records, sha256 %s",
        check.stage,
        check.channel,
        check.uri,
        check.records,
        check.sha256[:12],
    )
    return check.model_dump(mode="json")


def materialized(items: Any) -> list[Any]:
    """A mapped task's results as a list, fetched in one slice (iterating Airflow's lazy
    sequence probes one index past the end, which logs a spurious "XCom not found" error)."""
    return list(items[:])


def proceed_task(planned: dict[str, Any], validated: Any) -> bool:
    """False (skip every job) for a dry run, once the plan is made and the data is valid."""
    from tuneloop.rounds.boxes import PlannedRound

    start = PlannedRound.model_validate(planned).start
    if start.dry_run:
        log.info(
            "Dry run: round %d planned and %d dataset(s) valid; no job submitted.",
            start.round,
            len(materialized(validated)),
        )
        return False
    return True


def baseline_spec_task(planned: dict[str, Any]) -> dict[str, Any]:
    """The base model's evaluation job (the same for every round of the campaign)."""
    from tuneloop.rounds.boxes import PlannedRound
    from tuneloop.rounds.specs import baseline_job

    box = PlannedRound.model_validate(planned)
    with user_errors():
        return baseline_job(_campaign(box.campaign), box.plan).model_dump(mode="json")


def checkpoint_task(
    planned: dict[str, Any],
    index: int,
    result: dict[str, Any] | None,
    previous: dict[str, Any] | None,
) -> dict[str, Any]:
    """What stage ``index`` left (``result``: its job's status, None when skipped) and the next
    job; ``previous`` is the stage before's checkpoint step (None for the first stage)."""
    from tuneloop.rounds.boxes import PlannedRound, StageCheckpoint, StageOutcome
    from tuneloop.rounds.checkpoint import stage_checkpoint

    box = PlannedRound.model_validate(planned)
    outcome = StageOutcome.model_validate(result) if result else None
    before = StageCheckpoint.model_validate(previous) if previous else None
    with user_errors():
        point = stage_checkpoint(_campaign(box.campaign), box, index, outcome, before)
    log.info("Stage %s checkpoint: %s", point.stage, point.uri)
    return point.model_dump(mode="json")


def probe_reward_task(planned: dict[str, Any]) -> list[dict[str, Any]]:
    """Try the reward function of every RFT stage this run trains on known good and bad
    answers, before the round's first job; a failing probe fails the round here with its
    reason and fix. Returns the reports (JSON) for the round record."""
    from airflow.sdk.exceptions import AirflowFailException

    from tuneloop.pipeline.round_artifacts import probe_round
    from tuneloop.rounds.boxes import PlannedRound

    box = PlannedRound.model_validate(planned)
    with user_errors():
        cf = _campaign(box.campaign)
        reports = probe_round(cf, box)
    for report in reports:
        log.info("%s", report.reason())
        for warning in report.warnings:
            log.warning("Reward probe of %s: %s", report.function, warning)
    failed = [report for report in reports if not report.ok]
    if failed:
        raise AirflowFailException(
            "The reward function failed its probe, so no RFT job was started: "
            + "; ".join(report.reason() for report in failed)
        )
    return [report.model_dump(mode="json") for report in reports]


def decide_task(outcome: dict[str, Any], context: dict[str, Any]) -> str:
    """Gate the round, write its ledger record once, mirror it to MLflow and the report; pick
    the branch. ``outcome`` is a `RoundOutcome` (the run id added here), completed with what
    the jobs left (`round_artifacts.complete_outcome`) before it is judged."""
    from tuneloop.pipeline.round_artifacts import complete_outcome
    from tuneloop.rounds.boxes import RoundOutcome
    from tuneloop.rounds.record import record_round

    box = RoundOutcome.model_validate(
        {
            **outcome,
            "datasets": materialized(outcome["datasets"]),
            "probes": outcome.get("probes") or [],
            "run_id": str(context.get("run_id", "")),
        }
    )
    with user_errors():
        cf = _campaign(box.planned.campaign)
        box = complete_outcome(cf, box)
        recorded = record_round(cf, box)
    mirror(cf, recorded.records, recorded.record)
    record = recorded.record
    decision = record.decision
    log.info("Round %d decision: %s. %s", record.round, decision.action.value, decision.reason)
    _push_decision(context["ti"], decision)
    return BRANCHES[decision.action.value]


def _push_decision(ti: Any, decision: Decision) -> None:
    """The decision, and for a next round its conf and run id (the trigger tasks template
    them)."""
    ti.xcom_push(key="decision", value=decision.model_dump(mode="json"))
    if decision.action.value not in ("continue", "rollback"):
        return
    ti.xcom_push(
        key="next_conf",
        value={
            "base_checkpoint": decision.next_base,
            "rollback": bool(decision.rollback),
            "stages": list(decision.next_stages or []),
            "reason": decision.reason,
        },
    )
    ti.xcom_push(
        key="next_run_id",
        value=f"round_{decision.next_round:04d}__after_{decision.round:04d}",
    )


def finish_task(planned: dict[str, Any]) -> dict[str, Any]:
    """The campaign stops: how many rounds, the champion, why."""
    from tuneloop.rounds.boxes import CampaignStop, PlannedRound
    from tuneloop.rounds.ledger import Ledger, champion_of

    with user_errors():
        cf = _campaign(PlannedRound.model_validate(planned).campaign)
    records = Ledger(campaign_root(cf.campaign)).records()
    champion = champion_of(records)
    latest = records[-1] if records else None
    stop = CampaignStop(
        rounds=latest.round if latest else 0,
        champion_round=champion.round if champion else None,
        reason=latest.decision.reason if latest else "",
    )
    log.info("Campaign %s stops here: %s", cf.campaign.name, stop.reason)
    return stop.model_dump(mode="json")


# --- the mirrors: MLflow and the round report ---------------------------------------------------


def mirror(cf: CampaignFile, records: list[RoundRecord], record: RoundRecord) -> dict[str, Any]:
    """The round report (of ``records``, every recorded round) and the MLflow runs for
    ``record``, after any earlier round MLflow missed (its tracking server was down when that
    round decided); failures are logged, never raised: the ledger already holds the round."""
    from tuneloop.rounds.record import tracking_uri

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
            from tuneloop.tracking.credentials import mlflow_credentials
            from tuneloop.tracking.mirror import Tracker

            with mlflow_credentials(cf.campaign.backend.mlflow_conn_id):
                tracker = Tracker(uri, cf.campaign.name)
                earlier = [r.model_dump(mode="json") for r in records if r.round != record.round]
                caught_up = tracker.catch_up(earlier)
                if caught_up:
                    log.info("MLflow lacked rounds %s; mirrored them from the ledger", caught_up)
                tracked = tracker.log_round(record.model_dump(mode="json"), report_files=files)
            out.update(tracked)
            log.info("MLflow: %s", tracked.get("round_url") or tracked)
            if tracked.get("open_with"):
                log.info("Open the MLflow UI with: %s", tracked["open_with"])
        except Exception as exc:  # the ledger holds the round; the next round mirrors again
            log.warning("MLflow tracking failed for round %d: %s", record.round, exc)
    return out


def write_round_report(cf: CampaignFile, records: list[RoundRecord]) -> list[str]:
    """The campaign's round report (Markdown and PNG) beside its ledger, with the lifecycle's
    "Storage" section; [] on S3 roots."""
    from tuneloop.tracking.lifecycle import write_campaign_report

    return write_campaign_report(cf, records)


# --- restore_base --------------------------------------------------------------------------------


def restore_base_plan(planned: dict[str, Any]) -> tuple[str, RestorePlan | None]:
    """What of the round's base is archived now (asked again at run time: the lifecycle may
    have archived it after planning), and the AWS connection the round's S3 calls use."""
    from tuneloop import aws
    from tuneloop.config.backend import aws_connection
    from tuneloop.rounds.boxes import PlannedRound

    box = PlannedRound.model_validate(planned)
    cf = _campaign(box.campaign)
    restore, _ = archived_base_of(cf, box.start)
    return aws_connection(cf.campaign) or aws.DEFAULT_CONN_ID, restore
