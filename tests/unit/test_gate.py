"""The gate: finish, rollback, continue, plateau switch or stop, budget, SFT-before-RFT advice."""

from __future__ import annotations

import math

import pytest

from tuneloop.config.campaign import Gate, Rollback, Stage, Target
from tuneloop.recipes.catalog import Method, Technique
from tuneloop.rounds.gate import (
    Action,
    Decision,
    GateError,
    RoundSummary,
    campaign_over,
    decide,
    rft_readiness,
)

SFT = Stage(method="sft", recipe="sft.yaml", datasets={"train": "s3://data/sft.jsonl"})
RFT = Stage(
    method="rft",
    recipe="rft.yaml",
    datasets={"train": "s3://data/rft.jsonl"},
    reward_function="arn:aws:lambda:us-east-1:123456789012:function:SageMaker-reward",
)
CPT = Stage(method="cpt", recipe="cpt.yaml", datasets={"train": "s3://data/cpt.jsonl"})


def gate(**fields) -> Gate:
    settings = {"primary_metric": "exact_match", "regression_tolerance": 0.02}
    return Gate.model_validate({**settings, **fields})


def summary(n: int, value: float | None, *, stages=("sft",), promoted=False, **extra):
    metrics = {} if value is None else {"exact_match": value}
    methods = [Method(s.split("-")[0]) for s in stages]
    return RoundSummary(
        round=n,
        metrics={**metrics, **extra.pop("metrics", {})},
        checkpoint=f"s3://out/rounds/{n:04d}/last",
        stages=list(stages),
        methods=methods,
        promoted=promoted,
        action=extra.pop("action", Action.CONTINUE),
        **extra,
    )


def judge(g: Gate, candidate: RoundSummary, history=(), *, stages=(SFT,), **kw) -> Decision:
    kw.setdefault("technique", Technique.LORA)
    return decide(g, candidate, list(history), stages=list(stages), **kw)


# --- targets ----------------------------------------------------------------------------------


def test_every_target_met_promotes_and_finishes() -> None:
    g = gate(targets={"exact_match": 0.9, "loss": Target(at_most=0.3)})
    history = [summary(1, 0.85, promoted=True)]
    d = judge(g, summary(2, 0.91, metrics={"loss": 0.25}), history)
    assert d.action is Action.FINISH
    assert d.promoted and d.champion_round == 2
    assert d.next_round is None and d.next_base is None and d.next_stages is None
    assert d.reason == (
        "Round 2 met every target (exact_match 0.91 ≥ 0.9, loss 0.25 ≤ 0.3) and becomes the "
        "champion; the campaign is finished."
    )


def test_one_target_missed_keeps_going() -> None:
    g = gate(targets={"exact_match": 0.9, "loss": Target(at_most=0.3)})
    d = judge(g, summary(2, 0.91, metrics={"loss": 0.35}), [summary(1, 0.85, promoted=True)])
    assert d.action is Action.CONTINUE
    assert d.signals["targets_unmet"] == "loss"


def test_a_gate_without_targets_never_finishes() -> None:
    d = judge(gate(), summary(1, 0.99))
    assert d.action is Action.CONTINUE and d.promoted


def test_targets_met_finish_even_below_the_champion() -> None:
    g = gate(targets={"f1": 0.8})
    d = judge(g, summary(2, 0.5, metrics={"f1": 0.81}), [summary(1, 0.9, promoted=True)])
    assert d.action is Action.FINISH and d.promoted and d.champion_round == 2


# --- rollback -----------------------------------------------------------------------------------


def test_regression_rolls_back_to_the_champion_with_half_the_learning_rate() -> None:
    history = [summary(1, 0.84, promoted=True), summary(2, 0.87, promoted=True)]
    d = judge(gate(), summary(3, 0.81), history)
    assert d.action is Action.ROLLBACK
    assert not d.promoted and d.champion_round == 2
    assert d.next_round == 4 and d.next_base == "s3://out/rounds/0002/last"
    assert d.next_base_round == 2 and d.rollback and d.next_stages == ["sft"]
    assert d.reason == (
        "Round 3 regressed: exact_match 0.81 is 0.06 below the champion (round 2, 0.87), more "
        "than the 0.02 tolerance; round 4 restarts from round 2's checkpoint with half the "
        "learning rate."
    )
    assert d.signals["delta_vs_champion"] == -0.06
    assert d.signals["delta_vs_previous"] == -0.06


