"""YAML documents that remember where each value came from, and pydantic errors as Problems.

Recipes and campaigns are YAML edited by hand. When one is wrong, the user needs the file, the
line and the field, not a traceback, so documents keep a map from field path to line number and
validation errors are translated into `Problem` lines that point there.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import annotated_types
import yaml
from pydantic import BaseModel, ValidationError

from tuneloop.errors import ConfigError, Problem

Loc = tuple[str | int, ...]


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-5`` as a float, as YAML 1.2 and the Nova launcher do.

    PyYAML follows YAML 1.1, where a float needs a dot: every Nova recipe writes ``lr: 1e-5``,
    which PyYAML would otherwise load as the string "1e-5".

    A value PyYAML's constructors reject with a plain Python error (an impossible date such as
    ``2026-13-45`` raises ValueError) becomes a YAML error at that value's line.
    """

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except _ValueError:
            raise
        except yaml.constructor.ConstructorError as exc:
            raise _ValueError(str(exc.problem), node) from None
        except (ValueError, TypeError, OverflowError) as exc:
            raise _ValueError(f"cannot read {node.value!r}: {exc}", node) from None


class _ValueError(yaml.constructor.ConstructorError):
    """A value that cannot be constructed, with its node (so the problem names its field)."""

    def __init__(self, problem: str, node: yaml.Node) -> None:
        super().__init__(None, None, problem, node.start_mark)
        self.node = node


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_scalar(text: str) -> Any:
    """Read a command-line value the way the same text would read in a YAML file."""
    try:
        return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: safe
    except yaml.YAMLError:
        return text


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=100)


@dataclass
class Document:
    """A parsed YAML mapping plus the line of every key in it."""

    data: dict[str, Any]
    source: str
    lines: dict[Loc, int] = field(default_factory=dict)

    def line_of(self, loc: Sequence[str | int]) -> int | None:
        """Line of the deepest known prefix of ``loc`` (a missing key points at its parent)."""
        loc = tuple(loc)
        while loc:
            if loc in self.lines:
                return self.lines[loc]
            loc = loc[:-1]
        return self.lines.get((), None)

    def problem(self, loc: Sequence[str | int], message: str, **kwargs: Any) -> Problem:
        return Problem(
            path=format_loc(loc),
            message=message,
            source=self.source,
            line=self.line_of(loc),
            **kwargs,
        )


def load_document(path: str | Path, text: str | None = None) -> Document:
    """Parse a YAML file whose top level must be a mapping. Raises ConfigError with locations."""
    source = str(path)
    if text is None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError([Problem("", "file not found", source=source)]) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError([Problem("", f"cannot read file: {exc}", source=source)]) from None
    return parse_document(text, source)


MAX_NODES = 200_000
"""Values a document may hold once aliases are expanded (``&a`` / ``*a`` can nest into billions)."""


def parse_document(text: str, source: str) -> Document:
    try:
        loader = _Loader(text)  # the reader refuses control characters at once
    except yaml.YAMLError as exc:
        raise _yaml_problem(exc, source, text) from None
    try:
        try:
            root = loader.get_single_node()
        except yaml.YAMLError as exc:
            raise _yaml_problem(exc, source) from None
        if root is None:
            raise ConfigError([Problem("", "the file is empty", source=source, line=1)])
        if not isinstance(root, yaml.MappingNode):
            raise ConfigError(
                [
                    Problem(
                        "",
                        "the top level must be a mapping of keys to values",
                        source=source,
                        line=root.start_mark.line + 1,
                    )
                ]
            )
        lines: dict[Loc, int] = {(): root.start_mark.line + 1}
        problems: list[Problem] = []
        walk = _Walk()
        _index_lines(root, (), lines, problems, source, walk)
        if problems:
            raise ConfigError(problems)
        try:
            data = loader.construct_document(root)  # a SafeLoader subclass: safe
        except yaml.YAMLError as exc:
            node = getattr(exc, "node", None)
            raise _yaml_problem(exc, source, loc=walk.locs.get(id(node), ())) from None
    finally:
        loader.dispose()
    return Document(data=data, source=source, lines=lines)


def _yaml_problem(exc: yaml.YAMLError, source: str, text: str = "", loc: Loc = ()) -> ConfigError:
    mark = getattr(exc, "problem_mark", None)
    line = mark.line + 1 if mark is not None else None
    if isinstance(exc, yaml.reader.ReaderError):  # a character YAML does not allow
        line = text.count("\n", 0, exc.position) + 1
        character = chr(exc.character) if isinstance(exc.character, int) else exc.character
        reason = f"character {character!r} is not allowed in YAML ({exc.reason})"
    else:
        reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return ConfigError(
        [Problem(format_loc(loc), f"not valid YAML: {reason}", source=source, line=line)]
    )


class _Walk:
    """What `_index_lines` has seen: the nodes on the current path (an alias that contains
    itself) and how many values there are in all (aliases that expand without end)."""

    def __init__(self) -> None:
        self.path: set[int] = set()
        self.count = 0
        self.locs: dict[int, Loc] = {}
        """Where each node was first met, to name the field of a value that cannot be read."""


