"""Watching a job while it runs: JobTrigger with monitoring settings against a backend whose job
logs scripted metrics lines (Nova's HyperPod and training-job forms), the bounded curves, the
pace and the GPU-hours a stop saves, and the operator's answer to a stopped event."""

from __future__ import annotations

import asyncio
import itertools
import math
import re
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

import pytest
from airflow.sdk.module_loading import import_string

from tuneloop.config.monitoring import Monitoring
from tuneloop.errors import TuneloopError
from tuneloop.jobs.base import JobSpec, JobState, JobStatus, LogChunk
from tuneloop.pipeline import triggers
from tuneloop.pipeline.monitor import (
    LiveWatch,
    recipe_instances,
    recipe_total_steps,
    saved_gpu_hours,
    series_from_json,
    series_to_json,
    status_progress,
    thin,
)
from tuneloop.pipeline.operators import HANDLE_KEY, TrainingJobOperator
from tuneloop.pipeline.triggers import STOPPED, SUCCESS, JobTrigger

STARTED = datetime(2026, 3, 8, 22, 0, tzinfo=UTC)


def hyperpod_line(step: int, loss: float) -> str:
    """A Nova HyperPod training log line (SFT)."""
    return (
        f"[my-sft] [2026-03-08 22:40:07,102] [INFO] Training epoch 0, iteration {step}/999 | "
        f"lr: 7e-07 | global_batch_size: 256 | global_step: {step} | reduced_train_loss: "
        f"{loss} | train_step_timing in s: 1.232e+03 | consumed_samples: {step * 256}"
    )


def verl_line(step: int, reward: float, error_rate: float) -> str:
    """A Nova training-job (verl) log line (RFT)."""
    return (
        f"step:{step} - critic/rewards/mean:{reward} - critic/rewards/max:1.0 - "
        f"critic/rewards/error_rate:{error_rate} - actor/pg_loss:0.01"
    )


@dataclass
class _Job:
    lines: list[str]
    per_poll: int
    progress: bool
    stopping_polls: int
    shown: int = 0
    polls: int = 0
    cancels: int = 0
    cancelled: bool = False


class ScriptedTraining:
    """A job whose log grows by ``per_poll`` lines at each status call and which SUCCEEDS once
    every line is out. ``cancel`` stops it: STOPPED at once, or after ``stopping_polls`` more
    polls in which it is still RUNNING (a training job that takes a while to stop)."""

    type: ClassVar[str] = f"{__name__}:ScriptedTraining"
    jobs: ClassVar[dict[str, _Job]] = {}

    def __init__(self, **settings: Any) -> None:
        self.settings = settings

    @classmethod
    def new(
        cls,
        name: str,
        lines: list[str],
        *,
        per_poll: int = 10,
        progress: bool = False,
        stopping_polls: int = 0,
    ) -> None:
        cls.jobs[name] = _Job(lines, per_poll, progress, stopping_polls)

    def config(self) -> dict[str, Any]:
        return {"type": self.type, **self.settings}

    def submit(self, spec: JobSpec) -> JobStatus:
        raise NotImplementedError

    def status(self, name: str) -> JobStatus:
        job = self.jobs[name]
        job.polls += 1
        if job.cancelled:
            if job.stopping_polls > 0:
                job.stopping_polls -= 1
                return self._status(name, JobState.RUNNING, "Stopping")
            return self._status(name, JobState.STOPPED, "Stopped")
        job.shown = min(len(job.lines), job.shown + job.per_poll)
        done = job.shown == len(job.lines)
        message = f"step {job.shown}/{len(job.lines)}" if job.progress else "Training"
        return self._status(name, JobState.SUCCEEDED if done else JobState.RUNNING, message)

    def cancel(self, name: str) -> JobStatus:
        job = self.jobs[name]
        job.cancels += 1
        job.cancelled = True
        state = JobState.RUNNING if job.stopping_polls > 0 else JobState.STOPPED
        return self._status(name, state, "Stopping")

    def logs(self, name: str, cursor: str = "") -> LogChunk:
        job = self.jobs[name]
        start = int(cursor or 0)
        return LogChunk(lines=job.lines[start : job.shown], cursor=str(max(start, job.shown)))

    def find(self, labels: Mapping[str, str]) -> list[JobStatus]:
        return []

    @staticmethod
    def _status(name: str, state: JobState, message: str) -> JobStatus:
        return JobStatus(name=name, state=state, message=message, started_at=STARTED)


