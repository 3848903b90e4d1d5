"""Training monitoring and the reward probe under the real scheduler, triggerer and workers.

- A campaign whose reward function scores everything 0 fails at ``probe_reward``: no training
  job is started, and the task's log says what is wrong and how to fix it.
- A training job whose log reports a NaN loss is stopped by the waiting trigger (in the
  triggerer, no worker slot held) while it still runs: the stage is recorded as stopped early
  with its finding and curves, the evaluation is skipped, and the gate records the round as
  failed.

The fake trainer prints the log lines and holds the job until a file exists (which no test
creates before the end), so the stop can only come from the monitor.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.campaigns import SFT_ONLY, SFT_THEN_RFT, campaign_text
from e2e.conftest import Stack
from e2e.scenarios import Gates, task_log
from tuneloop.jobs.state import JobState

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(900)]


@pytest.fixture
def gates(stack: Stack) -> Iterator[Gates]:
    held = Gates(stack)
    yield held
    held.release_all()


def _campaign_text(stack: Stack, name: str, stages: tuple[str, ...], **changes: object) -> str:
    document = json.loads(
        campaign_text(
            name,
            output_root=stack.project_dir / "outputs",
            data=stack.data_dir,
            mlflow_uri=stack.mlflow.url,
            stages=stages,
            gate={"max_rounds": 1},
        )
    )
    for stage in document["stages"]:
        if stage["method"] == "rft" and "reward_function" in changes:
            stage["reward_function"] = changes["reward_function"]
    return json.dumps(document, indent=2) + "\n"


def test_a_reward_function_that_scores_everything_zero_stops_the_round_before_any_job(
    stack: Stack,
) -> None:
    name = "e2e-probe-fails"
    text = _campaign_text(
        stack, name, SFT_THEN_RFT, reward_function="fakes.reward_functions:scores_zero"
    )
    campaign = stack.write_campaign(name, text)
    stack.wait_for_dag(campaign.dag_id)
    run_id = stack.client.trigger(campaign.dag_id, {})["dag_run_id"]
    stack.wait_for_run(campaign.dag_id, run_id, state="failed")

    states = stack.task_states(campaign.dag_id, run_id)
    assert states["probe_reward"] == "failed", states
    for task in ("train_sft", "train_rft", "evaluate", "decide"):
        assert states[task] == "upstream_failed", (task, states)
    assert campaign.jobs(round="1", stage="sft") == []
    assert campaign.jobs(round="1", stage="rft") == []
    log = task_log(stack, campaign.dag_id, run_id, "probe_reward", 1)
    assert "fakes.reward_functions:scores_zero failed its probe" in log, log
    assert "fix:" in log, log
    assert not campaign.record_path(1).exists()


def test_a_nan_loss_stops_the_job_while_it_runs_and_the_round_is_recorded_failed(
    stack: Stack, gates: Gates
) -> None:
    name = "e2e-nan-loss"
    campaign = stack.write_campaign(name, _campaign_text(stack, name, SFT_ONLY))
    never = stack.project_dir / "gates" / f"{name}-never"
    gates.paths.append(never)  # released when the test ends, whatever happened
    lines = [
        "global_step: 1 | reduced_train_loss: 2.5",
        "global_step: 2 | reduced_train_loss: 2.25",
        "global_step: 3 | reduced_train_loss: nan",
    ]
    stack.fake_jobs.metrics(campaign.name, base=0.1, rounds={})
    stack.fake_jobs.add(
        f"campaign={name},round=1,stage=sft", {"log_lines": lines, "wait_for": str(never)}
    )
    stack.wait_for_dag(campaign.dag_id)
    run_id = stack.client.trigger(campaign.dag_id, {})["dag_run_id"]
    stack.wait_for_run(campaign.dag_id, run_id)

    states = stack.task_states(campaign.dag_id, run_id)
    assert states["train_sft"] == "success", states
    assert states["evaluate"] == "skipped", states
    assert states["decide"] == "success", states
    (job,) = campaign.jobs(round="1", stage="sft")
    assert job.state == JobState.STOPPED, job
    assert not never.exists()  # the job never got to finish on its own

    record = campaign.record(1)
    assert "loss_divergence" in record.failed, record.failed
    assert record.metrics == {} and record.evaluation == {}
    (stage,) = record.stages
    assert stage.stopped_early and stage.checkpoint is None
    assert [f.detector for f in stage.findings] == ["loss_divergence"]
    assert stage.findings[0].step == 3 and stage.findings[0].policy == "fail_round"
    assert [step for step, _ in stage.series["train_loss"]] == [1, 2, 3]
    # max_rounds 1: the failed round is the last one.
    assert record.decision.action.value == "stop", record.decision
    assert record.decision.signals.get("failed") == 1

    log = task_log(stack, campaign.dag_id, run_id, "train_sft", 1)
    assert f"Stopped job {job.name} at step 3" in log, log
    assert Path(campaign.root / "report" / "report.md").read_text().count("failed") >= 1
