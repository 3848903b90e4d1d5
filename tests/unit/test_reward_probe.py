"""The reward-function probe: good and bad answers, the output contract, errors, latency,
separation and the starting model's share of positive rewards.

Reward functions are real Python functions (`fakes.reward_functions`), called in-process through
`local_invoker` or, for the Lambda path, behind a fake Lambda endpoint over real HTTP
(`fakes.lambda_server`) through the Amazon provider's LambdaHook and the real boto3 client, with
an Airflow connection from the environment.
"""

from __future__ import annotations

import itertools
import json
import math
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from fakes import reward_functions
from fakes.lambda_server import FakeLambda, fake_lambda
from tuneloop.config.monitoring import RewardProbe
from tuneloop.errors import ConfigError
from tuneloop.local.rewards import RewardLoadError, local_invoker
from tuneloop.pipeline.reward_lambda import lambda_invoker, run_probe
from tuneloop.rounds.reward_probe import (
    FunctionError,
    FunctionNotFoundError,
    FunctionTimeoutError,
    InvokeError,
    ProbeReport,
    ThrottledError,
    answer_text,
    build_probe_samples,
    function_kind,
    lambda_api_invoker,
    positive_fraction_of,
    probe,
)

FUNCTIONS = "fakes.reward_functions"
SECRET = "probe-secret-key-never-shown"
CONN_ID = "probe_lambda"


def record(rid: str, question: str, reference: Any = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": rid,
        "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": question},
        ],
        **extra,
    }
    if reference is not None:
        out["reference_answer"] = reference
    return out


RECORDS = [
    record("r1", "2 + 2?", "four", topic="math"),
    record("r2", "Capital of France?", {"answer": "Paris", "why": "it is"}),
    record("r3", "Largest planet?", "Jupiter"),
    record("r4", "Colour of the sky?", "blue"),
]


@pytest.fixture(autouse=True)
def release_slow_calls() -> Iterator[None]:
    """Calls held by `reward_functions.slow` return when the test ends."""
    reward_functions.RELEASE.clear()
    yield
    reward_functions.RELEASE.set()


def settings(**changes: Any) -> RewardProbe:
    return RewardProbe(**{"batch_size": 4, **changes})


def local(name: str, timeout: float = 5.0) -> Any:
    return local_invoker(f"{FUNCTIONS}:{name}", timeout)


# --- samples -------------------------------------------------------------------------------


def test_each_record_makes_a_good_answer_and_bad_ones() -> None:
    found = build_probe_samples([*RECORDS, record("r5", "No reference?")], sample=10)

    by_id = {s["id"]: s for s in found.samples}
    assert found.kinds["r1/good"] == ("r1", "good")
    assert [k for rid, k in found.kinds.values() if rid == "r1"] == [
        "good",
        "empty",
        "truncated",
        "other",
    ]
    good = by_id["r1/good"]
    # As the RFT job sends it: the prompt, the answer as the assistant turn, the reference at
    # the top level and under metadata with the record's extra fields.
    assert good["messages"][-1] == {"role": "assistant", "content": "four"}
    assert good["messages"][:2] == RECORDS[0]["messages"]
    assert good["reference_answer"] == "four"
    assert good["metadata"] == {"topic": "math", "reference_answer": "four"}
    assert by_id["r1/truncated"]["messages"][-1]["content"] == "fo"
    assert by_id["r1/other"]["messages"][-1]["content"] == "Paris"
    assert by_id["r1/empty"]["messages"][-1]["content"] == ""
    # An object reference: its answer field is the good text.
    assert by_id["r2/good"]["messages"][-1]["content"] == "Paris"
    # A record without a reference makes no pair, and sends one empty answer.
    assert found.without_reference == ["r5"]
    assert [k for rid, k in found.kinds.values() if rid == "r5"] == ["empty"]
    assert ("r1/good", "r1/truncated") in found.pairs
    assert all(not bad.startswith("r5") for _, bad in found.pairs)
    assert found.records == 5


def test_only_the_first_records_are_sampled_and_ids_stay_unique() -> None:
    twins = [record("same", "a?", "yes"), record("same", "b?", "no"), record("", "c?", "maybe")]

    found = build_probe_samples([*twins, *RECORDS], sample=3)

    assert found.records == 3
    assert sorted({rid for rid, _ in found.kinds.values()}) == ["record-3", "same", "same-1"]


