"""A round plan as text a person reads before anything is submitted."""

from __future__ import annotations

from tuneloop.config.campaign import Campaign, HyperPodBackend, LocalBackend, TrainingJobsBackend
from tuneloop.documents import dump_yaml
from tuneloop.recipes.catalog import MODELS, Technique
from tuneloop.recipes.rules import PLACEHOLDER_PREFIX
from tuneloop.rounds.boxes import RoundPlan


def _backend_line(campaign: Campaign) -> str:
    backend = campaign.backend
    if isinstance(backend, HyperPodBackend):
        return (
            f"HyperPod cluster {backend.cluster} (namespace {backend.namespace}, "
            f"{backend.region}, {backend.instance_type})"
        )
    if isinstance(backend, TrainingJobsBackend):
        return f"SageMaker training jobs ({backend.region}, {backend.instance_type})"
    assert isinstance(backend, LocalBackend)
    return f"local backend (outputs in {backend.output_root}, device {backend.device})"


def _gate_lines(campaign: Campaign) -> list[str]:
    gate = campaign.gate
    direction = "higher" if gate.higher_is_better else "lower"
    lines = [f"  primary metric: {gate.primary_metric} ({direction} is better)"]
    for name, target in gate.target_bounds().items():
        bound = f">= {target.at_least}" if target.at_least is not None else f"<= {target.at_most}"
        lines.append(f"  target: {name} {bound}")
    lines.append(
        f"  roll back when {gate.primary_metric} falls more than "
        f"{gate.regression_tolerance} behind the champion (next round at "
        f"{gate.rollback.lr_scale}x learning rate)"
    )
    lines.append(
        f"  plateau: {gate.plateau_rounds} rounds improving less than {gate.min_improvement}"
    )
    limits = []
    if gate.usd_budget() is not None:
        limits.append(f"${gate.usd_budget():,.2f}")
    if gate.gpu_hour_budget() is not None:
        limits.append(f"{gate.gpu_hour_budget()} GPU-hours")
    budget = f", or before spending {' or '.join(limits)}" if limits else ""
    lines.append(f"  stop after {gate.max_rounds} rounds{budget}")
    lines.append(f"  {_price_line(campaign)}")
    return lines


def _price_line(campaign: Campaign) -> str:
    """What an instance-hour of the campaign's jobs costs, as the cost estimates use it."""
    from tuneloop.recipes.prices import price_per_hour
    from tuneloop.rounds.cost import backend_instance_type

    backend = campaign.backend
    instance_type = backend_instance_type(backend)
    price = price_per_hour(
        instance_type,
        getattr(backend, "region", None),
        getattr(backend, "price_per_hour", None) or {},
    )
    if instance_type is None:
        return f"price: {price.note}"
    if price.usd_per_hour is None:
        return f"price: {price.note}"
    where = f" ({price.note})" if price.note else ""
    return (
        f"price: ${price.usd_per_hour:,.3f} per {instance_type} instance-hour, "
        f"{price.region or 'any region'}, from {price.source}{where}"
    )


def _weights(value: str) -> str:
    if value == f"{PLACEHOLDER_PREFIX}base":
        return "the checkpoint named in base_model's manifest.json (read when the round starts)"
    if value.startswith(PLACEHOLDER_PREFIX):
        return (
            f"the checkpoint of stage {value.removeprefix(PLACEHOLDER_PREFIX)} (once it finishes)"
        )
    return value


def _indent(text: str, prefix: str = "      ") -> str:
    return "".join(prefix + line + "\n" for line in text.splitlines())


def format_plan(campaign: Campaign, plan: RoundPlan, *, recipes: bool = True) -> str:
    model = MODELS[plan.model_type]
    technique = "LoRA" if plan.technique is Technique.LORA else "full-rank"
    out = [
        f"campaign {campaign.name}: round {plan.round} (DAG {campaign.dag_id})",
        f"  model: {model.display_name} ({plan.model_type}), {technique}",
        f"  runs on: {_backend_line(campaign)}",
        f"  starts from: {_weights(plan.base_model)}",
        "",
    ]
    for number, stage in enumerate(plan.stages, start=1):
        out.append(
            f"stage {number}: {stage.name} ({stage.method.value.upper()}, "
            f"{stage.technique.value}) job {stage.job_name}"
        )
        out.append(f"    recipe: {stage.template}")
        out.append(f"    from: {_weights(stage.model_name_or_path)}")
        for label, uri in stage.datasets.items():
            out.append(f"    {label}: {uri}")
        out.append(f"    output: {stage.output_uri}")
        if recipes:
            out.append("    rendered recipe:")
            out.append(_indent(dump_yaml(stage.recipe)).rstrip("\n"))
        out.append("")
    ev = plan.evaluation
    out.append(f"evaluate: {ev.task} job {ev.job_name}")
    out.append(f"    recipe: {ev.template}")
    out.append(f"    model: {_weights(ev.model_name_or_path)}")
    if ev.dataset:
        out.append(f"    data: {ev.dataset}")
    out.append(f"    metrics: {', '.join(ev.metrics)}")
    out.append(f"    output: {ev.output_uri}")
    if recipes:
        out.append("    rendered recipe:")
        out.append(_indent(dump_yaml(ev.recipe)).rstrip("\n"))
    out.append("")
    out.append("gate:")
    out.extend(_gate_lines(campaign))
    if campaign.schedule or campaign.trigger_on_data:
        out.append(
            "starts: "
            + ", ".join(
                [f"schedule {campaign.schedule}"] * bool(campaign.schedule)
                + [f"when {uri} is updated" for uri in campaign.trigger_on_data]
            )
        )
    else:
        out.append("starts: manually (Airflow UI or CLI)")
    out.append("")
    return "\n".join(out)
