"""YAML documents that remember where each value came from, and pydantic errors as Problems.

Recipes and campaigns are YAML edited by hand. When one is wrong, the user needs the file, the
line and the field, not a traceback, so documents keep a map from field path to line number and
validation errors are translated into `Problem` lines that point there.
"""

from __future__ import annotations

import codecs
import difflib
import json
import os
import re
import stat
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

MAX_DOCUMENT_BYTES = 1024 * 1024
"""The largest campaign or recipe file read (the biggest shipped recipe is a few kilobytes)."""
MAX_DEPTH = 64
"""How deep values may nest (recipes nest five levels; Python's own stack ends near 1,000)."""
MAX_NODES = 100_000
"""Values a document may hold once aliases are expanded (``&a`` / ``*a`` can nest into billions)."""
MAX_INT_DIGITS = 100
"""Digits an integer may have: Python refuses to read or print one over 4,300 digits, and a
hexadecimal or ``1:2:3`` (base 60) integer can grow past that without being read as decimal."""
SHOWN_CHARACTERS = 80
"""How much of a long value or key a problem line quotes."""
MAX_PROBLEMS = 50
"""Problems listed for one file; the rest are counted."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-5`` as a float, as YAML 1.2 and the Nova launcher do.

    PyYAML follows YAML 1.1, where a float needs a dot: every Nova recipe writes ``lr: 1e-5``,
    which PyYAML would otherwise load as the string "1e-5".

    A value PyYAML's constructors reject with a plain Python error (an impossible date such as
    ``2026-13-45`` raises ValueError) becomes a YAML error at that value's line.

    Composition stops at `MAX_DEPTH` levels and `MAX_NODES` values: PyYAML composes nested
    values recursively, so 5,000 ``[`` would otherwise end in a RecursionError.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._path: list[str | int | None] = []
        self._composed = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            return super().compose_node(parent, index)  # counted where it expands (_index_lines)
        mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
        self._composed += 1
        if self._composed > MAX_NODES:
            message = f"more than {MAX_NODES:,} values in one file"
            raise _LimitError(message, self._loc(), mark, "split the file, or keep data out of it")
        if isinstance(index, yaml.ScalarNode):
            self._path.append(index.value)  # a mapping's value, under its key
        else:
            self._path.append(index if isinstance(index, int) else None)
        try:
            if len(self._path) > MAX_DEPTH + 1:  # the first entry is the document itself
                raise _LimitError(_too_deep(), self._loc()[:_SHOWN_LEVELS], mark, _SHALLOWER)
            return super().compose_node(parent, index)
        finally:
            self._path.pop()

    def _loc(self) -> Loc:
        return tuple(part for part in self._path[1:] if part is not None)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except _ValueError:
            raise
        except yaml.constructor.ConstructorError as exc:
            raise _ValueError(str(exc.problem), node) from None
        except (ValueError, TypeError, OverflowError) as exc:
            raise _ValueError(f"cannot read {shorten(node.value)}: {exc}", node) from None
        except (AttributeError, KeyError, IndexError):
            # PyYAML's own constructors fail this way on an explicit tag over text of another
            # kind (``!!timestamp not-a-date``, ``!!bool maybe``).
            tag = str(node.tag).rpartition(":")[2]
            raise _ValueError(f"cannot read {shorten(node.value)} as !!{tag}", node) from None

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        digits = str(node.value).replace("_", "").lstrip("+-")
        digits = digits[2:] if digits[:2] in ("0b", "0x") else digits
        digits = digits.replace(":", "")
        if len(digits) > MAX_INT_DIGITS:
            raise _IntegerTooLarge(
                f"an integer of {len(digits):,} digits is too large (at most {MAX_INT_DIGITS})",
                node,
            )
        return int(super().construct_yaml_int(node))


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)

_SHOWN_LEVELS = 4
"""How much of a too-deep value's path a problem names (its line says where the rest is)."""
_FEWER_VALUES = "write the values out instead of nesting aliases, or split the file"
_SHALLOWER = "flatten the structure: no campaign or recipe field nests this deep"


def _too_deep() -> str:
    return f"values nest more than {MAX_DEPTH} levels deep"


