"""Local jobs: detached processes with a directory each, safe to poll, adopt and cancel.

A job named ``NAME`` lives in ``<root>/NAME/``:

- ``job.json``: the spec (name, kind, recipe, output URI, labels, entry point, created time);
- ``status.json``: state, pid and process start time, timestamps, message, failure reason,
  progress and ETA; always replaced atomically (temp file + rename), changed under ``.lock``;
- ``job.log``: the job process's stdout and stderr;
- ``outputs/``: the job's working files.

The process runs ``python -m tuneloop.local.job <dir>`` in its own session (so its own process
group), started through a short-lived launcher: it is nobody's child but init's, survives the
death of whoever submitted it and never lingers as a zombie of a long-lived Airflow worker.

Guarantees the Airflow operators build on:

- ``submit`` is idempotent by name. The directory is prepared under a temporary name and renamed
  into place; the rename is atomic, so of two concurrent submits of one name exactly one starts a
  process, and the other adopts that job.
- ``status`` never reports a dead job as RUNNING: a job whose process is gone, or whose pid now
  belongs to another process (the recorded process start time differs), is FAILED with the last
  log lines as its message, and that verdict is recorded.
- ``cancel`` signals the whole process group (SIGTERM, then SIGKILL after a grace period), only
  after checking that the pid still belongs to the job. Final states never change.
- ``logs`` reads from a byte cursor and returns the next one, so a deferred task can stream the
  log across triggers.

Only the standard library is imported here: triggers poll ``status`` often.
"""

from __future__ import annotations

import codecs
import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

from tuneloop.errors import Problem, TuneloopError
from tuneloop.local.state import JobState

DEFAULT_ROOT = ".tuneloop/jobs"
ROOT_ENV = "TUNELOOP_LOCAL_ROOT"
DEFAULT_ENTRYPOINT = "tuneloop.local.train:run_recipe"
PROGRESS_INTERVAL_ENV = "TUNELOOP_PROGRESS_INTERVAL"
"""Seconds between two progress writes to status.json (default 1)."""

SPEC_FILE = "job.json"
STATUS_FILE = "status.json"
LOG_FILE = "job.log"
LOCK_FILE = ".lock"
OUTPUTS_DIR = "outputs"

# Failure reasons (JobStatus.reason).
REASON_ERROR = "error"
"""The work function raised; the message names the exception, the log has the traceback."""
REASON_ENTRYPOINT = "entrypoint"
"""The entry point could not be imported or is not callable."""
REASON_BAD_SPEC = "bad_spec"
"""job.json could not be read."""
REASON_DIED = "runner_died"
"""The job process ended without recording a result (killed, out of memory, crashed)."""
REASON_NOT_STARTED = "not_started"
"""The job process could not be started."""

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")
_PLUGINS_DIR = str(Path(__file__).resolve().parents[2])
_TAIL_LINES = 20


class JobNotFoundError(TuneloopError):
    """No job of that name under the root."""


def validate_name(name: str) -> str:
    """``name`` if it is a DNS label (RFC 1123: a-z, 0-9 and '-', 1-63 characters)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise TuneloopError(
            [
                Problem(
                    "name",
                    f"{name!r} is not a DNS label",
                    allowed="1-63 characters a-z, 0-9 and '-', starting and ending alphanumeric",
                )
            ]
        )
    return name


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def parse_iso(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


# --- spec and status -----------------------------------------------------------------------------


@dataclass
class JobSpec:
    """What to run. Written once to ``job.json``; the work function receives it."""

    name: str
    output: str
    """Where the job's results go (a local path, file:// or s3:// URI)."""
    recipe: str | dict[str, Any] | None = None
    """A recipe path (made absolute on submit) or URI, or the recipe itself."""
    kind: str = ""
    """sft, cpt, rft, eval, or whatever the entry point understands."""
    labels: dict[str, str] = field(default_factory=dict)
    entrypoint: str = DEFAULT_ENTRYPOINT
    """``module:function``, called as ``function(spec, progress)``."""
    python_path: list[str] = field(default_factory=list)
    """Folders put in front of sys.path in the job process, to import the entry point from."""
    created_at: str | None = None
    directory: Path | None = field(default=None, compare=False)
    """The job's directory; set when the spec is loaded from it, never written to job.json."""

    @property
    def outputs_dir(self) -> Path:
        if self.directory is None:
            raise ValueError(f"job {self.name!r} has no directory yet")
        return self.directory / OUTPUTS_DIR

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("directory")
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], directory: Path | None = None) -> JobSpec:
        known = {f.name for f in fields(cls)} - {"directory"}
        return cls(**{k: v for k, v in data.items() if k in known}, directory=directory)

    def validate(self) -> None:
        problems = []
        try:
            validate_name(self.name)
        except TuneloopError as exc:
            problems.extend(exc.problems)
        if not isinstance(self.output, str) or not self.output:
            problems.append(Problem("output", "an output URI is required"))
        if not isinstance(self.labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.labels.items()
        ):
            problems.append(Problem("labels", "labels map strings to strings"))
        module, _, function = str(self.entrypoint).partition(":")
        if not module or not function:
            problems.append(Problem("entrypoint", f"{self.entrypoint!r} is not module:function"))
        if problems:
            raise TuneloopError(problems)


