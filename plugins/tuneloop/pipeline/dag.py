"""The round DAG: one DAG per campaign, one run per round.

    wait_for_earlier_rounds -> plan_round (claims the round in the ledger)
      -> validate_data (one mapped task per dataset) -> proceed (stops a dry run)
      -> restore_base (brings back an archived base; at once when there is none)
      -> probe_reward (campaigns with RFT stages: each reward function tried on known good
         and bad answers before any job; a failing probe fails the round here)
      -> train_<stage> -> checkpoint_<stage> -> ... -> evaluate  (+ evaluate_baseline, once)
         (a job the monitors stop early ends the stages there: no later job, no evaluation)
      -> decide (branch; updates the campaign's rounds Asset) -> next_round | rollback | finish

Round numbers and starting checkpoints come from the ledger, so a schedule, an Asset update, a
UI trigger and a backfill all agree on what the next round is. The next round is a new run of
the same DAG (``max_active_runs=1``) triggered with conf naming its base checkpoint.

This module is imported when DAG files are parsed: only ``airflow.sdk`` and tuneloop's light
modules at module level; every task imports what it needs when it runs.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneloop.config.backend import job_backend_config
from tuneloop.config.file import CampaignFile, campaigns_folder, load_campaign
from tuneloop.errors import TuneloopError

if TYPE_CHECKING:
    from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
    from airflow.sdk import DAG, Asset, AssetOrTimeSchedule, BaseSensorOperator, XComArg
    from airflow.sdk.definitions._internal.mixins import DependencyMixin

    from tuneloop.config.campaign import Campaign
    from tuneloop.pipeline.operators import JobOperator

DEFAULT_EXECUTION_TIMEOUT = timedelta(days=3)
DEFAULT_POLL_SECONDS = 30.0
LOCAL_POLL_SECONDS = 2.0


BROKEN_DAG_PREFIX = "tuneloop_broken__"
ASSET_SCHEME = "x-tuneloop"
"""Airflow leaves ``x-`` schemes as they are: no provider is asked to normalise them (an
unknown scheme would load every provider's Asset handlers, the Amazon one with boto3, while the
DAG file is parsed) and no warning is given."""


def lifecycle_asset_uri(campaign: Campaign) -> str:
    """The Asset ``decide`` updates once a round is recorded, ``x-tuneloop://<campaign>/rounds``:
    it starts the campaign's lifecycle DAG (`pipeline.lifecycle_dag`)."""
    return f"{ASSET_SCHEME}://{campaign.name}/rounds"


def campaign_dag(reference: str | Path) -> DAG:
    """The round DAG of one campaign file (a path, or a name in the campaigns folder).

    A broken campaign file raises TuneloopError with every problem, located in the file.
    """
    path = Path(reference)
    if not path.is_absolute() and not path.exists():
        path = campaigns_folder() / path
    return build_dag(load_campaign(path))


def campaign_dags(folder: str | Path | None = None) -> dict[str, DAG]:
    """``{dag_id: DAG}``: one round DAG per campaign file (``*.yaml``, ``*.yml``) in ``folder``.

    A broken campaign file costs only its own DAG. Any exception while loading it, tuneloop's
    or not, becomes a stand-in (`BrokenCampaign`) that Airflow's dag-processor records as an
    import error of the campaign file itself, every problem as ``file:line: field: message``;
    the DAG file's own DAGs are untouched, so the good campaigns keep scheduling and their
    running rounds go on.
    """
    return dags_per_campaign(campaign_dag, folder, report_broken=True)


def campaign_files(folder: str | Path | None = None) -> list[Path]:
    """The campaign files of ``folder`` (the campaigns folder by default), in name order."""
    folder = Path(folder) if folder else campaigns_folder()
    return sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])