class _LimitError(yaml.YAMLError):
    """A document past one of the limits above, where composition stopped."""

    def __init__(self, message: str, loc: Loc, mark: yaml.Mark, fix: str) -> None:
        super().__init__(message)
        self.message = message
        self.loc = loc
        self.line = mark.line + 1
        self.fix = fix

    def problem(self, source: str) -> Problem:
        return Problem(format_loc(self.loc), self.message, source, self.line, fix=self.fix)


class _ValueError(yaml.constructor.ConstructorError):
    """A value that cannot be constructed, with its node (so the problem names its field)."""

    def __init__(self, problem: str, node: yaml.Node) -> None:
        super().__init__(None, None, problem, node.start_mark)
        self.node = node


class _IntegerTooLarge(_ValueError):
    """An integer past `MAX_INT_DIGITS`: refused on the command line too, not read as text."""


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


def parse_scalar(text: str, name: str | None = None) -> Any:
    """Read a command-line value the way the same text would read in a YAML file.

    Text that is not YAML stays text. A value past the document limits (an integer of 5,000
    digits, aliases that expand into billions of values, nesting 5,000 deep) stays text too,
    unless ``name`` (the ``--set`` key) is given: then it is a ConfigError naming it.
    """
    try:
        loader = _Loader(text)
    except yaml.YAMLError:
        return text
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        walk = _Walk("--set", root)
        walk.index(root, ())
        if walk.problems:
            refused = walk.problems[0]
            return _refuse_set(text, name, refused.message, refused.fix)
        return loader.construct_document(root)  # a SafeLoader subclass: safe
    except _LimitError as exc:
        return _refuse_set(text, name, exc.message, exc.fix)
    except _IntegerTooLarge as exc:
        return _refuse_set(text, name, str(exc.problem), None)
    except yaml.YAMLError:
        return text
    finally:
        loader.dispose()


def _refuse_set(text: str, name: str | None, message: str, fix: str | None) -> str:
    if name is None:
        return text
    raise ConfigError([Problem(name, message, source="--set", fix=fix)])


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
        text = read_config_text(path)
    return parse_document(text, source)


def read_config_text(path: str | Path, limit: int = MAX_DOCUMENT_BYTES) -> str:
    """The UTF-8 text of a campaign or recipe file (a leading byte-order mark dropped).

    Only a regular file of at most ``limit`` bytes is read, and never more than ``limit + 1``
    bytes of it: a FIFO would block, ``/dev/zero`` never ends, and a 100 MB file would take
    gigabytes to parse. Anything else is a ConfigError naming the file.
    """
    source = str(path)
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise _not_a_file(source, info.st_mode)
        if info.st_size > limit:
            raise _too_large(source, f"{info.st_size:,} bytes", limit)
        # O_NONBLOCK: a FIFO swapped in after the check opens at once instead of waiting.
        handle = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        try:
            info = os.fstat(handle)
            if not stat.S_ISREG(info.st_mode):
                raise _not_a_file(source, info.st_mode)
            data = _read_at_most(handle, limit + 1)
        finally:
            os.close(handle)
    except FileNotFoundError:
        raise ConfigError([Problem("", "file not found", source=source)]) from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError([Problem("", f"cannot read file: {reason}", source=source)]) from None
    except ValueError:  # os.stat refuses a name with a NUL character in it
        message = "cannot read file: its name holds a NUL character"
        raise ConfigError([Problem("", message, source=ascii(source))]) from None
    if len(data) > limit:  # it grew after the size check, or (like /proc files) has no size
        raise _too_large(source, f"more than {limit:,} bytes", limit)
    return _utf8_text(data, source)


def _read_at_most(handle: int, size: int) -> bytes:
    chunks = []
    while size > 0:
        chunk = os.read(handle, min(size, 1 << 16))
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _not_a_file(source: str, mode: int) -> ConfigError:
    what = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a pipe, device or socket)"
    message = f"{what}; a campaign or recipe is a YAML file"
    return ConfigError([Problem("", message, source=source, fix="name a .yaml file")])


def _too_large(source: str, size: str, limit: int) -> ConfigError:
    return ConfigError(
        [
            Problem(
                "",
                f"the file is {size}; a campaign or recipe may have at most {limit:,}",
                source=source,
                fix="keep data out of the file: name datasets by path or URI",
            )
        ]
    )


