"""The round DAG: one DAG per campaign, one run per round.

    wait_for_earlier_rounds -> plan_round (claims the round in the ledger)
      -> validate_data (one mapped task per dataset) -> proceed (stops a dry run)
      -> train_<stage> -> checkpoint_<stage> -> ... -> evaluate  (+ evaluate_baseline, once)
      -> decide (branch) -> next_round | rollback | finish

Round numbers and starting checkpoints come from the ledger, so a schedule, an Asset update, a
UI trigger and a backfill all agree on what the next round is. The next round is a new run of
the same DAG (``max_active_runs=1``) triggered with conf naming its base checkpoint.

This module is imported when DAG files are parsed: only ``airflow.sdk`` and tuneloop's light
modules at module level; every task imports what it needs when it runs.
"""

from __future__ import annotations

import functools
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tuneloop.config.file import CampaignFile, load_campaign, recipes_root
from tuneloop.errors import TuneloopError

DEFAULT_EXECUTION_TIMEOUT = timedelta(days=3)
DEFAULT_POLL_SECONDS = 30.0
LOCAL_POLL_SECONDS = 2.0


CAMPAIGNS_ENV = "TUNELOOP_CAMPAIGNS_DIR"
BROKEN_DAG_PREFIX = "tuneloop_broken__"


def campaigns_folder() -> Path:
    """Where campaign files live: $TUNELOOP_CAMPAIGNS_DIR, else recipes/campaigns/."""
    configured = os.environ.get(CAMPAIGNS_ENV, "").strip()
    return Path(configured) if configured else recipes_root() / "campaigns"


def campaign_dag(reference: str | Path) -> Any:
    """The round DAG of one campaign file (a path, or a name in the campaigns folder).

    A broken campaign file raises TuneloopError with every problem, located in the file.
    """
    path = Path(reference)
    if not path.is_absolute() and not path.exists():
        path = campaigns_folder() / path
    return build_dag(load_campaign(path))


def campaign_dags(folder: str | Path | None = None) -> dict[str, Any]:
    """``{dag_id: DAG}``: one round DAG per campaign file (``*.yaml``, ``*.yml``) in ``folder``.

    A broken campaign file costs only its own DAG. Any exception while loading it, tuneloop's
    or not, becomes a stand-in (`BrokenCampaign`) that Airflow's dag-processor records as an
    import error of the campaign file itself, every problem as ``file:line: field: message``;
    the DAG file's own DAGs are untouched, so the good campaigns keep scheduling and their
    running rounds go on.
    """
    folder = Path(folder) if folder else campaigns_folder()
    dags: dict[str, Any] = {}
    sources: dict[str, Path] = {}
    paths = sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])
    for path in paths:
        try:
            dag = campaign_dag(path)
        except TuneloopError as exc:
            _add_broken(dags, path, str(exc))  # every line names the file, line and field
            continue
        except Exception as exc:  # a broken file must not take the other campaigns with it
            _add_broken(dags, path, f"{path}: cannot be loaded: {type(exc).__name__}: {exc}")
            continue
        if dag.dag_id in dags:
            _add_broken(
                dags,
                path,
                f"{path}: name: campaign name {dag.dag_id.removeprefix('tuneloop_')!r} is also "
                f"used by {sources[dag.dag_id]}; fix: give each campaign file its own name",
            )
            continue
        dags[dag.dag_id] = dag
        sources[dag.dag_id] = path
    return dags


def _add_broken(dags: dict[str, Any], path: Path, message: str) -> None:
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", path.name)
    dag_id = f"{BROKEN_DAG_PREFIX}{stem}"
    dags[dag_id] = _broken_campaign_class()(
        dag_id=dag_id,
        schedule=None,
        description=message[:200],
        campaign_path=str(path),
        problems=message,
    )


