"""The gate: after a round is evaluated, decide what the campaign does next.

Pure decision logic: no I/O and no Airflow. The round DAG hands in the finished round (a
`RoundSummary`), the rounds before it (from the ledger) and the campaign's gate settings; the
gate returns a `Decision` whose ``reason`` is one sentence a person reads in the Airflow UI.

The rules, in the order they are applied:

1. every target met: promote the round and finish;
2. ``max_rounds`` reached: stop;
3. the primary metric fell behind the champion (or, before any round was promoted, the base
   model) by more than ``regression_tolerance``: roll back, i.e. the next round restarts from
   the champion with the campaign's rollback adjustments (half the learning rate by default);
   otherwise the next round continues from the round, which is promoted when it beats the
   champion;
4. plateau (gains under ``min_improvement`` for ``plateau_rounds`` rounds in a row with the same
   stages): with ``on_plateau: stop``, stop; with ``switch`` (the default), the next rounds run
   another group of the campaign's stages, from the same starting point. The groups are the
   campaign's stages by method, in the campaign's order, tried from the method the round ended
   with and wrapping round, so rounds of ``[sft, rft]`` switch to RFT alone and, after RFT's
   plateau, to SFT alone. A group is skipped when its rounds had their plateau already, when the
   compatibility matrix forbids it after the starting checkpoint's lineage, or when it would
   start RFT against rule 5; none left: stop, saying why each was skipped;
5. SFT first: when under 5% of the starting model's rewards are positive (the reward probe) and
   the next round would train RFT on a model no SFT or CPT has touched, the decision recommends
   SFT first; with ``reward_probe.low_positive_rewards: sft_only`` the next round runs only the
   campaign's SFT and CPT stages instead, and the round after it every stage again;
6. the GPU-hours or US dollars spent (the base model's evaluation included) plus an estimate
   of the next round would exceed ``budget.gpu_hours`` or ``budget.usd``: stop.

A round may be promoted and still end the campaign (a stop keeps the best round as champion).
A round whose training monitoring stopped has no evaluation: `decide_failed` judges it (stop
when its monitor stops the campaign, at ``max_rounds`` or over the budget; otherwise roll back
to the champion), and the rules above skip failed rounds when they compare rounds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from tuneloop.config.campaign import Gate, Rollback, Stage, Target
from tuneloop.errors import CompatibilityError, Problem, TuneloopError
from tuneloop.recipes import compat
from tuneloop.recipes.catalog import Method, Platform, Technique
from tuneloop.recipes.compat import Checkpoint
from tuneloop.rounds.decision import Action, Decision, RoundSummary

RFT_MIN_POSITIVE_FRACTION = 0.05
"""RFT rarely learns when fewer than this share of rewards is positive: train with SFT first."""

LowPositiveRewards = Literal["recommend", "sft_only"]
"""``reward_probe.low_positive_rewards``: what rule 5 does when rewards are rarely positive."""

SUPERVISED = (Method.SFT, Method.CPT)
"""Methods that teach from examples: a lineage with one of them is ready for RFT."""

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
    low = _low_share(positive_fraction)
    return None if low is None else f"{low}, so train with SFT first"


def _low_share(positive_fraction: float | None) -> str | None:
    """What is wrong with the starting model's rewards, or None when RFT can learn from it."""
    if positive_fraction is None:
        return None
    if not 0.0 <= positive_fraction <= 1.0 or math.isnan(positive_fraction):
        raise ValueError(f"positive reward fraction must be within 0..1, got {positive_fraction}")
    if positive_fraction >= RFT_MIN_POSITIVE_FRACTION:
        return None
    return (
        f"only {positive_fraction:.1%} of the starting model's rewards are positive (RFT needs "
        f"at least {RFT_MIN_POSITIVE_FRACTION:.0%} to learn)"
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
    low_positive_rewards: LowPositiveRewards = "recommend",
    base_lineage: Sequence[Method] = (),
) -> Decision:
    """Judge ``candidate`` against the rounds before it and the gate's rules.

    ``history`` holds the earlier rounds (later ones, and the candidate itself when a retried
    task reads it back from the ledger, are ignored). ``stages`` and ``technique`` are the
    campaign's; ``baseline`` the base model's metrics, the reference before any round is
    promoted. ``baseline_positive_reward_fraction`` (the reward probe's share of positive
    rewards for the base model) and ``low_positive_rewards`` drive rule 5 (see
    `rft_readiness`), and ``base_lineage`` says how the campaign's base model was trained when
    it is an earlier checkpoint.
    """
    campaign = _Campaign(
        list(stages),
        technique,
        list(base_lineage),
        baseline_positive_reward_fraction,
        low_positive_rewards,
    )
    return _Judgement(gate, candidate, history, campaign, baseline).decide()


