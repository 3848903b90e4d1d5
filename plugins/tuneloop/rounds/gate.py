"""The gate: after a round is evaluated, decide what the campaign does next.

Pure decision logic: no I/O and no Airflow. The round DAG hands in the finished round (a
`RoundSummary`), the rounds before it (from the ledger) and the campaign's gate settings; the
gate returns a `Decision` whose ``reason`` is one sentence a person reads in the Airflow UI.

The rules, in the order they are applied:

1. every target met: promote the round and finish;
2. the primary metric fell behind the champion (or, before any round was promoted, the base
   model) by more than ``regression_tolerance``: roll back, i.e. the next round restarts from the
   champion with the campaign's rollback adjustments (half the learning rate by default);
3. otherwise continue from the round, promoting it when it beats the champion;
4. ``max_rounds`` reached: stop;
5. plateau (gains under ``min_improvement`` for ``plateau_rounds`` rounds in a row with the same
   stages): switch to another technique of the campaign when the compatibility matrix allows
   it, otherwise stop;
6. the GPU-hours spent plus an estimate of the next round would exceed ``budget_gpu_hours``:
   stop.

A round may be promoted and still end the campaign (a stop keeps the best round as champion).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import pairwise

from tuneloop.config.campaign import Gate, Stage, Target
from tuneloop.errors import CompatibilityError, Problem, TuneloopError
from tuneloop.recipes import compat
from tuneloop.recipes.catalog import Method, Platform, Technique
from tuneloop.recipes.compat import Checkpoint
from tuneloop.rounds.decision import Action, Decision, RoundSummary

RFT_MIN_POSITIVE_FRACTION = 0.05
"""RFT rarely learns when fewer than this share of rewards is positive: train with SFT first."""

# Metric values come from JSON and subtractions of them (0.87 - 0.85 = 0.0200000000000000018);
# comparisons with the tolerances allow this much slack so that "exactly at the tolerance"
# reads as the user wrote it.
_SLACK = 1e-9


class GateError(TuneloopError):
    """The gate cannot judge a round: a metric it needs was not reported."""


def rft_readiness(positive_fraction: float | None) -> str | None:
    """Advice when RFT is unlikely to learn from the starting model, else None.

    ``positive_fraction`` is the share (0..1) of positive rewards the model an RFT stage would
    start from earned on the RFT data (the reward probe); None means it was not measured.
    """
    if positive_fraction is None:
        return None
    if not 0.0 <= positive_fraction <= 1.0 or math.isnan(positive_fraction):
        raise ValueError(f"positive reward fraction must be within 0..1, got {positive_fraction}")
    if positive_fraction >= RFT_MIN_POSITIVE_FRACTION:
        return None
    return (
        f"only {positive_fraction:.1%} of the starting model's rewards are positive (RFT needs "
        f"at least {RFT_MIN_POSITIVE_FRACTION:.0%} to learn), so train with SFT first"
    )


def decide(
    gate: Gate,
    candidate: RoundSummary,
    history: Sequence[RoundSummary],
    *,
    stages: Sequence[Stage],
    technique: Technique,
    baseline: Mapping[str, float] | None = None,
    baseline_positive_reward_fraction: float | None = None,
    base_lineage: Sequence[Method] = (),
) -> Decision:
    """Judge ``candidate`` against the rounds before it and the gate's rules.

    ``history`` holds the earlier rounds (later ones, and the candidate itself when a retried
    task reads it back from the ledger, are ignored). ``stages`` and ``technique`` are the
    campaign's; ``baseline`` the base model's metrics, the reference before any round is
    promoted. ``baseline_positive_reward_fraction`` feeds the SFT-before-RFT advice (see
    `rft_readiness`), and ``base_lineage`` says how the campaign's base model was trained when
    it is an earlier checkpoint.
    """
    return _Judgement(gate, candidate, history, stages, technique, baseline, base_lineage).decide(
        baseline_positive_reward_fraction
    )


# --- the judgement ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Verdict:
    """What the judged round achieved, before anything is said about a next round."""

    targets_met: bool
    regressed: bool
    promoted: bool
    champion_round: int | None
    """The champion after this decision."""
    outcome: str
    """The first half of the reason."""
    plateau: int
    """Rounds in a row, this one included, that improved less than min_improvement."""


@dataclass(frozen=True)
class _Restart:
    """Where a next round starts and what it runs."""

    action: Action
    base: str | None
    """The checkpoint it starts from; None: the campaign's base model."""
    base_round: int | None
    lineage: list[Method]
    """Methods the starting checkpoint was trained with."""
    stages: list[str]
    rollback: bool
    """The next round applies the gate's rollback adjustments."""
    plateau_text: str = ""
    """Why the stages switched to another method, when they did."""