def watching(name: str, method: str, **monitoring: Any) -> JobTrigger:
    """A trigger watching ``name``; the detectors a test is not about are off."""
    monitoring = {"plateau": {"policy": "off"}, "instability": {"policy": "off"}, **monitoring}
    return JobTrigger(
        {"type": ScriptedTraining.type},
        name,
        poll_interval=0.01,
        error_backoff=0.01,
        stream_logs=False,
        monitoring=Monitoring.model_validate(monitoring).model_dump(mode="json"),
        stage=f"{method}-stage",
        method=method,
    )


def first_event(trigger: JobTrigger) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        async for event in trigger.run():
            return event.payload
        raise AssertionError("no event")

    return asyncio.run(asyncio.wait_for(run(), timeout=60))


# -- the trigger ---------------------------------------------------------------------------------


def test_a_nan_loss_stops_the_job_at_once() -> None:
    losses = [2.0, 1.6, 1.4, math.nan, 1.2, 1.1, 1.0, 0.9]
    ScriptedTraining.new(
        "nan-loss", [hyperpod_line(i + 1, v) for i, v in enumerate(losses)], per_poll=1
    )
    event = first_event(watching("nan-loss", "sft"))

    assert event["outcome"] == STOPPED and event["state"] == "STOPPED"
    job = ScriptedTraining.jobs["nan-loss"]
    assert job.cancels == 1 and job.shown == 4  # stopped at the poll that showed step 4
    assert event["step"] == 4
    [finding] = event["findings"]
    assert finding["detector"] == "loss_divergence" and finding["step"] == 4
    assert finding["policy"] == "fail_round" and finding["stage"] == "sft-stage"
    assert "loss_divergence (fail_round)" in event["reason"]
    assert event["reason"] in event["message"]
    assert event["series"]["train_loss"][3] == [4, "NaN"]
    assert series_from_json(event["series"])["train_loss"][2] == (3, 1.4)


def test_reward_errors_over_20_percent_for_50_steps_stop_at_the_50th() -> None:
    # Rewards fail on 30% of the samples from step 11 on: the 50th such step is step 60.
    lines = [verl_line(step, step / 500, 0.3 if step > 10 else 0.0) for step in range(1, 201)]
    ScriptedTraining.new("reward-errors", lines, per_poll=10)
    event = first_event(watching("reward-errors", "rft"))

    assert event["outcome"] == STOPPED
    job = ScriptedTraining.jobs["reward-errors"]
    assert job.cancels == 1 and job.shown == 60  # not a poll later, not a poll earlier
    [finding] = event["findings"]
    assert (finding["detector"], finding["step"], finding["series"]) == (
        "reward_errors",
        60,
        "reward_error_rate",
    )
    assert "for 50 steps in a row" in finding["message"]
    assert event["step"] == 60
    errors = event["series"]["reward_error_rate"]
    assert errors[0] == [1, 0.0] and errors[-1] == [60, 0.3] and len(errors) == 60


