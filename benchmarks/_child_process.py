"""One measured run of a command in a fresh process: wall time, exit status, output, peak RSS.

Shared by the benchmarks that time `tuneloop data validate` (validate_throughput.py,
validator_memory.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class ChildRun:
    wall: float
    exit_code: int
    stdout: str
    stderr: str
    rss_kb: int
    """Peak RSS of the command or the largest worker it reaped (``/usr/bin/time -f %M``)."""


def validate_command(path: Path, *options: str) -> list[str]:
    """`tuneloop data validate PATH --format sft --model lite --json OPTIONS...`."""
    return [
        sys.executable,
        "-c",
        "import sys; from tuneloop.cli.main import main; sys.exit(main())",
        "data",
        "validate",
        str(path),
        "--format",
        "sft",
        "--model",
        "lite",
        *options,
        "--json",
    ]


def run_child(command: list[str], env: dict[str, str]) -> ChildRun:
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(command, stdout=out, stderr=err, env=env, cwd=ROOT)
        # wait4 gives this child's own rusage; ru_maxrss also covers the worker processes it
        # reaped (the largest one). Linux carries the peak RSS of the forked copy of this
        # process over exec, so the benchmark's own peak is a floor for every measurement:
        # the benchmarks keep it small and print it.
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        return ChildRun(
            wall=wall,
            exit_code=os.waitstatus_to_exitcode(status),
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
            rss_kb=usage.ru_maxrss,
        )