def _index_lines(
    node: yaml.Node,
    loc: Loc,
    lines: dict[Loc, int],
    problems: list[Problem],
    source: str,
    walk: _Walk,
) -> None:
    walk.count += 1
    walk.locs.setdefault(id(node), loc)
    if walk.count > MAX_NODES:
        if walk.count == MAX_NODES + 1:
            problems.append(
                Problem(
                    format_loc(loc),
                    f"more than {MAX_NODES:,} values once aliases (*name) are expanded",
                    source=source,
                    line=node.start_mark.line + 1,
                    fix="write the values out instead of nesting aliases",
                )
            )
        return
    if id(node) in walk.path:
        problems.append(
            Problem(
                format_loc(loc),
                "a recursive alias: this value contains itself",
                source=source,
                line=node.start_mark.line + 1,
                fix="remove the alias (*name) that points back to its own anchor (&name)",
            )
        )
        return
    if not isinstance(node, yaml.MappingNode | yaml.SequenceNode):
        return
    walk.path.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                problems.append(
                    Problem(
                        format_loc(loc),
                        "a key must be a plain name, not a list or mapping",
                        source=source,
                        line=line,
                    )
                )
                continue
            key = key_node.value
            if key in seen:
                # PyYAML keeps the last value silently; a hand-edited recipe with two `lr:` keys
                # is almost always a mistake, and the first one is the one the user is reading.
                problems.append(
                    Problem(
                        format_loc((*loc, key)),
                        f"duplicate key (first set on line {seen[key]})",
                        source=source,
                        line=line,
                        fix="keep one of the two",
                    )
                )
            seen[key] = line
            lines[(*loc, key)] = line
            _index_lines(value_node, (*loc, key), lines, problems, source, walk)
    else:
        for index, item in enumerate(node.value):
            lines[(*loc, index)] = item.start_mark.line + 1
            _index_lines(item, (*loc, index), lines, problems, source, walk)
    walk.path.discard(id(node))


def format_loc(loc: Sequence[str | int]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def parse_loc(path: str) -> Loc:
    """The inverse of `format_loc`: ``stages[1].recipe`` -> ``("stages", 1, "recipe")``."""
    return tuple(
        int(piece.group(2)) if piece.group(2) is not None else piece.group(1)
        for piece in re.finditer(r"([^.\[\]]+)|\[(\d+)\]", path)
    )


# --- pydantic errors -> Problems -------------------------------------------------------------


def problems_from_validation_error(
    error: ValidationError,
    model: type[BaseModel],
    document: Document | None = None,
    *,
    prefix: Loc = (),
) -> list[Problem]:
    """Translate a pydantic ValidationError into one Problem per error, with allowed values."""
    problems = []
    for item in error.errors(include_url=False):
        loc: Loc = tuple(part for part in item["loc"][:-1] if not _is_union_tag(part))
        if item["loc"] and (
            item["type"] == "extra_forbidden" or not _is_union_tag(item["loc"][-1])
        ):
            loc = (*loc, item["loc"][-1])  # an unknown key is the user's, even one named "int"
        message, allowed = _describe(item, model, loc)
        full = (*prefix, *_without_discriminators(model, loc))
        if document is not None:
            problems.append(document.problem(full, message, allowed=allowed))
        else:
            problems.append(Problem(format_loc(full), message, allowed=allowed))
    return sorted(problems, key=lambda p: p.line or 0)


def _is_union_tag(part: str | int) -> bool:
    # pydantic inserts the union member into loc ("function-after[...]", "int", a model name).
    return isinstance(part, str) and (
        "[" in part or part in {"int", "float", "str", "bool", "none", "list", "dict"}
    )


def _describe(item: Mapping[str, Any], model: type[BaseModel], loc: Loc) -> tuple[str, str | None]:
    kind = item["type"]
    value = item.get("input")
    ctx = item.get("ctx") or {}
    if kind == "extra_forbidden":
        names = _field_names(model, loc[:-1])
        message = "unknown field"
        if names:
            close = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.6)
            if close:
                message += f"; did you mean '{close[0]}'?"
        return message, ", ".join(names) if names else None
    if kind == "missing":
        return "required field is missing", None
    allowed = ctx.get("allowed") or allowed_text(model, loc)
    if kind == "literal_error":
        return f"{_show(value)} is not allowed", allowed or ctx.get("expected")
    if kind in {"greater_than_equal", "less_than_equal", "greater_than", "less_than"}:
        return f"{_show(value)} is out of range", allowed
    text = str(item["msg"])
    for noise in ("Value error, ", "Assertion failed, "):
        text = text.removeprefix(noise)
    if kind.endswith(("_type", "_parsing")) or kind.startswith("model_"):
        text = f"{text}; got {_show(value)}"
    return text, allowed


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, (dict, list)):
        return type(value).__name__
    return str(value)


