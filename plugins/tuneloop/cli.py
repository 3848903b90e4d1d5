"""The `tuneloop` command line.

Exit codes: 0 success, 2 a user error (bad file, bad value, incompatible plan), with one line per
problem on stderr as ``file:line: field.path: message (allowed: ...)``. A traceback means a bug
in tuneloop, never a mistake in the input.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from datetime import date
from typing import Any, TextIO

from tuneloop import __version__
from tuneloop.errors import Problem, TuneloopError

EXIT_OK = 0
EXIT_USAGE = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            code = args.handler(args)
        _print_warnings(caught)
        return code
    except TuneloopError as exc:
        _print_problems(exc.problems)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _print_problems(problems: Sequence[Problem], stream: TextIO | None = None) -> None:
    stream = stream or sys.stderr
    for problem in problems:
        print(problem.format(), file=stream)


def _print_warnings(caught: Sequence[warnings.WarningMessage]) -> None:
    if not caught:
        return
    from tuneloop.recipes.render import RecipeWarning

    for item in caught:
        if issubclass(item.category, RecipeWarning):
            print(f"warning: {item.message}", file=sys.stderr)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tuneloop",
        description="Iterative fine-tuning of foundation models as Airflow pipelines.",
    )
    parser.add_argument("--version", action="version", version=f"tuneloop {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    recipe = commands.add_parser("recipe", help="render, validate and document recipes")
    recipe_commands = recipe.add_subparsers(title="recipe commands", metavar="COMMAND")

    render = recipe_commands.add_parser(
        "render", help="print a template with overrides applied and interpolations resolved"
    )
    render.add_argument("recipe", metavar="TEMPLATE", help="recipe template (YAML)")
    render.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field, e.g. training_config.max_steps=200 (repeatable)",
    )
    _add_recipe_context(render)
    render.set_defaults(handler=_recipe_render)

    validate = recipe_commands.add_parser("validate", help="validate recipe files")
    validate.add_argument("files", nargs="+", metavar="FILE", help="recipe files (YAML)")
    _add_recipe_context(validate)
    validate.set_defaults(handler=_recipe_validate)

    fields = recipe_commands.add_parser(
        "fields", help="list a recipe kind's fields with defaults, ranges and meaning"
    )
    fields.add_argument("kind", choices=["sft", "cpt", "rft", "eval"])
    fields.add_argument(
        "--model",
        default="amazon.nova-2-lite-v1:0:256k",
        help="model_type whose recipe layout to show (default: %(default)s)",
    )
    fields.set_defaults(handler=_recipe_fields)

    data = commands.add_parser("data", help="validate datasets")
    data_commands = data.add_subparsers(title="data commands", metavar="COMMAND")
    dvalidate = data_commands.add_parser(
        "validate",
        help="validate a JSONL dataset (exit 0 valid, 1 invalid, 2 usage error)",
        description="Validate a JSON Lines dataset for a Nova format and model. Streams local "
        "files and s3:// objects.",
    )
    dvalidate.add_argument("file", metavar="FILE", help="path, file:// or s3:// URI")
    dvalidate.add_argument("--format", required=True, choices=DATA_FORMATS)
    dvalidate.add_argument(
        "--model",
        required=True,
        metavar="MODEL_TYPE",
        help="model_type (e.g. amazon.nova-2-lite-v1:0:256k) or micro, lite, pro, lite-2",
    )
    dvalidate.add_argument("--platform", choices=["sagemaker", "bedrock"], default="sagemaker")
    dvalidate.add_argument(
        "--max-length",
        type=int,
        default=None,
        metavar="N",
        help="the recipe's max_length: warn about records longer than this",
    )
    dvalidate.add_argument(
        "--max-errors",
        type=int,
        default=20,
        metavar="N",
        help="errors to list (all are counted; default %(default)s)",
    )
    dvalidate.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="RULE",
        help="relax a rule to a warning (repeatable); see --list-rules",
    )
    dvalidate.add_argument(
        "--role",
        choices=["train", "validation"],
        default="train",
        help="whether the file is a training or a validation set",
    )
    dvalidate.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="processes for a large local file (0: one per core)",
    )
    dvalidate.add_argument("--json", action="store_true", help="print the report as JSON")
    dvalidate.set_defaults(handler=_data_validate)
    rules = data_commands.add_parser("rules", help="list the dataset rules and which relax")
    rules.set_defaults(handler=_data_rules)

    campaign = commands.add_parser("campaign", help="check campaign files")
    campaign_commands = campaign.add_subparsers(title="campaign commands", metavar="COMMAND")
    cvalidate = campaign_commands.add_parser(
        "validate", help="validate a campaign and print its round plan"
    )
    cvalidate.add_argument("file", metavar="FILE", help="campaign file (YAML)")
    cvalidate.add_argument("--round", type=int, default=1, help="round number to plan")
    cvalidate.add_argument(
        "--ds",
        type=date.fromisoformat,
        default=None,
        metavar="YYYY-MM-DD",
        help="logical date for {{ ds }} in data URIs (default: today)",
    )
    cvalidate.add_argument(
        "--offline",
        action="store_true",
        help="do not read the base checkpoint's manifest from storage",
    )
    cvalidate.add_argument("--json", action="store_true", help="print the plan as JSON")
    cvalidate.add_argument(
        "--quiet",
        "-q",
        action="store_true",
        help="print only the summary, not the rendered recipes",
    )
    cvalidate.set_defaults(handler=_campaign_validate)

    _add_local_commands(commands)
    return parser


def _add_local_commands(commands: Any) -> None:
    local = commands.add_parser(
        "local",
        help="run and watch jobs of the local training backend",
        description="Jobs are detached processes with a directory each under --root "
        "(default: $TUNELOOP_LOCAL_ROOT or .tuneloop/jobs).",
    )
    local_commands = local.add_subparsers(title="local commands", metavar="COMMAND")

    def with_root(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument(
            "--root",
            default=None,
            metavar="DIR",
            help="jobs folder (default: $TUNELOOP_LOCAL_ROOT or .tuneloop/jobs)",
        )
        return parser

    lrun = with_root(
        local_commands.add_parser(
            "run",
            help="start a job (or adopt the job of that name) and follow it",
            description="Start a job and show its progress until it ends: exit 0 when it "
            "succeeds, 1 when it fails or is stopped. Ctrl-C detaches; the job keeps running. "
            "Running the same command again adopts the job instead of starting a second one.",
        )
    )
    lrun.add_argument("recipe", metavar="RECIPE", help="recipe file (YAML)")
    lrun.add_argument("--output", required=True, metavar="URI", help="where results go")
    lrun.add_argument(
        "--name",
        default=None,
        help="job name, a DNS label (default: the recipe's run.name, else the file name)",
    )
    lrun.add_argument(
        "--kind",
        choices=["sft", "cpt", "rft", "eval"],
        default=None,
        help="recipe kind (default: read from the recipe)",
    )
    lrun.add_argument(
        "--label",
        dest="labels",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a label to find the job by (repeatable)",
    )
    lrun.add_argument(
        "--entrypoint",
        default=None,
        metavar="MODULE:FUNCTION",
        help="work function, called with the job spec and a progress callback "
        "(default: tuneloop.local.train:run_recipe)",
    )
    lrun.add_argument("--detach", action="store_true", help="start the job and return at once")
    lrun.set_defaults(handler=_local_run)

    lstatus = with_root(local_commands.add_parser("status", help="a job's state and progress"))
    lstatus.add_argument("name", metavar="NAME")
    lstatus.add_argument("--json", action="store_true", help="print status.json")
    lstatus.set_defaults(handler=_local_status)

    lcancel = with_root(
        local_commands.add_parser("cancel", help="stop a job and all its processes")
    )
    lcancel.add_argument("name", metavar="NAME")
    lcancel.add_argument(
        "--grace",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="time between SIGTERM and SIGKILL (default: %(default)s)",
    )
    lcancel.set_defaults(handler=_local_cancel)

    llogs = with_root(
        local_commands.add_parser(
            "logs",
            help="print a job's log",
            description="Print a job's log. With --follow, wait for new lines until the job "
            "ends, then exit 0 if it succeeded, else 1.",
        )
    )
    llogs.add_argument("name", metavar="NAME")
    llogs.add_argument("--follow", "-f", action="store_true", help="keep printing until it ends")
    llogs.set_defaults(handler=_local_logs)


def _add_recipe_context(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--platform",
        choices=["hyperpod", "smtj", "local"],
        default=None,
        help="where the recipe will run (default: local for local.* models, else hyperpod)",
    )
    parser.add_argument(
        "--instance-type",
        default=None,
        help="instance type, e.g. ml.p5.48xlarge (decides replica counts on smtj)",
    )
    parser.add_argument(
        "--kind",
        choices=["sft", "cpt", "rft", "eval"],
        default=None,
        help="recipe kind when the file does not say (Nova 1 SFT and CPT share a layout)",
    )
    parser.add_argument(
        "--template",
        action="store_true",
        help="allow empty data paths, output path and reward function",
    )


def _render(path: str, overrides: dict[str, Any], args: argparse.Namespace) -> Any:
    from tuneloop.recipes.catalog import Method, Platform
    from tuneloop.recipes.render import Origin, render_recipe
    from tuneloop.recipes.rules import RecipeContext
    from tuneloop.sources import load_document

    document = load_document(path)
    platform = args.platform
    if platform is None:
        run = document.data.get("run") if isinstance(document.data.get("run"), dict) else {}
        platform = "local" if str(run.get("model_type", "")).startswith("local.") else "hyperpod"
    method: Any = "detect"
    if args.kind is not None:
        method = None if args.kind == "eval" else Method(args.kind)
    context = RecipeContext(
        platform=Platform(platform), instance_type=args.instance_type, template=args.template
    )
    origins = {"instance_type": Origin("--instance-type", path="instance_type")}
    return render_recipe(document, overrides, method=method, context=context, origins=origins)


def _recipe_render(args: argparse.Namespace) -> int:
    from tuneloop.recipes.render import parse_set_options

    rendered = _render(args.recipe, parse_set_options(args.overrides), args)
    sys.stdout.write(rendered.to_yaml())
    return EXIT_OK


def _recipe_validate(args: argparse.Namespace) -> int:
    code = EXIT_OK
    for path in args.files:
        try:
            rendered = _render(path, {}, args)
        except TuneloopError as exc:
            _print_problems(exc.problems)
            code = EXIT_USAGE
            continue
        technique = "" if rendered.method is None else f" {rendered.technique.value}"
        print(f"{path}: ok ({rendered.kind}{technique}, {rendered.model_type})")
    return code


def _recipe_fields(args: argparse.Namespace) -> int:
    from tuneloop.recipes.catalog import Method, model_spec
    from tuneloop.recipes.docs import describe_fields
    from tuneloop.recipes.render import recipe_model

    spec = model_spec(args.model)
    if spec is None:
        from tuneloop.recipes.catalog import MODELS

        raise TuneloopError(
            [Problem("--model", f"unknown model_type {args.model!r}", allowed=", ".join(MODELS))]
        )
    method = None if args.kind == "eval" else Method(args.kind)
    model = recipe_model(method, spec)
    if model is None:
        raise TuneloopError([Problem("kind", f"{spec.display_name} has no {args.kind} recipe")])
    for line in describe_fields(model):
        print(line)
    return EXIT_OK


DATA_FORMATS = ["sft", "cpt", "rft", "gen_qa", "llm_judge", "dpo"]
MODEL_ALIASES = {
    "micro": "amazon.nova-micro-v1:0:128k",
    "lite": "amazon.nova-lite-v1:0:300k",
    "pro": "amazon.nova-pro-v1:0:300k",
    "lite-2": "amazon.nova-2-lite-v1:0:256k",
    "nova-2-lite": "amazon.nova-2-lite-v1:0:256k",
}
EXIT_INVALID = 1


def _data_validate(args: argparse.Namespace) -> int:
    import os

    from tuneloop.data.registry import FORMATS, get_format, supports
    from tuneloop.data.rules import RELAXABLE
    from tuneloop.data.validator import Options, validate_dataset
    from tuneloop.recipes.catalog import MODELS

    problems = []
    model_type = MODEL_ALIASES.get(args.model, args.model)
    spec = MODELS.get(model_type)
    if spec is None:
        allowed = ", ".join([*MODELS, *MODEL_ALIASES])
        problems.append(Problem("--model", f"unknown model {args.model!r}", allowed=allowed))
    if args.format not in FORMATS:
        problems.append(
            Problem(
                "--format",
                f"{args.format} validation is not available yet",
                allowed=", ".join(FORMATS),
            )
        )
    elif spec is not None and not supports(args.format, spec):
        problems.append(
            Problem("--format", f"{spec.display_name} does not take {args.format} datasets")
        )
    for rule_id in args.allow:
        if rule_id not in RELAXABLE:
            problems.append(
                Problem("--allow", f"{rule_id!r} cannot be relaxed", allowed=", ".join(RELAXABLE))
            )
    for flag, value in (("--max-errors", args.max_errors), ("--workers", args.workers)):
        if value < 0:
            problems.append(Problem(flag, f"{value} is negative", allowed=">= 0"))
    if problems:
        raise TuneloopError(problems)
    assert spec is not None
    options = Options(
        allow=frozenset(args.allow),
        max_errors=args.max_errors,
        max_length=args.max_length,
        role=args.role,
    )
    workers = args.workers or os.cpu_count() or 1
    report = validate_dataset(
        args.file,
        get_format(args.format),
        spec,
        platform=args.platform,
        options=options,
        workers=workers,
    )
    if args.json:
        print(report.model_dump_json(indent=2))
    else:
        sys.stdout.write(report.to_text())
    return EXIT_OK if report.ok else EXIT_INVALID


def _data_rules(args: argparse.Namespace) -> int:
    from tuneloop.data.rules import RULES

    for rule in RULES.values():
        relax = "  (relax with --allow " + rule.id + ")" if rule.relaxable else ""
        print(f"{rule.id}: {rule.summary}{relax}")
    return EXIT_OK


def _campaign_validate(args: argparse.Namespace) -> int:
    from tuneloop.campaign_file import load_campaign
    from tuneloop.plan import validate_campaign
    from tuneloop.templating import sample_template_context

    if args.round < 1:
        raise TuneloopError(
            [Problem("--round", f"{args.round} is not a round number", allowed=">= 1")]
        )
    campaign_file = load_campaign(args.file)
    plan = validate_campaign(
        campaign_file,
        round_number=args.round,
        template_context=sample_template_context(args.ds),
        offline=args.offline,
    )
    if args.json:
        print(json.dumps(plan.model_dump(mode="json"), indent=2))
    else:
        from tuneloop.plan_text import format_plan

        sys.stdout.write(format_plan(campaign_file.campaign, plan, recipes=not args.quiet))
    return EXIT_OK


# --- local jobs --------------------------------------------------------------------------------

_POLL_SECONDS = 0.5


def _local_runner(args: argparse.Namespace) -> Any:
    from tuneloop.local.runner import LocalRunner

    return LocalRunner(args.root)


def _local_defaults(path: str) -> tuple[str | None, str | None]:
    """The recipe's run.name and kind, when the file says."""
    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except (OSError, yaml.YAMLError):
        return None, None
    if not isinstance(data, dict):
        return None, None
    run = data.get("run") if isinstance(data.get("run"), dict) else {}
    name = run.get("name") if isinstance(run.get("name"), str) else None
    try:
        from tuneloop.recipes.render import detect_method

        method = detect_method(data, path)
    except TuneloopError:
        return name, None
    return name, "eval" if method is None else method.value


