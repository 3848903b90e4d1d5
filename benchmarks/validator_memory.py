"""Peak memory and time of `tuneloop data validate` on a large file of invalid lines.

The validator counts errors per rule and keeps only the first ``--max-errors``; a line with an
error is left out of the duplicate index. So memory must not grow with invalid lines: a file
of about 1 GB of them validates under 200 MB of peak RSS, in one process and with workers.

Generates (in a temporary folder, removed afterwards, unless ``--file`` names one) a file of
distinct invalid lines of one ``--kind``:

- ``mixed`` (default): about 120 bytes a line, a tenth not JSON, half a conversation that ends
  with the user (role-order), the rest with an unknown key (unknown-key);
- ``schema``: only the role-order lines (decoded, the fastest invalid line to check);
- ``not-json``: short lines that are not JSON (``not json 123``: the most lines per byte).

Then validates it with ``--workers 1`` and ``--workers N`` (default 2), each run a fresh
subprocess: wall time includes interpreter start, and the peak RSS is the largest single
process of the run (``/usr/bin/time -f %M``), read with wait4. Prints per run the wall time,
MB/s, lines/s, peak RSS and the error counts, which must be the same for both runs.

Target (``--check`` exits with status 1 when missed): peak RSS <= 200 MB in each run.

    python benchmarks/validator_memory.py                      # about 1 GB of mixed lines
    python benchmarks/validator_memory.py --size-mb 200 --kind not-json
    python benchmarks/validator_memory.py --file /tmp/invalid.jsonl --check
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from _child_process import run_child, validate_command

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_VERSION = "bedrock-conversation-2024"
TARGET_RSS_MB = 200.0
KINDS = ("mixed", "schema", "not-json")


# -- dataset generation ---------------------------------------------------------------------


def _schema_line(index: int) -> str:
    """A conversation that ends with the user: one role-order error."""
    return (
        f'{{"schemaVersion": "{SCHEMA_VERSION}", "messages": [{{"role": "user", '
        f'"content": [{{"text": "Question {index:09d}: what went wrong?"}}]}}]}}'
    )


def _unknown_key_line(index: int) -> str:
    """A valid conversation with a key the format does not define: one unknown-key error."""
    return (
        f'{{"schemaVersion": "{SCHEMA_VERSION}", "note": {index}, "messages": ['
        f'{{"role": "user", "content": [{{"text": "Q{index}"}}]}}, '
        f'{{"role": "assistant", "content": [{{"text": "A"}}]}}]}}'
    )


def invalid_line(kind: str, index: int) -> str:
    if kind == "not-json":
        return f"not json {index}"
    if kind == "schema":
        return _schema_line(index)
    slot = index % 10
    if slot == 0:
        return f"not json {index}"
    return _schema_line(index) if slot <= 5 else _unknown_key_line(index)


def generate(path: Path, size_bytes: int, kind: str) -> int:
    """Write about ``size_bytes`` of distinct invalid lines; return how many."""
    written = count = 0
    block = 20_000  # small blocks keep this process's own peak RSS low (see measure)
    with open(path, "wb") as out:
        while written < size_bytes:
            lines = [invalid_line(kind, count + i) for i in range(block)]
            data = ("\n".join(lines) + "\n").encode()
            out.write(data)
            written += len(data)
            count += block
    return count


# -- measurement ----------------------------------------------------------------------------


@dataclass
class Run:
    workers: int
    wall: float = 0.0
    rss_kb: int = 0
    exit_code: int = 0
    report: dict = field(default_factory=dict)
    stderr: str = ""

    @property
    def name(self) -> str:
        return "1 process" if self.workers == 1 else f"{self.workers} workers"


def measure(run: Run, path: Path, max_errors: int, env: dict[str, str]) -> None:
    """Validate in a fresh process; record wall time, peak RSS and the report."""
    options = ("--workers", str(run.workers), "--max-errors", str(max_errors))
    child = run_child(validate_command(path, *options), env)
    run.wall, run.exit_code, run.stderr = child.wall, child.exit_code, child.stderr
    run.rss_kb = child.rss_kb
    if child.stdout.startswith("{"):
        run.report = json.loads(child.stdout)


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--size-mb", type=float, default=1024, help="file size to generate (default %(default)s)"
    )
    parser.add_argument("--kind", choices=KINDS, default="mixed", help="invalid lines to write")
    parser.add_argument(
        "--file",
        type=Path,
        default=None,
        help="dataset to validate: reused when it exists, otherwise generated there and kept "
        "(default: a temporary file, removed afterwards)",
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="processes for the parallel run (default 2)"
    )
    parser.add_argument(
        "--max-errors", type=int, default=100, help="errors to list (default %(default)s)"
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help=f"exit 1 unless the peak RSS of each run is <= {TARGET_RSS_MB:g} MB",
    )
    args = parser.parse_args(argv)
    if args.size_mb <= 0 or args.workers < 2 or args.max_errors < 0:
        parser.error("--size-mb must be > 0, --workers >= 2 and --max-errors >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tmpdir = None
    if args.file is not None:
        path = args.file
    else:
        tmpdir = tempfile.mkdtemp(prefix="tuneloop-bench-")
        path = Path(tmpdir) / "invalid.jsonl"
    try:
        return _bench(args, path)
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)


def _bench(args: argparse.Namespace, path: Path) -> int:
    if path.exists():
        print(f"dataset: {path} (reused)")
    else:
        started = time.perf_counter()
        count = generate(path, int(args.size_mb * 2**20), args.kind)
        elapsed = time.perf_counter() - started
        print(f"dataset: {path}: generated {count:,} {args.kind} invalid lines in {elapsed:.1f} s")
    size = path.stat().st_size
    floor_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"  {size / 1e6:,.1f} MB, {os.cpu_count()} cores, peak RSS floor {floor_mb:.1f} MB")

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "plugins"), env.get("PYTHONPATH", "")) if p
    )
    runs = [Run(1), Run(args.workers)]
    for run in runs:
        measure(run, path, args.max_errors, env)
        if run.exit_code not in (0, 1) or not run.report:
            print(f"{run.name} failed (exit {run.exit_code}):\n{run.stderr[-2000:]}")
            return 1

    print()
    header = f"{'run':<12} {'wall s':>8} {'MB/s':>7} {'lines/s':>10} {'peak RSS MB':>12}  result"
    print(header)
    print("-" * len(header))
    for run in runs:
        report = run.report
        lines = report["records"]
        listed = len(report["errors"])
        result = f"{report['invalid_records']:,} invalid of {lines:,}, {listed} errors listed"
        print(
            f"{run.name:<12} {run.wall:>8.1f} {size / 1e6 / run.wall:>7.1f} "
            f"{lines / run.wall:>10,.0f} {run.rss_kb / 1024:>12.1f}  {result}"
        )
    counts = runs[0].report["error_counts"]
    print()
    print("errors by rule: " + ", ".join(f"{rule} {n:,}" for rule, n in sorted(counts.items())))

    if runs[1].report["error_counts"] != counts:
        print(f"MISMATCH: {runs[1].name} counted {runs[1].report['error_counts']}")
        return 1
    failures = [
        f"{run.name}: peak RSS {run.rss_kb / 1024:.1f} MB > {TARGET_RSS_MB:g} MB"
        for run in runs
        if run.rss_kb / 1024 > TARGET_RSS_MB
    ]
    for failure in failures:
        print(f"target missed: {failure}")
    if not failures:
        print(f"target met: peak RSS <= {TARGET_RSS_MB:g} MB in each run")
    return 1 if args.check and failures else 0


if __name__ == "__main__":
    sys.exit(main())