def test_regression_when_lower_is_better() -> None:
    g = gate(primary_metric="loss", higher_is_better=False, regression_tolerance=0.05)
    history = [summary(1, None, metrics={"loss": 1.2}, promoted=True)]
    d = judge(g, summary(2, None, metrics={"loss": 1.3}), history)
    assert d.action is Action.ROLLBACK
    assert "loss 1.3 is 0.1 above the champion (round 1, 1.2)" in d.reason
    better = judge(g, summary(2, None, metrics={"loss": 1.1}), history)
    assert better.action is Action.CONTINUE and better.promoted


def test_regression_before_any_promotion_restarts_from_the_base_model() -> None:
    d = judge(gate(), summary(1, 0.60), baseline={"exact_match": 0.70})
    assert d.action is Action.ROLLBACK
    assert d.next_base is None and d.next_base_round is None
    assert d.champion_round is None and d.rollback
    assert "below the base model (0.7)" in d.reason
    assert "round 2 restarts from the base model with half the learning rate" in d.reason
    assert d.signals["reference"] == "baseline"


def test_a_drop_of_exactly_the_tolerance_is_not_a_regression() -> None:
    d = judge(gate(), summary(2, 0.85), [summary(1, 0.87, promoted=True)])
    assert d.action is Action.CONTINUE and not d.promoted
    assert d.next_base == "s3://out/rounds/0002/last"
    assert d.reason == (
        "Round 2 scored exact_match 0.85, 0.02 below the champion (round 1, 0.87), within the "
        "0.02 tolerance; round 3 continues from its checkpoint and round 1 stays the champion."
    )


@pytest.mark.parametrize(
    ("rollback", "wording"),
    [
        (Rollback(lr_scale=0.25), "with a quarter of the learning rate."),
        (Rollback(lr_scale=0.3), "with the learning rate scaled by 0.3."),
        (Rollback(lr_scale=1.0), "with the same settings."),
        (
            Rollback(lr_scale=1.0, overrides={"sft": {"training_config.max_epochs": 1}}),
            "with the rollback overrides for sft.",
        ),
        (
            Rollback(overrides={"sft": {"training_config.max_epochs": 1}}),
            "with half the learning rate and the rollback overrides for sft.",
        ),
    ],
)
def test_rollback_wording_follows_the_adjustments(rollback: Rollback, wording: str) -> None:
    d = judge(gate(rollback=rollback), summary(2, 0.5), [summary(1, 0.9, promoted=True)])
    assert d.reason.endswith(wording)


# --- continue -----------------------------------------------------------------------------------


def test_improvement_promotes_and_continues_from_the_candidate() -> None:
    d = judge(gate(), summary(2, 0.87), [summary(1, 0.84, promoted=True)])
    assert d.action is Action.CONTINUE and d.promoted and d.champion_round == 2
    assert d.next_base == "s3://out/rounds/0002/last" and d.next_base_round == 2
    assert not d.rollback
    assert d.reason == (
        "Round 2 improved exact_match to 0.87, +0.03 over the champion (round 1, 0.84), and "
        "becomes the champion; round 3 continues from its checkpoint."
    )


def test_first_round_with_nothing_to_compare_becomes_the_champion() -> None:
    d = judge(gate(), summary(1, 0.4))
    assert d.promoted and d.champion_round == 1 and d.action is Action.CONTINUE
    assert d.reason.startswith("Round 1 scored exact_match 0.4 (nothing to compare it with yet)")
    assert d.signals["reference"] is None and d.signals["improvement"] is None


