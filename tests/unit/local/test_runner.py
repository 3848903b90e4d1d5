"""Local jobs: real detached processes that are adopted, watched, streamed and cancelled.

The work functions live in fake_jobs.py beside this file; job processes import it from there.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from tuneloop.cli.main import main
from tuneloop.errors import TuneloopError
from tuneloop.local import runner as runner_module
from tuneloop.local.runner import (
    PROGRESS_INTERVAL_ENV,
    REASON_DIED,
    REASON_ENTRYPOINT,
    REASON_ERROR,
    JobNotFoundError,
    JobSpec,
    JobState,
    JobStatus,
    LocalRunner,
    process_matches,
)

HERE = Path(__file__).resolve().parent


@pytest.fixture
def runner(tmp_path: Path):
    jobs = LocalRunner(tmp_path / "jobs", env={PROGRESS_INTERVAL_ENV: "0.05"}, grace=2.0)
    yield jobs
    reap(jobs.root)


def reap(root: Path) -> None:
    """Kill whatever a test left running under ``root``."""
    if not root.is_dir():
        return
    for directory in root.iterdir():
        try:
            recorded = json.loads((directory / "status.json").read_text())
        except (OSError, ValueError):
            continue
        pid = recorded.get("pid")
        if pid and process_matches(pid, recorded.get("pid_start")):
            os.killpg(pid, signal.SIGKILL)
        children = directory / "outputs" / "children.txt"
        for line in children.read_text().split() if children.exists() else []:
            if process_matches(int(line), None):
                os.kill(int(line), signal.SIGKILL)


def job(name: str, work: str, labels: dict[str, str] | None = None, **params: Any) -> JobSpec:
    return JobSpec(
        name=name,
        output=f"file:///tmp/outputs/{name}",
        recipe=params,
        kind="sft",
        labels=labels or {},
        entrypoint=f"fake_jobs:{work}",
        python_path=[str(HERE)],
    )


# Generous deadlines: a job process starts and runs slowly on a busy machine; waits end as soon
# as the condition holds.
WAIT = 60.0


def wait_for(condition: Callable[[], Any], timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s")


def started(jobs: LocalRunner, name: str) -> JobStatus:
    """Wait until a `hang` job is running with its children in place."""
    wait_for(lambda: (jobs.directory(name) / "outputs" / "ready.txt").exists())
    status = jobs.status(name)
    assert status.state is JobState.RUNNING and status.pid is not None
    return status


def outputs(jobs: LocalRunner, name: str, file: str) -> list[str]:
    path = jobs.directory(name) / "outputs" / file
    return path.read_text().split() if path.exists() else []


def alive(pid: int) -> bool:
    return process_matches(pid, None)


# --- lifecycle ------------------------------------------------------------------------------------


def test_job_succeeds_with_progress_eta_result_and_log(runner: LocalRunner, tmp_path: Path) -> None:
    release = tmp_path / "release"  # the job holds after step 4 until this exists
    params = {"steps": 8, "sleep": 0.08, "hold_after": 4, "hold": str(release)}
    first = runner.submit(job("ok", "succeed", **params))
    assert first.state in (JobState.PENDING, JobState.RUNNING)

    def midway() -> JobStatus | None:
        status = runner.status("ok")
        p = status.progress
        return status if p is not None and p.step == 4 else None

    running = wait_for(midway)
    assert running.state is JobState.RUNNING and running.progress.total == 8
    # 4 steps left at the rate of steps 1-4 (0.08 s each when the machine is idle).
    assert 0 < running.progress.eta_seconds < WAIT and running.progress.remaining() is not None
    release.touch()

    done = runner.wait("ok", timeout=WAIT, poll=0.05)
    assert done.state is JobState.SUCCEEDED and done.exit_code == 0
    assert (done.progress.step, done.progress.total, done.progress.eta_seconds) == (8, 8, 0.0)
    assert done.created_at <= done.started_at <= done.ended_at
    assert done.result == {"steps": 8, "output": "file:///tmp/outputs/ok"}
    assert done.reason is None and "step 8/8" in done.summary()

    directory = runner.directory("ok")
    assert (directory / "outputs" / "result.txt").read_text() == "done\n"
    log = (directory / "job.log").read_text(encoding="utf-8")
    assert "step 8 of 8 – loss 0.125" in log and "job ok succeeded" in log
    spec = json.loads((directory / "job.json").read_text())
    assert spec["recipe"] == params and spec["kind"] == "sft"
    assert spec["created_at"] == done.created_at and "directory" not in spec
    assert not [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]


def test_job_that_raises_fails_with_message_reason_and_traceback(runner: LocalRunner) -> None:
    runner.submit(job("boom", "fail"))
    status = runner.wait("boom", timeout=WAIT, poll=0.05)
    assert status.state is JobState.FAILED and status.reason == REASON_ERROR
    assert status.message == "ValueError: bad batch 3: token id out of range"
    assert status.exit_code == 1 and status.progress.step == 1
    log = runner.logs("boom").text
    assert "Traceback (most recent call last)" in log
    assert 'raise ValueError("bad batch 3: token id out of range")' in log


@pytest.mark.parametrize(
    ("entrypoint", "expected"),
    [
        ("tuneloop_no_such_module:run", "No module named 'tuneloop_no_such_module'"),
        ("fake_jobs:no_such_function", "has no attribute 'no_such_function'"),
    ],
)
def test_missing_entrypoint_fails_at_once(runner: LocalRunner, entrypoint, expected) -> None:
    spec = job("missing", "succeed")
    spec.entrypoint = entrypoint
    runner.submit(spec)
    status = runner.wait("missing", timeout=WAIT, poll=0.05)
    assert status.state is JobState.FAILED and status.reason == REASON_ENTRYPOINT
    assert status.message.startswith(f"cannot import entry point {entrypoint!r}")
    assert expected in status.message


# --- idempotent submit ----------------------------------------------------------------------------


def test_submit_adopts_the_existing_job(runner: LocalRunner) -> None:
    runner.submit(job("adopt", "hang"))
    first = started(runner, "adopt")
    again = runner.submit(job("adopt", "hang", children=3))
    retried = LocalRunner(runner.root).submit(job("adopt", "succeed"))
    assert again.pid == retried.pid == first.pid
    assert again.state is JobState.RUNNING
    assert outputs(runner, "adopt", "starts.txt") == [str(first.pid)]
    assert outputs(runner, "adopt", "children.txt") == []


RACE = """
import os, sys, time
from tuneloop.local.runner import JobSpec, LocalRunner
root, here, go = sys.argv[1], sys.argv[2], sys.argv[3]
spec = JobSpec("race", output="x", recipe={}, entrypoint="fake_jobs:hang", python_path=[here])
runner = LocalRunner(root)
print("ready", flush=True)
while not os.path.exists(go):  # every racer submits within a millisecond of the go
    time.sleep(0.001)