def _field_names(model: type[BaseModel], loc: Loc) -> list[str]:
    target = _resolve(model, loc)
    if isinstance(target, type) and issubclass(target, BaseModel):
        return list(target.model_fields)
    return []


def allowed_text(model: type[BaseModel], loc: Loc) -> str | None:
    """The accepted values of the field at ``loc``, read from its annotation and constraints."""
    parent = _resolve(model, loc[:-1]) if loc else None
    if not (isinstance(parent, type) and issubclass(parent, BaseModel)) or not loc:
        return None
    info = parent.model_fields.get(str(loc[-1]))
    if info is None:
        return None
    literal = _literal_values(info.annotation)
    if literal:
        return ", ".join("null" if v is None else str(v) for v in literal)
    low = high = None
    metadata = list(info.metadata)
    # An optional constrained field (``Annotated[float, Field(ge=...)] | None``) keeps its
    # constraints on the union member, not on the field.
    for arg in typing.get_args(info.annotation):
        if typing.get_origin(arg) is typing.Annotated:
            for meta in arg.__metadata__:
                metadata.extend(getattr(meta, "metadata", [meta]))
    for meta in metadata:
        if isinstance(meta, (annotated_types.Ge, annotated_types.Gt)):
            low = (
                meta.ge if isinstance(meta, annotated_types.Ge) else meta.gt,
                isinstance(meta, annotated_types.Gt),
            )
        if isinstance(meta, (annotated_types.Le, annotated_types.Lt)):
            high = (
                meta.le if isinstance(meta, annotated_types.Le) else meta.lt,
                isinstance(meta, annotated_types.Lt),
            )
    if low is None and high is None:
        return None
    return range_text(low, high)


def range_text(low: tuple[Any, bool] | None, high: tuple[Any, bool] | None) -> str:
    """``1e-06..0.001``; an open end reads ``> 0`` or ``<= 5``."""
    if low and high and not low[1] and not high[1]:
        return f"{low[0]}..{high[0]}"
    parts = []
    if low:
        parts.append(f"{'>' if low[1] else '>='} {low[0]}")
    if high:
        parts.append(f"{'<' if high[1] else '<='} {high[0]}")
    return " and ".join(parts)


def _literal_values(annotation: Any) -> list[Any]:
    values: list[Any] = []
    for arg in flatten_annotation(annotation):
        if typing.get_origin(arg) is Literal:
            values.extend(typing.get_args(arg))
        elif arg is type(None) and values:
            values.append(None)
    return values


def flatten_annotation(annotation: Any) -> Iterator[Any]:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        yield from flatten_annotation(typing.get_args(annotation)[0])
    elif origin is typing.Union or origin is types.UnionType:
        for arg in typing.get_args(annotation):
            yield from flatten_annotation(arg)
    else:
        yield annotation


def _resolve(model: Any, loc: Loc) -> Any:
    """Follow ``loc`` through nested models, lists and dicts; None when it cannot be followed."""
    current: Any = model
    for part in loc:
        current = _step(current, part)
        if current is None:
            return None
    # An optional block (``Model | None``) resolves to the model itself.
    for candidate in flatten_annotation(current):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return current


def _discriminated_member(current: Any, part: str | int) -> type[BaseModel] | None:
    """The member of a tagged union (``type: hyperpod``) that pydantic names in an error loc."""
    for candidate in flatten_annotation(current):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            tag = candidate.model_fields.get("type")
            if tag is not None and part in _literal_values(tag.annotation):
                return candidate
    return None


def _without_discriminators(model: type[BaseModel], loc: Loc) -> Loc:
    """``("backend", "smtj", "role_arn")`` -> ``("backend", "role_arn")``: the path as written."""
    kept: list[str | int] = []
    current: Any = model
    for index, part in enumerate(loc):
        member = _discriminated_member(current, part)
        if member is not None and _field_step(current, part) is None:
            current = member
            continue
        kept.append(part)
        current = _step(current, part)
        if current is None:
            kept.extend(loc[index + 1 :])
            break
    return tuple(kept)


def _step(current: Any, part: str | int) -> Any:
    found = _field_step(current, part)
    return found if found is not None else _discriminated_member(current, part)


def _field_step(current: Any, part: str | int) -> Any:
    for candidate in flatten_annotation(current):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            info = candidate.model_fields.get(str(part))
            if info is not None:
                return info.annotation
        origin = typing.get_origin(candidate)
        args = typing.get_args(candidate)
        if origin in (list, tuple, Sequence) and isinstance(part, int) and args:
            return args[0]
        if origin in (dict, Mapping) and len(args) == 2:
            return args[1]
    return None


def validate(model: type[BaseModel], document: Document, **kwargs: Any) -> Any:
    """Validate a document against a model; raise ConfigError with located problems."""
    try:
        return model.model_validate(document.data, **kwargs)
    except ValidationError as exc:
        raise ConfigError(problems_from_validation_error(exc, model, document)) from None