@dataclass(frozen=True)
class _NextRound:
    """The round a CONTINUE or ROLLBACK decision asks for."""

    number: int
    restart: _Restart
    recommendation: str = ""


class _Judgement:
    """One decision's working state: the references, gains and streaks the rules read."""

    def __init__(
        self,
        gate: Gate,
        candidate: RoundSummary,
        history: Sequence[RoundSummary],
        stages: Sequence[Stage],
        technique: Technique,
        baseline: Mapping[str, float] | None,
        base_lineage: Sequence[Method],
    ) -> None:
        self.gate = gate
        self.candidate = candidate
        self.earlier = sorted(
            (h for h in history if h.round < candidate.round), key=lambda h: h.round
        )
        self.stages = list(stages)
        self.technique = technique
        self.baseline = dict(baseline or {})
        self.base_lineage = list(base_lineage)
        self.primary = gate.primary_metric
        _check_metrics(gate, candidate)

        self.champion = next((h for h in reversed(self.earlier) if h.promoted), None)
        self.value = candidate.metrics[self.primary]
        self.reference = self._reference()
        self.gain = (
            None if self.reference is None else self._improvement(self.value, self.reference)
        )
        self.targets = gate.target_bounds()
        self.unmet = [
            name
            for name, bound in self.targets.items()
            if not _meets(candidate.metrics[name], bound)
        ]
        self.next_estimate: float | None = None
        """GPU-hours the next round is expected to take, once the rules got that far."""

    # The champion's primary metric, or the base model's before any round was promoted.
    def _reference(self) -> float | None:
        if self.champion is not None:
            if self.primary not in self.champion.metrics:
                raise GateError(
                    [
                        Problem(
                            "gate.primary_metric",
                            f"the champion (round {self.champion.round}) has no "
                            f"{self.primary!r} metric recorded (it has: "
                            f"{_names(self.champion.metrics)})",
                            fix="keep primary_metric the same for the whole campaign, or start "
                            "a new campaign for a new metric",
                        )
                    ]
                )
            return self.champion.metrics[self.primary]
        return self.baseline.get(self.primary)

    def _improvement(self, value: float, reference: float) -> float:
        difference = value - reference
        return difference if self.gate.higher_is_better else -difference

    # --- the rules -----------------------------------------------------------------------------

    def decide(self, positive_fraction: float | None) -> Decision:
        verdict = self._verdict()
        if verdict.targets_met:
            return self._decision(Action.FINISH, verdict, "")
        if self.candidate.round >= self.gate.max_rounds:
            reached = f"max_rounds {self.gate.max_rounds} reached{self._unmet_text()}"
            return self._stop(verdict, reached)
        restart = self._restart(verdict.regressed)
        if verdict.plateau >= self.gate.plateau_rounds:
            restart, why_not = self._after_plateau(restart, verdict.plateau)
            if why_not:
                return self._stop(verdict, why_not)
        over_budget = self._over_budget(restart.stages)
        if over_budget:
            return self._stop(verdict, over_budget)
        following = _NextRound(
            number=self.candidate.round + 1,
            restart=restart,
            recommendation=self._recommendation(restart.stages, restart.lineage, positive_fraction),
        )
        return self._decision(
            restart.action, verdict, self._next_text(verdict, following), following
        )

    def _verdict(self) -> _Verdict:
        """What the round achieved: targets, regression, promotion, the plateau so far."""
        targets_met = bool(self.targets) and not self.unmet
        regressed = (
            not targets_met
            and self.gain is not None
            and -self.gain > self.gate.regression_tolerance + _SLACK
        )
        promoted = targets_met or (not regressed and (self.gain is None or self.gain > _SLACK))
        return _Verdict(
            targets_met=targets_met,
            regressed=regressed,
            promoted=promoted,
            champion_round=self.candidate.round if promoted else _round_of(self.champion),
            outcome=self._outcome(regressed, promoted),
            plateau=self._plateau_count(),
        )

    def _restart(self, regressed: bool) -> _Restart:
        """Where the next round would start (the champion after a regression), with the
        stages this round ran."""
        if regressed:
            return _Restart(
                action=Action.ROLLBACK,
                base=None if self.champion is None else self.champion.checkpoint,
                base_round=_round_of(self.champion),
                lineage=self._lineage(self.champion),
                stages=self._ran(self.candidate),
                rollback=True,
            )
        return _Restart(
            action=Action.CONTINUE,
            base=self.candidate.checkpoint,
            base_round=self.candidate.round,
            lineage=self._lineage(self.candidate),
            stages=self._ran(self.candidate),
            rollback=False,
        )

    def _after_plateau(self, restart: _Restart, plateau: int) -> tuple[_Restart, str]:
        """The restart with another method's stages after a plateau; or why the campaign
        stops instead (then the restart is unchanged)."""
        gate = self.gate
        plateau_text = (
            f"{self.primary} improved by less than {_num(gate.min_improvement)} for "
            f"{plateau} round{'s' if plateau > 1 else ''} in a row"
        )
        switched, why_not = self._switch(restart.base, restart.lineage)
        if switched is None:
            return restart, f"{plateau_text} and {why_not}"
        # A new technique starts with its own recipe settings: the rollback's lower
        # learning rate was meant for retrying the stages that regressed.
        return replace(restart, stages=switched, rollback=False, plateau_text=plateau_text), ""

    def _over_budget(self, next_stages: list[str]) -> str:
        """Why a next round running ``next_stages`` would pass the GPU-hour budget; "" if not.
        Remembers the next round's estimate for the signals."""
        budget = self.gate.budget_gpu_hours
        spent, estimate = self._gpu_hours(next_stages)
        self.next_estimate = estimate
        if budget is None or spent + estimate <= budget + _SLACK:
            return ""
        return (
            f"{_num(spent)} GPU-hours spent and a next round of about {_num(estimate)} "
            f"would pass the {_num(budget)} GPU-hour budget"
        )

    def _stop(self, verdict: _Verdict, why: str) -> Decision:
        champion = _champion_name(verdict.champion_round)
        return self._decision(
            Action.STOP, verdict, f"the campaign stops with {champion} as the champion: {why}"
        )

    def _next_text(self, verdict: _Verdict, following: _NextRound) -> str:
        """The second half of the reason for a round that is followed by another."""
        restart, number = following.restart, following.number
        start = _start_text(restart.base_round, self.candidate.round)
        current = self._ran(self.candidate)
        if restart.stages != current:
            return (
                f"{restart.plateau_text}, so round {number} switches from "
                f"{_methods_text(self._methods(current))} to "
                f"{_methods_text(self._methods(restart.stages))} (stages: "
                f"{', '.join(restart.stages)}), starting from {start}"
            )
        if verdict.regressed:
            return f"round {number} restarts from {start}{self._rollback_text()}"
        why = f"round {number} continues from {start}"
        if verdict.promoted:
            return why
        if verdict.champion_round is not None:
            return f"{why} and {_champion_name(verdict.champion_round)} stays the champion"
        return f"{why} while the base model stays the best so far"

    # --- pieces of the rules -------------------------------------------------------------------

    def _ran(self, summary: RoundSummary) -> list[str]:
        return list(summary.stages) or [stage.name for stage in self.stages]

    def _methods(self, names: Sequence[str]) -> list[Method]:
        by_name = {stage.name: stage.method for stage in self.stages}
        return [by_name[name] for name in names if name in by_name]

    def _lineage(self, summary: RoundSummary | None) -> list[Method]:
        """How the checkpoint a next round would start from was trained."""
        if summary is None:
            return self.base_lineage
        if summary.lineage:
            return list(summary.lineage)
        methods = list(summary.methods) or self._methods(self._ran(summary))
        return self.base_lineage + methods

    def _plateau_count(self) -> int:
        """Rounds in a row, ending with the candidate and running its stages, whose gain over
        the champion of their time stayed under min_improvement."""
        reference = self.baseline.get(self.primary)
        gains: list[tuple[list[str], float | None]] = []
        for summary in [*self.earlier, self.candidate]:
            value = summary.metrics.get(self.primary)
            gain = None
            if value is not None and reference is not None:
                gain = self._improvement(value, reference)
            gains.append((self._ran(summary), gain))
            promoted = summary.promoted if summary is not self.candidate else False
            if promoted and value is not None:
                reference = value
        current = self._ran(self.candidate)
        count = 0
        for ran, gain in reversed(gains):
            if ran != current or gain is None or gain >= self.gate.min_improvement - _SLACK:
                break
            count += 1
        return count

    def _switch(self, base: str | None, lineage: list[Method]) -> tuple[list[str] | None, str]:
        """Stages of another method to try after a plateau, or None and why there are none.

        Candidates are the campaign's stages grouped by method, for methods the round did not
        run, nearest after its last method first (SFT -> RFT, then wrapping round). A group the
        campaign already switched away from has plateaued before and is not tried again. Each
        must be allowed after the checkpoint's lineage by the compatibility matrix."""
        current = self._ran(self.candidate)
        ran_methods = self._methods(current)
        groups: dict[Method, list[str]] = {}
        for stage in self.stages:
            groups.setdefault(stage.method, []).append(stage.name)
        others = [m for m in groups if m not in ran_methods]
        if not others:
            return None, "the campaign has no stage with another method to switch to"
        exhausted = _switched_away([self._ran(s) for s in [*self.earlier, self.candidate]])
        order = list(groups)
        last = ran_methods[-1] if ran_methods else None
        start = order.index(last) + 1 if last in order else 0
        others.sort(key=lambda m: (order.index(m) - start) % len(order))
        refused: list[str] = []
        for method in others:
            names = groups[method]
            if names in exhausted:
                refused.append(f"{method.value.upper()} plateaued earlier in the campaign")
                continue
            problem = self._incompatible(base, lineage, self._methods(names))
            if problem:
                refused.append(problem)
                continue
            return names, ""
        return None, "; ".join(refused)

    def _incompatible(
        self, base: str | None, lineage: list[Method], methods: list[Method]
    ) -> str | None:
        """Why ``methods`` may not follow a checkpoint trained with ``lineage``, if they may not."""
        checkpoint = None
        if lineage:
            checkpoint = Checkpoint(
                uri=base or "the base model",
                model_type="(any)",
                technique=compat.method_technique(lineage[-1], self.technique),
                platform=Platform.LOCAL,
                lineage=tuple(lineage),
            )
        try:
            compat.check_lineage(
                methods,
                technique=self.technique,
                model_type="(any)",
                platform=Platform.LOCAL,
                base=checkpoint,
            )
        except CompatibilityError as exc:
            return exc.problems[0].message
        return None

    def _gpu_hours(self, next_stages: list[str]) -> tuple[float, float]:
        """GPU-hours spent so far, and the next round's estimate: the mean of earlier rounds
        that ran the same stages, else of every round that was billed."""
        rounds = [*self.earlier, self.candidate]
        spent = sum(r.gpu_hours for r in rounds)
        billed = [r for r in rounds if r.gpu_hours > 0]
        alike = [r for r in billed if self._ran(r) == next_stages] or billed
        estimate = sum(r.gpu_hours for r in alike) / len(alike) if alike else 0.0
        return spent, estimate

    def _recommendation(
        self, next_stages: list[str], lineage: list[Method], positive_fraction: float | None
    ) -> str:
        """SFT-first advice when the next round starts RFT on a model no SFT or CPT has
        touched and the base model's rewards are almost never positive."""
        methods = self._methods(next_stages)
        if Method.RFT not in methods:
            return ""
        before_rft = methods[: methods.index(Method.RFT)]
        if any(m in (Method.SFT, Method.CPT) for m in [*lineage, *before_rft]):
            return ""
        advice = rft_readiness(positive_fraction)
        return f"RFT is unlikely to learn: {advice}" if advice else ""

    # --- the sentence --------------------------------------------------------------------------

    def _outcome(self, regressed: bool, promoted: bool) -> str:
        """The first half of the reason: what the round achieved."""
        n, metric, value = self.candidate.round, self.primary, _num(self.value)
        if self.targets and not self.unmet:
            return f"Round {n} met every target ({self._targets_text()}) and becomes the champion"
        reference = self._reference_text()
        if self.gain is None:
            text = f"Round {n} scored {metric} {value} (nothing to compare it with yet)"
        elif regressed:
            return (
                f"Round {n} regressed: {metric} {value} is {_num(-self.gain)} "
                f"{self._worse_word()} {reference}, more than the "
                f"{_num(self.gate.regression_tolerance)} tolerance"
            )
        elif self.gain > _SLACK:
            # An improvement beyond the slack is always a promotion.
            return (
                f"Round {n} improved {metric} to {value}, {_signed(self.gain)} over {reference}, "
                "and becomes the champion"
            )
        elif self.gain >= -_SLACK:
            text = f"Round {n} scored {metric} {value}, the same as {reference}"
        else:
            text = (
                f"Round {n} scored {metric} {value}, {_num(-self.gain)} {self._worse_word()} "
                f"{reference}, within the {_num(self.gate.regression_tolerance)} tolerance"
            )
        return f"{text} and becomes the champion" if promoted else text

    def _reference_text(self) -> str:
        value = _num(self.reference) if self.reference is not None else "?"
        if self.champion is not None:
            return f"the champion (round {self.champion.round}, {value})"
        return f"the base model ({value})"

    def _worse_word(self) -> str:
        return "below" if self.gate.higher_is_better else "above"

    def _target_text(self, name: str) -> str:
        """``exact_match 0.91 ≥ 0.9`` (met) or ``loss 0.3 > 0.25`` (not met)."""
        bound, value = self.targets[name], self.candidate.metrics[name]
        met = _meets(value, bound)
        if bound.at_least is not None:
            return f"{name} {_num(value)} {'≥' if met else '<'} {_num(bound.at_least)}"
        assert bound.at_most is not None
        return f"{name} {_num(value)} {'≤' if met else '>'} {_num(bound.at_most)}"

    def _targets_text(self) -> str:
        return ", ".join(self._target_text(name) for name in self.targets)

    def _unmet_text(self) -> str:
        if not self.unmet:
            return ""
        return f" with targets unmet ({', '.join(self._target_text(n) for n in self.unmet)})"

    def _rollback_text(self) -> str:
        rollback = self.gate.rollback
        changes = []
        if not math.isclose(rollback.lr_scale, 1.0):
            changes.append(_scaled_lr(rollback.lr_scale))
        if rollback.overrides:
            changes.append(f"the rollback overrides for {', '.join(rollback.overrides)}")
        return f" with {' and '.join(changes)}" if changes else " with the same settings"

    def _decision(
        self,
        action: Action,
        verdict: _Verdict,
        next_text: str,
        following: _NextRound | None = None,
    ) -> Decision:
        reason = verdict.outcome
        if action is Action.FINISH:
            reason += "; the campaign is finished"
        elif next_text:
            reason += f"; {next_text}"
        recommendation = following.recommendation if following else ""
        if recommendation:
            reason += f"; {recommendation}"
        restart = following.restart if following else None
        return Decision(
            round=self.candidate.round,
            action=action,
            reason=reason + ".",
            promoted=verdict.promoted,
            champion_round=verdict.champion_round,
            next_round=following.number if following else None,
            next_base=restart.base if restart else None,
            next_base_round=restart.base_round if restart else None,
            rollback=restart.rollback if restart else False,
            next_stages=restart.stages if restart else None,
            recommendation=recommendation,
            signals=self._signals(verdict.champion_round, verdict.plateau),
        )

    def _signals(
        self, champion_round: int | None, plateau: int
    ) -> dict[str, float | int | str | None]:
        gate = self.gate
        previous = self.earlier[-1].metrics.get(self.primary) if self.earlier else None
        base_value = self.baseline.get(self.primary)
        spent = sum(r.gpu_hours for r in [*self.earlier, self.candidate])

        def delta(reference: float | None) -> float | None:
            # Rounded so that 0.81 - 0.87 reads -0.06, not -0.05999999999999994.
            return None if reference is None else _rounded(self.value - reference)

        return {
            "primary_metric": self.primary,
            "value": self.value,
            "reference": None
            if self.gain is None
            else ("champion" if self.champion else "baseline"),
            "reference_value": self.reference,
            "improvement": None if self.gain is None else _rounded(self.gain),
            "delta_vs_champion": delta(
                None if self.champion is None else self.champion.metrics.get(self.primary)
            ),
            "delta_vs_previous": delta(previous),
            "delta_vs_baseline": delta(base_value),
            "previous_champion_round": _round_of(self.champion),
            "champion_round": champion_round,
            "regression_tolerance": gate.regression_tolerance,
            "min_improvement": gate.min_improvement,
            "plateau_count": plateau,
            "plateau_rounds": gate.plateau_rounds,
            "max_rounds": gate.max_rounds,
            "targets_unmet": ", ".join(self.unmet),
            "gpu_hours_spent": _rounded(spent),
            "gpu_hours_next_estimate": (
                None if self.next_estimate is None else _rounded(self.next_estimate)
            ),
            "budget_gpu_hours": gate.budget_gpu_hours,
        }


