"""The training detectors on synthetic curves: rising, flat, noisy, NaN, spikes, error runs.

Each detector is checked where it fires, where it must not, exactly at its threshold, with too
few points and with its policy off; then properties over generated curves: a curve that keeps
rising never plateaus, what a live prefix proves stays proven on the full curve, and `detect`
is deterministic and never raises, whatever the values and lengths.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tuneloop.config.monitoring import Monitoring
from tuneloop.recipes.catalog import Method
from tuneloop.rounds.findings import Finding, failing, stops_campaign
from tuneloop.rounds.monitoring import detect, summary

Points = list[tuple[int, float]]
DETECTORS = {"plateau", "overfitting", "instability", "reward_errors", "loss_divergence"}
PROPERTIES = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def curve(values: list[float], start: int = 1, every: int = 1) -> Points:
    return [(start + index * every, value) for index, value in enumerate(values)]


def monitoring(**sections: dict[str, Any]) -> Monitoring:
    return Monitoring.model_validate(sections)


def only(findings: list[Finding], detector: str) -> list[Finding]:
    return [finding for finding in findings if finding.detector == detector]


def rft(
    series: dict[str, Points], watch: Monitoring, final: bool = True, **kw: Any
) -> list[Finding]:
    return detect(series, watch, stage="rft", method=Method.RFT, final=final, **kw)


def sft(series: dict[str, Points], watch: Monitoring, final: bool = True) -> list[Finding]:
    return detect(series, watch, stage="sft", method=Method.SFT, final=final)


# --- plateau -----------------------------------------------------------------------------------

PLATEAU = monitoring(plateau={"window": 2, "min_gain": 0.5})


def test_a_rising_reward_is_no_plateau() -> None:
    assert rft({"reward_mean": curve([0.0, 0.5, 1.0, 1.5, 2.0, 2.5])}, PLATEAU) == []


def test_a_flat_reward_plateaus_at_the_last_step() -> None:
    [finding] = rft({"reward_mean": curve([0.1, 0.4, 0.5, 0.5, 0.5, 0.5])}, PLATEAU)
    assert (finding.detector, finding.policy, finding.stage) == ("plateau", "warn", "rft")
    assert (finding.step, finding.series) == (6, "reward_mean")
    assert "+0" in finding.message and "steps 3-4" in finding.message
    assert "steps 5-6" in finding.message and "min_gain 0.5" in finding.message
    assert "gate.on_plateau" in finding.fix


def test_a_gain_of_exactly_min_gain_is_no_plateau() -> None:
    assert rft({"reward_mean": curve([0.0, 0.0, 0.5, 0.5])}, PLATEAU) == []
    [finding] = rft({"reward_mean": curve([0.0, 0.0, 0.25, 0.75 - 2**-10])}, PLATEAU)
    assert finding.detector == "plateau"


def test_a_plateau_needs_two_windows_of_points() -> None:
    assert rft({"reward_mean": curve([0.5, 0.5, 0.5])}, PLATEAU) == []
    assert rft({"reward_mean": curve([0.5, 0.5, 0.5])}, PLATEAU, final=False) == []


def test_a_plateau_reads_finite_rewards_only() -> None:
    values = [0.5, math.nan, 0.5, math.inf, 0.5, 0.5]
    [finding] = rft({"reward_mean": curve(values)}, PLATEAU)
    assert finding.step == 6 and "nan" not in finding.message


def test_a_falling_reward_plateaus_and_the_message_says_it_fell() -> None:
    [finding] = rft({"reward_mean": curve([0.9, 0.9, 0.5, 0.5])}, PLATEAU)
    assert "-0.4" in finding.message


def test_plateau_is_judged_live_on_the_prefix() -> None:
    flat = {"reward_mean": curve([0.5] * 4)}
    assert [f.detector for f in rft(flat, PLATEAU, final=False)] == ["plateau"]


def test_plateau_policy_off_and_other_methods() -> None:
    flat = {"reward_mean": curve([0.5] * 8)}
    assert rft(flat, monitoring(plateau={"window": 2, "policy": "off"})) == []
    assert sft(flat, PLATEAU) == []
    [finding] = rft(flat, monitoring(plateau={"window": 2, "policy": "stop_campaign"}))
    assert finding.fails and stops_campaign([finding])


# --- overfitting -------------------------------------------------------------------------------

OVERFITTING = monitoring(overfitting={"window": 3, "min_drop": 0.25})


def test_rft_training_up_while_validation_down_is_overfitting() -> None:
    series = {
        "reward_mean": curve([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]),
        "val_reward_mean": curve([0.5, 0.75, 0.6, 0.5], start=1, every=3),
    }
    [finding] = rft(series, OVERFITTING)
    assert (finding.detector, finding.series, finding.step) == (
        "overfitting",
        "val_reward_mean",
        10,
    )
    assert "fell from 0.75 (step 4) to 0.5 (step 10)" in finding.message
    assert "reward_mean rose" in finding.message and "ent_coeff" in finding.fix


def test_validation_down_with_training_down_is_not_overfitting() -> None:
    series = {
        "reward_mean": curve([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4]),
        "val_reward_mean": curve([0.9, 0.7, 0.5], start=1, every=3),
    }
    assert rft(series, OVERFITTING) == []


def test_validation_must_drop_by_at_least_min_drop() -> None:
    rising = curve([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    exactly = {"reward_mean": rising, "val_reward_mean": curve([0.75, 0.6, 0.5], every=3)}
    less = {"reward_mean": rising, "val_reward_mean": curve([0.75, 0.6, 0.5 + 2**-10], every=3)}
    assert [f.detector for f in rft(exactly, OVERFITTING)] == ["overfitting"]
    assert rft(less, OVERFITTING) == []


def test_overfitting_needs_a_window_of_validation_points() -> None:
    series = {
        "reward_mean": curve([0.1, 0.2, 0.3, 0.4]),
        "val_reward_mean": curve([0.9, 0.1], every=3),
    }
    assert rft(series, OVERFITTING) == []


def test_sft_loss_down_while_validation_loss_up_is_overfitting() -> None:
    train = curve([2.0, 1.8, 1.6, 1.4, 1.2, 1.0, 0.8])
    [finding] = sft({"train_loss": train, "val_loss": curve([1.0, 1.1, 1.5], every=3)}, OVERFITTING)
    assert (finding.series, finding.step) == ("val_loss", 7)
    assert "val_loss rose" in finding.message and "train_loss fell" in finding.message
    assert "max_epochs" in finding.fix
    assert (
        sft({"train_loss": train, "val_loss": curve([1.5, 1.1, 1.0], every=3)}, OVERFITTING) == []
    )


def test_rft_without_validation_uses_the_evaluation_once_the_job_ended() -> None:
    series = {"reward_mean": curve([0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8])}
    [finding] = rft(series, OVERFITTING, evaluation_change=-0.25)
    assert (finding.detector, finding.step, finding.series) == ("overfitting", None, "reward_mean")
    assert "fell 0.25 below its base" in finding.message
    assert rft(series, OVERFITTING, final=False, evaluation_change=-0.25) == []
    assert rft(series, OVERFITTING, evaluation_change=None) == []
    assert rft(series, OVERFITTING, evaluation_change=-0.25 + 2**-10) == []
    assert rft(series, OVERFITTING, evaluation_change=0.1) == []


def test_evaluation_overfitting_needs_the_training_reward_to_rise_by_min_drop() -> None:
    flat = {"reward_mean": curve([0.5, 0.55, 0.5, 0.55, 0.5, 0.55])}
    assert rft(flat, OVERFITTING, evaluation_change=-0.5) == []
    short = {"reward_mean": curve([0.25, 0.5, 1.0])}  # halves of one point each
    [finding] = rft(short, OVERFITTING, evaluation_change=-0.5)
    assert "step 1 against step 3" in finding.message
    assert rft({"reward_mean": curve([0.25])}, OVERFITTING, evaluation_change=-0.5) == []


def test_no_change_is_never_a_drop_even_with_min_drop_zero() -> None:
    watch = monitoring(overfitting={"window": 2, "min_drop": 0.0})
    series = {"reward_mean": curve([0.1, 0.2, 0.3, 0.4])}
    assert rft(series, watch, evaluation_change=0.0) == []
    flat_validation = dict(series, val_reward_mean=curve([0.5, 0.5], every=3))
    assert rft(flat_validation, watch) == []


# --- instability -------------------------------------------------------------------------------

INSTABILITY = monitoring(instability={"window": 3, "factor": 2.0})


def test_growing_reward_std_is_instability() -> None:
    series = {"reward_std": curve([0.1, 0.1, 0.1, 0.15, 0.2, 0.3, 0.3, 0.3])}
    [finding] = rft(series, INSTABILITY)
    assert (finding.detector, finding.series, finding.step) == ("instability", "reward_std", 8)
    assert "3x" in finding.message and "steps 6-8" in finding.message
    assert "learning rate" in finding.fix


def test_reward_std_exactly_factor_times_is_not_instability() -> None:
    assert rft({"reward_std": curve([0.125] * 3 + [0.25] * 3)}, INSTABILITY) == []
    assert rft({"reward_std": curve([0.125] * 3 + [0.25 + 2**-10] * 3)}, INSTABILITY) != []


def test_steady_or_too_short_reward_std_is_not_instability() -> None:
    assert rft({"reward_std": curve([0.2, 0.25, 0.2, 0.25, 0.2, 0.25])}, INSTABILITY) == []
    assert rft({"reward_std": curve([0.1, 0.1, 0.1, 0.9, 0.9])}, INSTABILITY) == []
    # No spread at first: a ratio against zero says nothing.
    assert rft({"reward_std": curve([0.0, 0.0, 0.0, 0.4, 0.4, 0.4])}, INSTABILITY) == []


def test_without_reward_std_a_noisier_reward_mean_is_instability() -> None:
    calm = [0.30, 0.32, 0.30, 0.32]
    wild = [0.3, 0.6, 0.2, 0.7]
    watch = monitoring(instability={"window": 4, "factor": 2.0})
    [finding] = rft({"reward_mean": curve(calm + wild)}, watch)
    assert (finding.series, finding.step) == ("reward_mean", 8)
    assert "spread around its trend" in finding.message


def test_a_steadily_rising_reward_mean_is_not_instability() -> None:
    noise = [0.01, -0.01, 0.02, -0.02]
    values = [0.1 * i + noise[i % 4] for i in range(12)]
    watch = monitoring(instability={"window": 4, "factor": 2.0})
    assert rft({"reward_mean": curve(values)}, watch) == []
    assert rft({"reward_mean": curve([0.1 * i for i in range(12)])}, watch) == []


def test_reward_std_wins_over_the_reward_mean_spread() -> None:
    series = {
        "reward_std": curve([0.2] * 6),
        "reward_mean": curve([0.30, 0.32, 0.30, 0.3, 0.9, 0.1]),
    }
    assert rft(series, INSTABILITY) == []


# --- reward_errors -----------------------------------------------------------------------------

ERRORS = monitoring(reward_errors={"max_rate": 0.25, "for_steps": 3})


def test_an_error_run_fires_at_the_step_that_completes_it() -> None:
    rates = [0.0, 0.5, 0.5, 0.75, 0.5, 0.5]
    [finding] = rft({"reward_error_rate": curve(rates)}, ERRORS, final=False)
    assert (finding.detector, finding.policy, finding.step) == ("reward_errors", "fail_round", 4)
    assert finding.series == "reward_error_rate" and finding.fails
    assert "75.0% of samples at step 4" in finding.message
    assert "3 steps in a row (steps 2-4" in finding.message
    assert "tuneloop reward probe" in finding.fix
    assert "lambda_concurrency_limit" in finding.fix and "15-minute" in finding.fix
    assert failing([finding]) == [finding]


def test_a_rate_at_max_rate_breaks_the_run() -> None:
    rates = [0.5, 0.5, 0.25, 0.5, 0.5, 0.0]
    assert rft({"reward_error_rate": curve(rates)}, ERRORS) == []
    assert rft({"reward_error_rate": curve([0.5, 0.5])}, ERRORS, final=False) == []


def test_a_short_job_fires_only_once_it_ended_and_only_if_every_step_is_above() -> None:
    series = {"reward_error_rate": curve([0.5, 0.75])}
    [finding] = rft(series, ERRORS)
    assert finding.step == 2 and "2 steps in a row" in finding.message
    assert rft(series, ERRORS, final=False) == []
    assert rft({"reward_error_rate": curve([0.5, 0.0])}, ERRORS) == []
    assert rft({"reward_error_rate": []}, ERRORS) == []


def test_the_default_settings_stop_after_fifty_steps_over_twenty_percent() -> None:
    rates = [0.05] * 40 + [0.3] * 60
    [finding] = rft({"reward_error_rate": curve(rates)}, Monitoring(), final=False)
    assert finding.step == 90 and "above 20.0% for 50 steps" in finding.message


def test_slow_reward_calls_point_at_timeouts() -> None:
    series = {
        "reward_error_rate": curve([0.5, 0.5, 0.5]),
        "reward_latency_s": curve([100.0, 850.0, 890.0]),
    }
    [finding] = rft(series, ERRORS)
    assert "up to 890 s, near the 900 s Lambda limit" in finding.message
    series["reward_latency_s"] = curve([1.0, 2.0, 3.0])
    [quick] = rft(series, ERRORS)
    assert "Lambda limit" not in quick.message


def test_reward_errors_do_not_apply_to_sft() -> None:
    assert sft({"reward_error_rate": curve([1.0] * 10)}, ERRORS) == []


# --- loss_divergence ---------------------------------------------------------------------------

DIVERGENCE = monitoring(loss_divergence={"spike_factor": 3.0, "warmup_steps": 2})


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_loss_fires_at_once_even_in_warmup(bad: float) -> None:
    [finding] = sft({"train_loss": curve([2.0, bad, 1.0])}, DIVERGENCE, final=False)
    assert (finding.detector, finding.step, finding.series) == ("loss_divergence", 2, "train_loss")
    assert f"train_loss is {bad} at step 2" in finding.message
    assert "learning rate" in finding.fix and finding.fails


def test_a_spike_after_warmup_fires() -> None:
    # Against the median of the losses before it (1.35), not the lowest (1.0): 3.5 is no spike.
    assert sft({"train_loss": curve([2.0, 1.5, 1.0, 1.2, 3.5, 1.0])}, DIVERGENCE) == []
    [finding] = sft({"train_loss": curve([2.0, 1.5, 1.0, 1.2, 4.5, 1.0])}, DIVERGENCE)
    assert finding.step == 5
    assert "4.5 at step 5, 3.33x the median 1.35 of the 4 losses before it" in finding.message


def test_spikes_in_warmup_and_exactly_at_the_factor_do_not_fire() -> None:
    # Steps 1-2 are warmup: 9.0 at step 2 is not judged.
    assert sft({"train_loss": curve([1.0, 9.0, 2.0, 3.0])}, DIVERGENCE) == []
    assert sft({"train_loss": curve([2.0, 1.0, 1.0, 3.0])}, DIVERGENCE) == []
    [finding] = sft({"train_loss": curve([2.0, 1.0, 1.0, 3.0 + 2**-10])}, DIVERGENCE)
    assert finding.step == 4


def test_warmup_counts_steps_from_the_first_logged_one() -> None:
    # Logged every 10 steps from step 10: only step 10 is in the 2-step warmup.
    assert sft({"train_loss": curve([1.0, 4.0], start=10, every=10)}, DIVERGENCE) != []


def test_a_loss_at_zero_or_below_is_no_baseline_for_a_spike() -> None:
    assert sft({"train_loss": curve([0.0, 0.0, 0.0, 5.0])}, DIVERGENCE) == []
    assert sft({"train_loss": curve([-1.0, -1.0, -1.0, 5.0])}, DIVERGENCE) == []


def test_the_earliest_divergence_of_train_and_val_loss_wins() -> None:
    series = {
        "train_loss": curve([2.0, 1.0, 1.0, 1.0, 1.0, 9.0]),
        "val_loss": curve([1.0, math.nan], start=2, every=2),
    }
    [finding] = sft(series, DIVERGENCE)
    assert (finding.series, finding.step) == ("val_loss", 4)
    series["val_loss"] = curve([1.0, math.nan], start=3, every=3)
    [tie] = sft(series, DIVERGENCE)
    assert (tie.series, tie.step) == ("train_loss", 6)


def test_loss_divergence_applies_to_cpt_not_rft() -> None:
    nan_loss = {"train_loss": curve([1.0, math.nan])}
    [finding] = detect(nan_loss, DIVERGENCE, stage="cpt", method=Method.CPT, final=False)
    assert finding.stage == "cpt"
    assert rft(nan_loss, DIVERGENCE) == []
    assert sft(nan_loss, monitoring(loss_divergence={"policy": "off"})) == []


# --- all detectors -----------------------------------------------------------------------------


def test_no_curves_no_findings() -> None:
    for method in Method:
        assert detect({}, Monitoring(), stage="s", method=method, final=True) == []


def test_points_out_of_order_and_repeated_steps_are_read_by_step() -> None:
    # Step 3 logged twice: the last value given wins.
    shuffled = [(4, 1.0), (1, 2.0), (3, math.nan), (2, 1.0), (3, 1.0)]
    assert sft({"train_loss": shuffled}, DIVERGENCE) == []
    [finding] = sft({"train_loss": [*shuffled, (5, math.nan)]}, DIVERGENCE)
    assert finding.step == 5


def test_several_detectors_report_in_a_fixed_order() -> None:
    watch = monitoring(
        plateau={"window": 2},
        instability={"window": 2, "factor": 2.0},
        reward_errors={"for_steps": 2},
    )
    series = {
        "reward_mean": curve([0.5] * 4),
        "reward_std": curve([0.1, 0.1, 0.5, 0.5]),
        "reward_error_rate": curve([0.9] * 4),
    }
    findings = rft(series, watch)
    assert [f.detector for f in findings] == ["plateau", "instability", "reward_errors"]
    assert [f.detector for f in failing(findings)] == ["reward_errors"]


def test_summary_has_one_line_per_finding() -> None:
    series = {"reward_mean": curve([0.5] * 4), "reward_error_rate": curve([0.9] * 2)}
    watch = monitoring(plateau={"window": 2}, reward_errors={"for_steps": 2})
    findings = rft(series, watch)
    lines = summary(findings).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("[warn] plateau (rft, reward_mean, step 4): reward_mean changed")
    assert lines[1].startswith("[fail_round] reward_errors (rft, reward_error_rate, step 2): ")
    assert "Fix: see what fails with `tuneloop reward probe" in lines[1]
    assert summary([]) == ""
    bare = Finding(detector="overfitting", policy="warn", message="seen.")
    assert summary([bare]) == "[warn] overfitting: seen."


# --- properties --------------------------------------------------------------------------------

ANY_VALUE = st.floats(allow_nan=True, allow_infinity=True)
POLICIES = st.sampled_from(["off", "warn", "fail_round", "stop_campaign"])
NAMES = st.sampled_from(
    [
        "train_loss",
        "val_loss",
        "reward_mean",
        "reward_std",
        "val_reward_mean",
        "reward_error_rate",
        "reward_latency_s",
        "tokens_per_s",
    ]
)


@st.composite
def any_monitoring(draw: st.DrawFn) -> Monitoring:
    windows = st.integers(2, 6)
    return monitoring(
        plateau={
            "policy": draw(POLICIES),
            "window": draw(windows),
            "min_gain": draw(st.floats(0, 1)),
        },
        overfitting={
            "policy": draw(POLICIES),
            "window": draw(windows),
            "min_drop": draw(st.floats(0, 1)),
        },
        instability={
            "policy": draw(POLICIES),
            "window": draw(windows),
            "factor": draw(st.floats(1.01, 10)),
        },
        reward_errors={
            "policy": draw(POLICIES),
            "max_rate": draw(st.floats(0, 1)),
            "for_steps": draw(st.integers(1, 8)),
        },
        loss_divergence={
            "policy": draw(POLICIES),
            "spike_factor": draw(st.floats(1.01, 10)),
            "warmup_steps": draw(st.integers(0, 5)),
        },
    )


@PROPERTIES
@given(
    series=st.dictionaries(
        NAMES, st.lists(st.tuples(st.integers(-(10**9), 10**9), ANY_VALUE), max_size=40)
    ),
    watch=any_monitoring(),
    method=st.sampled_from(list(Method)),
    final=st.booleans(),
    evaluation_change=st.none() | ANY_VALUE,
)
def test_detect_is_deterministic_and_never_raises(
    series: dict[str, Points],
    watch: Monitoring,
    method: Method,
    final: bool,
    evaluation_change: float | None,
) -> None:
    def run() -> list[Finding]:
        return detect(
            series,
            watch,
            stage="stage",
            method=method,
            final=final,
            evaluation_change=evaluation_change,
        )

    findings = run()
    assert run() == findings
    assert len({f.detector for f in findings}) == len(findings) <= len(DETECTORS)
    for finding in findings:
        assert finding.detector in DETECTORS and finding.series in series
        assert finding.policy == getattr(watch, finding.detector).policy != "off"
        assert finding.message and "\n" not in finding.message
    assert len(summary(findings).splitlines()) == len(findings)


@PROPERTIES
@given(
    window=st.integers(2, 10),
    min_gain=st.floats(0, 1),
    start=st.floats(-10, 10),
    margins=st.lists(st.floats(0, 1), min_size=1, max_size=80),
    live=st.booleans(),
)
def test_a_reward_that_keeps_rising_by_more_than_min_gain_never_plateaus(
    window: int, min_gain: float, start: float, margins: list[float], live: bool
) -> None:
    # Each step rises by more than min_gain / window, so each window's mean is above the
    # mean of the window before by more than min_gain.
    values = [start]
    for margin in margins:
        values.append(values[-1] + min_gain / window + 1e-6 + margin)
    watch = monitoring(plateau={"window": window, "min_gain": min_gain})
    assert only(rft({"reward_mean": curve(values)}, watch, final=not live), "plateau") == []


@PROPERTIES
@given(
    values=st.lists(st.floats(0, 1), min_size=2, max_size=40),
    window=st.integers(2, 10),
)
def test_a_constant_reward_plateaus_once_two_windows_are_logged(
    values: list[float], window: int
) -> None:
    flat = [values[0]] * len(values)
    watch = monitoring(plateau={"window": window, "min_gain": 0.0001})
    fired = only(rft({"reward_mean": curve(flat)}, watch), "plateau")
    assert bool(fired) == (len(values) >= 2 * window)


LOSS = st.one_of(st.floats(0.01, 10), st.just(math.nan), st.just(math.inf))


@PROPERTIES
@given(
    train=st.lists(LOSS, min_size=1, max_size=40),
    validation=st.lists(LOSS, max_size=10),
    cut=st.integers(0, 45),
    spike_factor=st.floats(1.01, 5),
    warmup_steps=st.integers(0, 6),
)
def test_a_divergence_seen_live_is_the_same_finding_on_the_full_curve(
    train: list[float],
    validation: list[float],
    cut: int,
    spike_factor: float,
    warmup_steps: int,
) -> None:
    watch = monitoring(loss_divergence={"spike_factor": spike_factor, "warmup_steps": warmup_steps})
    full = {"train_loss": curve(train), "val_loss": curve(validation, every=4)}
    prefix = {name: [p for p in points if p[0] <= cut] for name, points in full.items()}
    live = only(sft(prefix, watch, final=False), "loss_divergence")
    whole = only(sft(full, watch, final=True), "loss_divergence")
    # What the prefix proves stays, unchanged; what it does not prove lies past the cut.
    assert live == [finding for finding in whole if (finding.step or 0) <= cut]


@PROPERTIES
@given(
    rates=st.lists(st.floats(0, 1) | st.just(math.nan), min_size=1, max_size=60),
    cut=st.integers(1, 60),
    max_rate=st.floats(0, 1),
    for_steps=st.integers(1, 10),
)
def test_an_error_run_seen_live_is_the_same_finding_on_the_full_curve(
    rates: list[float], cut: int, max_rate: float, for_steps: int
) -> None:
    watch = monitoring(reward_errors={"max_rate": max_rate, "for_steps": for_steps})
    full = {"reward_error_rate": curve(rates)}
    live = rft({"reward_error_rate": curve(rates[:cut])}, watch, final=False)
    if live:
        assert rft(full, watch, final=True) == live
    # Live or not, a run is the same finding; the prefix holds it exactly when it ends by the cut.
    runs = rft(full, watch, final=False)
    assert live == [finding for finding in runs if (finding.step or 0) <= cut]


def test_a_straight_rising_reward_line_is_not_unstable() -> None:
    """Its residuals around the trend are float rounding (1e-18 against 5e-18), not a
    growing variance."""
    line = {"reward_mean": [(step, step / 500) for step in range(1, 31)]}
    findings = detect(line, Monitoring(), stage="rft", method=Method.RFT, final=True)
    assert [f.detector for f in findings if f.detector == "instability"] == []
