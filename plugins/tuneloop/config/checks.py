"""Campaign-wide checks that no single recipe can make: names, images, rollback, gate metrics."""

from __future__ import annotations

from typing import Any

from tuneloop.config.file import CampaignFile, find_template
from tuneloop.documents import load_document
from tuneloop.errors import ConfigError, Problem
from tuneloop.recipes.catalog import MODELS, CatalogError, container_image, eval_metrics


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


def check_gate_metrics(cf: CampaignFile, task: str, problems: list[Problem]) -> list[str]:
    """The metrics recorded each round: the evaluation's list, or what the gate names."""
    campaign = cf.campaign
    gate = campaign.gate
    produced = eval_metrics(task)
    wanted = campaign.evaluation.metrics or [gate.primary_metric, *gate.targets]
    metrics = list(dict.fromkeys(wanted))
    if produced is not None:
        for index, metric in enumerate(campaign.evaluation.metrics):
            if metric not in produced:
                problems.append(
                    cf.problem(
                        ("evaluation", "metrics", index),
                        f"{task} does not report {metric!r}",
                        allowed=", ".join(produced),
                    )
                )
    gate_metrics: list[tuple[tuple[str, ...], str]] = [
        (("gate", "primary_metric"), gate.primary_metric),
        *((("gate", "targets", name), name) for name in gate.targets),
    ]
    for loc, metric in gate_metrics:
        if produced is not None and metric not in produced:
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
