"""The `tuneloop local` commands: run, follow, inspect and stop local training jobs."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import Any

from tuneloop.cli.exit_codes import EXIT_INVALID, EXIT_OK
from tuneloop.errors import ConfigError, Problem, TuneloopError


def add_local_commands(commands: Any) -> None:
    local = commands.add_parser(
        "local",
        help="run and watch jobs of the local training backend",
        description="Jobs are detached processes with a directory each under --root "
        "(default: $TUNELOOP_LOCAL_ROOT or .tuneloop/jobs).",
    )
    local_commands = local.add_subparsers(title="local commands", metavar="COMMAND")
    _add_local_run(local_commands)

    lstatus = _with_root(local_commands.add_parser("status", help="a job's state and progress"))
    lstatus.add_argument("name", metavar="NAME")
    lstatus.add_argument("--json", action="store_true", help="print status.json")
    lstatus.set_defaults(handler=_local_status)

    lcancel = _with_root(
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

    llogs = _with_root(
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


def _with_root(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--root",
        default=None,
        metavar="DIR",
        help="jobs folder (default: $TUNELOOP_LOCAL_ROOT or .tuneloop/jobs)",
    )
    return parser


def _add_local_run(local_commands: Any) -> None:
    lrun = _with_root(
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


_POLL_SECONDS = 0.5


def _local_runner(args: argparse.Namespace) -> Any:
    from tuneloop.local.runner import LocalRunner

    runner = LocalRunner(args.root)
    if runner.root.exists() and not runner.root.is_dir():
        raise TuneloopError(
            [
                Problem(
                    "--root",
                    f"{runner.root} is not a folder",
                    fix="name the folder that holds (or will hold) the jobs",
                )
            ]
        )
    return runner


def _local_defaults(path: str) -> tuple[str | None, str | None]:
    """The recipe's run.name and kind, when the file says. A file that does not load gives
    no defaults: rendering it for the job reports why, at its line."""
    from tuneloop.documents import load_document

    try:
        data = load_document(path).data  # bounded: size, depth, aliases, regular files only
    except ConfigError:
        return None, None
    run = data.get("run")
    if not isinstance(run, dict):
        run = {}
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
    entrypoint = args.entrypoint or DEFAULT_ENTRYPOINT
    if entrypoint == DEFAULT_ENTRYPOINT:
        # Fail here, in one line, before a job process starts for a recipe it cannot train.
        from tuneloop.local.train import load_recipe

        load_recipe(str(recipe), args.kind or kind or "")
    adopted = runner.exists(name)
    spec = JobSpec(
        name=name,
        output=args.output,
        recipe=str(recipe.absolute()),
        kind=args.kind or kind or "",
        labels=labels,
        entrypoint=entrypoint,
        python_path=[os.getcwd()],
    )
    _hear_ctrl_c()
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


def _hear_ctrl_c() -> None:
    """Make Ctrl-C (SIGINT) detach from the job even when this process inherited it ignored: a
    shell script starts background commands with SIGINT ignored, and Python then installs no
    handler, so the interrupt would do nothing while the command follows the job."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


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
    from tuneloop.jobs.state import JobState

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
    from tuneloop.jobs.state import JobState
    from tuneloop.local.runner import format_duration

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
