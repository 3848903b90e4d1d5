"""The gate: finish, rollback, continue, plateau switch or stop, budget, SFT first, failures."""

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
    decide_failed,
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


def test_plateau_of_every_stage_switches_to_the_last_method_alone() -> None:
    g = gate(min_improvement=0.005, plateau_rounds=2)
    history = [summary(1, 0.800, stages=("sft", "rft"), promoted=True)]
    history.append(summary(2, 0.802, stages=("sft", "rft"), promoted=True))
    d = judge(g, summary(3, 0.803, stages=("sft", "rft")), history, stages=(SFT, RFT))
    assert d.action is Action.CONTINUE and d.promoted and d.champion_round == 3
    assert d.next_stages == ["rft"] and d.next_base == "s3://out/rounds/0003/last"
    assert not d.rollback
    assert d.reason.endswith(
        "exact_match improved by less than 0.005 for 2 rounds in a row, so round 4 switches "
        "from SFT + RFT to RFT (stages: rft), starting from its checkpoint."
    )


def test_plateau_with_no_other_method_stops() -> None:
    g = gate(min_improvement=0.005, plateau_rounds=2)
    sft_b = Stage(name="sft-b", method="sft", recipe="sft.yaml", datasets=SFT.datasets)
    stages = ("sft", "sft-b")
    history = [summary(1, 0.800, stages=stages, promoted=True)]
    history.append(summary(2, 0.802, stages=stages, promoted=True))
    d = judge(g, summary(3, 0.803, stages=stages), history, stages=(SFT, sft_b))
    assert d.action is Action.STOP and d.promoted and d.champion_round == 3
    assert d.next_stages is None
    assert d.reason.endswith(
        "the campaign stops with round 3 as the champion: exact_match improved by less than "
        "0.005 for 2 rounds in a row and the campaign has no stage with another method to "
        "switch to."
    )


def test_a_method_that_plateaued_before_is_not_tried_again() -> None:
    # Round 1's SFT gained 0.001 over the base model (a plateau of 1 round), round 2 switched
    # to RFT, which plateaus in round 3: SFT is not tried again.
    g = gate(min_improvement=0.005, plateau_rounds=1)
    history = [summary(1, 0.80, promoted=True), summary(2, 0.81, stages=("rft",), promoted=True)]
    candidate = summary(3, 0.811, stages=("rft",), lineage=[Method.SFT, Method.RFT, Method.RFT])
    d = judge(g, candidate, history, stages=(SFT, RFT), baseline={"exact_match": 0.799})
    assert d.action is Action.STOP
    assert d.reason.endswith(
        "exact_match improved by less than 0.005 for 1 round in a row and no other stages "
        "are left to switch to: SFT plateaued earlier in the campaign."
    )


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


def walk(
    g: Gate, values: list[float], *, stages=(SFT, RFT), **kw
) -> tuple[list[list[str]], list[Decision]]:
    """Rounds fed one after another as the round DAG does: each runs the stages the decision
    before it named, from the checkpoint it named. Returns the stages each round ran and the
    decisions."""
    kw.setdefault("technique", Technique.LORA)
    kw.setdefault("baseline", {"exact_match": values[0] - 0.001})
    history: list[RoundSummary] = []
    ran: list[list[str]] = []
    decisions: list[Decision] = []
    names = [s.name for s in stages]
    methods = {s.name: s.method for s in stages}
    lineage: list[Method] = []
    for n, value in enumerate(values, start=1):
        lineage = [*lineage, *(methods[name] for name in names)]
        candidate = summary(n, value, stages=names, lineage=lineage)
        d = decide(g, candidate, history, stages=list(stages), **kw)
        ran.append(names)
        decisions.append(d)
        history.append(candidate.model_copy(update={"promoted": d.promoted, "action": d.action}))
        if d.next_stages is None:
            break
        names = d.next_stages
    return ran, decisions


def test_technique_switching_runs_every_stage_then_rft_then_sft_then_stops() -> None:
    g = gate(min_improvement=0.005, plateau_rounds=2, max_rounds=10)
    values = [0.800, 0.801, 0.802, 0.803, 0.804, 0.805, 0.9]
    ran, decisions = walk(g, values)
    assert ran == [["sft", "rft"]] * 2 + [["rft"]] * 2 + [["sft"]] * 2
    assert [d.action for d in decisions] == [Action.CONTINUE] * 5 + [Action.STOP]
    assert "so round 3 switches from SFT + RFT to RFT (stages: rft), starting from its " in (
        decisions[1].reason
    )
    assert "so round 5 switches from RFT to SFT (stages: sft), starting from its " in (
        decisions[3].reason
    )
    assert decisions[-1].reason.endswith(
        "the campaign stops with round 6 as the champion: exact_match improved by less than "
        "0.005 for 2 rounds in a row and no other stages are left to switch to: RFT "
        "plateaued earlier in the campaign."
    )


