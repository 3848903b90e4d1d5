"""Reward functions called in the Nova Lambda contract, with failures counted."""

from __future__ import annotations

import math
import threading
from typing import Any

import pytest

from tuneloop.local.rewards import (
    RewardFunction,
    RewardLimitError,
    RewardLoadError,
    RewardOutputError,
    load_reward_function,
    make_sample,
    validate_output,
)

PROMPT = [
    {"role": "system", "content": "Reply with ANSWER: <n>."},
    {"role": "user", "content": "q"},
]


def batch(n: int, answer: str = "ANSWER: 82") -> list[dict[str, Any]]:
    return [make_sample(f"s{i}", PROMPT, answer, "82", {"operands": [37, 82]}) for i in range(n)]


def constant(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "id": s["id"],
            "aggregate_reward_score": 0.5,
            "metrics_list": [{"name": "m", "value": 1, "type": "Metric"}],
        }
        for s in samples
    ]


def test_load_by_name() -> None:
    fn = load_reward_function("tuneloop.local.demo_task:reward")
    assert fn.__name__ == "reward"
    assert load_reward_function("os.path:join.__call__")  # a dotted attribute path
    for name, message in [
        ("tuneloop.local.demo_task", "not module:function"),
        ("no_such_module_xyz:f", "cannot import module"),
        ("tuneloop.local.demo_task:nope", "has no 'nope'"),
        ("tuneloop.local.demo_task:SYSTEM_PROMPT", "not callable"),
    ]:
        with pytest.raises(RewardLoadError, match=message):
            load_reward_function(name)


def test_make_sample_has_both_reference_placements() -> None:
    sample = make_sample("a", PROMPT, "ANSWER: 1", {"answer": 1}, {"task": "max"})
    assert sample["messages"][-1] == {"role": "assistant", "content": "ANSWER: 1"}
    assert sample["messages"][:-1] == PROMPT
    assert sample["reference_answer"] == {"answer": 1}
    assert sample["metadata"] == {"task": "max", "reference_answer": {"answer": 1}}


def test_demo_reward_by_name_in_batches() -> None:
    calls: list[int] = []
    rewards = RewardFunction("tuneloop.local.demo_task:reward", batch_size=4)
    original = rewards.function

    def counting(samples):
        calls.append(len(samples))
        return original(samples)

    rewards.function = counting
    samples = batch(5) + batch(1, "ANSWER: 3")[:1]
    samples[-1]["id"] = "wrong"
    results = rewards(samples)
    assert calls == [4, 2]
    assert [r.score for r in results] == [1.0] * 5 + [0.1]
    assert results[0].id == "s0" and {m.type for m in results[0].metrics} == {"Reward", "Metric"}
    assert (
        rewards.stats.calls == 2 and rewards.stats.scored == 6 and rewards.stats.failed_calls == 0
    )
    assert "6/6 samples scored" in rewards.summary()


def test_samples_reach_the_function_as_a_json_copy() -> None:
    seen: list[Any] = []

    def keep(samples):
        seen.extend(samples)
        samples[0]["messages"].clear()
        return constant(samples)

    samples = batch(2)
    RewardFunction(keep, timeout_s=None)(samples)
    assert samples == batch(2)  # the caller's samples are untouched
    assert seen[1] == samples[1] and seen[1] is not samples[1]
    with pytest.raises(ValueError, match="own id"):
        RewardFunction(keep)(batch(1) + batch(1))


