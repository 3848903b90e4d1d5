"""The round report: a Markdown table of a campaign's rounds, a PNG of its metrics per round, and
the same table as fixed-width text for a terminal.

The Markdown's sections after the table:

- "Training" (when a stage recorded curves, findings or an early stop): ``training.png``
  (`tuneloop.tracking.plots`), then per round and stage its headline curve from first to last
  value, the last value of its other main series, why monitoring stopped it, and each finding
  with its policy and fix;
- "Reward probe" (when a round ran one): per probe its function, verdict, separation, good vs bad
  mean, latency and positive share, then its problems with their fixes and its warnings;
- "Cost" (records with cost estimates): per round every job (its stages, the evaluation, the
  base model's evaluation in the round that measured it) with its instances, instance-hours,
  GPU-hours and estimated cost, the round's total, the campaign's total and the price source;
- "Storage" (see below).

A round that failed before its evaluation (the record's ``failed``) reads ``failed (<action>)``
in the table, with why it failed before the decision's reason.

Input is the ledger's records as plain mappings (``RoundRecord.model_dump(mode="json")``), so
this module needs neither the ledger nor the gate. Output depends on the records alone (no
clock, no locale), so the same ledger always renders the same bytes: a report can be diffed,
cached and logged as an artifact again without changing it.

The report's "Storage" section comes from the lifecycle's records, plain mappings too: the
latest plan (``LifecyclePlan``) and the latest apply (``ApplyReport``), as
`tuneloop.tracking.lifecycle.storage_records` reads them. Bytes by storage class are the
plan's, moved to their new class where the latest apply carried that plan out; the monthly
cost is the plan's (or that apply's) estimate.

matplotlib is imported inside the functions that draw, through its object API with the Agg
canvas: no pyplot, no global backend switched in the process that calls it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

from tuneloop.artifacts.series import (
    REWARD_ERROR_RATE,
    REWARD_HIGH,
    REWARD_LOW,
    REWARD_MEAN,
    REWARD_STD,
    ROLLOUT_COMPLETION,
    TRAIN_LOSS,
    VAL_LOSS,
    VAL_REWARD_MEAN,
)
from tuneloop.tracking.plots import TRAINING_PNG_NAME, fails, points_of, render_training

MARKDOWN_NAME = "report.md"
PNG_NAME = "report.png"
CHAMPION_MARK = "★"
NO_VALUE = "—"
OTHER_COLOURS = ("C1", "C2", "C4", "C5", "C6", "C7", "C8", "C9")
"""matplotlib's cycle without C0 (the primary metric) and C3 (red: rollbacks)."""


@dataclass(frozen=True)
class ReportPaths:
    """The files `write_report` wrote; iterating gives each of them (what
    `Tracker.log_round`'s ``report_files`` takes)."""

    markdown: Path
    png: Path
    training: Path | None = None
    """The training curves (`tuneloop.tracking.plots`); None when no stage recorded a curve."""

    @property
    def files(self) -> list[Path]:
        """Every file written: the Markdown, the rounds plot, the training plot if any."""
        return [self.markdown, self.png, *([self.training] if self.training else [])]

    def __iter__(self) -> Iterator[Path]:
        return iter(self.files)


@dataclass(frozen=True)
class Row:
    """One line of the table: the baseline or a round."""

    label: str
    round: int
    """0 for the baseline."""
    base: str = ""
    stages: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    delta: float | None = None
    """The primary metric against the previous row (the record's own delta when it has one)."""
    action: str = ""
    reason: str = ""
    champion: bool = False
    checkpoints: tuple[tuple[str, str], ...] = ()
    """(stage, checkpoint URI) of every stage that produced one."""
    failed: str = ""
    """Why the round failed before its evaluation ("" for a judged round)."""

    @property
    def is_rollback(self) -> bool:
        return self.action == "rollback"

    @property
    def decision_text(self) -> str:
        """The decision, after "failed" for a round that failed ("" when there is none)."""
        if not self.failed:
            return self.action
        return f"failed ({self.action})" if self.action else "failed"

    @property
    def reason_text(self) -> str:
        """Why: a failed round's failure first, then the decision's reason when it adds to it."""
        if not self.failed or self.failed in self.reason:
            return self.reason
        return f"{self.failed}; {self.reason}" if self.reason else self.failed


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _numbers(values: Mapping[str, Any] | None) -> dict[str, float]:
    out = {}
    for name, value in (values or {}).items():
        number = _number(value)
        if number is not None:
            out[str(name)] = number
    return out


