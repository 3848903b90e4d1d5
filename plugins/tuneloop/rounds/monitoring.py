"""Detectors over a stage's training curves: what ``monitoring:`` watches, as `Finding` objects.

`detect` reads the normalized series of one stage (``artifacts.series`` names) and returns one
finding per detector that fired, each with the campaign's policy for it; a detector whose policy
is ``off`` is never judged. It is pure: no I/O, no clock, the same answer for the same input, and
it never raises on what a job may log (NaN, infinity, too few points, steps out of order).

Rules every detector follows:

- A window counts logged points, one per step (the unit the job logs in). Windowed detectors read
  finite values only: a NaN reward proves nothing about a plateau.
- Live (``final=False``, the job still runs) every detector judges the prefix it is given as if
  it were the whole curve, except where the rule needs the end of the job (the short-job rule of
  ``reward_errors``, overfitting through the round's evaluation). The detectors that fire at once
  (``loss_divergence``, ``reward_errors``) report the first point that proves the problem, so a
  finding on a prefix is the same finding on the full curve.
- ``step`` is where the detector fired: the point that proved it, or the last point of the
  windows it compared; None when it was judged on the round's evaluation.

The detectors, by the stage's method:

- ``plateau`` (RFT, reward_mean): the mean of the last ``window`` points rose by less than
  ``min_gain`` over the mean of the ``window`` points before; judged from ``2 * window`` points.
- ``overfitting``: over the last ``window`` validation points, validation worsened from the first
  to the last by at least ``min_drop`` (and by more than zero) while training improved over the
  same steps (the mean of the later half of the training points there above the earlier half).
  RFT compares reward_mean with val_reward_mean, SFT and CPT train_loss with val_loss. An RFT
  stage without a validation series is judged once it ended, on the round's evaluation: the
  training reward rose by at least ``min_drop`` (mean of the last ``window`` points against the
  first ``window``; the two halves of a shorter curve) while ``evaluation_change`` is at most
  ``-min_drop`` and below zero.
- ``instability`` (RFT): the mean reward_std of the last ``window`` points exceeds ``factor``
  times its mean over the first ``window``. Without reward_std, the spread of reward_mean around
  its own trend in each window (the residual std of a straight-line fit: a rising mean alone is
  not instability) is compared the same way. Judged from ``2 * window`` points, never against a
  first window with no spread at all.
- ``reward_errors`` (RFT, reward_error_rate): the rate stayed above ``max_rate`` for
  ``for_steps`` points in a row; fires at the point that completes the run. A finished job with
  fewer points than ``for_steps`` fires when every point is above ``max_rate``.
- ``loss_divergence`` (SFT and CPT, train_loss and val_loss): a NaN or infinite loss fires at
  once; after ``warmup_steps`` steps from the first logged one, a loss above ``spike_factor``
  times the median of the (up to 10) losses logged before it fires (never against a median of
  zero or below). The earliest event of the two series wins (train_loss on a tie).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from tuneloop.artifacts.series import (
    REWARD_ERROR_RATE,
    REWARD_LATENCY_S,
    REWARD_MEAN,
    REWARD_STD,
    TRAIN_LOSS,
    VAL_LOSS,
    VAL_REWARD_MEAN,
    Point,
)
from tuneloop.config.monitoring import LAMBDA_TIME_LIMIT_SECONDS, Monitoring, Policy
from tuneloop.recipes.catalog import Method
from tuneloop.rounds.findings import Finding

Curve = list[Point]

TIMEOUT_SHARE = 0.8
"""Reward calls slower than this share of the Lambda limit point at timeouts."""

_REWARD_ERRORS_FIX = (
    "see what fails with `tuneloop reward probe --function ARN|MODULE:FUNCTION --data RFT.jsonl`; "
    "if Lambda throttles, raise lambda_concurrency_limit (or the account's concurrency quota); "
    "if calls time out, make each one finish well within the 15-minute Lambda limit"
)
_DIVERGENCE_FIX = (
    "lower the learning rate (lr in the stage's overrides) and check the training data for "
    "broken or extreme records (`tuneloop data validate`)"
)
_PLATEAU_FIX = (
    "stop here or switch technique (gate.on_plateau: switch); if rewards stay low, check that "
    "the reward function separates good answers from bad (`tuneloop reward probe`), add more "
    "varied examples, or try another learning rate"
)
_INSTABILITY_FIX = (
    "lower the learning rate (lr in the stage's overrides), or raise global_batch_size or "
    "number_generation for steadier updates"
)
_RFT_OVERFITTING_FIX = (
    "train fewer steps (max_steps), add more varied training examples, or raise weight_decay "
    "or ent_coeff"
)
_LOSS_OVERFITTING_FIX = (
    "train fewer steps or epochs (max_steps, max_epochs), add more varied training data, or "
    "raise weight_decay"
)


@dataclass(frozen=True)
class _Event:
    """What one detector saw; `detect` adds the detector's name, policy and stage."""

    step: int | None
    series: str
    message: str
    fix: str


