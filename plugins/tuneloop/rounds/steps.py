"""What each task of a round does, as plain functions of JSON-able data.

The round DAG (``rounds.py``) only wires these together; keeping them free of Airflow makes
every step testable on its own and keeps the DAG file's parse cost at zero. Heavy modules
(validator, ledger, gate, tracking) are imported inside the functions that need them.

A round, as data::

    start_round(conf)        -> RoundStart  (round number, base checkpoint, rollback flag, stages)
    plan(start)              -> RoundPlan JSON, datasets to validate, the first job
    validate(dataset)        -> DatasetRecord JSON
    checkpoint(stage result) -> Checkpoint JSON + the next job (next stage, or the evaluation)
    decide(everything)       -> RoundRecord written to the ledger; the branch to take
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tuneloop import storage
from tuneloop.config.campaign import Campaign
from tuneloop.config.file import CampaignFile, load_campaign
from tuneloop.config.paths import absolute as _absolute
from tuneloop.errors import Problem, TuneloopError
from tuneloop.jobs.base import JobKind, JobSpec, job_name
from tuneloop.recipes.catalog import Method, Platform
from tuneloop.rounds.plan import RoundPlan, campaign_root

DATA_FORMATS = {Method.SFT: "sft", Method.CPT: "cpt", Method.RFT: "rft"}
EVAL_DATA_FORMATS = {"gen_qa": "gen_qa", "llm_judge": "llm_judge", "rft_eval": "rft"}
BASELINE_STAGE = "baseline"


class RoundError(TuneloopError):
    """A round cannot go on: bad conf, a missing checkpoint, a ledger conflict."""


class RoundConf(BaseModel):
    """What a person (or the previous round) may say in a run's conf: the round DAG's Params.

    Every field is optional: an empty conf continues the campaign as the ledger says. Unknown
    keys and values of the wrong type are refused by `parse_conf`, naming the Param and what it
    accepts, before anything is planned."""

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


CONF_ACCEPTS = {
    "base_checkpoint": "null or a string: a job output folder holding manifest.json",
    "start_from_round": "null or an integer >= 1: a recorded round",
    "rollback": "null, true or false",
    "stages": "null or a list of stage names",
    "data_overrides": 'null or an object {stage: {"train"|"validation": uri}}',
    "dry_run": "true or false",
    "reason": "null or a string",
    "after_finish": "true or false",
}
"""What each Param accepts, in the words the refusal uses."""


def parse_conf(conf: Mapping[str, Any] | None) -> RoundConf:
    """The run's conf as a `RoundConf`; every unknown key and wrong value is one problem."""
    try:
        return RoundConf.model_validate(dict(conf or {}))
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else ""
            where = ".".join(str(part) for part in error["loc"])
            if error["type"] == "extra_forbidden":
                problems.append(
                    Problem(
                        f"conf.{where}",
                        "is not a parameter of this DAG",
                        allowed=", ".join(RoundConf.model_fields),
                        fix="remove it, or check its spelling",
                    )
                )
            else:
                problems.append(
                    Problem(
                        f"conf.{where}",
                        f"{error['input']!r} is not accepted ({error['msg'].lower()})",
                        allowed=CONF_ACCEPTS.get(name),
                    )
                )
        raise RoundError(problems) from None


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


# -- campaign, backend -------------------------------------------------------------------------


def load(path: str) -> CampaignFile:
    """The campaign file, with local folders made absolute (job processes run elsewhere)."""
    cf = load_campaign(path)
    backend = cf.campaign.backend
    if backend.platform is Platform.LOCAL:
        backend.output_root = _absolute(backend.output_root)
    return cf


# -- start ---------------------------------------------------------------------------------------