@functools.cache
def _broken_campaign_class() -> type:
    from airflow.exceptions import SerializationError
    from airflow.sdk import DAG

    class BrokenCampaign(DAG):
        """Stands in for a campaign file that could not be loaded.

        Airflow's dag-processor files an import error under the ``relative_fileloc`` of a DAG
        it cannot serialize, and marks stale only the DAGs of that file. So this DAG names the
        campaign file as its file and refuses to be serialized with the problems: the error is
        the campaign file's, and the DAG file's other DAGs stay. It is never scheduled.
        """

        def __init__(self, *args: Any, campaign_path: str, problems: str, **kwargs: Any) -> None:
            self._campaign_path = campaign_path
            self.problems = problems
            super().__init__(*args, **kwargs)

        @property
        def relative_fileloc(self) -> str:  # type: ignore[override]
            return self._campaign_path

        @relative_fileloc.setter
        def relative_fileloc(self, value: str | None) -> None:
            pass  # the importer sets the DAG file's path; this DAG is about the campaign file

        @property
        def edge_info(self) -> Any:  # type: ignore[override]
            # Read only by the serializer, after validate() and bagging have passed.
            raise SerializationError(
                f"campaign file {self._campaign_path} could not be loaded; its DAG is missing "
                f"until it is fixed:\n{self.problems}"
            )

        @edge_info.setter
        def edge_info(self, value: Any) -> None:
            pass

    return BrokenCampaign


def _params(cf: CampaignFile) -> dict[str, Any]:
    """The trigger form. Every Param is optional (nullable or with a default), so the form opens
    with no error and "continue the campaign" is one click; `round_steps.RoundConf` is the same
    list as a model, and `plan_round` refuses conf it does not accept."""
    from airflow.sdk import Param

    stage_names = [s.name for s in cf.campaign.stages]
    return {
        "base_checkpoint": Param(
            None,
            type=["null", "string"],
            title="Base checkpoint",
            description="Start this round from this job output folder (the one holding "
            "manifest.json) instead of what the ledger says. Empty: continue the campaign.",
        ),
        "start_from_round": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            title="Restart from round (manual rollback)",
            description="Start from the checkpoint of round k, with the campaign's rollback "
            "adjustments (e.g. half the learning rate). Empty: continue the campaign.",
        ),
        "rollback": Param(
            None,
            type=["null", "boolean"],
            title="Apply rollback adjustments",
            description="Plan this round as the round after a rollback (set by the rollback "
            "branch). Empty: as the ledger's latest decision says.",
        ),
        "stages": Param(
            None,
            type=["null", "array"],
            items={"type": "string", "enum": stage_names},
            title="Stages to run",
            description=f"A subset of {', '.join(stage_names)}. Empty: every stage. "
            "Skipped stages pass their starting checkpoint through.",
        ),
        "data_overrides": Param(
            None,
            type=["null", "object"],
            title="Data overrides",
            description="Per stage, datasets replacing the campaign's for this round, e.g. "
            '{"sft": {"train": "s3://bucket/new/train.jsonl"}}. Empty: the campaign\'s data.',
        ),
        "dry_run": Param(
            False,
            type="boolean",
            title="Dry run",
            description="Plan, render and validate the round, then stop before any job is "
            "submitted.",
        ),
        "reason": Param(
            None,
            type=["null", "string"],
            title="Why this round runs",
            description="A note recorded in the ledger (the previous decision fills it).",
        ),
        "after_finish": Param(
            False,
            type="boolean",
            title="Run after the campaign finished",
            description="A campaign whose target is met, or that reached max_rounds or "
            "stopped, refuses further rounds; set this to run one anyway.",
        ),
    }


def _schedule(cf: CampaignFile) -> Any:
    campaign = cf.campaign
    if campaign.trigger_on_data:
        from airflow.sdk import Asset

        assets = [Asset(uri) for uri in campaign.trigger_on_data]
        return assets if not campaign.schedule else _asset_or_time(campaign.schedule, assets)
    return campaign.schedule


def _asset_or_time(schedule: str, assets: list[Any]) -> Any:
    from airflow.timetables.assets import AssetOrTimeSchedule
    from airflow.timetables.trigger import CronTriggerTimetable

    return AssetOrTimeSchedule(
        timetable=CronTriggerTimetable(schedule, timezone="UTC"), assets=assets
    )


def build_dag(cf: CampaignFile) -> Any:
    from airflow.sdk import DAG

    campaign = cf.campaign
    start = campaign.start_date or datetime(2026, 1, 1).date()
    with DAG(
        dag_id=campaign.dag_id,
        description=(campaign.description or f"tuneloop campaign {campaign.name}")[:200],
        schedule=_schedule(cf),
        start_date=datetime(start.year, start.month, start.day, tzinfo=UTC),
        catchup=False,
        max_active_runs=1,
        params=_params(cf),
        tags=["tuneloop", f"campaign:{campaign.name}", *campaign.tags],
        doc_md=_doc(cf),
        render_template_as_native_obj=True,
        default_args={"retries": 2, "retry_delay": timedelta(minutes=1)},
    ) as dag:
        _wire(cf)
    return dag


