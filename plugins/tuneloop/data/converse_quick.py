"""The quick path for the common SFT record: text only, keys in the documented order.

Most SFT datasets hold nothing but text: ``{"schemaVersion": ..., "system": [{"text": ...}],
"messages": [{"role": ..., "content": [{"text": ...}, ...]}, ...]}``. For such a line one call
decodes it into small typed structs (msgspec checks every type and rejects any other key in C)
and a short loop checks what types cannot say; a line that is anything else, or has any issue at
all, takes the full path, which reports exactly as before. The quick path never reports.

What the decoded record cannot show is a key written twice: the decoder keeps the last value.
msgspec type-checks every value, though, even one that is later overwritten, so in a line the
quick check accepts every object has the shape above. With the keys in this order (schemaVersion
first, then system, then messages; role before content), a repeated key always leaves a local
trace in the raw bytes, which SUSPICIOUS matches:

- an object with one allowed key (a text block, a system item) has a second one when ``"text":``
  follows a comma;
- ``"role":`` after a comma is not the first key of its message, so a message has two roles or
  keys out of order; ``"content":`` after ``]`` and a comma follows an earlier content list;
- ``"schemaVersion":`` after a comma is not first; ``"system":`` after ``]`` follows a system
  or messages list; ``"messages":`` after ``]}]`` and a comma follows a messages list (whose last
  message ends with its content list), and an empty messages list is flagged on its own;
- a key written with an escape (``"te\\u0078t"`` decodes to ``text``) would dodge all of the
  above, so any key holding a ``\\u`` escape is flagged (no other escape spells a letter).

Records with keys in another order are valid and simply take the full path.
"""

from functools import cache
from typing import Any, Literal

import msgspec
from msgspec import UNSET, Struct, UnsetType

from tuneloop.data.formats import (
    KIND_BITS,
    NEEDS_FULL_CHECK,
    SCHEMA_VERSION,
    SYSTEM,
    TEXT,
    QuickPath,
)

_WS = rb"[ \t\r]*"  # JSON whitespace inside a line
SUSPICIOUS = (
    rb"," + _WS + rb'"text"' + _WS + rb":",
    rb"," + _WS + rb'"role"' + _WS + rb":",
    rb"\]" + _WS + rb"," + _WS + rb'"content"' + _WS + rb":",
    rb"," + _WS + rb'"schemaVersion"' + _WS + rb":",
    rb"\]" + _WS + rb"," + _WS + rb'"system"' + _WS + rb":",
    rb"\]" + _WS + rb"\}" + _WS + rb"\]" + _WS + rb"," + _WS + rb'"messages"' + _WS + rb":",
    rb'"messages"' + _WS + rb":" + _WS + rb"\[" + _WS + rb"\]",
    # A \u escape, the rest of its string, then a colon: a key holding an escape. Only \u
    # escapes can spell a letter of a key the quick check accepts; escapes after it are matched
    # whole, so an escaped quote in a text (`\u00e9 \"x\": y`) is no key end.
    rb'\\u(?:[^"\\\n]|\\[^\n])*"' + _WS + rb":",
)

_DECODE_FAILED = (
    msgspec.ValidationError,
    msgspec.DecodeError,
    UnicodeDecodeError,
    RecursionError,
)

# No `from __future__ import annotations` here: msgspec resolves these annotations at runtime.


@cache
def _record_type() -> Any:
    # gc=False: decoded JSON cannot form reference cycles, and untracked structs keep the
    # garbage collector out of the hot loop.
    opts = {"forbid_unknown_fields": True, "gc": False}

    class Text(Struct, **opts):
        text: str

    class Message(Struct, **opts):
        role: str
        content: list[Text]

    class Record(Struct, **opts):
        # A constant in Literal[] is read by msgspec at runtime; mypy accepts only literals.
        schemaVersion: Literal[SCHEMA_VERSION]  # type: ignore[valid-type]
        messages: list[Message]
        system: list[Text] | UnsetType = UNSET

    return Record


def quick_path() -> QuickPath:
    decode = msgspec.json.Decoder(_record_type()).decode

    def check(line: bytes) -> int:
        """Packed facts of a text-only record without any issue, else NEEDS_FULL_CHECK.

        Mirrors ConverseFormat.check for this shape: same characters, same kinds."""
        try:
            record = decode(line)
        except _DECODE_FAILED:
            return NEEDS_FULL_CHECK
        chars = 0
        kinds = TEXT
        system = record.system
        if system is not UNSET:
            kinds = TEXT | SYSTEM
            for item in system:
                text = item.text
                if not text or text.isspace():
                    return NEEDS_FULL_CHECK
                chars += len(text)
        messages = record.messages
        if not messages or len(messages) & 1:
            return NEEDS_FULL_CHECK  # empty, or the last message is not the assistant's
        expected = "user"
        for message in messages:
            if message.role != expected:
                return NEEDS_FULL_CHECK
            expected = "assistant" if expected == "user" else "user"
            content = message.content
            if not content:
                return NEEDS_FULL_CHECK
            for block in content:
                text = block.text
                if not text or text.isspace():
                    return NEEDS_FULL_CHECK
                chars += len(text)
        return chars << KIND_BITS | kinds  # pack_facts, inline

    return QuickPath(check=check, suspicious=SUSPICIOUS)