def test_lambda_style_function_gets_event_and_context() -> None:
    def lambda_handler(event, context):
        assert context is None
        return constant(event)

    assert RewardFunction(lambda_handler).scores(batch(3)) == [0.5, 0.5, 0.5]
    rewards = RewardFunction("tuneloop.local.demo_task:lambda_handler")
    assert rewards.scores(batch(2)) == [1.0, 1.0]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda out: {"results": out}, "not a list"),
        (lambda out: out[:1], r"no answer for 1 of 2 ids \('s1'\)"),
        (lambda out: [out[0], out[0]], "a second time"),
        (lambda out: [out[0], {**out[1], "id": "s9"}], "which was not sent"),
        (lambda out: [out[0], {**out[1], "id": 1}], "which was not sent"),
        (lambda out: [out[0], {"aggregate_reward_score": 1.0}], "has no id"),
        (lambda out: [out[0], {**out[1], "score": 1}], "unknown keys"),
        (lambda out: [out[0], {**out[1], "aggregate_reward_score": "1"}], "not a finite"),
        (lambda out: [out[0], {**out[1], "aggregate_reward_score": True}], "not a finite"),
        (
            lambda out: [out[0], {**out[1], "aggregate_reward_score": math.nan}],
            r"output\[1\]\.aggregate_reward_score is nan, not a finite number",
        ),
        (lambda out: [out[0], {**out[1], "metrics_list": {}}], "not a list"),
        (
            lambda out: [out[0], {**out[1], "metrics_list": [{"name": "m", "value": 1}]}],
            "name, value and type",
        ),
        (
            lambda out: [
                out[0],
                {**out[1], "metrics_list": [{"name": "m", "value": 1, "type": "reward"}]},
            ],
            "not one of Reward, Metric",
        ),
        (
            lambda out: [
                out[0],
                {**out[1], "metrics_list": [{"name": "m", "value": None, "type": "Metric"}]},
            ],
            "not a finite number",
        ),
        (lambda out: [out[0], "s1"], "not an object"),
        (lambda out: [out[0], {**out[1], "id": object()}], "JSON"),
    ],
)
def test_output_schema_is_strict(mutate, message) -> None:
    samples = batch(2)
    output = mutate(constant(samples))
    with pytest.raises(RewardOutputError, match=message) as raised:
        validate_output(output, ["s0", "s1"])
    # Every contract problem says how to fix the function.
    assert raised.value.problems[0].fix


def test_output_in_any_order_and_without_metrics() -> None:
    output = [
        {"id": "s1", "aggregate_reward_score": 1},
        {"id": "s0", "aggregate_reward_score": 0.25, "metrics_list": None},
    ]
    results = validate_output(output, ["s0", "s1"])
    assert [(r.id, r.score, r.metrics) for r in results] == [("s0", 0.25, ()), ("s1", 1.0, ())]


def test_failures_are_counted_until_the_limit() -> None:
    outcomes = iter(["ok"] * 19 + ["raise", "invalid"] + ["ok"] * 8 + ["raise"] * 2)

    def flaky(samples):
        outcome = next(outcomes)
        if outcome == "raise":
            raise KeyError("boom")
        if outcome == "invalid":
            return constant(samples)[1:]
        return constant(samples)

    rewards = RewardFunction(flaky, batch_size=1, timeout_s=None)
    assert rewards.scores(batch(20), default=-1.0) == [0.5] * 19 + [-1.0]
    results = rewards(batch(1))
    assert results == [None]
    stats = rewards.stats
    assert (stats.calls, stats.failed_calls, stats.exceptions, stats.invalid_outputs) == (
        21,
        2,
        1,
        1,
    )
    assert stats.samples == 21 and stats.scored == 19
    rewards(batch(8))  # 29 calls, 2 failed
    rewards(batch(1))  # 30 calls, 3 failed: 10% is still allowed
    with pytest.raises(RewardLimitError) as caught:
        rewards(batch(1))  # 31 calls, 4 failed
    text = str(caught.value)
    assert "test_rewards:test_failures_are_counted_until_the_limit.<locals>.flaky" in text
    assert "failed 4 of 31 calls" in text and "3 exceptions" in text and "1 invalid outputs" in text
    assert "last error: KeyError: 'boom'" in text


def test_one_failure_is_tolerated_but_a_broken_function_stops_early() -> None:
    def broken(samples):
        raise RuntimeError("no model endpoint")

    rewards = RewardFunction(broken, name="mod:broken", batch_size=2)
    assert rewards(batch(2)) == [None, None]
    with pytest.raises(
        RewardLimitError, match=r"mod:broken failed 2 of 2 calls.*no model endpoint"
    ):
        rewards(batch(2))
    strict = RewardFunction(broken, max_failure_rate=0.0)
    with pytest.raises(RewardLimitError, match="failed 1 of 1"):
        strict(batch(1))


def test_timeouts_are_counted_and_the_call_moves_on() -> None:
    release = threading.Event()

    def slow(samples):
        if samples[0]["id"] == "s0":
            release.wait(5)
        return constant(samples)

    rewards = RewardFunction(slow, batch_size=1, timeout_s=0.05, max_failure_rate=0.5)
    try:
        results = rewards(batch(3))
    finally:
        release.set()
    assert results[0] is None and [r.score for r in results[1:]] == [0.5, 0.5]
    assert rewards.stats.timeouts == 1 and rewards.stats.failed_calls == 1
    assert "timed out after 0.05 s" in rewards.stats.last_error
    assert rewards.stats.as_dict()["timeouts"] == 1


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        RewardFunction(constant, batch_size=0)
    with pytest.raises(ValueError, match="max_failure_rate"):
        RewardFunction(constant, max_failure_rate=1.5)