@pytest.mark.parametrize(
    ("reference", "text"),
    [
        ("x = 4", "x = 4"),
        ({"solution": "x = 4", "steps": ["2x = 8"]}, "x = 4"),
        ({"answer": 42}, "42"),
        ({"compliant": "No", "explanation": "none"}, '{"compliant":"No","explanation":"none"}'),
        (["a", "b"], '["a","b"]'),
    ],
)
def test_good_text_of_a_reference_answer(reference: Any, text: str) -> None:
    assert answer_text(reference) == text


def test_a_one_character_answer_is_not_cut_into_the_empty_answer_again() -> None:
    found = build_probe_samples([record("a", "1 + 3?", "4"), record("b", "1 + 1?", "2")], 2)

    assert [k for rid, k in found.kinds.values() if rid == "a"] == ["good", "empty", "other"]


# --- a sound function ----------------------------------------------------------------------


def test_good_function_passes_and_the_report_round_trips() -> None:
    report = probe(local("good"), RECORDS, settings(), function=f"{FUNCTIONS}:good")

    assert report.ok, report.problems
    assert report.problems == []
    assert report.pairs == 12 and report.separated == 12 and report.separation == 1.0
    assert report.good_mean == 1.0 and report.bad_mean == 0.0
    assert report.samples == 16 and report.calls == 4 and report.failed_calls == 0
    assert report.latency_p50_s is not None and report.latency_max_s is not None
    assert report.positive_fraction is None
    assert "passed its probe" in report.reason()
    assert ProbeReport.model_validate_json(report.model_dump_json()) == report
    assert ProbeReport.model_validate(json.loads(report.model_dump_json())).ok


def test_lambda_style_handler_is_called_with_event_and_context() -> None:
    report = probe(local("lambda_handler"), RECORDS, settings())

    assert report.ok and report.separation == 1.0


# --- bad functions -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "check", "says", "fix"),
    [
        ("raises", "function_error", "raised KeyError: 'answer_key'", "catch what it cannot"),
        ("wrong_shape", "contract", "output returned dict, not a list", "JSON list"),
        ("missing_ids", "contract", "no answer for 3 of 4 ids", "one entry for every"),
        ("nan_score", "contract", "aggregate_reward_score is nan", "finite number"),
        ("scores_zero", "constant_scores", "scores everything 0", "reference answer"),
        ("ignores_response", "ignores_response", "does not read the response", "messages[-1]"),
        ("non_empty", "separation", "on 33% of 12 pairs (needs 90%)", "cut-off"),
    ],
)
def test_bad_function_gets_a_problem_that_names_it_and_the_fix(
    name: str, check: str, says: str, fix: str
) -> None:
    report = probe(local(name), RECORDS, settings(), function=f"{FUNCTIONS}:{name}")

    assert not report.ok
    first = report.problems[0]
    assert first.check == check
    assert says in first.message
    assert fix in first.fix
    reason = report.reason()
    assert says in reason and f"fix: {first.fix}" in reason
    assert "\n" not in reason


def test_function_that_times_out_gets_no_further_calls() -> None:
    report = probe(local("slow", timeout=0.2), RECORDS, settings(timeout_seconds=0.2))

    assert not report.ok
    assert report.problems[0].check == "timeout"
    assert "within 0.2 s" in report.problems[0].message
    assert "faster" in report.problems[0].fix
    # One call timed out; the three other batches were not sent.
    assert report.calls == 1


def test_throttled_call_names_the_concurrency_fix() -> None:
    def throttled(payload: bytes) -> Any:
        raise ClientError(
            {
                "Error": {"Code": "TooManyRequestsException", "Message": "Rate Exceeded."},
                "ResponseMetadata": {"HTTPStatusCode": 429},
            },
            "Invoke",
        )

    invoke = lambda_api_invoker(throttled, "reward-fn", timeout_seconds=60)
    report = probe(invoke, RECORDS, settings(), function="reward-fn")

    assert not report.ok
    first = report.problems[0]
    assert first.check == "throttled"
    assert "(4 of 4 calls)" in first.message
    assert "lambda_concurrency_limit" in first.fix and "reserved concurrency" in first.fix


