"""The reward-function probe: an RFT stage's reward function is tried on known good and bad
answers before the RFT job spends GPU hours on it.

**Samples.** From the first ``reward_probe.sample`` records of the RFT training data, each with a
reference answer makes one GOOD sample (the reference answer as the assistant's answer) and BAD
samples: an empty answer, the good text cut to its first half, and another record's answer (when
another record has a different one). A cut that leaves nothing (a one-character answer) is left
out, being the empty answer again. Samples are built as the RFT job builds them
(``local.rewards.make_sample``): the record's prompt with the answer appended as the assistant
turn, ``reference_answer`` at the top level and under ``metadata`` with the record's extra
fields. A record without a reference answer makes no pair; it still sends one sample (an empty
answer), because the job sends such records to the function too.

**The good text** of a reference answer: a string as it is; an object with an answer-like field
(the first of ``ANSWER_FIELDS`` that holds a string or a number) that field's text; any other
object or value its compact JSON.

**Calls.** Samples go to the function in batches of ``reward_probe.batch_size``, up to
``concurrency_limit`` batches at a time (one at a time when it is None), each call timed. A
function that cannot be found, may not be called or timed out gets no further calls.

**Checks**, each a problem that names the fix (any problem fails the probe):

- errors: the function raised (its message), timed out, was throttled, was not found, or the
  caller may not invoke it;
- the output contract: a list with one entry per input id and no other, ``id`` echoed,
  ``aggregate_reward_score`` a finite number, ``metrics_list`` (optional) a list of
  ``{name, value, type: Reward | Metric}`` (``local.rewards.validate_output``);
- latency: no call may take longer than ``reward_probe.timeout_seconds`` (at most the 15-minute
  Lambda limit); one that takes over half of it is a warning;
- degenerate scores: every sample scored the same ("scores everything 0" when that is 0), or
  the good and the bad answer of every record scored the same (the function does not read the
  response);
- separation: the good answer must score above the bad one on at least
  ``reward_probe.min_separation`` of the pairs;
- on HyperPod, the Lambda function's name must contain ``SageMaker``.

**The starting model's share of positive rewards.** Given the starting model's answers (record
id -> answer text, or an evaluation's ``inference_output.jsonl`` rows), the function scores them
too and the report carries ``positive_fraction``, the share above 0; under 5% it warns that RFT
has little to learn from (SFT first). The gate, not the probe, acts on it.

**Invokers.** A probe calls the function through an ``Invoke``: one batch in, the function's
output out, unvalidated, or an ``InvokeError`` (``local.rewards``; re-exported here) that names
what went wrong and the fix. ``local.rewards.local_invoker`` calls a ``module:function``;
`lambda_api_invoker` turns a Lambda ``Invoke`` API call (boto3's response) into one, reading
function errors, timeouts, throttling and access errors off the response or the client's error.
Nothing here imports boto3 or Airflow: the caller makes the client.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from tuneloop.config.monitoring import LAMBDA_TIME_LIMIT_SECONDS, RewardProbe
from tuneloop.errors import ConfigError, Problem
from tuneloop.local.rewards import (
    AccessDeniedError,
    FunctionError,
    FunctionNotFoundError,
    FunctionTimeoutError,
    InvokeError,
    RewardOutputError,
    RewardResult,
    ThrottledError,
    make_sample,
    validate_output,
)
from tuneloop.recipes.compat import LAMBDA_ARN
from tuneloop.rounds.gate import rft_readiness

__all__ = [
    "ANSWER_FIELDS",
    "AccessDeniedError",
    "FunctionError",
    "FunctionNotFoundError",
    "FunctionTimeoutError",
    "Invoke",
    "InvokeError",
    "ProbeProblem",
    "ProbeReport",
    "ProbeSet",
    "ThrottledError",
    "answer_text",
    "build_probe_samples",
    "function_kind",
    "lambda_api_invoker",
    "lambda_client_config",
    "load_failure",
    "positive_fraction_of",
    "probe",
]

Invoke = Callable[[list[dict[str, Any]]], Any]
"""Sends one batch of samples to the reward function and returns its output (unvalidated);
raises an InvokeError when the call fails."""

ANSWER_FIELDS = (
    "answer",
    "final_answer",
    "solution",
    "ground_truth",
    "expected",
    "target",
    "output",
    "response",
    "label",
)
"""Fields of an object reference answer that hold the answer itself, in the order tried."""

GOOD, EMPTY, TRUNCATED, OTHER, START = "good", "empty", "truncated", "other", "start"
POSITIVE_SHARE_ANSWERS = 100
"""The starting model's answers scored for its share of positive rewards, at most."""