def campaign_over(
    gate: Gate, history: Sequence[RoundSummary], latest: Decision | None
) -> str | None:
    """Why the campaign runs no further round, judged by the gate as it is now; None: it goes on.

    Only a campaign whose latest decision was finish or stop can be over. It is judged again
    with today's settings, so raising ``max_rounds`` or a target reopens it: it stays over while
    the rounds recorded reach ``max_rounds``, while the champion meets every target, or when it
    stopped for a reason settings do not undo (a plateau, the budget).
    """
    if latest is None or latest.action not in (Action.FINISH, Action.STOP) or not history:
        return None
    last = history[-1].round
    if last >= gate.max_rounds:
        return f"round {last} reached max_rounds {gate.max_rounds}"
    targets = gate.target_bounds()
    champion = next((s for s in reversed(history) if s.promoted), None)
    if champion is not None and targets:
        met = [
            n
            for n, b in targets.items()
            if n in champion.metrics and _meets(champion.metrics[n], b)
        ]
        if len(met) == len(targets):
            values = ", ".join(f"{n} {_num(champion.metrics[n])}" for n in met)
            return f"round {champion.round} met every target ({values})"
    if latest.action is Action.STOP and last < int(latest.signals.get("max_rounds") or 0):
        return latest.reason  # a plateau or the budget: not undone by new settings
    return None