@dataclass(frozen=True)
class _Curves:
    """The stage's curves, cleaned once: sorted by step, one point per step."""

    points: Mapping[str, Curve]
    method: Method
    final: bool
    evaluation_change: float | None

    def all(self, name: str) -> Curve:
        return list(self.points.get(name, []))

    def finite(self, name: str) -> Curve:
        return [point for point in self.points.get(name, []) if math.isfinite(point[1])]


def detect(
    series: Mapping[str, Iterable[Point]],
    monitoring: Monitoring,
    *,
    stage: str,
    method: Method,
    final: bool,
    evaluation_change: float | None = None,
) -> list[Finding]:
    """The findings of every detector that fired on one stage's curves, in the order
    plateau, overfitting, instability, reward_errors, loss_divergence.

    ``final``: False while the job runs (judge the prefix), True once it ended (the whole curve).
    ``evaluation_change``: the round's evaluation (gate primary metric) minus its base's,
    positive = better; used for overfitting of an RFT stage without validation reward.
    """
    curves = _Curves(
        points={name: _clean(points) for name, points in series.items()},
        method=Method(method),
        final=final,
        evaluation_change=evaluation_change,
    )
    detectors: list[tuple[str, Policy, Callable[[_Curves, Monitoring], _Event | None]]] = [
        ("plateau", monitoring.plateau.policy, _plateau),
        ("overfitting", monitoring.overfitting.policy, _overfitting),
        ("instability", monitoring.instability.policy, _instability),
        ("reward_errors", monitoring.reward_errors.policy, _reward_errors),
        ("loss_divergence", monitoring.loss_divergence.policy, _loss_divergence),
    ]
    findings: list[Finding] = []
    for name, policy, judge in detectors:
        if policy == "off":
            continue
        event = judge(curves, monitoring)
        if event is not None:
            findings.append(
                Finding(
                    detector=name,
                    policy=policy,
                    stage=stage,
                    step=event.step,
                    series=event.series,
                    message=event.message,
                    fix=event.fix,
                )
            )
    return findings


def summary(findings: Iterable[Finding]) -> str:
    """One line per finding, for logs and reports ("" when there is none)."""
    return "\n".join(_summary_line(finding) for finding in findings)


def _summary_line(finding: Finding) -> str:
    where = [part for part in (finding.stage, finding.series) if part]
    if finding.step is not None:
        where.append(f"step {finding.step}")
    line = f"[{finding.policy}] {finding.detector}"
    if where:
        line += f" ({', '.join(where)})"
    line += f": {finding.message}"
    if finding.fix:
        line += f" Fix: {finding.fix}."
    return line


# --- plateau -----------------------------------------------------------------------------------


