"""A campaign's ``schedule``: an Airflow preset or a five-field cron expression, checked field by
field so that ``61 99 * * 9`` is refused when the campaign is validated, naming each field out of
range, instead of breaking the DAG when Airflow parses it.

What is accepted is a subset of what Airflow's cron library (croniter) accepts, so a schedule
that passes here always makes a valid DAG: per field ``*``, a value, a range ``a-b`` (a range
that wraps, such as ``fri-mon``, is allowed), a step ``*/n``, ``a/n`` or ``a-b/n``, and lists of
those; month and weekday names (``jan``, ``mon``; any case); ``?`` for a whole day or weekday
field; ``L`` (the last day) and ``15W`` (the nearest weekday) in the day field; ``mon#2`` (the
second Monday) and ``L5`` (the last Friday) in the weekday field. Plain Python, no croniter: the
campaign model is built every time a DAG file is parsed.
"""

from __future__ import annotations

import re

PRESETS = (
    "@once",
    "@hourly",
    "@daily",
    "@weekly",
    "@monthly",
    "@quarterly",
    "@yearly",
    "@annually",
)
ALLOWED = (
    f"a preset ({', '.join(PRESETS)}) or 5 fields: minute 0-59, hour 0-23, day 1-31, month "
    "1-12 or jan-dec, weekday 0-7 or sun-sat (0 and 7 are Sunday); each field *, a value, a "
    "range a-b, a step */n or a-b/n, or a list a,b"
)
FIX = "correct the fields named, or use a preset such as @daily (null: start rounds by hand)"
MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
# The longest each month can be (February in a leap year), to catch a day that never comes.
DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
MOST_PROBLEMS_SHOWN = 5

_ITEM = re.compile(r"(?P<low>\*|[0-9A-Za-z]+)(?:-(?P<high>[0-9A-Za-z]+))?(?:/(?P<step>[^/]*))?\Z")
_NEAREST_WEEKDAY = re.compile(r"(?:(?P<before>\d{1,2})W|W(?P<after>\d{1,2}))\Z", re.IGNORECASE)
_NTH_WEEKDAY = re.compile(r"(?P<day>[0-9A-Za-z]+)#(?P<nth>\d+)\Z")
_LAST_WEEKDAY = re.compile(r"L(?P<day>\d+)\Z", re.IGNORECASE)


class CronField:
    """One of the five fields, and what was found wrong in it. A plain class: a dataclass costs
    every DAG parse more than this whole module does."""

    __slots__ = ("high", "low", "name", "names", "problems")

    def __init__(self, name: str, low: int, high: int, names: tuple[str, ...] = ()) -> None:
        self.name, self.low, self.high = name, low, high
        self.names = names
        """Names for the values from ``low`` up (months from 1, weekdays from 0)."""
        self.problems: list[str] = []

    @property
    def span(self) -> str:
        text = f"{self.low}-{self.high}"
        return f"{text} or {self.names[0]}-{self.names[-1]}" if self.names else text


def _fields() -> tuple[CronField, ...]:
    return (
        CronField("minute", 0, 59),
        CronField("hour", 0, 23),
        CronField("day", 1, 31),
        CronField("month", 1, 12, MONTHS),
        CronField("weekday", 0, 7, WEEKDAYS),
    )


def schedule_problems(expression: str) -> list[str]:
    """What is wrong with a schedule, each one short; empty when Airflow will accept it."""
    if not expression.strip():
        return ["the schedule is empty (null starts rounds by hand only)"]
    if expression.startswith("@"):
        return [] if expression in PRESETS else [f"{_shown(expression)} is not a preset"]
    parts = re.split(r"[ \t]+", expression.strip(" \t"))
    if len(parts) != 5:
        return [
            f"{_shown(expression)} has {len(parts)} field{'s' if len(parts) != 1 else ''}; a "
            "cron schedule has 5: minute hour day month weekday"
        ]
    fields = _fields()
    for cron_field, text in zip(fields, parts, strict=True):
        _check_field(cron_field, text)
    problems = [problem for cron_field in fields for problem in cron_field.problems]
    return _combination_problems(*parts[2:]) if not problems else problems[:MOST_PROBLEMS_SHOWN]


def _shown(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:40] + "...")


def _check_field(cron_field: CronField, text: str) -> None:
    if text == "?":
        if cron_field.name not in {"day", "weekday"}:
            cron_field.problems.append(
                f"'?' is allowed in day and weekday, not in {cron_field.name}"
            )
        return
    items = text.split(",")
    if cron_field.name == "weekday" and _has_special_weekday(text):
        _check_special_weekdays(cron_field, items)
        return
    if cron_field.name == "day" and "W" in text.upper():
        _check_nearest_weekday(cron_field, text)
        return
    for item in items:
        _check_item(cron_field, item)


def _has_special_weekday(text: str) -> bool:
    return any("#" in item or item[:1] in ("L", "l") for item in text.split(","))


def _check_item(cron_field: CronField, item: str) -> None:
    if cron_field.name == "day" and item.upper() == "L":
        return  # the last day of the month
    match = _ITEM.match(item)
    if match is None:
        cron_field.problems.append(
            f"{cron_field.name} {_shown(item)} is not a value, range or step"
        )
        return
    low, high, step = match.group("low", "high", "step")
    first = _value(cron_field, low) if low != "*" else None
    if high is not None and not (cron_field.name == "day" and high.upper() == "L"):
        if low == "*":
            cron_field.problems.append(
                f"{cron_field.name} {_shown(item)}: '*' is not a range start"
            )
        elif (last := _value(cron_field, high)) is not None and last == first:
            # croniter reads a range from a value to itself as the whole field.
            cron_field.problems.append(
                f"{cron_field.name} {_shown(item)} runs from a value to itself; write {low}"
            )
    if step is not None:
        _check_step(cron_field, step)