def dags_per_campaign(
    build: Callable[[Path], DAG], folder: str | Path | None = None, *, report_broken: bool
) -> dict[str, DAG]:
    """``{dag_id: DAG}``: ``build(path)`` for each campaign file of ``folder``.

    A file that cannot be loaded, or that reuses a campaign name an earlier file has, gets no
    DAG; with ``report_broken`` it gets a `BrokenCampaign` stand-in that files the problems as
    the campaign file's import error. Only the round DAG file reports them: a second report of
    the same file from another DAG file would only repeat it."""
    dags: dict[str, DAG] = {}
    sources: dict[str, Path] = {}
    for path in campaign_files(folder):
        try:
            dag = build(path)
        except TuneloopError as exc:
            if report_broken:
                _add_broken(dags, path, str(exc))  # every line names the file, line and field
            continue
        except Exception as exc:  # a broken file must not take the other campaigns with it
            if report_broken:
                _add_broken(dags, path, f"{path}: cannot be loaded: {type(exc).__name__}: {exc}")
            continue
        if dag.dag_id in dags:
            if report_broken:
                _add_broken(
                    dags,
                    path,
                    f"{path}: name: campaign name "
                    f"{dag.dag_id.removeprefix('tuneloop_')!r} is also used by "
                    f"{sources[dag.dag_id]}; fix: give each campaign file its own name",
                )
            continue
        dags[dag.dag_id] = dag
        sources[dag.dag_id] = path
    return dags


def _add_broken(dags: dict[str, DAG], path: Path, message: str) -> None:
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
def _broken_campaign_class() -> Callable[..., DAG]:
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
        def relative_fileloc(self) -> str:
            return self._campaign_path

        @relative_fileloc.setter
        def relative_fileloc(self, value: str | None) -> None:
            pass  # the importer sets the DAG file's path; this DAG is about the campaign file

        @property
        def edge_info(self) -> Any:
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
    with no error and "continue the campaign" is one click; `rounds.boxes.RoundConf` is the same
    list as a model, and `plan_round` refuses conf it does not accept."""
    from airflow.sdk import Param

    from tuneloop.pipeline.params import shareable

    stage_names = [s.name for s in cf.campaign.stages]
    return shareable(
        {
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
    )


def _schedule(cf: CampaignFile) -> str | Collection[Asset] | AssetOrTimeSchedule | None:
    campaign = cf.campaign
    if campaign.trigger_on_data:
        from airflow.sdk import Asset

        assets = [Asset(uri) for uri in campaign.trigger_on_data]
        return assets if not campaign.schedule else _asset_or_time(campaign.schedule, assets)
    return campaign.schedule


def _asset_or_time(schedule: str, assets: list[Asset]) -> AssetOrTimeSchedule:
    from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable

    return AssetOrTimeSchedule(
        timetable=CronTriggerTimetable(schedule, timezone="UTC"), assets=assets
    )


def build_dag(cf: CampaignFile) -> DAG:
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
def _next_round_operator() -> type[TriggerDagRunOperator]:
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
def _earlier_rounds_sensor() -> type[BaseSensorOperator]:
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


XComValue = Any
"""A task argument that arrives through XCom: an ``XComArg`` when the DAG is wired, its JSON
when the task runs; the task body validates it into a box (`tuneloop.rounds.boxes`)."""


def _pushed(result: XComArg, key: str) -> XComArg:
    """The XCom ``key`` of the task whose result ``result`` is."""
    from airflow.sdk import XComArg

    ((operator, _),) = result.iter_references()
    return XComArg(operator, key=key)


@dataclass(frozen=True)
class _Wiring:
    """What the tasks of one campaign's round DAG share."""

    cf: CampaignFile
    path: str
    """The campaign file: plan_round reads it (once per round)."""
    backend: dict[str, Any]
    """The job backend's settings (`config.backend.job_backend_config`)."""
    poll: float

    @classmethod
    def of(cls, cf: CampaignFile) -> _Wiring:
        local = cf.campaign.backend.type == "local"
        poll = LOCAL_POLL_SECONDS if local else DEFAULT_POLL_SECONDS
        return cls(cf, str(cf.path.resolve()), job_backend_config(cf.campaign), poll)

    def job_operator(self, kind: type[JobOperator], task_id: str, job: XComArg) -> JobOperator:
        return kind(
            task_id=task_id,
            job=job,
            backend=self.backend,
            poll_interval=self.poll,
            execution_timeout=DEFAULT_EXECUTION_TIMEOUT,
        )


@dataclass(frozen=True)
class _Planned:
    """The planning end of the DAG: the plan, its first job, the dataset checks, the gate that
    stops a dry run."""

    planned: XComArg
    first_job: XComArg
    validated: XComArg
    proceed: XComArg
    restore: XComArg
    """What planning found archived of the round's base (a `RestorePlan`, or None)."""