def _plateau(curves: _Curves, monitoring: Monitoring) -> _Event | None:
    if curves.method is not Method.RFT:
        return None
    settings = monitoring.plateau
    curve = curves.finite(REWARD_MEAN)
    window = settings.window
    if len(curve) < 2 * window:
        return None
    before, last = curve[-2 * window : -window], curve[-window:]
    before_mean, last_mean = _mean(_values(before)), _mean(_values(last))
    gain = last_mean - before_mean
    if not gain < settings.min_gain:  # a NaN gain proves nothing
        return None
    return _Event(
        step=last[-1][0],
        series=REWARD_MEAN,
        message=(
            f"reward_mean changed by {gain:+.4g} from {before_mean:.4g} ({_span(before)}) to "
            f"{last_mean:.4g} ({_span(last)}), less than min_gain {settings.min_gain:g}."
        ),
        fix=_PLATEAU_FIX,
    )


# --- overfitting -------------------------------------------------------------------------------


def _overfitting(curves: _Curves, monitoring: Monitoring) -> _Event | None:
    if curves.method is Method.RFT:
        validation = curves.finite(VAL_REWARD_MEAN)
        if validation:
            return _training_against_validation(
                curves.finite(REWARD_MEAN),
                validation,
                monitoring,
                names=(REWARD_MEAN, VAL_REWARD_MEAN),
                higher_is_better=True,
                fix=_RFT_OVERFITTING_FIX,
            )
        if curves.final and curves.evaluation_change is not None:
            return _training_against_evaluation(
                curves.finite(REWARD_MEAN), curves.evaluation_change, monitoring
            )
        return None
    return _training_against_validation(
        curves.finite(TRAIN_LOSS),
        curves.finite(VAL_LOSS),
        monitoring,
        names=(TRAIN_LOSS, VAL_LOSS),
        higher_is_better=False,
        fix=_LOSS_OVERFITTING_FIX,
    )


def _training_against_validation(
    training: Curve,
    validation: Curve,
    monitoring: Monitoring,
    *,
    names: tuple[str, str],
    higher_is_better: bool,
    fix: str,
) -> _Event | None:
    settings = monitoring.overfitting
    if len(validation) < settings.window:
        return None
    judged = validation[-settings.window :]
    (first_step, first), (last_step, last) = judged[0], judged[-1]
    worsening = first - last if higher_is_better else last - first
    if not (worsening > 0 and worsening >= settings.min_drop):
        return None
    # Training per step is noisy: compare the means of the two halves of its points over the
    # same steps rather than two single points.
    overlap = [point for point in training if first_step <= point[0] <= last_step]
    half = len(overlap) // 2
    if half == 0:
        return None
    earlier, later = _mean(_values(overlap[:half])), _mean(_values(overlap[-half:]))
    improvement = later - earlier if higher_is_better else earlier - later
    if not improvement > 0:
        return None
    training_name, validation_name = names
    moved = ("rose", "fell") if higher_is_better else ("fell", "rose")
    return _Event(
        step=last_step,
        series=validation_name,
        message=(
            f"{validation_name} {moved[1]} from {first:.4g} (step {first_step}) to {last:.4g} "
            f"(step {last_step}), by {worsening:.4g} (min_drop {settings.min_drop:g}), while "
            f"{training_name} {moved[0]} by {improvement:.4g} over the same steps."
        ),
        fix=fix,
    )