runner.submit(spec)
deadline = time.time() + 60
while runner.status("race").pid is None and time.time() < deadline:
    time.sleep(0.01)
print(runner.status("race").pid)
"""


def test_concurrent_submits_of_one_name_start_one_process(
    runner: LocalRunner, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACE, str(runner.root), str(HERE), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(5)
    ]
    for racer in racers:  # all started and ready to submit, however long that took
        assert racer.stdout is not None
        assert racer.stdout.readline() == "ready\n", racer.communicate(timeout=WAIT)[1]
    go.touch()
    results = [racer.communicate(timeout=WAIT * 2) for racer in racers]
    assert all(racer.returncode == 0 for racer in racers), [err for _, err in results]
    pids = {out.strip() for out, _ in results}
    assert len(pids) == 1 and pids != {"None"}
    status = started(runner, "race")
    assert pids == {str(status.pid)}
    assert outputs(runner, "race", "starts.txt") == [str(status.pid)]
    assert sorted(p.name for p in runner.root.iterdir()) == ["race"]


# --- cancel and signals ---------------------------------------------------------------------------


def test_cancel_stops_the_whole_process_group(runner: LocalRunner) -> None:
    runner.submit(job("stop", "hang", children=1, stubborn=True))
    leader = started(runner, "stop").pid
    children = [int(pid) for pid in outputs(runner, "stop", "children.txt")]
    assert len(children) == 2 and all(alive(pid) for pid in [leader, *children])

    begin = time.monotonic()
    stopped = runner.cancel("stop", grace=0.5)
    took = time.monotonic() - begin
    assert stopped.state is JobState.STOPPED and stopped.message == "stopped by cancel"
    # The stubborn child ignores SIGTERM, so cancel waited the grace period, then SIGKILLed it
    # (and no longer than it takes a busy machine to end the group).
    assert 0.4 < took < WAIT
    assert not any(alive(pid) for pid in [leader, *children])
    assert "stopped by SIGTERM" in runner.logs("stop").text

    status = runner.status("stop")
    assert status.state is JobState.STOPPED and status.reason is None
    assert runner.cancel("stop") == status


def test_cancelling_a_finished_job_changes_nothing(runner: LocalRunner) -> None:
    runner.submit(job("fin", "succeed", steps=1, sleep=0))
    runner.wait("fin", timeout=WAIT, poll=0.05)
    recorded = (runner.directory("fin") / "status.json").read_bytes()
    assert runner.cancel("fin").state is JobState.SUCCEEDED
    assert (runner.directory("fin") / "status.json").read_bytes() == recorded


def test_sigterm_to_the_job_process_marks_it_stopped(runner: LocalRunner) -> None:
    runner.submit(job("term", "hang", children=2))
    leader = started(runner, "term").pid
    children = [int(pid) for pid in outputs(runner, "term", "children.txt")]
    os.kill(leader, signal.SIGTERM)
    status = runner.wait("term", timeout=WAIT, poll=0.02)
    assert status.state is JobState.STOPPED and status.exit_code == 128 + signal.SIGTERM
    wait_for(lambda: not any(alive(pid) for pid in [leader, *children]))


def test_a_job_stopped_before_its_process_starts_never_runs(tmp_path: Path) -> None:
    jobs = LocalRunner(tmp_path / "jobs")
    directory = jobs.root / "early"
    # Prepare the job as submit does, without starting it, and cancel it first.
    jobs._launch = lambda directory: None  # type: ignore[method-assign]
    jobs.submit(job("early", "hang"))
    assert jobs.cancel("early").state is JobState.STOPPED
    subprocess.run(
        [sys.executable, "-m", "tuneloop.local.job", str(directory)],
        check=False,
        timeout=WAIT * 2,
        stderr=subprocess.DEVNULL,
    )
    assert jobs.status("early").state is JobState.STOPPED
    assert not (directory / "outputs" / "starts.txt").exists()


# --- dead and reused processes --------------------------------------------------------------------


def test_a_runner_killed_with_sigkill_is_reported_failed(runner: LocalRunner) -> None:
    runner.submit(job("killed", "hang"))
    pid = started(runner, "killed").pid
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not alive(pid))

    status = runner.status("killed")
    assert status.state is JobState.FAILED and status.reason == REASON_DIED
    assert status.message.startswith(f"runner died: job process {pid} ended")
    assert "last words before hanging" in status.message
    # The verdict is recorded, not recomputed.
    recorded = json.loads((runner.directory("killed") / "status.json").read_text())
    assert recorded["state"] == "FAILED" and recorded["ended_at"] == status.ended_at


def test_a_reused_pid_is_not_mistaken_for_the_job(runner: LocalRunner) -> None:
    runner.submit(job("reused", "hang"))
    pid = started(runner, "reused").pid
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not alive(pid))
    # Another process now holds the job's recorded pid (as if the OS had reused it).
    other = subprocess.Popen(["sleep", "30"])
    try:
        path = runner.directory("reused") / "status.json"
        recorded = json.loads(path.read_text())
        path.write_text(json.dumps({**recorded, "pid": other.pid}))
        status = runner.status("reused")
        assert status.state is JobState.FAILED and status.reason == REASON_DIED
        assert "(its pid was reused)" in status.message

        path.write_text(json.dumps({**recorded, "pid": other.pid}))
        stopped = runner.cancel("reused", grace=0.2)
        assert stopped.state is JobState.FAILED and "(its pid was reused)" in stopped.message
        assert other.poll() is None, "cancel signalled a process that is not the job"
    finally:
        other.kill()
        other.wait()


def test_a_pending_job_whose_process_never_registers_fails(tmp_path: Path) -> None:
    jobs = LocalRunner(tmp_path / "jobs", start_timeout=WAIT)
    jobs._launch = lambda directory: None  # type: ignore[method-assign]
    jobs.submit(job("orphan", "hang"))
    assert jobs.status("orphan").state is JobState.PENDING
    # The start timeout passes: the job was created longer ago than that.
    path = jobs.directory("orphan") / "status.json"
    recorded = json.loads(path.read_text())
    long_ago = datetime.now(UTC) - timedelta(seconds=2 * WAIT)
    path.write_text(json.dumps({**recorded, "created_at": long_ago.isoformat()}))
    status = jobs.status("orphan")
    assert status.state is JobState.FAILED and status.reason == "not_started"
    assert status.message == f"the job process was not started within {WAIT:g}s"


# --- logs and find --------------------------------------------------------------------------------


def test_log_cursors_stream_new_text_across_calls(runner: LocalRunner, tmp_path: Path) -> None:
    release = tmp_path / "release"  # steps 4-6 come only once steps 1-3 were read
    runner.submit(job("stream", "succeed", steps=6, sleep=0.1, hold_after=3, hold=str(release)))
    pieces, cursor = [], 0
    deadline = time.monotonic() + WAIT
    while True:
        final = runner.status("stream").final
        text, cursor = runner.logs("stream", cursor)
        pieces.append(text)
        if "step 3 of 6" in "".join(pieces):
            release.touch()
        if final:
            break
        assert time.monotonic() < deadline, "".join(pieces)
        time.sleep(0.05)
    whole = (runner.directory("stream") / "job.log").read_bytes()
    assert "".join(pieces) == whole.decode("utf-8") and cursor == len(whole)
    assert sum(1 for piece in pieces if "step " in piece) >= 2, "the log came in one piece"
    assert runner.logs("stream", cursor) == ("", cursor)

    # Tiny reads never split a character: '–' is three bytes.
    small, cursor = [], 0
    while cursor < len(whole):
        text, cursor = runner.logs("stream", cursor, max_bytes=5)
        small.append(text)
    assert "".join(small) == whole.decode("utf-8")


def test_find_lists_jobs_by_labels(runner: LocalRunner, tmp_path: Path) -> None:
    runner.submit(job("a-1", "succeed", {"campaign": "bot", "round": "1"}, steps=0))
    runner.submit(job("a-2", "succeed", {"campaign": "bot", "round": "2"}, steps=0))
    runner.submit(job("b-1", "succeed", {"campaign": "other", "round": "1"}, steps=0))
    for name in ("a-1", "a-2", "b-1"):
        runner.wait(name, timeout=WAIT, poll=0.05)

    def names(labels: dict[str, str] | None) -> list[str]:
        return [status.name for status in runner.find(labels)]

    assert names({"campaign": "bot"}) == ["a-1", "a-2"]
    assert names({"campaign": "bot", "round": "2"}) == ["a-2"]
    assert names({"round": "1"}) == ["a-1", "b-1"]
    assert names(None) == ["a-1", "a-2", "b-1"]
    assert names({"campaign": "none"}) == []
    assert LocalRunner(tmp_path / "empty").find({}) == []


@pytest.mark.parametrize("name", ["Upper", "-dash", "dash-", "under_score", "a" * 64, "", "a.b"])
def test_names_must_be_dns_labels(runner: LocalRunner, name: str) -> None:
    with pytest.raises(TuneloopError, match="not a DNS label"):
        runner.submit(job(name, "succeed"))
    with pytest.raises(TuneloopError, match="not a DNS label"):
        runner.status(name)
    assert not runner.root.exists()


def test_unknown_job_is_not_found(runner: LocalRunner) -> None:
    with pytest.raises(JobNotFoundError, match="no job 'ghost'"):
        runner.status("ghost")


# --- command line ---------------------------------------------------------------------------------


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    """Run `tuneloop local ...` in this process; entry points resolve from this folder."""
    monkeypatch.chdir(HERE)
    monkeypatch.setenv(PROGRESS_INTERVAL_ENV, "0.05")
    monkeypatch.setenv("TUNELOOP_LOCAL_ROOT", str(tmp_path / "jobs"))
    monkeypatch.setattr("tuneloop.cli.local._POLL_SECONDS", 0.05)

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(["local", *argv])
        out, err = capsys.readouterr()
        return code, out, err

    yield run
    reap(tmp_path / "jobs")


def recipe(tmp_path: Path, name: str, **params: Any) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"run": {"name": name}, **params}))
    return str(path)


def test_cli_run_exit_codes(cli, tmp_path: Path) -> None:
    ok = recipe(tmp_path, "cli-ok", steps=3, sleep=0.02)
    code, out, err = cli("run", ok, "--output", "out/", "--entrypoint", "fake_jobs:succeed")
    assert code == 0, err
    assert "started job cli-ok" in out and "cli-ok: SUCCEEDED, step 3/3 (100%)" in out

    code, out, _ = cli("run", ok, "--output", "out/", "--entrypoint", "fake_jobs:succeed")
    assert code == 0 and "job cli-ok already exists (SUCCEEDED)" in out
    assert len((LocalRunner().spec("cli-ok").outputs_dir / "starts.txt").read_text().split()) == 1

    bad = recipe(tmp_path, "cli-bad")
    code, _, err = cli("run", bad, "--output", "o", "--entrypoint", "fake_jobs:fail")
    assert code == 1
    assert "job cli-bad FAILED: ValueError: bad batch 3" in err and "Traceback" in err

    code, _, err = cli(
        "run", ok, "--output", "o", "--name", "cli-missing", "--entrypoint", "tuneloop_nope:run"
    )
    assert code == 1 and "cannot import entry point 'tuneloop_nope:run'" in err

    code, _, err = cli("run", ok, "--output", "o", "--name", "Not_A_Label")
    assert code == 2 and "--name: 'Not_A_Label' is not a DNS label" in err
    code, _, err = cli("run", str(tmp_path / "absent.yaml"), "--output", "o")
    assert code == 2 and "no such file" in err


def test_cli_status_logs_and_cancel(cli, tmp_path: Path) -> None:
    ok = recipe(tmp_path, "cli-done", steps=2, sleep=0)
    assert cli("run", ok, "--output", "o", "--entrypoint", "fake_jobs:succeed")[0] == 0

    code, out, _ = cli("status", "cli-done")
    assert code == 0 and out.startswith("cli-done: SUCCEEDED, step 2/2 (100%)")
    code, out, _ = cli("status", "cli-done", "--json")
    assert code == 0 and json.loads(out)["result"]["steps"] == 2
    code, out, _ = cli("logs", "cli-done")
    assert code == 0 and "step 2 of 2" in out and "job cli-done succeeded" in out
    code, out, _ = cli("cancel", "cli-done")
    assert code == 0 and "had already ended: SUCCEEDED" in out

    code, _, err = cli("status", "ghost")
    assert code == 2 and "no job 'ghost'" in err

    hang = recipe(tmp_path, "cli-hang")
    code, out, _ = cli("run", hang, "--output", "o", "--entrypoint", "fake_jobs:hang", "--detach")
    assert code == 0 and "tuneloop local cancel cli-hang" in out
    wait_for(lambda: LocalRunner().status("cli-hang").state is JobState.RUNNING)
    code, out, _ = cli("cancel", "cli-hang", "--grace", "1")
    assert code == 0 and "cli-hang: STOPPED" in out
    code, out, err = cli("logs", "cli-hang", "--follow")
    assert code == 1 and "stopped by cancel" in err


@pytest.mark.parametrize(
    "inherited",
    [signal.SIG_DFL, signal.SIG_IGN],
    ids=["from a terminal", "started in the background by a script (SIGINT ignored)"],
)
def test_cli_ctrl_c_detaches_and_the_job_keeps_running(
    tmp_path: Path, inherited: signal.Handlers
) -> None:
    root = tmp_path / "jobs"
    hang = recipe(tmp_path, "cli-attach")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TUNELOOP_LOCAL_ROOT": str(root)}
    command = [sys.executable, "-m", "tuneloop.cli", "local", "run", hang, "--output", "o"]
    attached = subprocess.Popen(
        [*command, "--entrypoint", "fake_jobs:hang"],
        cwd=HERE,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # What the command inherits: a terminal's default, or the SIGINT a script's background
        # command ignores (a suite run in the background would pass that on too).
        preexec_fn=lambda: signal.signal(signal.SIGINT, inherited),
    )
    try:
        assert attached.stdout is not None
        assert attached.stdout.readline().startswith("started job cli-attach")
        jobs = LocalRunner(root)
        started(jobs, "cli-attach")
        attached.send_signal(signal.SIGINT)
        _, err = attached.communicate(timeout=WAIT)
        assert attached.returncode == 130
        assert "detached; job cli-attach keeps running" in err
        assert "tuneloop local cancel cli-attach" in err
        time.sleep(0.2)
        assert jobs.status("cli-attach").state is JobState.RUNNING
        assert jobs.cancel("cli-attach", grace=1).state is JobState.STOPPED
    finally:
        if attached.poll() is None:
            attached.kill()
        reap(root)


def test_runner_module_needs_only_the_standard_library() -> None:
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "import tuneloop.local.runner, tuneloop.local.job\n"
        "print(sorted(m for m in set(sys.modules) - before if m.split('.')[0] not in\n"
        "      sys.stdlib_module_names and not m.startswith('tuneloop')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    assert runner_module.DEFAULT_ENTRYPOINT == "tuneloop.local.train:run_recipe"
