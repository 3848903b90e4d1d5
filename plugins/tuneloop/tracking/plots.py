"""The training plot of the round report: every stage's curves, one figure, and what the
monitors found on them.

Input is the ledger's records as plain mappings (``RoundRecord.model_dump(mode="json")``): each
stage's ``series`` (canonical names of `tuneloop.artifacts.series` -> ``[[step, value], ...]``),
its ``findings`` and ``stopped_early``. `render_training` draws one panel per kind of curve that
some stage recorded, in this order:

- **RFT reward**: reward_mean per step with a ±reward_std band, one line per round and stage,
  the latest round emphasised;
- **reward distribution**: the shares of high, medium and low rewards per step, stacked, of the
  latest stage that recorded them;
- **training vs validation reward** and **training vs validation loss**: the latest stage that
  recorded a validation series, its training series beside it;
- **loss**: train_loss per step of the SFT and CPT stages, one line per round and stage;
- **reward-function errors**: reward_error_rate per step.

Only the last `MAX_ROUNDS` rounds with curves are drawn (more lines would hide each other). A
round keeps its colour in every panel; red is kept for findings whose policy fails the round.

Rules:

- A value that is not a finite number (NaN, infinity, or null: JSON has no NaN) is not drawn as
  a point, since it has no place on the axis, but it is shown: a cross at the bottom of the panel
  at its step, so a diverging loss reads as such.
- Every finding is a dashed vertical line at its step, labelled with the detector's name (and
  the round, where a panel holds several), on the panels showing its stage and series; red when
  its policy fails the round, orange for a warning. A finding judged on the whole curve (no step)
  is written in the panel's corner.
- Output depends on the records alone: records in any order, the same bytes (no timestamp and no
  matplotlib version in the PNG's metadata).

matplotlib is imported inside `render_training`, through its object API with the Agg canvas: no
pyplot, no global backend switched in the process that calls it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneloop.artifacts.series import (
    REWARD_ERROR_RATE,
    REWARD_HIGH,
    REWARD_LATENCY_S,
    REWARD_LOW,
    REWARD_MEAN,
    REWARD_MEDIUM,
    REWARD_STD,
    TRAIN_LOSS,
    VAL_LOSS,
    VAL_REWARD_MEAN,
)

TRAINING_PNG_NAME = "training.png"
MAX_ROUNDS = 8
"""Rounds drawn at most (the latest ones with curves)."""
ROUND_COLOURS = ("C0", "C1", "C2", "C4", "C5", "C6", "C8", "C9")
"""matplotlib's cycle without C3 (red: failing findings) and C7 (grey: low rewards)."""
BAND_COLOURS = {REWARD_HIGH: "tab:green", REWARD_MEDIUM: "gold", REWARD_LOW: "tab:gray"}
FAIL_COLOUR = "tab:red"
WARN_COLOUR = "tab:orange"
FAILING_POLICIES = frozenset({"fail_round", "stop_campaign"})
"""The policies of `tuneloop.rounds.findings` that fail the round."""
PANEL_HEIGHT = 3.4
"""Inches per row of panels."""
NOT_FINITE_GID = "not-finite"
FINDING_GID = "finding:"
"""Ids of the marks (matplotlib's ``gid``, not drawn): a cross, a finding's line + detector."""

Point = tuple[int, float]
"""(step, value); the value may be NaN or infinite."""


@dataclass(frozen=True)
class StageCurves:
    """One stage of one round as the plot reads it."""

    round: int
    stage: str
    method: str
    series: dict[str, list[Point]]
    findings: tuple[Mapping[str, Any], ...] = ()
    stopped_early: str = ""

    @property
    def label(self) -> str:
        return f"round {self.round} {self.stage}"


@dataclass
class Panel:
    """One set of axes: its title, the stages it draws and the series it shows of them."""

    kind: str
    title: str
    stages: list[StageCurves]
    shows: frozenset[str]
    ylabel: str = ""
    findings: list[tuple[StageCurves, Mapping[str, Any]]] = field(default_factory=list)

    def holds(self, stage: StageCurves) -> bool:
        return any(s is stage for s in self.stages)


# --- reading the records -------------------------------------------------------------------------