CHAINED_RUN_TYPES = frozenset({"manual", "operator_triggered"})
"""Runs whose decision starts the next round at once. A scheduled, Asset-triggered or backfill
round leaves the next round to the next interval (a backfill runs one round per interval, in
order); the ledger still carries the decision (a rollback's base and adjustments) to it."""


@functools.cache
def _next_round_operator() -> type:
    from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
    from airflow.sdk.exceptions import AirflowSkipException

    class NextRoundOperator(TriggerDagRunOperator):
        """Triggers the next round of a manually started campaign; skips for runs a schedule,
        an Asset or a backfill started."""

        def execute(self, context: Any) -> Any:
            run_type = str(getattr(context["dag_run"], "run_type", "manual")).lower()
            run_type = run_type.rsplit(".", 1)[-1]
            if run_type not in CHAINED_RUN_TYPES:
                raise AirflowSkipException(
                    f"this round is a {run_type} run: the next interval starts the next round, "
                    "from what the ledger recorded"
                )
            return super().execute(context)

    return NextRoundOperator


@functools.cache
def _earlier_rounds_sensor() -> type:
    from airflow.sdk import BaseSensorOperator

    class WaitForEarlierRounds(BaseSensorOperator):
        """Waits, without holding a worker slot, until no earlier round is in progress: the run
        before this one (by logical date) is not queued or running, and no other run holds the
        claim on a round it has not recorded yet.

        Airflow runs a backfill's intervals up to its own ``max_active_runs`` at a time (10 by
        default), not the DAG's 1, and does not count them against a scheduled or manual run
        in progress; rounds must run one after another, each from the ledger its predecessor
        wrote. Runs whose predecessors ended pass at once."""

        def __init__(self, *, campaign_path: str, **kwargs: Any) -> None:
            kwargs.setdefault("mode", "reschedule")
            kwargs.setdefault("timeout", DEFAULT_EXECUTION_TIMEOUT.total_seconds())
            super().__init__(**kwargs)
            self.campaign_path = campaign_path

        def poke(self, context: Any) -> bool:
            from tuneloop.pipeline.tasks import ACTIVE_RUN_STATES, round_in_progress, run_state

            previous = context["ti"].get_previous_dagrun()
            if previous is not None and run_state(previous.state) in ACTIVE_RUN_STATES:
                self.log.info(
                    "Waiting for run %s (%s) to finish: rounds run one at a time, in order",
                    previous.run_id,
                    run_state(previous.state),
                )
                return False
            holder = round_in_progress(self.campaign_path, context)
            if holder is not None:
                self.log.info("Waiting for run %s to record the round it claimed", holder)
                return False
            return True

    return WaitForEarlierRounds


def _doc(cf: CampaignFile) -> str:
    campaign = cf.campaign
    stages = " -> ".join(f"{s.name} ({s.method.value})" for s in campaign.stages)
    return (
        f"**{campaign.name}**: {campaign.description}\n\n"
        f"- campaign file: `{cf.path}`\n- model: `{campaign.model_type}` "
        f"({campaign.technique.value}) on `{campaign.backend.type}`\n- stages: {stages}\n"
        f"- gate: `{campaign.gate.primary_metric}`, at most {campaign.gate.max_rounds} rounds\n"
    )


