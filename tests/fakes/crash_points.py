"""Kill the process at the job operator's worst moments, as a dying worker would.

``tests/integration/test_fault_injection.py`` runs a DAG in a child process with
``TUNELOOP_CRASH_AT`` naming one of `CRASH_POINTS`; the child calls `install_from_env` before it
runs the DAG, which wraps the operator's methods so that the process exits (``os._exit``, no
cleanup, no Airflow bookkeeping) exactly there:

- ``after_submit``: the backend created the job; the task has not stored its handle yet;
- ``deferring``: the handle is stored and the task is about to defer to ``JobTrigger``;
- ``after_complete``: the job ended, the task resumed from the trigger and saved its log cursor,
  and has not returned its result yet.

The wrappers name ``JobOperator`` internals (``_call``, ``defer``, ``execute_complete``,
``_finish``); `install` checks that they exist, so a refactor that renames one fails the
fault-injection tests loudly rather than letting them pass without crashing.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

CRASH_ENV = "TUNELOOP_CRASH_AT"
CRASH_POINTS = ("after_submit", "deferring", "after_complete")
CRASH_EXIT_CODE = 75

_RESUMED = "_crash_points_resumed"


def install_from_env() -> None:
    """`install` the crash point ``TUNELOOP_CRASH_AT`` names; nothing when it names none."""
    point = os.environ.get(CRASH_ENV, "")
    if point:
        install(point)


def install(point: str) -> None:
    """Make the job operator exit the process at ``point`` (one of `CRASH_POINTS`)."""
    from tuneloop.pipeline.operators import JobOperator

    if point not in CRASH_POINTS:
        raise ValueError(f"{CRASH_ENV}={point!r}: not one of {', '.join(CRASH_POINTS)}")
    for name in ("_call", "defer", "execute_complete", "_finish"):
        if not callable(getattr(JobOperator, name, None)):
            raise AttributeError(f"JobOperator.{name} is gone: update {__name__}")
    wrap = {"after_submit": _after_submit, "deferring": _deferring}.get(point, _after_complete)
    wrap(JobOperator)


def crash() -> None:
    os._exit(CRASH_EXIT_CODE)


def _after_submit(operator: type) -> None:
    original = operator._call  # type: ignore[attr-defined]

    @functools.wraps(original)
    def call(self: Any, function: Callable[..., Any], *args: Any) -> Any:
        result = original(self, function, *args)
        if getattr(function, "__name__", "") == "submit":
            crash()
        return result

    operator._call = call  # type: ignore[attr-defined]


def _deferring(operator: type) -> None:
    original = operator.defer  # type: ignore[attr-defined]

    @functools.wraps(original)
    def defer(self: Any, *args: Any, **kwargs: Any) -> Any:
        # Only the wait for the job (JobTrigger), not a backoff wait (TimeDeltaTrigger).
        if kwargs.get("method_name") == "execute_complete":
            crash()
        return original(self, *args, **kwargs)

    operator.defer = defer  # type: ignore[attr-defined]


def _after_complete(operator: type) -> None:
    resume = operator.execute_complete  # type: ignore[attr-defined]
    finish = operator._finish  # type: ignore[attr-defined]

    @functools.wraps(resume)
    def execute_complete(self: Any, *args: Any, **kwargs: Any) -> Any:
        setattr(self, _RESUMED, True)
        return resume(self, *args, **kwargs)

    @functools.wraps(finish)
    def _finish(self: Any, *args: Any, **kwargs: Any) -> Any:
        # Reached from execute_complete only when the job succeeded.
        if getattr(self, _RESUMED, False):
            crash()
        return finish(self, *args, **kwargs)

    operator.execute_complete = execute_complete  # type: ignore[attr-defined]
    operator._finish = _finish  # type: ignore[attr-defined]
