"""Plan a round: every stage's recipe rendered and checked before anything is submitted.

Planning is where "fail before spending" happens. A round plan exists only if every stage's
recipe validates for the campaign's model and platform, the stages form a lineage the service
accepts (technique matrix, model type, platform), the data lives in customer buckets and the
reward function is usable. All problems are reported together, each pointing at the campaign
line or recipe line that caused it.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

from tuneloop import storage
from tuneloop.artifacts.manifest import Checkpoint, read_checkpoint, read_checkpoint_uri
from tuneloop.config import checks as campaign_checks
from tuneloop.config.campaign import Campaign, Stage, flatten_overrides
from tuneloop.config.file import CampaignFile, locate_recipe, resolve_base
from tuneloop.config.paths import absolute, round_root
from tuneloop.config.templating import render_template, sample_template_context
from tuneloop.documents import (
    Loc,
    format_loc,
    load_document,
    parse_loc,
)
from tuneloop.errors import (
    CampaignError,
    CompatibilityError,
    ConfigError,
    Problem,
    StorageError,
)
from tuneloop.recipes import compat
from tuneloop.recipes.catalog import (
    EVAL_TASKS,
    Method,
    Platform,
)
from tuneloop.recipes.render import Origin, RenderedRecipe, render_recipe
from tuneloop.recipes.rules import INSTANCE_TYPE, PLACEHOLDER_PREFIX, RecipeContext
from tuneloop.rounds.boxes import PlannedEvaluation, PlannedStage, RoundPlan, RoundStart


def run_name(campaign: Campaign, round_number: int, stage: str) -> str:
    """A planned stage's run name, ``<campaign>-r<nnnn>-<stage>``: the recipes' run.name and
    mlflow_run_name, and the name of its planned output folder. Not the job's name, which
    digests the recipe and inputs (`jobs.base.job_name`) and replaces it when the job is
    specified."""
    return f"{campaign.name}-r{round_number:04d}-{stage}"


def plan_started_round(
    cf: CampaignFile,
    start: RoundStart,
    template_context: dict[str, Any],
    *,
    archived_base: Checkpoint | None = None,
) -> RoundPlan:
    """Plan the round ``start`` describes, from its base checkpoint and with the conf's data
    overrides, every local data path made absolute (fail before spending). ``cf`` is left as
    it is: the round's data is a modified copy of the campaign.

    ``archived_base`` is the base's checkpoint as the ledger recorded it, for a base the
    lifecycle archived: its manifest may not be readable until ``restore_base`` brings it back,
    and the ledger knows everything planning reads from it."""
    base_uri = base = None
    if archived_base is not None:
        base_uri, base = archived_base.uri, archived_base
    elif start.base_output_uri:
        base_uri = read_checkpoint_uri(start.base_output_uri, path="conf.base_checkpoint")
        base = read_checkpoint(start.base_output_uri, path="conf.base_checkpoint")
    return plan_round(
        _with_round_data(cf, start),
        round_number=start.round,
        base_uri=base_uri,
        base=base,
        template_context=template_context,
        offline=False,
        rollback=start.rollback,
    )


def _with_round_data(cf: CampaignFile, start: RoundStart) -> CampaignFile:
    campaign = cf.campaign
    stages = [
        _with_stage_data(stage, start.data_overrides.get(stage.name, {}))
        for stage in campaign.stages
    ]
    evaluation = campaign.evaluation.model_copy(
        update={
            "dataset": absolute(campaign.evaluation.dataset),
            "perplexity_dataset": absolute(campaign.evaluation.perplexity_dataset),
        }
    )
    round_campaign = campaign.model_copy(update={"stages": stages, "evaluation": evaluation})
    return dataclasses.replace(cf, campaign=round_campaign)


def _with_stage_data(stage: Stage, overrides: dict[str, str]) -> Stage:
    datasets = stage.datasets.model_copy(update=overrides)
    datasets = datasets.model_copy(
        update={"train": absolute(datasets.train), "validation": absolute(datasets.validation)}
    )
    return stage.model_copy(update={"datasets": datasets})


def plan_round(
    cf: CampaignFile,
    *,
    round_number: int = 1,
    base_uri: str | None = None,
    base: Checkpoint | None = None,
    template_context: dict[str, Any] | None = None,
    offline: bool = True,
    rollback: bool = False,
) -> RoundPlan:
    """Render and check every recipe of round ``round_number``; raise CampaignError if any fail.

    ``base_uri``/``base`` name the checkpoint the round starts from (the ledger supplies them
    from round 2 on); by default round 1 starts from the campaign's base_model. ``rollback``
    plans the round that follows a rollback: the gate's rollback adjustments applied.
    """
    campaign = cf.campaign
    context = template_context or sample_template_context()
    problems: list[Problem] = []
    if base_uri is None:
        try:
            base_uri, base = resolve_base(cf, offline=offline)
        except (CompatibilityError, StorageError) as exc:
            raise CampaignError(
                [cf.problem(("base_model",), p.message, fix=p.fix) for p in exc.problems]
            ) from None
    campaign_checks.check_stage_names(cf, problems)
    campaign_checks.check_rollback_stages(cf, problems)

    recipe_context = RecipeContext(
        platform=campaign.platform,
        instance_type=getattr(campaign.backend, "instance_type", None),
    )
    campaign_checks.check_images(cf, problems)
    unpriced = campaign_checks.unpriced_budget(cf)
    if unpriced is not None:
        problems.append(unpriced)
    stages: list[PlannedStage] = []
    previous = base_uri
    for index, stage in enumerate(campaign.stages):
        planned = _plan_stage(
            cf, index, round_number, previous, context, recipe_context, problems, rollback
        )
        if planned is not None:
            stages.append(planned)
        previous = f"{PLACEHOLDER_PREFIX}{stage.name}"
    evaluation = _plan_evaluation(cf, round_number, previous, context, recipe_context, problems)

    try:
        compat.check_lineage(
            [s.method for s in campaign.stages],
            technique=campaign.technique,
            model_type=campaign.model_type,
            platform=campaign.platform,
            base=base,
            paths=[f"stages[{i}]" for i in range(len(campaign.stages))],
        )
    except CompatibilityError as exc:
        for p in exc.problems:
            loc = _loc_from_path(p.path)
            problems.append(cf.problem(loc, p.message, fix=p.fix))
    if problems:
        # In file order, so the output reads top to bottom like the campaign file.
        problems.sort(key=lambda p: (p.source, p.line or 0))
        raise CampaignError(problems)
    assert evaluation is not None
    return RoundPlan(
        campaign=campaign.name,
        round=round_number,
        platform=campaign.platform,
        model_type=campaign.model_type,
        technique=campaign.technique,
        base_model=base_uri,
        stages=stages,
        evaluation=evaluation,
        monitoring=campaign.monitoring.model_dump(mode="json")
        if campaign.monitoring.live
        else None,
    )


def _loc_from_path(path: str) -> Loc:
    # The compat checks name sub-fields (stages[1].technique); the campaign line is the stage's.
    parts = parse_loc(path)
    return parts[:2] if parts and parts[0] == "stages" else parts


def validate_campaign(
    cf: CampaignFile,
    *,
    round_number: int = 1,
    template_context: dict[str, Any] | None = None,
    offline: bool = True,
) -> RoundPlan:
    """Plan a round, and check that the round after a rollback would be valid too.

    A rollback happens mid-campaign, after money is spent; a learning rate halved below the
    recipe's minimum must be found now, not then.
    """
    plan = plan_round(
        cf, round_number=round_number, template_context=template_context, offline=offline
    )
    try:
        plan_round(
            cf,
            round_number=round_number,
            base_uri=plan.base_model,
            template_context=template_context,
            rollback=True,
        )
    except CampaignError as exc:
        raise CampaignError(
            [
                dataclasses.replace(p, message=f"in the round after a rollback: {p.message}")
                for p in exc.problems
            ]
        ) from None
    return plan


def _render_value(
    cf: CampaignFile,
    loc: tuple[str | int, ...],
    text: str,
    context: dict[str, Any],
    problems: list[Problem],
) -> str:
    try:
        return render_template(text, context)
    except ValueError as exc:
        problems.append(cf.problem(loc, str(exc)))
        return text


Injected = dict[str, tuple[Any, Loc]]
"""Recipe field -> (value, the campaign field it comes from)."""


def _render_stage_recipe(
    cf: CampaignFile,
    loc: Loc,
    reference: str,
    method: Method | None,
    injected: Injected,
    user_overrides: dict[str, Any],
    recipe_context: RecipeContext,
    problems: list[Problem],
    adjustments: Injected | None = None,
) -> RenderedRecipe | None:
    """Render a stage's template: campaign values, then the stage's overrides, then
    ``adjustments`` (a rollback round's changes), each located where the user wrote it."""
    try:
        template = locate_recipe(cf, reference, loc)  # only inside the recipe roots
    except CampaignError as exc:
        problems.extend(exc.problems)
        return None
    located: Injected = dict(injected)
    for key, value in user_overrides.items():
        written_at: Loc = (*loc, "overrides", key)
        if written_at not in cf.document.lines:  # written as a nested mapping
            written_at = (*loc, "overrides", *key.split("."))
        located[key] = (value, written_at)
    located.update(adjustments or {})
    origins = {
        key: Origin(cf.document.source, cf.line(*written_at), format_loc(written_at))
        for key, (_, written_at) in located.items()
    }
    origins[format_loc(INSTANCE_TYPE)] = Origin(
        cf.document.source, cf.line("backend", "instance_type"), "backend.instance_type"
    )
    overrides = {key: value for key, (value, _) in located.items()}
    overrides["run.model_type"] = cf.campaign.model_type
    try:
        document = load_document(template)
        template_model_type = (document.data.get("run") or {}).get("model_type")
        if template_model_type and template_model_type != cf.campaign.model_type:
            problems.append(
                cf.problem(
                    (*loc, "recipe"),
                    f"{reference} is a recipe for {template_model_type}, but the campaign's "
                    f"model_type is {cf.campaign.model_type}",
                    fix="pick the template for the campaign's model (model_type must be the same "
                    "in every round)",
                )
            )
            return None
        return render_recipe(
            document, overrides, method=method, context=recipe_context, origins=origins
        )
    except ConfigError as exc:
        problems.extend(exc.problems)
        return None


def _common_run_fields(cf: CampaignFile, name: str, round_number: int) -> Injected:
    campaign = cf.campaign
    fields: Injected = {
        "run.name": (name, ("name",)),
        "run.output_s3_path": (
            round_root(campaign, round_number) + "/",
            ("backend", "output_root"),
        ),
        "run.mlflow_experiment_name": (campaign.name, ("name",)),
        "run.mlflow_run_name": (name, ("name",)),
    }
    if campaign.backend.mlflow_uri:
        fields["run.mlflow_tracking_uri"] = (campaign.backend.mlflow_uri, ("backend", "mlflow_uri"))
    return fields


def _plan_stage(
    cf: CampaignFile,
    index: int,
    round_number: int,
    base_uri: str,
    context: dict[str, Any],
    recipe_context: RecipeContext,
    problems: list[Problem],
    rollback: bool = False,
) -> PlannedStage | None:
    campaign = cf.campaign
    stage = campaign.stages[index]
    loc: Loc = ("stages", index)
    train_loc, validation_loc = (*loc, "datasets", "train"), (*loc, "datasets", "validation")
    datasets = {
        "train": _render_value(cf, train_loc, stage.datasets.train, context, problems),
        "validation": _render_value(
            cf, validation_loc, stage.datasets.validation, context, problems
        ),
    }
    _check_reward_function(cf, stage, loc, problems)
    name = run_name(campaign, round_number, stage.name)
    base_loc: Loc = ("base_model",) if index == 0 else ("stages", index - 1)
    injected: Injected = {
        **_common_run_fields(cf, name, round_number),
        "run.model_name_or_path": (base_uri, base_loc),
        "run.data_s3_path": (datasets["train"], train_loc),
    }
    if datasets["validation"]:
        injected["run.validation_data_s3_path"] = (datasets["validation"], validation_loc)
    if stage.reward_function:
        injected["run.reward_lambda_arn"] = (stage.reward_function, (*loc, "reward_function"))
    render = partial(
        _render_stage_recipe,
        cf,
        loc,
        stage.recipe,
        stage.method,
        injected,
        stage.flat_overrides,
        recipe_context,
        problems,
    )
    rendered = render()
    if rendered is not None and rollback:
        # The rollback's learning rate scales the rate this stage would otherwise use.
        rendered = render(adjustments=_rollback_adjustments(cf, stage.name, rendered))
    if rendered is None:
        return None
    if not _technique_matches(cf, stage, loc, rendered, problems):
        return None
    return PlannedStage(
        name=stage.name,
        method=stage.method,
        technique=rendered.technique,
        template=str(stage.recipe),
        job_name=name,
        model_name_or_path=base_uri,
        datasets={k: v for k, v in datasets.items() if v},
        output_uri=storage.join(round_root(campaign, round_number), name),
        recipe=rendered.data,
        warnings=[w.format() for w in rendered.warnings],
    )


def _check_reward_function(
    cf: CampaignFile, stage: Stage, loc: Loc, problems: list[Problem]
) -> None:
    """An RFT stage needs a reward function; no other stage may name one."""
    if stage.method is Method.RFT and not stage.reward_function:
        problems.append(
            cf.problem(
                (*loc, "method"),
                "an RFT stage needs a reward_function",
                fix="add reward_function: <Lambda ARN> to the stage",
            )
        )
    if stage.method is not Method.RFT and stage.reward_function:
        problems.append(
            cf.problem(
                (*loc, "reward_function"),
                f"reward_function applies to RFT stages, not {stage.method}",
            )
        )


def _technique_matches(
    cf: CampaignFile, stage: Stage, loc: Loc, rendered: RenderedRecipe, problems: list[Problem]
) -> bool:
    """Whether the stage's rendered recipe trains the campaign's technique (a problem if not)."""
    campaign = cf.campaign
    if rendered.technique is compat.method_technique(stage.method, campaign.technique):
        return True
    problems.append(
        cf.problem(
            (*loc, "recipe"),
            f"Incompatible model training technique detected: {stage.recipe} trains "
            f"{rendered.technique.value}, but the campaign's technique is "
            f"{campaign.technique.value}",
            fix=f"use the {campaign.technique.value} template for this stage (LoRA and "
            "full-rank never mix)",
        )
    )
    return False


def _rollback_adjustments(cf: CampaignFile, stage: str, rendered: RenderedRecipe) -> Injected:
    """What a round after a rollback changes in a stage: a scaled learning rate, then the
    campaign's extra rollback overrides for that stage."""
    rollback = cf.campaign.gate.rollback
    adjustments: Injected = {}
    if rendered.learning_rate_path is not None and rendered.learning_rate is not None:
        adjustments[rendered.learning_rate_path] = (
            rendered.learning_rate * rollback.lr_scale,
            ("gate", "rollback", "lr_scale"),
        )
    for key, value in flatten_overrides(rollback.overrides.get(stage, {})).items():
        adjustments[key] = (value, ("gate", "rollback", "overrides", stage, *key.split(".")))
    return adjustments


def _plan_evaluation(
    cf: CampaignFile,
    round_number: int,
    candidate: str,
    context: dict[str, Any],
    recipe_context: RecipeContext,
    problems: list[Problem],
) -> PlannedEvaluation | None:
    campaign = cf.campaign
    evaluation = campaign.evaluation
    loc: Loc = ("evaluation",)
    dataset = _render_value(cf, (*loc, "dataset"), evaluation.dataset, context, problems)
    name = run_name(campaign, round_number, "eval")
    injected: Injected = {
        **_common_run_fields(cf, name, round_number),
        "run.model_name_or_path": (candidate, ("stages", len(campaign.stages) - 1)),
    }
    if dataset:
        injected["run.data_s3_path"] = (dataset, (*loc, "dataset"))
    if evaluation.perplexity_dataset and campaign.platform is Platform.LOCAL:
        # Only the local evaluation measures perplexity; checks.py reports the field elsewhere.
        domain = _render_value(
            cf, (*loc, "perplexity_dataset"), evaluation.perplexity_dataset, context, problems
        )
        injected["run.perplexity_data_path"] = (domain, (*loc, "perplexity_dataset"))
    if evaluation.reward_function:
        injected["rl_env.reward_lambda_arn"] = (
            evaluation.reward_function,
            (*loc, "reward_function"),
        )
    rendered = _render_stage_recipe(
        cf,
        loc,
        evaluation.recipe,
        None,
        injected,
        evaluation.flat_overrides,
        recipe_context,
        problems,
    )
    if rendered is None:
        # Still check the gate against the task the template names, so one run reports both.
        task = campaign_checks.declared_task(cf, evaluation.recipe, evaluation.flat_overrides)
        if task in EVAL_TASKS:
            campaign_checks.check_gate_metrics(cf, task, problems)
        return None
    task = rendered.data["evaluation"]["task"]
    metrics = campaign_checks.check_gate_metrics(cf, task, problems)
    return PlannedEvaluation(
        template=evaluation.recipe,
        job_name=name,
        task=task,
        model_name_or_path=candidate,
        dataset=dataset,
        metrics=metrics,
        output_uri=storage.join(round_root(campaign, round_number), name),
        recipe=rendered.data,
        warnings=[w.format() for w in rendered.warnings],
    )