def _wire(cf: CampaignFile) -> None:
    from tuneloop.pipeline.operators import EvaluationJobOperator

    wiring = _Wiring.of(cf)
    planning = _wire_planning(wiring)
    baseline_job = _baseline_spec(planning.planned)
    planning.proceed >> baseline_job
    baseline = wiring.job_operator(EvaluationJobOperator, "evaluate_baseline", baseline_job)
    checkpoints, train_ids, evaluate = _wire_stages(wiring, planning)
    outcome = {
        "planned": planning.planned,
        "datasets": planning.validated,
        "checkpoints": checkpoints,
        "baseline": baseline.output,
    }
    branch = _decide(cf, outcome, train_ids)
    evaluate >> branch  # its result is pulled (see _decide)
    _wire_after_decision(wiring, planning.planned, branch)


def _wire_planning(wiring: _Wiring) -> _Planned:
    """wait_for_earlier_rounds -> plan_round -> validate_data (mapped) -> proceed."""
    from airflow.sdk import task

    path = wiring.path

    @task(task_id="plan_round", retries=0, multiple_outputs=False)
    def plan_round(**context: Any) -> list[dict[str, Any]]:
        """Returns the datasets to validate (what validate_data maps over); the plan itself
        goes to XCom keys ``round`` and ``first_job``."""
        from tuneloop.pipeline.tasks import plan_round_task

        planned = plan_round_task(path, context)
        context["ti"].xcom_push(key="round", value=planned)
        # {} rather than None (the run leaves the first stage out): Airflow reads an XCom of
        # None as missing, and the first train task skips on an empty job.
        context["ti"].xcom_push(key="first_job", value=planned["first_job"] or {})
        return list(planned["datasets"])

    @task(
        task_id="validate_data", retries=0, map_index_template="{{ item.stage }}/{{ item.channel }}"
    )
    def validate_data(item: dict[str, Any]) -> dict[str, Any]:
        from tuneloop.pipeline.tasks import validate_task

        return validate_task(item)

    @task.short_circuit(task_id="proceed", ignore_downstream_trigger_rules=True)
    def proceed(planned: XComValue, validated: XComValue) -> bool:
        from tuneloop.pipeline.tasks import proceed_task

        return proceed_task(planned, validated)

    datasets = plan_round()
    wait = _earlier_rounds_sensor()(
        task_id="wait_for_earlier_rounds", poke_interval=wiring.poll, campaign_path=path
    )
    wait >> datasets
    planned = _pushed(datasets, "round")
    validated = validate_data.expand(item=datasets)
    return _Planned(
        planned=planned,
        first_job=_pushed(datasets, "first_job"),
        restore=_pushed(datasets, "restore"),
        validated=validated,
        proceed=proceed(planned, validated),
    )


def _baseline_spec(planned: XComArg) -> XComArg:
    from airflow.sdk import task

    @task(task_id="evaluate_baseline_job", retries=0)
    def baseline_spec(planned: XComValue) -> dict[str, Any]:
        from tuneloop.pipeline.tasks import baseline_spec_task

        return baseline_spec_task(planned)

    return baseline_spec(planned)


def _wire_stages(
    wiring: _Wiring, planning: _Planned
) -> tuple[dict[str, XComArg], dict[str, str], JobOperator]:
    """restore_base, then train_<stage> -> checkpoint_<stage> per stage, then evaluate: the
    checkpoint steps by stage, the train task ids by stage, and the evaluate task."""
    from tuneloop.pipeline.operators import EvaluationJobOperator, TrainingJobOperator
    from tuneloop.pipeline.restore import RestoreBaseOperator

    checkpoints: dict[str, XComArg] = {}
    train_ids: dict[str, str] = {}
    previous: XComArg | None = None
    next_job = planning.first_job
    restore = RestoreBaseOperator(
        task_id="restore_base",
        planned=planning.planned,
        restore=planning.restore,
        execution_timeout=DEFAULT_EXECUTION_TIMEOUT,
        retries=1,
    )
    planning.proceed >> restore
    last: DependencyMixin = restore
    if _probes_rewards(wiring.cf):
        probe = _probe_reward(planning.planned)
        restore >> probe
        last = probe
    for index, stage in enumerate(wiring.cf.campaign.stages):
        train = wiring.job_operator(TrainingJobOperator, f"train_{stage.name}", next_job)
        last >> train
        point = _checkpoint(stage.name, index, train.task_id, planning.planned, previous)
        train >> point
        train_ids[stage.name] = train.task_id
        checkpoints[stage.name] = point
        next_job = _pushed(point, "next_job")
        previous = last = point
    evaluate = wiring.job_operator(EvaluationJobOperator, "evaluate", next_job)
    last >> evaluate
    return checkpoints, train_ids, evaluate