def value_of(value: Any) -> float:
    """A point's value as a float: NaN for null or what is no number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def points_of(raw: Any) -> list[Point]:
    """``[[step, value], ...]`` as sorted (step, value) points, one per step (the last one
    given wins); a malformed point is dropped."""
    by_step: dict[int, float] = {}
    for point in raw or []:
        if not isinstance(point, Sequence) or isinstance(point, str) or len(point) < 2:
            continue
        try:
            step = int(point[0])
        except (TypeError, ValueError):
            continue
        by_step[step] = value_of(point[1])
    return sorted(by_step.items())


def stage_curves(records: Sequence[Mapping[str, Any]]) -> list[StageCurves]:
    """Every stage of every record, by round (a round given twice counts once, the last one
    given) and in the round's stage order."""
    by_round = {int(record["round"]): record for record in records}
    out = []
    for number in sorted(by_round):
        for stage in by_round[number].get("stages") or []:
            series = {
                str(name): points_of(raw)
                for name, raw in sorted((stage.get("series") or {}).items())
            }
            findings = stage.get("findings") or []
            out.append(
                StageCurves(
                    round=number,
                    stage=str(stage.get("name") or stage.get("method") or "stage"),
                    method=str(stage.get("method") or ""),
                    series={name: points for name, points in series.items() if points},
                    findings=tuple(f for f in findings if isinstance(f, Mapping)),
                    stopped_early=str(stage.get("stopped_early") or ""),
                )
            )
    return out


def fails(finding: Mapping[str, Any]) -> bool:
    return str(finding.get("policy")) in FAILING_POLICIES


# --- which panels --------------------------------------------------------------------------------


def panels_for(stages: Sequence[StageCurves]) -> list[Panel]:
    """The panels the stages' curves call for, in the module's order; empty without curves."""
    with_curves = [s for s in stages if s.series]
    drawn_rounds = sorted({s.round for s in with_curves})[-MAX_ROUNDS:]
    drawn = [s for s in with_curves if s.round in drawn_rounds]

    def having(name: str) -> list[StageCurves]:
        return [s for s in drawn if name in s.series]

    panels: list[Panel] = []
    rewards = having(REWARD_MEAN)
    if rewards:
        panels.append(
            Panel(
                "reward",
                "RFT reward mean ± std per step",
                rewards,
                frozenset({REWARD_MEAN, REWARD_STD, ""}),
                "reward",
            )
        )
    banded = [s for s in drawn if any(n in s.series for n in BAND_COLOURS)]
    if banded:
        latest = banded[-1]
        panels.append(
            Panel(
                "bands",
                f"reward distribution, {latest.label}",
                [latest],
                frozenset(BAND_COLOURS),
                "share of rewards",
            )
        )
    validated = having(VAL_REWARD_MEAN)
    if validated:
        latest = validated[-1]
        panels.append(
            Panel(
                "reward_validation",
                f"training vs validation reward, {latest.label}",
                [latest],
                frozenset({REWARD_MEAN, VAL_REWARD_MEAN}),
                "reward",
            )
        )
    validated = having(VAL_LOSS)
    if validated:
        latest = validated[-1]
        panels.append(
            Panel(
                "loss_validation",
                f"training vs validation loss, {latest.label}",
                [latest],
                frozenset({TRAIN_LOSS, VAL_LOSS}),
                "loss",
            )
        )
    losses = having(TRAIN_LOSS)
    if losses:
        panels.append(
            Panel(
                "loss",
                "SFT/CPT training loss per step",
                losses,
                frozenset({TRAIN_LOSS, VAL_LOSS}),
                "loss",
            )
        )
    errors = having(REWARD_ERROR_RATE)
    if errors:
        panels.append(
            Panel(
                "errors",
                "reward-function error rate per step",
                errors,
                frozenset({REWARD_ERROR_RATE, REWARD_LATENCY_S}),
                "share of samples",
            )
        )
    _place_findings(panels, drawn)
    return panels


