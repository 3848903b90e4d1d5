"""Faults under the real scheduler: Airflow's own processes die or restart in the middle of a
round, and the round still completes with exactly one job per stage (counted with the local
backend's ``find``, as a user lists the jobs folder).

- a Celery worker is SIGKILLed (with everything it started: a lost machine) while the training
  task it started is deferred, and while that task is still running on it, before it defers;
  the worker is then started again;
- the triggerer is restarted while the training task is deferred;
- the scheduler is restarted in the middle of a round.

Each training job of these campaigns waits for a file the test creates, so the moment of each
fault is chosen by the test, not by timing.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from e2e.campaigns import SFT_ONLY, SFT_THEN_RFT
from e2e.scenarios import (
    Gates,
    freeze,
    job_process_detached,
    release,
    restart_worker,
    stages_of_jobs,
    task_instance,
    task_log,
    thaw,
    tries,
    wait_task,
    wait_until,
    worker_running,
)
from tuneloop.jobs.state import JobState

if TYPE_CHECKING:
    from e2e.campaigns import Campaign
    from e2e.conftest import Stack

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(900)]
"""pytest's limit covers the waits below (a retry alone may take RETRY_TIMEOUT), as in the other
end-to-end modules; the default 300 s cut a retry short on a busy machine."""

WORKERS = ("worker-1", "worker-2")
RETRY_TIMEOUT = 420.0
"""A killed worker's task is failed after the heartbeat timeout (30 s on the test stack), then
retried after the retry delay (5 s there); on two loaded cores the whole may take minutes."""


@pytest.fixture
def gates(stack: Stack) -> Iterator[Gates]:
    held = Gates(stack)
    yield held
    held.release_all()


def _campaign(
    stack: Stack, gates: Gates, name: str, stages: tuple[str, ...] = SFT_ONLY
) -> tuple[Campaign, dict[str, Path]]:
    """A campaign of these training stages whose round 1 meets its target (so it finishes: no
    further round), with each training job of round 1 and the base model's evaluation held
    until its own file (returned, by stage) exists: while they wait, their tasks wait deferred,
    on no worker."""
    campaign = stack.write_campaign(name, stages=stages)
    stack.fake_jobs.metrics(campaign.name, base=0.1, rounds={1: 0.95})
    held = {
        stage: gates.hold(campaign, round=number, stage=stage)
        for number, stage in (*((1, s) for s in stages), (0, "baseline"))
    }
    stack.wait_for_dag(campaign.dag_id)
    return campaign, held


def _release_all(held: dict[str, Path]) -> None:
    for gate in held.values():
        release(gate)


def _check_one_job_per_stage(campaign: Campaign, stages: tuple[str, ...] = SFT_ONLY) -> None:
    assert campaign.record(1).decision.action == "finish"
    assert stages_of_jobs(campaign, 1) == sorted(["eval", *stages])
    assert len(campaign.jobs(round="0")) == 1  # the base model's evaluation
    jobs = campaign.jobs()
    # Round 1's training jobs and evaluation, and the base model's evaluation.
    assert len(jobs) == len(stages) + 2, [(j.name, j.labels) for j in jobs]
    assert all(j.state == JobState.SUCCEEDED for j in jobs), [(j.name, j.state) for j in jobs]


def _worker_that_ran(stack: Stack, run_id: str, task_id: str, attempt: int) -> str:
    """The worker whose log says it executed this try (Celery's "Executing workload" line)."""
    needle = f"run_id={run_id}/task_id={task_id}/attempt={attempt}.log"
    ran = [name for name in WORKERS if needle in stack.log(name)]
    assert len(ran) == 1, (needle, ran)
    return ran[0]


def test_worker_killed_while_the_training_task_is_deferred(stack: Stack, gates: Gates) -> None:
    """The worker that started the SFT job dies (SIGKILL, everything it started with it) while
    the task waits deferred. The job, a process on its own, goes on; the wait goes on in the
    triggerer; once the job ends the task resumes on a worker and the round completes with one
    job per stage."""
    campaign, held = _campaign(stack, gates, "e2e-kill-deferred")
    dag_id = campaign.dag_id
    run_id = stack.client.trigger(dag_id, {})["dag_run_id"]
    wait_task(stack, dag_id, run_id, "train_sft", {"deferred"})
    wait_task(stack, dag_id, run_id, "evaluate_baseline", {"deferred"})
    (job,) = campaign.jobs(round="1", stage="sft")
    assert job.state == JobState.RUNNING

    worker = _worker_that_ran(stack, run_id, "train_sft", 1)
    stack.airflow.kill(worker)
    assert not stack.airflow.running(worker)
    (job,) = campaign.jobs(round="1", stage="sft")
    assert job.state == JobState.RUNNING  # not the worker's child any more
    assert task_instance(stack, dag_id, run_id, "train_sft")["state"] == "deferred"
    restart_worker(stack, worker)

    _release_all(held)
    stack.wait_for_run(dag_id, run_id, timeout=RETRY_TIMEOUT)
    sft = task_instance(stack, dag_id, run_id, "train_sft")
    assert sft["try_number"] == 1  # the wait never depended on the dead worker
    _check_one_job_per_stage(campaign)


def _catch_task_between_submit_and_defer(
    stack: Stack, campaign: Campaign, dag_id: str, run_id: str, stage: str
) -> tuple[str, dict[str, Any], list[Any]] | None:
    """Freeze both workers the moment the stage's job runs on its own (its launcher has exited)
    and look at the training task: if it is still running, not yet deferred, return the worker
    running it, the task instance and that worker's frozen processes (still frozen); otherwise
    thaw them and return None."""
    runner = campaign.backend().runner
    labels = {"campaign": campaign.name, "round": "1", "stage": stage}
    task_id = f"train_{stage}"
    # The task starts (seconds go to loading the DAG file), then submits; only then look closely.
    wait_task(stack, dag_id, run_id, task_id, {"running", "deferred"}, timeout=300, interval=0.3)
    deadline = time.monotonic() + 120
    while job_process_detached(runner, labels) is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"no {stage} job started:\n{stack.run_report(dag_id, run_id)}")
        time.sleep(0.005)
    frozen = {name: freeze(stack, name) for name in WORKERS if stack.airflow.running(name)}
    job_pids = {status.pid for status in runner.find(labels)}
    if any(process.pid in job_pids for processes in frozen.values() for process in processes):
        # Still in a worker's tree after all (its launcher was handing it over): not the moment.
        for processes in frozen.values():
            thaw(processes)
        return None
    ti = task_instance(stack, dag_id, run_id, task_id)
    worker = worker_running(stack, ti.get("pid"))
    others = [
        other["task_id"]
        for other in stack.client.task_instances(dag_id, run_id)
        if other["state"] == "running"
        and other["task_id"] != task_id
        and worker_running(stack, other.get("pid")) == worker
    ]
    if ti["state"] == "running" and worker is not None and not others:
        for name, processes in frozen.items():
            if name != worker:
                thaw(processes)
        return worker, ti, frozen[worker]
    for processes in frozen.values():
        thaw(processes)
    return None


