"""Run a Python module as ``__main__`` and, when it ends, write its peak memory to a file.

usage: python tests/peak_memory.py PEAK_FILE MODULE [ARGS...]

A test cannot read a child's peak memory from ``wait4``/``ru_maxrss``: Linux carries the peak of
the process image an ``exec`` replaces into the new program's ``ru_maxrss``, so a command
started from a pytest process that has grown to 400 MB reports at least 400 MB. The child's own
``VmHWM`` (the peak of its current address space) starts afresh at ``exec``; the workers it
forks report through its ``RUSAGE_CHILDREN``. PEAK_FILE gets the larger of the two, in MiB.
"""

from __future__ import annotations

import atexit
import resource
import runpy
import sys
from pathlib import Path


def peak_mib() -> float:
    """This process's own peak resident memory, or its largest child's, in MiB."""
    own_kib = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            own_kib = int(line.split()[1])
    children_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own_kib, children_kib) / 1024


def read_peak(path: Path) -> float | None:
    """What a run wrote to ``path``; None when it wrote nothing (killed before it ended)."""
    try:
        return float(path.read_text())
    except (OSError, ValueError):
        return None


def _main() -> None:
    peak_file, module, *args = sys.argv[1:]
    atexit.register(lambda: Path(peak_file).write_text(f"{peak_mib():.1f}"))
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    _main()
