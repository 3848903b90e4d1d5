"""A real local RFT job stopped early by live monitoring, under dag.test.

The job trains the tiny chat model with GRPO on the local backend; its reward function
(``fakes.failing_rewards:failing``) scores the first ``GOOD`` steps, then fails every sample of
the next ``FAILING`` steps, then stops answering. With ``monitoring: {reward_errors: {max_rate:
0.2, for_steps: FAILING}}`` the training task defers, the trigger reads the job's metrics lines,
the reward_errors detector fires at step ``GOOD + FAILING``, and the trigger stops the job: the
task succeeds with ``stopped_early`` and the GPU-hours the rest of the job would have cost.

The saving is counted for the campaign's instance type, not for this machine: the test names
``ml.p5.48xlarge`` (8 GPUs) as the job's instance, as a campaign on SageMaker would, with the
recipe's one instance (``run.replicas: 1``) and the pace the local job kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tuneloop.jobs.base import JobSpec, JobState, job_name
from tuneloop.jobs.local import LocalJobBackend

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent

GOOD = 20
"""Steps the reward function scores before it fails."""
FAILING = 2
"""Steps whose every sample fails: FAILING <= GOOD / 9 keeps the trainer's own 10% limit."""
MAX_STEPS = 40
INSTANCE_TYPE = "ml.p5.48xlarge"
GPUS = 8


def rft_job(demo_data: dict[str, Path], tmp_path: Path) -> dict[str, Any]:
    from tuneloop.recipes.catalog import Platform
    from tuneloop.recipes.render import render_recipe
    from tuneloop.recipes.rules import RecipeContext

    data = tmp_path / "rft.jsonl"
    data.write_text(
        "\n".join(demo_data["rft"].read_text(encoding="utf-8").splitlines()[:12]) + "\n",
        encoding="utf-8",
    )
    recipe = render_recipe(
        REPO / "recipes" / "local" / "rft-lora.yaml",
        {
            "training_config.global_batch_size": 16,
            "training_config.rollout.advantage_strategy.number_generation": 4,
            "training_config.trainer.max_steps": MAX_STEPS,
            "run.reward_lambda_arn": "fakes.failing_rewards:failing",
            "run.data_s3_path": str(data),
            "run.output_s3_path": str(tmp_path / "out"),
        },
        context=RecipeContext(platform=Platform.LOCAL),
    ).data
    return JobSpec(
        name=job_name("early", 1, "rft", recipe),
        kind="train",
        method="rft",
        recipe=recipe,
        output_uri=str(tmp_path / "out"),
        labels={"campaign": "early", "round": "1", "stage": "rft"},
    ).model_dump(mode="json")


@pytest.mark.slow  # a real GRPO job: model load and some twenty steps on the CPU
def test_reward_errors_stop_a_real_rft_job_early(
    airflow: Any,
    dags: dict[str, Any],
    tiny_chat_home: Path,
    demo_data: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pytest.importorskip("trl")
    from datetime import timedelta

    record = tmp_path / "reward-calls.txt"
    backend = LocalJobBackend(
        str(tmp_path / "jobs"),
        python_path=[str(TESTS)],
        env={
            "TUNELOOP_HOME": str(tiny_chat_home),
            "TUNELOOP_DEVICE": "cpu",
            "TUNELOOP_TORCH_THREADS": "1",
            "FAILING_REWARDS_GOOD": str(GOOD),
            "FAILING_REWARDS_FAILING": str(FAILING),
            "FAILING_REWARDS_RECORD": str(record),
        },
        grace=5.0,
    )
    job = rft_job(demo_data, tmp_path)
    dag = dags["tuneloop_train"]
    task = dag.task_dict["train"]
    saved = (task.execution_timeout, task.monitoring, task.instance_type)
    task.execution_timeout = timedelta(seconds=600)
    task.monitoring = {"reward_errors": {"max_rate": 0.2, "for_steps": FAILING}}
    task.instance_type = INSTANCE_TYPE
    try:
        run = airflow.run_dag(dag, {"backend": backend.config(), "job": job})
    finally:
        task.execution_timeout, task.monitoring, task.instance_type = saved

    assert run.state == "success"
    result = airflow.xcom("tuneloop_train", run.run_id, "train")
    stopped_at = GOOD + FAILING

    # Monitoring stopped it, at the step that completed the run of errors, before its end.
    assert result["state"] == "STOPPED"
    assert backend.status(job["name"]).state is JobState.STOPPED
    assert result["stopped_early"].startswith("reward_errors (fail_round): the reward function")
    [finding] = result["findings"]
    assert (finding["detector"], finding["policy"], finding["step"]) == (
        "reward_errors",
        "fail_round",
        stopped_at,
    )
    errors = dict((step, rate) for step, rate in result["series"]["reward_error_rate"])
    assert max(errors) == stopped_at < MAX_STEPS
    assert [errors[s] for s in range(1, stopped_at + 1)] == [0.0] * GOOD + [1.0] * FAILING
    assert len(result["series"]["reward_mean"]) == GOOD  # failed steps have no reward
    # The trainer's own failure limit never ended it (STOPPED, not FAILED): the call after the
    # failing run blocks, and the trainer may or may not have started it before the stop came.
    calls = record.read_text().split()
    assert calls[: GOOD + FAILING] == ["good"] * GOOD + ["error"] * FAILING
    assert calls[GOOD + FAILING :] in ([], ["blocked"])

    # What stopping it saved, counted on the campaign's instance type.
    hours = result["saved_gpu_hours"]
    out = capsys.readouterr().out
    line = next(text for text in out.splitlines() if f"Stopped job {job['name']} at step" in text)
    print(
        f"\nscenario: {MAX_STEPS}-step RFT job stopped at step {stopped_at} by reward_errors "
        f"(max_rate 0.2 for {FAILING} steps); counted as 1 x {INSTANCE_TYPE} ({GPUS} GPUs): "
        f"about {hours:.4g} GPU-hours saved\n{line}"
    )
    assert hours > 0
    assert f"at step {stopped_at} of {MAX_STEPS}: reward_errors (fail_round)" in line
    assert f"about {hours:.3g} GPU-hours saved" in line
    assert f"{MAX_STEPS - stopped_at} steps left at" in line
    assert f"1 x {INSTANCE_TYPE} ({GPUS} GPUs each)" in line