def decide_failed(
    gate: Gate,
    round_number: int,
    history: Sequence[RoundSummary],
    *,
    stages: Sequence[Stage],
    technique: Technique,
    why: str,
    stop_campaign: bool,
    baseline: Mapping[str, float] | None = None,
    base_lineage: Sequence[Method] = (),
    ran: Sequence[str] = (),
    gpu_hours: float = 0.0,
    cost_usd: float | None = 0.0,
    baseline_gpu_hours: float = 0.0,
    baseline_cost_usd: float | None = 0.0,
) -> Decision:
    """Judge a round that failed before its evaluation could count: monitoring stopped a
    training job (so it has no metrics), or a detector whose policy fails the round fired.

    It is never promoted. ``why`` says what stopped it (one clause, no final period);
    ``stop_campaign`` is true when the monitor that fired has the stop_campaign policy: then
    the campaign stops with the champion. Otherwise the next round restarts from the champion
    (the base model before any promotion) with the rollback adjustments and the stages the
    round ran (``ran``; empty: every stage), unless ``max_rounds``, the compatibility matrix or
    a budget stop the campaign. ``gpu_hours`` and ``cost_usd`` are what the round's jobs were
    billed before they were stopped, ``baseline_*`` the base model's evaluation when this round
    measured it. ``stages``, ``technique`` and ``base_lineage`` are the
    campaign's, as for `decide`.
    """
    campaign = _Campaign(list(stages), technique, list(base_lineage))
    names = list(ran) or campaign.all_names()
    failed = RoundSummary(
        round=round_number,
        metrics={},
        checkpoint="",
        stages=names,
        methods=campaign.methods(names),
        gpu_hours=gpu_hours,
        cost_usd=cost_usd,
        baseline_gpu_hours=baseline_gpu_hours,
        baseline_cost_usd=baseline_cost_usd,
        failed=True,
    )
    return _FailedRound(gate, failed, history, campaign, why, baseline).decide(stop_campaign)


# --- the campaign's side: stages, technique, lineage, readiness for RFT -------------------------


