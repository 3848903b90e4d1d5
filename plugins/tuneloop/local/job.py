"""The job process: ``python -m tuneloop.local.job <job dir>``.

Reads ``job.json``, marks the job RUNNING, imports the entry point (``module:function``) and
calls ``function(spec, progress)``. ``progress(step, total)`` records progress and an ETA in
``status.json`` (at most every ``TUNELOOP_PROGRESS_INTERVAL`` seconds, default 1). The job ends
SUCCEEDED when the function returns (a JSON-able return value is kept as the result), FAILED
when it raises (message in status.json, traceback in the log), STOPPED on SIGTERM, which is
passed on to the rest of the job's process group.

``python -m tuneloop.local.job --launch <job dir>`` starts that process in a new session, with
stdout and stderr appended to ``job.log``, records its pid and exits: the job is then nobody's
child but init's.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tuneloop.errors import TuneloopError
from tuneloop.local.runner import (
    LOG_FILE,
    PROGRESS_INTERVAL_ENV,
    REASON_BAD_SPEC,
    REASON_ENTRYPOINT,
    REASON_ERROR,
    JobState,
    JobStatus,
    Progress,
    finish,
    now_iso,
    process_start,
    read_spec,
    update_status,
)

EXIT_STOPPED = 128 + signal.SIGTERM


class _JobStopped(BaseException):
    """Raised in the main thread by SIGTERM; a BaseException so `except Exception` misses it."""


def log(message: str) -> None:
    print(f"[tuneloop] {datetime.now(UTC):%Y-%m-%d %H:%M:%S}Z {message}", file=sys.stderr)


@contextlib.contextmanager
def _sigterm_held() -> Iterator[None]:
    """Defer SIGTERM while status.json is being written."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _update(directory: Path, change: Callable[[JobStatus], Any]) -> JobStatus:
    with _sigterm_held():
        return update_status(directory, change)


def _on_sigterm(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.killpg(os.getpgrp(), signal.SIGTERM)  # the job's own children stop too
    raise _JobStopped


class ProgressReporter:
    """The ``progress(step, total)`` callback: throttled writes of progress and ETA."""

    def __init__(self, directory: Path, interval: float) -> None:
        self.directory = directory
        self.interval = interval
        self.lock = threading.Lock()
        self.started = time.monotonic()
        self.first: tuple[float, int] | None = None
        self.last_write = 0.0
        self.latest: Progress | None = None
        self.written: Progress | None = None

    def __call__(self, step: int, total: int | None = None) -> None:
        step = int(step)
        total = None if total is None else int(total)
        now = time.monotonic()
        with self.lock:
            if self.first is None:
                self.first = (now, step)
            self.latest = Progress(step, total, *self._eta(now, step, total), updated_at=now_iso())
            due = now - self.last_write >= self.interval or (total is not None and step >= total)
            if not due:
                return
            self.last_write = now
            self._write(self.latest)

    def _eta(self, now: float, step: int, total: int | None) -> tuple[float | None, str | None]:
        if total is None or total <= 0:
            return None, None
        if step >= total:
            return 0.0, now_iso()
        # Rate since the first report (model loading before step 1 does not count), or since
        # the start when there is only one report so far.
        assert self.first is not None
        since, base = self.first if step > self.first[1] else (self.started, 0)
        if step <= base or now <= since:
            return None, None
        seconds = (total - step) * (now - since) / (step - base)
        eta = datetime.now(UTC) + timedelta(seconds=seconds)
        return round(seconds, 1), eta.isoformat(timespec="milliseconds")

    def _write(self, progress: Progress) -> None:
        def change(status: JobStatus) -> None:
            status.progress = progress

        _update(self.directory, change)
        self.written = progress

    def pending(self) -> Progress | None:
        """The latest progress, when it has not been written yet."""
        with self.lock:
            return self.latest if self.latest is not self.written else None


def resolve_entrypoint(entrypoint: str) -> Callable[..., Any]:
    module_name, _, attribute = entrypoint.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"entry point {entrypoint!r} is not module:function")
    # Idle OpenMP threads otherwise spin, and on a small machine shared with other processes
    # training runs many times slower; it must be set before torch is first imported.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    target: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(f"entry point {entrypoint!r} is not callable")
    return target


