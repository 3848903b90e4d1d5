"""What ``make demo`` prints: progress while a round runs, a summary per round as it ends, then
the table, the reward probes' verdicts, the last round's curves in one line, and where to look
(the report, its plots, the ledger, MLflow)."""

from __future__ import annotations

import shlex
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

PRIMARY = "exact_match"
REPO = Path(__file__).resolve().parents[3]
AIRFLOW_UI_PORT = 8080
"""Where ``make airflow`` serves the UI (its AIRFLOW_PORT)."""


class ProgressLine:
    """Progress while a round runs: one line rewritten in place on a terminal; elsewhere (a log,
    a pipe) a new line when ``key`` changes (another task or job) and otherwise at most one
    every ``interval`` seconds while the text changes (steps, ETA)."""

    def __init__(
        self,
        stream: TextIO,
        *,
        tty: bool | None = None,
        interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.interval = interval
        self.clock = clock
        self._text: str | None = None
        self._key: str | None = None
        self._printed = float("-inf")
        self._open = False  # a rewritten line is on the terminal

    def show(self, text: str, key: str) -> None:
        now = self.clock()
        if self.tty:
            if text != self._text:
                width = max(20, shutil.get_terminal_size((100, 20)).columns - 1)
                self.stream.write("\r" + text[:width] + "\x1b[K")
                self.stream.flush()
                self._open = True
        elif key != self._key or (text != self._text and now - self._printed >= self.interval):
            self.stream.write(text + "\n")
            self.stream.flush()
            self._printed = now
        self._text, self._key = text, key

    def done(self) -> None:
        """The round ended: clear the rewritten line; the next round starts afresh."""
        if self.tty and self._open:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
        self._open = False
        self._text = self._key = None
        self._printed = float("-inf")


def print_round(record: Any, seconds: float) -> None:
    decision = record.decision
    value = record.metrics.get(PRIMARY)
    base = record.baseline.get(PRIMARY)
    stages = " -> ".join(s.name for s in record.stages) or "(no stage)"
    print(
        f"   round {record.round}: {stages}, {PRIMARY} {value:.3f}"
        + (f" (base model {base:.3f})" if base is not None else "")
        + f", {seconds:.0f} s"
    )
    print(f"   decision: {decision.action.value}. {decision.reason}")


def print_lifecycle(plan: Any, applies: list[Any], campaign_dir: Path) -> None:
    """What the lifecycle did during this demo: the rounds its latest ``plan`` keeps and why,
    what ``applies`` (those recorded since the demo began) archived and deleted, the bytes and
    the estimated storage cost saved."""
    from tuneloop.tracking.report import dollars, human_bytes

    kept = sorted(plan.retained, key=lambda r: r.round)
    print(
        "   rounds kept: "
        + (", ".join(f"round {r.round} ({', '.join(r.reasons)})" for r in kept) or "none")
    )
    results = [r for a in applies for r in a.results]
    archived = [r for r in results if r.outcome == "archived"]
    deleted = [r for r in results if r.outcome == "deleted"]
    failed = [r for r in results if r.outcome == "failed"]
    if not archived and not deleted:
        print(
            f"   archived: nothing (no round outside the last {plan.keep_last} other than the "
            "champion yet)"
        )
    for result in archived:
        tarball = _folder(result.archive_uri or "", campaign_dir)
        size = human_bytes(result.bytes)
        print(f"   archived {_folder(result.uri, campaign_dir)} -> {tarball} ({size})")
    for result in deleted:
        print(f"   deleted {_folder(result.uri, campaign_dir)} ({human_bytes(result.bytes)})")
    for result in failed:
        print(f"   failed: {_folder(result.uri, campaign_dir)}: {result.detail}")
    saved = sum(a.monthly_cost_saved for a in applies)
    moved = sum(r.bytes for r in archived)
    print(
        f"   lifecycle: archived {len(archived)} folder(s), {human_bytes(moved)}; deleted "
        f"{len(deleted)}; estimated storage cost saved {dollars(saved)}/month (local folders "
        f"priced as S3 STANDARD, tarballs as {plan.archive_storage_class}; prices: "
        f"{plan.prices_source})"
    )


def _folder(uri: str, campaign_dir: Path) -> str:
    """A path inside the campaign's folder, shown from it."""
    path = Path(uri)
    return str(path.relative_to(campaign_dir)) if path.is_relative_to(campaign_dir) else uri


def summarize(ledger: Any, campaign_dir: Path, seconds: float | None, cf: Any) -> None:
    """The rounds table and where the report, ledger and MLflow store are; ``seconds`` None:
    no time line (nothing ran now)."""
    from tuneloop.rounds.record import shown_metrics
    from tuneloop.tracking.report import format_table

    records = [shown_metrics(cf, r.model_dump(mode="json")) for r in ledger.records()]
    if not records:
        print("no round was recorded")
        return
    print()
    print(format_table(records, primary_metric=PRIMARY, baseline=records[-1].get("baseline")))
    report = campaign_dir / "report" / "report.md"
    store = campaign_dir / "mlflow.db"
    if seconds is not None:
        print(f"\n{len(records)} round(s) recorded; this demo took {seconds / 60:.1f} min.")
    champion = ledger.champion()
    if champion is not None:
        last = champion.stages[-1] if champion.stages else None
        where = last.output_uri if last else champion.base
        value = champion.metrics.get(PRIMARY)
        print(f"Champion: round {champion.round} ({PRIMARY} {value:.3f}), {where}")
    print_probes(records)
    print_curves(records, report.parent)
    print(f"Round report: {report} (the plot: {report.with_suffix('.png')})")
    print(f"Ledger:       {campaign_dir / 'rounds'}/")
    print(
        "MLflow UI:    .venv/bin/mlflow ui --backend-store-uri "
        + shlex.quote(f"sqlite:///{store}")
        + " --port 5000   (then open http://127.0.0.1:5000)"
    )


LABEL_WIDTH = len("Round report: ")
"""The final lines' labels are this wide, so that what follows them lines up."""


def _labelled(label: str, lines: Sequence[str]) -> None:
    """``label`` before the first line, the others indented under it."""
    for index, line in enumerate(lines):
        print((label if index == 0 else "").ljust(LABEL_WIDTH) + line)


def print_probes(records: Sequence[Mapping[str, Any]]) -> None:
    """The verdict of each reward probe the rounds ran before their RFT stages, with the
    problems of a probe that failed and their fixes."""
    from tuneloop.tracking.report import probe_summary, problem_line

    lines = []
    for record in records:
        for probe in record.get("probes") or []:
            lines.append(
                f"round {record['round']} ({probe.get('function', '?')}): {probe_summary(probe)}"
            )
            lines += [f"  {problem_line(problem)}" for problem in probe.get("problems") or []]
    _labelled("Reward probe:", lines)


def print_curves(records: Sequence[Mapping[str, Any]], report_folder: Path) -> None:
    """The last round's curves in one line (``sft: loss 2.1 -> 0.4 over 300 steps; rft: reward
    mean 0.31 -> 0.58 over 40 steps``), what the monitors found in it, and the training plot."""
    from tuneloop.tracking.plots import TRAINING_PNG_NAME
    from tuneloop.tracking.report import finding_line, stage_summary

    curved = [r for r in records if any(stage_summary(s) for s in r.get("stages") or [])]
    if not curved:
        return
    last = curved[-1]
    parts = [
        f"{s.get('name')}: {stage_summary(s)}" for s in last.get("stages") or [] if stage_summary(s)
    ]
    lines = [f"round {last['round']}: " + "; ".join(parts)]
    for stage in last.get("stages") or []:
        if stage.get("stopped_early"):
            lines.append(f"  {stage.get('name')} stopped early: {stage['stopped_early']}")
        for finding in stage.get("findings") or []:
            lines.append(f"  {stage.get('name')}: {finding_line(finding).replace('**', '')}")
    _labelled("Curves:", lines)
    plot = report_folder / TRAINING_PNG_NAME
    if plot.is_file():
        _labelled("Curves plot:", [str(plot)])


def ui_hint(home: Path, running_url: str | None) -> str:
    """How to open Airflow's UI on the demo's runs (``home`` is the demo's AIRFLOW_HOME)."""
    passwords = home / "simple_auth_manager_passwords.json.generated"
    project = home.parent.parent
    if running_url:
        where = f"open {running_url}"
    else:
        make = "make airflow" if project == REPO else f"make airflow PROJECT_DIR={project}"
        where = f"{make}, then open http://localhost:{AIRFLOW_UI_PORT}"
    return (
        f"Airflow UI on these runs: {where} (DAG tuneloop_demo; user admin, password in "
        f"{passwords})"
    )
