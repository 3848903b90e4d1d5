"""Airflow templates in campaign values (``s3://bucket/{{ ds }}/train.jsonl``).

A round's data URIs are rendered with that run's Airflow context, so a schedule or a backfill
feeds each round its own data. Outside Airflow (`tuneloop campaign validate`), a sample context
for a chosen logical date stands in.

A campaign value is a short string, and whoever wrote the campaign should not be able to make a
round hang or run out of memory by writing one. So templates render in a sandbox with limits:

- only ``{{ expressions }}``, ``{% if %}`` and ``{% set %}``: no loops, macros, includes or
  imports, so the work done is bounded by the template's length (a guard that holds by
  construction, where a clock would make the outcome depend on the machine's load);
- a template of at most `MAX_TEMPLATE_CHARS` characters, rendering to at most
  `MAX_OUTPUT_CHARS`;
- every operator that can make a big value (``*``, ``**``, ``%``, ``+``) checks the size of its
  result before computing it, and every call and filter has its numbers (widths, counts) and
  its result checked: strings of at most `MAX_OUTPUT_CHARS`, lists of at most `MAX_ITEMS`,
  integers of at most `MAX_INT_BITS` bits, ``range`` of at most `MAX_ITEMS` numbers.

Each refusal is a ValueError with a one-line message, which callers turn into a Problem.
"""

from __future__ import annotations

import functools
import math
import re
import string
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

MAX_TEMPLATE_CHARS = 4096
"""The longest templated value (a data URI is far shorter)."""
MAX_OUTPUT_CHARS = 4096
"""The longest string a template may produce, in the end or on the way."""
MAX_ITEMS = 4096
"""The most items in a list, tuple, mapping, range or iteration a template makes."""
MAX_INT_BITS = 256
"""The largest integer a template may compute (about 77 digits)."""
MAX_ARGUMENT = 4096
"""The largest number a call or filter may be given: a width or a count beyond it would build a
huge value before its size could be checked."""

ALLOWED_STATEMENTS = ("Output", "If", "Assign", "AssignBlock")
"""Jinja statement nodes a campaign value may hold; anything else (for, macro, call, include,
import, extends, block, filter, with) is refused before rendering."""
_TAGS = {"CallBlock": "call", "FromImport": "from", "FilterBlock": "filter", "ExprStmt": "do"}


class _LimitExceeded(Exception):
    """A template that would exceed a limit (its message says which); `render_template` turns
    it into a ValueError, so it never leaves this module."""


def sample_template_context(logical_date: date | None = None) -> dict[str, Any]:
    """The Airflow template variables a data URI may use, for a run on ``logical_date``."""
    day = logical_date or datetime.now(UTC).date()
    start = datetime.combine(day, time.min, tzinfo=UTC)
    return {
        "ds": day.isoformat(),
        "ds_nodash": day.strftime("%Y%m%d"),
        "ts": start.isoformat(),
        "ts_nodash": start.strftime("%Y%m%dT%H%M%S"),
        "logical_date": start,
        "data_interval_start": start,
        "data_interval_end": start + timedelta(days=1),
        "prev_ds": (day - timedelta(days=1)).isoformat(),
        "next_ds": (day + timedelta(days=1)).isoformat(),
        "run_id": f"manual__{start.isoformat()}",
        "params": {},
        "var": {"value": {}, "json": {}},
    }


def render_template(text: str, context: dict[str, Any]) -> str:
    """Render ``{{ ... }}`` in a campaign value; undefined names are errors, not empty strings.

    Raises ValueError (one line) for a template that does not render or exceeds a limit (see
    the module's docstring); nothing it names is read from disk (there is no template loader).
    """
    if "{{" not in text and "{%" not in text:
        return text
    import jinja2

    shown = _shown(text)
    if len(text) > MAX_TEMPLATE_CHARS:
        raise ValueError(
            f"cannot render {shown}: a templated value may be at most {MAX_TEMPLATE_CHARS:,} "
            f"characters ({len(text):,} here)"
        )
    try:
        output = _render(text, context)
    except jinja2.UndefinedError as exc:
        names = ", ".join(sorted(k for k in context if not k.startswith("_")))
        raise ValueError(
            f"{_one_line(exc.message)} in {shown} (template variables: {names})"
        ) from None
    except (jinja2.TemplateError, _LimitExceeded) as exc:
        raise ValueError(f"cannot render {shown}: {_one_line(exc)}") from None
    except RecursionError:
        raise ValueError(f"cannot render {shown}: the expression is nested too deeply") from None
    except Exception as exc:  # whatever the expression raised (1/0, a bad date): the user's
        raise ValueError(f"cannot render {shown}: {type(exc).__name__}: {_one_line(exc)}") from None
    if len(output) > MAX_OUTPUT_CHARS:
        raise ValueError(
            f"cannot render {shown}: it renders to {len(output):,} characters (at most "
            f"{MAX_OUTPUT_CHARS:,})"
        )
    return output