def _value(cron_field: CronField, token: str) -> int | None:
    """The number ``token`` stands for in this field, or None (and a problem) when it is none."""
    if token.isdigit() and token.isascii():
        # Not int() of any length: a 5,000-digit value would hit Python's digit limit.
        number = int(token) if len(token) <= 6 else cron_field.high + 1
        if cron_field.low <= number <= cron_field.high:
            return number
        shown = token if len(token) <= 6 else token[:6] + "..."
        cron_field.problems.append(
            f"{cron_field.name} {shown} is out of range {cron_field.low}-{cron_field.high}"
        )
        return None
    if token.lower() in cron_field.names:
        return cron_field.names.index(token.lower()) + (1 if cron_field.name == "month" else 0)
    cron_field.problems.append(
        f"{cron_field.name} {_shown(token)} is not a {cron_field.name} (allowed: {cron_field.span})"
    )
    return None


def _check_step(cron_field: CronField, step: str) -> None:
    if not (
        step.isdigit() and step.isascii() and len(step) <= 6 and 1 <= int(step) <= cron_field.high
    ):
        cron_field.problems.append(
            f"{cron_field.name} step {_shown(step)} is out of range 1-{cron_field.high}"
        )


def _check_nearest_weekday(cron_field: CronField, text: str) -> None:
    match = _NEAREST_WEEKDAY.match(text)
    if match is None:
        cron_field.problems.append(
            f"day {_shown(text)}: W (the nearest weekday) takes one day and nothing else, e.g. 15W"
        )
        return
    _value(cron_field, match.group("before") or match.group("after"))


def _check_special_weekdays(cron_field: CronField, items: list[str]) -> None:
    # croniter refuses a list that mixes plain weekdays with mon#2 or L5.
    for item in items:
        nth, last = _NTH_WEEKDAY.match(item), _LAST_WEEKDAY.match(item)
        if nth is not None:
            _value(cron_field, nth.group("day"))
            week = nth.group("nth")
            if len(week) > 2 or not 1 <= int(week) <= 5:
                cron_field.problems.append(
                    f"weekday {_shown(item)}: the week of the month is 1-5 (e.g. mon#2)"
                )
        elif last is not None:
            _value(cron_field, last.group("day"))
        else:
            cron_field.problems.append(
                f"weekday {_shown(item)} is not mon#2 or L5 (a list with one of those may hold "
                "only such items)"
            )


def _combination_problems(day: str, month: str, weekday: str) -> list[str]:
    """Fields each valid alone that together never (or not reliably) make a next run."""
    fields = _fields()
    every_weekday = _expand(fields[4], weekday) == set(range(7))
    # With mon#2, L5 or 15W, croniter wants the day and the weekday both to hold, and mostly
    # finds no next run; the scheduler would then fail on the DAG.
    if _has_special_weekday(weekday) and _expand(fields[2], day) != set(range(1, 32)):
        return [f"weekday {_shown(weekday)} (mon#2, L5) needs day * or ?"]
    if "W" in day.upper() and not every_weekday:
        return [f"day {_shown(day)} (the nearest weekday) needs weekday * or ?"]
    if not every_weekday:
        return []  # a day OR a weekday: the weekday still comes
    return _never_comes(_expand(fields[2], day), _expand(fields[3], month))


def _never_comes(days: set[int] | None, months: set[int] | None) -> list[str]:
    """A day of the month no listed month has (``30 2``): croniter accepts it, and the schedule
    then never finds a next run."""
    if not days or not months:
        return []
    if min(days) <= max(DAYS_IN_MONTH[m - 1] for m in months):
        return []
    names = ", ".join(MONTHS[m - 1] for m in sorted(months))
    return [f"day {min(days)} never comes in {names}, so the schedule would never run"]


def _expand(cron_field: CronField, text: str) -> set[int] | None:
    """The values a valid field covers (weekday 7 read as 0); None for what this does not
    expand (L, W, mon#2, a wrapping range with a step)."""
    if text == "?":
        text = "*"
    values: set[int] = set()
    for item in text.split(","):
        covered = _expand_item(cron_field, item)
        if covered is None:
            return None
        values |= covered
    return {0 if cron_field.name == "weekday" and v == 7 else v for v in values}


def _expand_item(cron_field: CronField, item: str) -> set[int] | None:
    match = _ITEM.match(item)
    if match is None:
        return None
    low_text, high_text, step_text = match.group("low", "high", "step")
    # The field was checked already: what _value finds again goes to a scratch copy.
    scratch = CronField(cron_field.name, cron_field.low, cron_field.high, cron_field.names)
    low = cron_field.low if low_text == "*" else _value(scratch, low_text)
    high = _value(scratch, high_text) if high_text else None
    step = int(step_text) if step_text else 1
    if low is None or (high_text and high is None):
        return None
    if high is None:
        high = cron_field.high if (low_text == "*" or step_text) else low
    if low <= high:
        return set(range(low, high + 1, step))
    if step != 1:
        return None
    return set(range(low, cron_field.high + 1)) | set(range(cron_field.low, high + 1))