# --- helpers ------------------------------------------------------------------------------------


def _check_metrics(gate: Gate, candidate: RoundSummary) -> None:
    """Every metric the gate reads must be in the round's metrics; name all that are not."""
    needed = [gate.primary_metric, *(m for m in gate.targets if m != gate.primary_metric)]
    missing = [m for m in needed if m not in candidate.metrics]
    if not missing:
        return
    raise GateError(
        [
            Problem(
                "gate.primary_metric" if name == gate.primary_metric else f"gate.targets.{name}",
                f"round {candidate.round}'s evaluation reported no {name!r} metric (it "
                f"reported: {_names(candidate.metrics)})",
                fix="name a metric the evaluation task produces (listed in evaluation.metrics), "
                "or check that the evaluation job finished and wrote its results",
            )
            for name in missing
        ]
    )


def _meets(value: float, bound: Target) -> bool:
    if bound.at_least is not None:
        return value >= bound.at_least - _SLACK
    assert bound.at_most is not None
    return value <= bound.at_most + _SLACK


def _switched_away(stage_sets: list[list[str]]) -> list[list[str]]:
    """Stage sets a later round moved away from: they have had their plateau."""
    return [a for a, b in pairwise(stage_sets) if a != b]


def _round_of(summary: RoundSummary | None) -> int | None:
    return None if summary is None else summary.round


