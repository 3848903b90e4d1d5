"""Continued pre-training data: one `{"text": "..."}` object per line, nothing else.

The public reference validator ignores extra keys; the Forge SDK forbids them, and so does this
module (a second key is usually a sign that SFT data went to a CPT job). Whitespace-only text is
rejected, as in both.
"""

from collections.abc import Iterator
from functools import cache
from typing import Any

import msgspec
from msgspec import Struct

from tuneloop.data.formats import TEXT, FormatContext, RecordFacts, Report

# No `from __future__ import annotations` here: msgspec resolves the annotations of the classes
# defined inside types() at runtime.


@cache
def types(forbid_unknown: bool) -> Any:
    class Record(Struct, forbid_unknown_fields=forbid_unknown):
        text: str

    return Record


class CptFormat:
    """Raw text for continued pre-training."""

    name = "cpt"

    def decoder(self, forbid_unknown: bool) -> msgspec.json.Decoder[Any]:
        return msgspec.json.Decoder(types(forbid_unknown))

    def check(self, record: Any, ctx: FormatContext, report: Report) -> RecordFacts:
        text = record.text
        if not text or text.isspace():
            report("blank-text", "$.text", "text is blank")
        return 1, len(text), TEXT

    def texts(self, record: Any) -> Iterator[tuple[str, str]]:
        yield "$.text", record.text