@dataclass(frozen=True)
class _Campaign:
    """What the rules read about the campaign rather than the rounds."""

    stages: list[Stage]
    technique: Technique
    base_lineage: list[Method]
    positive_fraction: float | None = None
    """The base model's share of positive rewards (the reward probe); None: not measured."""
    policy: LowPositiveRewards = "recommend"

    def all_names(self) -> list[str]:
        return [stage.name for stage in self.stages]

    def ran(self, summary: RoundSummary) -> list[str]:
        return list(summary.stages) or self.all_names()

    def methods(self, names: Sequence[str]) -> list[Method]:
        by_name = {stage.name: stage.method for stage in self.stages}
        return [by_name[name] for name in names if name in by_name]

    def lineage(self, summary: RoundSummary | None) -> list[Method]:
        """How the checkpoint a next round would start from was trained."""
        if summary is None:
            return self.base_lineage
        if summary.lineage:
            return list(summary.lineage)
        methods = list(summary.methods) or self.methods(self.ran(summary))
        return self.base_lineage + methods

    def start_lineage(self, summary: RoundSummary) -> list[Method]:
        """How the checkpoint ``summary``'s round started from was trained."""
        lineage = self.lineage(summary)
        own = list(summary.methods) or self.methods(self.ran(summary))
        if own and lineage[-len(own) :] == own:
            return lineage[: -len(own)]
        return self.base_lineage

    def groups(self) -> list[list[str]]:
        """The stage sets a round may run on its own: the campaign's stages by method, in the
        campaign's order."""
        by_method: dict[Method, list[str]] = {}
        for stage in self.stages:
            by_method.setdefault(stage.method, []).append(stage.name)
        return list(by_method.values())

    def incompatible(self, base: str | None, lineage: list[Method], names: list[str]) -> str:
        """Why the stages ``names`` may not follow a checkpoint trained with ``lineage``; ""
        if they may."""
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
                self.methods(names),
                technique=self.technique,
                model_type="(any)",
                platform=Platform.LOCAL,
                base=checkpoint,
            )
        except CompatibilityError as exc:
            return exc.problems[0].message
        return ""

    # --- rule 5 ----------------------------------------------------------------------------------

    def low_share(self) -> str | None:
        return _low_share(self.positive_fraction)

    def needs_sft_first(self, names: list[str], lineage: list[Method]) -> bool:
        """Whether ``sft_only`` keeps a round of ``names`` from starting after ``lineage``: it
        would train RFT, no SFT or CPT trained the model yet, and its rewards are rarely
        positive."""
        return (
            self.policy == "sft_only"
            and self.low_share() is not None
            and Method.RFT in self.methods(names)
            and not _supervised(lineage)
        )

    def supervised_stages(
        self, base: str | None, lineage: list[Method]
    ) -> tuple[list[str] | None, str]:
        """The campaign's SFT and CPT stages, when they may run on their own after
        ``lineage``; else None and why not."""
        names = [stage.name for stage in self.stages if stage.method in SUPERVISED]
        if not names:
            return None, "the campaign has no SFT or CPT stage to run first"
        problem = self.incompatible(base, lineage, names)
        if problem:
            return None, f"its SFT stages cannot run first: {problem}"
        return names, ""

    def sft_only_text(self) -> str:
        return f"{self.low_share()} and reward_probe.low_positive_rewards is sft_only"

    def recommendation_text(self) -> str:
        return f"RFT is unlikely to learn: {rft_readiness(self.positive_fraction)}"

    def recommendation(self, names: list[str], lineage: list[Method]) -> str:
        """SFT-first advice when a round of ``names`` starts RFT on a model no SFT or CPT has
        touched (before it, or earlier in the round) and the base model's rewards are almost
        never positive."""
        methods = self.methods(names)
        if Method.RFT not in methods or self.low_share() is None:
            return ""
        before_rft = methods[: methods.index(Method.RFT)]
        if _supervised([*lineage, *before_rft]):
            return ""
        return self.recommendation_text()


def _supervised(lineage: Sequence[Method]) -> bool:
    return any(method in SUPERVISED for method in lineage)


def _failed(summary: RoundSummary) -> bool:
    """Monitoring stopped the round: it has nothing the gate can compare."""
    return summary.failed or not summary.metrics


@dataclass(frozen=True)
class _Spend:
    """What the campaign spent so far and what a next round is expected to cost."""

    gpu_hours: float
    gpu_hours_next: float
    usd: float
    usd_next: float
    projected: bool
    """Whether an earlier round was billed, so the next round has a projection."""


def _spend(rounds: Sequence[RoundSummary], next_stages: list[str], campaign: _Campaign) -> _Spend:
    """GPU-hours and US dollars spent so far (the base model's evaluation included), and the
    next round's estimate: the mean of earlier rounds that ran the same stages, else of every
    round that was billed (rounds that ran to the end; failed ones only when no other was
    billed). A cost that is unknown (no price) counts as nothing."""
    spent = sum(r.gpu_hours + r.baseline_gpu_hours for r in rounds)
    usd = sum((r.cost_usd or 0.0) + (r.baseline_cost_usd or 0.0) for r in rounds)
    billed = [r for r in rounds if r.gpu_hours > 0 or (r.cost_usd or 0.0) > 0]
    billed = [r for r in billed if not _failed(r)] or billed
    alike = [r for r in billed if campaign.ran(r) == next_stages] or billed
    count = len(alike) or 1
    return _Spend(
        gpu_hours=spent,
        gpu_hours_next=sum(r.gpu_hours for r in alike) / count,
        usd=usd,
        usd_next=sum(r.cost_usd or 0.0 for r in alike) / count,
        projected=bool(alike),
    )


