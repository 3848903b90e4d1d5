"""A job's own MLflow run read back as canonical curves, from a real ``mlflow server``."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlflow_server import MlflowServer, free_port
from tuneloop.artifacts import series as S
from tuneloop.tracking.job_runs import read_mlflow_series
from tuneloop.tracking.mirror import TrackingError

EXPERIMENT = "my-rft-experiment"
RUN_NAME = "my-rft-run"


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = MlflowServer(tmp_path_factory.mktemp("job-runs-mlflow"))
    try:
        server.start()
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()


def log_job_run(
    uri: str, rewards: list[float], *, experiment: str = EXPERIMENT, started_late: bool = False
) -> str:
    """A run as a Nova RFT job logs it (verl's names; ``@`` spelt ``_at_`` for MLflow)."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    now = int(time.time() * 1000)
    run = client.create_run(
        experiment_id, start_time=now + (60_000 if started_late else 0), run_name=RUN_NAME
    )
    metrics = [
        Metric("critic/rewards/mean", value, now, step)
        for step, value in enumerate(rewards, start=1)
    ]
    metrics += [
        Metric("val-score/rewards/mean_at_1", 0.3, now, 2),
        Metric("response_length/clip_ratio", 0.25, now, 1),
        Metric("actor/pg_loss", 0.01, now, 1),  # no canonical series
        Metric("critic/rewards/max", 0.5, now, 1),
        Metric("critic/rewards/max", 0.9, now + 5, 1),  # logged again later: this one counts
        Metric("critic/rewards/std", math.nan, now, 1),
    ]
    client.log_batch(run.info.run_id, metrics=metrics)
    client.set_terminated(run.info.run_id)
    return str(run.info.run_id)


@pytest.mark.slow
def test_the_job_run_by_id_and_by_name(tracking_server: str) -> None:
    first = log_job_run(tracking_server, [0.1, 0.2, 0.4])
    series = read_mlflow_series(tracking_server, first)
    assert series[S.REWARD_MEAN] == [(1, 0.1), (2, 0.2), (3, 0.4)]
    assert series[S.VAL_REWARD_MEAN] == [(2, 0.3)]
    assert series[S.ROLLOUT_COMPLETION] == [(1, 0.75)]
    assert series[S.REWARD_MAX] == [(1, 0.9)]
    assert series[S.POLICY_UPDATES] == [(1, 1.0), (2, 2.0), (3, 3.0)]
    ((step, std),) = series[S.REWARD_STD]
    assert step == 1 and math.isnan(std)  # NaN is kept
    assert set(series) == {
        S.REWARD_MEAN,
        S.VAL_REWARD_MEAN,
        S.ROLLOUT_COMPLETION,
        S.REWARD_MAX,
        S.REWARD_STD,
        S.POLICY_UPDATES,
    }

    # A retried job logs a second run of the same name: the latest is the job's.
    log_job_run(tracking_server, [0.7], started_late=True)
    by_name = read_mlflow_series(tracking_server, experiment=EXPERIMENT, run_name=RUN_NAME)
    assert by_name[S.REWARD_MEAN] == [(1, 0.7)]


@pytest.mark.slow
def test_a_run_not_there_yet_has_no_curves(tracking_server: str) -> None:
    assert read_mlflow_series(tracking_server, experiment="never-made", run_name=RUN_NAME) == {}
    log_job_run(tracking_server, [0.5], experiment="other-experiment")
    assert read_mlflow_series(tracking_server, experiment="other-experiment", run_name="x") == {}
    assert read_mlflow_series(tracking_server, "0" * 32) == {}


def test_an_unreachable_server_is_a_tracking_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(TrackingError) as caught:
        read_mlflow_series(uri, "0" * 32)
    text = str(caught.value)
    assert "run.mlflow_tracking_uri" in text and f"run {'0' * 32}" in text and uri in text
    assert "check that the tracking server is up" in text
    assert "Traceback" not in text


def test_the_run_must_be_named_and_the_uri_valid(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="its id, or its experiment and run name"):
        read_mlflow_series(str(tmp_path), experiment=EXPERIMENT)
    with pytest.raises(TrackingError, match=r"run\.mlflow_tracking_uri: .* is not a SageMaker"):
        read_mlflow_series("arn:aws:s3:::bucket", "abc")