def test_worker_killed_while_the_training_task_runs_before_it_defers(
    stack: Stack, gates: Gates
) -> None:
    """The worker running the SFT task dies after the task submitted the job and before it
    deferred (both workers are frozen at that moment, so it is known exactly: the job runs on its
    own, the task instance is running on that worker). The worker is started again; the task's
    retry finds the job by its name and adopts it instead of starting a second one, and the
    round completes with one job per stage."""
    campaign, held = _campaign(stack, gates, "e2e-kill-running", SFT_THEN_RFT)
    dag_id = campaign.dag_id
    run_id = stack.client.trigger(dag_id, {})["dag_run_id"]

    caught = None
    for stage in ("sft", "rft"):  # the moment lasts a fraction of a second: two chances
        caught = _catch_task_between_submit_and_defer(stack, campaign, dag_id, run_id, stage)
        if caught is not None:
            break
        # Missed: this stage's task deferred first; let its job end so the next stage starts.
        release(held[stage])
    assert caught is not None, "the training task deferred before the workers could be frozen"
    worker, ti, frozen = caught
    task_id = ti["task_id"]
    stage = task_id.removeprefix("train_")
    # A lost machine: the worker and every process of its tree die. The task's process is in a
    # process group of its own (Airflow's supervisor starts it so), so killing the worker's
    # group alone would leave it frozen, holding what it held.
    stack.airflow.kill(worker)
    kill_all(frozen)
    # The job's process runs on its own, so it survives the worker and says RUNNING once it
    # has started. Only after the kill: the frozen task may have held the job directory's lock
    # (it reads the job's status under it), which its death releases, as a lost machine's would.
    job = wait_until(
        lambda: _running_job(campaign, stage), timeout=120, what=f"the {stage} job RUNNING"
    )
    restart_worker(stack, worker)

    # The dead try is failed by the scheduler (no heartbeat) and retried; the retry adopts the job.
    retried = wait_task(
        stack, dag_id, run_id, task_id, {"deferred"}, timeout=RETRY_TIMEOUT, interval=2.0
    )
    assert retried["try_number"] == 2, retried
    log = task_log(stack, dag_id, run_id, task_id, 2)
    adopted = f"Adopting job {job.name}" in log or (
        "Reconnecting to existing job" in log and job.name in log
    )
    assert adopted, log
    assert f"Submitting job {job.name}" not in log, log
    # The first try had submitted it, and died before it could wait for it.
    first_try = task_log(stack, dag_id, run_id, task_id, 1)
    assert f"Submitting job {job.name} (attempt 1)" in first_try, first_try
    assert "DEFERRED" not in first_try, first_try
    assert len(campaign.jobs(round="1", stage=stage)) == 1

    _release_all(held)
    stack.wait_for_run(dag_id, run_id, timeout=RETRY_TIMEOUT)
    history = tries(stack, dag_id, run_id, task_id)
    assert [t["try_number"] for t in history] == [1, 2], history
    assert history[0]["state"] in ("failed", "up_for_retry"), history
    assert history[-1]["state"] == "success", history
    _check_one_job_per_stage(campaign, SFT_THEN_RFT)