def test_equal_to_the_champion_continues_without_promotion() -> None:
    d = judge(gate(), summary(2, 0.84), [summary(1, 0.84, promoted=True)])
    assert not d.promoted and d.champion_round == 1
    assert "exact_match 0.84, the same as the champion (round 1, 0.84)" in d.reason


def test_below_the_base_model_within_tolerance_keeps_the_base_model_best() -> None:
    d = judge(gate(), summary(1, 0.69), baseline={"exact_match": 0.70})
    assert d.action is Action.CONTINUE and not d.promoted and d.champion_round is None
    assert d.reason.endswith(
        "round 2 continues from its checkpoint while the base model stays the best so far."
    )


def test_history_after_the_candidate_is_ignored() -> None:
    # A retried decide task reads the ledger back, which may already hold this round.
    history = [summary(1, 0.84, promoted=True), summary(2, 0.99, promoted=True)]
    d = judge(gate(), summary(2, 0.87), history)
    assert d.champion_round == 2 and d.signals["previous_champion_round"] == 1


# --- missing metrics ----------------------------------------------------------------------------


def test_missing_primary_metric_names_it_and_what_was_reported() -> None:
    with pytest.raises(GateError) as info:
        judge(gate(), summary(3, None, metrics={"f1": 0.5, "rougeL": 0.4}))
    message = str(info.value)
    assert "gate.primary_metric" in message
    assert "round 3's evaluation reported no 'exact_match' metric" in message
    assert "(it reported: f1, rougeL)" in message


def test_missing_target_metrics_are_all_named() -> None:
    g = gate(targets={"exact_match": 0.9, "f1": 0.8, "bleu": 0.3})
    with pytest.raises(GateError) as info:
        judge(g, summary(1, 0.5))
    assert [p.path for p in info.value.problems] == ["gate.targets.f1", "gate.targets.bleu"]


def test_a_champion_without_the_primary_metric_is_a_clear_error() -> None:
    history = [summary(1, None, metrics={"accuracy": 0.8}, promoted=True)]
    with pytest.raises(GateError, match=r"the champion \(round 1\) has no 'exact_match'"):
        judge(gate(), summary(2, 0.9), history)


# --- stop rules ---------------------------------------------------------------------------------


def test_max_rounds_stops_and_says_which_targets_are_unmet() -> None:
    g = gate(max_rounds=3, targets={"exact_match": 0.95})
    history = [summary(1, 0.8, promoted=True), summary(2, 0.85, promoted=True)]
    d = judge(g, summary(3, 0.88), history)
    assert d.action is Action.STOP and d.promoted and d.champion_round == 3
    assert d.next_round is None and d.next_stages is None
    assert d.reason.endswith(
        "the campaign stops with round 3 as the champion: max_rounds 3 reached with targets "
        "unmet (exact_match 0.88 < 0.95)."
    )


def test_max_rounds_after_a_regression_keeps_the_champion() -> None:
    d = judge(gate(max_rounds=2), summary(2, 0.5), [summary(1, 0.8, promoted=True)])
    assert d.action is Action.STOP and not d.promoted and d.champion_round == 1
    assert d.reason.startswith("Round 2 regressed")


def test_budget_stops_before_a_round_that_would_exceed_it() -> None:
    g = gate(budget_gpu_hours=35)
    history = [
        summary(1, 0.7, promoted=True, gpu_hours=10),
        summary(2, 0.8, promoted=True, gpu_hours=10),
    ]
    d = judge(g, summary(3, 0.9, gpu_hours=10.2), history)
    assert d.action is Action.STOP and d.promoted
    assert d.signals["gpu_hours_spent"] == 30.2
    assert d.signals["gpu_hours_next_estimate"] == pytest.approx(10.0667, abs=1e-4)
    assert d.reason.endswith(
        "the campaign stops with round 3 as the champion: 30.2 GPU-hours spent and a next "
        "round of about 10.07 would pass the 35 GPU-hour budget."
    )
    roomy = judge(gate(budget_gpu_hours=45), summary(3, 0.9, gpu_hours=10.2), history)
    assert roomy.action is Action.CONTINUE


