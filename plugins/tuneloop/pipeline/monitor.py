"""Watching a training job while it runs: its log lines become curves, the detectors judge them.

`LiveWatch` is what `JobTrigger` holds for one job (``pipeline/triggers.py``); it does no I/O and
reads no clock, so every rule below is tested without a job:

- Every new log line the trigger reads is fed to an ``artifacts.series.LogMetrics`` parser (one
  per chunk of lines: the parser's own memory is not kept), and the canonical points go into the
  watch's curves, one point per step (a step logged again replaces the earlier point, as
  ``series.merge`` does).
- The curves are bounded: past ``max_points`` (`MAX_POINTS`) points, a curve keeps its newest
  half as logged and thins the older points to an even spread over their steps (the oldest
  point and the first non-finite one stay), so a job of a million steps costs the triggerer the
  memory of a few thousand points. A detector window longer than ``max_points // 2`` steps
  therefore reads thinned points; the job's whole curve is judged again once it ended.
- `judge` runs ``rounds.monitoring.detect(..., final=False)`` on the curves so far. A finding
  whose policy is fail_round or stop_campaign is in `failing`: the trigger stops the job. A warn
  finding is returned once per detector and series (to be logged once), and its latest version
  is kept for the result (`findings`).
- `observe` notes when each new step was first seen (the polls' clock, given by the caller):
  the job's pace in seconds per step, measured between the first and the latest step seen,
  else since the job started. With the job's total steps (its status, e.g. the local backend's
  ``step 12/40``, else its recipe's ``max_steps``), `saved_gpu_hours` estimates what the rest
  of a stopped job would have cost, counted as the ledger counts GPU-hours
  (``rounds.ledger.gpu_hours``: instance-seconds times the instance type's GPUs).

Curves travel as JSON (trigger events, XCom): `series_to_json` writes a non-finite value as the
string "NaN", "Infinity" or "-Infinity" (strict JSON, which PostgreSQL stores, has no such
numbers; pydantic's float fields and `series_from_json` read them back).
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tuneloop.artifacts.series import LogMetrics, Point, Series
from tuneloop.config.monitoring import Monitoring
from tuneloop.jobs.base import JobStatus
from tuneloop.recipes.catalog import Method
from tuneloop.rounds.findings import Finding, failing
from tuneloop.rounds.monitoring import detect

MAX_POINTS = 2000
"""Most points a curve keeps while a job runs (see the module docstring)."""

_PROGRESS = re.compile(r"\bstep (\d+)/(\d+)\b")
"""A status message's progress, as the local backend words it ("step 12/40 (30%)")."""

_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


@dataclass(frozen=True)
class _Sighting:
    """When (epoch seconds) a step was first seen."""

    at: float
    step: int