def _ordered(records: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """By round; a round given twice counts once (the last one given)."""
    by_round = {int(record["round"]): record for record in records}
    return [by_round[number] for number in sorted(by_round)]


def champion_round(records: Sequence[Mapping[str, Any]]) -> int | None:
    """The champion as the newest record states it, else the newest promoted round."""
    ordered = _ordered(records)
    if not ordered:
        return None
    stated = (ordered[-1].get("decision") or {}).get("champion_round")
    if stated is not None:
        return int(stated)
    promoted = [int(r["round"]) for r in ordered if (r.get("decision") or {}).get("promoted")]
    return promoted[-1] if promoted else None


def build_rows(
    records: Sequence[Mapping[str, Any]],
    *,
    primary_metric: str,
    baseline: Mapping[str, float] | None = None,
) -> list[Row]:
    """The baseline row (when there is a baseline), then one row per round, by round."""
    ordered = _ordered(records)
    if baseline is None and ordered:
        baseline = ordered[0].get("baseline")
    champion = champion_round(ordered)
    rows: list[Row] = []
    previous: float | None = None
    base_values = _numbers(baseline)
    if base_values:
        rows.append(Row(label="baseline", round=0, base="base model", metrics=base_values))
        previous = base_values.get(primary_metric)
    for record in ordered:
        number = int(record["round"])
        metrics = _numbers(record.get("metrics") or (record.get("evaluation") or {}).get("metrics"))
        value = metrics.get(primary_metric)
        delta = _number(((record.get("deltas") or {}).get("previous") or {}).get(primary_metric))
        if delta is None and value is not None and previous is not None:
            delta = value - previous
        decision = record.get("decision") or {}
        stages = record.get("stages") or []
        rows.append(
            Row(
                label=str(number),
                round=number,
                base=_base_label(record),
                stages=" → ".join(str(s.get("name") or s.get("method") or "?") for s in stages),
                metrics=metrics,
                delta=delta,
                action=str(decision.get("action") or ""),
                reason=" ".join(str(decision.get("reason") or "").split()),
                champion=number == champion,
                failed=" ".join(str(record.get("failed") or "").split()),
                checkpoints=tuple(
                    (str(s.get("name") or s.get("method")), str(s["checkpoint"]["uri"]))
                    for s in stages
                    if (s.get("checkpoint") or {}).get("uri")
                ),
            )
        )
        if value is not None:
            previous = value
    return rows


def _base_label(record: Mapping[str, Any]) -> str:
    if record.get("rollback_of") is not None:
        base = record.get("base_round")
        where = f"round {base}" if base else "base model"
        return f"{where} (rollback of {record['rollback_of']})"
    if record.get("base_round"):
        return f"round {record['base_round']}"
    return "base model"


def metric_names(rows: Sequence[Row], primary_metric: str) -> list[str]:
    """The primary metric first, then the others by name."""
    others = sorted({name for row in rows for name in row.metrics} - {primary_metric})
    return [primary_metric, *others]


def _value(number: float | None) -> str:
    if number is None:
        return NO_VALUE
    return f"{number:.4f}" if abs(number) < 1000 else f"{number:.4g}"


def _delta(number: float | None) -> str:
    return NO_VALUE if number is None else f"{number:+.4f}"


def _round_cell(row: Row) -> str:
    return f"{row.label} {CHAMPION_MARK}" if row.champion else row.label


def checkpoint_link(uri: str) -> str:
    """Where a checkpoint can be opened: the S3 console for s3://, a file:// URI for a path."""
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        prefix = quote(parsed.path.lstrip("/").rstrip("/") + "/")
        return f"https://s3.console.aws.amazon.com/s3/buckets/{parsed.netloc}?prefix={prefix}"
    if parsed.scheme in ("", "file"):
        path = parsed.path if parsed.scheme == "file" else uri
        return "file://" + quote(path)
    return uri


def _md(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|")


def render_markdown(
    rows: Sequence[Row], *, campaign: str, primary_metric: str, png_name: str = PNG_NAME
) -> str:
    names = metric_names(rows, primary_metric)
    rounds = [row for row in rows if row.round > 0]
    champion = next((row for row in rounds if row.champion), None)
    lines = [f"# Round report: {campaign}", ""]
    lines.append(f"- Campaign: `{campaign}`")
    lines.append(f"- Rounds: {len(rounds)}")
    lines.append(f"- Primary metric: `{primary_metric}`")
    if champion is not None:
        lines.append(
            f"- Champion: round {champion.label} "
            f"({primary_metric} {_value(champion.metrics.get(primary_metric))})"
        )
    else:
        lines.append("- Champion: none yet")
    if rounds:
        last = rounds[-1]
        lines.append(f"- Last decision: {last.decision_text or NO_VALUE}: {_md(last.reason_text)}")
    lines.append("")

    header = ["Round", "Base", "Stages"]
    header += [f"**{name}**" if name == primary_metric else name for name in names]
    header += [f"Δ {primary_metric} vs previous", "Decision", "Reason", "Checkpoints"]
    lines.append("| " + " | ".join(_md(h) for h in header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        values = [_value(row.metrics.get(name)) for name in names]
        if names:
            values[0] = f"**{values[0]}**"
        links = ", ".join(
            f"[{_md(stage)}]({checkpoint_link(uri)})" for stage, uri in row.checkpoints
        )
        cells = [
            _round_cell(row),
            _md(row.base),
            _md(row.stages) or NO_VALUE,
            *values,
            _delta(row.delta),
            row.decision_text or NO_VALUE,
            _md(row.reason_text) or NO_VALUE,
            links or NO_VALUE,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"{CHAMPION_MARK} marks the champion. Δ compares with the row above.")
    lines.append("")
    lines.append(f"![{_md(campaign)}: metrics per round]({png_name})")
    lines.append("")
    return "\n".join(lines)


def format_table(
    records: Sequence[Mapping[str, Any]],
    *,
    primary_metric: str,
    baseline: Mapping[str, float] | None = None,
    reason_width: int = 60,
) -> str:
    """The report's table as fixed-width text (no checkpoint links; reasons cut to a width)."""
    rows = build_rows(records, primary_metric=primary_metric, baseline=baseline)
    names = metric_names(rows, primary_metric)
    header = ["round", "base", "stages", *names, "Δ prev", "decision", "reason"]
    table = [header]
    for row in rows:
        reason = row.reason_text
        if len(reason) > reason_width:
            reason = reason[: reason_width - 1] + "…"
        table.append(
            [
                _round_cell(row).replace(CHAMPION_MARK, "*"),
                row.base,
                row.stages.replace(" → ", ">") or "-",
                *(_value(row.metrics.get(name)).replace(NO_VALUE, "-") for name in names),
                _delta(row.delta).replace(NO_VALUE, "-"),
                row.decision_text or "-",
                reason or "-",
            ]
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    numeric = set(range(3, 3 + len(names) + 1))
    out = []
    for line in table:
        cells = [
            cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i])
            for i, cell in enumerate(line)
        ]
        out.append("  ".join(cells).rstrip())
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out) + "\n* champion\n"


def render_png(rows: Sequence[Row], path: Path, *, campaign: str, primary_metric: str) -> Path:
    """Metrics per round (the baseline as round 0), the primary metric drawn bold, rollbacks
    marked with a red cross and a shaded column, the champion with a star."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    names = metric_names(rows, primary_metric)
    for index, name in enumerate(names):
        points = [(row.round, row.metrics[name]) for row in rows if name in row.metrics]
        if not points:
            continue
        xs, ys = zip(*points, strict=True)
        if name == primary_metric:
            axes.plot(
                xs, ys, label=f"{name} (primary)", marker="o", linewidth=2.5, color="C0", zorder=3
            )
        else:  # by name order, so a metric keeps its colour; blue and red mean something here
            colour = OTHER_COLOURS[(index - 1) % len(OTHER_COLOURS)]
            axes.plot(xs, ys, label=name, marker=".", linewidth=1, alpha=0.7, color=colour)
    marked: set[str] = set()
    for row in rows:
        value = row.metrics.get(primary_metric)
        if row.is_rollback:
            axes.axvspan(row.round - 0.4, row.round + 0.4, color="tab:red", alpha=0.08)
            if value is not None:
                label = "" if "rollback" in marked else "rolled back"
                marked.add("rollback")
                axes.plot(
                    [row.round],
                    [value],
                    marker="X",
                    markersize=12,
                    color="tab:red",
                    linestyle="none",
                    zorder=4,
                    label=label,
                )
            axes.annotate(
                "rollback",
                (row.round, 0),
                xycoords=("data", "axes fraction"),
                xytext=(0, 4),
                textcoords="offset points",
                ha="center",
                color="tab:red",
                fontsize=8,
            )
        if row.champion and value is not None:
            axes.plot(
                [row.round],
                [value],
                marker="*",
                markersize=18,
                color="gold",
                markeredgecolor="black",
                linestyle="none",
                zorder=5,
                label="champion",
            )
    ticks = [row.round for row in rows]
    axes.set_xticks(ticks, ["base" if n == 0 else str(n) for n in ticks])
    axes.set_xlabel("round")
    axes.set_ylabel("metric")
    axes.set_title(f"{campaign}: metrics per round")
    axes.grid(True, alpha=0.3)
    if names and any(row.metrics for row in rows):
        axes.legend(loc="upper left", fontsize=8)
    else:
        axes.text(0.5, 0.5, "no metrics yet", ha="center", va="center", transform=axes.transAxes)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    # No "Software" entry: the bytes depend on the records, not on the matplotlib release.
    figure.savefig(path, format="png", metadata={"Software": None})
    return path


def write_report(
    records: Sequence[Mapping[str, Any]],
    folder: str | Path,
    *,
    campaign: str,
    primary_metric: str,
    baseline: Mapping[str, float] | None,
    storage: Mapping[str, Any] | None = None,
) -> ReportPaths:
    """Write ``report.md``, ``report.png`` and, when a stage recorded curves, ``training.png``
    into ``folder``; the Markdown embeds the PNGs. A ``training.png`` left by an earlier report
    goes when the records have no curve: the folder shows these records only.

    ``storage``: ``{"plan": <latest lifecycle plan>, "apply": <latest apply or None>}`` adds
    the "Storage" section (None: no lifecycle plan yet, no section)."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    rows = build_rows(records, primary_metric=primary_metric, baseline=baseline)
    training = render_training(records, out / TRAINING_PNG_NAME, campaign)
    if training is None:
        (out / TRAINING_PNG_NAME).unlink(missing_ok=True)
    markdown = out / MARKDOWN_NAME
    text = render_markdown(rows, campaign=campaign, primary_metric=primary_metric)
    sections = render_training_section(
        records, campaign=campaign, png_name=TRAINING_PNG_NAME if training else None
    )
    sections += render_probes(records)
    sections += render_cost(records)
    if storage and storage.get("plan"):
        sections += render_storage(storage["plan"], storage.get("apply"))
    if sections:
        text += "\n" + "\n".join(sections) + "\n"
    markdown.write_text(text, encoding="utf-8")
    png = render_png(rows, out / PNG_NAME, campaign=campaign, primary_metric=primary_metric)
    return ReportPaths(markdown=markdown, png=png, training=training)


# --- the training section -----------------------------------------------------------------------

HEADLINE_SERIES = (REWARD_MEAN, TRAIN_LOSS)
"""Shown from first to last value; the other main series by their last value."""
MAIN_SERIES = (
    REWARD_MEAN,
    REWARD_STD,
    VAL_REWARD_MEAN,
    REWARD_HIGH,
    REWARD_LOW,
    REWARD_ERROR_RATE,
    ROLLOUT_COMPLETION,
    TRAIN_LOSS,
    VAL_LOSS,
)
SHORT_NAMES = {REWARD_MEAN: "reward mean", TRAIN_LOSS: "loss"}
"""How the one-line summary of a stage names its headline series."""


def curve_value(value: float, digits: int = 4) -> str:
    """A point's value: ``digits`` significant figures, ``NaN`` or ``inf`` when not finite."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}g}"


def _headline(name: str, points: Sequence[tuple[int, float]], arrow: str, digits: int) -> str:
    first, last = points[0], points[-1]
    label = SHORT_NAMES.get(name, name) if arrow == "->" else name
    if len(points) == 1:
        return f"{label} {curve_value(last[1], digits)} at step {last[0]}"
    return (
        f"{label} {curve_value(first[1], digits)} {arrow} {curve_value(last[1], digits)} "
        f"over {last[0]} steps"
    )


def stage_summary(stage: Mapping[str, Any]) -> str:
    """One line on a stage's headline curve (reward mean, else loss), as a terminal shows it:
    ``reward mean 0.31 -> 0.58 over 40 steps``; "" when it recorded neither."""
    series = stage.get("series") or {}
    for name in HEADLINE_SERIES:
        points = points_of(series.get(name))
        if points:
            return _headline(name, points, "->", 3)
    return ""


def stage_line(stage: Mapping[str, Any]) -> str:
    """The main series of a stage: the headline from first to last value, the others' last."""
    series = {name: points_of(raw) for name, raw in sorted((stage.get("series") or {}).items())}
    series = {name: points for name, points in series.items() if points}
    if not series:
        return "no curves recorded"
    parts = [_headline(name, series[name], "→", 4) for name in HEADLINE_SERIES if name in series]
    parts += [
        f"{name} {curve_value(series[name][-1][1])}"
        for name in MAIN_SERIES
        if name in series and name not in HEADLINE_SERIES
    ]
    return "; ".join(parts) or "curves: " + ", ".join(series)


def _sentence(text: Any) -> str:
    """``text`` on one line, ending with a full stop (a fix follows it)."""
    words = " ".join(str(text or "").split())
    return words if not words or words.endswith((".", "!", "?")) else words + "."


def finding_line(finding: Mapping[str, Any]) -> str:
    """``**fail_round** loss_divergence at step 12 (train_loss): message. Fix: ...``"""
    policy = str(finding.get("policy") or "warn")
    where = f" at step {finding['step']}" if finding.get("step") is not None else ""
    series = f" ({finding['series']})" if finding.get("series") else ""
    text = f"{finding.get('detector')}{where}{series}: {_sentence(finding.get('message'))}"
    if finding.get("fix"):
        text += f" Fix: {_sentence(finding['fix'])}"
    shown = f"**{policy}**" if fails(finding) else policy
    return f"{shown} {_md(' '.join(text.split()))}"


def render_training_section(
    records: Sequence[Mapping[str, Any]], *, campaign: str, png_name: str | None
) -> list[str]:
    """The "Training" section: the training plot, then per round and stage its main series, why
    monitoring stopped it, and what the monitors found (with their policy). [] when no stage
    recorded curves, findings or an early stop."""
    ordered = _ordered(records)
    stages = [(int(r["round"]), s) for r in ordered for s in r.get("stages") or []]
    if not any(s.get("series") or s.get("findings") or s.get("stopped_early") for _, s in stages):
        return []
    lines = ["## Training", ""]
    if png_name:
        lines += [f"![{_md(campaign)}: training curves]({png_name})", ""]
    for number, stage in stages:
        name = str(stage.get("name") or stage.get("method") or "stage")
        method = str(stage.get("method") or "")
        label = f"`{_md(name)}`" + (f" ({method})" if method and method != name else "")
        lines.append(f"- Round {number}, {label}: {_md(stage_line(stage))}")
        if stage.get("stopped_early"):
            lines.append(f"  - stopped early: {_md(' '.join(str(stage['stopped_early']).split()))}")
        for finding in stage.get("findings") or []:
            lines.append(f"  - {finding_line(finding)}")
    lines.append("")
    lines.append("Policies: warn is noted; **fail_round** and **stop_campaign** fail the round.")
    lines.append("")
    return lines


# --- the reward probe section --------------------------------------------------------------------


def _share(value: Any) -> str:
    number = _number(value)
    return NO_VALUE if number is None else f"{number:.0%}"


def _seconds(value: Any) -> str:
    number = _number(value)
    return NO_VALUE if number is None else f"{number:.3g} s"


def probe_summary(probe: Mapping[str, Any]) -> str:
    """A probe's verdict and numbers on one line (no function name): ``passed: separation 100%
    of 8 pairs, good mean 0.95 vs bad mean 0.02, latency p50 0.01 s / max 0.02 s, positive share
    12%``."""
    verdict = "passed" if probe.get("ok") else "FAILED"
    parts = [
        f"separation {_share(probe.get('separation'))} of {probe.get('pairs', 0)} pairs",
        f"good mean {_value(_number(probe.get('good_mean')))} vs bad mean "
        f"{_value(_number(probe.get('bad_mean')))}",
        f"latency p50 {_seconds(probe.get('latency_p50_s'))} / max "
        f"{_seconds(probe.get('latency_max_s'))}",
    ]
    if _number(probe.get("positive_fraction")) is not None:
        parts.append(f"positive share {_share(probe.get('positive_fraction'))}")
    return f"{verdict}: " + ", ".join(parts)


def problem_line(problem: Mapping[str, Any]) -> str:
    """``check: message. Fix: fix.`` of one problem a probe found, on one line."""
    text = f"{problem.get('check', '')}: {_sentence(problem.get('message'))}"
    return text + (f" Fix: {_sentence(problem['fix'])}" if problem.get("fix") else "")


def render_probes(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The "Reward probe" section: per probe run before a round's RFT stages, its function,
    verdict and numbers, then each problem with its fix and each warning. [] without probes."""
    probes = [(int(r["round"]), p) for r in _ordered(records) for p in r.get("probes") or [] if p]
    if not probes:
        return []
    lines = ["## Reward probe", ""]
    for number, probe in probes:
        function = _md(str(probe.get("function") or "?"))
        lines.append(f"- Round {number}, `{function}`: {_md(probe_summary(probe))}")
        for problem in probe.get("problems") or []:
            lines.append(f"  - problem: {_md(problem_line(problem))}")
        for warning in probe.get("warnings") or []:
            text = warning if isinstance(warning, str) else warning.get("message", "")
            lines.append(f"  - warning: {_md(' '.join(str(text).split()))}")
    lines.append("")
    return lines


# --- the storage section ------------------------------------------------------------------------

OUTCOME_LABELS = (
    ("archived", "archived"),
    ("deleted", "deleted"),
    ("retained_by_service", "retained by the service"),
    ("failed", "failed"),
)


def human_bytes(count: int) -> str:
    """``1.5 GiB``: binary units, at most three significant figures."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            if unit == "B":
                return f"{int(value)} B"
            return f"{value:.1f} {unit}" if abs(value) < 100 else f"{value:.0f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def dollars(amount: float) -> str:
    """``$12.34``; an amount under a cent with two significant figures (``$0.000041``), so the
    small costs of a laptop campaign still read as numbers."""
    if amount == 0:
        return "$0.00"
    if abs(amount) >= 0.01:
        return f"${amount:,.2f}"
    digits = 1 - math.floor(math.log10(abs(amount)))
    return f"${amount:.{digits}f}"


def storage_now(
    plan: Mapping[str, Any], apply: Mapping[str, Any] | None
) -> tuple[dict[str, tuple[int, int]], float]:
    """(storage class -> (artifacts, bytes), estimated US dollars a month) as things stand: the
    plan's artifacts where they were, or where ``apply`` (when it carried this plan out) moved
    them; deleted ones are gone."""
    applied = apply is not None and apply.get("sequence") == plan.get("sequence")
    outcomes = {}
    if applied:
        assert apply is not None
        outcomes = {str(r.get("uri")): r for r in apply.get("results") or []}
    classes: dict[str, list[int]] = {}
    for line in plan.get("actions") or []:
        artifact = line.get("artifact") or {}
        storage_class = str(artifact.get("storage_class") or "STANDARD")
        result = outcomes.get(str(artifact.get("uri")))
        if result is not None and result.get("outcome") == "deleted":
            continue
        if result is not None and result.get("outcome") == "archived" and line.get("target_class"):
            storage_class = str(line["target_class"])
        entry = classes.setdefault(storage_class, [0, 0])
        entry[0] += 1
        entry[1] += int(artifact.get("bytes") or 0)
    cost = _number(apply.get("monthly_cost_after")) if applied and apply else None
    if cost is None:
        cost = _number(plan.get("monthly_cost_before")) or 0.0
    return {name: (n, size) for name, (n, size) in sorted(classes.items())}, cost


def render_storage(plan: Mapping[str, Any], apply: Mapping[str, Any] | None) -> list[str]:
    """The "Storage" section: bytes by storage class, the estimated monthly cost now, what the
    last apply did and saved, and the rounds the retention set keeps and why."""
    classes, cost = storage_now(plan, apply)
    created = str(plan.get("created_at") or "")[:19].replace("T", " ")
    lines = ["## Storage", ""]
    lines.append(
        f"From lifecycle plan {plan.get('sequence')} ({created} UTC; keep_last "
        f"{plan.get('keep_last')}, archive class {plan.get('archive_storage_class')}, "
        f"prices of {plan.get('region')}: {_md(str(plan.get('prices_source') or ''))})."
    )
    lines.append("")
    lines.append("| Storage class | Artifacts | Bytes |")
    lines.append("|---|---|---|")
    for name, (count, size) in classes.items():
        lines.append(f"| {_md(name)} | {count} | {human_bytes(size)} |")
    if not classes:
        lines.append(f"| {NO_VALUE} | 0 | 0 B |")
    lines.append("")
    lines.append(f"- Estimated storage cost now: {dollars(cost)}/month")
    lines.append(f"- Last apply: {_apply_text(apply)}")
    if plan.get("first") and (apply is None or apply.get("sequence") != plan.get("sequence")):
        lines.append("- This plan is the campaign's first: planned only, `apply` acts on it")
    kept = sorted(plan.get("retained") or [], key=lambda r: int(r.get("round", 0)))
    lines.append("- Rounds kept:" + ("" if kept else f" {NO_VALUE}"))
    for entry in kept:
        number = int(entry.get("round", 0))
        label = "baseline" if number == 0 else f"round {number}"
        lines.append(f"  - {label}: {_md(', '.join(str(r) for r in entry.get('reasons') or []))}")
    lines.append("")
    return lines


def _apply_text(apply: Mapping[str, Any] | None) -> str:
    if apply is None:
        return "none yet"
    counts: dict[str, list[int]] = {}
    for result in apply.get("results") or []:
        entry = counts.setdefault(str(result.get("outcome")), [0, 0])
        entry[0] += 1
        entry[1] += int(result.get("bytes") or 0)
    parts = [
        f"{label} {counts.get(outcome, [0, 0])[0]} ({human_bytes(counts.get(outcome, [0, 0])[1])})"
        for outcome, label in OUTCOME_LABELS
        if outcome in counts or outcome in ("archived", "deleted")
    ]
    before = _number(apply.get("monthly_cost_before")) or 0.0
    after = _number(apply.get("monthly_cost_after")) or 0.0
    ended = str(apply.get("ended_at") or "")[:19].replace("T", " ")
    return (
        f"plan {apply.get('sequence')} ({ended} UTC): {', '.join(parts)}; "
        f"saved {dollars(round(before - after, 9))}/month"
    )


# --- the cost section -----------------------------------------------------------------------


def _cost_text(amount: Any) -> str:
    number = _number(amount)
    return "unknown" if number is None else dollars(number)


def _job_cost_row(round_label: str, job_label: str, job: Mapping[str, Any]) -> str:
    count = job.get("instance_count") or 1
    instance = str(job.get("instance_type") or NO_VALUE)
    cells = [
        round_label,
        _md(job_label),
        _md(f"{count} × {instance}" if instance != "local" else "local"),
        f"{_number(job.get('instance_hours')) or 0.0:.4g}",
        f"{_number(job.get('gpu_hours')) or 0.0:.4g}",
        _cost_text(job.get("estimated_cost_usd")),
        _md(str(job.get("cost_note") or "")) or NO_VALUE,
    ]
    return "| " + " | ".join(cells) + " |"


def _round_spend(record: Mapping[str, Any]) -> tuple[float, float | None]:
    """GPU-hours and dollars the campaign spent on one round, its baseline evaluation
    included; dollars None when a price is unknown."""
    baseline = record.get("baseline_cost") or {}
    hours = (_number(record.get("gpu_hours")) or 0.0) + (_number(baseline.get("gpu_hours")) or 0.0)
    usd = _number(record.get("estimated_cost_usd"))
    if baseline:
        extra = _number(baseline.get("estimated_cost_usd"))
        usd = None if usd is None or extra is None else usd + extra
    return hours, usd


def render_cost(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The "Cost" section: every job of every round (stages, evaluation, the base model's
    evaluation in the round that measured it) with its instances, hours and estimated cost,
    each round's total and the campaign's, and where the prices come from. Nothing for
    records written before costs were recorded."""
    ordered = _ordered(records)
    if not any(r.get("price_source") for r in ordered):
        return []
    lines = ["## Cost", ""]
    header = ["Round", "Job", "Instances", "Instance-hours", "GPU-hours", "Cost", "Note"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    total_hours, total_usd = 0.0, 0.0
    unknown = False
    sources: list[str] = []
    for record in ordered:
        label = str(record.get("round"))
        jobs = [(f"train {s.get('name', '')}", s) for s in record.get("stages") or []]
        if record.get("evaluation_cost"):
            jobs.append(("evaluate", record["evaluation_cost"]))
        if record.get("baseline_cost"):
            jobs.append(("evaluate base model", record["baseline_cost"]))
        for name, job in jobs:
            lines.append(_job_cost_row(label, name, job))
            if job.get("price_source") and job["price_source"] not in sources:
                sources.append(str(job["price_source"]))
        hours, usd = _round_spend(record)
        lines.append(
            f"| {label} | **round total** | | | **{hours:.4g}** | **{_cost_text(usd)}** | |"
        )
        total_hours += hours
        if usd is None:
            unknown = True
        else:
            total_usd += usd
    lines.append("")
    campaign_usd = "unknown (a price is missing)" if unknown else dollars(total_usd)
    lines.append(
        f"- Campaign total, the base model's evaluation included: {total_hours:.4g} GPU-hours, "
        f"{campaign_usd}"
    )
    for source in sources:
        lines.append(f"- Prices: {_md(source)}")
    lines.append(
        "- Costs are estimates: billed instance-hours times the on-demand price (or the "
        "campaign's backend.price_per_hour); local jobs cost nothing."
    )
    lines.append("")
    return lines
