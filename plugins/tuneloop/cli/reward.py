"""The `tuneloop reward probe` command: try a reward function on known good and bad answers
before an RFT job spends GPU hours on it.

``tuneloop reward probe --function ARN|MODULE:FUNCTION --data RFT.jsonl`` sends the first
``--sample`` records of the RFT data to the function, each with its reference answer as the
response (it should score high) and with an empty, a cut-off and another record's answer (they
should score low), and checks what ``tuneloop.rounds.reward_probe`` checks before every RFT job:
the output contract, errors, latency against the time limit and separation. ``--responses``
adds the starting model's answers (an evaluation's ``inference_output.jsonl``) and reports the
share that earns a positive reward.

The rules:

- Exit 0 when the probe passes, 1 when it fails (one line per problem, with its fix), 2 on bad
  input: a file that is missing or not a regular file, a line that is not a valid RFT record
  (``file:line: field: message; fix: ...``), a value out of range, a function named neither as a
  Lambda nor as ``module:function``.
- A Lambda (an ARN, or a function name) is called through the Amazon provider's LambdaHook with
  the Airflow connection ``--aws-conn-id`` (an ``AIRFLOW_CONN_<ID>`` variable works outside
  Airflow too; none: boto3's default chain). A ``module:function`` is imported from the Python
  path (the current directory included).
- ``--json`` prints the report as one JSON object, the same that a round records.
- Credentials are never printed; the provider's log lines go to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from tuneloop.cli.exit_codes import EXIT_INVALID, EXIT_OK

if TYPE_CHECKING:
    from tuneloop.config.monitoring import RewardProbe


def add_reward_commands(commands: Any) -> None:
    reward = commands.add_parser("reward", help="check a reward function before RFT")
    sub = reward.add_subparsers(title="reward commands", metavar="COMMAND")
    # The defaults are RewardProbe's, filled in when the command runs: building the parser
    # must not load pydantic (every command of the CLI builds it).
    probe = sub.add_parser(
        "probe",
        help="try a reward function on good and bad answers (exit 0 pass, 1 fail, 2 bad input)",
        description="Call the reward function on the first records of an RFT dataset with the "
        "reference answer as the response (should score high) and with an empty, a cut-off and "
        "another record's answer (should score low); check the output contract, errors, "
        "latency and separation.",
    )
    probe.add_argument(
        "--function",
        required=True,
        metavar="ARN|MODULE:FUNCTION",
        help="the reward Lambda (ARN or name) or a Python function (module:function)",
    )
    probe.add_argument(
        "--data", required=True, metavar="RFT.jsonl", help="RFT dataset: path or s3:// URI"
    )
    probe.add_argument(
        "--sample",
        type=_whole(1, 10_000),
        default=None,
        metavar="N",
        help="records tried, the first ones (default: reward_probe.sample's, 16)",
    )
    probe.add_argument(
        "--batch-size",
        type=_whole(1, 1_000),
        default=None,
        metavar="N",
        help="samples per call (default: reward_probe.batch_size's, 8)",
    )
    probe.add_argument(
        "--concurrency",
        type=_whole(1, 10_000),
        default=None,
        metavar="N",
        help="calls at a time, as the job's lambda_concurrency_limit (default: one at a time)",
    )
    probe.add_argument(
        "--timeout",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="longest a call may take (default: the 900 s Lambda limit)",
    )
    probe.add_argument(
        "--responses",
        default=None,
        metavar="PATH",
        help="the starting model's answers (an evaluation's inference_output.jsonl, or its "
        "output folder or tarball): report the share with a positive reward",
    )
    probe.add_argument(
        "--hyperpod",
        action="store_true",
        help="apply HyperPod's rule: the Lambda function name must contain 'SageMaker'",
    )
    probe.add_argument(
        "--aws-conn-id",
        default=None,
        metavar="ID",
        help="Airflow connection for the Lambda (default: boto3's default credential chain)",
    )
    probe.add_argument("--json", action="store_true", help="print the report as JSON")
    probe.set_defaults(handler=_probe)


def _whole(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number from ``low`` to ``high`` (argparse names the option)."""

    def whole_number(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not from {low} to {high}")
        return value

    return whole_number


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    from tuneloop.config.monitoring import LAMBDA_TIME_LIMIT_SECONDS

    if not 0 < value <= LAMBDA_TIME_LIMIT_SECONDS:
        raise argparse.ArgumentTypeError(
            f"{text} is not above 0 and at most {LAMBDA_TIME_LIMIT_SECONDS:g} (the Lambda limit)"
        )
    return value


def _probe(args: argparse.Namespace) -> int:
    from tuneloop.artifacts.format_compliance import read_inference_outputs
    from tuneloop.config.monitoring import RewardProbe
    from tuneloop.local.rewards import RewardLoadError
    from tuneloop.rounds import reward_probe
    from tuneloop.rounds.probe_data import read_rft_records

    chosen = {"sample": args.sample, "batch_size": args.batch_size, "timeout_seconds": args.timeout}
    settings = RewardProbe(**{key: value for key, value in chosen.items() if value is not None})
    kind = reward_probe.function_kind(args.function)
    records = read_rft_records(args.data, settings.sample)
    rows = list(read_inference_outputs(args.responses)) if args.responses else None
    if kind == "local" and os.getcwd() not in sys.path:
        # A module in the current directory is found, as `python -m` would find it.
        sys.path.insert(0, os.getcwd())
    try:
        invoke = _invoker(args.function, kind, settings, args.aws_conn_id)
    except RewardLoadError as exc:  # a failed probe, not bad input
        report = reward_probe.load_failure(
            args.function,
            exc.problems[0].message,
            "name an importable module:function (run from the folder that holds the module, "
            "or set PYTHONPATH); a Lambda function by its ARN",
            settings,
        )
    else:
        with _provider_logs_to_stderr(kind == "lambda"):
            report = reward_probe.probe(
                invoke,
                records,
                settings,
                function=args.function,
                concurrency_limit=args.concurrency,
                inference_outputs=rows,
                hyperpod=args.hyperpod,
            )
    if args.json:
        print(report.model_dump_json(indent=2))
    else:
        sys.stdout.write(format_report(report))
    return EXIT_OK if report.ok else EXIT_INVALID


def _invoker(function: str, kind: str, settings: RewardProbe, conn_id: str | None) -> Any:
    if kind == "local":
        from tuneloop.local.rewards import local_invoker

        return local_invoker(function, settings.timeout_seconds)
    return _lambda_invoker(function, conn_id, settings.timeout_seconds)


def _lambda_invoker(function: str, conn_id: str | None, timeout_seconds: float) -> Any:
    """The Lambda invoker a round's probe uses (`tuneloop.pipeline.reward_lambda`), through
    LambdaHook with the same client settings."""
    from tuneloop.rounds.reward_probe import lambda_api_invoker, lambda_client_config

    hook: Any = None
    made = threading.Lock()  # calls run in parallel; one hook for them all

    def send(payload: bytes) -> Mapping[str, Any]:
        nonlocal hook
        with made:
            if hook is None:
                from airflow.providers.amazon.aws.hooks.lambda_function import LambdaHook
                from botocore.config import Config

                ours = Config(**lambda_client_config(timeout_seconds))
                theirs = LambdaHook(aws_conn_id=conn_id).config
                hook = LambdaHook(
                    aws_conn_id=conn_id, config=theirs.merge(ours) if theirs else ours
                )
        response: Mapping[str, Any] = hook.invoke_lambda(
            function_name=function, invocation_type="RequestResponse", payload=payload
        )
        return response

    return lambda_api_invoker(send, function, timeout_seconds=timeout_seconds, conn_id=conn_id)


@contextlib.contextmanager
def _provider_logs_to_stderr(active: bool) -> Iterator[None]:
    """Airflow's log lines (the provider's, botocore's) print to stdout, where they would break
    ``--json``: send them to stderr while the Lambda is called."""
    if not active:
        yield
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield


# --- the report as text ------------------------------------------------------------------------


def format_report(report: Any) -> str:
    """The probe's report as a short table, then its problems and warnings, one a line."""
    verdict = "passed" if report.ok else "FAILED"
    rows = [(f"reward function {report.function}", verdict)]
    rows.append(
        (
            "records",
            f"{report.records} sampled, {report.without_reference} without reference_answer",
        )
    )
    if report.separation is not None:
        rows.append(
            (
                "pairs",
                f"{report.pairs}: good above bad on {report.separation:.0%} (needs "
                f"{report.min_separation:.0%})",
            )
        )
    else:
        rows.append(("pairs", f"{report.pairs} scored"))
    if report.good_mean is not None or report.bad_mean is not None:
        rows.append(
            ("scores", f"good mean {_num(report.good_mean)}, bad mean {_num(report.bad_mean)}")
        )
    if report.latency_p50_s is not None:
        rows.append(
            (
                "latency",
                f"p50 {_duration(report.latency_p50_s)}, max {_duration(report.latency_max_s)} "
                f"per call of up to {report.batch_size} samples (limit "
                f"{_duration(report.timeout_seconds)})",
            )
        )
    at_once = f", {report.concurrency_limit} at a time" if report.concurrency_limit else ""
    rows.append(("calls", f"{report.calls} ({report.failed_calls} failed){at_once}"))
    if report.samples_per_second is not None:
        rows.append(("throughput", f"{report.samples_per_second:g} samples/s"))
    if report.positive_fraction is not None:
        rows.append(
            (
                "positive",
                f"{report.positive_fraction:.1%} of {report.positive_answers} answers of the "
                "starting model",
            )
        )
    width = max(len(name) for name, _ in rows[1:])
    lines = [f"{rows[0][0]}: {rows[0][1]}"]
    lines += [f"  {name.ljust(width)}  {value}" for name, value in rows[1:]]
    lines += [f"problem: {problem.line()}" for problem in report.problems]
    lines += [f"warning: {warning}" for warning in report.warnings]
    return "\n".join(lines) + "\n"


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:g} s"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"