def _champion_name(champion_round: int | None) -> str:
    return "the base model" if champion_round is None else f"round {champion_round}"


def _start_text(base_round: int | None, candidate_round: int) -> str:
    if base_round is None:
        return "the base model"
    if base_round == candidate_round:
        return "its checkpoint"
    return f"round {base_round}'s checkpoint"


def _methods_text(methods: Sequence[Method]) -> str:
    unique = list(dict.fromkeys(methods))
    return " + ".join(m.value.upper() for m in unique) or "no stage"


def _scaled_lr(scale: float) -> str:
    words = {0.5: "half the learning rate", 0.25: "a quarter of the learning rate"}
    for value, text in words.items():
        if math.isclose(scale, value):
            return text
    return f"the learning rate scaled by {_num(scale)}"


def _names(metrics: Mapping[str, float]) -> str:
    return ", ".join(sorted(metrics)) or "nothing"


def _num(value: float) -> str:
    """Numbers as a person writes them: 0.87, 0.06, 12.5, 1.2e-05."""
    if abs(value) < 1e-12:
        return "0"
    return f"{value:.4g}"


def _rounded(value: float) -> float:
    return round(value, 10)


def _signed(value: float) -> str:
    text = _num(value)
    return text if text.startswith("-") else f"+{text}"
