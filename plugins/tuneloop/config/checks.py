"""Campaign-wide checks that no single recipe can make: names, images, rollback, gate metrics.

The metrics a round records are the evaluation task's own plus two the round adds:
``format_compliance`` when ``evaluation.output_format`` is set (the share of the evaluation's
answers in that format, read from its inference output, which gen_qa writes everywhere and
rft_eval on the local backend) and ``perplexity`` when ``evaluation.perplexity_dataset`` is set
(local backend only; lower is better). The gate and ``evaluation.metrics`` may name only these.
"""

from __future__ import annotations

from typing import Any

from tuneloop.artifacts.evaluation import PERPLEXITY
from tuneloop.artifacts.format_compliance import FORMAT_COMPLIANCE
from tuneloop.config.campaign import Target
from tuneloop.config.file import CampaignFile, find_template
from tuneloop.documents import Loc, load_document
from tuneloop.errors import ConfigError, Problem
from tuneloop.recipes.catalog import (
    MODELS,
    CatalogError,
    Platform,
    container_image,
    eval_metrics,
)

ROUND_METRICS = (FORMAT_COMPLIANCE, PERPLEXITY)
"""Metrics the round computes itself, beside the evaluation task's."""
LOWER_IS_BETTER = frozenset({PERPLEXITY})


def check_images(cf: CampaignFile, problems: list[Problem]) -> None:
    """Every job of the round has a container image in the backend's region."""
    campaign = cf.campaign
    region = getattr(campaign.backend, "region", None)
    if region is None or not MODELS[campaign.model_type].is_nova:
        return
    reported: set[str] = set()
    for method in [*(stage.method for stage in campaign.stages), None]:
        try:
            container_image(campaign.model_type, method, campaign.platform, region)
        except CatalogError as exc:
            if str(exc) not in reported:
                reported.add(str(exc))
                problems.append(cf.problem(("backend", "region"), str(exc)))


def unpriced_budget(cf: CampaignFile) -> Problem | None:
    """A dollar budget needs the price of the campaign's instance type: without one every job
    would count as free and the budget would never stop anything. None when it can be
    checked (no dollar budget, the local backend, a price in the table or the campaign)."""
    from tuneloop.recipes.prices import price_per_hour

    campaign = cf.campaign
    backend = campaign.backend
    if campaign.gate.usd_budget() is None or backend.type == "local":
        return None
    price = price_per_hour(backend.instance_type, backend.region, backend.price_per_hour)
    if price.usd_per_hour is not None:
        return None
    return cf.problem(
        ("gate", "budget", "usd"),
        f"the dollar budget cannot be checked: the {price.note}",
        fix="add backend.price_per_hour: {<instance type>: <US dollars an hour>} (your "
        "on-demand, savings plan or cluster rate), or budget in gpu_hours instead",
    )


def check_rollback_stages(cf: CampaignFile, problems: list[Problem]) -> None:
    names = [stage.name for stage in cf.campaign.stages]
    for name in cf.campaign.gate.rollback.overrides:
        if name not in names:
            problems.append(
                cf.problem(
                    ("gate", "rollback", "overrides", name),
                    f"there is no stage named {name!r}",
                    allowed=", ".join(names),
                )
            )


def check_stage_names(cf: CampaignFile, problems: list[Problem]) -> None:
    seen: dict[str, int] = {}
    for index, stage in enumerate(cf.campaign.stages):
        if stage.name in seen:
            problems.append(
                cf.problem(
                    ("stages", index, "name"),
                    f"stage name {stage.name!r} is already used by stages[{seen[stage.name]}]",
                    fix=f"give each stage a distinct name, e.g. {stage.name}-2",
                )
            )
        seen.setdefault(stage.name, index)


def declared_task(cf: CampaignFile, reference: str, overrides: dict[str, Any]) -> Any:
    if "evaluation.task" in overrides:
        return overrides["evaluation.task"]
    template = find_template(cf, reference)
    try:
        data = load_document(template).data if template else {}
    except ConfigError:
        return None
    block = data.get("evaluation")
    return block.get("task") if isinstance(block, dict) else None


def writes_answers(task: str, platform: Platform) -> bool:
    """Whether an evaluation job of ``task`` writes its answers (inference_output.jsonl)."""
    return task == "gen_qa" or (task == "rft_eval" and platform is Platform.LOCAL)


def round_metrics(cf: CampaignFile) -> tuple[str, ...]:
    """The metrics the round adds to the evaluation task's, as the campaign configures them."""
    evaluation = cf.campaign.evaluation
    added = []
    if evaluation.output_format is not None:
        added.append(FORMAT_COMPLIANCE)
    if evaluation.perplexity_dataset and cf.campaign.platform is Platform.LOCAL:
        added.append(PERPLEXITY)
    return tuple(added)


