"""Reward functions for local RFT: a Python callable named ``module:function``, called the way
Nova calls a reward Lambda.

The callable takes a list of samples, each ``{"id", "messages": [... prompt ...,
{"role": "assistant", "content": <generated>}], "reference_answer", "metadata"}``, and returns
one ``{"id", "aggregate_reward_score", "metrics_list"}`` per sample. Batches travel as JSON (a
copy, as over the wire), so a function that works here gets the same input as a Lambda. A
callable with the Lambda signature ``(event, context)`` is called as ``fn(samples, None)``.

The output is validated strictly: a list, every input id answered exactly once, numeric finite
scores, metrics named with type ``Reward`` or ``Metric``, nothing else. An exception, a timeout
or an invalid output fails that batch (its samples get no score) and is counted; once failed
batches exceed ``max_failure_rate`` of the calls (one failure is always tolerated unless the
rate is 0), RewardLimitError names the function, the count and the last error.

A timed-out call cannot be stopped: its thread is left running as a daemon and its result is
discarded.

``local_invoker(name, timeout)`` calls a ``module:function`` one batch at a time for the
reward-function probe (``tuneloop.rounds.reward_probe``), which judges the output itself: the
output comes back unvalidated, and what went wrong is raised as an InvokeError that names the
problem and its fix. The Lambda invoker raises the same classes: FunctionError (the function
raised), FunctionTimeoutError, ThrottledError, AccessDeniedError, FunctionNotFoundError.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from tuneloop.errors import Problem, TuneloopError

DEFAULT_BATCH_SIZE = 64
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MAX_FAILURE_RATE = 0.1
METRIC_TYPES = ("Reward", "Metric")
OUTPUT_KEYS = frozenset({"id", "aggregate_reward_score", "metrics_list"})
METRIC_KEYS = frozenset({"name", "value", "type"})


class RewardError(TuneloopError):
    """A reward function cannot be loaded, answered outside the contract, or failed too often."""


class RewardLoadError(RewardError):
    pass


class RewardLimitError(RewardError):
    pass


class RewardOutputError(RewardError):
    """A reward function returned something outside the contract (one batch); its problem
    names what is wrong and the fix."""


def _output_error(message: str, fix: str) -> RewardOutputError:
    return RewardOutputError([Problem("", message, fix=fix)])


class InvokeError(RewardError):
    """One call of a reward function failed before it returned an output to judge.

    ``check`` names the kind of failure (the probe reports one problem per kind), ``message``
    says what happened and ``fix`` what to change. Messages never carry credentials."""

    check = "invoke"

    def __init__(self, message: str, fix: str) -> None:
        super().__init__([Problem("", message, fix=fix)])
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.message}; fix: {self.fix}"


class FunctionError(InvokeError):
    """The function raised (a Lambda answered with a function error)."""

    check = "function_error"


class FunctionTimeoutError(InvokeError):
    """The function did not answer within its time limit."""

    check = "timeout"


class ThrottledError(InvokeError):
    """The call was refused for lack of concurrency (Lambda's TooManyRequestsException)."""

    check = "throttled"


class AccessDeniedError(InvokeError):
    """The caller may not invoke the function."""

    check = "access_denied"


class FunctionNotFoundError(InvokeError):
    """No function by that name."""

    check = "not_found"


@dataclass(frozen=True)
class Metric:
    name: str
    value: float
    type: str


@dataclass(frozen=True)
class RewardResult:
    id: Any
    score: float
    metrics: tuple[Metric, ...] = ()


@dataclass
class RewardStats:
    """What the calls so far came to."""

    calls: int = 0
    samples: int = 0
    scored: int = 0
    """Samples that got a valid score."""
    failed_calls: int = 0
    exceptions: int = 0
    timeouts: int = 0
    invalid_outputs: int = 0
    seconds: float = 0.0
    last_error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_reward_function(name: str) -> Callable[..., Any]:
    """Import ``module:function`` (the function may be a dotted attribute path)."""
    module_name, sep, attribute = name.partition(":")
    if not sep or not module_name or not attribute:
        raise RewardLoadError(f"reward function {name!r} is not module:function")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise RewardLoadError(
            f"reward function {name!r}: cannot import module {module_name!r} ({exc})"
        ) from exc
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise RewardLoadError(
                f"reward function {name!r}: module {module_name!r} has no {attribute!r}"
            ) from None
    if not callable(target):
        raise RewardLoadError(f"reward function {name!r} is not callable")
    return target


def make_sample(
    sample_id: Any,
    prompt: Sequence[dict[str, Any]],
    completion: str,
    reference_answer: Any = None,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One sample as a reward Lambda receives it: the prompt with the generated assistant turn
    appended, ``reference_answer`` at the top level and, as the other documented placement,
    under ``metadata`` with the dataset's extra fields."""
    sample: dict[str, Any] = {
        "id": sample_id,
        "messages": [*prompt, {"role": "assistant", "content": completion}],
    }
    if reference_answer is not None:
        sample["reference_answer"] = reference_answer
    sample["metadata"] = {
        **(metadata or {}),
        **({"reference_answer": reference_answer} if reference_answer is not None else {}),
    }
    return sample


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# The fixes validate_output's problems name.
FIX_LIST = 'return a JSON list with one {"id", "aggregate_reward_score", "metrics_list"} per sample'
FIX_JSON = "return plain JSON values (numbers, strings, lists, objects)"
FIX_KEYS = (
    "return only id, aggregate_reward_score and metrics_list (other values go in metrics_list)"
)
FIX_ID = "echo each input sample's id unchanged"
FIX_SCORE = (
    "return a finite number as aggregate_reward_score (score a sample you cannot judge 0, "
    "never NaN, infinity or null)"
)
FIX_METRIC = (
    'make each metrics_list entry {"name": str, "value": number, "type": "Reward" or "Metric"}'
)
FIX_MISSING = "return one entry for every input sample (score a sample you cannot judge 0)"


def validate_output(output: Any, ids: Sequence[Any]) -> list[RewardResult]:
    """Check a reward function's output against the contract; return results in input order.

    Raises RewardOutputError naming the first problem and its fix."""
    if not isinstance(output, list | tuple):
        raise _output_error(f"returned {type(output).__name__}, not a list", FIX_LIST)
    try:
        # NaN passes here so that the score check below names the field it is in.
        json.dumps(output)
    except (TypeError, ValueError) as exc:
        raise _output_error(f"returned something JSON cannot carry ({exc})", FIX_JSON) from None
    position = {_key(sample_id): index for index, sample_id in enumerate(ids)}
    results: list[RewardResult | None] = [None] * len(ids)
    for index, entry in enumerate(output):
        where = f"output[{index}]"
        if not isinstance(entry, dict):
            raise _output_error(f"{where} is {type(entry).__name__}, not an object", FIX_LIST)
        extra = set(entry) - OUTPUT_KEYS
        if extra:
            raise _output_error(f"{where} has unknown keys {sorted(extra)}", FIX_KEYS)
        if "id" not in entry:
            raise _output_error(f"{where} has no id", FIX_ID)
        sample_id = entry["id"]
        slot = position.get(_key(sample_id))
        if slot is None:
            raise _output_error(f"{where} answers id {sample_id!r}, which was not sent", FIX_ID)
        if results[slot] is not None:
            raise _output_error(
                f"{where} answers id {sample_id!r} a second time",
                "return exactly one entry per sample id",
            )
        score: Any = entry.get("aggregate_reward_score")  # a number once _number says so
        if not _number(score):
            raise _output_error(
                f"{where}.aggregate_reward_score is {score!r}, not a finite number", FIX_SCORE
            )
        results[slot] = RewardResult(sample_id, float(score), _metrics(entry, where))
    missing = [ids[i] for i, result in enumerate(results) if result is None]
    if missing:
        shown = ", ".join(repr(m) for m in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise _output_error(
            f"no answer for {len(missing)} of {len(ids)} ids ({shown})", FIX_MISSING
        )
    return [result for result in results if result is not None]


def _metrics(entry: dict[str, Any], where: str) -> tuple[Metric, ...]:
    metrics = entry.get("metrics_list")
    if metrics is None:
        return ()
    if not isinstance(metrics, list):
        raise _output_error(f"{where}.metrics_list is not a list", FIX_METRIC)
    parsed = []
    for m_index, metric in enumerate(metrics):
        m_where = f"{where}.metrics_list[{m_index}]"
        if not isinstance(metric, dict) or set(metric) != METRIC_KEYS:
            raise _output_error(
                f"{m_where} must be an object with name, value and type", FIX_METRIC
            )
        if not isinstance(metric["name"], str) or not metric["name"]:
            raise _output_error(f"{m_where}.name is not a non-empty string", FIX_METRIC)
        if not _number(metric["value"]):
            raise _output_error(
                f"{m_where}.value is {metric['value']!r}, not a finite number", FIX_METRIC
            )
        if metric["type"] not in METRIC_TYPES:
            raise _output_error(
                f"{m_where}.type is {metric['type']!r}, not one of {', '.join(METRIC_TYPES)}",
                FIX_METRIC,
            )
        parsed.append(Metric(metric["name"], float(metric["value"]), metric["type"]))
    return tuple(parsed)


def _lambda_style(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` takes (event, context) rather than (samples)."""
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [
        p
        for p in parameters
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        and p.default is inspect.Parameter.empty
    ]
    return len(positional) == 2


class _Timeout(Exception):
    pass


def _call(fn: Callable[..., Any], args: tuple[Any, ...], timeout_s: float | None, name: str) -> Any:
    """``fn(*args)``, raising _Timeout when it takes longer than ``timeout_s`` (None or 0: no
    limit, in this thread). A call that runs over is left running in its daemon thread."""
    if not timeout_s:
        return fn(*args)
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = fn(*args)
        except BaseException as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=run, name=f"reward {name}", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise _Timeout
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def local_invoker(name: str, timeout: float | None) -> Callable[[list[dict[str, Any]]], Any]:
    """A callable that sends one batch to the reward function ``module:function`` as a Lambda
    would get it (a JSON copy) and returns its output unvalidated.

    Raises RewardLoadError at once when ``name`` cannot be loaded; each call raises
    FunctionError when the function raises and FunctionTimeoutError when it takes longer than
    ``timeout`` seconds (None or 0: no limit)."""
    function = load_reward_function(name)
    lambda_style = _lambda_style(function)

    def invoke(batch: list[dict[str, Any]]) -> Any:
        payload = json.loads(json.dumps(batch))
        args = (payload, None) if lambda_style else (payload,)
        try:
            return _call(function, args, timeout, name)
        except _Timeout:
            raise FunctionTimeoutError(
                f"{name} did not answer a batch of {len(batch)} within {timeout or 0:g} s",
                "make the function faster (it must answer a batch well within "
                "reward_probe.timeout_seconds and the 15-minute Lambda limit), or send fewer "
                "samples per call",
            ) from None
        except Exception as exc:
            raise FunctionError(
                f"{name} raised {type(exc).__name__}: {_clipped(str(exc))}",
                "make the function handle every sample: catch what it cannot score and give it 0",
            ) from exc

    return invoke


def _clipped(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class RewardFunction:
    """A reward function called in batches, with failures counted up to a limit."""

    function: Callable[..., Any] | str
    batch_size: int = DEFAULT_BATCH_SIZE
    timeout_s: float | None = DEFAULT_TIMEOUT_S
    """Per batch; None or 0 calls the function in this thread, without a limit."""
    max_failure_rate: float = DEFAULT_MAX_FAILURE_RATE
    name: str = ""
    stats: RewardStats = field(default_factory=RewardStats)

    def __post_init__(self) -> None:
        if isinstance(self.function, str):
            self.name = self.name or self.function
            self.function = load_reward_function(self.function)
        elif not self.name:
            fn = self.function
            self.name = f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', fn)}"
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {self.batch_size}")
        if not 0.0 <= self.max_failure_rate <= 1.0:
            raise ValueError(f"max_failure_rate must be in [0, 1], not {self.max_failure_rate}")
        self._lambda_style = _lambda_style(self.function)

    def __call__(self, samples: Sequence[dict[str, Any]]) -> list[RewardResult | None]:
        """Score ``samples`` (each with a unique id); None for a sample whose batch failed."""
        ids = [sample.get("id") for sample in samples]
        if len(set(map(_key, ids))) != len(ids):
            raise ValueError("every sample needs its own id (the reward output is matched by id)")
        results: list[RewardResult | None] = []
        for start in range(0, len(samples), self.batch_size):
            batch = list(samples[start : start + self.batch_size])
            results.extend(self._batch(batch, ids[start : start + self.batch_size]))
        return results

    def scores(self, samples: Sequence[dict[str, Any]], default: float = 0.0) -> list[float]:
        """Each sample's aggregate reward; ``default`` where its batch failed."""
        return [default if r is None else r.score for r in self(samples)]

    def _batch(self, batch: list[dict[str, Any]], ids: list[Any]) -> list[RewardResult | None]:
        stats = self.stats
        stats.calls += 1
        stats.samples += len(batch)
        started = time.perf_counter()
        try:
            payload = json.loads(json.dumps(batch))
            output = self._invoke(payload)
            results = validate_output(output, ids)
        except _Timeout:
            stats.timeouts += 1
            self._failed(f"timed out after {self.timeout_s:g} s")
            return [None] * len(batch)
        except RewardOutputError as exc:
            stats.invalid_outputs += 1
            self._failed(f"invalid output: {exc.problems[0].message}")
            return [None] * len(batch)
        except Exception as exc:
            stats.exceptions += 1
            self._failed(f"{type(exc).__name__}: {exc}")
            return [None] * len(batch)
        finally:
            stats.seconds += time.perf_counter() - started
        stats.scored += len(results)
        return list(results)

    def _invoke(self, payload: list[dict[str, Any]]) -> Any:
        fn = self.function
        assert callable(fn)
        args = (payload, None) if self._lambda_style else (payload,)
        return _call(fn, args, self.timeout_s, self.name)

    def _failed(self, message: str) -> None:
        stats = self.stats
        stats.failed_calls += 1
        stats.last_error = message
        limit = self.max_failure_rate * stats.calls
        tolerated = stats.failed_calls <= limit or (
            self.max_failure_rate > 0 and stats.failed_calls <= 1
        )
        if not tolerated:
            raise RewardLimitError(
                f"reward function {self.name} failed {stats.failed_calls} of {stats.calls} "
                f"calls ({stats.exceptions} exceptions, {stats.timeouts} timeouts, "
                f"{stats.invalid_outputs} invalid outputs), more than the "
                f"{self.max_failure_rate:.0%} allowed; last error: {message}"
            )

    def summary(self) -> str:
        s = self.stats
        return (
            f"reward function {self.name}: {s.calls} calls, {s.scored}/{s.samples} samples "
            f"scored, {s.failed_calls} failed ({s.exceptions} exceptions, {s.timeouts} "
            f"timeouts, {s.invalid_outputs} invalid outputs), {s.seconds:.2f} s"
        )


def _key(value: Any) -> Any:
    try:
        hash(value)
    except TypeError:
        return json.dumps(value, sort_keys=True, default=str)
    return value