def _over_budget(gate: Gate, spend: _Spend) -> str:
    """Why a next round of about the estimate would pass a budget; "" if not."""
    reasons = []
    hours = gate.gpu_hour_budget()
    if hours is not None and spend.gpu_hours + spend.gpu_hours_next > hours + _SLACK:
        reasons.append(
            f"{_num(spend.gpu_hours)} GPU-hours spent and a next round of about "
            f"{_num(spend.gpu_hours_next)} would pass the {_num(hours)} GPU-hour budget"
        )
    usd = gate.usd_budget()
    if usd is not None and spend.usd + spend.usd_next > usd + _SLACK:
        reasons.append(
            f"${spend.usd:,.2f} spent and a next round of about ${spend.usd_next:,.2f} "
            f"would pass the ${usd:,.2f} budget"
        )
    return "; ".join(reasons)


def budget_refusal(
    gate: Gate,
    history: Sequence[RoundSummary],
    next_stages: Sequence[str],
    *,
    stages: Sequence[Stage],
    technique: Technique,
) -> str:
    """Why a round about to start must not submit a job because of the budget; "" to go on.

    Checked before a round's first job (a trigger after a budget stop, a raised max_rounds, a
    first round): the spend so far plus the next round's projection (the mean of earlier
    rounds with the same stages, as at decide time) must stay within every budget. Before any
    round was billed there is no projection: the round goes on unless the spend already
    reached a budget."""
    campaign = _Campaign(list(stages), technique, [])
    spend = _spend(list(history), list(next_stages) or campaign.all_names(), campaign)
    why = _over_budget(gate, spend)
    if why:
        return why
    reached = []
    hours, usd = gate.gpu_hour_budget(), gate.usd_budget()
    if hours is not None and spend.gpu_hours >= hours - _SLACK:
        reached.append(f"{_num(spend.gpu_hours)} GPU-hours spent of the {_num(hours)} budget")
    if usd is not None and spend.usd >= usd - _SLACK:
        reached.append(f"${spend.usd:,.2f} spent of the ${usd:,.2f} budget")
    return "; ".join(reached)


