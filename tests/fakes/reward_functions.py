"""Reward functions, good and broken, for the reward-function probe's tests.

Each takes the list of samples the RFT job sends (``{"id", "messages", "reference_answer",
"metadata"}``) and returns what a real function of its kind returns. The same functions run
locally (``fakes.reward_functions:good``) and behind the fake Lambda server
(``fakes.lambda_server``).

``good`` gives 1 to an answer equal to the reference answer (its ``answer`` field for an
object), else 0. ``slow`` waits until a test releases it (`RELEASE`), so a test that expects a
timeout never sleeps on the clock.
"""

from __future__ import annotations

import math
import threading
from typing import Any

RELEASE = threading.Event()
"""Set by a test's teardown: lets the calls `slow` holds return."""


def _reference(sample: dict[str, Any]) -> Any:
    if "reference_answer" in sample:
        return sample["reference_answer"]
    return (sample.get("metadata") or {}).get("reference_answer")


def _expected(sample: dict[str, Any]) -> str:
    reference = _reference(sample)
    if isinstance(reference, dict):
        return str(reference.get("answer", ""))
    return "" if reference is None else str(reference)


def _answer(sample: dict[str, Any]) -> str:
    return str(sample["messages"][-1]["content"])


def _result(sample: dict[str, Any], score: float) -> dict[str, Any]:
    return {
        "id": sample["id"],
        "aggregate_reward_score": score,
        "metrics_list": [{"name": "exact_match", "value": score, "type": "Reward"}],
    }


def good(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """1 for the reference answer, 0 for anything else."""
    return [
        _result(s, 1.0 if _answer(s).strip() == _expected(s).strip() and _answer(s) else 0.0)
        for s in samples
    ]


def lambda_handler(event: list[dict[str, Any]], context: Any) -> list[dict[str, Any]]:
    """`good` with the Lambda signature."""
    return good(event)


def raises(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A typical bug: the reference answer read from a key the samples do not have."""
    return [_result(s, float(s["answer_key"] == _answer(s))) for s in samples]


def slow(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Answers only once a test sets RELEASE (a function slower than its time limit)."""
    RELEASE.wait(timeout=60)
    return good(samples)


def wrong_shape(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """An object of scores instead of a list of results."""
    return {"scores": [1.0 for _ in samples]}


def missing_ids(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Answers only the first sample of each batch."""
    return good(samples[:1])


def nan_score(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """NaN where it cannot judge (a division by zero turned into NaN)."""
    return [_result(s, math.nan) for s in samples]


def scores_zero(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Compares with a field the samples do not have, so nothing ever matches."""
    return [_result(s, 0.0) for s in samples]


def ignores_response(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Scores the reference answer's length, never looking at the answer."""
    return [_result(s, min(1.0, len(_expected(s)) / 10)) for s in samples]


def non_empty(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rewards any non-empty answer: separates only the empty answer from the good one."""
    return [_result(s, 1.0 if _answer(s).strip() else 0.0) for s in samples]


not_callable = 42
"""A module attribute that is not a function."""