def test_a_three_method_campaign_switches_in_the_campaigns_order() -> None:
    # Every stage, then the last method alone, then the others wrapping round: CPT, then SFT.
    g = gate(min_improvement=0.005, plateau_rounds=1, max_rounds=10)
    values = [0.800, 0.801, 0.802, 0.803, 0.804]
    ran, decisions = walk(g, values, stages=(CPT, SFT, RFT), technique=Technique.FULL)
    assert ran == [["cpt", "sft", "rft"], ["rft"], ["cpt"], ["sft"]]
    assert decisions[-1].action is Action.STOP
    assert "RFT plateaued earlier in the campaign" in decisions[-1].reason


def test_the_switch_skips_a_group_the_matrix_refuses_and_takes_the_next() -> None:
    # A LoRA campaign cannot run its full-rank CPT stage after a LoRA round: SFT comes next.
    g = gate(min_improvement=0.005, plateau_rounds=1)
    candidate = summary(2, 0.801, stages=("rft",), lineage=[Method.SFT, Method.RFT, Method.RFT])
    d = judge(g, candidate, [summary(1, 0.8, promoted=True)], stages=(CPT, SFT, RFT))
    assert d.next_stages == ["sft"]
    assert "so round 3 switches from RFT to SFT (stages: sft)" in d.reason


def test_a_stage_set_whose_every_group_is_refused_stops_naming_each_reason() -> None:
    g = gate(min_improvement=0.005, plateau_rounds=1)
    candidate = summary(2, 0.796, stages=("rft",), lineage=[Method.RFT, Method.RFT])
    history = [summary(1, 0.795, stages=("rft",), promoted=True)]
    d = judge(g, candidate, history, stages=(CPT, SFT, RFT), baseline={"exact_match": 0.79})
    assert d.action is Action.STOP and d.next_stages is None
    assert "no other stages are left to switch to: " in d.reason
    assert "LoRA and full-rank checkpoints cannot be mixed" in d.reason
    assert "a lineage that began with RFT (LoRA) may continue only with RFT (LoRA)" in d.reason


def test_on_plateau_stop_stops_even_with_a_method_left() -> None:
    g = gate(min_improvement=0.005, plateau_rounds=2, on_plateau="stop")
    d = judge(g, summary(3, 0.803), flat_sft_rounds(), stages=(SFT, RFT))
    assert d.action is Action.STOP and d.next_stages is None
    assert d.reason.endswith(
        "the campaign stops with round 3 as the champion: exact_match improved by less than "
        "0.005 for 2 rounds in a row and gate.on_plateau is stop."
    )


def test_a_stage_set_that_never_plateaued_may_be_switched_to() -> None:
    # Round 1 ran SFT alone by hand and improved; the rounds after it ran every stage. After
    # their plateau RFT alone comes first, and after RFT's plateau SFT alone is still allowed.
    g = gate(min_improvement=0.005, plateau_rounds=1)
    history = [
        summary(1, 0.9, promoted=True),
        summary(2, 0.901, stages=("sft", "rft"), promoted=True),
        summary(3, 0.902, stages=("rft",), promoted=True),
    ]
    candidate = summary(4, 0.9025, stages=("rft",), lineage=[Method.SFT, Method.RFT])
    d = judge(g, candidate, history, stages=(SFT, RFT), baseline={"exact_match": 0.5})
    assert d.action is Action.CONTINUE and d.next_stages == ["sft"]


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


LOW = {"baseline_positive_reward_fraction": 0.01, "low_positive_rewards": "sft_only"}
LOW_TEXT = (
    "only 1.0% of the starting model's rewards are positive (RFT needs at least 5% to learn) "
    "and reward_probe.low_positive_rewards is sft_only"
)


def test_after_the_sft_round_every_stage_runs_again() -> None:
    d = judge(gate(), summary(1, 0.4, lineage=[Method.SFT]), stages=(SFT, RFT), **LOW)
    assert d.action is Action.CONTINUE and d.next_stages == ["sft", "rft"]
    assert d.reason.endswith(
        "round 1 trained with SFT first (reward_probe.low_positive_rewards: sft_only), so "
        "round 2 switches from SFT to SFT + RFT (stages: sft, rft), starting from its "
        "checkpoint."
    )
    assert d.recommendation == ""
    # With "recommend" the rounds keep the stages they ran.
    kept = judge(gate(), summary(1, 0.4), stages=(SFT, RFT), baseline_positive_reward_fraction=0.01)
    assert kept.next_stages == ["sft"]