def _render(text: str, context: dict[str, Any]) -> str:
    env = _environment()
    tree = env.parse(text)
    _refuse_statements(tree)
    return str(env.from_string(tree).render(**context))


def _refuse_statements(tree: Any) -> None:
    """Refuse every statement but `ALLOWED_STATEMENTS`: the rest loop, recurse or read files."""
    from jinja2 import nodes

    pending = [tree]
    while pending:  # a loop, not recursion: a deeply nested expression must not overflow here
        node = pending.pop()
        kind = type(node).__name__
        if isinstance(node, nodes.Stmt) and kind not in ALLOWED_STATEMENTS:
            tag = _TAGS.get(kind, kind.lower())
            raise _LimitExceeded(
                f"line {node.lineno}: {{% {tag} %}} is not allowed in a campaign value (only "
                "{{ expressions }}, {% if %} and {% set %})"
            )
        pending.extend(node.iter_child_nodes())


@functools.cache
def _environment() -> Any:
    """The sandboxed Jinja environment, built once (jinja2 is imported only when a value is
    templated: DAG files import this module)."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class LimitedEnvironment(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**", "%", "+", "-", "/", "//"})

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            _check_binop(operator, left, right)
            return _checked(super().call_binop(context, operator, left, right))

        def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
            # positional-only: a template's keyword arguments may have any name
            _check_call_arguments(obj, args, kwargs)
            return _checked(super().call(context, obj, *args, **kwargs))

    env = LimitedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False, optimized=False)
    # Built-in filters run outside `call`: wrap each so the same checks apply.
    env.filters = {name: _limited_filter(name, f) for name, f in env.filters.items()}
    env.globals.pop("lipsum", None)  # paragraphs of placeholder text: no use in a URI
    env.globals["range"] = _limited_range
    return env


# --- the checks --------------------------------------------------------------------------------

_SIZED = (str, bytes, list, tuple, dict, set, frozenset, range)


def _checked(value: Any) -> Any:
    """``value`` if it is within the limits; an iterator comes back counting its items."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise _LimitExceeded(f"a number of {value.bit_length():,} bits (at most {MAX_INT_BITS})")
    if isinstance(value, str | bytes) and len(value) > MAX_OUTPUT_CHARS:
        raise _LimitExceeded(
            f"a string of {len(value):,} characters (at most {MAX_OUTPUT_CHARS:,})"
        )
    if isinstance(value, _SIZED) and len(value) > MAX_ITEMS:
        raise _LimitExceeded(f"{len(value):,} items (at most {MAX_ITEMS:,})")
    if isinstance(value, Iterator):
        return _limited_iteration(value)
    return value


def _limited_iteration(items: Iterator[Any]) -> Iterator[Any]:
    for count, item in enumerate(items, start=1):
        if count > MAX_ITEMS:
            raise _LimitExceeded(f"more than {MAX_ITEMS:,} items")
        yield item


def _check_binop(operator: str, left: Any, right: Any) -> None:
    """Refuse ``left operator right`` when its result would be too big to compute."""
    if operator == "**" and _is_int(left) and _is_int(right) and right > 0 and abs(left) > 1:
        bits = right * math.log2(abs(left))
        if bits > MAX_INT_BITS:
            raise _LimitExceeded(
                f"{left} ** {right} is a number of about {bits:,.0f} bits (at most {MAX_INT_BITS})"
            )
    if operator == "*":
        for sequence, times in ((left, right), (right, left)):
            if isinstance(sequence, str | bytes | list | tuple) and _is_int(times):
                size = len(sequence) * times
                limit = MAX_OUTPUT_CHARS if isinstance(sequence, str | bytes) else MAX_ITEMS
                if size > limit:
                    what = "characters" if isinstance(sequence, str | bytes) else "items"
                    raise _LimitExceeded(
                        f"{len(sequence):,} {what} repeated {times:,} times would make "
                        f"{size:,} (at most {limit:,})"
                    )
    if operator == "%" and isinstance(left, str):
        _check_percent_format(left)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")