class LiveWatch:
    """The curves of one running job, what the detectors said of them, and its pace."""

    def __init__(
        self,
        monitoring: Monitoring,
        *,
        stage: str,
        method: Method | str,
        max_points: int = MAX_POINTS,
    ) -> None:
        self.monitoring = monitoring
        self.stage = stage
        self.method = Method(method)
        self.max_points = max(8, int(max_points))
        self.failing: list[Finding] = []
        """The findings of the latest `judge` that stop the job (empty: keep going)."""
        self.total_steps: int | None = None
        """The job's total steps, once its status said so."""
        self._curves: dict[str, list[Point]] = {}
        self._warnings: dict[tuple[str, str], Finding] = {}
        self._first: _Sighting | None = None
        self._latest: _Sighting | None = None
        self._started_at: float | None = None

    # -- reading --------------------------------------------------------------------------

    def feed(self, lines: Iterable[str]) -> None:
        """Add the canonical points of new log lines to the curves."""
        parser = LogMetrics()
        for line in lines:
            for name, points in parser.feed(line).items():
                curve = self._curves.setdefault(name, [])
                for step, value in points:
                    _put(curve, int(step), float(value))
                if len(curve) > self.max_points:
                    self._curves[name] = thin(curve, self.max_points)

    def series(self) -> Series:
        """The curves so far (bounded), sorted by step."""
        return {name: list(points) for name, points in self._curves.items() if points}

    @property
    def last_step(self) -> int | None:
        """The latest step any curve reached (None before the first metrics line)."""
        steps = [points[-1][0] for points in self._curves.values() if points]
        return max(steps) if steps else None

    # -- judging --------------------------------------------------------------------------

    def judge(self) -> list[Finding]:
        """Run the detectors on the curves so far; set `failing`; return the warnings not
        returned before (one per detector and series)."""
        found = detect(
            self._curves, self.monitoring, stage=self.stage, method=self.method, final=False
        )
        self.failing = failing(found)
        fresh = []
        for finding in found:
            if finding.fails:
                continue
            key = (finding.detector, finding.series)
            if key not in self._warnings:
                fresh.append(finding)
            self._warnings[key] = finding
        return fresh

    def findings(self) -> list[Finding]:
        """The latest version of every warning so far, then what stops the job."""
        return [*self._warnings.values(), *self.failing]

    def reason(self) -> str:
        """Why the job is stopped: the failing findings in one line."""
        return "; ".join(
            f"{finding.detector} ({finding.policy}): {finding.message.rstrip('.')}"
            for finding in self.failing
        )

    # -- pace -------------------------------------------------------------------------------

    def observe(self, now: float, status: JobStatus) -> None:
        """Note the step the job has reached at ``now`` (epoch seconds): the latest logged
        step, or the status's progress where the log says less."""
        progress = status_progress(status.message)
        if progress is not None:
            self.total_steps = progress[1]
        if status.started_at is not None and self._started_at is None:
            self._started_at = status.started_at.timestamp()
        steps = [s for s in (self.last_step, progress[0] if progress else None) if s is not None]
        if not steps:
            return
        step = max(steps)
        if self._first is None:
            self._first = _Sighting(now, step)
        if self._latest is None or step > self._latest.step:
            self._latest = _Sighting(now, step)

    @property
    def seconds_per_step(self) -> float | None:
        """The job's pace: between the first and the latest step seen, else since it started
        (which counts its start-up too); None before a step was seen."""
        first, latest = self._first, self._latest
        if first is None or latest is None:
            return None
        if latest.step > first.step and latest.at > first.at:
            return (latest.at - first.at) / (latest.step - first.step)
        if self._started_at is not None and latest.step > 0 and latest.at > self._started_at:
            return (latest.at - self._started_at) / latest.step
        return None

    def payload(self) -> dict[str, Any]:
        """What a trigger event carries of the watch (plain JSON)."""
        return {
            "findings": [finding.model_dump(mode="json") for finding in self.findings()],
            "series": series_to_json(self.series()),
            "step": self.last_step,
            "total_steps": self.total_steps,
            "seconds_per_step": self.seconds_per_step,
        }


# -- curves ---------------------------------------------------------------------------------------


def _put(curve: list[Point], step: int, value: float) -> None:
    """Add (step, value) to a curve sorted by step; a step already there takes the value."""
    if not curve or step > curve[-1][0]:
        curve.append((step, value))
        return
    index = bisect.bisect_left(curve, step, key=lambda point: point[0])
    if index < len(curve) and curve[index][0] == step:
        curve[index] = (step, value)
    else:
        curve.insert(index, (step, value))