def budget_signals(gate: Gate, spend: _Spend | None, spent: _Spend) -> dict[str, float | None]:
    """The budget's numbers in a decision's signals."""
    return {
        "gpu_hours_spent": _rounded(spent.gpu_hours),
        "gpu_hours_next_estimate": None if spend is None else _rounded(spend.gpu_hours_next),
        "budget_gpu_hours": gate.gpu_hour_budget(),
        "cost_usd_spent": _rounded(spent.usd),
        "cost_usd_next_estimate": None if spend is None else _rounded(spend.usd_next),
        "budget_usd": gate.usd_budget(),
    }


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
    why_stages: str = ""
    """Why the next round runs other stages than the judged one (a plateau, SFT first), or
    runs the same ones only because of SFT first."""


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
        campaign: _Campaign,
        baseline: Mapping[str, float] | None,
    ) -> None:
        self.gate = gate
        self.candidate = candidate
        self.earlier = sorted(
            (h for h in history if h.round < candidate.round), key=lambda h: h.round
        )
        self.campaign = campaign
        self.baseline = dict(baseline or {})
        self.primary = gate.primary_metric
        _check_metrics(gate, candidate)

        self.champion = _champion(self.earlier)
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
        self.streaks = self._streaks()
        self.next_estimate: _Spend | None = None
        """What the next round is expected to cost, once the rules got that far."""

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

    def decide(self) -> Decision:
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
        else:
            restart = self._after_sft_first(restart)
        restart = self._sft_first(restart)
        self.next_estimate = _spend([*self.earlier, self.candidate], restart.stages, self.campaign)
        over_budget = _over_budget(self.gate, self.next_estimate)
        if over_budget:
            return self._stop(verdict, over_budget)
        following = _NextRound(
            number=self.candidate.round + 1,
            restart=restart,
            recommendation=self.campaign.recommendation(restart.stages, restart.lineage),
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
            plateau=self.streaks[-1][1],
        )

    def _restart(self, regressed: bool) -> _Restart:
        """Where the next round would start (the champion after a regression), with the
        stages this round ran."""
        if regressed:
            return _Restart(
                action=Action.ROLLBACK,
                base=None if self.champion is None else self.champion.checkpoint,
                base_round=_round_of(self.champion),
                lineage=self.campaign.lineage(self.champion),
                stages=self.campaign.ran(self.candidate),
                rollback=True,
            )
        return _Restart(
            action=Action.CONTINUE,
            base=self.candidate.checkpoint,
            base_round=self.candidate.round,
            lineage=self.campaign.lineage(self.candidate),
            stages=self.campaign.ran(self.candidate),
            rollback=False,
        )

    def _after_plateau(self, restart: _Restart, plateau: int) -> tuple[_Restart, str]:
        """The restart with another group of stages after a plateau; or why the campaign
        stops instead (then the restart is unchanged)."""
        gate = self.gate
        plateau_text = (
            f"{self.primary} improved by less than {_num(gate.min_improvement)} for "
            f"{plateau} round{'s' if plateau > 1 else ''} in a row"
        )
        if gate.on_plateau == "stop":
            return restart, f"{plateau_text} and gate.on_plateau is stop"
        switched, why_not = self._switch(restart.base, restart.lineage)
        if switched is None:
            return restart, f"{plateau_text} and {why_not}"
        # A new technique starts with its own recipe settings: the rollback's lower
        # learning rate was meant for retrying the stages that regressed.
        return replace(restart, stages=switched, rollback=False, why_stages=plateau_text), ""

    def _switch(self, base: str | None, lineage: list[Method]) -> tuple[list[str] | None, str]:
        """The group of stages to run after a plateau, or None and why there is none.

        Groups are the campaign's stages by method (`_Campaign.groups`), the stages the round
        ran excluded, tried in the campaign's order from the group of the method the round
        ended with, wrapping round: [sft, rft] -> [rft] -> [sft]. A group whose rounds had
        their plateau is not tried again, and each must be allowed after the checkpoint's
        lineage, by the compatibility matrix and by ``low_positive_rewards: sft_only``."""
        current = self.campaign.ran(self.candidate)
        groups = self.campaign.groups()
        others = [names for names in groups if names != current]
        if not others:
            return None, "the campaign has no stage with another method to switch to"
        ran_methods = self.campaign.methods(current)
        firsts = [self.campaign.methods(names)[0] for names in groups]
        last = ran_methods[-1] if ran_methods else None
        start = firsts.index(last) if last in firsts else 0
        others.sort(key=lambda names: (groups.index(names) - start) % len(groups))
        plateaued = [ran for ran, count in self.streaks if count >= self.gate.plateau_rounds]
        refused: list[str] = []
        for names in others:
            label = _methods_text(self.campaign.methods(names))
            if names in plateaued:
                refused.append(f"{label} plateaued earlier in the campaign")
                continue
            problem = self.campaign.incompatible(base, lineage, names)
            if not problem and self.campaign.needs_sft_first(names, lineage):
                problem = (
                    f"{label} would train a model no SFT or CPT has touched although "
                    f"{self.campaign.sft_only_text()}"
                )
            if problem:
                refused.append(problem)
                continue
            return names, ""
        return None, f"no other stages are left to switch to: {'; '.join(refused)}"

    def _after_sft_first(self, restart: _Restart) -> _Restart:
        """After a round that ran only the SFT and CPT stages because of
        ``low_positive_rewards: sft_only`` (its model had no SFT or CPT yet), the next round
        runs every stage of the campaign again."""
        campaign, candidate = self.campaign, self.candidate
        ran, everything = campaign.ran(candidate), campaign.all_names()
        handed_back = (
            campaign.policy == "sft_only"
            and campaign.low_share() is not None
            and ran != everything
            and all(method in SUPERVISED for method in campaign.methods(ran))
            and not _supervised(campaign.start_lineage(candidate))
            and not campaign.incompatible(restart.base, restart.lineage, everything)
        )
        if not handed_back:
            return restart
        why = (
            f"round {candidate.round} trained with {_methods_text(campaign.methods(ran))} "
            "first (reward_probe.low_positive_rewards: sft_only)"
        )
        return replace(restart, stages=everything, why_stages=why)

    def _sft_first(self, restart: _Restart) -> _Restart:
        """Under ``low_positive_rewards: sft_only``: a next round that would train RFT on a
        model no SFT or CPT has touched, while the base model's rewards are rarely positive,
        runs only the campaign's SFT and CPT stages (when they cannot run alone, the
        decision's recommendation says why RFT is unlikely to learn)."""
        if not self.campaign.needs_sft_first(restart.stages, restart.lineage):
            return restart
        supervised, _ = self.campaign.supervised_stages(restart.base, restart.lineage)
        if supervised is None:
            return restart
        return replace(restart, stages=supervised, why_stages=self.campaign.sft_only_text())

    def _stop(self, verdict: _Verdict, why: str) -> Decision:
        champion = _champion_name(verdict.champion_round)
        return self._decision(
            Action.STOP, verdict, f"the campaign stops with {champion} as the champion: {why}"
        )

    def _next_text(self, verdict: _Verdict, following: _NextRound) -> str:
        """The second half of the reason for a round that is followed by another."""
        restart, number = following.restart, following.number
        start = _start_text(restart.base_round, self.candidate.round)
        current = self.campaign.ran(self.candidate)
        rollback = _rollback_text(self.gate.rollback) if restart.rollback else ""
        stages = (
            f"{_methods_text(self.campaign.methods(restart.stages))} (stages: "
            f"{', '.join(restart.stages)})"
        )
        if restart.stages != current:
            return (
                f"{restart.why_stages}, so round {number} switches from "
                f"{_methods_text(self.campaign.methods(current))} to {stages}, starting from "
                f"{start}{rollback}"
            )
        if verdict.regressed:
            text = f"round {number} restarts from {start}{rollback}"
        elif verdict.promoted:
            text = f"round {number} continues from {start}"
        elif verdict.champion_round is not None:
            text = (
                f"round {number} continues from {start} and "
                f"{_champion_name(verdict.champion_round)} stays the champion"
            )
        else:
            text = (
                f"round {number} continues from {start} while the base model stays the best so far"
            )
        if restart.why_stages:
            text += f"; round {number} runs only {stages} because {restart.why_stages}"
        return text

    # --- pieces of the rules -------------------------------------------------------------------

    def _streaks(self) -> list[tuple[list[str], int]]:
        """For each round that was evaluated, the candidate last: the stages it ran, and how
        many rounds in a row, ending with it and running its stages, gained less than
        min_improvement over the champion of their time (the base model before one)."""
        reference = self.baseline.get(self.primary)
        streaks: list[tuple[list[str], int]] = []
        judged = [s for s in self.earlier if not _failed(s)]
        for summary in [*judged, self.candidate]:
            value = summary.metrics.get(self.primary)
            ran = self.campaign.ran(summary)
            flat = (
                value is not None
                and reference is not None
                and self._improvement(value, reference) < self.gate.min_improvement - _SLACK
            )
            before = streaks[-1] if streaks else None
            count = 0
            if flat:
                count = 1 + (before[1] if before is not None and before[0] == ran else 0)
            streaks.append((ran, count))
            promoted = summary.promoted if summary is not self.candidate else False
            if promoted and value is not None:
                reference = value
        return streaks

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
        spent = _spend([*self.earlier, self.candidate], [], self.campaign)

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
            **budget_signals(gate, self.next_estimate, spent),
        }