def _place_findings(panels: Sequence[Panel], stages: Iterable[StageCurves]) -> None:
    """Each finding on the panels that show its stage and series; one that no panel shows by
    its series goes on the first panel showing its stage."""
    for stage in stages:
        for finding in stage.findings:
            series = str(finding.get("series") or "")
            chosen = [p for p in panels if p.holds(stage) and series in p.shows]
            if not chosen:
                chosen = [p for p in panels if p.holds(stage)][:1]
            for panel in chosen:
                panel.findings.append((stage, finding))


# --- drawing -------------------------------------------------------------------------------------


def colour_of(number: int) -> str:
    """A round's colour, the same in every panel and every report."""
    return ROUND_COLOURS[(number - 1) % len(ROUND_COLOURS)]


def _split(points: Sequence[Point]) -> tuple[list[int], list[float], list[int]]:
    """(steps, values with NaN where a value is not finite, the steps of those values)."""
    steps = [step for step, _ in points]
    values = [value if math.isfinite(value) else math.nan for _, value in points]
    bad = [step for step, value in points if not math.isfinite(value)]
    return steps, values, bad


def _mark_not_finite(axes: Any, steps: Sequence[int], colour: str) -> bool:
    """A cross at the bottom of the panel for each step whose value is not a finite number."""
    if not steps:
        return False
    axes.plot(
        list(steps),
        [0.03] * len(steps),
        linestyle="none",
        marker="x",
        markersize=7,
        markeredgewidth=2,
        color=colour,
        transform=axes.get_xaxis_transform(),
        clip_on=False,
        zorder=4,
        gid=NOT_FINITE_GID,
    )
    return True


def _line(
    axes: Any,
    points: Sequence[Point],
    *,
    label: str,
    colour: str,
    latest: bool,
    linestyle: str = "-",
) -> bool:
    """One curve; True when it had values that are not finite (marked at the bottom)."""
    steps, values, bad = _split(points)
    axes.plot(
        steps,
        values,
        label=label,
        color=colour,
        linestyle=linestyle,
        linewidth=2.2 if latest else 1.0,
        alpha=1.0 if latest else 0.5,
        marker="." if len(points) < 30 else None,
        zorder=3 if latest else 2,
    )
    return _mark_not_finite(axes, bad, colour)


def _draw_rounds(axes: Any, panel: Panel, name: str, band: str | None = None) -> bool:
    """``name`` of every stage of the panel, one line each (the latest round emphasised), with
    a ±``band`` area where the stage recorded it."""
    latest_round = panel.stages[-1].round
    bad = False
    for stage in panel.stages:
        points = stage.series.get(name) or []
        latest = stage.round == latest_round
        colour = colour_of(stage.round)
        bad |= _line(axes, points, label=stage.label, colour=colour, latest=latest)
        spread = dict(stage.series.get(band) or []) if band else {}
        shaded = [
            (step, value, spread[step])
            for step, value in points
            if step in spread and math.isfinite(value) and math.isfinite(spread[step])
        ]
        if shaded:
            steps = [s for s, _, _ in shaded]
            axes.fill_between(
                steps,
                [v - d for _, v, d in shaded],
                [v + d for _, v, d in shaded],
                color=colour,
                alpha=0.22 if latest else 0.07,
                linewidth=0,
            )
    return bad


def _draw_bands(axes: Any, panel: Panel) -> bool:
    """The stage's high, medium and low shares stacked per step (low at the bottom); a step
    where a share is not a finite number is left out and marked."""
    stage = panel.stages[0]
    names = [REWARD_LOW, REWARD_MEDIUM, REWARD_HIGH]
    by_name = {name: dict(stage.series.get(name) or []) for name in names}
    steps = sorted({step for values in by_name.values() for step in values})
    good = [s for s in steps if all(math.isfinite(by_name[n].get(s, 0.0)) for n in names)]
    bad = [s for s in steps if s not in good]
    if good:
        axes.stackplot(
            good,
            *[[by_name[name].get(step, 0.0) for step in good] for name in names],
            labels=[name.removeprefix("reward_") for name in names],
            colors=[BAND_COLOURS[name] for name in names],
            alpha=0.8,
        )
    axes.set_ylim(0, 1)
    return _mark_not_finite(axes, bad, "black")


