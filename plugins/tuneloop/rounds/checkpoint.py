"""What a stage of the round leaves behind, and the job that starts from it."""

from __future__ import annotations

from tuneloop.artifacts.manifest import Checkpoint, read_checkpoint, read_checkpoint_uri
from tuneloop.config.file import CampaignFile
from tuneloop.rounds.boxes import PlannedRound, StageCheckpoint, StageOutcome
from tuneloop.rounds.specs import evaluation_job, stage_job


def stage_checkpoint(
    cf: CampaignFile,
    planned: PlannedRound,
    index: int,
    result: StageOutcome | None,
    previous: StageCheckpoint | None,
) -> StageCheckpoint:
    """What stage ``index`` produced from its job's ``result`` (or, when the run left it out,
    what it passes through from ``previous``, the stage before it), with the next job: the
    next stage's, or the evaluation's after the last stage."""
    plan = planned.plan
    base = previous.uri if previous is not None else plan.base_model
    # Monitoring stopped this stage's job (or an earlier one): what it left is no checkpoint
    # to build on, so no later job runs (next_job None) and the round is recorded as failed.
    name = plan.stages[index].name
    if previous is not None and previous.stopped:
        return StageCheckpoint(stage=name, uri=base, stopped=previous.stopped)
    if result is not None and result.stopped_early:
        why = f"monitoring stopped the {name} job: {result.stopped_early}"
        return StageCheckpoint(stage=name, uri=base, stopped=why)
    point = _checkpoint(cf, planned, index, result, base)
    if index + 1 < len(plan.stages):
        next_job = stage_job(plan, planned.round_root, index + 1, point.uri, planned.start.stages)
    else:
        next_job = evaluation_job(plan, planned.round_root, point.uri)
    return point.model_copy(update={"next_job": next_job})


def _checkpoint(
    cf: CampaignFile, planned: PlannedRound, index: int, result: StageOutcome | None, base: str
) -> StageCheckpoint:
    stage = planned.plan.stages[index]
    if result is None:
        return StageCheckpoint(stage=stage.name, uri=base, skipped=True)
    output = result.result_uri
    found = read_checkpoint(output, path=f"stages[{index}]")
    if found is None:
        campaign = cf.campaign
        found = Checkpoint(
            uri=read_checkpoint_uri(output, path=f"stages[{index}]"),
            model_type=campaign.model_type,
            technique=stage.technique,
            platform=campaign.platform,
            lineage=(stage.method,),
            output_uri=output,
        )
    found = found.model_copy(update={"output_uri": found.output_uri or output})
    return StageCheckpoint(stage=stage.name, uri=found.uri, checkpoint=found)
