"""What the round reads from its jobs' outputs before it is judged, and the reward probe.

- ``probe_round``: the reward function of every RFT stage the run trains, tried on a sample of
  the stage's training data before the first job (`rounds.reward_probe`).
- ``complete_outcome``: the round's `RoundOutcome` with what the jobs left beyond their status:
  each stage's curves (its output folder's TensorBoard events and reward samples, the job's own
  MLflow run on the AWS backends, merged with what the trigger read live), the evaluation's
  format-compliance rate (from its inference output, on every backend), and the base model's
  share of positive rewards (its evaluation answers scored by the RFT reward function).

Imported only inside running tasks. Reading an artifact that is missing or unreadable is logged
and left out: the round's record stands without it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from tuneloop.artifacts.format_compliance import FORMAT_COMPLIANCE
from tuneloop.recipes.catalog import Method

if TYPE_CHECKING:
    from tuneloop.config.file import CampaignFile
    from tuneloop.rounds.boxes import PlannedRound, RoundOutcome
    from tuneloop.rounds.boxes import PlannedStage as PlannedStageBox
    from tuneloop.rounds.reward_probe import ProbeReport

log = logging.getLogger(__name__)


# --- the probe ---------------------------------------------------------------------------------


def rft_stages(planned: PlannedRound) -> list[PlannedStageBox]:
    """The RFT stages this run trains (a run of some stages leaves the others out)."""
    chosen = planned.start.stages
    return [
        stage
        for stage in planned.plan.stages
        if stage.method is Method.RFT and (not chosen or stage.name in chosen)
    ]


def reward_function_of(stage: PlannedStageBox) -> str:
    return str((stage.recipe.get("run") or {}).get("reward_lambda_arn") or "")


def concurrency_limit(recipe: Mapping[str, Any]) -> int | None:
    """The recipe's ``lambda_concurrency_limit`` wherever it sits (HyperPod and training-job
    RFT recipes place it differently); None when it has none."""
    for value in _values_named(recipe, "lambda_concurrency_limit"):
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _values_named(tree: Any, key: str) -> Iterator[Any]:
    if isinstance(tree, Mapping):
        for name, value in tree.items():
            if name == key:
                yield value
            else:
                yield from _values_named(value, key)
    elif isinstance(tree, list):
        for item in tree:
            yield from _values_named(item, key)


def probe_round(cf: CampaignFile, planned: PlannedRound) -> list[ProbeReport]:
    """One probe per RFT stage this run trains; [] when the campaign turned probes off."""
    from tuneloop.pipeline.reward_lambda import run_probe
    from tuneloop.rounds.probe_data import read_rft_records

    campaign = cf.campaign
    settings = campaign.reward_probe
    if not settings.enabled:
        log.warning("reward_probe.enabled is false: the reward functions are not probed")
        return []
    _local_python_path(cf)
    reports = []
    for stage in rft_stages(planned):
        function = reward_function_of(stage)
        records = read_rft_records(stage.datasets.get("train", ""), settings.sample)
        reports.append(
            run_probe(
                function,
                records,
                settings,
                backend_type=campaign.backend.type,
                aws_conn_id=getattr(campaign.backend, "aws_conn_id", None),
                concurrency_limit=concurrency_limit(stage.recipe),
                step_samples=step_samples(stage.recipe),
            )
        )
    return reports


def step_samples(recipe: Mapping[str, Any]) -> int | None:
    """Samples one RFT step scores: the global batch (prompts x generations), when the recipe
    says."""
    config = recipe.get("training_config") or {}
    value = config.get("global_batch_size")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _local_python_path(cf: CampaignFile) -> None:
    """A local campaign's ``python_path`` on this process's path, as its jobs have it: the
    reward function is imported here too."""
    import sys

    from tuneloop.config.backend import job_backend_config

    for folder in reversed(job_backend_config(cf.campaign).get("python_path") or []):
        if folder not in sys.path:
            sys.path.insert(0, folder)


# --- what the jobs left ------------------------------------------------------------------------


def complete_outcome(cf: CampaignFile, outcome: RoundOutcome) -> RoundOutcome:
    """The outcome with the stages' curves, the evaluation's format compliance and the base
    model's positive-reward share."""
    update: dict[str, Any] = {"stage_series": stage_series(cf, outcome)}
    campaign = cf.campaign
    fmt = campaign.evaluation.output_format
    if fmt is not None:
        # A rate the gate judges must be measured: its absence fails the round with the reason.
        gated = FORMAT_COMPLIANCE in {campaign.gate.primary_metric, *campaign.gate.targets}
        if outcome.evaluation is not None:
            update["evaluation"] = _with_compliance(outcome.evaluation, fmt, "evaluation", gated)
        update["baseline"] = _with_compliance(outcome.baseline, fmt, "baseline evaluation", gated)
    update["baseline_positive_fraction"] = baseline_positive_fraction(cf, outcome)
    return outcome.model_copy(update=update)