def test_an_sft_round_on_a_trained_lineage_is_no_sft_first_round() -> None:
    # Round 5 ran SFT alone after a plateau, from a lineage that had SFT: it keeps its stages.
    candidate = summary(5, 0.81, lineage=[Method.SFT, Method.RFT, Method.SFT])
    history = [summary(4, 0.8, stages=("rft",), promoted=True)]
    d = judge(gate(max_rounds=9), candidate, history, stages=(SFT, RFT), **LOW)
    assert d.next_stages == ["sft"] and "switches" not in d.reason


def test_a_rollback_to_the_base_model_runs_only_sft_again() -> None:
    # The first round ran every stage and regressed: the base model had no SFT, so under
    # sft_only the restart trains SFT alone first.
    candidate = summary(1, 0.3, stages=("sft", "rft"), lineage=[Method.SFT, Method.RFT])
    d = judge(gate(), candidate, stages=(SFT, RFT), baseline={"exact_match": 0.5}, **LOW)
    assert d.action is Action.ROLLBACK and d.rollback
    assert d.next_stages == ["sft"] and d.next_base is None
    assert d.reason.endswith(
        f"{LOW_TEXT}, so round 2 switches from SFT + RFT to SFT (stages: sft), starting from "
        "the base model with half the learning rate."
    )
    # The SFT round itself regressing: the same stages again, saying why.
    sft = summary(1, 0.3, lineage=[Method.SFT])
    d = judge(gate(), sft, stages=(SFT, RFT), baseline={"exact_match": 0.5}, **LOW)
    assert d.next_stages == ["sft"]
    assert d.reason.endswith(
        "round 2 restarts from the base model with half the learning rate; round 2 runs only "
        f"SFT (stages: sft) because {LOW_TEXT}."
    )


def test_sft_only_without_an_sft_stage_recommends() -> None:
    d = judge(gate(), summary(1, 0.3, stages=("rft",)), stages=(RFT,), **LOW)
    assert d.next_stages == ["rft"]
    assert d.recommendation.startswith("RFT is unlikely to learn: only 1.0%")


def test_the_switch_does_not_start_rft_on_an_untrained_model_under_sft_only() -> None:
    # SFT rounds keep regressing below the base model (each restarts from it) and plateau:
    # switching to RFT would start it from the base model, which sft_only forbids.
    g = gate(min_improvement=0.005, plateau_rounds=2)
    history = [summary(1, 0.40, action=Action.ROLLBACK)]
    candidate = summary(2, 0.40, lineage=[Method.SFT])
    d = judge(g, candidate, history, stages=(SFT, RFT), baseline={"exact_match": 0.5}, **LOW)
    assert d.action is Action.STOP
    assert d.reason.endswith(
        "no other stages are left to switch to: RFT would train a model no SFT or CPT has "
        f"touched although {LOW_TEXT}."
    )


# --- failed rounds ------------------------------------------------------------------------------

WHY = "monitoring stopped stage rft at step 120: reward-function errors stayed over 20%"


def fail(g: Gate, n: int, history=(), *, stop=False, **kw) -> Decision:
    kw.setdefault("technique", Technique.LORA)
    kw.setdefault("stages", [SFT, RFT])
    return decide_failed(g, n, list(history), why=WHY, stop_campaign=stop, **kw)


def champion_history() -> list[RoundSummary]:
    return [
        summary(1, 0.80, stages=("sft", "rft"), promoted=True, gpu_hours=4),
        summary(2, 0.85, stages=("sft", "rft"), promoted=True, gpu_hours=4),
    ]


def test_a_failed_round_whose_monitor_stops_the_campaign_keeps_the_champion() -> None:
    d = fail(gate(), 3, champion_history(), stop=True)
    assert d.action is Action.STOP and not d.promoted and d.champion_round == 2
    assert d.next_round is None and d.next_stages is None
    assert d.reason == f"Round 3 failed: {WHY}; the campaign stops with round 2 as the champion."
    assert d.signals["failed"] == 1
    first = fail(gate(), 1, stop=True)
    assert first.champion_round is None
    assert first.reason.endswith("the campaign stops with the base model as the champion.")


def test_a_failed_round_rolls_back_to_the_champion_with_the_same_stages() -> None:
    d = fail(gate(), 3, champion_history(), ran=["rft"], gpu_hours=1.5)
    assert d.action is Action.ROLLBACK and not d.promoted and d.champion_round == 2
    assert d.next_round == 4 and d.next_base == "s3://out/rounds/0002/last"
    assert d.next_base_round == 2 and d.rollback and d.next_stages == ["rft"]
    assert d.reason == (
        f"Round 3 failed: {WHY}; round 4 restarts from round 2's checkpoint with half the "
        "learning rate."
    )
    assert d.signals["failed"] == 1 and d.signals["gpu_hours_spent"] == 9.5
    assert d.signals["reference"] == "champion" and d.signals["reference_value"] == 0.85
    assert Decision.model_validate_json(d.model_dump_json()) == d


