"""What a dataset format provides to the validator.

A format decodes a line into typed records with msgspec (fast, and the decoder itself rejects
wrong types and unknown keys), then checks what types cannot express: role order, where media
may appear, model-dependent limits. It returns a few facts per record that the validator needs
for dataset-level checks, and lists the record's texts for the reserved-token check.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any, Protocol

import msgspec

from tuneloop.recipes.catalog import ModelSpec

SCHEMA_VERSION = "bedrock-conversation-2024"
"""The ``schemaVersion`` of a Converse record (SFT); here so both of its paths read it."""

# Bits of RecordFacts.kinds: what a record contains.
TEXT, IMAGE, VIDEO, DOCUMENT, REASONING, TOOLS, SYSTEM = 1, 2, 4, 8, 16, 32, 64
KIND_NAMES = {
    TEXT: "text",
    IMAGE: "image",
    VIDEO: "video",
    DOCUMENT: "document",
    REASONING: "reasoning",
    TOOLS: "tools",
    SYSTEM: "system",
}


RecordFacts = tuple[int, int, int]
"""What a format's check returns for a record, as a plain tuple (cheaper to build than a named
one, and the validator unpacks it at once): ``(keys, chars, kinds)``.

- keys: object keys in the record, as decoded (the raw text having more means a repeated key);
- chars: characters of text, for the token estimate;
- kinds: bitwise OR of TEXT, IMAGE, ...
"""


Report = Callable[[str, str, str], None]
"""report(rule_id, json_path, message): record one error on the current line."""

KIND_BITS = 7
"""RecordFacts.kinds fits in this many bits; a quick check packs (chars, kinds) into one int."""
KIND_MASK = (1 << KIND_BITS) - 1
NEEDS_FULL_CHECK = -1
"""What a quick check returns for a line it cannot vouch for."""


def pack_facts(chars: int, kinds: int) -> int:
    """One int for a record a quick check vouches for: cheaper to build, collect and total than
    a tuple (chars is ``packed >> KIND_BITS``, kinds is ``packed & KIND_MASK``)."""
    return chars << KIND_BITS | kinds


@dataclass(frozen=True)
class QuickPath:
    """A format's fast lane for its most common record shape.

    ``check(line)`` decodes and checks one line in a single call and returns its packed facts
    when the record is certainly free of issues, or NEEDS_FULL_CHECK when the line must take the
    full path (which then reports exactly what it finds). Two things it cannot see from the
    decoded record are left to a scan of the raw bytes: reserved tokens, and a key written twice
    (the decoder keeps the last one silently). ``suspicious`` holds Hyperscan patterns that match
    every line where the shape the check accepts could hide a repeated key; such lines take the
    full path too.
    """

    check: Callable[[bytes], int]
    suspicious: tuple[bytes, ...]


@dataclass(frozen=True)
class FormatContext:
    """The model and platform a dataset is validated for."""

    spec: ModelSpec
    platform: str
    """bedrock or sagemaker."""

    @property
    def nova2(self) -> bool:
        return self.spec.family == "nova-2"

    @property
    def text_only(self) -> bool:
        return len(self.spec.modalities) == 1


class DatasetFormat(Protocol):
    name: str

    def decoder(self, forbid_unknown: bool) -> msgspec.json.Decoder[Any]: ...

    def check(self, record: Any, ctx: FormatContext, report: Report) -> RecordFacts:
        """Check one record; return its (keys, chars, kinds) (see RecordFacts)."""
        ...

    def texts(self, record: Any) -> Iterator[tuple[str, str]]: ...

    # Optional: ``quick_path(ctx) -> QuickPath | None`` (see QuickPath).


def count_keys(value: Any) -> int:
    """Keys in a free-form JSON value (tool inputs, JSON schemas, reference answers).

    A loop, not recursion: a deeply nested value must not exhaust the stack."""
    if isinstance(value, dict):
        count, pending = len(value), list(value.values())
    elif isinstance(value, list):
        count, pending = 0, list(value)
    else:
        return 0
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            count += len(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return count


SUGGEST_UP_TO = 100
"""Keys longer than this are no typo of a defined key (all are short): no suggestion is looked
for, and the message is not cached."""


def unknown_key_message(name: str, *roots: Any) -> str:
    """'unknown key ...', with the closest key the format defines when one is close."""
    if len(name) > SUGGEST_UP_TO:
        return f"unknown key {name!r}"
    return _unknown_key_message(name, roots)


@lru_cache(maxsize=4096)
def _unknown_key_message(name: str, roots: tuple[Any, ...]) -> str:
    """Cached: a dataset often repeats the same unknown key on every line, and finding the
    closest defined key takes far longer than checking the line."""
    import difflib

    names = sorted(set().union(*(_field_names(root) for root in roots)))
    message = f"unknown key {name!r}"
    if name in names:
        return f"{message} at this level (the format uses it elsewhere)"
    same_letters = [known for known in names if known.lower() == name.lower()]
    close = same_letters or difflib.get_close_matches(name, names, n=1, cutoff=0.7)
    return f"{message}; did you mean {close[0]!r}?" if close else message


@cache
def _field_names(root: Any) -> frozenset[str]:
    import typing

    names: set[str] = set()
    pending, seen = [root], set()
    while pending:
        tp = pending.pop()
        if tp in seen:
            continue
        seen.add(tp)
        if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
            names.update(tp.__struct_fields__)
            pending.extend(typing.get_type_hints(tp).values())
        pending.extend(typing.get_args(tp))
    return frozenset(names)