@dataclass
class Progress:
    step: int
    total: int | None = None
    eta_seconds: float | None = None
    """Seconds left, estimated when the progress was recorded."""
    eta: str | None = None
    """Estimated end time (ISO 8601, UTC)."""
    updated_at: str | None = None

    @property
    def fraction(self) -> float | None:
        if not self.total or self.total <= 0:
            return None
        return max(0.0, min(1.0, self.step / self.total))

    def remaining(self, now: datetime | None = None) -> float | None:
        """Seconds left until the ETA, as of ``now``."""
        eta = parse_iso(self.eta)
        if eta is None:
            return None
        return max(0.0, (eta - (now or datetime.now(UTC))).total_seconds())


@dataclass
class JobStatus:
    name: str
    state: JobState = JobState.PENDING
    pid: int | None = None
    pid_start: str | None = None
    """The process's start time as the OS reports it, to tell the job from a reused pid."""
    created_at: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    message: str = ""
    reason: str | None = None
    """Why a job FAILED: one of the REASON_* values."""
    progress: Progress | None = None
    result: Any = None
    """What the work function returned (JSON), for SUCCEEDED jobs."""
    exit_code: int | None = None

    def __post_init__(self) -> None:
        self.state = JobState(self.state)
        if isinstance(self.progress, Mapping):
            self.progress = Progress(**_known(Progress, self.progress))

    @property
    def final(self) -> bool:
        return self.state.final

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = self.state.value
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobStatus:
        return cls(**_known(cls, data))

    def summary(self) -> str:
        """One line: state, progress and ETA (or the failure reason)."""
        parts = [f"{self.name}: {self.state.value}"]
        if self.progress is not None:
            p = self.progress
            text = f"step {p.step}" + (f"/{p.total}" if p.total else "")
            if p.fraction is not None:
                text += f" ({p.fraction:.0%})"
            parts.append(text)
            remaining = p.remaining()
            if self.state in (JobState.PENDING, JobState.RUNNING) and remaining is not None:
                parts.append(f"ETA {format_duration(remaining)}")
        if self.reason:
            parts.append(f"reason {self.reason}")
        return ", ".join(parts)


def _known(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


def format_duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class LogChunk(NamedTuple):
    text: str
    cursor: int
    """Byte offset to pass to the next ``logs`` call."""


# --- files ----------------------------------------------------------------------------------------


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temp file beside ``path`` and rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, default=str)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_status(directory: Path) -> JobStatus:
    with open(directory / STATUS_FILE, encoding="utf-8") as handle:
        return JobStatus.from_dict(json.load(handle))


def read_spec(directory: Path) -> JobSpec:
    with open(directory / SPEC_FILE, encoding="utf-8") as handle:
        return JobSpec.from_dict(json.load(handle), directory=directory)


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """An exclusive lock on the job directory (flock on ``.lock``), for read-modify-write."""
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def update_status(
    directory: Path, change: Callable[[JobStatus], bool | None], *, final_too: bool = False
) -> JobStatus:
    """Apply ``change`` to the recorded status under the lock and write it back.

    A final state is never changed unless ``final_too``; ``change`` returning False writes
    nothing. Returns the status as recorded afterwards.
    """
    with locked(directory):
        status = read_status(directory)
        if status.final and not final_too:
            return status
        if change(status) is False:
            return status
        write_json_atomic(directory / STATUS_FILE, status.to_dict())
        return status


def finish(
    status: JobStatus, state: JobState, message: str = "", reason: str | None = None
) -> None:
    """Mark ``status`` final (in memory)."""
    status.state = state
    status.ended_at = now_iso()
    status.message = message
    status.reason = reason


def tail_text(path: Path, lines: int = _TAIL_LINES, max_bytes: int = 64 * 1024) -> str:
    """The last ``lines`` lines of a text file ('' when it does not exist)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            data = handle.read()
    except FileNotFoundError:
        return ""
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


# --- processes ------------------------------------------------------------------------------------


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _proc_stat(pid: int) -> tuple[str, int, str] | None:
    """(state, process group, start time in clock ticks) from /proc, or None if no such pid."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
        # The command name (field 2) is in parentheses and may contain anything; split after it.
        rest = raw[raw.rindex(b")") + 2 :].split()
        return rest[0].decode(), int(rest[2]), rest[19].decode()
    except (OSError, ValueError, IndexError):  # gone, or gone while being read
        return None


