"""What the fuzz tests share: the bounds each example runs under, the check that only a typed
error escapes, and strategies that make valid documents hostile."""

from __future__ import annotations

import contextlib
import copy
import io
import re
import resource
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import yaml
from hypothesis import event, settings
from hypothesis import strategies as st

from tuneloop.cli.main import main
from tuneloop.errors import Problem, TuneloopError

PROFILE = "tuneloop-fuzz"
REPO = Path(__file__).resolve().parents[2]

CPU_SECONDS = 20
"""CPU time one example may use: hundreds of times what a handled input takes. CPU time, not
the clock, so a busy machine does not fail the suite."""
MEMORY_HEADROOM = 1 << 30
"""Address space one example may add to what the test process already holds."""


def fuzz_settings() -> settings:
    """The suite's profile (registered by conftest.py)."""
    return settings(parent=settings.get_profile(PROFILE))


class ExampleTooExpensiveError(Exception):
    """An example ran past CPU_SECONDS: a hang, as far as the suite is concerned. Deliberately no
    TuneloopError, so that it fails the test."""


def _too_expensive(signum: int, frame: FrameType | None) -> None:
    raise ExampleTooExpensiveError(f"an example used more than {CPU_SECONDS} s of CPU time")


def _address_space() -> int:
    pages = int(Path("/proc/self/statm").read_text().split()[0])
    return pages * resource.getpagesize()


@contextlib.contextmanager
def bounded() -> Iterator[None]:
    """Run the body under a CPU-time alarm and an address-space limit, then lift both: a runaway
    example fails with ExampleTooExpensiveError or MemoryError instead of taking the machine.

    The soft limit goes back up afterwards (a process may raise its soft limit to the hard one),
    so the rest of the test session is unaffected. SIGPROF, not SIGALRM: pytest-timeout owns
    SIGALRM."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _address_space() + MEMORY_HEADROOM
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    previous = signal.signal(signal.SIGPROF, _too_expensive)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    signal.setitimer(signal.ITIMER_PROF, CPU_SECONDS)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        signal.signal(signal.SIGPROF, previous)


_NOT_FOR_USERS = re.compile(r"Traceback|<bound method|<function |<built-in | object at 0x")


def assert_clean_text(text: str) -> None:
    """Output meant for a user: no traceback and no Python object shown by its repr."""
    found = _NOT_FOR_USERS.search(text)
    assert found is None, f"output shows {found.group(0)!r}: {text[:500]}"


def assert_clean_problems(problems: list[Problem]) -> None:
    """Each problem is one line a user can read."""
    assert problems, "a TuneloopError with no problem in it"
    for problem in problems:
        line = problem.format()
        assert "\n" not in line and "\r" not in line, f"a problem over several lines: {line!r}"
        assert_clean_text(line)


def only_typed_errors(call: Callable[[], Any]) -> TuneloopError | None:
    """Run ``call`` within the bounds; a TuneloopError (checked to be clean lines) is the only
    exception allowed out, and is returned."""
    try:
        with bounded():
            call()
    except TuneloopError as exc:
        assert_clean_problems(exc.problems)
        event(f"refused: {type(exc).__name__}")
        return exc
    event("accepted")
    return None


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """`tuneloop ARGV` in this process: exit code, stdout, stderr. argparse's own exits count
    as exit codes; any other exception goes on up and fails the test."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), bounded():
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
    return code, out.getvalue(), err.getvalue()


# --- strategies ----------------------------------------------------------------------------------

HOSTILE_YAML_VALUES = [
    "9" * 5000,
    "[" * 100 + "]" * 100,
    "&a [*a]",
    "[&a [lol, lol], &b [*a, *a, *a], &c [*b, *b, *b], *c, *c]",
    "!!python/object/apply:os.system ['true']",
    "? [a, b]\n: 1",
    "{a: 1, a: 2}",
    "1e999999",
    "2026-13-45",
]
"""Command-line values (``--set``) that YAML reads into something hostile."""

HOSTILE_TEXT = [
    "",
    " ",
    "\n",
    "sft\n",
    "\x00",
    "\ufeff",
    "\u202e",
    "a" * 300,
    *HOSTILE_YAML_VALUES,
    "-1",
    ".nan",
    ".inf",
    "~",
    "null",
    "true",
    "0x1F",
    "0o17",
    "2026-02-30",
    "{{ ds }}",
    "{{ ds",
    "}}",
    "{{ range(10**9) }}",
    "{{ 'a' * 10**10 }}",
    "{{ 10**10**10 }}",
    "{% include '/etc/passwd' %}",
    "{% for i in range(10000) %}{% for j in range(10000) %}x{% endfor %}{% endfor %}",
    "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "{{ cycler.__init__.__globals__.os }}",
    "${oc.env:HOME}",
    "${training_config.max_steps}",
    "${a}",
    "${",
    "s3://",
    "s3:///x",
    "s3://b/x y.jsonl",
    "s3://me@customer-escrow-123456789012-smtj-abcde/x",
    "s3://Bad_Bucket/x",
    "https://user:pw@mlflow.example.com",
    "/etc/passwd",
    "../../../../../../etc/passwd",
    "/dev/zero",
    "local/sft-full.yaml",
    "nova/nova-lite/sft-full.yaml",
    "sft",
    "rft",
    "cpt",
    "amazon.nova-lite-v1:0:300k",
    "local.tiny-chat-v1",
    "ml.p5.48xlarge",
    "exact_match",
    "@daily",
    "61 99 * * 9",
    "*/5 * * * *",
]
"""Values users get wrong, or attackers try: each names a limit or a check of issue 13."""

