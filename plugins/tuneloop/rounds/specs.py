"""The jobs of a round, as `JobSpec` boxes: each stage's training, the evaluation, the baseline.

A job's name digests its recipe and inputs (`jobs.base.job_name`), so a retried or cleared task
finds the job it already started, and the baseline (the same recipe and data every round) is
evaluated once per campaign.
"""

from __future__ import annotations

import copy
from typing import Any

from tuneloop import storage
from tuneloop.config.file import CampaignFile, resolve_base
from tuneloop.config.paths import campaign_root
from tuneloop.jobs.base import JobKind, JobSpec, job_name
from tuneloop.rounds.boxes import RoundPlan

BASELINE_STAGE = "baseline"


def job_spec(
    campaign: str,
    round_number: int,
    stage: str,
    kind: JobKind,
    method: str,
    recipe: dict[str, Any],
    inputs: dict[str, str],
    output_uri: str,
    monitoring: dict[str, Any] | None = None,
) -> JobSpec:
    """A round's job: labels campaign/round/stage, and a name that digests the recipe and
    inputs (the recipe's run name is set to it after)."""
    recipe = copy.deepcopy(recipe)
    run = recipe.setdefault("run", {})
    # Names derived from the job name are left out of its digest (the planner fills them with
    # the round's run name, which would make the baseline job differ every round).
    named = [key for key in ("name", "mlflow_run_name") if key in run or key == "name"]
    for key in named:
        run[key] = ""
    name = job_name(campaign, round_number, stage, recipe, inputs)
    for key in named:
        run[key] = name
    return JobSpec(
        name=name,
        kind=kind,
        method=method,
        recipe=recipe,
        inputs=inputs,
        output_uri=output_uri,
        labels={"campaign": campaign, "round": str(round_number), "stage": stage},
        monitoring=monitoring,
    )


def stage_job(
    round_plan: RoundPlan,
    round_root: str,
    index: int,
    base_uri: str,
    stages: list[str] | None = None,
) -> JobSpec | None:
    """The job of stage ``index`` starting from ``base_uri``, writing under ``round_root``;
    None when the run leaves the stage out (``stages`` names the ones it runs)."""
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
        round_root,
        monitoring=round_plan.monitoring,
    )


def evaluation_job(round_plan: RoundPlan, round_root: str, model_uri: str) -> JobSpec:
    """The evaluation of the round's final checkpoint ``model_uri``."""
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
        round_root,
    )


def baseline_job(cf: CampaignFile, round_plan: RoundPlan) -> JobSpec:
    """The evaluation of the campaign's base model: its name depends only on the recipe and
    data, so every round finds the same finished job instead of paying for it again."""
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
