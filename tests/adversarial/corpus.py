"""The adversarial corpus of issue 13: how a case of cases.yaml is set up, run and judged.

A case puts its files in a folder of its own (copies of valid campaigns, recipes and datasets
with one thing made hostile, files from files/, or special files made on the spot: FIFOs,
symlinks to /dev/zero, a 100 MB YAML, a 1 GB line), then runs the real `tuneloop` command in a
child process under an address-space limit and a time limit. The time limit detects hangs; it
is not a benchmark, so it is generous.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from peak_memory import read_peak

PEAK_RUNNER = Path(__file__).resolve().parents[1] / "peak_memory.py"

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
FILES = HERE / "files"
MANIFEST = HERE / "cases.yaml"

# Valid documents a case may copy and mutate.
BASES = {
    "demo": REPO / "recipes" / "campaigns" / "demo.yaml",
    "claims": REPO / "recipes" / "campaigns" / "examples" / "claims-smtj.yaml",
    "local-sft": REPO / "recipes" / "local" / "sft-full.yaml",
    "sft-images": REPO / "tests" / "data" / "corpus" / "sft" / "valid_images.jsonl",
}

ADDRESS_SPACE_LIMIT = 1536 * 2**20
"""Each command's address space: ten times what a normal run needs, a quarter of the 3 GB and 4
GB the issue saw, so a runaway allocation ends in the child, never in the machine."""
TIMEOUT_SECONDS = 60.0
"""A hang detector: every case answers in about a second when it is handled."""

# Environment variables that would change what the commands read; a case sets its own.
_CLEARED_ENV = (
    "TUNELOOP_RECIPES_DIR",
    "TUNELOOP_RECIPE_ROOTS",
    "TUNELOOP_CAMPAIGNS_DIR",
    "TUNELOOP_LOCAL_ROOT",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
)


@dataclass(frozen=True)
class Case:
    id: str
    point: int
    """The numbered point of issue 13 the case comes from."""
    what: str
    run: list[str]
    """The `tuneloop` arguments."""
    exit: int
    """2: a bad file, value or option; 1: a dataset read and found invalid."""
    names: str
    """What the error line must name: the file (its name is enough) or the option."""
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    report: bool = False
    """The answer is the dataset report on stdout (exit 1), not one error line on stderr."""
    never: list[str] = field(default_factory=list)
    """Text no output may hold; ``file:PATH`` stands for every line of that file."""
    absent: list[str] = field(default_factory=list)
    """Files (in the case folder) the command must not have created."""
    expect: list[str] = field(default_factory=list)
    """Text the output must hold (the rule or field the error is about)."""
    max_rss_mb: int | None = None
    timeout: float = TIMEOUT_SECONDS
    slow: bool = False
    """Takes more than a few seconds (hundreds of megabytes, or a million lines)."""


def load_cases() -> list[Case]:
    entries = yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))
    cases = [Case(**entry) for entry in entries]
    for case in cases:
        # YAML reads an unquoted 9999-12-31 as a date: arguments must be quoted to stay text.
        assert all(isinstance(arg, str) for arg in case.run), f"{case.id}: quote its arguments"
    return cases


# --- placeholders --------------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\{(case|repo|files)\}|\{(digits|nest):(\d+)\}")


def expand(text: str, case_dir: Path) -> str:
    """``{case}``, ``{repo}`` and ``{files}`` as folders; ``{digits:N}`` as an N-digit number;
    ``{nest:N}`` as N nested YAML lists. Jinja's ``{{ ... }}`` is left alone."""

    def one(match: re.Match[str]) -> str:
        folder, kind, count = match.groups()
        if folder:
            return str({"case": case_dir, "repo": REPO, "files": FILES}[folder])
        n = int(count)
        return "9" * n if kind == "digits" else "[" * n + "]" * n

    return _PLACEHOLDER.sub(one, text)


def _expanded(value: Any, case_dir: Path) -> Any:
    if isinstance(value, str):
        return expand(value, case_dir)
    if isinstance(value, list):
        return [_expanded(item, case_dir) for item in value]
    if isinstance(value, dict):
        return {key: _expanded(item, case_dir) for key, item in value.items()}
    return value


# --- building a case's files ---------------------------------------------------------------------


def build_case(case: Case, case_dir: Path) -> None:
    case_dir.mkdir(parents=True, exist_ok=True)
    for name, spec in case.files.items():
        path = case_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        _build_file(path, spec, case_dir)


def _build_file(path: Path, spec: dict[str, Any], case_dir: Path) -> None:
    if "symlink" in spec:
        path.symlink_to(expand(spec["symlink"], case_dir))
    elif "make" in spec:
        _make(path, spec["make"])
    elif "copy" in spec:
        path.write_text(expand((FILES / spec["copy"]).read_text(encoding="utf-8"), case_dir))
    elif "text" in spec:
        path.write_text(expand(spec["text"], case_dir), encoding="utf-8")
    else:
        path.write_text(_mutated_base(spec, case_dir), encoding="utf-8")