def _local_run(args: argparse.Namespace) -> int:
    import os
    import re
    from pathlib import Path

    from tuneloop.local.runner import DEFAULT_ENTRYPOINT, JobSpec, validate_name

    recipe = Path(args.recipe)
    if not recipe.is_file():
        raise TuneloopError([Problem("RECIPE", f"no such file: {args.recipe}")])
    labels = {}
    for item in args.labels:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise TuneloopError([Problem("--label", f"{item!r} is not KEY=VALUE")])
        labels[key] = value
    recipe_name, kind = _local_defaults(str(recipe))
    name = args.name or recipe_name
    if name is None:
        name = re.sub(r"[^a-z0-9-]+", "-", recipe.stem.lower()).strip("-")[:63].strip("-")
    try:
        validate_name(name)
    except TuneloopError as exc:
        problems = [Problem("--name", p.message, allowed=p.allowed) for p in exc.problems]
        raise TuneloopError(problems) from None
    runner = _local_runner(args)
    adopted = runner.exists(name)
    spec = JobSpec(
        name=name,
        output=args.output,
        recipe=str(recipe.absolute()),
        kind=args.kind or kind or "",
        labels=labels,
        entrypoint=args.entrypoint or DEFAULT_ENTRYPOINT,
        python_path=[os.getcwd()],
    )
    try:
        status = runner.submit(spec)
        if adopted:
            print(f"job {name} already exists ({status.state.value}): following it")
        else:
            print(f"started job {name} in {runner.directory(name)}", flush=True)
        if args.detach:
            print(f"  status: tuneloop local status {name}{_root_flag(args)}")
            print(f"  logs:   tuneloop local logs {name} --follow{_root_flag(args)}")
            print(f"  cancel: tuneloop local cancel {name}{_root_flag(args)}")
            return EXIT_OK
        status = _follow_progress(runner, name)
    except KeyboardInterrupt:
        if not runner.exists(name):
            raise
        print(
            f"\ndetached; job {name} keeps running.\n"
            f"  re-attach: tuneloop local logs {name} --follow{_root_flag(args)}"
            " (or run this command again)\n"
            f"  cancel:    tuneloop local cancel {name}{_root_flag(args)}",
            file=sys.stderr,
        )
        return 130
    return _local_outcome(runner, status)


