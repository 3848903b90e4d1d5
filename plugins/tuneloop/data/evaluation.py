"""Evaluation data brought by the user: `gen_qa` and `llm_judge`.

`gen_qa` records are a query and the expected response, with an optional system prompt,
metadata (a string, often serialized JSON) and images as base64 data URIs. `llm_judge` records
are a prompt and two responses that a judge model compares; its keys are case-sensitive, and
`response_a` is the usual mistake, so that format reads the top level itself to suggest the
exact key.
"""

import binascii
import difflib
import re
from collections.abc import Iterator
from functools import cache
from typing import Any

import msgspec
from msgspec import UNSET, Struct, UnsetType

from tuneloop.data.formats import (
    IMAGE,
    SYSTEM,
    TEXT,
    FormatContext,
    RecordFacts,
    Report,
    count_keys,
)

IMAGE_FORMATS = ("jpeg", "jpg", "png", "gif", "webp")
_DATA_URI = re.compile(r"data:image/([A-Za-z0-9.+-]+);base64,(.*)", re.DOTALL)

# No `from __future__ import annotations` here: msgspec resolves the annotations of the classes
# defined inside gen_qa_types() at runtime.


@cache
def gen_qa_types(forbid_unknown: bool) -> Any:
    opts = {"forbid_unknown_fields": forbid_unknown}

    class Image(Struct, **opts):
        data: str

    class Record(Struct, **opts):
        query: str
        response: str
        system: str | UnsetType = UNSET
        metadata: str | UnsetType = UNSET
        images: list[Image] | UnsetType = UNSET

    return Record


class GenQaFormat:
    """Question and reference answer pairs (`gen_qa.jsonl`)."""

    name = "gen_qa"

    def decoder(self, forbid_unknown: bool) -> msgspec.json.Decoder[Any]:
        return msgspec.json.Decoder(gen_qa_types(forbid_unknown))

    def check(self, record: Any, ctx: FormatContext, report: Report) -> RecordFacts:
        keys, kinds = 2, TEXT
        query, response = record.query, record.response
        chars = len(query) + len(response)
        if not query or query.isspace():
            report("blank-text", "$.query", "query is blank")
        if not response or response.isspace():
            report("blank-text", "$.response", "response is blank")
        if record.system is not UNSET:
            keys += 1
            kinds |= SYSTEM
            chars += len(record.system)
        if record.metadata is not UNSET:
            keys += 1
        images = record.images
        if images is not UNSET:
            keys += 1 + len(images)
            if images:
                kinds |= IMAGE
                _check_images(images, ctx, report)
        return keys, chars, kinds

    def texts(self, record: Any) -> Iterator[tuple[str, str]]:
        yield "$.query", record.query
        yield "$.response", record.response
        if record.system is not UNSET:
            yield "$.system", record.system


def _check_images(images: list[Any], ctx: FormatContext, report: Report) -> None:
    if ctx.text_only:
        report("media", "$.images", f"{ctx.spec.display_name} is text-only; images are not allowed")
        return
    for index, image in enumerate(images):
        path = f"$.images[{index}].data"
        match = _DATA_URI.fullmatch(image.data)
        if match is None:
            report("media", path, "not a data URI of the form data:image/<format>;base64,<data>")
            continue
        image_format, payload = match.groups()
        if image_format.lower() not in IMAGE_FORMATS:
            report(
                "media",
                path,
                f"{image_format!r} is not an image format evaluation accepts "
                f"(allowed: {', '.join(IMAGE_FORMATS)})",
            )
        if not payload:
            report("media", path, "the image data is empty")
            continue
        try:
            binascii.a2b_base64(payload, strict_mode=True)
        except binascii.Error as exc:
            report("media", path, f"the image data is not valid base64 ({exc})")


# -- llm_judge ------------------------------------------------------------------------------------

JUDGE_FIELDS = ("prompt", "response_A", "response_B")


class LlmJudgeFormat:
    """A prompt and two responses for pairwise judging."""

    name = "llm_judge"

    def decoder(self, forbid_unknown: bool) -> msgspec.json.Decoder[Any]:
        # Read as an object of any keys: check() reports unknown keys with the exact key meant
        # (keys that differ only in case are equally close for a plain similarity match).
        return msgspec.json.Decoder(dict[str, Any])

    def check(self, record: Any, ctx: FormatContext, report: Report) -> RecordFacts:
        chars = 0
        for key in record:
            if key not in JUDGE_FIELDS:
                report("unknown-key", f"$.{key}", _unknown_judge_key(key))
        for name in JUDGE_FIELDS:
            value = record.get(name, UNSET)
            if value is UNSET:
                report("schema", "$", f"required field {name!r} is missing")
            elif type(value) is not str:
                report("schema", f"$.{name}", f"{name} must be a string, not {_json_type(value)}")
            else:
                chars += len(value)
                if not value or value.isspace():
                    report("blank-text", f"$.{name}", f"{name} is blank")
        return count_keys(record), chars, TEXT

    def texts(self, record: Any) -> Iterator[tuple[str, str]]:
        for name in JUDGE_FIELDS:
            value = record.get(name)
            if isinstance(value, str):
                yield f"$.{name}", value


_JSON_TYPES = {
    type(None): "null",
    bool: "a boolean",
    int: "a number",
    float: "a number",
    list: "an array",
    dict: "an object",
}


def _json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), "a string")


def _unknown_judge_key(name: str) -> str:
    folded = name.lower().replace("-", "_").replace(" ", "_")
    close = [field for field in JUDGE_FIELDS if field.lower() == folded]
    close = close or difflib.get_close_matches(name, JUDGE_FIELDS, n=1, cutoff=0.7)
    message = f"unknown key {name!r}"
    if close and close[0].lower() == folded and close[0] != name:
        return f"{message}; did you mean {close[0]!r}? (keys are case-sensitive)"
    return f"{message}; did you mean {close[0]!r}?" if close else message
