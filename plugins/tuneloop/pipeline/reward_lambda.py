"""The reward-function probe as the round runs it before an RFT job: the function is a Lambda
(called through the Amazon provider's LambdaHook) or, on the local backend, a
``module:function``.

`run_probe` picks the invoker by how the function is named (``rounds.reward_probe.function_kind``:
an ARN or a function name is a Lambda, ``module:function`` a local callable) and returns the
probe's report; a function that cannot be loaded is a failed probe, not an exception.

The Lambda is invoked synchronously (``RequestResponse``) with each batch as its JSON payload,
through the connection ``aws_conn_id`` (None: boto3's default chain), with the client settings
of ``rounds.reward_probe.lambda_client_config``: it waits ``reward_probe.timeout_seconds`` plus
a margin for an answer and tries a throttled call at most ``attempts`` times in all. boto3,
botocore and the provider are imported when a Lambda is first called, never at module import.
Credentials stay inside the hook: nothing here logs or returns them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

from tuneloop.config.monitoring import RewardProbe
from tuneloop.local.rewards import RewardLoadError, local_invoker
from tuneloop.rounds import reward_probe
from tuneloop.rounds.reward_probe import Invoke, ProbeReport


def lambda_invoker(
    function: str,
    *,
    aws_conn_id: str | None,
    timeout_seconds: float,
    attempts: int = reward_probe.LAMBDA_ATTEMPTS,
) -> Invoke:
    """An Invoke that calls the Lambda ``function`` (ARN or name) through LambdaHook."""
    hook: Any = None
    made = threading.Lock()  # the probe calls in parallel; one hook for them all

    def send(payload: bytes) -> Mapping[str, Any]:
        nonlocal hook
        with made:
            if hook is None:
                hook = _hook(aws_conn_id, timeout_seconds, attempts)
        response: Mapping[str, Any] = hook.invoke_lambda(
            function_name=function, invocation_type="RequestResponse", payload=payload
        )
        return response

    return reward_probe.lambda_api_invoker(
        send, function, timeout_seconds=timeout_seconds, conn_id=aws_conn_id
    )


def _hook(aws_conn_id: str | None, timeout_seconds: float, attempts: int) -> Any:
    """A LambdaHook whose client waits long enough for a batch and tries a call at most
    ``attempts`` times; the connection's own botocore settings are kept."""
    from airflow.providers.amazon.aws.hooks.lambda_function import LambdaHook
    from botocore.config import Config

    ours = Config(**reward_probe.lambda_client_config(timeout_seconds, attempts))
    theirs = LambdaHook(aws_conn_id=aws_conn_id).config
    return LambdaHook(aws_conn_id=aws_conn_id, config=theirs.merge(ours) if theirs else ours)


def invoker_for(
    function: str,
    settings: RewardProbe,
    *,
    aws_conn_id: str | None,
    attempts: int = reward_probe.LAMBDA_ATTEMPTS,
) -> Invoke:
    """The invoker for ``function``: a local callable or a Lambda. RewardLoadError when a
    ``module:function`` cannot be loaded; ConfigError when the name is neither."""
    if reward_probe.function_kind(function) == "local":
        return local_invoker(function, settings.timeout_seconds)
    return lambda_invoker(
        function,
        aws_conn_id=aws_conn_id,
        timeout_seconds=settings.timeout_seconds,
        attempts=attempts,
    )


def run_probe(
    function: str,
    records: Iterable[Mapping[str, Any]],
    settings: RewardProbe,
    *,
    backend_type: str,
    aws_conn_id: str | None,
    concurrency_limit: int | None,
    responses: Mapping[str, str] | None = None,
    inference_outputs: Iterable[Mapping[str, Any]] | None = None,
    step_samples: int | None = None,
) -> ProbeReport:
    """Probe the reward function of an RFT stage before its job (see rounds.reward_probe).

    ``backend_type`` is the campaign's backend (local, smtj or hyperpod: HyperPod adds its
    naming rule); ``concurrency_limit`` the recipe's ``lambda_concurrency_limit``;
    ``responses`` or ``inference_outputs`` the starting model's answers, for its share of
    positive rewards; ``step_samples`` the samples one RFT step scores (prompts per step times
    generations per prompt)."""
    try:
        invoke = invoker_for(function, settings, aws_conn_id=aws_conn_id)
    except RewardLoadError as exc:
        return reward_probe.load_failure(
            function,
            exc.problems[0].message,
            "name an importable module:function (the module on the worker's Python path); a "
            "Lambda function by its ARN",
            settings,
        )
    return reward_probe.probe(
        invoke,
        records,
        settings,
        function=function,
        concurrency_limit=concurrency_limit,
        responses=responses,
        inference_outputs=inference_outputs,
        hyperpod=backend_type == "hyperpod",
        step_samples=step_samples,
    )