def _training_against_evaluation(
    training: Curve, evaluation_change: float, monitoring: Monitoring
) -> _Event | None:
    settings = monitoring.overfitting
    if len(training) < 2:
        return None
    window = min(settings.window, len(training) // 2)
    first, last = training[:window], training[-window:]
    rise = _mean(_values(last)) - _mean(_values(first))
    if not (rise > 0 and rise >= settings.min_drop):
        return None
    if not (evaluation_change < 0 and -evaluation_change >= settings.min_drop):
        return None
    return _Event(
        step=None,
        series=REWARD_MEAN,
        message=(
            f"reward_mean rose by {rise:.4g} ({_span(first)} against {_span(last)}) while the "
            f"round's evaluation fell {-evaluation_change:.4g} below its base "
            f"(min_drop {settings.min_drop:g}); the stage has no validation reward."
        ),
        fix=_RFT_OVERFITTING_FIX,
    )


# --- instability -------------------------------------------------------------------------------


SPREAD_NOISE = 1e-9
"""Spreads below this share of the values' size are rounding, not variance."""


def _instability(curves: _Curves, monitoring: Monitoring) -> _Event | None:
    if curves.method is not Method.RFT:
        return None
    settings = monitoring.instability
    window = settings.window
    reward_std = curves.finite(REWARD_STD)
    if reward_std:
        curve, name, measure = reward_std, REWARD_STD, _mean
        what = "reward_std averaged"
    else:
        curve, name, measure = curves.finite(REWARD_MEAN), REWARD_MEAN, _residual_std
        what = "reward_mean's spread around its trend was"
    if len(curve) < 2 * window:
        return None
    first, last = curve[:window], curve[-window:]
    first_spread, last_spread = measure(_values(first)), measure(_values(last))
    # A spread within float rounding of the values' size is no spread: a straight line's
    # residuals (1e-18 against 5e-18) must not read as a fivefold growth.
    floor = SPREAD_NOISE * max(1.0, max(abs(value) for value in _values(curve)))
    if not (first_spread > floor and last_spread > settings.factor * first_spread):
        return None
    return _Event(
        step=last[-1][0],
        series=name,
        message=(
            f"{what} {last_spread:.4g} over {_span(last)}, {last_spread / first_spread:.3g}x "
            f"its {first_spread:.4g} over {_span(first)} (factor {settings.factor:g})."
        ),
        fix=_INSTABILITY_FIX,
    )


# --- reward_errors -----------------------------------------------------------------------------


def _reward_errors(curves: _Curves, monitoring: Monitoring) -> _Event | None:
    if curves.method is not Method.RFT:
        return None
    settings = monitoring.reward_errors
    curve = curves.finite(REWARD_ERROR_RATE)
    run = _first_run_above(curve, settings.max_rate, settings.for_steps)
    short_job = curves.final and 0 < len(curve) < settings.for_steps
    if run is None and short_job and all(rate > settings.max_rate for _, rate in curve):
        run = curve  # a job shorter than the run asked for: every step above the rate counts
    if run is None:
        return None
    step, rate = run[-1]
    message = (
        f"the reward function failed on {rate:.1%} of samples at step {step}, above "
        f"{settings.max_rate:.1%} for {len(run)} step{'s' if len(run) > 1 else ''} in a row "
        f"({_span(run)}, {_mean(_values(run)):.1%} on average)"
    )
    slowest = _slowest_call(curves.finite(REWARD_LATENCY_S), run[0][0], step)
    if slowest is not None and slowest >= TIMEOUT_SHARE * LAMBDA_TIME_LIMIT_SECONDS:
        message += (
            f"; reward calls took up to {slowest:.0f} s, near the "
            f"{LAMBDA_TIME_LIMIT_SECONDS:.0f} s Lambda limit (timeouts)"
        )
    return _Event(
        step=step, series=REWARD_ERROR_RATE, message=message + ".", fix=_REWARD_ERRORS_FIX
    )


def _first_run_above(curve: Curve, limit: float, length: int) -> Curve | None:
    """The first ``length`` points in a row above ``limit`` (the run ends at the point that
    completes it), or None."""
    start = 0
    for index, (_, value) in enumerate(curve):
        if not value > limit:
            start = index + 1
        elif index + 1 - start >= length:
            return curve[start : index + 1]
    return None


def _slowest_call(latency: Curve, first_step: int, last_step: int) -> float | None:
    during = [value for step, value in latency if first_step <= step <= last_step]
    return max(during) if during else None


# --- loss_divergence ---------------------------------------------------------------------------


SPIKE_REFERENCE_POINTS = 10
"""A loss spike is judged against the median of this many losses before it."""


def _loss_divergence(curves: _Curves, monitoring: Monitoring) -> _Event | None:
    if curves.method not in (Method.SFT, Method.CPT):
        return None
    events = [
        event
        for name in (TRAIN_LOSS, VAL_LOSS)
        if (event := _divergence(name, curves.all(name), monitoring)) is not None
    ]
    # The earliest event wins; min() keeps the first of equals, so train_loss wins a tie.
    return min(events, key=_step_of) if events else None


def _step_of(event: _Event) -> int:
    return event.step if event.step is not None else 0


def _divergence(name: str, curve: Curve, monitoring: Monitoring) -> _Event | None:
    settings = monitoring.loss_divergence
    if not curve:
        return None
    warmup_end = curve[0][0] + settings.warmup_steps
    recent: list[float] = []
    for step, loss in curve:
        if not math.isfinite(loss):
            return _Event(
                step=step,
                series=name,
                message=f"{name} is {loss} at step {step}.",
                fix=_DIVERGENCE_FIX,
            )
        # Against the median of the losses just before it, not the lowest so far: a small loss
        # wanders by more than a few times its lowest value near the end of training. A spike
        # needs a positive reference (zero or below, any loss would be an infinite multiple).
        reference = statistics.median(recent) if recent else 0.0
        if step >= warmup_end and reference > 0 and loss > settings.spike_factor * reference:
            return _Event(
                step=step,
                series=name,
                message=(
                    f"{name} reached {loss:.4g} at step {step}, {loss / reference:.3g}x the "
                    f"median {reference:.4g} of the {len(recent)} loss"
                    f"{'es' if len(recent) > 1 else ''} before it (spike_factor "
                    f"{settings.spike_factor:g})."
                ),
                fix=_DIVERGENCE_FIX,
            )
        recent = [*recent, loss][-SPIKE_REFERENCE_POINTS:]
    return None


# --- numbers -----------------------------------------------------------------------------------


def _clean(points: Iterable[Point]) -> Curve:
    """Points sorted by step, one per step (the last one given wins), values as floats."""
    by_step: dict[int, float] = {}
    for step, value in points:
        by_step[int(step)] = float(value)
    return sorted(by_step.items())


def _values(curve: Curve) -> list[float]:
    return [value for _, value in curve]


def _span(curve: Curve) -> str:
    first, last = curve[0][0], curve[-1][0]
    return f"step {first}" if first == last else f"steps {first}-{last}"


def _fsum(values: Iterable[float]) -> float:
    """An exact sum; NaN where it overflows (huge values prove nothing here)."""
    try:
        return math.fsum(values)
    except (OverflowError, ValueError):
        return math.nan


def _mean(values: Sequence[float]) -> float:
    if not values:
        return math.nan
    total = _fsum(values)
    if math.isfinite(total):
        return total / len(values)
    # The sum of huge values overflows where their mean does not.
    return _fsum(value / len(values) for value in values)


def _residual_std(values: Sequence[float]) -> float:
    """The std of the values around their least-squares line (index as x): the noise of a
    curve without its trend."""
    count = len(values)
    if count < 3:
        return 0.0  # a line fits two points exactly
    x_mean, y_mean = (count - 1) / 2, _mean(values)
    x_spread = _fsum((x - x_mean) * (x - x_mean) for x in range(count))
    slope = _fsum((x - x_mean) * (y - y_mean) for x, y in enumerate(values)) / x_spread
    residuals = [y - (y_mean + slope * (x - x_mean)) for x, y in enumerate(values)]
    variance = _mean([r * r for r in residuals])
    return math.sqrt(variance) if variance >= 0 else math.nan
