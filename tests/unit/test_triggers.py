"""JobTrigger on its own event loop, against a backend whose answers the test scripts."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from typing import Any, ClassVar

import pytest
from airflow.sdk.module_loading import import_string

from tuneloop.errors import Problem
from tuneloop.jobs.base import (
    JobNotFoundError,
    JobSpec,
    JobState,
    JobStatus,
    LogChunk,
    TransientJobError,
)
from tuneloop.pipeline.triggers import DEADLINE, FAILURE, SUCCESS, JobTrigger, shared_backend


class StepBackend:
    """Each status call takes the next step of the job's script: a state or an exception.
    Every status call also makes one more log line appear."""

    type: ClassVar[str] = f"{__name__}:StepBackend"
    steps: ClassVar[dict[str, list[Any]]] = {}
    calls: ClassVar[dict[str, int]] = {}
    cancelled: ClassVar[list[str]] = []

    def __init__(self, **settings: Any) -> None:
        self.settings = settings

    def config(self) -> dict[str, Any]:
        return {"type": self.type, **self.settings}

    def submit(self, spec: JobSpec) -> JobStatus:
        raise NotImplementedError

    def status(self, name: str) -> JobStatus:
        step = self.calls.get(name, 0)
        self.calls[name] = step + 1
        plan = self.steps[name]
        item = plan[min(step, len(plan) - 1)]
        if isinstance(item, Exception):
            raise item
        return JobStatus(
            name=name,
            state=JobState(item),
            failure_reason="OOM on node 3" if item == "FAILED" else "",
            retryable=False,
        )

    def cancel(self, name: str) -> JobStatus:
        self.cancelled.append(name)
        return JobStatus(name=name, state=JobState.STOPPED)

    def logs(self, name: str, cursor: str = "") -> LogChunk:
        start = int(cursor or 0)
        end = max(start, self.calls.get(name, 0))
        return LogChunk(lines=[f"line {i}" for i in range(start + 1, end + 1)], cursor=str(end))

    def find(self, labels: Mapping[str, str]) -> list[JobStatus]:
        return []


def run_trigger(trigger: JobTrigger) -> dict[str, Any]:
    async def first_event() -> dict[str, Any]:
        async for event in trigger.run():
            return event.payload
        raise AssertionError("no event")

    return asyncio.run(asyncio.wait_for(first_event(), timeout=120))


def trigger_for(name: str, steps: list[Any], **kwargs: Any) -> JobTrigger:
    StepBackend.steps[name] = steps
    StepBackend.calls[name] = 0
    settings = {"poll_interval": 0.01, "error_backoff": 0.01, **kwargs}
    return JobTrigger({"type": StepBackend.type, "region": "eu-west-1"}, name, **settings)


def test_trigger_is_importable_from_its_classpath_and_rebuilt_from_kwargs() -> None:
    trigger = JobTrigger(
        {"type": "hyperpod", "cluster": "c1", "namespace": "ns", "region": "us-east-1"},
        "demo-r1-sft-0123456789",
        cursor="42",
        poll_interval=15,
        deadline=1234.5,
    )
    classpath, kwargs = trigger.serialize()
    rebuilt = import_string(classpath)(**kwargs)
    assert type(rebuilt) is JobTrigger
    assert rebuilt.serialize() == (classpath, kwargs)
    assert kwargs["backend"]["cluster"] == "c1" and kwargs["cursor"] == "42"
    assert (kwargs["monitoring"], kwargs["stage"], kwargs["method"]) == (None, "", "")


def test_a_watching_trigger_keeps_its_monitoring_settings_through_serialization() -> None:
    import json

    from tuneloop.config.monitoring import Monitoring

    settings = Monitoring.model_validate(
        {"reward_errors": {"policy": "stop_campaign", "max_rate": 0.1, "for_steps": 5}}
    ).model_dump(mode="json")
    trigger = JobTrigger(
        {"type": "smtj", "region": "us-east-1"},
        "demo-r1-rft-0123456789",
        monitoring=settings,
        stage="rft",
        method="rft",
    )
    classpath, kwargs = trigger.serialize()
    # What the triggerer stores is JSON; what it rebuilds from it is the same trigger.
    stored = json.loads(json.dumps(kwargs))
    rebuilt = import_string(classpath)(**stored)
    assert rebuilt.serialize() == (classpath, kwargs)
    assert (rebuilt.stage, rebuilt.method) == ("rft", "rft")
    assert Monitoring.model_validate(rebuilt.monitoring).reward_errors.policy == "stop_campaign"


def logged_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    """The job log lines the trigger wrote to the task log (Airflow logs to stdout here)."""
    return re.findall(r"\[[a-z-]+\] line \d+", capsys.readouterr().out)


def test_success_event_carries_the_status_and_the_cursor(
    capsys: pytest.CaptureFixture[str],
) -> None:
    payload = run_trigger(trigger_for("ok-job", ["PENDING", "RUNNING", "SUCCEEDED"]))
    assert payload["outcome"] == SUCCESS and payload["state"] == "SUCCEEDED"
    assert payload["status"]["name"] == "ok-job"
    assert payload["cursor"] == "3"
    assert logged_lines(capsys) == ["[ok-job] line 1", "[ok-job] line 2", "[ok-job] line 3"]


def test_log_streaming_resumes_from_the_cursor(capsys: pytest.CaptureFixture[str]) -> None:
    trigger = trigger_for("resumed", ["RUNNING", "RUNNING", "SUCCEEDED"], cursor="2")
    payload = run_trigger(trigger)
    assert payload["cursor"] == "3"
    assert logged_lines(capsys) == ["[resumed] line 3"]


def test_transient_errors_are_polled_through() -> None:
    throttled = TransientJobError([Problem("job", "ThrottlingException")])
    steps = ["RUNNING", throttled, ConnectionResetError("reset"), throttled, "SUCCEEDED"]
    payload = run_trigger(trigger_for("flaky", steps))
    assert payload["outcome"] == SUCCESS
    assert StepBackend.calls["flaky"] == 5


def test_failure_event_has_the_reason_and_no_retry_for_user_errors() -> None:
    payload = run_trigger(trigger_for("oom", ["RUNNING", "FAILED"]))
    assert payload["outcome"] == FAILURE
    assert payload["state"] == "FAILED" and payload["failure_reason"] == "OOM on node 3"
    assert payload["retryable"] is False

    missing = JobNotFoundError([Problem("name", "no job gone")])
    payload = run_trigger(trigger_for("gone", [missing]))
    assert payload["outcome"] == FAILURE and "no longer exists" in payload["message"]


def test_deadline_event_hands_back_the_cursor() -> None:
    import time

    payload = run_trigger(trigger_for("slow", ["RUNNING"], deadline=time.time() + 0.3))
    assert payload["outcome"] == DEADLINE
    assert int(payload["cursor"]) >= 1


def test_on_kill_cancels_the_awaited_job() -> None:
    trigger = trigger_for("killed", ["RUNNING"])
    asyncio.run(trigger.on_kill())
    assert "killed" in StepBackend.cancelled


def test_triggers_with_one_config_share_one_backend() -> None:
    config = {"type": StepBackend.type, "region": "eu-west-1"}
    assert shared_backend(config) is shared_backend(dict(reversed(list(config.items()))))
    assert shared_backend(config) is not shared_backend({**config, "region": "us-east-1"})


def test_an_event_waits_until_the_deferring_worker_has_let_go_of_the_task() -> None:
    """A job that ends at once still fires only at ``not_before``: until then the worker that
    ran the deferring try may not have reported its exit, and a resume queued before that
    report is failed by the scheduler as a task whose state changed externally."""
    import time

    from tuneloop.pipeline.triggers import settle_seconds

    assert settle_seconds(5.0) > 5.0  # beyond the worker's heartbeat interval
    not_before = time.time() + 0.5
    payload = run_trigger(trigger_for("quick-eval", ["SUCCEEDED"], not_before=not_before))
    assert payload["outcome"] == SUCCESS
    assert time.time() >= not_before
    classpath, kwargs = trigger_for("quick-eval", ["SUCCEEDED"], not_before=12.5).serialize()
    assert import_string(classpath)(**kwargs).not_before == 12.5
