"""The round's datasets: which to check, and the check (before any job is submitted)."""

from __future__ import annotations

from tuneloop.config.backend import aws_connection
from tuneloop.config.file import CampaignFile
from tuneloop.errors import TuneloopError
from tuneloop.recipes.catalog import Method
from tuneloop.rounds.boxes import DatasetCheck, DatasetItem, RoundPlan

DATA_FORMATS = {Method.SFT: "sft", Method.CPT: "cpt", Method.RFT: "rft"}
EVAL_DATA_FORMATS = {"gen_qa": "gen_qa", "llm_judge": "llm_judge", "rft_eval": "rft"}


class DataInvalidError(TuneloopError):
    """A dataset of the round breaks the format's rules: no job is submitted."""


def datasets_to_validate(cf: CampaignFile, round_plan: RoundPlan) -> list[DatasetItem]:
    """One item per dataset of the round: what the validate_data tasks are mapped over."""
    campaign = cf.campaign
    connection = aws_connection(campaign)
    items = []
    for stage, planned in zip(campaign.stages, round_plan.stages, strict=True):
        max_length = (planned.recipe.get("training_config") or {}).get("max_length")
        for channel, uri in planned.datasets.items():
            items.append(
                DatasetItem(
                    stage=stage.name,
                    channel=channel,
                    uri=uri,
                    format=DATA_FORMATS[stage.method],
                    allow=list(stage.datasets.allow),
                    max_length=max_length,
                    model_type=campaign.model_type,
                    aws_conn_id=connection,
                )
            )
    evaluation = round_plan.evaluation
    if evaluation.dataset and evaluation.task in EVAL_DATA_FORMATS:
        items.append(
            DatasetItem(
                stage="evaluation",
                channel="eval",
                uri=evaluation.dataset,
                format=EVAL_DATA_FORMATS[evaluation.task],
                allow=list(campaign.evaluation.allow),
                model_type=campaign.model_type,
                aws_conn_id=connection,
            )
        )
    domain = (evaluation.recipe.get("run") or {}).get("perplexity_data_path")
    if domain:
        items.append(
            DatasetItem(
                stage="evaluation",
                channel="perplexity",
                uri=domain,
                format="cpt",
                allow=list(campaign.evaluation.allow),
                model_type=campaign.model_type,
                aws_conn_id=connection,
            )
        )
    return items


def validate_dataset(item: DatasetItem) -> DatasetCheck:
    """Validate one dataset; raise DataInvalidError (no retry) with the first errors."""
    from tuneloop.data.registry import get_format
    from tuneloop.data.validator import Options, validate_dataset
    from tuneloop.recipes.catalog import MODELS

    options = Options(
        allow=frozenset(item.allow),
        max_errors=20,
        max_length=item.max_length,
        role="validation" if item.channel == "validation" else "train",
    )
    report = validate_dataset(
        item.uri, get_format(item.format), MODELS[item.model_type], options=options
    )
    if not report.ok:
        raise DataInvalidError(report.to_text())
    return DatasetCheck(
        stage=item.stage,
        channel=item.channel,
        uri=item.uri,
        sha256=report.sha256,
        records=report.records,
        ok=report.ok,
        errors=report.invalid_records,
        report=report.to_dict(),
    )