def _wire(cf: CampaignFile) -> None:
    from airflow.sdk import task

    from tuneloop.config.campaign import job_backend_config
    from tuneloop.pipeline.operators import EvaluationJobOperator, TrainingJobOperator

    campaign = cf.campaign
    path = str(cf.path.resolve())
    local = campaign.backend.type == "local"
    poll = LOCAL_POLL_SECONDS if local else DEFAULT_POLL_SECONDS
    job_args = {
        "backend": job_backend_config(campaign),
        "poll_interval": poll,
        "execution_timeout": DEFAULT_EXECUTION_TIMEOUT,
    }

    @task(task_id="plan_round", retries=0, multiple_outputs=False)
    def plan_round(**context: Any) -> list[dict[str, Any]]:
        """Returns the datasets to validate (what validate_data maps over); the plan itself
        goes to XCom keys ``round`` and ``first_job``."""
        from tuneloop.pipeline.tasks import plan_round_task

        planned = plan_round_task(path, context)
        context["ti"].xcom_push(key="round", value=planned)
        context["ti"].xcom_push(key="first_job", value=planned["first_job"])
        return planned["datasets"]

    @task(
        task_id="validate_data", retries=0, map_index_template="{{ item.stage }}/{{ item.channel }}"
    )
    def validate_data(item: dict[str, Any], **context: Any) -> dict[str, Any]:
        from tuneloop.pipeline.tasks import validate_task

        return validate_task(path, item)

    @task.short_circuit(task_id="proceed", ignore_downstream_trigger_rules=True)
    def proceed(planned: dict[str, Any], validated: list[dict[str, Any]]) -> bool:
        from tuneloop.pipeline.tasks import proceed_task

        return proceed_task(planned, validated)

    datasets = plan_round()
    wait = _earlier_rounds_sensor()(
        task_id="wait_for_earlier_rounds", poke_interval=poll, campaign_path=path
    )
    wait >> datasets
    planned = datasets["round"]
    validated = validate_data.expand(item=datasets)
    gate = proceed(planned, validated)

    @task(task_id="evaluate_baseline_job", retries=0)
    def baseline_spec(planned: dict[str, Any]) -> dict[str, Any]:
        from tuneloop.pipeline.tasks import baseline_spec_task

        return baseline_spec_task(path, planned)

    baseline_job = baseline_spec(planned)
    gate >> baseline_job
    baseline = EvaluationJobOperator(task_id="evaluate_baseline", job=baseline_job, **job_args)

    previous: Any = planned
    stage_outputs: dict[str, str] = {}
    checkpoints: dict[str, Any] = {}
    next_job: Any = datasets["first_job"]
    last: Any = gate
    for index, stage in enumerate(campaign.stages):
        train = TrainingJobOperator(task_id=f"train_{stage.name}", job=next_job, **job_args)
        last >> train

        # A stage left out of this run is skipped; its checkpoint task still runs (none_failed)
        # and passes the previous checkpoint through. Job results are pulled, not passed as
        # arguments: an argument from a skipped task would skip the consumer too.
        @task(task_id=f"checkpoint_{stage.name}", trigger_rule="none_failed", retries=1)
        def checkpoint(
            planned: dict[str, Any],
            previous: dict[str, Any],
            index: int = index,
            train_id: str = train.task_id,
            **context: Any,
        ) -> dict[str, Any]:
            from tuneloop.pipeline.tasks import checkpoint_task

            result = context["ti"].xcom_pull(task_ids=train_id)
            return checkpoint_task(path, planned, index, result, previous)

        point = checkpoint(planned, previous)
        train >> point
        stage_outputs[stage.name] = train.task_id
        checkpoints[stage.name] = point
        next_job = point["next_job"]
        previous = point
        last = point

    evaluate = EvaluationJobOperator(task_id="evaluate", job=next_job, **job_args)
    last >> evaluate

    @task.branch(task_id="decide", retries=1, trigger_rule="none_failed")
    def decide(
        planned: dict[str, Any],
        validated: list[dict[str, Any]],
        train_ids: dict[str, str],
        points: dict[str, Any],
        evaluation: dict[str, Any],
        baseline: dict[str, Any],
        **context: Any,
    ) -> str:
        from tuneloop.pipeline.tasks import decide_task

        ti = context["ti"]
        results = {stage: ti.xcom_pull(task_ids=task_id) for stage, task_id in train_ids.items()}
        return decide_task(path, planned, validated, results, points, evaluation, baseline, context)

    branch = decide(
        planned, validated, stage_outputs, checkpoints, evaluate.output, baseline.output
    )

    next_conf = "ti.xcom_pull(task_ids='decide', key='next_conf')"
    conf = {
        key: f"{{{{ {next_conf}['{key}'] }}}}"
        for key in ("base_checkpoint", "rollback", "stages", "reason")
    }
    run_id = "{{ ti.xcom_pull(task_ids='decide', key='next_run_id') }}"
    for task_id in ("next_round", "rollback"):
        branch >> _next_round_operator()(
            task_id=task_id,
            trigger_dag_id=campaign.dag_id,
            trigger_run_id=run_id,
            conf=conf,
            skip_when_already_exists=True,
            retries=1,
        )

    @task(task_id="finish")
    def finish(**context: Any) -> dict[str, Any]:
        from tuneloop.pipeline.tasks import finish_task

        return finish_task(path, context)

    branch >> finish()