def test_a_warning_does_not_stop_the_job_and_is_logged_once(
    capsys: pytest.CaptureFixture[str],
) -> None:
    lines = [verl_line(step, step / 500, 0.5) for step in range(1, 41)]
    ScriptedTraining.new("warned", lines, per_poll=2)
    trigger = watching(
        "warned", "rft", reward_errors={"policy": "warn", "max_rate": 0.2, "for_steps": 5}
    )
    event = first_event(trigger)

    assert event["outcome"] == SUCCESS and event["state"] == "SUCCEEDED"
    assert ScriptedTraining.jobs["warned"].cancels == 0
    [finding] = event["findings"]
    assert finding["policy"] == "warn" and finding["detector"] == "reward_errors"
    assert finding["step"] == 5  # the first run of 5 steps above the rate
    assert len(event["series"]["reward_mean"]) == 40
    out = capsys.readouterr().out
    assert len(re.findall(r"Job warned: reward_errors at step \d+", out)) == 1, out


def test_a_stop_campaign_policy_is_carried_in_the_event() -> None:
    lines = [verl_line(step, 0.4, 0.9) for step in range(1, 30)]
    ScriptedTraining.new("campaign-stop", lines, per_poll=1)
    trigger = watching(
        "campaign-stop",
        "rft",
        reward_errors={"policy": "stop_campaign", "max_rate": 0.2, "for_steps": 3},
    )
    event = first_event(trigger)

    assert event["outcome"] == STOPPED and event["step"] == 3
    [finding] = event["findings"]
    assert finding["policy"] == "stop_campaign"
    assert "reward_errors (stop_campaign)" in event["reason"]


def test_the_stop_waits_for_the_job_to_end_and_reads_its_last_lines() -> None:
    lines = [verl_line(step, 0.4, 0.9) for step in range(1, 30)]
    ScriptedTraining.new("slow-stop", lines, per_poll=1, stopping_polls=3)
    trigger = watching("slow-stop", "rft", reward_errors={"max_rate": 0.2, "for_steps": 2})
    event = first_event(trigger)

    job = ScriptedTraining.jobs["slow-stop"]
    assert event["outcome"] == STOPPED and event["state"] == "STOPPED"
    assert job.cancels == 1 and job.stopping_polls == 0  # it polled through "Stopping"


def test_the_wait_for_a_stop_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(triggers, "STOP_WAIT", 0.05)
    lines = [verl_line(step, 0.4, 0.9) for step in range(1, 30)]
    ScriptedTraining.new("stuck", lines, per_poll=1, stopping_polls=10**6)
    trigger = watching("stuck", "rft", reward_errors={"max_rate": 0.2, "for_steps": 2})
    event = first_event(trigger)

    # The event still comes; the operator sees a job that is not final and stops it again.
    assert event["outcome"] == STOPPED and event["state"] == "RUNNING"


def test_without_monitoring_nothing_is_judged() -> None:
    ScriptedTraining.new("unwatched", [hyperpod_line(1, math.nan), hyperpod_line(2, 1.0)])
    trigger = JobTrigger({"type": ScriptedTraining.type}, "unwatched", poll_interval=0.01)
    event = first_event(trigger)
    assert event["outcome"] == SUCCESS and "series" not in event and "findings" not in event

    ScriptedTraining.new("not-live", [hyperpod_line(1, math.nan), hyperpod_line(2, 1.0)])
    event = first_event(watching("not-live", "sft", live=False))
    assert event["outcome"] == SUCCESS and "series" not in event


def test_a_restarted_trigger_rebuilds_the_curves_from_the_operators_cursor() -> None:
    """The triggerer dies mid-job: the trigger rebuilt from its serialized kwargs reads the log
    again from the cursor the operator deferred with, so the run of errors that began before
    the restart still counts."""
    lines = [verl_line(step, 0.4, 0.5 if step > 5 else 0.0) for step in range(1, 60)]
    ScriptedTraining.new("restarted", lines, per_poll=1)
    first = watching("restarted", "rft", reward_errors={"max_rate": 0.2, "for_steps": 20})
    classpath, kwargs = first.serialize()  # what the triggerer keeps in its database

    async def until_step(step: int) -> None:
        runner = asyncio.ensure_future(_drain(first))
        while ScriptedTraining.jobs["restarted"].shown < step:
            await asyncio.sleep(0.005)
        runner.cancel()  # what a triggerer shutting down does to its triggers
        with pytest.raises(asyncio.CancelledError):
            await runner

    asyncio.run(until_step(15))
    assert first.cursor == "15" and kwargs["cursor"] == ""  # the operator's cursor
    event = first_event(import_string(classpath)(**kwargs))

    assert event["outcome"] == STOPPED
    [finding] = event["findings"]
    assert finding["step"] == 25  # steps 6..25: 20 in a row, 10 of them before the restart
    assert event["series"]["reward_error_rate"][0] == [1, 0.0]


