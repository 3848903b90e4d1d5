"""A reward function that works for a while, then breaks: the early-stop scenario of a real local
RFT job (tests/integration/test_early_stop.py).

``failing`` scores like the demo task's reward for its first ``GOOD`` calls (one call per RFT
step: the step's samples fit one batch), raises on the next ``FAILING`` calls (the samples of
those steps go unscored: an error rate of 100%), and from then on does not answer: it blocks, as
a reward backend that stopped responding does, until the job is stopped.

Why it blocks: the local trainer ends a job by itself once failed calls exceed 10% of its calls
(``local.rewards.RewardFunction``), and a call's samples fail or pass together, so an error rate
above 20% always reaches that limit after a few steps. ``GOOD`` is chosen so the ``FAILING``
calls stay within the limit (``FAILING <= GOOD / 9``); the call after them would be the one to
cross it, and it never returns before monitoring has stopped the job (the trainer would count
it a timeout after 60 s). So what stops the job is the monitor, never a race with the trainer.

The counts come from the job's environment (``FAILING_REWARDS_GOOD``, ``FAILING_REWARDS_FAILING``);
each call is appended to ``FAILING_REWARDS_RECORD`` when set ("good", "error", "blocked").
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from tuneloop.local.demo_task import reward

BLOCK_SECONDS = 600.0
"""How long a call blocks at most (the job is stopped long before)."""

_calls = 0
_lock = threading.Lock()


def failing(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    global _calls
    with _lock:
        _calls += 1
        call = _calls
    good = int(os.environ.get("FAILING_REWARDS_GOOD", "20"))
    errors = int(os.environ.get("FAILING_REWARDS_FAILING", "2"))
    if call <= good:
        _record("good")
        return reward(samples)
    if call <= good + errors:
        _record("error")
        raise ConnectionError(f"reward backend unavailable (call {call})")
    _record("blocked")
    threading.Event().wait(BLOCK_SECONDS)
    raise TimeoutError(f"reward backend did not answer call {call}")


def _record(what: str) -> None:
    path = os.environ.get("FAILING_REWARDS_RECORD")
    if path:
        with Path(path).open("a", encoding="utf-8") as handle:
            handle.write(what + "\n")