def kill_all(processes: list[Any]) -> None:
    """SIGKILL each process (stopped ones too); those already gone are skipped."""
    import psutil

    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.kill()


def _running_job(campaign: Campaign, stage: str) -> Any:
    """Round 1's only job of ``stage`` once it is RUNNING, else None."""
    (job,) = campaign.jobs(round="1", stage=stage)
    return job if job.state == JobState.RUNNING else None


def test_triggerer_restarted_while_the_training_task_is_deferred(
    stack: Stack, gates: Gates
) -> None:
    """The triggerer is stopped and started again while it waits on the SFT job for the task;
    the new triggerer takes the wait over, and the round completes without a retry and with one
    job per stage."""
    campaign, held = _campaign(stack, gates, "e2e-triggerer")
    dag_id = campaign.dag_id
    run_id = stack.client.trigger(dag_id, {})["dag_run_id"]
    wait_task(stack, dag_id, run_id, "train_sft", {"deferred"})

    stack.airflow.restart("triggerer")
    assert task_instance(stack, dag_id, run_id, "train_sft")["state"] == "deferred"
    _release_all(held)
    stack.wait_for_run(dag_id, run_id)
    assert task_instance(stack, dag_id, run_id, "train_sft")["try_number"] == 1
    _check_one_job_per_stage(campaign)


def test_scheduler_restarted_mid_round(stack: Stack, gates: Gates) -> None:
    """The scheduler is stopped and started again just as the SFT job ends (the trigger fires,
    the task goes back to a worker); the new scheduler carries the round on to the end, with one
    job per stage and no retry of the training task."""
    campaign, held = _campaign(stack, gates, "e2e-scheduler")
    dag_id = campaign.dag_id
    run_id = stack.client.trigger(dag_id, {})["dag_run_id"]
    wait_task(stack, dag_id, run_id, "train_sft", {"deferred"})

    _release_all(held)
    stack.airflow.restart("scheduler")
    stack.wait_for_run(dag_id, run_id)
    assert task_instance(stack, dag_id, run_id, "train_sft")["try_number"] == 1
    _check_one_job_per_stage(campaign)