def start_round(cf: CampaignFile, conf: RoundConf | Mapping[str, Any] | None = None) -> RoundStart:
    """Round number and starting point: the ledger decides, the run's conf may override.

    Without conf (a schedule, an Asset, a plain UI trigger) the round continues from what the
    latest recorded decision said: its next base, or the champion after a finish or stop, and
    the rollback adjustments when the latest round was rolled back. A manual trigger may name a
    base checkpoint folder or a round to restart from (a manual rollback). A campaign that is
    over (see `gate.campaign_over`) refuses the round unless the conf says ``after_finish``.
    Reads the ledger only; nothing is written.
    """
    from tuneloop.rounds.gate import campaign_over
    from tuneloop.rounds.ledger import Ledger, champion_of, history_of

    conf = conf if isinstance(conf, RoundConf) else parse_conf(conf)
    campaign = cf.campaign
    ledger = Ledger(campaign_root(campaign))
    records = ledger.records()  # read once: number, latest decision, champion, known outputs
    latest = records[-1] if records else None
    start = RoundStart(
        campaign=campaign.name,
        round=latest.round + 1 if latest else 1,
        dry_run=conf.dry_run,
        stages=list(conf.stages or []),
        data_overrides=dict(conf.data_overrides or {}),
        reason=conf.reason or "",
    )
    _check_stage_names(campaign, start)
    if latest is not None:
        over = campaign_over(campaign.gate, history_of(records), latest.decision)
        if over and not conf.after_finish:
            raise CampaignOverError(_over_problems(cf, start.round, over))
        # What the latest decision said; the conf the decide task triggered with says the same.
        decision = latest.decision
        champion = champion_of(records)
        if decision.action.value in ("continue", "rollback"):
            start.base_output_uri = decision.next_base or ""
            start.base_round = decision.next_base_round
        elif champion is not None:
            start.base_output_uri = _round_checkpoint(champion)
            start.base_round = champion.round
        start.rollback = bool(decision.rollback)
        start.rollback_of = latest.round if decision.action.value == "rollback" else None
        if decision.next_stages and not start.stages:
            start.stages = list(decision.next_stages)
        start.reason = start.reason or (
            f"after the campaign finished ({over})" if over else decision.reason
        )
    base_checkpoint = _absolute(conf.base_checkpoint or "")
    if conf.start_from_round is not None:
        record = ledger.read(conf.start_from_round)
        start.base_output_uri = _round_checkpoint(record)
        start.base_round = record.round
        start.rollback = True if conf.rollback is None else conf.rollback
        start.rollback_of = None
        start.reason = conf.reason or f"manual restart from round {record.round}"
    elif base_checkpoint and base_checkpoint != start.base_output_uri:
        start.base_output_uri = base_checkpoint
        start.base_round = _round_of_output(records, base_checkpoint)
        start.rollback = bool(conf.rollback)
        start.rollback_of = None
    elif conf.rollback is not None:
        start.rollback = conf.rollback
    return start


class CampaignOverError(RoundError):
    """The campaign finished; a further round runs only when asked for explicitly."""


def _over_problems(cf: CampaignFile, number: int, why: str) -> list[Problem]:
    gate = cf.campaign.gate
    return [
        Problem(
            "",
            f"campaign {cf.campaign.name!r} is over: {why}; round {number} is not planned and "
            "no job is started",
            source=str(cf.path),
            fix=f"to go on, raise gate.max_rounds (now {gate.max_rounds}) or change "
            "gate.targets in the campaign file, or trigger the round with the Param "
            'after_finish: true (conf {"after_finish": true})',
        )
    ]


def _check_stage_names(campaign: Campaign, start: RoundStart) -> None:
    """The stages and datasets the conf names must be the campaign's; every one that is not is
    a problem."""
    names = [s.name for s in campaign.stages]
    datasets = ["train", "validation"]
    named = [
        ("conf.stages", "stage", start.stages, names),
        ("conf.data_overrides", "stage", list(start.data_overrides), names),
        *(
            (f"conf.data_overrides.{stage}", "dataset", list(channels), datasets)
            for stage, channels in start.data_overrides.items()
        ),
    ]
    problems = [
        Problem(path, f"unknown {what} {', '.join(map(repr, wrong))}", allowed=", ".join(known))
        for path, what, given, known in named
        if (wrong := [g for g in given if g not in known])
    ]
    if problems:
        raise RoundError(problems)


def _round_of_output(records: list[Any], output_uri: str) -> int | None:
    """The recorded round whose checkpoint lives in ``output_uri``, if any."""
    for record in records:
        if any(s.output_uri.rstrip("/") == output_uri.rstrip("/") for s in record.stages):
            return record.round
    return None