def _json_result(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


def run(directory: Path) -> int:
    """Run the job in ``directory``; the exit code is 0 SUCCEEDED, 1 FAILED, 143 STOPPED."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    reporter: ProgressReporter | None = None
    try:
        try:
            spec = read_spec(directory)
        except (OSError, ValueError, TypeError) as exc:
            log(f"cannot read the job spec: {exc}")
            _end(directory, JobState.FAILED, f"cannot read job.json: {exc}", REASON_BAD_SPEC)
            return 1

        pid = os.getpid()

        def start(status: JobStatus) -> None:
            if status.pid != pid or not status.pid_start:
                status.pid, status.pid_start = pid, process_start(pid)
            status.state = JobState.RUNNING
            status.started_at = now_iso()

        if _update(directory, start).state is not JobState.RUNNING:
            log(f"job {spec.name} was stopped before it started")
            return EXIT_STOPPED
        log(f"job {spec.name} started (pid {pid}): {spec.entrypoint}")
        for path in reversed(spec.python_path):
            if path not in sys.path:
                sys.path.insert(0, path)

        try:
            function = resolve_entrypoint(spec.entrypoint)
        except Exception as exc:
            traceback.print_exc()
            message = f"cannot import entry point {spec.entrypoint!r}: {type(exc).__name__}: {exc}"
            log(message)
            _end(directory, JobState.FAILED, message, REASON_ENTRYPOINT)
            return 1

        interval = float(os.environ.get(PROGRESS_INTERVAL_ENV, "1"))
        reporter = ProgressReporter(directory, interval)
        try:
            result = function(spec, reporter)
        except SystemExit as exc:
            if exc.code not in (None, 0):
                return _failed(directory, reporter, exc)
            result = None
        except Exception as exc:
            return _failed(directory, reporter, exc)
        log(f"job {spec.name} succeeded")
        _end(directory, JobState.SUCCEEDED, progress=reporter.pending(), result=result)
        return 0
    except _JobStopped:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        log("stopped by SIGTERM")
        progress = reporter.pending() if reporter is not None else None
        _end(directory, JobState.STOPPED, "stopped by SIGTERM", progress=progress)
        return EXIT_STOPPED


def _failed(directory: Path, reporter: ProgressReporter, exc: BaseException) -> int:
    if not isinstance(exc, TuneloopError):  # a typed error's message already says what and where
        traceback.print_exc()
    message = f"{type(exc).__name__}: {exc}"
    log(f"job failed: {message}")
    _end(directory, JobState.FAILED, message, REASON_ERROR, progress=reporter.pending())
    return 1


def _end(
    directory: Path,
    state: JobState,
    message: str = "",
    reason: str | None = None,
    *,
    progress: Progress | None = None,
    result: Any = None,
) -> None:
    exit_code = {JobState.SUCCEEDED: 0, JobState.FAILED: 1}.get(state, EXIT_STOPPED)

    def change(status: JobStatus) -> None:
        finish(status, state, message, reason)
        status.exit_code = exit_code
        if progress is not None:
            status.progress = progress
        if result is not None:
            status.result = _json_result(result)

    _update(directory, change)


def launch(directory: Path) -> int:
    """Start the job process in its own session and record its pid; print the pid."""
    log_fd = os.open(directory / LOG_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "tuneloop.local.job", str(directory)],
            cwd=directory,
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=log_fd,
            start_new_session=True,
            close_fds=True,
        )
    finally:
        os.close(log_fd)
    pid = process.pid
    # Read before this process exits: until then the job cannot be reaped, so its pid is its own.
    start = process_start(pid)

    def record(status: JobStatus) -> bool:
        if status.pid not in (None, pid):
            return False
        status.pid, status.pid_start = pid, start
        return True

    update_status(directory, record)
    print(pid)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 2 and args[0] == "--launch":
        return launch(Path(args[1]).absolute())
    if len(args) != 1:
        print("usage: python -m tuneloop.local.job [--launch] JOB_DIR", file=sys.stderr)
        return 2
    return run(Path(args[0]).absolute())


if __name__ == "__main__":
    raise SystemExit(main())