class _FailedRound:
    """One decision about a round that monitoring stopped: no metrics, so no verdict."""

    def __init__(
        self,
        gate: Gate,
        failed: RoundSummary,
        history: Sequence[RoundSummary],
        campaign: _Campaign,
        why: str,
        baseline: Mapping[str, float] | None,
    ) -> None:
        self.gate = gate
        self.failed = failed
        self.earlier = sorted((h for h in history if h.round < failed.round), key=lambda h: h.round)
        self.campaign = campaign
        self.baseline = dict(baseline or {})
        self.champion = _champion(self.earlier)
        self.outcome = f"Round {failed.round} failed: {why.strip().rstrip('.')}"
        self.next_estimate: _Spend | None = None

    def decide(self, stop_campaign: bool) -> Decision:
        if stop_campaign:
            return self._stop("")
        if self.failed.round >= self.gate.max_rounds:
            return self._stop(f"max_rounds {self.gate.max_rounds} reached")
        base = None if self.champion is None else self.champion.checkpoint
        stages = self.campaign.ran(self.failed)
        problem = self.campaign.incompatible(base, self.campaign.lineage(self.champion), stages)
        if problem:
            return self._stop(problem)
        self.next_estimate = _spend([*self.earlier, self.failed], stages, self.campaign)
        over_budget = _over_budget(self.gate, self.next_estimate)
        if over_budget:
            return self._stop(over_budget)
        number = self.failed.round + 1
        start = _start_text(_round_of(self.champion), self.failed.round)
        return self._decision(
            Action.ROLLBACK,
            f"round {number} restarts from {start}{_rollback_text(self.gate.rollback)}",
            next_round=number,
            next_base=base,
            next_base_round=_round_of(self.champion),
            rollback=True,
            next_stages=stages,
        )

    def _stop(self, why: str) -> Decision:
        champion = _champion_name(_round_of(self.champion))
        text = f"the campaign stops with {champion} as the champion"
        return self._decision(Action.STOP, f"{text}: {why}" if why else text)

    def _decision(self, action: Action, next_text: str, **following: object) -> Decision:
        return Decision.model_validate(
            {
                "round": self.failed.round,
                "action": action,
                "reason": f"{self.outcome}; {next_text}.",
                "promoted": False,
                "champion_round": _round_of(self.champion),
                **following,
                "signals": self._signals(),
            }
        )

    def _signals(self) -> dict[str, float | int | str | None]:
        gate = self.gate
        spent = _spend([*self.earlier, self.failed], [], self.campaign)
        # What the next round has to beat: the champion's primary metric, or the base model's.
        kind, source = (
            ("baseline", self.baseline)
            if self.champion is None
            else ("champion", self.champion.metrics)
        )
        reference = source.get(gate.primary_metric)
        return {
            "failed": 1,
            "primary_metric": gate.primary_metric,
            "value": None,
            "reference": None if reference is None else kind,
            "reference_value": reference,
            "previous_champion_round": _round_of(self.champion),
            "champion_round": _round_of(self.champion),
            "regression_tolerance": gate.regression_tolerance,
            "min_improvement": gate.min_improvement,
            "plateau_rounds": gate.plateau_rounds,
            "max_rounds": gate.max_rounds,
            **budget_signals(gate, self.next_estimate, spent),
        }