def _probes_rewards(cf: CampaignFile) -> bool:
    """Whether the round DAG has a probe_reward task: the campaign has an RFT stage."""
    return any(stage.method.value == "rft" for stage in cf.campaign.stages)


def _probe_reward(planned: XComArg) -> XComArg:
    """probe_reward: every reward function of the RFT stages this run trains, tried before the
    first job of the round (`rounds.reward_probe`); the reports go to the round record."""
    from airflow.sdk import task

    @task(task_id="probe_reward", retries=1)
    def probe_reward(planned: XComValue) -> list[dict[str, Any]]:
        from tuneloop.pipeline.tasks import probe_reward_task

        return probe_reward_task(planned)

    return probe_reward(planned)


def _checkpoint(
    stage: str, index: int, train_id: str, planned: XComArg, previous: XComArg | None
) -> XComArg:
    """checkpoint_<stage>. A stage left out of this run is skipped; its checkpoint task still
    runs (none_failed) and passes the previous checkpoint through. The job's result is pulled,
    not passed as an argument: an argument from a skipped task would skip this task too."""
    from airflow.sdk import task

    @task(
        task_id=f"checkpoint_{stage}",
        trigger_rule="none_failed",
        retries=1,
        multiple_outputs=True,
    )
    def checkpoint(planned: XComValue, previous: XComValue, **context: Any) -> dict[str, Any]:
        from tuneloop.pipeline.tasks import checkpoint_task

        result = context["ti"].xcom_pull(task_ids=train_id)
        return checkpoint_task(planned, index, result, previous)

    return checkpoint(planned, previous)


def _decide(cf: CampaignFile, outcome: dict[str, Any], train_ids: dict[str, str]) -> XComArg:
    """decide: gates and records the round. Its success updates the campaign's rounds Asset,
    which starts the campaign's lifecycle DAG (`lifecycle_dag`). The training and evaluation
    results are pulled, not passed: a job the monitors stopped skips what follows it, and a
    skipped task's argument would skip decide too."""
    from airflow.sdk import Asset, task

    has_probe = _probes_rewards(cf)

    @task.branch(
        task_id="decide",
        retries=1,
        trigger_rule="none_failed",
        outlets=[Asset(lifecycle_asset_uri(cf.campaign))],
    )
    def decide(outcome: dict[str, XComValue], train_ids: dict[str, str], **context: Any) -> str:
        """``outcome`` is the round's `RoundOutcome` but for the training jobs' results, which
        are pulled (a skipped stage's argument would skip this task)."""
        from tuneloop.pipeline.tasks import decide_task

        ti = context["ti"]
        stages = {stage: ti.xcom_pull(task_ids=task_id) for stage, task_id in train_ids.items()}
        pulled = {
            "stages": stages,
            "evaluation": ti.xcom_pull(task_ids="evaluate"),
            "probes": ti.xcom_pull(task_ids="probe_reward") if has_probe else [],
        }
        return decide_task({**outcome, **pulled}, context)

    return decide(outcome, train_ids)


def _wire_after_decision(wiring: _Wiring, planned: XComArg, branch: XComArg) -> None:
    """decide -> next_round | rollback (a new run with the decision's conf) | finish."""
    from airflow.sdk import task

    next_conf = "ti.xcom_pull(task_ids='decide', key='next_conf')"
    conf = {
        key: f"{{{{ {next_conf}['{key}'] }}}}"
        for key in ("base_checkpoint", "rollback", "stages", "reason")
    }
    run_id = "{{ ti.xcom_pull(task_ids='decide', key='next_run_id') }}"
    for task_id in ("next_round", "rollback"):
        branch >> _next_round_operator()(
            task_id=task_id,
            trigger_dag_id=wiring.cf.campaign.dag_id,
            trigger_run_id=run_id,
            conf=conf,
            skip_when_already_exists=True,
            retries=1,
        )

    @task(task_id="finish")
    def finish(planned: XComValue) -> dict[str, Any]:
        from tuneloop.pipeline.tasks import finish_task

        return finish_task(planned)

    branch >> finish(planned)
