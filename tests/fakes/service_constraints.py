"""What an AWS service checks of a request, read from botocore's own service model.

botocore's client-side validation (``botocore.validate.ParamValidator``) checks required and
unknown members, types and minimum lengths and values. The service also enforces what the model
declares beyond that: maximum lengths, sizes and values, string patterns and enums. ``problems``
walks a request against an operation's input shape and reports every such violation, worded as
the service words it, so a test (or a fake service) refuses what the real one would.
"""

from __future__ import annotations

import functools
import re
import sys
import unicodedata
from typing import Any

# Unicode classes the service models use in patterns (tag keys and values); Python's re has no
# \p{...}, so each becomes the explicit ranges of its general category.
_PROPERTY = re.compile(r"\\p\{([A-Z])\}")


def operation_input(service: str, operation: str) -> Any:
    """The input shape of ``operation`` in botocore's model of ``service``."""
    return _service_model(service).operation_model(operation).input_shape


@functools.cache
def _service_model(service: str) -> Any:
    import botocore.session

    return botocore.session.get_session().get_service_model(service)


@functools.cache
def _category_ranges(major: str) -> str:
    """``a-zà-ö...``: every code point whose general category starts with ``major``, as
    character-class ranges."""
    ranges: list[str] = []
    start = previous = -2
    for code in range(sys.maxunicode + 1):
        if unicodedata.category(chr(code))[0] != major:
            continue
        if code != previous + 1:
            if start >= 0:
                ranges.append(_range(start, previous))
            start = code
        previous = code
    ranges.append(_range(start, previous))
    return "".join(ranges)


def _range(first: int, last: int) -> str:
    if first == last:
        return re.escape(chr(first))
    return f"{re.escape(chr(first))}-{re.escape(chr(last))}"


@functools.cache
def compiled(pattern: str) -> re.Pattern[str]:
    """A model pattern as Python's re reads it. The service matches the whole value."""
    translated = _PROPERTY.sub(lambda match: _category_ranges(match.group(1)), pattern)
    return re.compile(translated)


def matches(pattern: str, value: str) -> bool:
    return compiled(pattern).fullmatch(value) is not None


def request_problems(service: str, operation: str, request: dict[str, Any]) -> list[str]:
    """Everything the service would refuse in ``request``: botocore's own validation report,
    then the model's maximums, patterns and enums."""
    from botocore.validate import ParamValidator

    shape = operation_input(service, operation)
    report = ParamValidator().validate(request, shape)
    found = [report.generate_report()] if report.has_errors() else []
    return found + problems(shape, request)


def problems(shape: Any, value: Any, path: str = "") -> list[str]:
    """The model constraints ``value`` breaks under ``shape`` (botocore checks the rest)."""
    meta = shape.metadata
    found: list[str] = []
    where = path or shape.name
    if shape.type_name == "structure":
        if not isinstance(value, dict):
            return [f"Value at '{where}' is not a structure"]
        for name, item in value.items():
            member = shape.members.get(name)
            if member is None:
                found.append(f"Unknown member '{name}' at '{where}'")
            else:
                found += problems(member, item, f"{path}.{name}" if path else name)
        return found
    if shape.type_name == "list":
        if "max" in meta and len(value) > meta["max"]:
            found.append(
                f"Value at '{where}' failed to satisfy constraint: Member must have length "
                f"less than or equal to {meta['max']}"
            )
        for index, item in enumerate(value):
            found += problems(shape.member, item, f"{where}[{index}]")
        return found
    if shape.type_name == "map":
        if "max" in meta and len(value) > meta["max"]:
            found.append(
                f"Value at '{where}' failed to satisfy constraint: Map must have at most "
                f"{meta['max']} entries"
            )
        for key, item in value.items():
            found += problems(shape.key, key, f"{where}.key({key!r})")
            found += problems(shape.value, item, f"{where}[{key!r}]")
        return found
    if shape.type_name == "string":
        if not isinstance(value, str):
            return [f"Value at '{where}' is not a string"]
        if "max" in meta and len(value) > meta["max"]:
            found.append(
                f"Value at '{where}' failed to satisfy constraint: Member must have length "
                f"less than or equal to {meta['max']}"
            )
        if "pattern" in meta and not matches(meta["pattern"], value):
            found.append(
                f"Value {value[:80]!r} at '{where}' failed to satisfy constraint: Member must "
                f"satisfy regular expression pattern: {meta['pattern']}"
            )
        if shape.enum and value not in shape.enum:
            found.append(
                f"Value {value!r} at '{where}' failed to satisfy constraint: Member must "
                f"satisfy enum value set: [{', '.join(shape.enum)}]"
            )
        return found
    if shape.type_name in ("integer", "long"):
        if "max" in meta and value > meta["max"]:
            found.append(
                f"Value {value} at '{where}' failed to satisfy constraint: Member must have "
                f"value less than or equal to {meta['max']}"
            )
        return found
    return found