def test_an_invoker_that_fails_unexpectedly_is_still_a_readable_problem() -> None:
    def broken(batch: list[dict[str, Any]]) -> Any:
        raise RuntimeError("socket closed")

    report = probe(broken, RECORDS[:1], settings())

    assert report.problems[0].check == "invoke"
    assert "RuntimeError: socket closed" in report.problems[0].message


def test_a_function_that_cannot_be_loaded() -> None:
    with pytest.raises(RewardLoadError, match="cannot import module"):
        local_invoker("no_such_module_here:reward", 1.0)
    with pytest.raises(RewardLoadError, match="not callable"):
        local_invoker(f"{FUNCTIONS}:not_callable", 1.0)

    report = run_probe(
        "no_such_module_here:reward",
        RECORDS,
        settings(),
        backend_type="local",
        aws_conn_id=None,
        concurrency_limit=None,
    )

    assert not report.ok and report.problems[0].check == "load"
    assert "no_such_module_here" in report.reason() and "module:function" in report.reason()


def test_no_records_to_try() -> None:
    report = probe(local("good"), [], settings())

    assert not report.ok and report.problems[0].check == "no_records"


def test_records_without_reference_answers_check_only_the_contract() -> None:
    report = probe(local("good"), [record("a", "q?"), record("b", "p?")], settings())

    assert report.ok
    assert report.pairs == 0 and report.separation is None
    assert "none of the 2 sampled records has a reference_answer" in report.warnings[0]


# --- latency and concurrency ---------------------------------------------------------------


def stepping_clock(seconds_per_call: float) -> Any:
    """A clock for one call at a time: each call reads it twice, `seconds_per_call` apart."""
    ticks = itertools.count()
    return lambda: next(ticks) * seconds_per_call


def test_a_call_over_the_time_limit_fails_and_over_half_warns() -> None:
    slow_report = probe(
        local("good"), RECORDS, settings(timeout_seconds=100), clock=stepping_clock(120)
    )
    half_report = probe(
        local("good"), RECORDS, settings(timeout_seconds=100), clock=stepping_clock(60)
    )

    assert slow_report.problems[0].check == "latency"
    assert "took 120.0 s, over the 100 s limit" in slow_report.problems[0].message
    assert half_report.ok
    assert half_report.latency_p50_s == 60 and half_report.latency_max_s == 60
    assert any("over half the 100 s limit" in w for w in half_report.warnings)


def test_calls_run_concurrency_limit_at_a_time() -> None:
    both_in_flight = threading.Barrier(2, timeout=10)
    good = local("good")

    def invoke(batch: list[dict[str, Any]]) -> Any:
        both_in_flight.wait()  # breaks unless two calls are in flight together
        return good(batch)

    report = probe(invoke, RECORDS, settings(), concurrency_limit=2, step_samples=64)

    assert report.ok, report.problems
    assert report.calls == 4 and report.concurrency_limit == 2
    assert report.latency_p50_s is not None and report.samples_per_second is not None
    # 64 samples = 16 batches of 4, two at a time: 8 rounds of calls.
    assert report.step_seconds == pytest.approx(8 * report.latency_p50_s, rel=1e-3, abs=1e-5)


# --- the starting model's positive rewards --------------------------------------------------


def test_share_of_positive_rewards_of_the_starting_model() -> None:
    right_once = {"r1": "four", "r2": "Lyon", "r3": "Saturn", "r4": "green"}
    never = {"r1": "five", "r2": "Lyon"}

    measured = probe(local("good"), RECORDS, settings(), responses=right_once)
    low = probe(local("good"), RECORDS, settings(), responses=never)

    assert measured.ok and measured.positive_fraction == 0.25 and measured.positive_answers == 4
    assert not any("SFT first" in w for w in measured.warnings)
    # Under 5%: advice, not a failed probe (the gate acts on it).
    assert low.ok and low.positive_fraction == 0.0
    assert any("SFT first" in w and "sft_only" in w for w in low.warnings)


