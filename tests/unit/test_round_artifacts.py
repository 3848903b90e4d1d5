"""What a round reads from its jobs before it is judged (`pipeline.round_artifacts`): where a
training job's curves are, and what an RFT recipe says about its reward calls."""

from __future__ import annotations

from pathlib import Path

from tuneloop.artifacts.series import read_series
from tuneloop.pipeline.round_artifacts import concurrency_limit, job_folder, step_samples


def test_a_training_jobs_curves_are_read_beside_its_output_tarball(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    job = tmp_path / "out" / "demo-r1-sft-0123456789"
    (job / "output").mkdir(parents=True)
    (job / "output" / "output.tar.gz").write_bytes(b"not read here")
    writer = SummaryWriter(str(job / "tensorboard"))
    for step, loss in ((1, 2.5), (2, 1.5)):
        writer.add_scalar("reduced_train_loss", loss, step)
    writer.close()

    folder = job_folder(str(job / "output" / "output.tar.gz"))
    assert folder == f"{job}/"
    assert read_series(folder)["train_loss"] == [(1, 2.5), (2, 1.5)]
    assert job_folder("s3://b/out/job/output/output.tar.gz") == "s3://b/out/job/"
    assert job_folder("s3://b/out/job/") == "s3://b/out/job/"  # HyperPod, local: the folder


def test_the_reward_calls_an_rft_recipe_makes() -> None:
    hyperpod = {"run": {}, "training_config": {"global_batch_size": 160, "rollout": {}}}
    hyperpod["training_config"]["rollout"] = {
        "rewards": {"api_endpoint": {"lambda_concurrency_limit": 100}}
    }
    assert concurrency_limit(hyperpod) == 100
    assert step_samples(hyperpod) == 160
    assert concurrency_limit({"run": {}}) is None and step_samples({"run": {}}) is None
    assert concurrency_limit({"x": [{"lambda_concurrency_limit": True}]}) is None