def test_budget_estimate_uses_rounds_with_the_same_stages() -> None:
    # SFT+RFT rounds cost 30 GPU-hours, SFT-only rounds 2: the next SFT-only round costs ~2.
    stages = (SFT, RFT)
    history = [
        summary(1, 0.7, stages=("sft", "rft"), promoted=True, gpu_hours=30),
        summary(2, 0.8, stages=("sft",), promoted=True, gpu_hours=2),
    ]
    g = gate(budget_gpu_hours=36)
    d = judge(g, summary(3, 0.9, stages=("sft",), gpu_hours=2), history, stages=stages)
    assert d.action is Action.CONTINUE
    assert d.signals["gpu_hours_next_estimate"] == 2


def test_without_billing_data_the_budget_does_not_stop() -> None:
    d = judge(gate(budget_gpu_hours=1), summary(2, 0.9), [summary(1, 0.8, promoted=True)])
    assert d.action is Action.CONTINUE
    assert d.signals["gpu_hours_next_estimate"] == 0


# --- plateau ------------------------------------------------------------------------------------


def flat_sft_rounds() -> list[RoundSummary]:
    return [summary(1, 0.800, promoted=True), summary(2, 0.802, promoted=True)]


def test_plateau_switches_sft_rounds_to_the_rft_stage() -> None:
    g = gate(min_improvement=0.005, plateau_rounds=2)
    d = judge(g, summary(3, 0.803), flat_sft_rounds(), stages=(SFT, RFT))
    assert d.action is Action.CONTINUE and d.promoted
    assert d.next_stages == ["rft"] and not d.rollback
    assert d.next_base == "s3://out/rounds/0003/last"
    assert d.signals["plateau_count"] == 2
    assert d.reason.endswith(
        "exact_match improved by less than 0.005 for 2 rounds in a row, so round 4 switches "
        "from SFT to RFT (stages: rft), starting from its checkpoint."
    )


def test_plateau_with_no_other_method_stops() -> None:
    g = gate(min_improvement=0.005, plateau_rounds=2)
    history = [summary(1, 0.800, stages=("sft", "rft"), promoted=True)]
    history.append(summary(2, 0.802, stages=("sft", "rft"), promoted=True))
    d = judge(g, summary(3, 0.803, stages=("sft", "rft")), history, stages=(SFT, RFT))
    assert d.action is Action.STOP and d.promoted and d.champion_round == 3
    assert d.reason.endswith(
        "the campaign stops with round 3 as the champion: exact_match improved by less than "
        "0.005 for 2 rounds in a row and the campaign has no stage with another method to "
        "switch to."
    )


def test_a_method_that_plateaued_before_is_not_tried_again() -> None:
    g = gate(min_improvement=0.005, plateau_rounds=1)
    history = [summary(1, 0.80, promoted=True), summary(2, 0.81, stages=("rft",), promoted=True)]
    d = judge(g, summary(3, 0.811, stages=("rft",)), history, stages=(SFT, RFT))
    assert d.action is Action.STOP
    assert "SFT plateaued earlier in the campaign" in d.reason


def test_a_lineage_that_began_with_rft_cannot_switch_to_sft() -> None:
    g = gate(min_improvement=0.005, plateau_rounds=2)
    history = [summary(1, 0.5, stages=("rft",), promoted=True)]
    history.append(summary(2, 0.501, stages=("rft",), promoted=True))
    d = judge(g, summary(3, 0.502, stages=("rft",)), history, stages=(SFT, RFT))
    assert d.action is Action.STOP
    assert "a lineage that began with RFT (LoRA) may continue only with RFT (LoRA)" in d.reason


def test_lora_lineage_cannot_switch_to_full_rank_cpt() -> None:
    g = gate(min_improvement=0.005, plateau_rounds=1)
    d = judge(g, summary(2, 0.801), [summary(1, 0.8, promoted=True)], stages=(CPT, SFT))
    assert d.action is Action.STOP
    assert "LoRA and full-rank checkpoints cannot be mixed" in d.reason