HOSTILE_KEYS = ["int", "a[0", "]", "[0]", "a.b", "", "~", "<<", "name", "x\n", "__class__"]

YAML_FRAGMENTS = [
    "&a ",
    "*a",
    "*undefined",
    "<<: *a\n",
    "!!python/object/apply:os.system ['true'] ",
    "!!python/name:os.system ",
    "!!binary aGk= ",
    "!!set {a, b} ",
    "!!omap [a: 1] ",
    "!!timestamp 2026-13-45 ",
    "!!timestamp soon ",
    "!!bool maybe ",
    "!!int x ",
    "!!float x ",
    "!!null x ",
    "!custom ",
    "? [a, b]\n: 1\n",
    "[" * 200,
    "{" * 50,
    "- ",
    ": ",
    "\t",
    "\x00",
    "\ufeff",
    "\r\n",
    "%YAML 1.1\n---\n",
    "---\n",
    "...\n",
    "|\n  x\n",
    ">-\n  x\n",
    "'",
    '"',
    "#",
    "9" * 5000,
    "1e999999",
    "2026-13-45",
]


def _scalars() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(10**40), 10**40),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=20),
        st.sampled_from(HOSTILE_TEXT),
    )


KEYS: st.SearchStrategy[Any] = st.one_of(
    st.text(max_size=12),
    st.sampled_from(HOSTILE_KEYS),
    st.integers(-3, 3),
    st.booleans(),
    st.none(),
)
VALUES: st.SearchStrategy[Any] = st.recursive(
    _scalars(),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(KEYS, children, max_size=4)
    ),
    max_leaves=12,
)


def _places(data: Any, here: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """The path of every value inside ``data`` (keys and list indexes)."""
    if isinstance(data, dict):
        items: Any = data.items()
    elif isinstance(data, list):
        items = enumerate(data)
    else:
        return
    for key, value in items:
        yield (*here, key)
        yield from _places(value, (*here, key))


def _at(data: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        data = data[step]
    return data


@st.composite
def mutated(draw: st.DrawFn, base: Any) -> Any:
    """``base`` (a parsed document) with one to three values replaced, added or removed."""
    data = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        places = list(_places(data))
        operation = draw(st.sampled_from(["set", "set", "add", "drop"]))
        if operation == "add" or not places:
            containers = [()] + [p for p in places if isinstance(_at(data, p), (dict, list))]
            container = _at(data, draw(st.sampled_from(containers)))
            if isinstance(container, dict):
                container[draw(KEYS)] = draw(VALUES)
            else:
                container.append(draw(VALUES))
            continue
        *parent, last = draw(st.sampled_from(places))
        if operation == "set":
            _at(data, tuple(parent))[last] = draw(VALUES)
        else:
            del _at(data, tuple(parent))[last]
    return data


@st.composite
def mangled(draw: st.DrawFn, text: str) -> str:
    """``text`` with up to three fragments (YAML syntax, or any text) put in: in place of a
    value (where a tag or an alias does the most), or anywhere, cutting a few characters."""
    for _ in range(draw(st.integers(1, 3))):
        fragment = draw(st.one_of(st.sampled_from(YAML_FRAGMENTS), st.text(max_size=8)))
        lines = text.splitlines(keepends=True)
        values = [i for i, line in enumerate(lines) if ": " in line.split("#")[0]]
        instead_of_a_value = draw(st.booleans())
        if values and instead_of_a_value:
            i = draw(st.sampled_from(values))
            key = lines[i][: lines[i].index(": ") + 2]
            lines[i] = key + fragment.rstrip("\n") + "\n"
            text = "".join(lines)
            continue
        where = draw(st.integers(0, len(text)))
        cut = draw(st.integers(0, 3))
        text = text[:where] + fragment + text[where + cut :]
    return text


def dump(draw: st.DrawFn, data: Any) -> str:
    return yaml.safe_dump(
        data,
        sort_keys=False,
        allow_unicode=draw(st.booleans()),
        default_flow_style=draw(st.sampled_from([False, None])),
    )


@st.composite
def hostile_document(draw: st.DrawFn, base_text: str) -> str:
    """A valid document's text made hostile: its values mutated, its text mangled, or both."""
    how = draw(st.sampled_from(["values", "text", "both"]))
    text = base_text
    if how != "text":
        text = dump(draw, draw(mutated(yaml.safe_load(base_text))))
    if how != "values":
        text = draw(mangled(text))
    return text