def test_positive_fraction_of_an_evaluation_output() -> None:
    rows: list[dict[str, Any]] = [
        {"prompt": "2 + 2?", "inference": "four", "gold": "four", "metadata": None},
        {"prompt": "Capital?", "inference": ["Paris"], "gold": {"answer": "Paris"}},
        {"prompt": [{"role": "user", "content": "Sky?"}], "inference": "red", "gold": "blue"},
        {"prompt": "Planet?", "inference": "Mars", "gold": "Jupiter", "metadata": {"k": 1}},
    ]

    assert positive_fraction_of(local("good"), rows, batch_size=3) == 0.5
    assert positive_fraction_of(local("raises"), rows) is None

    report = probe(local("good"), RECORDS, settings(), inference_outputs=rows)
    assert report.positive_fraction == 0.5 and report.positive_answers == 4


# --- naming --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("function", "kind"),
    [
        ("arn:aws:lambda:us-east-1:123456789012:function:SageMaker-reward", "lambda"),
        ("arn:aws:lambda:us-east-1:123456789012:function:SageMaker-reward:prod", "lambda"),
        ("SageMaker-reward", "lambda"),
        ("my-reward:live", "lambda"),
        ("tuneloop.local.demo_task:reward", "local"),
        ("rewards:score", "local"),
    ],
)
def test_function_kind(function: str, kind: str) -> None:
    assert function_kind(function) == kind


@pytest.mark.parametrize("function", ["", "reward fn", "arn:aws:s3:::bucket", "a:b:c:d"])
def test_a_name_that_is_neither_is_a_config_error(function: str) -> None:
    with pytest.raises(ConfigError, match="neither a Lambda function nor a Python callable"):
        function_kind(function)


def test_hyperpod_lambda_name_must_contain_sagemaker() -> None:
    arn = "arn:aws:lambda:us-east-1:123456789012:function:reward-fn"

    named = probe(local("good"), RECORDS, settings(), function=arn, hyperpod=True)
    right = probe(
        local("good"),
        RECORDS,
        settings(),
        function=arn.replace("reward-fn", "SageMaker-r"),
        hyperpod=True,
    )
    local_fn = probe(
        local("good"), RECORDS, settings(), function=f"{FUNCTIONS}:good", hyperpod=True
    )

    assert [p.check for p in named.problems] == ["hyperpod_name"]
    assert "'SageMaker-reward-fn'" in named.problems[0].fix
    assert right.ok and local_fn.ok


# --- the Lambda path: real boto3 through LambdaHook, against a fake Lambda over HTTP ---------


@pytest.fixture
def lambdas(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeLambda]:
    """The fake Lambda and an Airflow connection to it, given by the environment as a
    deployment would (credentials included, which must never show)."""
    with fake_lambda() as fake:
        connection = {
            "conn_type": "aws",
            "login": "AKIAPROBEEXAMPLE",
            "password": SECRET,
            "extra": {"endpoint_url": fake.url, "region_name": "us-east-1"},
        }
        monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(connection))
        yield fake


def lambda_probe(function: str, *, attempts: int = 1, **options: Any) -> ProbeReport:
    invoke = lambda_invoker(function, aws_conn_id=CONN_ID, timeout_seconds=30, attempts=attempts)
    return probe(invoke, RECORDS, settings(), function=function, **options)


def test_good_lambda_passes(lambdas: FakeLambda, capsys: pytest.CaptureFixture[str]) -> None:
    arn = lambdas.add("SageMaker-good", reward_functions.lambda_handler)

    report = run_probe(
        arn,
        RECORDS,
        settings(),
        backend_type="hyperpod",
        aws_conn_id=CONN_ID,
        concurrency_limit=2,
    )

    assert report.ok, report.problems
    assert report.separation == 1.0 and report.calls == 4
    # The batches arrived as the job sends them.
    payloads = lambdas.functions["SageMaker-good"].payloads
    assert sorted(len(p) for p in payloads) == [4, 4, 4, 4]
    first = next(s for p in payloads for s in p if s["id"] == "r2/good")
    assert first["messages"][-1] == {"role": "assistant", "content": "Paris"}
    assert first["metadata"]["reference_answer"] == {"answer": "Paris", "why": "it is"}
    # Credentials never show, in the report or in what was printed.
    captured = capsys.readouterr()
    assert SECRET not in report.model_dump_json()
    assert SECRET not in captured.out + captured.err