def test_switch_prefers_the_method_after_the_current_one() -> None:
    g = gate(min_improvement=0.005, plateau_rounds=1)
    history = [summary(1, 0.8, promoted=True)]
    d = judge(
        g,
        summary(2, 0.801),
        history,
        stages=(CPT, SFT, RFT),
        technique=Technique.FULL,
        base_lineage=[Method.CPT],
    )
    assert d.next_stages == ["rft"]


def test_switch_wraps_round_to_an_earlier_method_the_lineage_allows() -> None:
    # The campaign starts from an SFT checkpoint and runs RFT rounds; SFT may follow it.
    g = gate(min_improvement=0.005, plateau_rounds=1)
    history = [summary(1, 0.8, stages=("rft",), promoted=True)]
    d = judge(
        g, summary(2, 0.801, stages=("rft",)), history, stages=(SFT, RFT), base_lineage=[Method.SFT]
    )
    assert d.action is Action.CONTINUE and d.next_stages == ["sft"]
    assert "switches from RFT to SFT (stages: sft)" in d.reason


def test_regressions_count_towards_a_plateau_and_a_switch_restarts_from_the_champion() -> None:
    g = gate(min_improvement=0.005, plateau_rounds=2)
    history = [
        summary(1, 0.80, promoted=True),
        summary(2, 0.70, action=Action.ROLLBACK),
    ]
    d = judge(g, summary(3, 0.70), history, stages=(SFT, RFT))
    assert d.action is Action.ROLLBACK
    assert d.next_base == "s3://out/rounds/0001/last" and d.next_base_round == 1
    assert d.next_stages == ["rft"]
    assert not d.rollback  # a new technique starts with its own settings
    assert "starting from round 1's checkpoint" in d.reason


def test_an_improving_round_breaks_the_plateau_streak() -> None:
    g = gate(min_improvement=0.005, plateau_rounds=2)
    history = [summary(1, 0.80, promoted=True), summary(2, 0.85, promoted=True)]
    d = judge(g, summary(3, 0.851), history, stages=(SFT, RFT))
    assert d.signals["plateau_count"] == 1 and d.next_stages == ["sft"]


def test_a_stage_change_starts_a_new_plateau_streak() -> None:
    g = gate(min_improvement=0.005, plateau_rounds=2)
    history = [summary(1, 0.80, promoted=True), summary(2, 0.801, stages=("rft",), promoted=True)]
    d = judge(g, summary(3, 0.802, stages=("rft",)), history, stages=(SFT, RFT))
    assert d.signals["plateau_count"] == 2  # rounds 2 and 3; round 1 ran other stages
    history[1] = summary(2, 0.801, stages=("sft",), promoted=True)
    d = judge(g, summary(3, 0.802, stages=("rft",)), history, stages=(SFT, RFT))
    assert d.signals["plateau_count"] == 1


def test_rounds_without_a_reference_do_not_count_as_plateau() -> None:
    g = gate(min_improvement=0.005, plateau_rounds=1)
    d = judge(g, summary(1, 0.1), stages=(SFT, RFT))
    assert d.signals["plateau_count"] == 0 and d.action is Action.CONTINUE


# --- SFT before RFT -----------------------------------------------------------------------------


def test_rft_readiness() -> None:
    assert rft_readiness(None) is None
    assert rft_readiness(0.05) is None
    assert rft_readiness(0.5) is None
    advice = rft_readiness(0.02)
    assert advice is not None
    assert "only 2.0% of the starting model's rewards are positive" in advice
    assert "train with SFT first" in advice
    for bad in (-0.1, 1.5, math.nan):
        with pytest.raises(ValueError, match=r"within 0\.\.1"):
            rft_readiness(bad)


def test_next_rft_round_on_an_untrained_lineage_recommends_sft_first() -> None:
    history = [summary(1, 0.02, stages=("rft",), promoted=True)]
    d = judge(
        gate(),
        summary(2, 0.03, stages=("rft",)),
        history,
        stages=(SFT, RFT),
        baseline_positive_reward_fraction=0.01,
    )
    assert d.action is Action.CONTINUE
    assert d.recommendation.startswith("RFT is unlikely to learn: only 1.0%")
    assert d.reason.endswith(f"; {d.recommendation}.")