def _draw_pair(axes: Any, panel: Panel, train: str, validation: str) -> bool:
    stage = panel.stages[0]
    bad = _line(axes, stage.series.get(train) or [], label=train, colour="C0", latest=True)
    bad |= _line(
        axes,
        stage.series.get(validation) or [],
        label=validation,
        colour="C1",
        latest=True,
        linestyle="--",
    )
    return bad


def _draw_findings(axes: Any, panel: Panel) -> None:
    several = len({stage.round for stage in panel.stages}) > 1
    whole_curve = 0
    for stage, finding in panel.findings:
        detector = str(finding.get("detector") or "finding")
        name = f"{detector} (r{stage.round})" if several else detector
        colour = FAIL_COLOUR if fails(finding) else WARN_COLOUR
        step = finding.get("step")
        if step is None:  # judged on the whole curve: a line of text in the corner
            axes.annotate(
                f"{name}: {finding.get('policy')}",
                (0.01, 0.97),
                xycoords="axes fraction",
                xytext=(0, -9 * whole_curve),
                textcoords="offset points",
                va="top",
                ha="left",
                fontsize=7,
                color=colour,
            )
            whole_curve += 1
            continue
        axes.axvline(
            int(step),
            color=colour,
            linestyle="--",
            linewidth=1.2,
            alpha=0.9,
            zorder=5,
            gid=f"{FINDING_GID}{detector}",
        )
        axes.text(
            int(step),
            0.97,
            f" {name}",
            transform=axes.get_xaxis_transform(),
            rotation=90,
            va="top",
            ha="right",
            fontsize=7,
            color=colour,
        )


def _draw(axes: Any, panel: Panel) -> None:
    if panel.kind == "reward":
        bad = _draw_rounds(axes, panel, REWARD_MEAN, band=REWARD_STD)
    elif panel.kind == "bands":
        bad = _draw_bands(axes, panel)
    elif panel.kind == "reward_validation":
        bad = _draw_pair(axes, panel, REWARD_MEAN, VAL_REWARD_MEAN)
    elif panel.kind == "loss_validation":
        bad = _draw_pair(axes, panel, TRAIN_LOSS, VAL_LOSS)
    elif panel.kind == "loss":
        bad = _draw_rounds(axes, panel, TRAIN_LOSS)
    else:
        bad = _draw_rounds(axes, panel, REWARD_ERROR_RATE)
    _draw_findings(axes, panel)
    if bad:  # one legend entry explains every cross
        axes.plot([], [], linestyle="none", marker="x", color="black", label="not a finite number")
    axes.set_title(panel.title, fontsize=10)
    axes.set_xlabel("step", fontsize=8)
    axes.set_ylabel(panel.ylabel, fontsize=8)
    axes.tick_params(labelsize=8)
    axes.grid(True, alpha=0.3)
    handles, labels = axes.get_legend_handles_labels()
    if panel.kind == "bands":  # the bands top-down in the legend, as they are stacked
        bands = sum(1 for label in labels if label in ("low", "medium", "high"))
        handles = handles[:bands][::-1] + handles[bands:]
        labels = labels[:bands][::-1] + labels[bands:]
    axes.legend(handles, labels, loc="best", fontsize=7)


def training_figure(records: Sequence[Mapping[str, Any]], campaign: str) -> Any | None:
    """The training plot as a matplotlib ``Figure`` on an Agg canvas; None when no stage
    recorded a curve."""
    panels = panels_for(stage_curves(records))
    if not panels:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = 1 if len(panels) == 1 else 2
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(6.5 * columns, PANEL_HEIGHT * rows + 0.5), dpi=100)
    FigureCanvasAgg(figure)
    for index, panel in enumerate(panels):
        _draw(figure.add_subplot(rows, columns, index + 1), panel)
    figure.suptitle(f"{campaign}: training curves", fontsize=12)
    figure.tight_layout()
    return figure


def render_training(
    records: Sequence[Mapping[str, Any]], path: str | Path, campaign: str
) -> Path | None:
    """Draw the stages' curves and findings into a PNG at ``path``; None (and no file written)
    when no stage recorded a curve."""
    figure = training_figure(records, campaign)
    if figure is None:
        return None
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    # No "Software" entry: the bytes depend on the records, not on the matplotlib release.
    figure.savefig(out, format="png", metadata={"Software": None})
    return out