def _round_checkpoint(record: Any) -> str:
    for stage in reversed(record.stages):
        if stage.checkpoint is not None:
            return stage.checkpoint.output_uri or stage.output_uri
    raise RoundError(
        [Problem(f"round {record.round}", "recorded no checkpoint", fix="pick another round")]
    )


# -- plan ----------------------------------------------------------------------------------------


def plan(cf: CampaignFile, start: RoundStart, template_context: dict[str, Any]) -> RoundPlan:
    """Render and check every recipe of the round (fail before spending)."""
    from tuneloop.artifacts.manifest import read_checkpoint, read_checkpoint_uri
    from tuneloop.rounds.plan import plan_round

    base_uri = base = None
    if start.base_output_uri:
        base_uri = read_checkpoint_uri(start.base_output_uri, path="conf.base_checkpoint")
        base = read_checkpoint(start.base_output_uri, path="conf.base_checkpoint")
    campaign = cf.campaign
    saved = {s.name: s.datasets.model_copy() for s in campaign.stages}
    try:
        for stage in campaign.stages:
            for channel, uri in start.data_overrides.get(stage.name, {}).items():
                setattr(stage.datasets, channel, uri)
            stage.datasets.train = _absolute(stage.datasets.train)
            stage.datasets.validation = _absolute(stage.datasets.validation)
        campaign.evaluation.dataset = _absolute(campaign.evaluation.dataset)
        return plan_round(
            cf,
            round_number=start.round,
            base_uri=base_uri,
            base=base,
            template_context=template_context,
            offline=False,
            rollback=start.rollback,
        )
    finally:
        for stage in campaign.stages:
            stage.datasets = saved[stage.name]


def datasets_to_validate(cf: CampaignFile, round_plan: RoundPlan) -> list[dict[str, Any]]:
    """One entry per dataset of the round: what the validate_data tasks are mapped over."""
    campaign = cf.campaign
    items = []
    for stage, planned in zip(campaign.stages, round_plan.stages, strict=True):
        max_length = (planned.recipe.get("training_config") or {}).get("max_length")
        for channel, uri in planned.datasets.items():
            items.append(
                {
                    "stage": stage.name,
                    "channel": channel,
                    "uri": uri,
                    "format": DATA_FORMATS[stage.method],
                    "allow": list(stage.datasets.allow),
                    "max_length": max_length,
                }
            )
    evaluation = round_plan.evaluation
    if evaluation.dataset and evaluation.task in EVAL_DATA_FORMATS:
        items.append(
            {
                "stage": "evaluation",
                "channel": "eval",
                "uri": evaluation.dataset,
                "format": EVAL_DATA_FORMATS[evaluation.task],
                "allow": list(campaign.evaluation.allow),
                "max_length": None,
            }
        )
    return items


def validate(campaign: Campaign, item: dict[str, Any]) -> dict[str, Any]:
    """Validate one dataset; raise DataInvalidError (no retry) with the first errors."""
    from tuneloop.data.registry import get_format
    from tuneloop.data.validator import Options, validate_dataset
    from tuneloop.recipes.catalog import MODELS

    options = Options(
        allow=frozenset(item["allow"]),
        max_errors=20,
        max_length=item.get("max_length"),
        role="validation" if item["channel"] == "validation" else "train",
    )
    report = validate_dataset(
        item["uri"], get_format(item["format"]), MODELS[campaign.model_type], options=options
    )
    record = {
        "stage": item["stage"],
        "channel": item["channel"],
        "uri": item["uri"],
        "sha256": report.sha256,
        "records": report.records,
        "ok": report.ok,
        "errors": report.invalid_records,
        "report": report.to_dict(),
    }
    if not report.ok:
        raise DataInvalidError(report.to_text())
    return record


class DataInvalidError(TuneloopError):
    """A dataset of the round breaks the format's rules: no job is submitted."""


# -- jobs ----------------------------------------------------------------------------------------


def _labels(campaign: str, round_number: int, stage: str) -> dict[str, str]:
    return {"campaign": campaign, "round": str(round_number), "stage": stage}