LAMBDA_READ_MARGIN_S = 10.0
"""Seconds the Lambda client waits beyond the probe's time limit, so that the function's own
timeout (a function error that says so) comes first."""
LAMBDA_CONNECT_TIMEOUT_S = 10.0
LAMBDA_ATTEMPTS = 3
"""Tries per Lambda call in all: botocore's standard retry mode backs off between them, as a
job's client would; a call throttled on every try is reported."""

# A call that failed this way will fail the same way again: no further calls.
_FINAL = (FunctionNotFoundError, AccessDeniedError, FunctionTimeoutError)

_LOCAL_NAME = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*\Z")
_LAMBDA_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}(:[A-Za-z0-9$_-]+)?\Z")

CONTRACT = "contract"
FIX_CONSTANT = (
    "score the answer (the last message, role assistant) against the reference answer "
    "(top-level reference_answer, or metadata.reference_answer): a correct answer must earn "
    "more than an empty or a wrong one"
)
FIX_IGNORES = (
    "read the model's answer from messages[-1]['content'] (the assistant turn) and score "
    "that, not only the prompt or the reference answer"
)
FIX_SEPARATION = (
    "reward a correct answer above an empty, a cut-off and a wrong one: check how the "
    "function compares the answer with reference_answer"
)


class ProbeProblem(BaseModel):
    """One reason the probe failed."""

    model_config = ConfigDict(extra="forbid")

    check: str
    """load, function_error, timeout, throttled, access_denied, not_found, invoke, contract,
    latency, constant_scores, ignores_response, separation, hyperpod_name or no_records."""
    message: str
    fix: str

    def line(self) -> str:
        return f"{self.check}: {self.message}; fix: {self.fix}"


class ProbeReport(BaseModel):
    """What the probe found; goes into the round record's ``probes`` as JSON."""

    model_config = ConfigDict(extra="forbid")

    function: str
    """The reward function as configured (Lambda ARN or name, or module:function)."""
    ok: bool
    problems: list[ProbeProblem] = []
    warnings: list[str] = []
    records: int = 0
    """RFT records sampled."""
    without_reference: int = 0
    """Sampled records with no reference_answer (they make no pairs)."""
    samples: int = 0
    """Samples sent, the starting model's answers included."""
    calls: int = 0
    failed_calls: int = 0
    """Calls that raised or answered outside the contract."""
    pairs: int = 0
    """(good, bad) pairs with both answers scored."""
    separated: int = 0
    """Pairs where the good answer scored above the bad one."""
    separation: float | None = None
    """separated / pairs; None without scored pairs."""
    min_separation: float = 0.9
    good_mean: float | None = None
    bad_mean: float | None = None
    latency_p50_s: float | None = None
    """Median seconds per call (calls the function ran)."""
    latency_max_s: float | None = None
    timeout_seconds: float = LAMBDA_TIME_LIMIT_SECONDS
    batch_size: int = 8
    concurrency_limit: int | None = None
    samples_per_second: float | None = None
    """What the function scores with ``concurrency_limit`` calls at a time, at median latency."""
    step_seconds: float | None = None
    """Seconds of reward calls in one RFT step of ``step_samples`` samples, at median latency
    and ``concurrency_limit`` calls at a time."""
    positive_fraction: float | None = None
    """Share of the starting model's answers with a reward above 0; None: not measured."""
    positive_answers: int = 0
    """The starting model's answers that were scored."""

    def reason(self) -> str:
        """One line: the first problem and its fix (what a failed round says), or a pass."""
        if not self.problems:
            shown = f"{self.separation:.0%}" if self.separation is not None else "not measured"
            return (
                f"reward function {self.function} passed its probe ({self.pairs} pairs, "
                f"separation {shown})"
            )
        first = self.problems[0]
        more = len(self.problems) - 1
        tail = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        return (
            f"reward function {self.function} failed its probe: {first.message}; fix: "
            f"{first.fix}{tail}"
        )