async def _drain(trigger: JobTrigger) -> None:
    async for _ in trigger.run():
        return


def test_bad_settings_leave_the_job_unwatched(capsys: pytest.CaptureFixture[str]) -> None:
    ScriptedTraining.new("bad-settings", [hyperpod_line(1, math.nan), hyperpod_line(2, 1.0)])
    trigger = JobTrigger(
        {"type": ScriptedTraining.type},
        "bad-settings",
        poll_interval=0.01,
        monitoring={"reward_errors": {"max_rate": 7}},
        stage="sft",
        method="sft",
    )
    event = first_event(trigger)
    assert event["outcome"] == SUCCESS
    assert "Job bad-settings is not watched: bad monitoring settings" in capsys.readouterr().out


# -- the watch ---------------------------------------------------------------------------------


def test_curves_stay_bounded_and_keep_their_recent_points_as_logged() -> None:
    watch = LiveWatch(Monitoring(), stage="rft", method="rft", max_points=100)
    for start in range(1, 10_001, 500):
        watch.feed(verl_line(step, step / 10_000, 0.0) for step in range(start, start + 500))
    curve = watch.series()["reward_mean"]
    assert len(curve) <= 100
    assert [step for step, _ in curve[-50:]] == list(range(9951, 10_001))
    assert curve[0] == (1, 0.0001)  # the oldest point stays
    older = [step for step, _ in curve[:-50]]
    gaps = [b - a for a, b in itertools.pairwise(older)]
    even = (older[-1] - older[0]) / (len(older) - 1)
    assert len(older) >= 20 and max(gaps) <= 3 * even  # spread over the steps, not bunched
    assert watch.last_step == 10_000


def test_thinning_keeps_the_first_non_finite_point() -> None:
    curve = [(step, math.nan if step == 77 else 1.0) for step in range(1, 1001)]
    thinned = thin(curve, 100)
    assert len(thinned) <= 77 and thinned[-50:] == curve[-50:]
    assert any(step == 77 and math.isnan(value) for step, value in thinned)


def test_a_step_logged_again_replaces_its_point() -> None:
    watch = LiveWatch(Monitoring(), stage="sft", method="sft")
    watch.feed([hyperpod_line(s, 2.0) for s in (1, 2, 3, 4)])
    watch.feed([hyperpod_line(2, 1.5), hyperpod_line(5, 1.0)])  # a restart logs step 2 again
    assert watch.series()["train_loss"] == [(1, 2.0), (2, 1.5), (3, 2.0), (4, 2.0), (5, 1.0)]


def test_series_travel_as_strict_json() -> None:
    import json

    series = {"train_loss": [(1, 2.0), (2, math.nan), (3, math.inf), (4, -math.inf)]}
    text = json.dumps(series_to_json(series), allow_nan=False)
    back = series_from_json(json.loads(text))["train_loss"]
    assert (
        back[0] == (1, 2.0)
        and math.isnan(back[1][1])
        and back[2:] == [(3, math.inf), (4, -math.inf)]
    )