def job_spec(
    campaign: str,
    round_number: int,
    stage: str,
    kind: JobKind,
    method: str,
    recipe: dict[str, Any],
    inputs: dict[str, str],
    output_uri: str,
) -> dict[str, Any]:
    """A JobSpec (as JSON) of one round's job: labels campaign/round/stage, and a name that
    digests the recipe and inputs (the run name is set after)."""
    recipe = copy.deepcopy(recipe)
    run = recipe.setdefault("run", {})
    # Names derived from the job name are left out of its digest (the planner fills them with
    # the round's display name, which would make the baseline job differ every round).
    named = [key for key in ("name", "mlflow_run_name") if key in run or key == "name"]
    for key in named:
        run[key] = ""
    name = job_name(campaign, round_number, stage, recipe, inputs)
    for key in named:
        run[key] = name
    spec = JobSpec(
        name=name,
        kind=kind,
        method=method,
        recipe=recipe,
        inputs=inputs,
        output_uri=output_uri,
        labels=_labels(campaign, round_number, stage),
    )
    return spec.model_dump(mode="json")


def stage_job(
    round_plan: RoundPlan, index: int, base_uri: str, stages: list[str] | None = None
) -> dict[str, Any] | None:
    """The job of stage ``index`` starting from ``base_uri``; None when the stage is skipped."""
    planned = round_plan.stages[index]
    if stages and planned.name not in stages:
        return None
    recipe = copy.deepcopy(planned.recipe)
    recipe["run"]["model_name_or_path"] = base_uri
    inputs = dict(planned.datasets)
    reward = recipe["run"].get("reward_lambda_arn")
    if reward:
        inputs["reward_function"] = reward
    return job_spec(
        round_plan.campaign,
        round_plan.round,
        planned.name,
        JobKind.TRAIN,
        planned.method.value,
        recipe,
        inputs,
        round_root_of(round_plan),
    )


def round_root_of(round_plan: RoundPlan) -> str:
    # Every planned output folder is <round root>/<planned job name>.
    return round_plan.evaluation.output_uri.rsplit("/", 1)[0]


def evaluation_job(round_plan: RoundPlan, model_uri: str) -> dict[str, Any]:
    evaluation = round_plan.evaluation
    recipe = copy.deepcopy(evaluation.recipe)
    recipe["run"]["model_name_or_path"] = model_uri
    inputs = {"eval": evaluation.dataset} if evaluation.dataset else {}
    return job_spec(
        round_plan.campaign,
        round_plan.round,
        "eval",
        JobKind.EVAL,
        "eval",
        recipe,
        inputs,
        round_root_of(round_plan),
    )


def baseline_job(cf: CampaignFile, round_plan: RoundPlan) -> dict[str, Any]:
    """The evaluation of the campaign's base model: its name depends only on the recipe and
    data, so every round finds the same finished job instead of paying for it again."""
    from tuneloop.config.file import resolve_base

    base_uri, _ = resolve_base(cf, offline=False)
    evaluation = round_plan.evaluation
    recipe = copy.deepcopy(evaluation.recipe)
    folder = storage.join(campaign_root(cf.campaign), BASELINE_STAGE)
    run = recipe["run"]
    run["model_name_or_path"] = base_uri
    run["output_s3_path"] = folder + "/"
    inputs = {"eval": evaluation.dataset} if evaluation.dataset else {}
    return job_spec(
        round_plan.campaign, 0, BASELINE_STAGE, JobKind.EVAL, "eval", recipe, inputs, folder
    )


def checkpoint(
    cf: CampaignFile, round_plan: RoundPlan, index: int, result: dict[str, Any] | None, base: str
) -> dict[str, Any]:
    """What stage ``index`` produced (or, when it was skipped, what it passed through)."""
    from tuneloop.artifacts.manifest import Checkpoint, read_checkpoint, read_checkpoint_uri

    planned = round_plan.stages[index]
    if not result:
        return {"uri": base, "skipped": True, "stage": planned.name}
    output = result["result_uri"]
    found = read_checkpoint(output, path=f"stages[{index}]")
    if found is None:
        campaign = cf.campaign
        found = Checkpoint(
            uri=read_checkpoint_uri(output, path=f"stages[{index}]"),
            model_type=campaign.model_type,
            technique=planned.technique,
            platform=campaign.platform,
            lineage=(planned.method,),
            output_uri=output,
        )
    data = found.model_dump(mode="json")
    data["output_uri"] = data.get("output_uri") or output
    data["stage"] = planned.name
    return data