@dataclass
class ProbeSet:
    """The samples a probe sends and what each one is."""

    samples: list[dict[str, Any]] = field(default_factory=list)
    kinds: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Sample id -> (record id, kind: good, empty, truncated, other or start)."""
    pairs: list[tuple[str, str]] = field(default_factory=list)
    """(good sample id, bad sample id)."""
    records: int = 0
    without_reference: list[str] = field(default_factory=list)
    """Ids of the sampled records that have no reference answer."""

    def add(self, sample: dict[str, Any], record_id: str, kind: str) -> None:
        self.samples.append(sample)
        self.kinds[sample["id"]] = (record_id, kind)


# --- samples -------------------------------------------------------------------------------


def answer_text(reference: Any) -> str:
    """The text of a good answer for ``reference`` (see the module docstring for the rule)."""
    if isinstance(reference, str):
        return reference
    if isinstance(reference, dict):
        for name in ANSWER_FIELDS:
            value = reference.get(name)
            if isinstance(value, str) and value.strip():
                return value
            if isinstance(value, int | float) and not isinstance(value, bool):
                return json.dumps(value)
    return json.dumps(reference, separators=(",", ":"), ensure_ascii=False)


def _reference(record: Mapping[str, Any]) -> Any:
    """The record's reference answer, None when it has none (missing, null or blank)."""
    reference = record.get("reference_answer")
    if (
        reference is None
        or reference == {}
        or (isinstance(reference, str) and not reference.strip())
    ):
        return None
    return reference


