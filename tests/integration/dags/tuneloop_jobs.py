"""DAGs the operator tests run with ``dag.test()``: one job task each, configured by run conf.

``backend`` and ``job`` come from the run's conf (rendered as native objects), so each test
points the same DAG at its own job folder, backend and script.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Param, task

from tuneloop.pipeline.operators import EvaluationJobOperator, TrainingJobOperator

PARAMS = {
    "backend": Param({}, type="object"),
    "job": Param({}, type="object"),
    "mlflow_run_url": Param("", type="string"),
}
FAST = {
    "poll_interval": 0.2,
    "retry_backoff": 0.2,
    "max_retry_backoff": 1.0,
    "execution_timeout": timedelta(seconds=60),
}


def release_the_job(context: Any) -> None:
    """Create the file the job's fake script waits for (``job.recipe.fake.wait_for``)."""
    Path(context["params"]["job"]["recipe"]["fake"]["wait_for"]).touch()


with DAG(
    "tuneloop_train",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    params=PARAMS,
    render_template_as_native_obj=True,
):
    TrainingJobOperator(
        task_id="train",
        backend="{{ params.backend }}",
        job="{{ params.job }}",
        mlflow_run_url="{{ params.mlflow_run_url }}",
        **FAST,
    )

with DAG(
    "tuneloop_evaluate",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    params=PARAMS,
    render_template_as_native_obj=True,
):
    EvaluationJobOperator(
        task_id="evaluate", backend="{{ params.backend }}", job="{{ params.job }}", **FAST
    )

with DAG(
    "tuneloop_train_retry",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    params=PARAMS,
    render_template_as_native_obj=True,
):
    # The job waits for its ``wait_for`` file, which only try 1's retry creates: try 1 always
    # reaches its deadline, try 2 reconnects to the same job and sees it end (the deadline is
    # generous for that: the job needs a moment once released).
    TrainingJobOperator(
        task_id="train",
        backend="{{ params.backend }}",
        job="{{ params.job }}",
        poll_interval=0.2,
        execution_timeout=timedelta(seconds=10),
        retries=1,
        retry_delay=timedelta(seconds=0),
        on_retry_callback=release_the_job,
    )

with DAG(
    "tuneloop_train_from_xcom",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    params=PARAMS,
    render_template_as_native_obj=True,
):

    @task
    def plan_job(params: dict | None = None) -> dict:
        """Stands for the task that renders the recipe and computes the job name."""
        assert params is not None
        return dict(params["job"])

    TrainingJobOperator(task_id="train", backend="{{ params.backend }}", job=plan_job(), **FAST)