def test_a_failed_first_round_restarts_from_the_base_model() -> None:
    d = fail(gate(), 1, baseline={"exact_match": 0.5})
    assert d.action is Action.ROLLBACK and d.next_base is None and d.next_base_round is None
    assert d.next_stages == ["sft", "rft"]
    assert d.reason.endswith("round 2 restarts from the base model with half the learning rate.")
    assert d.signals["reference"] == "baseline"


def test_a_failed_last_round_stops_at_max_rounds() -> None:
    d = fail(gate(max_rounds=3), 3, champion_history())
    assert d.action is Action.STOP and d.champion_round == 2
    assert d.reason == (
        f"Round 3 failed: {WHY}; the campaign stops with round 2 as the champion: max_rounds 3 "
        "reached."
    )


def test_a_failed_round_stops_before_the_budget_is_passed() -> None:
    # 8 GPU-hours in the two rounds that finished, 3 in the failed one: the next round is
    # estimated from the finished ones (4), and 11 + 4 passes 14.
    d = fail(gate(budget_gpu_hours=14), 3, champion_history(), gpu_hours=3)
    assert d.action is Action.STOP
    assert d.signals["gpu_hours_next_estimate"] == 4
    assert d.reason.endswith(
        "the campaign stops with round 2 as the champion: 11 GPU-hours spent and a next round "
        "of about 4 would pass the 14 GPU-hour budget."
    )
    assert fail(gate(budget_gpu_hours=15), 3, champion_history(), gpu_hours=3).action is (
        Action.ROLLBACK
    )


def failed_summary(n: int, **extra) -> RoundSummary:
    return summary(n, None, stages=("sft", "rft"), failed=True, action=Action.ROLLBACK, **extra)


def test_rounds_after_a_failed_one_skip_it() -> None:
    # Round 2 failed: round 3 is compared with round 1 (the champion), the plateau streak runs
    # through the failed round, and the next round's cost comes from the rounds that finished.
    g = gate(min_improvement=0.005, plateau_rounds=2, budget_gpu_hours=100)
    history = [
        summary(1, 0.800, stages=("sft", "rft"), promoted=True, gpu_hours=10),
        failed_summary(2, gpu_hours=1),
    ]
    candidate = summary(3, 0.801, stages=("sft", "rft"), gpu_hours=10)
    d = judge(g, candidate, history, stages=(SFT, RFT), baseline={"exact_match": 0.799})
    assert "+0.001 over the champion (round 1, 0.8)" in d.reason
    assert d.signals["plateau_count"] == 2 and d.next_stages == ["rft"]
    assert d.signals["gpu_hours_spent"] == 21 and d.signals["gpu_hours_next_estimate"] == 10
    assert d.signals["delta_vs_previous"] is None


def test_a_failed_round_that_was_marked_promoted_is_never_the_champion() -> None:
    history = [summary(1, 0.8, promoted=True), failed_summary(2, promoted=True)]
    d = judge(gate(), summary(3, 0.81), history)
    assert d.signals["previous_champion_round"] == 1


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


def test_a_campaign_stopped_by_a_failed_round_stays_over() -> None:
    history = [summary(1, 0.5, promoted=True), failed_summary(2)]
    stopped = fail(gate(max_rounds=5), 2, history[:1], stop=True)
    assert campaign_over(gate(max_rounds=5), history, stopped) == stopped.reason
    # A failed round counts towards max_rounds, until max_rounds is raised.
    at_max = fail(gate(max_rounds=2), 2, history[:1])
    assert campaign_over(gate(max_rounds=2), history, at_max) == "round 2 reached max_rounds 2"
    assert campaign_over(gate(max_rounds=3), history, at_max) is None
    # A failed round that rolls back leaves the campaign going.
    rolled_back = fail(gate(max_rounds=5), 2, history[:1])
    assert campaign_over(gate(max_rounds=5), history, rolled_back) is None


def test_targets_are_judged_on_the_champion_not_a_later_failed_round() -> None:
    history = [summary(1, 0.93, promoted=True), failed_summary(2)]
    latest = ended(1, Action.FINISH, 5)
    assert campaign_over(gate(targets={"exact_match": 0.9}), history, latest) == (
        "round 1 met every target (exact_match 0.93)"
    )


def test_a_failed_summary_round_trips_through_json() -> None:
    s = failed_summary(2, gpu_hours=0.5)
    assert RoundSummary.model_validate_json(s.model_dump_json()) == s and s.failed