def _utf8_text(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8-sig" if data.startswith(codecs.BOM_UTF8) else "utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            [
                Problem(
                    "",
                    f"not UTF-8 text: byte 0x{data[exc.start]:02x} cannot start or continue "
                    "a character",
                    source=source,
                    line=line,
                    fix="save the file as UTF-8",
                )
            ]
        ) from None


def parse_document(text: str, source: str) -> Document:
    if len(text) > MAX_DOCUMENT_BYTES:
        raise ConfigError(
            [
                Problem(
                    "",
                    f"the text is {len(text):,} characters; a campaign or recipe may have at "
                    f"most {MAX_DOCUMENT_BYTES:,}",
                    source=source,
                )
            ]
        )
    try:
        loader = _Loader(text)  # the reader refuses control characters at once
    except yaml.YAMLError as exc:
        raise _yaml_problem(exc, source, text) from None
    try:
        try:
            root = loader.get_single_node()
        except _LimitError as exc:
            raise ConfigError([exc.problem(source)]) from None
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
        walk = _Walk(source, root)
        walk.index(root, ())
        if walk.problems:
            raise ConfigError(at_most(walk.problems, MAX_PROBLEMS))
        try:
            data = loader.construct_document(root)  # a SafeLoader subclass: safe
        except yaml.YAMLError as exc:
            node = getattr(exc, "node", None)
            raise _yaml_problem(exc, source, loc=walk.locs.get(id(node), ())) from None
    finally:
        loader.dispose()
    return Document(data=data, source=source, lines=walk.lines)


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
    """One pass over the composed nodes, aliases expanded: the line of every field, and what
    PyYAML would let through silently (duplicate keys, keys that are not names) or would expand
    without end (an alias that contains itself, aliases nested into billions of values).

    A node an alias repeats is checked once: a mistake in it is one problem, not one per use.
    """

    def __init__(self, source: str, root: yaml.Node) -> None:
        self.source = source
        self.lines: dict[Loc, int] = {(): root.start_mark.line + 1}
        self.problems: list[Problem] = []
        self.path: set[int] = set()
        """The nodes from the root to here: meeting one again is a recursive alias."""
        self.count = 0
        self.locs: dict[int, Loc] = {}
        """Where each node was first met, to name the field of a value that cannot be read."""
        self.reported: set[str] = set()
        self.stopped = False
        """Whether a limit was met: the walk ends there."""

    def report(
        self, loc: Loc, line: int, message: str, fix: str | None = None, once: str = ""
    ) -> None:
        if once:
            if once in self.reported:
                return
            self.reported.add(once)
        self.problems.append(Problem(format_loc(loc), message, self.source, line, fix=fix))

    def index(self, node: yaml.Node, loc: Loc) -> None:
        if self.stopped:
            return
        self.count += 1
        first_visit = id(node) not in self.locs
        self.locs.setdefault(id(node), loc)
        line = node.start_mark.line + 1
        if self.count > MAX_NODES:
            message = f"more than {MAX_NODES:,} values once aliases (*name) are expanded"
            self.report(loc, line, message, _FEWER_VALUES)
            self.stopped = True  # one line for the limit, not one per value past it
            return
        if len(loc) > MAX_DEPTH:
            message = _too_deep() + " once aliases (*name) are expanded"
            self.report(loc[:_SHOWN_LEVELS], line, message, _SHALLOWER)
            self.stopped = True
            return
        if id(node) in self.path:
            message = "a recursive alias: this value contains itself"
            fix = "remove the alias (*name) that points back to its own anchor (&name)"
            self.report(loc, line, message, fix, once=f"recursive {id(node)}")
            return
        if not isinstance(node, yaml.MappingNode | yaml.SequenceNode):
            return
        self.path.add(id(node))
        if isinstance(node, yaml.MappingNode):
            self._index_mapping(node, loc, first_visit)
        else:
            for index, item in enumerate(node.value):
                self.lines[(*loc, index)] = item.start_mark.line + 1
                self.index(item, (*loc, index))
        self.path.discard(id(node))

    def _index_mapping(self, node: yaml.MappingNode, loc: Loc, check_keys: bool) -> None:
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            refused = _key_problem(key_node)
            if refused is not None:
                if check_keys:
                    self.report(loc, line, *refused)
                continue
            key = str(key_node.value)
            if key in seen and check_keys:
                # PyYAML keeps the last value silently; a hand-edited recipe with two `lr:` keys
                # is almost always a mistake, and the first one is the one the user is reading.
                message = f"duplicate key (first set on line {seen[key]})"
                self.report((*loc, key), line, message, "keep one of the two")
            seen[key] = line
            self.lines[(*loc, key)] = line
            self.index(value_node, (*loc, key))


