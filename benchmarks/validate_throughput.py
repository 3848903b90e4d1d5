"""Throughput and peak memory of `tuneloop data validate` on a large SFT file.

Generates a realistic multi-turn SFT dataset in the Bedrock Converse format (system prompt,
1-3 user/assistant turns, varied text, about 1.2 KB per record, every record distinct), then
validates it with

- tuneloop, single process (``--workers 1``);
- tuneloop with ``--workers N`` (default: one per core);
- the public reference validator (``nova_ft_dataset_validator.py``), when ``--reference PATH``
  names a copy of it.

Each run is a fresh subprocess, so wall time includes interpreter start and peak RSS is that
run's own (the largest single process of the run, as ``/usr/bin/time -f %M`` reports it).
Each measurement runs ``--repeat`` times; the table shows the best wall time and the highest
peak RSS. The two tuneloop runs must report the same result (verdict, counts, sha256, first
errors, ...); a difference exits with status 1.

Targets (``--check`` exits with status 1 when one is missed): single process >= 120 MB/s,
>= 10x the reference when it is measured, peak RSS <= 200 MB.

    python benchmarks/validate_throughput.py                        # 200,000 records (~240 MB)
    python benchmarks/validate_throughput.py --reference /path/to/nova_ft_dataset_validator.py
    python benchmarks/validate_throughput.py --size-gb 1 --check    # memory target on ~1 GB
    python benchmarks/validate_throughput.py --file data.jsonl      # reuse (or create) a file
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
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

TARGET_MB_S = 120.0
TARGET_RATIO = 10.0
TARGET_RSS_MB = 200.0

# Fields of the JSON report that legitimately differ between two runs on the same file.
VOLATILE_FIELDS = {"seconds"}


# -- dataset generation ---------------------------------------------------------------------

SUBJECTS = [
    "the billing service",
    "our mobile app",
    "the data pipeline",
    "the quarterly report",
    "the onboarding flow",
    "the search index",
    "the payment gateway",
    "the warehouse robot",
    "the customer portal",
    "the nightly backup",
    "the recommendation model",
    "the CI build",
    "the support queue",
    "the shipping estimate",
    "the inventory sync",
    "the login page",
    "the invoice template",
    "the Kubernetes cluster",
    "the marketing email",
    "the API gateway",
    "la facture client",
    "the café menu",
    "the naïve baseline",
    "the Zürich office",
]
VERBS = [
    "keeps failing after",
    "slowed down since",
    "needs a review before",
    "was updated during",
    "started timing out after",
    "must be migrated before",
    "reports wrong totals after",
    "was rolled back during",
    "stopped sending alerts after",
    "doubled in cost since",
]
EVENTS = [
    "the last release",
    "the holiday weekend",
    "the schema change",
    "the region failover",
    "the price update",
    "Tuesday's deploy",
    "the security patch",
    "the vendor switch",
    "the traffic spike",
    "the config rollout",
    "the database upgrade",
    "the audit",
]
ASKS = [
    "Can you explain what is going on and how to fix it?",
    "What should I check first?",
    "Could you write a short plan for the team?",
    "How would you summarize this for a manager?",
    "Is there a quick workaround until the fix ships?",
    "Which metrics would tell us it is resolved?",
    "Please draft a reply to the customer.",
    "What are the risks if we wait a week?",
]
DETAILS = [
    "The error rate went from 0.2% to 4.7% within an hour.",
    "Nothing changed in the code path, only in the configuration.",
    'The logs show "connection reset by peer" roughly every 90 seconds.',
    "Two regions are affected; the third one looks healthy.",
    "We already restarted the workers twice without any effect.",
    "Latency at p99 is now 2.4 s, up from 310 ms.",
    "The finance team needs the numbers by Friday morning.",
    "Customers in Europe noticed it first, around 09:40 CET.",
    "The dashboard still shows green, which is confusing everyone.",
    "A similar incident happened in March and was caused by a stale cache.",
    "We cannot reproduce it on staging with synthetic traffic.",
    "The vendor says their status page reports no outage.",
]
OPENERS = [
    "Good question.",
    "Here is how I would approach it.",
    "Let's break this down.",
    "Short answer: probably the cache.",
    "There are a few likely causes.",
    "Thanks for the details, they help a lot.",
    "This pattern is common after a rollout.",
]
STEPS = [
    "Compare the configuration before and after the change",
    "Check whether the retries are amplifying the load",
    "Look at the connection pool limits on both sides",
    "Roll back the most recent change in one region only",
    "Add a temporary alert on the error rate per endpoint",
    "Confirm the clocks are in sync across the hosts",
    "Replay a sample of failed requests against staging",
    "Ask the vendor for request IDs from their side",
    "Raise the timeout slightly while the root cause is found",
    "Write down the timeline so the postmortem is easy",
    "Verify that the cache keys include the new version",
    "Check the quota dashboard for throttled calls",
]
CLOSERS = [
    "If the numbers recover after that, we know where to look.",
    "Let me know what you find and we can narrow it down.",
    "That should give you a clear signal within an hour.",
    "I would keep the change small and easy to revert.",
    "Happy to help draft the postmortem afterwards.",
    "Once it is stable, a follow-up test would prevent a repeat.",
]
PERSONAS = [
    "You are a careful site reliability engineer who explains incidents plainly.",
    "You are a friendly support specialist for a software company.",
    "You are a senior data engineer. Answer with concrete, ordered steps.",
    "You are an operations analyst who writes concise, factual summaries.",
    "You are a helpful technical writer; prefer short paragraphs and lists.",
]
STYLES = [
    "Keep answers under 200 words unless asked for more.",
    "Use numbered steps when giving instructions.",
    "Mention risks and trade-offs when they matter.",
    "Never invent numbers that were not given in the conversation.",
    "Ask one clarifying question when the request is ambiguous.",
]


def _record(rng: random.Random, index: int) -> dict:
    """One conversation; the ticket number in the first user turn makes every record distinct."""
    choice, sample, randint = rng.choice, rng.sample, rng.randint
    styles = " ".join(sample(STYLES, randint(1, 2)))
    system = f"{choice(PERSONAS)} {styles} Team code T{index % 9973:04d}."
    messages = []
    for turn in range(choice((1, 2, 2, 2, 3, 3))):
        if turn == 0:
            details = " ".join(sample(DETAILS, randint(1, 2)))
            user = (
                f"Ticket {index:08d}. {choice(SUBJECTS).capitalize()} {choice(VERBS)} "
                f"{choice(EVENTS)}. {details} {choice(ASKS)}"
            )
        else:
            user = choice(DETAILS) if randint(0, 1) else choice(ASKS)
        steps = sample(STEPS, randint(1, 3))
        numbered = "\n".join(f"{n}. {step}." for n, step in enumerate(steps, 1))
        assistant = f"{choice(OPENERS)} For {choice(SUBJECTS)}, I would:\n{numbered}"
        if randint(0, 1):
            assistant += f"\n{choice(CLOSERS)} (estimate: {randint(15, 240)} minutes)"
        messages.append({"role": "user", "content": [{"text": user}]})
        messages.append({"role": "assistant", "content": [{"text": assistant}]})
    return {"schemaVersion": SCHEMA_VERSION, "system": [{"text": system}], "messages": messages}


def generate(path: Path, records: int | None, size_bytes: int | None, seed: int) -> int:
    """Write a dataset of ``records`` records (or of about ``size_bytes``); return the count."""
    rng = random.Random(seed)
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": ")).encode
    written = count = 0
    block = 2_000  # small blocks keep this process's own peak RSS low (see measure)
    with open(path, "wb") as out:
        while True:
            n = block if records is None else min(block, records - count)
            if n <= 0:
                break
            data = ("\n".join(dumps(_record(rng, count + i)) for i in range(n)) + "\n").encode()
            out.write(data)
            written += len(data)
            count += n
            if size_bytes is not None and written >= size_bytes:
                break
    return count


# -- measurement ----------------------------------------------------------------------------


@dataclass
class Run:
    name: str
    command: list[str]
    walls: list[float] = field(default_factory=list)
    rss_kb: int = 0
    exit_codes: list[int] = field(default_factory=list)
    own_seconds: list[float] = field(default_factory=list)
    """tuneloop's own timing of each run (the report's seconds: no interpreter start)."""
    stdout: str = ""
    stderr: str = ""

    @property
    def wall(self) -> float:
        return min(self.walls)


def measure(run: Run, env: dict[str, str]) -> None:
    """Run ``run.command`` once in a fresh process; record wall time, peak RSS and output."""
    child = run_child(run.command, env)
    run.stdout, run.stderr = child.stdout, child.stderr
    run.walls.append(child.wall)
    if run.stdout.startswith("{"):  # a tuneloop --json report: its own timing of the pass
        run.own_seconds.append(json.loads(run.stdout).get("seconds") or child.wall)
    run.rss_kb = max(run.rss_kb, child.rss_kb)
    run.exit_codes.append(child.exit_code)


def warm_page_cache(path: Path) -> None:
    with open(path, "rb") as handle:
        while handle.read(1 << 20):
            pass


def tuneloop_command(path: Path, workers: int) -> list[str]:
    return validate_command(path, "--workers", str(workers))


def parse_reference(stdout: str) -> dict[str, int | bool | None]:
    def number(label: str) -> int | None:
        match = re.search(rf"{label}:\s+(\d+)", stdout)
        return int(match.group(1)) if match else None

    return {
        "records": number("Total samples"),
        "valid": number("Valid samples"),
        "invalid": number("Failed samples"),
        "ok": "Result: PASS" in stdout if "Result:" in stdout else None,
    }


def compare(first: dict, second: dict) -> list[str]:
    keys = sorted((set(first) | set(second)) - VOLATILE_FIELDS)
    return [key for key in keys if first.get(key) != second.get(key)]


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--records", type=int, default=200_000, help="records to generate (default %(default)s)"
    )
    size.add_argument(
        "--size-gb", type=float, default=None, help="generate about this many GB instead"
    )
    parser.add_argument(
        "--file",
        type=Path,
        default=None,
        help="dataset to validate: reused when it exists, otherwise generated there and kept "
        "(default: a temporary file, removed afterwards)",
    )
    parser.add_argument("--seed", type=int, default=1, help="generator seed (default 1)")
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="processes for the parallel run (default: one per core, %(default)s)",
    )
    parser.add_argument("--repeat", type=int, default=2, help="runs per measurement (default 2)")
    parser.add_argument(
        "--reference",
        type=Path,
        default=None,
        metavar="PATH",
        help="path to nova_ft_dataset_validator.py to measure on the same file",
    )
    parser.add_argument(
        "--reference-python",
        default=sys.executable,
        metavar="PYTHON",
        help="interpreter (with pydantic) for the reference (default: this one)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help=f"exit 1 unless single process >= {TARGET_MB_S:g} MB/s, >= {TARGET_RATIO:g}x the "
        f"reference (when measured) and peak RSS <= {TARGET_RSS_MB:g} MB",
    )
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.workers < 1 or (args.records is not None and args.records < 1):
        parser.error("--records, --workers and --repeat must be >= 1")
    if args.reference is not None and not args.reference.is_file():
        parser.error(f"--reference {args.reference}: no such file")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tmpdir = None
    if args.file is not None:
        path = args.file
    else:
        tmpdir = tempfile.mkdtemp(prefix="tuneloop-bench-")
        path = Path(tmpdir) / "sft.jsonl"  # the reference requires the .jsonl suffix
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
        size_bytes = int(args.size_gb * 1e9) if args.size_gb else None
        records = None if size_bytes else args.records
        count = generate(path, records, size_bytes, args.seed)
        print(
            f"dataset: {path}: generated {count:,} records in {time.perf_counter() - started:.1f} s"
        )
    size = path.stat().st_size
    warm_page_cache(path)
    floor_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"  {size / 1e6:,.1f} MB, {os.cpu_count()} cores, repeat {args.repeat}, "
        f"peak RSS floor {floor_mb:.1f} MB"
    )

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "plugins"), env.get("PYTHONPATH", "")) if p
    )
    runs = [
        Run("tuneloop, 1 process", tuneloop_command(path, 1)),
        Run(f"tuneloop, {args.workers} workers", tuneloop_command(path, args.workers)),
    ]
    reference = None
    if args.reference is not None:
        reference = Run(
            "reference",
            [
                args.reference_python,
                str(args.reference),
                "-i",
                str(path),
                "-m",
                "lite",
                "-t",
                "sft",
                "-p",
                "sagemaker",
            ],
        )
        runs.append(reference)
    for _ in range(args.repeat):
        for run in runs:
            measure(run, env)

    failures: list[str] = []
    reports: list[dict] = []
    for run in runs[:2]:
        if any(code not in (0, 1) for code in run.exit_codes):
            print(f"{run.name} failed (exit {run.exit_codes}):\n{run.stderr[-2000:]}")
            return 1
        reports.append(json.loads(run.stdout))
    ref_result = parse_reference(reference.stdout) if reference else None
    if reference and (ref_result is None or ref_result["records"] is None):
        print(f"reference failed (exit {reference.exit_codes}):\n{reference.stderr[-2000:]}")
        return 1

    records = reports[0]["records"]
    ref_mb_s = size / 1e6 / reference.wall if reference else None
    if ref_result is not None and ref_result["records"] != records:
        # Without --skip-bad-samples the reference stops at its first invalid record.
        print(
            f"note: the reference read {ref_result['records']:,} of {records:,} records "
            "(it stops at the first invalid one); its speed is not comparable"
        )
        ref_mb_s = None
    print()
    header = (
        f"{'validator':<24} {'wall s':>8} {'MB/s':>8} {'records/s':>11} {'x ref':>7} "
        f"{'peak RSS MB':>12}  verdict"
    )
    print(header)
    print("-" * len(header))
    for run in runs:
        mb_s = size / 1e6 / run.wall
        if run is reference:
            assert ref_result is not None
            count = ref_result["records"] or 0
            verdict = {True: "PASS", False: "FAIL", None: "?"}[ref_result["ok"]]
            verdict += f" ({ref_result['valid']} valid, {ref_result['invalid']} failed)"
        else:
            report = reports[runs.index(run)]
            count = records
            verdict = "VALID" if report["ok"] else "INVALID"
            verdict += f" ({report['valid_records']} valid, {report['invalid_records']} invalid)"
        ratio = f"{mb_s / ref_mb_s:.1f}x" if ref_mb_s else "-"
        print(
            f"{run.name:<24} {run.wall:>8.2f} {mb_s:>8.1f} {count / run.wall:>11,.0f} "
            f"{ratio:>7} {run.rss_kb / 1024:>12.1f}  {verdict}"
        )
    print()

    differing = compare(reports[0], reports[1])
    if differing:
        print(f"MISMATCH: 1 process and {args.workers} workers differ in: {', '.join(differing)}")
    else:
        print(
            f"1 process and {args.workers} workers report identical results "
            f"(sha256 {reports[0]['sha256'][:16]}..., {records:,} records)"
        )
    own = ", ".join(
        f"{size / 1e6 / min(run.own_seconds):.1f} MB/s ({run.name})"
        for run in runs[:2]
        if run.own_seconds
    )
    print(f"tuneloop's own timing (best), without interpreter start: {own}")
    if ref_result is not None and ref_result["ok"] not in (None, reports[0]["ok"]):
        print("note: the reference's verdict differs from tuneloop's")

    single = runs[0]
    single_mb_s = size / 1e6 / single.wall
    if single_mb_s < TARGET_MB_S:
        failures.append(f"single process {single_mb_s:.1f} MB/s < {TARGET_MB_S:g} MB/s")
    if ref_mb_s and single_mb_s / ref_mb_s < TARGET_RATIO:
        failures.append(f"{single_mb_s / ref_mb_s:.1f}x the reference < {TARGET_RATIO:g}x")
    for run in runs[:2]:
        if run.rss_kb / 1024 > TARGET_RSS_MB:
            failures.append(
                f"{run.name}: peak RSS {run.rss_kb / 1024:.1f} MB > {TARGET_RSS_MB:g} MB"
            )
    for failure in failures:
        print(f"target missed: {failure}")
    if not failures:
        print("all targets met")
    if differing:
        return 1
    return 1 if args.check and failures else 0


if __name__ == "__main__":
    sys.exit(main())
