"""A training job's own MLflow run, read back as canonical training curves.

Nova jobs log their metrics to MLflow when the recipe sets ``run.mlflow_tracking_uri`` (a
SageMaker managed MLflow app, or any tracking server), in a run named by
``run.mlflow_experiment_name`` and ``run.mlflow_run_name``. `read_mlflow_series` finds that run
(by id, or by experiment and run name: the latest run of that name, as a retried job starts a
new one) and returns every metric's history normalized by `tuneloop.artifacts.series` (NaN
values kept; a step logged twice keeps its latest value).

A run or experiment that does not exist yet gives no series: a job that has not started
logging has no curves. A server that cannot be reached, or refuses, is a `TrackingError` that
names the URI and what to check.

mlflow is imported inside functions: DAG files import this module at parse time.
"""

from __future__ import annotations

from typing import Any

from tuneloop.artifacts.series import Series, normalize
from tuneloop.errors import Problem
from tuneloop.tracking.mirror import TrackingError, quiet_mlflow, resolve_store

RUN_NAME_TAG = "mlflow.runName"


def read_mlflow_series(
    tracking_uri: str, run_id: str | None = None, *, experiment: str = "", run_name: str = ""
) -> Series:
    """The canonical series of a job's MLflow run: ``run_id``, else the latest run named
    ``run_name`` in ``experiment``. Empty when no such run (or experiment) exists yet."""
    if not run_id and not (experiment and run_name):
        raise ValueError("name the run: its id, or its experiment and run name")
    try:
        store = resolve_store(tracking_uri)
    except TrackingError as error:
        raise TrackingError([_about_recipe(problem) for problem in error.problems]) from None
    import requests
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=store.uri)
    what = f"run {run_id}" if run_id else f"run {run_name!r} of experiment {experiment!r}"
    try:
        with quiet_mlflow(store.uri):
            run = _run(client, run_id, experiment, run_name)
            if run is None:
                return {}
            return normalize(_histories(client, run))
    except (MlflowException, requests.RequestException, OSError) as error:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise TrackingError(
            [
                Problem(
                    "run.mlflow_tracking_uri",
                    f"cannot read the metrics of {what} at {store.uri}: {detail}",
                    source="MLflow",
                    fix="check that the tracking server is up and reachable from this worker, "
                    "and that its credentials may read the job's experiment",
                )
            ]
        ) from None


def _about_recipe(problem: Problem) -> Problem:
    """A tracking URI problem, located in the recipe field the job's URI comes from."""
    return Problem(
        "run.mlflow_tracking_uri",
        problem.message,
        source=problem.source,
        allowed=problem.allowed,
        fix=problem.fix,
    )


def _run(client: Any, run_id: str | None, experiment: str, run_name: str) -> Any:
    """The run by id, else the latest run of that name in the experiment; None if absent."""
    from mlflow.exceptions import MlflowException

    if run_id:
        try:
            return client.get_run(run_id)
        except MlflowException as error:
            if getattr(error, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    quoted = run_name.replace("'", "\\'")
    runs = client.search_runs(
        [found.experiment_id],
        filter_string=f"tags.`{RUN_NAME_TAG}` = '{quoted}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def _histories(client: Any, run: Any) -> dict[str, list[tuple[int, float]]]:
    """Every metric of the run: (step, value) points, a step's latest value last."""
    scalars: dict[str, list[tuple[int, float]]] = {}
    for key in sorted(run.data.metrics):
        history = client.get_metric_history(run.info.run_id, key)
        ordered = sorted(history, key=lambda m: (m.step, m.timestamp))
        scalars[key] = [(int(m.step), float(m.value)) for m in ordered]
    return scalars