def test_no_sft_advice_once_the_lineage_had_sft_or_rft_is_not_next() -> None:
    kw = {"stages": (SFT, RFT), "baseline_positive_reward_fraction": 0.01}
    after_sft = judge(
        gate(), summary(2, 0.3, stages=("sft", "rft")), [summary(1, 0.2, promoted=True)], **kw
    )
    assert after_sft.recommendation == ""
    sft_only = judge(gate(), summary(1, 0.3), **kw)
    assert sft_only.recommendation == ""
    unmeasured = judge(gate(), summary(1, 0.3, stages=("rft",)), stages=(SFT, RFT))
    assert unmeasured.recommendation == ""


def test_recorded_lineage_wins_over_the_rounds_own_methods() -> None:
    # Round 1 ran RFT only, but its checkpoint says the lineage began with SFT (an SFT base).
    candidate = summary(1, 0.3, stages=("rft",), lineage=[Method.SFT, Method.RFT])
    d = judge(gate(), candidate, stages=(SFT, RFT), baseline_positive_reward_fraction=0.01)
    assert d.recommendation == ""


# --- shapes -------------------------------------------------------------------------------------


def test_decision_and_summary_round_trip_through_json() -> None:
    history = [summary(1, 0.84, promoted=True, gpu_hours=3.5)]
    d = judge(gate(budget_gpu_hours=100), summary(2, 0.81), history)
    assert Decision.model_validate_json(d.model_dump_json()) == d
    assert isinstance(Decision.model_validate_json(d.model_dump_json()).signals["max_rounds"], int)
    s = history[0]
    assert RoundSummary.model_validate_json(s.model_dump_json()) == s


def test_stages_default_to_the_whole_campaign() -> None:
    candidate = RoundSummary(round=1, metrics={"exact_match": 0.5}, checkpoint="out/1")
    d = judge(gate(), candidate, stages=(SFT, RFT))
    assert d.next_stages == ["sft", "rft"]


# --- is the campaign over? ------------------------------------------------------------------


def ended(n: int, action: Action, max_rounds: int, reason: str = "") -> Decision:
    return Decision(
        round=n,
        action=action,
        reason=reason or f"Round {n}: {action.value}.",
        promoted=True,
        champion_round=n,
        signals={"max_rounds": max_rounds},
    )


def test_a_campaign_goes_on_after_continue_and_rollback() -> None:
    history = [summary(1, 0.5, promoted=True)]
    for action in (Action.CONTINUE, Action.ROLLBACK):
        assert campaign_over(gate(max_rounds=1), history, ended(1, action, 1)) is None
    assert campaign_over(gate(), [], None) is None


def test_finish_holds_while_the_champion_meets_todays_targets() -> None:
    history = [summary(1, 0.5, promoted=True), summary(2, 0.93, promoted=True)]
    latest = ended(2, Action.FINISH, 5)
    assert campaign_over(gate(targets={"exact_match": 0.9}), history, latest) == (
        "round 2 met every target (exact_match 0.93)"
    )
    assert campaign_over(gate(targets={"exact_match": 0.95}), history, latest) is None
    lower = {"exact_match": Target(at_most=0.95)}
    assert campaign_over(gate(targets=lower), history, latest) is not None


def test_max_rounds_holds_until_it_is_raised_and_other_stops_hold() -> None:
    history = [summary(1, 0.5, promoted=True), summary(2, 0.6, promoted=True)]
    at_max = ended(2, Action.STOP, 2)
    assert campaign_over(gate(max_rounds=2), history, at_max) == "round 2 reached max_rounds 2"
    assert campaign_over(gate(max_rounds=4), history, at_max) is None
    plateau = ended(2, Action.STOP, 5, reason="The campaign stops: a plateau.")
    assert campaign_over(gate(max_rounds=9), history, plateau) == "The campaign stops: a plateau."