def campaign_over(
    gate: Gate, history: Sequence[RoundSummary], latest: Decision | None
) -> str | None:
    """Why the campaign runs no further round, judged by the gate as it is now; None: it goes on.

    Only a campaign whose latest decision was finish or stop can be over. It is judged again
    with today's settings, so raising ``max_rounds`` or a target reopens it: it stays over while
    the rounds recorded reach ``max_rounds``, while the champion meets every target, or when it
    stopped for a reason settings do not undo (a plateau, the budget, a failed round whose
    monitor stops the campaign). A failed round counts towards ``max_rounds`` and is never the
    champion.
    """
    if latest is None or latest.action not in (Action.FINISH, Action.STOP) or not history:
        return None
    last = history[-1].round
    if last >= gate.max_rounds:
        return f"round {last} reached max_rounds {gate.max_rounds}"
    targets = gate.target_bounds()
    champion = _champion(history)
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
        return latest.reason  # a plateau, the budget, a failure: not undone by new settings
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


def _champion(earlier: Sequence[RoundSummary]) -> RoundSummary | None:
    """The latest promoted round (a failed round never is)."""
    return next((h for h in reversed(earlier) if h.promoted and not _failed(h)), None)


def _rollback_text(rollback: Rollback) -> str:
    changes = []
    if not math.isclose(rollback.lr_scale, 1.0):
        changes.append(_scaled_lr(rollback.lr_scale))
    if rollback.overrides:
        changes.append(f"the rollback overrides for {', '.join(rollback.overrides)}")
    return f" with {' and '.join(changes)}" if changes else " with the same settings"


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
