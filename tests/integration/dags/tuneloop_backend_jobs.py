"""DAGs that run the job operators on the HyperPod and SageMaker training-jobs backends, for
``tests/integration/test_backend_dags.py`` (``dag.test()`` against fake services over HTTP).

Their settings come only from environment variables the test sets before this file is parsed:

- ``TUNELOOP_TEST_BUCKET``: the S3 bucket holding the data and the jobs' outputs;
- ``TUNELOOP_TEST_KUBECONFIG``: a kubeconfig for the Kubernetes API of a HyperPod cluster
  (defines ``tuneloop_hyperpod_train``);
- ``TUNELOOP_TEST_SAGEMAKER_URL``: the SageMaker endpoint (defines
  ``tuneloop_smtj_train_evaluate``).

Without them the file defines no DAG: other tests parse the whole folder.

Job specs are planned by a task at run time, as the round DAG does: the name digests the rendered
recipe and the inputs, so a second run of the same DAG finds the jobs the first one ran.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, task

from tuneloop.pipeline.operators import EvaluationJobOperator, TrainingJobOperator

BUCKET = os.environ.get("TUNELOOP_TEST_BUCKET", "")
KUBECONFIG = os.environ.get("TUNELOOP_TEST_KUBECONFIG", "")
SAGEMAKER_URL = os.environ.get("TUNELOOP_TEST_SAGEMAKER_URL", "")

RECIPES = Path(__file__).resolve().parents[3] / "recipes" / "nova" / "nova-2-lite"
REGION = "us-east-1"
ROLE = "arn:aws:iam::123456789012:role/nova-training"
LOG_LINES = 20
"""Pod log lines a HyperPod failure carries in its reason."""
FAST = {
    "poll_interval": 0.1,
    "retry_backoff": 0.2,
    "max_retry_backoff": 1.0,
    "execution_timeout": timedelta(seconds=60),
}
START = datetime(2026, 1, 1)


def nova_job(
    campaign: str,
    stage: str,
    template: str,
    platform: str,
    overrides: dict[str, Any],
    inputs: dict[str, str],
    output_uri: str,
) -> dict[str, Any]:
    """A JobSpec (as JSON) for round 1 of ``campaign``: the template rendered for ``platform``
    with ``overrides``; its name digests the recipe (run.name left out) and the inputs."""
    from tuneloop.jobs.base import JobKind
    from tuneloop.recipes.catalog import Platform
    from tuneloop.recipes.render import render_recipe
    from tuneloop.recipes.rules import RecipeContext
    from tuneloop.rounds.specs import job_spec

    context = RecipeContext(platform=Platform(platform))
    # run.name must be a valid name to render; job_spec replaces it with the job's name.
    placeholder = {**overrides, "run.name": f"{campaign}-{stage}"}
    recipe = render_recipe(RECIPES / template, placeholder, context=context).data
    kind = JobKind.EVAL if stage == "eval" else JobKind.TRAIN
    method = "eval" if kind is JobKind.EVAL else stage
    return job_spec(campaign, 1, stage, kind, method, recipe, inputs, output_uri).model_dump(
        mode="json"
    )


@task
def checkpoint(result: dict[str, Any]) -> str:
    """The next stage's base: the manifest's checkpoint_s3_bucket, read where the job wrote it."""
    from tuneloop.artifacts.manifest import read_checkpoint_uri

    return read_checkpoint_uri(result["result_uri"])


if BUCKET and KUBECONFIG:
    HYPERPOD = {
        "type": "hyperpod",
        "cluster": "nova-test",
        "region": REGION,
        "aws_conn_id": None,
        "kubeconfig": KUBECONFIG,
        "log_lines": LOG_LINES,
    }
    HYPERPOD_OUTPUT = f"s3://{BUCKET}/hyperpod/"

    with DAG("tuneloop_hyperpod_train", schedule=None, start_date=START, catchup=False):

        @task
        def plan_sft() -> dict[str, Any]:
            data = f"s3://{BUCKET}/data/train.jsonl"
            return nova_job(
                "hp",
                "sft",
                "sft-lora.yaml",
                "hyperpod",
                {"run.data_s3_path": data, "run.output_s3_path": HYPERPOD_OUTPUT},
                {"train": data},
                HYPERPOD_OUTPUT,
            )

        hyperpod_train = TrainingJobOperator(
            task_id="train", backend=HYPERPOD, job=plan_sft(), **FAST
        )
        checkpoint(hyperpod_train.output)

if BUCKET and SAGEMAKER_URL:
    SMTJ = {
        "type": "smtj",
        "region": REGION,
        "role_arn": ROLE,
        "aws_conn_id": None,
        "endpoint_url": SAGEMAKER_URL,
        "botocore_config": {"retries": {"total_max_attempts": 2, "mode": "standard"}},
    }
    SMTJ_OUTPUT = f"s3://{BUCKET}/smtj"

    with DAG("tuneloop_smtj_train_evaluate", schedule=None, start_date=START, catchup=False):

        @task
        def plan_sft() -> dict[str, Any]:
            data = f"s3://{BUCKET}/data/train.jsonl"
            return nova_job("sm", "sft", "sft-lora.yaml", "smtj", {}, {"train": data}, SMTJ_OUTPUT)

        @task
        def plan_eval(base: str) -> dict[str, Any]:
            data = f"s3://{BUCKET}/data/eval.jsonl"
            overrides = {"run.model_name_or_path": base, "run.data_s3_path": data}
            return nova_job(
                "sm", "eval", "eval-gen-qa.yaml", "smtj", overrides, {"eval": data}, SMTJ_OUTPUT
            )

        smtj_train = TrainingJobOperator(task_id="train", backend=SMTJ, job=plan_sft(), **FAST)
        EvaluationJobOperator(
            task_id="evaluate",
            backend=SMTJ,
            job=plan_eval(checkpoint(smtj_train.output)),
            **FAST,
        )