def stage_series(cf: CampaignFile, outcome: RoundOutcome) -> dict[str, dict[str, Any]]:
    """Stage name -> its curves: what the job left (output folder; its MLflow run on the AWS
    backends) merged with what was read live from its log (the live points win on a step both
    have: they are what the monitors judged)."""
    from tuneloop.artifacts.series import merge, read_series

    bands = cf.campaign.monitoring.reward_bands
    curves: dict[str, dict[str, Any]] = {}
    for planned in outcome.planned.plan.stages:
        status = outcome.stages.get(planned.name)
        if status is None:
            continue
        parts = []
        if status.result_uri:
            try:
                folder = job_folder(status.result_uri)
                parts.append(read_series(folder, bands=(bands.high, bands.low)))
            except Exception as exc:  # the record stands without the curves
                log.warning("Could not read the %s job's curves: %s", planned.name, exc)
        parts.append(_job_run_series(cf, planned.recipe))
        parts.append(status.series)
        curves[planned.name] = merge(*parts)
    return curves


def job_folder(result_uri: str) -> str:
    """The folder a job's outputs are under: a training job's result is
    ``<job>/output/output.tar.gz`` and its TensorBoard events are beside it, under
    ``<job>/tensorboard/``; other backends' results are the folder itself."""
    suffix = "/output/output.tar.gz"
    return result_uri[: -len(suffix) + 1] if result_uri.endswith(suffix) else result_uri


def _job_run_series(cf: CampaignFile, recipe: Mapping[str, Any]) -> dict[str, Any]:
    """The curves a Nova job logged to its own MLflow run (``run.mlflow_tracking_uri``, set
    from the campaign's ``mlflow_uri``); the local trainer logs none."""
    if cf.campaign.backend.type == "local":
        return {}
    run = recipe.get("run") or {}
    uri, name = str(run.get("mlflow_tracking_uri") or ""), str(run.get("mlflow_run_name") or "")
    if not uri or not name:
        return {}
    try:
        from tuneloop.tracking.credentials import mlflow_credentials
        from tuneloop.tracking.job_runs import read_mlflow_series

        with mlflow_credentials(cf.campaign.backend.mlflow_conn_id):
            return read_mlflow_series(
                uri, experiment=str(run.get("mlflow_experiment_name") or ""), run_name=name
            )
    except Exception as exc:  # tracking is a mirror: the round goes on without it
        log.warning("Could not read the MLflow run %s of the job: %s", name, exc)
        return {}


def _with_compliance(evaluation: Any, fmt: Any, what: str, required: bool) -> Any:
    """The evaluation with its ``format_compliance`` rate; when the gate does not read the rate,
    an evaluation whose answers cannot be read goes on without it."""
    from tuneloop.artifacts.format_compliance import format_compliance_of

    if not evaluation.result_uri:
        return evaluation
    try:
        result = format_compliance_of(evaluation.result_uri, fmt)
    except Exception as exc:
        if required:
            raise
        log.warning("Could not measure the %s's format compliance: %s", what, exc)
        return evaluation
    log.info(
        "The %s's answers have the declared format %.1f%% of the time (%d checked)",
        what,
        100 * result.rate,
        result.checked,
    )
    metrics = {**evaluation.metrics, FORMAT_COMPLIANCE: result.rate}
    return evaluation.model_copy(update={"metrics": metrics})


def baseline_positive_fraction(cf: CampaignFile, outcome: RoundOutcome) -> float | None:
    """The base model's share of positive rewards: its evaluation answers scored by the first
    RFT stage's reward function. Measured once per campaign (the ledger's baseline record keeps
    the first value); None without an RFT stage, an answer file or a probe."""
    from tuneloop.config.paths import campaign_root
    from tuneloop.rounds.ledger import Ledger

    campaign = cf.campaign
    stage = next((s for s in outcome.planned.plan.stages if s.method is Method.RFT), None)
    if stage is None or not campaign.reward_probe.enabled or not outcome.baseline.result_uri:
        return None
    if _baseline_recorded(Ledger(campaign_root(campaign)), outcome):
        return None
    try:
        from tuneloop.artifacts.format_compliance import read_inference_outputs
        from tuneloop.pipeline.reward_lambda import invoker_for
        from tuneloop.rounds.reward_probe import positive_fraction_of

        settings = campaign.reward_probe
        _local_python_path(cf)
        invoke = invoker_for(
            reward_function_of(stage),
            settings,
            aws_conn_id=getattr(campaign.backend, "aws_conn_id", None),
        )
        share = positive_fraction_of(
            invoke,
            read_inference_outputs(outcome.baseline.result_uri),
            batch_size=settings.batch_size,
            concurrency_limit=concurrency_limit(stage.recipe),
        )
    except Exception as exc:  # advice only: the round is judged without it
        log.warning("Could not score the base model's answers with the reward function: %s", exc)
        return None
    if share is not None:
        log.info("The base model earns a positive reward on %.1f%% of its answers", 100 * share)
    return share


def _baseline_recorded(ledger: Any, outcome: RoundOutcome) -> bool:
    """Whether an earlier round already recorded the base model's evaluation (and with it the
    share, if it was measured)."""
    from tuneloop.rounds.record import outcome_baseline_digest

    return ledger.read_baseline(outcome_baseline_digest(outcome)) is not None