_HAS_PROC = Path("/proc/self/stat").exists()


def process_start(pid: int) -> str | None:
    """An identifier of the process's start (boot and start time), or None if no such process."""
    if _HAS_PROC:
        stat = _proc_stat(pid)
        return None if stat is None else f"{_boot_id()}:{stat[2]}"
    try:
        out = subprocess.run(
            ["ps", "-o", "lstart=", "-p", str(pid)], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out or None


def process_matches(pid: int, start: str | None) -> bool:
    """Whether ``pid`` is alive (not a zombie) and, when ``start`` is known, started then."""
    if _HAS_PROC:
        stat = _proc_stat(pid)
        if stat is None or stat[0] in ("Z", "X", "x"):
            return False
    else:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return False  # another user's process: not our job
    return start is None or process_start(pid) == start


def group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is in process group ``pgid``."""
    if not _HAS_PROC:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        stat = _proc_stat(int(entry.name))
        if stat is not None and stat[1] == pgid and stat[0] not in ("Z", "X", "x"):
            return True
    return False


def stop_group(pgid: int, grace: float) -> None:
    """SIGTERM the process group, SIGKILL what is left after ``grace`` seconds, wait for it."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not group_alive(pgid):
                return
            time.sleep(0.02)


# --- the runner -----------------------------------------------------------------------------------


class LocalRunner:
    """Submit, watch and cancel local jobs under ``root``.

    ``env`` is added to the job process's environment. ``grace`` is how long ``cancel`` waits
    after SIGTERM before SIGKILL. A PENDING job whose process has not registered after
    ``start_timeout`` seconds is FAILED (its submitter died before starting it).
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        python: str | None = None,
        grace: float = 10.0,
        start_timeout: float = 60.0,
    ) -> None:
        root = root or os.environ.get(ROOT_ENV) or DEFAULT_ROOT
        self.root = Path(root).expanduser().absolute()
        self.env = dict(env or {})
        self.python = python or sys.executable
        self.grace = grace
        self.start_timeout = start_timeout

    def directory(self, name: str) -> Path:
        return self.root / validate_name(name)

    def exists(self, name: str) -> bool:
        return (self.directory(name) / SPEC_FILE).exists()

    # -- submit --

    def submit(self, spec: JobSpec | Mapping[str, Any]) -> JobStatus:
        """Start the job, or adopt the existing job of that name; returns its status."""
        if not isinstance(spec, JobSpec):
            try:
                spec = JobSpec.from_dict(spec)
            except TypeError as exc:
                raise TuneloopError([Problem("spec", str(exc))]) from None
        spec.validate()
        final = self.root / spec.name
        if final.exists():
            return self.status(spec.name)
        if isinstance(spec.recipe, str) and "://" not in spec.recipe:
            spec.recipe = str(Path(spec.recipe).expanduser().absolute())
        spec.created_at = spec.created_at or now_iso()
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".new-{spec.name}-", dir=self.root))
        try:
            write_json_atomic(staging / SPEC_FILE, spec.to_dict())
            status = JobStatus(spec.name, created_at=spec.created_at)
            write_json_atomic(staging / STATUS_FILE, status.to_dict())
            (staging / LOG_FILE).touch()
            (staging / LOCK_FILE).touch()
            (staging / OUTPUTS_DIR).mkdir()
            try:
                os.rename(staging, final)
            except OSError:
                if not final.exists():
                    raise
                return self.status(spec.name)  # another submit won the race: adopt its job
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self._launch(final)
        return self.status(spec.name)

    def _launch(self, directory: Path) -> None:
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (_PLUGINS_DIR, env.get("PYTHONPATH", "")) if p
        )
        command = [self.python, "-m", "tuneloop.local.job", "--launch", str(directory)]
        try:
            result = subprocess.run(
                command,
                env=env,
                cwd=directory,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=60,
            )
            error = result.stderr.strip() if result.returncode != 0 else ""
            if result.returncode != 0 and not error:
                error = f"launcher exited with {result.returncode}"
        except (OSError, subprocess.SubprocessError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        if error:
            with open(directory / LOG_FILE, "a", encoding="utf-8") as log:
                log.write(f"[tuneloop] could not start the job process:\n{error}\n")
            update_status(
                directory,
                lambda s: finish(
                    s,
                    JobState.FAILED,
                    f"could not start the job process: {error.splitlines()[-1]}",
                    REASON_NOT_STARTED,
                ),
            )

    # -- status --

    def spec(self, name: str) -> JobSpec:
        directory = self._existing(name)
        return read_spec(directory)

    def status(self, name: str) -> JobStatus:
        """The job's status; a job whose process is gone is FAILED (and recorded so)."""
        directory = self._existing(name)
        status = self._read(directory)
        if status.final or self._alive(status):
            return status
        return update_status(directory, lambda s: self._bury(directory, s))

    def _existing(self, name: str) -> Path:
        directory = self.directory(name)
        if not directory.is_dir():
            raise JobNotFoundError([Problem("name", f"no job {name!r} under {self.root}")])
        return directory

    def _read(self, directory: Path) -> JobStatus:
        try:
            return read_status(directory)
        except (OSError, ValueError) as exc:
            raise TuneloopError(
                [Problem("name", f"{directory} is not a readable job directory ({exc})")]
            ) from exc

    def _alive(self, status: JobStatus) -> bool:
        """False when a PENDING or RUNNING job has no process any more."""
        if status.pid is not None:
            return process_matches(status.pid, status.pid_start)
        created = parse_iso(status.created_at)
        if created is None:
            return True
        return datetime.now(UTC) - created < timedelta(seconds=self.start_timeout)

    def _bury(self, directory: Path, status: JobStatus) -> bool:
        """Under the lock: mark a job whose process is gone FAILED. False if it is alive."""
        if self._alive(status):
            return False
        if status.pid is None:
            finish(
                status,
                JobState.FAILED,
                f"the job process was not started within {self.start_timeout:g}s",
                REASON_NOT_STARTED,
            )
            return True
        current = process_start(status.pid)
        reused = (
            current is not None and status.pid_start is not None and current != status.pid_start
        )
        why = "is gone (its pid was reused)" if reused else "ended"
        message = f"runner died: job process {status.pid} {why} without recording a result"
        tail = tail_text(directory / LOG_FILE)
        message += "; last log lines:\n" + tail if tail else "; the log is empty"
        finish(status, JobState.FAILED, message, REASON_DIED)
        return True

    def wait(self, name: str, timeout: float | None = None, poll: float = 0.2) -> JobStatus:
        """Poll until the job is final (or ``timeout`` seconds pass); returns the last status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.status(name)
            if status.final or (deadline is not None and time.monotonic() >= deadline):
                return status
            time.sleep(poll)

    # -- cancel --

    def cancel(self, name: str, grace: float | None = None) -> JobStatus:
        """Stop the job's whole process group and record STOPPED; a final job is unchanged."""
        directory = self._existing(name)
        target: list[int] = []

        def stop(status: JobStatus) -> bool:
            if status.pid is not None and process_matches(status.pid, status.pid_start):
                target.append(status.pid)  # its own session: pid == process group id
            elif self._bury(directory, status):
                return True
            finish(status, JobState.STOPPED, "stopped by cancel")
            return True

        status = update_status(directory, stop)
        if target:
            stop_group(target[0], self.grace if grace is None else grace)
        return status

    # -- logs --

    def logs(self, name: str, cursor: int = 0, max_bytes: int = 1 << 20) -> LogChunk:
        """Log text from byte ``cursor`` on (at most ``max_bytes``) and the next cursor.

        A UTF-8 character cut by the end of the read is left for the next call.
        """
        path = self._existing(name) / LOG_FILE
        try:
            with open(path, "rb") as handle:
                handle.seek(max(0, cursor))
                data = handle.read(max(4, max_bytes))
        except FileNotFoundError:
            return LogChunk("", cursor)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        text = decoder.decode(data, final=False)
        held = len(decoder.getstate()[0])
        return LogChunk(text, max(0, cursor) + len(data) - held)

    def tail(self, name: str, lines: int = _TAIL_LINES) -> str:
        return tail_text(self._existing(name) / LOG_FILE, lines)

    # -- find --

    def find(self, labels: Mapping[str, str] | None = None) -> list[JobStatus]:
        """Jobs whose labels include all of ``labels``, oldest first."""
        wanted = dict(labels or {})
        found: list[JobStatus] = []
        if not self.root.is_dir():
            return found
        for entry in sorted(self.root.iterdir()):
            if not _NAME.match(entry.name) or not (entry / SPEC_FILE).is_file():
                continue
            try:
                spec = read_spec(entry)
            except (OSError, ValueError):
                continue
            if all(spec.labels.get(k) == v for k, v in wanted.items()):
                with contextlib.suppress(TuneloopError):
                    found.append(self.status(entry.name))
        return sorted(found, key=lambda s: s.created_at or "")