def test_pace_is_measured_between_the_steps_seen() -> None:
    watch = LiveWatch(Monitoring(), stage="rft", method="rft")
    running = JobStatus(name="j", state=JobState.RUNNING, started_at=STARTED)
    start = STARTED.timestamp()
    watch.observe(start + 100, running)
    assert watch.seconds_per_step is None  # no step yet
    watch.feed([verl_line(10, 0.1, 0.0)])
    watch.observe(start + 300, running)
    assert watch.seconds_per_step == pytest.approx(30.0)  # since the job started: 300 s / 10
    watch.feed([verl_line(30, 0.1, 0.0)])
    watch.observe(start + 700, running)
    assert watch.seconds_per_step == pytest.approx(20.0)  # (700 - 300) s / (30 - 10) steps

    progress = JobStatus(name="j", state=JobState.RUNNING, message="j: RUNNING, step 35/80 (44%)")
    watch.observe(start + 800, progress)
    assert watch.total_steps == 80 and status_progress(progress.message) == (35, 80)


def test_saved_gpu_hours_count_the_instance_types_gpus() -> None:
    saving = saved_gpu_hours(20, 40, 30.0, instances=2, instance_type="ml.p5.48xlarge")
    assert saving is not None
    # 20 steps x 30 s x 2 instances x 8 GPUs = 9600 GPU-seconds
    assert saving.gpu_hours == pytest.approx(9600 / 3600)
    assert saving.basis() == "20 steps left at 30 s/step on 2 x ml.p5.48xlarge (8 GPUs each)"
    # A local job runs on this machine's CPU: its steps are no GPU-hours.
    local = saved_gpu_hours(20, 40, 30.0)
    assert local is not None and local.gpu_hours == 0.0 and local.gpus_per_instance == 0
    cpu = saved_gpu_hours(20, 40, 30.0, instance_type="ml.m5.xlarge")
    assert cpu is not None and cpu.gpu_hours == 0.0
    assert saved_gpu_hours(20, None, 30.0) is None and saved_gpu_hours(20, 40, None) is None


def test_recipes_say_the_total_steps_and_instances() -> None:
    rft = {"run": {"replicas": 4}, "training_config": {"trainer": {"max_steps": 100}}}
    sft = {"run": {}, "training_config": {"max_steps": 150, "max_epochs": -1}}
    epochs = {"training_config": {"max_epochs": 2}}
    assert (recipe_total_steps(rft), recipe_instances(rft)) == (100, 4)
    assert (recipe_total_steps(sft), recipe_instances(sft)) == (150, 1)
    assert recipe_total_steps(epochs) is None


# -- the operator --------------------------------------------------------------------------------


def job_spec(name: str = "it-r1-rft-0123456789") -> dict[str, Any]:
    return JobSpec(
        name=name,
        kind="train",
        method="rft",
        recipe={"run": {"replicas": 2}, "training_config": {"trainer": {"max_steps": 40}}},
        output_uri="/tmp/out",
        labels={"campaign": "it", "round": "1", "stage": "rft"},
    ).model_dump(mode="json")


class _TaskInstance:
    def __init__(self) -> None:
        self.xcom: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value


class _StateStore(defaultdict):
    def __init__(self) -> None:
        super().__init__(lambda: None)

    def set(self, key: str, value: Any) -> None:
        self[key] = value


