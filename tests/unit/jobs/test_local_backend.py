"""LocalJobBackend against real job processes (the instant entry point, so no training)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tuneloop.artifacts.evaluation import read_eval_metrics
from tuneloop.artifacts.manifest import read_checkpoint
from tuneloop.jobs import make_backend
from tuneloop.jobs.base import (
    JobBackend,
    JobNotFoundError,
    JobSpec,
    JobState,
    UserJobError,
    job_name,
)
from tuneloop.jobs.local import LocalJobBackend

TESTS = Path(__file__).resolve().parents[2]


@pytest.fixture
def backend(tmp_path: Path) -> LocalJobBackend:
    return LocalJobBackend(
        str(tmp_path / "jobs"),
        entrypoint="fakes.instant_jobs:run",
        python_path=[str(TESTS)],
        grace=2.0,
    )


def spec_for(tmp_path: Path, kind: str = "train", method: str = "sft", **fake: object) -> JobSpec:
    recipe = {"run": {"model_type": "tiny-chat"}, "fake": fake}
    return JobSpec(
        name=job_name("demo", 1, method, recipe),
        kind=kind,
        method=method,
        recipe=recipe,
        output_uri=str(tmp_path / "out"),
        labels={"campaign": "demo", "round": "1", "stage": method},
    )


def wait_final(backend: JobBackend, name: str, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while True:
        status = backend.status(name)
        if status.final or time.monotonic() > deadline:
            return status
        time.sleep(0.05)


def test_config_round_trips_through_make_backend(backend: LocalJobBackend) -> None:
    rebuilt = make_backend(json.loads(json.dumps(backend.config())))
    assert isinstance(rebuilt, LocalJobBackend)
    assert rebuilt.config() == backend.config()
    assert isinstance(rebuilt, JobBackend)
    assert backend.config()["type"] == "local"


def test_training_job_writes_a_manifest_in_its_output_folder(
    backend: LocalJobBackend, tmp_path: Path
) -> None:
    spec = spec_for(tmp_path, log_lines=3)
    submitted = backend.submit(spec)
    assert submitted.name == spec.name and submitted.state in (JobState.PENDING, JobState.RUNNING)
    status = wait_final(backend, spec.name)
    assert status.state is JobState.SUCCEEDED, status
    assert status.result_uri == f"{tmp_path / 'out'}/{spec.name}"
    assert status.labels == spec.labels
    assert status.started_at and status.ended_at and status.billable_seconds is not None
    # The job's page on the Airflow API server ([api] base_url, else localhost:8080).
    assert status.console_url.startswith("http") and f"/tuneloop/jobs/{spec.name}?root=" in (
        status.console_url
    )
    checkpoint = read_checkpoint(status.result_uri)
    assert checkpoint is not None and Path(checkpoint.uri).is_dir()
    assert [m.value for m in checkpoint.lineage] == ["sft"]

    chunk = backend.logs(spec.name)
    assert [line for line in chunk.lines if "line" in line] == [
        f"{spec.name} line {i}" for i in (1, 2, 3)
    ]
    assert backend.logs(spec.name, chunk.cursor).lines == []


def test_submit_is_idempotent_by_name(backend: LocalJobBackend, tmp_path: Path) -> None:
    spec = spec_for(tmp_path, sleep=0.5)
    first = backend.submit(spec)
    second = backend.submit(spec)
    assert first.name == second.name
    wait_final(backend, spec.name)
    assert len(backend.find({"campaign": "demo"})) == 1
    assert len(list((tmp_path / "jobs").iterdir())) == 1


def test_eval_job_metrics_are_read_from_its_result_uri(
    backend: LocalJobBackend, tmp_path: Path
) -> None:
    spec = spec_for(tmp_path, kind="eval", method="eval", metrics={"accuracy": 0.75})
    backend.submit(spec)
    status = wait_final(backend, spec.name)
    assert status.state is JobState.SUCCEEDED, status
    assert read_eval_metrics(status.result_uri) == {"accuracy": 0.75}


def test_failed_job_carries_its_reason_and_is_not_retryable(
    backend: LocalJobBackend, tmp_path: Path
) -> None:
    spec = spec_for(tmp_path, fail="bad data in row 7")
    backend.submit(spec)
    status = wait_final(backend, spec.name)
    assert status.state is JobState.FAILED
    assert "bad data in row 7" in status.failure_reason
    assert status.retryable is False


def test_cancel_stops_a_running_job_and_leaves_a_finished_one(
    backend: LocalJobBackend, tmp_path: Path
) -> None:
    spec = spec_for(tmp_path, sleep=30)
    backend.submit(spec)
    deadline = time.monotonic() + 120  # a job process starts slowly on a busy machine
    while backend.status(spec.name).state is not JobState.RUNNING:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert backend.cancel(spec.name).state is JobState.STOPPED
    assert backend.status(spec.name).state is JobState.STOPPED
    assert backend.cancel(spec.name).state is JobState.STOPPED


def test_find_selects_by_labels(backend: LocalJobBackend, tmp_path: Path) -> None:
    sft, rft = spec_for(tmp_path), spec_for(tmp_path, method="rft")
    for spec in (sft, rft):
        backend.submit(spec)
    for spec in (sft, rft):
        wait_final(backend, spec.name)
    assert [s.name for s in backend.find({"stage": "rft"})] == [rft.name]
    assert {s.name for s in backend.find({"campaign": "demo"})} == {sft.name, rft.name}
    assert backend.find({"campaign": "other"}) == []


def test_unknown_job_and_bad_names_are_typed_errors(
    backend: LocalJobBackend, tmp_path: Path
) -> None:
    with pytest.raises(JobNotFoundError):
        backend.status("no-such-job")
    with pytest.raises(JobNotFoundError):
        backend.logs("no-such-job")
    bad = spec_for(tmp_path).model_copy(update={"name": "Not_A_Name"})
    with pytest.raises(UserJobError):
        backend.submit(bad)


def test_s3_output_is_refused_with_a_fix(backend: LocalJobBackend, tmp_path: Path) -> None:
    spec = spec_for(tmp_path).model_copy(update={"output_uri": "s3://bucket/out"})
    with pytest.raises(UserJobError, match="local folders"):
        backend.submit(spec)


def test_unfinished_log_line_waits_for_its_end(backend: LocalJobBackend, tmp_path: Path) -> None:
    spec = spec_for(tmp_path, sleep=30)
    backend.submit(spec)
    log = tmp_path / "jobs" / spec.name / "job.log"
    with log.open("a") as handle:
        handle.write("whole line\npartial")
    chunk = backend.logs(spec.name)
    assert chunk.lines[-1] == "whole line"
    backend.cancel(spec.name)
    rest = backend.logs(spec.name, chunk.cursor)
    assert rest.lines and rest.lines[0].startswith("partial")