_NAME_TAGS = {"tag:yaml.org,2002:str", "tag:yaml.org,2002:merge"}
"""Keys a campaign or recipe can use: text, and ``<<`` (merge the mapping an alias names)."""


_KEY_KINDS = {
    "null": "null (no value)",
    "bool": "true or false",
    "int": "a number",
    "float": "a number",
    "timestamp": "a date",
}


def _key_problem(key_node: yaml.Node) -> tuple[str, str] | None:
    """Why a key cannot name a field (``~``, ``5``, ``yes``, ``[a, b]``), or None."""
    if not isinstance(key_node, yaml.ScalarNode):
        return (
            "a key must be a plain name, not a list or mapping",
            "write the key as a name (text)",
        )
    if key_node.tag in _NAME_TAGS:
        return None
    kind = str(key_node.tag).removeprefix("tag:yaml.org,2002:")
    value = str(key_node.value)
    return (
        f"the key {shorten(value)} reads as {_KEY_KINDS.get(kind, kind)}, not as a name",
        f"quote it ({json.dumps(value[:SHOWN_CHARACTERS])}) or rename it",
    )


def format_loc(loc: Sequence[str | int]) -> str:
    """``("stages", 1, "recipe")`` -> ``stages[1].recipe``; a key that is not a plain name
    (empty, with brackets, quotes, spaces around it or a line break) reads ``["a[0]"]``, so a
    problem stays one line and `parse_loc` can find the key again."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _is_plain_key(part):
            text += f".{part}" if text else part
        else:
            shown = part if len(part) <= SHOWN_CHARACTERS else part[:SHOWN_CHARACTERS] + "..."
            text += f"[{json.dumps(str(shown))}]"  # ASCII only: no character splits the line
    return text


_ODD_KEY = re.compile(r'[\[\]"]')


def _is_plain_key(part: str) -> bool:
    return (
        isinstance(part, str)
        and 0 < len(part) <= SHOWN_CHARACTERS
        and part.isprintable()
        and part == part.strip()
        and not _ODD_KEY.search(part)
    )


def parse_loc(path: str) -> Loc:
    """The inverse of `format_loc`: ``stages[1].recipe`` -> ``("stages", 1, "recipe")``."""
    return tuple(
        _loc_part(piece)
        for piece in re.finditer(r'([^.\[\]]+)|\[(\d+)\]|\[("(?:[^"\\]|\\.)*")\]', path)
    )


def _loc_part(piece: re.Match[str]) -> str | int:
    if piece.group(2) is not None:
        return int(piece.group(2))
    if piece.group(3) is not None:
        return str(json.loads(piece.group(3)))
    return piece.group(1)


def shorten(value: str) -> str:
    """``value`` quoted for a problem line, cut to its first `SHOWN_CHARACTERS` characters."""
    if len(value) <= SHOWN_CHARACTERS:
        return repr(value)
    return f"{value[:SHOWN_CHARACTERS]!r}... ({len(value):,} characters)"


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
    return at_most(sorted(problems, key=lambda p: p.line or 0), MAX_PROBLEMS)


def at_most(problems: list[Problem], limit: int) -> list[Problem]:
    """The first ``limit`` problems and a line counting the rest: a file of 50,000 duplicate
    or unknown keys is better told by its first mistakes than by 50,000 lines."""
    if len(problems) <= limit:
        return problems
    rest = len(problems) - limit
    source = problems[limit].source
    return [*problems[:limit], Problem("", f"and {rest:,} more problems", source=source)]


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
        return shorten(value)
    if isinstance(value, (dict, list)):
        return type(value).__name__
    if isinstance(value, int) and value.bit_length() > 4 * MAX_INT_DIGITS:
        # Python cannot print an integer over 4,300 digits; none this long is worth printing.
        return f"an integer of about {int(value.bit_length() * 0.30103):,} digits"
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