def _check_percent_format(text: str) -> None:
    """``'%1000000000s' % x`` would build a billion spaces: bound every width and precision."""
    for spec in _PERCENT_SPEC.finditer(text):
        _check_widths(spec.group(0), [g for g in spec.groups() if g])


def _check_format_string(text: str) -> None:
    """The same for ``'{:>1000000000}'.format(x)``: the widths in each replacement field."""
    for _, field_name, spec, _ in string.Formatter().parse(text):
        if field_name is not None and spec:
            _check_widths(spec, re.findall(r"\{[^}]*\}|\d+", spec))


def _check_widths(spec: str, numbers: list[str]) -> None:
    for number in numbers:
        if not number.isdigit() or len(number) > 9 or int(number) > MAX_ARGUMENT:
            raise _LimitExceeded(
                f"the format {spec!r} asks for a width or precision over {MAX_ARGUMENT:,}, or "
                "one taken from an argument"
            )


def _check_call_arguments(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Numbers given to a method are widths or counts (``'a'.center(n)``); a format string's
    widths are checked instead where its arguments are values to show."""
    wrapped = getattr(func, "__wrapped__", func)
    owner = getattr(wrapped, "__self__", None)
    if isinstance(owner, str) and getattr(wrapped, "__name__", "") in ("format", "format_map"):
        _check_format_string(owner)
        return
    if _takes_values(func, owner):
        return
    _check_numbers(getattr(func, "__name__", "the call"), [*args, *kwargs.values()])


def _takes_values(func: Any, owner: Any) -> bool:
    """Calls whose arguments are values to hold, not sizes: ``dict(n=...)``,
    ``namespace(n=...)``, ``params.get('n', 100000)`` (and `range`, which checks its own)."""
    from jinja2.utils import Namespace

    if func is dict or func is Namespace or func is _limited_range:
        return True
    return isinstance(owner, Mapping) and getattr(func, "__name__", "") == "get"


def _check_numbers(name: str, values: list[Any]) -> None:
    for value in values:
        if _is_int(value) and abs(value) > MAX_ARGUMENT:
            shown = f"{value:,}" if value.bit_length() <= MAX_INT_BITS else "a huge number"
            raise _LimitExceeded(
                f"{name}() was given {shown}; a number given to a method or filter is at most "
                f"{MAX_ARGUMENT:,}"
            )


VALUE_FILTERS = frozenset({"format", "default", "d"})
"""Filters whose arguments are values to show, not widths or counts."""


def _limited_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    passes_context = getattr(func, "jinja_pass_arg", None) is not None

    @functools.wraps(func)  # keeps jinja_pass_arg, which tells Jinja what to pass first
    def limited(*args: Any, **kwargs: Any) -> Any:
        first = 1 if passes_context else 0  # the context Jinja passes, then the value
        if name == "format" and len(args) > first and isinstance(args[first], str):
            _check_percent_format(args[first])
        if name not in VALUE_FILTERS:
            _check_numbers(name, [*args[first + 1 :], *kwargs.values()])
        return _checked(func(*args, **kwargs))

    return limited


def _limited_range(*args: int) -> range:
    numbers = range(*args)
    try:
        size = len(numbers)
    except OverflowError:  # more than fits in a machine integer
        size = -1
    if size < 0 or size > MAX_ITEMS:
        shown = f"{size:,}" if size >= 0 else "more than 2**63"
        raise _LimitExceeded(f"range() of {shown} numbers (at most {MAX_ITEMS:,})")
    return numbers


# --- messages ----------------------------------------------------------------------------------


def _shown(text: str, limit: int = 120) -> str:
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text):,} characters)"


def _one_line(exc: BaseException | str | None) -> str:
    return " ".join(str(exc or "").split())