def test_lambda_function_error(lambdas: FakeLambda) -> None:
    arn = lambdas.add("reward-raises", reward_functions.raises)

    report = lambda_probe(arn)

    first = report.problems[0]
    assert first.check == "function_error"
    assert "failed with KeyError: 'answer_key'" in first.message
    assert "/aws/lambda/reward-raises" in first.fix


def test_lambda_timeout(lambdas: FakeLambda) -> None:
    arn = lambdas.add("reward-slow", reward_functions.slow, timeout=0.2)

    report = lambda_probe(arn)

    first = report.problems[0]
    assert first.check == "timeout"
    assert "Task timed out after 0.20 seconds" in first.message
    assert "raise its timeout" in first.fix
    assert report.calls == 1


def test_lambda_throttled_when_reserved_concurrency_is_zero(lambdas: FakeLambda) -> None:
    arn = lambdas.add("reward-throttled", reward_functions.good, concurrency=0)

    report = lambda_probe(arn)

    first = report.problems[0]
    assert first.check == "throttled"
    assert "TooManyRequestsException" in first.message
    assert "raise lambda_concurrency_limit or the function's reserved concurrency" in first.fix


def test_lambda_throttled_above_its_concurrency(lambdas: FakeLambda) -> None:
    def hold_until_throttled(event: list[dict[str, Any]]) -> list[dict[str, Any]]:
        lambdas.throttled.wait(timeout=10)  # the second call at once is refused
        return reward_functions.good(event)

    arn = lambdas.add("reward-one-at-a-time", hold_until_throttled, concurrency=1)

    report = lambda_probe(arn, concurrency_limit=2)

    assert lambdas.throttled.is_set()
    assert [p.check for p in report.problems] == ["throttled"]
    assert report.failed_calls >= 1 and report.failed_calls < report.calls


def test_missing_lambda_gets_one_call(lambdas: FakeLambda) -> None:
    report = lambda_probe("arn:aws:lambda:us-east-1:123456789012:function:no-such-fn")

    first = report.problems[0]
    assert first.check == "not_found"
    assert "Function not found" in first.message and "deploy the function" in first.fix
    assert report.calls == 1


def test_lambda_access_denied_names_the_permission(lambdas: FakeLambda) -> None:
    arn = lambdas.add("reward-private", reward_functions.good, denied=True)

    report = lambda_probe(arn)

    first = report.problems[0]
    assert first.check == "access_denied"
    assert "lambda:InvokeFunction" in first.fix and CONN_ID in first.fix
    assert report.calls == 1


def test_lambda_errors_are_typed_for_callers() -> None:
    def answer(status: int, code: str) -> Any:
        def send(payload: bytes) -> Any:
            raise ClientError(
                {
                    "Error": {"Code": code, "Message": "m"},
                    "ResponseMetadata": {"HTTPStatusCode": status},
                },
                "Invoke",
            )

        return lambda_api_invoker(send, "fn", timeout_seconds=1)

    with pytest.raises(ThrottledError):
        answer(429, "TooManyRequestsException")([])
    with pytest.raises(FunctionNotFoundError):
        answer(404, "ResourceNotFoundException")([])
    with pytest.raises(InvokeError, match="6 MB"):
        answer(413, "RequestEntityTooLargeException")([])

    def timed_out(payload: bytes) -> Any:
        return {
            "FunctionError": "Unhandled",
            "Payload": b'{"errorMessage": "Task timed out after 3.00 seconds"}',
        }

    def crashed(payload: bytes) -> Any:
        return {
            "FunctionError": "Unhandled",
            "Payload": b'{"errorType": "Runtime.OutOfMemory", "errorMessage": "x"}',
        }

    with pytest.raises(FunctionTimeoutError):
        lambda_api_invoker(timed_out, "fn", timeout_seconds=1)([])
    with pytest.raises(FunctionError, match="out of memory"):
        lambda_api_invoker(crashed, "fn", timeout_seconds=1)([])
    assert math.isnan(
        lambda_api_invoker(lambda p: {"Payload": b"[NaN]"}, "fn", timeout_seconds=1)([])[0]
    )