def _prompt(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    # A dataset record holds `messages`; a record converted for the local trainer, `prompt`.
    messages = record.get("messages", record.get("prompt"))
    return list(messages) if isinstance(messages, list) else []


def _metadata(record: Mapping[str, Any]) -> dict[str, Any]:
    """The fields the RFT job passes in ``metadata``: a dataset record's extra top-level keys
    (a converted record already has them under ``metadata``)."""
    if "prompt" in record and isinstance(record.get("metadata"), dict):
        return dict(record["metadata"])
    known = {"id", "messages", "reference_answer", "tools"}
    return {key: value for key, value in record.items() if key not in known}


def _record_ids(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Each record's id (its position when it has none), made unique."""
    seen: dict[str, int] = {}
    ids = []
    for index, record in enumerate(records):
        base = str(record.get("id") or f"record-{index + 1}")
        count = seen.get(base, 0)
        seen[base] = count + 1
        ids.append(base if count == 0 else f"{base}-{count}")
    return ids


def build_probe_samples(records: Iterable[Mapping[str, Any]], sample: int) -> ProbeSet:
    """Good and bad samples from the first ``sample`` records (see the module docstring)."""
    chosen = list(_first(records, sample))
    goods = [None if (ref := _reference(r)) is None else answer_text(ref) for r in chosen]
    found = ProbeSet(records=len(chosen))
    for index, record_id in enumerate(_record_ids(chosen)):
        record, good = chosen[index], goods[index]
        if good is None:
            found.without_reference.append(record_id)
            _add(found, record, record_id, EMPTY, "")
            continue
        good_id = _add(found, record, record_id, GOOD, good)
        bads = {EMPTY: "", TRUNCATED: good[: len(good) // 2], OTHER: _other_answer(goods, index)}
        for kind, text in bads.items():
            if text is None or (kind == TRUNCATED and not text):
                continue  # no other answer; a cut that leaves the empty answer again
            if text.strip() == good.strip():
                continue  # not a bad answer for this record
            found.pairs.append((good_id, _add(found, record, record_id, kind, text)))
    return found


def _add(found: ProbeSet, record: Mapping[str, Any], record_id: str, kind: str, text: str) -> str:
    """Add the sample of ``record`` answered with ``text``; return its id."""
    sample_id = f"{record_id}/{kind}"
    sample = make_sample(sample_id, _prompt(record), text, _reference(record), _metadata(record))
    found.add(sample, record_id, kind)
    return sample_id


def _other_answer(goods: Sequence[str | None], index: int) -> str | None:
    """The next record's good text (wrapping around) that differs from record ``index``'s."""
    own = goods[index]
    for step in range(1, len(goods)):
        other = goods[(index + step) % len(goods)]
        if other is not None and own is not None and other.strip() != own.strip():
            return other
    return None


def _answer_samples(
    records: Sequence[Mapping[str, Any]], responses: Mapping[str, str], found: ProbeSet
) -> None:
    """The starting model's answer to each sampled record it answered, as START samples."""
    for record, record_id in zip(records, _record_ids(records), strict=True):
        text = responses.get(record_id)
        if text is None:
            continue
        _add(found, record, record_id, START, str(text))


def _inference_samples(rows: Iterable[Mapping[str, Any]], found: ProbeSet, limit: int) -> None:
    """START samples from an evaluation's inference output: ``{"prompt", "inference", "gold",
    "metadata"}`` rows, the prompt a text (the user turn) or a list of messages."""
    for index, row in enumerate(rows):
        if index >= limit:
            break
        prompt = row.get("prompt")
        messages = (
            prompt if isinstance(prompt, list) else [{"role": "user", "content": str(prompt or "")}]
        )
        answer = row.get("inference")
        if isinstance(answer, list):  # some evaluation outputs list the sampled answers
            answer = answer[0] if answer else ""
        metadata = row.get("metadata")
        record_id = f"answer-{index + 1}"
        sample_id = f"{record_id}/{START}"
        found.add(
            make_sample(
                sample_id,
                messages,
                "" if answer is None else str(answer),
                row.get("gold"),
                dict(metadata) if isinstance(metadata, dict) else {},
            ),
            record_id,
            START,
        )


# --- calls ---------------------------------------------------------------------------------


@dataclass
class _Call:
    """One batch sent to the function."""

    ids: list[str]
    seconds: float | None = None
    """How long the function ran; None when it did not run (throttled, not found, ...)."""
    results: list[RewardResult] | None = None
    error: InvokeError | None = None
    contract: RewardOutputError | None = None


def _send(invoke: Invoke, batch: list[dict[str, Any]], clock: Callable[[], float]) -> _Call:
    call = _Call([sample["id"] for sample in batch])
    started = clock()
    try:
        output = invoke(batch)
    except InvokeError as exc:
        call.error = exc
        if isinstance(exc, FunctionError | FunctionTimeoutError):
            call.seconds = clock() - started
        return call
    except Exception as exc:  # an invoker's own failure still makes a readable problem
        call.error = InvokeError(
            f"calling the function failed: {type(exc).__name__}: {exc}",
            "check that the function exists and can be called from here",
        )
        return call
    call.seconds = clock() - started
    try:
        call.results = validate_output(output, call.ids)
    except RewardOutputError as exc:
        call.contract = exc
    return call


def _run(
    invoke: Invoke,
    samples: Sequence[dict[str, Any]],
    batch_size: int,
    concurrency: int | None,
    clock: Callable[[], float],
) -> list[_Call]:
    """Send ``samples`` in batches, ``concurrency`` calls at a time, until done or a call fails
    in a way that every further call would (see _FINAL)."""
    batches = [list(samples[i : i + batch_size]) for i in range(0, len(samples), batch_size)]
    workers = max(1, min(concurrency or 1, len(batches)))
    calls: list[_Call] = []
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="reward-probe") as pool:
        for start in range(0, len(batches), workers):
            wave = batches[start : start + workers]
            calls.extend(pool.map(lambda batch: _send(invoke, batch, clock), wave))
            if any(isinstance(call.error, _FINAL) for call in calls):
                break
    return calls


# --- the probe -----------------------------------------------------------------------------


def probe(
    invoke: Invoke,
    records: Iterable[Mapping[str, Any]],
    settings: RewardProbe,
    *,
    function: str = "",
    concurrency_limit: int | None = None,
    responses: Mapping[str, str] | None = None,
    inference_outputs: Iterable[Mapping[str, Any]] | None = None,
    hyperpod: bool = False,
    step_samples: int | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> ProbeReport:
    """Try the reward function behind ``invoke`` on the first ``settings.sample`` records.

    ``function`` names it in the report; ``concurrency_limit`` is the job's
    ``lambda_concurrency_limit`` (calls at a time); ``responses`` (record id -> the starting
    model's answer) or ``inference_outputs`` (an evaluation's inference output rows) measure the
    share of positive rewards; ``hyperpod`` applies HyperPod's naming rule to a Lambda;
    ``step_samples`` (prompts per step x generations per prompt) sizes one RFT step's reward
    calls."""
    chosen = list(_first(records, settings.sample))
    found = build_probe_samples(chosen, settings.sample)
    if responses:
        _answer_samples(chosen, responses, found)
    if inference_outputs is not None:
        _inference_samples(inference_outputs, found, POSITIVE_SHARE_ANSWERS)
    report = ProbeReport(
        function=function,
        ok=False,
        records=found.records,
        without_reference=len(found.without_reference),
        samples=len(found.samples),
        min_separation=settings.min_separation,
        timeout_seconds=settings.timeout_seconds,
        batch_size=settings.batch_size,
        concurrency_limit=concurrency_limit,
    )
    if not found.samples:
        report.problems.append(
            ProbeProblem(
                check="no_records",
                message="the RFT data holds no records to try the function on",
                fix="point the stage at an RFT dataset with records",
            )
        )
        return _finish(report, function, hyperpod)
    calls = _run(invoke, found.samples, settings.batch_size, concurrency_limit, clock)
    _judge_calls(calls, report)
    _judge_latency(calls, settings, report, step_samples)
    scores = {r.id: r.score for call in calls for r in call.results or ()}
    _judge_scores(found, scores, settings, report)
    _judge_positive(found, scores, report)
    return _finish(report, function, hyperpod)


def _first(records: Iterable[Mapping[str, Any]], count: int) -> Iterable[Mapping[str, Any]]:
    for index, record in enumerate(records):
        if index >= count:
            return
        yield record


def _finish(report: ProbeReport, function: str, hyperpod: bool) -> ProbeReport:
    if hyperpod:  # last: what the calls showed comes first
        _hyperpod_name(function, report)
    report.ok = not report.problems
    return report


def _hyperpod_name(function: str, report: ProbeReport) -> None:
    if function_kind(function) != "lambda":
        return
    name = _function_name(function)
    if "SageMaker" not in name:
        report.problems.append(
            ProbeProblem(
                check="hyperpod_name",
                message=f"Lambda function name {name!r} must contain 'SageMaker' for RFT on "
                "HyperPod (the cluster's execution role may only invoke functions named that way)",
                fix=f"deploy the function as e.g. 'SageMaker-{name}' and use that ARN",
            )
        )


def _judge_calls(calls: Sequence[_Call], report: ProbeReport) -> None:
    """One problem per kind of failure, with the first message of that kind and how often."""
    report.calls = len(calls)
    failed = [call for call in calls if call.error is not None or call.contract is not None]
    report.failed_calls = len(failed)
    firsts: dict[str, tuple[str, str, int]] = {}
    for call in failed:
        if call.error is not None:
            check, message, fix = call.error.check, call.error.message, call.error.fix
        else:
            assert call.contract is not None
            problem = call.contract.problems[0]
            check, message, fix = CONTRACT, f"output {problem.message}", problem.fix or ""
        if check in firsts:
            first_message, first_fix, count = firsts[check]
            firsts[check] = (first_message, first_fix, count + 1)
        else:
            firsts[check] = (message, fix, 1)
    for check, (message, fix, count) in firsts.items():
        if len(calls) > 1:
            message += f" ({count} of {len(calls)} calls)"
        report.problems.append(ProbeProblem(check=check, message=message, fix=fix))


def _judge_latency(
    calls: Sequence[_Call], settings: RewardProbe, report: ProbeReport, step_samples: int | None
) -> None:
    timed = [call.seconds for call in calls if call.seconds is not None]
    if not timed:
        return
    p50, slowest = statistics.median(timed), max(timed)
    report.latency_p50_s, report.latency_max_s = round(p50, 6), round(slowest, 6)
    limit = settings.timeout_seconds
    timed_out = any(isinstance(call.error, FunctionTimeoutError) for call in calls)
    if slowest > limit and not timed_out:
        report.problems.append(
            ProbeProblem(
                check="latency",
                message=f"the slowest call took {slowest:.1f} s, over the {limit:g} s limit "
                "(reward_probe.timeout_seconds)",
                fix="make the function faster (a call scores a whole batch and must finish "
                "well within the 15-minute Lambda limit)",
            )
        )
    elif slowest > limit / 2 and not timed_out:
        report.warnings.append(
            f"the slowest call took {slowest:.1f} s, over half the {limit:g} s limit: a larger "
            "batch or a busier function may time out"
        )
    if report.concurrency_limit and p50 > 0:
        report.samples_per_second = round(report.concurrency_limit * settings.batch_size / p50, 6)
        if step_samples:
            batches = math.ceil(step_samples / settings.batch_size)
            report.step_seconds = round(math.ceil(batches / report.concurrency_limit) * p50, 6)


def _judge_scores(
    found: ProbeSet, scores: Mapping[str, float], settings: RewardProbe, report: ProbeReport
) -> None:
    pairs = [(g, b) for g, b in found.pairs if g in scores and b in scores]
    report.pairs = len(pairs)
    report.separated = sum(scores[g] > scores[b] for g, b in pairs)
    goods = [scores[i] for i, (_, kind) in found.kinds.items() if kind == GOOD and i in scores]
    bads = [scores[b] for _, b in found.pairs if b in scores]
    report.good_mean = round(statistics.fmean(goods), 6) if goods else None
    report.bad_mean = round(statistics.fmean(bads), 6) if bads else None
    if found.without_reference:
        shown = ", ".join(found.without_reference[:3]) + (
            " ..." if len(found.without_reference) > 3 else ""
        )
        if found.pairs:
            count = len(found.without_reference)
            report.warnings.append(
                f"{count} of {found.records} sampled records {'has' if count == 1 else 'have'} "
                f"no reference_answer ({shown}): they make no good/bad pairs"
            )
        else:
            report.warnings.append(
                f"none of the {found.records} sampled records has a reference_answer: good and "
                "bad answers could not be compared (only errors, the output contract and "
                "latency were checked)"
            )
    if pairs:
        report.separation = round(report.separated / len(pairs), 6)
    # Judged on the samples of records with a reference answer: without one, every sample
    # is an empty answer, which a sound function scores alike.
    probed = goods + bads
    if pairs and len(set(probed)) == 1:
        value = probed[0]
        label = " (scores everything 0)" if value == 0 else ""
        report.problems.append(
            ProbeProblem(
                check="constant_scores",
                message=f"scores every one of the {len(probed)} samples {value:g}{label}: good "
                "and bad answers alike",
                fix=FIX_CONSTANT,
            )
        )
        return
    if not pairs:
        return
    if all(scores[g] == scores[b] for g, b in pairs):
        report.problems.append(
            ProbeProblem(
                check="ignores_response",
                message=f"scores the reference answer and the corrupted answers of each record "
                f"the same ({len(pairs)} pairs): it does not read the response",
                fix=FIX_IGNORES,
            )
        )
        return
    assert report.separation is not None
    if report.separation < settings.min_separation:
        worst = next((g, b) for g, b in pairs if scores[g] <= scores[b])
        record_id, kind = found.kinds[worst[1]]
        report.problems.append(
            ProbeProblem(
                check="separation",
                message=f"the reference answer scored above the corrupted one on "
                f"{report.separation:.0%} of {len(pairs)} pairs (needs "
                f"{settings.min_separation:.0%}); e.g. record {record_id}: reference "
                f"{scores[worst[0]]:g}, {kind} answer {scores[worst[1]]:g}",
                fix=FIX_SEPARATION,
            )
        )


def _judge_positive(found: ProbeSet, scores: Mapping[str, float], report: ProbeReport) -> None:
    started = [scores[i] for i, (_, kind) in found.kinds.items() if kind == START and i in scores]
    report.positive_answers = len(started)
    if not started:
        return
    report.positive_fraction = round(sum(score > 0 for score in started) / len(started), 6)
    advice = rft_readiness(report.positive_fraction)
    if advice is not None:
        report.warnings.append(
            f"{advice} (reward_probe.low_positive_rewards: sft_only runs only the SFT stages "
            "until it changes)"
        )


def positive_fraction_of(
    invoke: Invoke,
    inference_outputs: Iterable[Mapping[str, Any]],
    *,
    batch_size: int = 8,
    concurrency_limit: int | None = None,
    limit: int = POSITIVE_SHARE_ANSWERS,
    clock: Callable[[], float] = time.monotonic,
) -> float | None:
    """The share of an evaluation's answers (its ``inference_output.jsonl`` rows, the first
    ``limit``) that the reward function scores above 0, with ``gold`` as the reference answer;
    None when it scored none of them. Failed calls leave their answers out."""
    found = ProbeSet()
    _inference_samples(inference_outputs, found, limit)
    calls = _run(invoke, found.samples, batch_size, concurrency_limit, clock)
    scores = [r.score for call in calls for r in call.results or ()]
    return sum(score > 0 for score in scores) / len(scores) if scores else None


def load_failure(function: str, message: str, fix: str, settings: RewardProbe) -> ProbeReport:
    """The report of a probe whose function could not even be loaded."""
    return ProbeReport(
        function=function,
        ok=False,
        problems=[ProbeProblem(check="load", message=message, fix=fix)],
        min_separation=settings.min_separation,
        timeout_seconds=settings.timeout_seconds,
        batch_size=settings.batch_size,
    )


# --- naming and the Lambda API ---------------------------------------------------------------


def function_kind(function: str) -> Literal["lambda", "local"]:
    """``lambda`` for a Lambda ARN or function name, ``local`` for ``module:function``.

    A ``name:qualifier`` whose parts both look like Python names reads as module:function: give
    such a Lambda by its ARN. ConfigError for anything else."""
    if function.startswith("arn:"):
        if LAMBDA_ARN.match(function):
            return "lambda"
    elif _LOCAL_NAME.match(function):
        return "local"
    elif _LAMBDA_NAME.match(function):
        return "lambda"
    raise ConfigError(
        [
            Problem(
                "function",
                f"{function!r} is neither a Lambda function nor a Python callable",
                allowed="arn:aws:lambda:<region>:<account-id>:function:<name>, a function "
                "name, or module:function",
                fix="give the reward Lambda's ARN, or a local function as module:function",
            )
        ]
    )


def lambda_client_config(timeout_seconds: float, attempts: int = LAMBDA_ATTEMPTS) -> dict[str, Any]:
    """botocore ``Config`` arguments for the Lambda client a probe calls through."""
    return {
        "read_timeout": timeout_seconds + LAMBDA_READ_MARGIN_S,
        "connect_timeout": LAMBDA_CONNECT_TIMEOUT_S,
        "retries": {"total_max_attempts": attempts, "mode": "standard"},
    }


def lambda_api_invoker(
    send: Callable[[bytes], Mapping[str, Any]],
    function: str,
    *,
    timeout_seconds: float,
    conn_id: str | None = None,
) -> Invoke:
    """An Invoke over the Lambda ``Invoke`` API (RequestResponse).

    ``send(payload)`` makes the call and returns the client's response (``Payload`` a stream or
    bytes, ``FunctionError`` set when the function failed) or raises the client's error;
    ``conn_id`` names the connection in access errors; ``timeout_seconds`` is the probe's time
    limit (the client waits a margin longer), for the message when the client gives up."""

    def invoke(batch: list[dict[str, Any]]) -> Any:
        payload = json.dumps(batch).encode()
        try:
            response = send(payload)
        except Exception as exc:
            raise lambda_call_error(
                exc, function, len(batch), timeout_seconds + LAMBDA_READ_MARGIN_S, conn_id
            ) from None
        return read_lambda_response(response, function, len(batch))

    return invoke


def read_lambda_response(response: Mapping[str, Any], function: str, size: int) -> Any:
    """The function's output from an Invoke response; FunctionError or FunctionTimeoutError
    when the response carries a function error (``X-Amz-Function-Error``)."""
    body = response.get("Payload", b"")
    raw = body.read() if hasattr(body, "read") else body
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw or "")
    if response.get("FunctionError"):
        raise _function_error(text, function, size)
    try:
        return json.loads(text)
    except ValueError:
        raise RewardOutputError(
            [
                Problem(
                    "",
                    f"is not JSON ({_clipped(text, 120)!r})",
                    fix="return the list of results itself (the handler's return value), not text",
                )
            ]
        ) from None


def _function_error(text: str, function: str, size: int) -> InvokeError:
    try:
        detail = json.loads(text)
    except ValueError:
        detail = {"errorMessage": text}
    if not isinstance(detail, dict):
        detail = {"errorMessage": str(detail)}
    message = _clipped(str(detail.get("errorMessage", "")))
    kind = str(detail.get("errorType", "") or "Unhandled")
    name = _function_name(function)
    if "Task timed out" in message or kind == "Sandbox.Timedout":
        return FunctionTimeoutError(
            f"{function} timed out on a batch of {size} ({message})",
            "make the function faster, or raise its timeout (at most 15 minutes): it must "
            "score a batch well within its time limit",
        )
    if kind == "Runtime.OutOfMemory" or "out of memory" in message.lower():
        return FunctionError(
            f"{function} ran out of memory ({message})",
            "raise the function's memory size, or keep less in memory per sample",
        )
    return FunctionError(
        f"{function} failed with {kind}: {message}",
        "make the function handle every sample (catch what it cannot score and give it 0); "
        f"its CloudWatch log group /aws/lambda/{name} holds the stack trace",
    )


def lambda_call_error(
    exc: BaseException, function: str, size: int, timeout_seconds: float, conn_id: str | None
) -> InvokeError:
    """The InvokeError for an exception the Lambda client raised (botocore's, read by their
    names and ``response``, so that this module needs no botocore)."""
    response = getattr(exc, "response", None)
    if isinstance(response, Mapping):
        error = response.get("Error") or {}
        code = str(error.get("Code", ""))
        message = _clipped(str(error.get("Message", "")))
        status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        return _client_error(code, message, status, function, size, conn_id)
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & {"ReadTimeoutError", "ConnectTimeoutError"}:
        return FunctionTimeoutError(
            f"no answer from {function} within {timeout_seconds:g} s for a batch of {size}",
            "make the function faster (a batch must be scored well within the 15-minute "
            "Lambda limit)",
        )
    if "NoCredentialsError" in names:
        return InvokeError(
            f"no AWS credentials to invoke {function}",
            "set the connection's credentials or role (--aws-conn-id), or AWS_PROFILE",
        )
    if names & {"EndpointConnectionError", "ConnectionError"}:
        return InvokeError(
            f"cannot reach the Lambda endpoint for {function} ({_clipped(str(exc))})",
            "check the region and the network path to Lambda (and endpoint_url, if set)",
        )
    return InvokeError(
        f"invoking {function} failed: {type(exc).__name__}: {_clipped(str(exc))}",
        "check the function name, region and credentials",
    )


def _client_error(
    code: str,
    message: str,
    status: Any,
    function: str,
    size: int,
    conn_id: str | None,
) -> InvokeError:
    if code == "TooManyRequestsException" or status == 429:
        return ThrottledError(
            f"Lambda throttled the call to {function} ({code or status}: {message})",
            "raise lambda_concurrency_limit or the function's reserved concurrency (or ask for "
            "a higher Lambda concurrency quota)",
        )
    if code in ("AccessDeniedException", "AccessDenied") or status == 403:
        who = f"connection {conn_id!r}" if conn_id else "the default AWS credentials"
        return AccessDeniedError(
            f"may not invoke {function} ({code}: {message})",
            f"allow lambda:InvokeFunction on {function} for the role of {who}, and for the "
            "training job's execution role",
        )
    if code == "ResourceNotFoundException" or status == 404:
        return FunctionNotFoundError(
            f"no Lambda function {function} ({message})",
            "check the ARN's region, account and name, or deploy the function",
        )
    if code == "RequestEntityTooLargeException" or status == 413:
        return InvokeError(
            f"a batch of {size} samples is larger than Lambda takes ({message})",
            "lower reward_probe.batch_size (the job's batches must fit the 6 MB Lambda payload "
            "limit too)",
        )
    return InvokeError(
        f"invoking {function} failed: {code or status}: {message}",
        "check the function name, region and credentials",
    )


def _function_name(function: str) -> str:
    match = LAMBDA_ARN.match(function)
    return match.group("name") if match else function.partition(":")[0]


def _clipped(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