def _root_flag(args: argparse.Namespace) -> str:
    import shlex

    return f" --root {shlex.quote(args.root)}" if args.root else ""


def _follow_progress(runner: Any, name: str) -> Any:
    """Show the job's progress until it ends; returns the final status."""
    import time

    tty = sys.stdout.isatty()
    shown = None
    while True:
        status = runner.status(name)
        line = _local_status_line(status, bar=tty)
        if tty:
            sys.stdout.write("\r\x1b[2K" + line)
            sys.stdout.flush()
        elif line != shown:
            print(line, flush=True)
        shown = line
        if status.final:
            if tty:
                sys.stdout.write("\n")
            return status
        time.sleep(_POLL_SECONDS)


def _local_outcome(runner: Any, status: Any) -> int:
    from tuneloop.local.runner import JobState

    if status.state is JobState.SUCCEEDED:
        return EXIT_OK
    print(f"job {status.name} {status.state.value}: {status.message}", file=sys.stderr)
    if status.state is JobState.FAILED and status.reason != "runner_died":
        tail = runner.tail(status.name)
        if tail:
            print(f"last log lines:\n{tail}", file=sys.stderr)
    return EXIT_INVALID


def _progress_bar(fraction: float, width: int = 24) -> str:
    filled = round(fraction * width)
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def _local_status_line(status: Any, bar: bool = False) -> str:
    from tuneloop.local.runner import JobState, format_duration

    parts = [f"{status.name}: {status.state.value}"]
    progress = status.progress
    if progress is not None:
        fraction = progress.fraction
        step = f"step {progress.step}" + (f"/{progress.total}" if progress.total else "")
        if fraction is not None:
            step = f"{_progress_bar(fraction)} {step} {fraction:.0%}" if bar else step
            step += "" if bar else f" ({fraction:.0%})"
        parts.append(step)
        remaining = progress.remaining()
        if status.state is JobState.RUNNING and remaining is not None:
            parts.append(f"ETA {format_duration(remaining)}")
    return "  ".join(parts) if bar else ", ".join(parts)