def thin(curve: list[Point], limit: int) -> list[Point]:
    """A curve of more than ``limit`` points cut to at most ``3 * limit // 4 + 2``: the newest
    ``limit // 2`` points as they are, the older ones spread evenly over their steps (the
    oldest point and the first non-finite one are always kept)."""
    if len(curve) <= limit:
        return curve
    recent = limit // 2
    older, newer = curve[:-recent], curve[-recent:]
    return _spread(older, limit // 4) + newer


def _spread(points: list[Point], budget: int) -> list[Point]:
    """About ``budget`` of ``points``: the one nearest to each of ``budget`` steps spread evenly
    from the first point's step to the last's (and the first non-finite point)."""
    if len(points) <= budget:
        return points
    steps = [step for step, _ in points]
    first, last = steps[0], steps[-1]
    stride = (last - first) / max(1, budget - 1)
    chosen = {0}
    for k in range(1, budget):
        target = first + k * stride
        index = bisect.bisect_left(steps, target)
        if index > 0 and (
            index == len(steps) or target - steps[index - 1] <= steps[index] - target
        ):
            index -= 1
        chosen.add(index)
    odd = next((i for i, (_, value) in enumerate(points) if not math.isfinite(value)), None)
    if odd is not None:
        chosen.add(odd)
    return [points[i] for i in sorted(chosen)]


def series_to_json(series: Mapping[str, Iterable[Point]]) -> dict[str, list[list[Any]]]:
    """Curves as strict JSON: ``[[step, value], ...]``, non-finite values as "NaN",
    "Infinity" or "-Infinity"."""
    return {
        name: [[step, _json_number(value)] for step, value in points]
        for name, points in series.items()
    }


def series_from_json(data: Mapping[str, Iterable[Any]]) -> Series:
    """What `series_to_json` wrote, back as curves (malformed points are left out)."""
    series: Series = {}
    for name, points in data.items():
        curve = []
        for point in points:
            try:
                step, value = int(point[0]), point[1]
                number = _NON_FINITE[value] if isinstance(value, str) else float(value)
            except (KeyError, TypeError, ValueError, IndexError):
                continue
            curve.append((step, number))
        series[str(name)] = sorted(curve, key=lambda point: point[0])
    return series


def _json_number(value: float) -> float | str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


# -- progress and savings ---------------------------------------------------------------------


def status_progress(message: str) -> tuple[int, int] | None:
    """(step, total) from a status message that states it ("step 12/40"), else None."""
    match = _PROGRESS.search(message or "")
    if match is None or int(match[2]) <= 0:
        return None
    return int(match[1]), int(match[2])


def recipe_total_steps(recipe: Mapping[str, Any]) -> int | None:
    """The steps a recipe trains: ``training_config.trainer.max_steps`` (RFT) or
    ``training_config.max_steps`` (SFT, CPT); None when it counts epochs instead."""
    config = recipe.get("training_config")
    if not isinstance(config, Mapping):
        return None
    trainer = config.get("trainer")
    for value in (
        trainer.get("max_steps") if isinstance(trainer, Mapping) else None,
        config.get("max_steps"),
    ):
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def recipe_instances(recipe: Mapping[str, Any]) -> int:
    """The instances a recipe's job runs on (``run.replicas``; 1 when it does not say)."""
    run = recipe.get("run")
    replicas = run.get("replicas") if isinstance(run, Mapping) else None
    if isinstance(replicas, int) and not isinstance(replicas, bool) and replicas > 0:
        return replicas
    return 1


@dataclass(frozen=True)
class Saving:
    """What stopping a job early saved, estimated at its pace so far."""

    steps_left: int
    seconds_per_step: float
    instances: int
    instance_type: str | None
    gpus_per_instance: int
    gpu_hours: float

    def basis(self) -> str:
        """How the estimate was made, in words."""
        machine = self.instance_type or "this machine (local)"
        return (
            f"{self.steps_left} steps left at {self.seconds_per_step:.3g} s/step on "
            f"{self.instances} x {machine} ({self.gpus_per_instance} GPU"
            f"{'s' if self.gpus_per_instance != 1 else ''} each)"
        )


def saved_gpu_hours(
    step: int | None,
    total_steps: int | None,
    seconds_per_step: float | None,
    *,
    instances: int = 1,
    instance_type: str | None = None,
) -> Saving | None:
    """The GPU-hours the rest of a job stopped at ``step`` of ``total_steps`` would have
    taken at ``seconds_per_step`` on ``instances`` instances of ``instance_type``, counted as
    the round's records count them (`recipes.prices.gpus_per_instance`: none for the local
    backend, ``None``, or a CPU-only type; one for a type the catalog does not know); None
    when a number is missing."""
    from tuneloop.recipes.prices import gpus_per_instance

    if step is None or total_steps is None or seconds_per_step is None:
        return None
    if not math.isfinite(seconds_per_step) or seconds_per_step <= 0:
        return None
    left = max(0, total_steps - step)
    gpus = gpus_per_instance(instance_type)
    return Saving(
        steps_left=left,
        seconds_per_step=seconds_per_step,
        instances=instances,
        instance_type=instance_type,
        gpus_per_instance=gpus,
        gpu_hours=left * seconds_per_step * instances * gpus / 3600.0,
    )
