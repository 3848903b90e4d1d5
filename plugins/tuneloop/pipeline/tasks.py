"""The round DAG's task bodies: Airflow context in, ``round_steps`` called, XCom out.

Imported only inside running tasks (never at parse time). A user mistake (a broken campaign, an
invalid dataset, a missing checkpoint) fails the task at once with the problem's own words and
no retry; everything else is left to Airflow's retries.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from tuneloop.errors import TuneloopError
from tuneloop.rounds import steps as round_steps
from tuneloop.rounds.plan import RoundPlan, campaign_root

log = logging.getLogger(__name__)

BRANCHES = {"continue": "next_round", "rollback": "rollback", "finish": "finish", "stop": "finish"}


@contextmanager
def user_errors() -> Any:
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

    logical = context.get("logical_date") or context.get("dag_run").run_after  # type: ignore[union-attr]
    values = sample_template_context(logical.date())
    for key in ("ds", "ds_nodash", "ts", "ts_nodash", "data_interval_start", "data_interval_end"):
        if context.get(key) is not None:
            values[key] = context[key]
    values["run_id"] = context.get("run_id", values["run_id"])
    values["params"] = dict(context.get("params") or {})
    return values


def plan_round_task(path: str, context: dict[str, Any]) -> dict[str, Any]:
    started = time.monotonic()
    dag_run = context["dag_run"]
    with user_errors():
        conf = round_steps.parse_conf(getattr(dag_run, "conf", None))
        cf = round_steps.load(path)
        start = round_steps.start_round(cf, conf)
        plan = round_steps.plan(cf, start, _template_context(context))
        datasets = round_steps.datasets_to_validate(cf, plan)
        first_job = round_steps.stage_job(plan, 0, plan.base_model, start.stages)
        if not start.dry_run:
            _claim(cf, start.round, context)
    log.info(
        "Round %d of %s starts from %s%s%s",
        start.round,
        start.campaign,
        start.base_output_uri or plan.base_model,
        " with the rollback adjustments" if start.rollback else "",
        f" ({start.reason})" if start.reason else "",
    )
    return {
        "start": start.model_dump(mode="json"),
        "plan": plan.model_dump(mode="json"),
        "datasets": datasets,
        "first_job": first_job,
        "started_at": datetime.now(UTC).isoformat(),
        "seconds": time.monotonic() - started,
    }


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


def _claim(cf: round_steps.CampaignFile, number: int, context: dict[str, Any]) -> None:
    """Claim the round in the ledger for this run before anything is spent on it."""
    from tuneloop.rounds.ledger import Ledger, RoundClaim

    claim = Ledger(campaign_root(cf.campaign)).claim(
        RoundClaim(
            campaign=cf.campaign.name,
            round=number,
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
    rather than plan the same round and be refused."""
    from tuneloop.rounds.ledger import Ledger

    cf = round_steps.load(path)
    ledger = Ledger(campaign_root(cf.campaign))
    claims = ledger.claims()
    if not claims:
        return None
    latest = claims[-1]
    if latest.run_id == str(context["run_id"]) or latest.round < ledger.next_round():
        return None
    return latest.run_id if _run_is_active(context)(latest.run_id) else None


def validate_task(path: str, item: dict[str, Any]) -> dict[str, Any]:
    started = time.monotonic()
    with user_errors():
        cf = round_steps.load(path)
        record = round_steps.validate(cf.campaign, item)
    record["seconds"] = time.monotonic() - started
    log.info(
        "%s/%s %s: %d records, sha256 %s",
        item["stage"],
        item["channel"],
        item["uri"],
        record["records"],
        record["sha256"][:12],
    )
    return record


def materialized(items: Any) -> list[Any]:
    """A mapped task's results as a list, fetched in one slice (iterating Airflow's lazy
    sequence probes one index past the end, which logs a spurious "XCom not found" error)."""
    return list(items[:])


def proceed_task(planned: dict[str, Any], validated: Any) -> bool:
    validated = materialized(validated)
    if planned["start"]["dry_run"]:
        log.info(
            "Dry run: round %d planned and %d dataset(s) valid; no job submitted.",
            planned["start"]["round"],
            len(validated),
        )
        return False
    return True


def baseline_spec_task(path: str, planned: dict[str, Any]) -> dict[str, Any]:
    with user_errors():
        cf = round_steps.load(path)
        return round_steps.baseline_job(cf, RoundPlan.model_validate(planned["plan"]))


def checkpoint_task(
    path: str,
    planned: dict[str, Any],
    index: int,
    result: dict[str, Any] | None,
    previous: dict[str, Any],
) -> dict[str, Any]:
    with user_errors():
        cf = round_steps.load(path)
        plan = RoundPlan.model_validate(planned["plan"])
        base = previous["checkpoint"]["uri"] if "checkpoint" in previous else plan.base_model
        point = round_steps.checkpoint(cf, plan, index, result, base)
        if index + 1 < len(plan.stages):
            next_job = round_steps.stage_job(
                plan, index + 1, point["uri"], planned["start"]["stages"]
            )
        else:
            next_job = round_steps.evaluation_job(plan, point["uri"])
    log.info("Stage %s checkpoint: %s", plan.stages[index].name, point["uri"])
    return {"checkpoint": point, "next_job": next_job}


def decide_task(
    path: str,
    planned: dict[str, Any],
    validated: list[dict[str, Any]],
    results: dict[str, Any],
    points: dict[str, Any],
    evaluation: dict[str, Any],
    baseline: dict[str, Any],
    context: dict[str, Any],
) -> str:
    """Gate the round, write its ledger record once, mirror it to MLflow; pick the branch."""
    from tuneloop.rounds.record import build_and_record

    with user_errors():
        cf = round_steps.load(path)
        record = build_and_record(
            cf,
            planned=planned,
            validated=materialized(validated),
            results=results,
            points={k: v["checkpoint"] if v else None for k, v in points.items()},
            evaluation=evaluation,
            baseline=baseline,
            run_id=str(context.get("run_id", "")),
        )
    decision = record.decision
    log.info("Round %d decision: %s. %s", record.round, decision.action.value, decision.reason)
    ti = context["ti"]
    ti.xcom_push(key="decision", value=decision.model_dump(mode="json"))
    if decision.action.value in ("continue", "rollback"):
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
            value=f"round_{decision.next_round:04d}__after_{record.round:04d}",
        )
    return BRANCHES[decision.action.value]


def finish_task(path: str, context: dict[str, Any]) -> dict[str, Any]:
    from tuneloop.rounds.ledger import Ledger, champion_of

    cf = round_steps.load(path)
    records = Ledger(campaign_root(cf.campaign)).records()
    champion = champion_of(records)
    latest = records[-1] if records else None
    summary = {
        "rounds": latest.round if latest else 0,
        "champion_round": champion.round if champion else None,
        "reason": latest.decision.reason if latest else "",
    }
    log.info("Campaign %s stops here: %s", cf.campaign.name, summary["reason"])
    return summary