def _local_status(args: argparse.Namespace) -> int:
    from tuneloop.local.runner import parse_iso

    status = _local_runner(args).status(args.name)
    if args.json:
        print(json.dumps(status.to_dict(), indent=2))
        return EXIT_OK
    print(_local_status_line(status, bar=sys.stdout.isatty()))
    started, ended = parse_iso(status.started_at), parse_iso(status.ended_at)
    if started is not None:
        line = f"  started: {status.started_at}"
        if ended is not None:
            line += f", ended: {status.ended_at} ({(ended - started).total_seconds():.1f}s)"
        print(line)
    if status.pid is not None and not status.final:
        print(f"  pid: {status.pid}")
    if status.reason:
        print(f"  reason: {status.reason}")
    if status.message:
        print("  message: " + status.message.replace("\n", "\n    "))
    return EXIT_OK


def _local_cancel(args: argparse.Namespace) -> int:
    runner = _local_runner(args)
    before = runner.status(args.name)
    status = runner.cancel(args.name, grace=args.grace)
    if before.final:
        print(f"job {args.name} had already ended: {status.state.value}")
    else:
        print(f"job {args.name}: {status.state.value}")
    return EXIT_OK


def _local_logs(args: argparse.Namespace) -> int:
    import time

    runner = _local_runner(args)
    cursor = 0
    while True:
        status = runner.status(args.name)
        while True:
            chunk = runner.logs(args.name, cursor)
            sys.stdout.write(chunk.text)
            if chunk.cursor == cursor:
                break
            cursor = chunk.cursor
        sys.stdout.flush()
        if not args.follow:
            return EXIT_OK
        if status.final:
            return _local_outcome(runner, status)
        time.sleep(_POLL_SECONDS)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