def _mutated_base(spec: dict[str, Any], case_dir: Path) -> str:
    """A valid base document with fields set or dropped, then text replaced or appended."""
    text = BASES[spec["base"]].read_text(encoding="utf-8")
    if "set" in spec or "drop" in spec:
        data = yaml.safe_load(text)
        for where, value in spec.get("set", {}).items():
            parent, key = _parent(data, where)
            parent[key] = _expanded(value, case_dir)
        for where in spec.get("drop", []):
            parent, key = _parent(data, where)
            del parent[key]
        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=4096)
    for old, new in spec.get("replace", {}).items():
        assert old in text, f"{spec['base']} has no {old!r} to replace"
        text = text.replace(old, expand(new, case_dir), 1)
    return text + expand(spec.get("append", ""), case_dir)


def _parent(data: Any, where: str) -> tuple[Any, Any]:
    """The container holding ``where`` ("stages/0/recipe": keys and list indexes by "/")."""
    *steps, last = where.split("/")
    for step in steps:
        data = data[int(step)] if isinstance(data, list) else data[step]
    return data, int(last) if isinstance(data, list) else last


def _make(path: Path, recipe: str) -> None:
    kind, _, size = recipe.partition(":")
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "big-yaml":
        _write_big_yaml(path, int(size) * 2**20)
    elif kind == "long-line":
        _write_long_line(path, int(size) * 2**20)
    elif kind == "invalid-lines":
        path.write_bytes(b"not json\n" * int(size))
    else:
        raise ValueError(f"unknown make: {recipe}")


def _write_big_yaml(path: Path, size: int) -> None:
    """A campaign-looking mapping of distinct keys (no duplicate stops a parser early)."""
    with path.open("w", encoding="utf-8") as handle:
        handle.write("name: demo\n")
        written, block = 0, 0
        while written < size:
            lines = "".join(f"key_{block:05d}_{i:05d}: {'v' * 64}\n" for i in range(10_000))
            handle.write(lines)
            written += len(lines)
            block += 1


def _write_long_line(path: Path, size: int) -> None:
    """One JSON line of ``size`` bytes with no newline: a record's start, then a sparse hole of
    NUL bytes (no disk space, yet a reader sees every byte)."""
    with path.open("wb") as handle:
        handle.write(b'{"messages": [{"role": "user", "content": [{"text": "')
        handle.truncate(size)


# --- running a case ------------------------------------------------------------------------------


@dataclass
class Outcome:
    code: int | None
    """The exit status; None when it ran past the time limit and was killed."""
    stdout: str
    stderr: str
    max_rss_mb: float | None
    """Peak memory of the command and its workers (tests/peak_memory.py); None if it was killed."""

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_case(case: Case, case_dir: Path) -> Outcome:
    peak_file = case_dir / ".peak"
    argv = [
        sys.executable,
        str(PEAK_RUNNER),
        str(peak_file),
        "tuneloop.cli",
        *(expand(arg, case_dir) for arg in case.run),
    ]
    env = {key: value for key, value in os.environ.items() if key not in _CLEARED_ENV}
    env["TUNELOOP_LOCAL_ROOT"] = str(case_dir / "jobs")
    env.update({key: expand(value, case_dir) for key, value in case.env.items()})
    out_path, err_path = case_dir / ".stdout", case_dir / ".stderr"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        process = subprocess.Popen(
            argv,
            cwd=case_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
            preexec_fn=_limit_address_space,
        )
    code = _wait_or_kill(process, case.timeout)
    return Outcome(
        code=code,
        stdout=out_path.read_text(encoding="utf-8", errors="replace"),
        stderr=err_path.read_text(encoding="utf-8", errors="replace"),
        max_rss_mb=read_peak(peak_file),
    )


def _limit_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))


def _wait_or_kill(process: subprocess.Popen[bytes], timeout: float) -> int | None:
    """Wait for the command; a watchdog kills its process group if it runs past ``timeout``."""
    reaped = threading.Event()
    killed = threading.Event()
    lock = threading.Lock()

    def kill() -> None:
        with lock:
            if not reaped.is_set():
                killed.set()
                os.killpg(process.pid, signal.SIGKILL)

    watchdog = threading.Timer(timeout, kill)
    watchdog.start()
    try:
        _, status = os.waitpid(process.pid, 0)
    finally:
        with lock:
            reaped.set()
        watchdog.cancel()
    process.returncode = os.waitstatus_to_exitcode(status)
    return None if killed.is_set() else process.returncode


# --- judging the output --------------------------------------------------------------------------


def error_lines(stderr: str) -> list[str]:
    """stderr's lines without argparse's usage block and without warnings."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    if lines and lines[0].startswith("usage:"):
        lines = [line for line in lines if ": error: " in line]
    return [line for line in lines if not line.startswith("warning: ")]


def forbidden_texts(case: Case, case_dir: Path) -> list[str]:
    """The case's ``never`` list, a ``file:PATH`` entry expanded to that file's lines (those long
    enough not to occur by chance)."""
    texts: list[str] = []
    for entry in case.never:
        entry = expand(entry, case_dir)
        if entry.startswith("file:"):
            content = Path(entry[5:]).read_text(encoding="utf-8", errors="replace")
            texts.extend(line.strip() for line in content.splitlines() if len(line.strip()) >= 8)
        else:
            texts.append(entry)
    return texts
