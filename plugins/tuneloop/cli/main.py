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
from collections.abc import Callable, Sequence
from datetime import date
from typing import Any, TextIO

from tuneloop import __version__
from tuneloop.cli.exit_codes import EXIT_INVALID, EXIT_OK, EXIT_USAGE
from tuneloop.errors import Problem, TuneloopError


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


def _at_least(low: int) -> Callable[[str], int]:
    """An argparse type: a whole number no smaller than ``low`` (argparse names the option)."""

    def whole_number(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is less than {low}")
        return value

    return whole_number


def _run_date(text: str) -> date:
    """An argparse type: a YYYY-MM-DD day with a day before and after it (templates use both)."""
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None
    if not date.min < day < date.max:
        raise argparse.ArgumentTypeError(f"{text} has no day before or after it; use a real date")
    return day


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tuneloop",
        description="Iterative fine-tuning of foundation models as Airflow pipelines.",
    )
    parser.add_argument("--version", action="version", version=f"tuneloop {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_recipe_commands(commands)
    _add_data_commands(commands)
    _add_campaign_commands(commands)

    from tuneloop.cli.lifecycle import add_lifecycle_commands
    from tuneloop.cli.local import add_local_commands
    from tuneloop.cli.reward import add_reward_commands

    add_local_commands(commands)
    add_lifecycle_commands(commands)
    add_reward_commands(commands)
    return parser


# One function per command group; `commands` is argparse's subparsers action.


def _add_recipe_commands(commands: Any) -> None:
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


def _add_data_commands(commands: Any) -> None:
    data = commands.add_parser("data", help="validate datasets")
    data_commands = data.add_subparsers(title="data commands", metavar="COMMAND")
    dvalidate = data_commands.add_parser(
        "validate",
        help="validate a JSONL dataset (exit 0 valid, 1 invalid, 2 usage error)",
        description="Validate a JSON Lines dataset for a Nova format and model. Streams local "
        "files and s3:// objects.",
    )
    _add_data_validate_arguments(dvalidate)
    dvalidate.set_defaults(handler=_data_validate)
    rules = data_commands.add_parser("rules", help="list the dataset rules and which relax")
    rules.set_defaults(handler=_data_rules)


def _add_data_validate_arguments(dvalidate: argparse.ArgumentParser) -> None:
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


def _add_campaign_commands(commands: Any) -> None:
    campaign = commands.add_parser("campaign", help="check campaign files")
    campaign_commands = campaign.add_subparsers(title="campaign commands", metavar="COMMAND")
    cvalidate = campaign_commands.add_parser(
        "validate", help="validate a campaign and print its round plan"
    )
    cvalidate.add_argument("file", metavar="FILE", help="campaign file (YAML)")
    cvalidate.add_argument("--round", type=_at_least(1), default=1, help="round number to plan")
    cvalidate.add_argument(
        "--ds",
        type=_run_date,
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
    _add_campaign_status(campaign_commands)


def _add_campaign_status(campaign_commands: Any) -> None:
    cstatus = campaign_commands.add_parser(
        "status",
        help="print a campaign's ledger: rounds, champion, state and the next round",
        description="Print the rounds a campaign recorded (metrics, deltas, decisions with "
        "their reasons, costs), its champion, whether it is running or finished, and what the "
        "next round would be. Reads the ledger only.",
    )
    cstatus.add_argument(
        "campaign",
        metavar="CAMPAIGN",
        help="campaign file, or a campaign name in $TUNELOOP_CAMPAIGNS_DIR (else "
        "recipes/campaigns/)",
    )
    cstatus.add_argument("--json", action="store_true", help="print the status as one JSON object")
    cstatus.set_defaults(handler=_campaign_status)


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
    from tuneloop.documents import load_document
    from tuneloop.recipes.catalog import Method, Platform
    from tuneloop.recipes.render import Origin, render_recipe
    from tuneloop.recipes.rules import RecipeContext

    document = load_document(path)
    platform = args.platform
    if platform is None:
        run = document.data.get("run")
        if not isinstance(run, dict):
            run = {}
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


def _data_validate(args: argparse.Namespace) -> int:
    import os

    from tuneloop.data.registry import FORMATS, get_format, supports
    from tuneloop.data.rules import RELAXABLE
    from tuneloop.data.validator import MAX_LISTED, Options, validate_dataset
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
    if args.max_errors > MAX_LISTED:  # a report lists so many; the rest are counted per rule
        problems.append(
            Problem(
                "--max-errors",
                f"{args.max_errors} is more errors than a report lists",
                allowed=f">= 0 and <= {MAX_LISTED}",
            )
        )
    if args.max_length is not None and args.max_length < 1:
        problems.append(
            Problem("--max-length", f"{args.max_length} is not a length", allowed=">= 1")
        )
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
        print(report.to_json(indent=2))
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
    from tuneloop.config.file import load_campaign
    from tuneloop.config.templating import sample_template_context
    from tuneloop.rounds.plan import validate_campaign

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
        from tuneloop.cli.plan_text import format_plan

        sys.stdout.write(format_plan(campaign_file.campaign, plan, recipes=not args.quiet))
    return EXIT_OK


def _campaign_status(args: argparse.Namespace) -> int:
    from tuneloop.cli.status import campaign_status, format_status, load

    status = campaign_status(load(args.campaign))
    if args.json:
        print(status.model_dump_json(indent=2))
    else:
        sys.stdout.write(format_status(status))
    return EXIT_OK


# --- local jobs --------------------------------------------------------------------------------