def check_evaluation_fields(cf: CampaignFile, task: str, problems: list[Problem]) -> None:
    """``output_format`` needs a task that writes answers; ``perplexity_dataset`` the local
    backend."""
    campaign = cf.campaign
    evaluation = campaign.evaluation
    platform = campaign.platform
    if evaluation.output_format is not None and not writes_answers(task, platform):
        tasks = "gen_qa, rft_eval" if platform is Platform.LOCAL else "gen_qa"
        problems.append(
            cf.problem(
                ("evaluation", "output_format"),
                f"{task} on {platform.value} writes no answers whose format could be checked",
                allowed=f"an evaluation recipe whose task is {tasks}",
                fix="evaluate with such a recipe, or remove evaluation.output_format",
            )
        )
    if evaluation.perplexity_dataset and platform is not Platform.LOCAL:
        problems.append(
            cf.problem(
                ("evaluation", "perplexity_dataset"),
                f"perplexity is measured by the local backend only, not {platform.value}",
                fix="remove evaluation.perplexity_dataset, or run the campaign on the local "
                "backend",
            )
        )


def _unavailable(cf: CampaignFile, loc: Loc, metric: str) -> Problem | None:
    """Why a metric the round computes itself is not available to this campaign, if it is not."""
    if metric in round_metrics(cf):
        return None
    if metric == FORMAT_COMPLIANCE:
        return cf.problem(
            loc,
            f"{metric!r} is measured only when the campaign declares an output format",
            fix="set evaluation.output_format (json, or {regex: <pattern>})",
        )
    if cf.campaign.platform is not Platform.LOCAL:
        return cf.problem(
            loc,
            f"{metric!r} is measured by the local backend only, not {cf.campaign.platform.value}",
            fix="name a metric the evaluation task reports",
        )
    return cf.problem(
        loc,
        f"{metric!r} is measured only on a domain text set",
        fix='set evaluation.perplexity_dataset to a JSONL file of {"text": ...} records',
    )


def _check_direction(cf: CampaignFile, problems: list[Problem]) -> None:
    """A lower-is-better metric is never ranked or targeted as if higher were better."""
    gate = cf.campaign.gate
    if gate.primary_metric in LOWER_IS_BETTER and gate.higher_is_better:
        problems.append(
            cf.problem(
                ("gate", "higher_is_better"),
                f"{gate.primary_metric} is better when lower, and higher_is_better is true",
                fix="set gate.higher_is_better: false",
            )
        )
    for name, target in gate.targets.items():
        if name in LOWER_IS_BETTER and not (
            isinstance(target, Target) and target.at_most is not None
        ):
            problems.append(
                cf.problem(
                    ("gate", "targets", name),
                    f"{name} is better when lower; a number or at_least asks for at least it",
                    fix=f"write {name}: {{at_most: <value>}}",
                )
            )


def check_gate_metrics(cf: CampaignFile, task: str, problems: list[Problem]) -> list[str]:
    """The metrics recorded each round: the evaluation's list, or what the gate names.

    Also checks the evaluation fields that add metrics (`check_evaluation_fields`) and that
    the gate ranks and targets a lower-is-better metric as such."""
    campaign = cf.campaign
    gate = campaign.gate
    check_evaluation_fields(cf, task, problems)
    _check_direction(cf, problems)
    task_metrics = eval_metrics(task)
    added = round_metrics(cf)
    produced = None if task_metrics is None else (*task_metrics, *added)
    wanted = campaign.evaluation.metrics or [gate.primary_metric, *gate.targets]
    metrics = list(dict.fromkeys(wanted))
    for index, metric in enumerate(campaign.evaluation.metrics):
        loc: Loc = ("evaluation", "metrics", index)
        unavailable = _unavailable(cf, loc, metric) if metric in ROUND_METRICS else None
        if unavailable is not None:
            problems.append(unavailable)
        elif produced is not None and metric not in produced:
            problems.append(
                cf.problem(loc, f"{task} does not report {metric!r}", allowed=", ".join(produced))
            )
    gate_metrics: list[tuple[Loc, str]] = [
        (("gate", "primary_metric"), gate.primary_metric),
        *((("gate", "targets", name), name) for name in gate.targets),
    ]
    for loc, metric in gate_metrics:
        unavailable = _unavailable(cf, loc, metric) if metric in ROUND_METRICS else None
        if unavailable is not None:
            problems.append(unavailable)
        elif produced is not None and metric not in produced:
            problems.append(
                cf.problem(loc, f"{task} does not report {metric!r}", allowed=", ".join(produced))
            )
        elif campaign.evaluation.metrics and metric not in campaign.evaluation.metrics:
            problems.append(
                cf.problem(
                    loc,
                    f"{metric!r} is not among evaluation.metrics",
                    allowed=", ".join(campaign.evaluation.metrics),
                    fix=f"add {metric} to evaluation.metrics",
                )
            )
    return metrics