def test_a_stopped_event_returns_the_reason_findings_series_and_saving(
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = "it-r1-rft-0123456789"
    ScriptedTraining.new(name, [])
    operator = TrainingJobOperator(
        task_id="train_rft",
        backend={"type": ScriptedTraining.type, "instance_type": "ml.p5.48xlarge"},
        job=job_spec(name),
        monitoring=Monitoring().model_dump(mode="json"),
    )
    store = _StateStore()
    store.set(HANDLE_KEY, {"job": name, "name": name, "attempt": 1})
    finding = {
        "detector": "reward_errors",
        "policy": "fail_round",
        "stage": "rft",
        "step": 20,
        "series": "reward_error_rate",
        "message": "the reward function failed on 30.0% of samples at step 20.",
        "fix": "probe it",
    }
    event = {
        "outcome": STOPPED,
        "job_name": name,
        "state": "STOPPED",
        "message": "monitoring stopped it",
        "reason": "reward_errors (fail_round): the reward function failed",
        "cursor": "123",
        "status": JobStatus(name=name, state=JobState.STOPPED).model_dump(mode="json"),
        "findings": [finding],
        "series": {"reward_error_rate": [[19, 0.3], [20, "NaN"]]},
        "step": 20,
        "total_steps": None,
        "seconds_per_step": 30.0,
    }
    context = {"ti": _TaskInstance(), "task_state_store": store}
    result = operator.execute_complete(context, event)

    assert result["state"] == "STOPPED" and result["name"] == name
    assert result["stopped_early"] == "reward_errors (fail_round): the reward function failed"
    assert result["findings"] == [finding]
    assert result["series"] == {"reward_error_rate": [[19, 0.3], [20, "NaN"]]}
    # 20 steps left of the recipe's 40, at 30 s, on 2 ml.p5.48xlarge of 8 GPUs: 2.67 GPU-hours.
    assert result["saved_gpu_hours"] == pytest.approx(20 * 30 * 2 * 8 / 3600)
    assert ScriptedTraining.jobs[name].cancels == 0  # it had already stopped
    out = capsys.readouterr().out
    assert (
        f"Stopped job {name} at step 20 of 40: reward_errors (fail_round): the reward function "
        "failed; about 2.67 GPU-hours saved (20 steps left at 30 s/step on 2 x ml.p5.48xlarge "
        "(8 GPUs each))"
    ) in out


def test_a_job_still_stopping_is_stopped_again_by_the_operator() -> None:
    name = "it-r1-rft-9876543210"
    ScriptedTraining.new(name, ["x"] * 10, per_poll=1)
    operator = TrainingJobOperator(
        task_id="train_rft", backend={"type": ScriptedTraining.type}, job=job_spec(name)
    )
    event = {
        "outcome": STOPPED,
        "job_name": name,
        "reason": "loss_divergence (fail_round): NaN",
        "cursor": "",
        "status": JobStatus(name=name, state=JobState.RUNNING).model_dump(mode="json"),
        "step": None,
    }
    result = operator.execute_complete(
        {"ti": _TaskInstance(), "task_state_store": _StateStore()}, event
    )
    assert ScriptedTraining.jobs[name].cancels == 1 and result["state"] == "STOPPED"
    assert result["saved_gpu_hours"] is None and result["stopped_early"].startswith("loss_div")


def test_bad_monitoring_settings_are_a_user_error_naming_the_field() -> None:
    operator = TrainingJobOperator(
        task_id="train_rft",
        backend={"type": ScriptedTraining.type},
        job=job_spec(),
        monitoring={"reward_errors": {"max_rate": 7}},
    )
    with pytest.raises(TuneloopError) as error:
        _ = operator.watching
    assert "monitoring.reward_errors.max_rate" in str(error.value)


def test_only_training_jobs_with_live_monitoring_are_watched() -> None:
    from tuneloop.pipeline.operators import EvaluationJobOperator

    backend = {"type": ScriptedTraining.type}
    live = Monitoring().model_dump(mode="json")
    assert (
        TrainingJobOperator(task_id="a", backend=backend, job=job_spec(), monitoring=live).watching
        == live
    )
    not_live = {**live, "live": False}
    assert (
        TrainingJobOperator(
            task_id="b", backend=backend, job=job_spec(), monitoring=not_live
        ).watching
        is None
    )
    assert TrainingJobOperator(task_id="c", backend=backend, job=job_spec()).watching is None
    evaluation = {**job_spec(), "kind": "eval", "method": "eval"}
    assert (
        EvaluationJobOperator(
            task_id="d", backend=backend, job=evaluation, monitoring=live
        ).watching
        is None
    )
