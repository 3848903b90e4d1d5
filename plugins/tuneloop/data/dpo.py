"""Preference data (DPO, Nova 1 models) in the Bedrock Converse format.

A record is an SFT conversation whose last message is an assistant turn with `candidates`
instead of `content`: at least two responses, each labelled `preferred` or `non-preferred`,
both labels present. Candidates hold text only, and no part of the record may hold a video.

The conversation rules are the SFT format's: each candidate is checked as the assistant's reply
to the messages before it, with the SFT checks, and what they find is reported once, at the
candidate's path.
"""

from collections.abc import Iterator
from functools import cache
from types import SimpleNamespace
from typing import Any

import msgspec
from msgspec import UNSET, Struct, UnsetType

from tuneloop.data import converse
from tuneloop.data.formats import VIDEO, FormatContext, RecordFacts, Report, count_keys

LABELS = ("preferred", "non-preferred")
MIN_CANDIDATES = 2

# No `from __future__ import annotations` here: msgspec resolves the annotations of the classes
# defined inside types() at runtime, where string annotations would not find them.


@cache
def types(forbid_unknown: bool) -> Any:
    """The record types: the SFT record, with candidates allowed in a message."""
    opts = {"forbid_unknown_fields": forbid_unknown}
    sft = {
        field.name: field.type
        for field in msgspec.structs.fields(converse.types(forbid_unknown).Record)
    }
    SystemList = sft["system"]
    ToolConfig = sft["toolConfig"]

    class Candidate(Struct, **opts):
        content: list[dict[str, Any]]
        preferenceLabel: str

    class Message(Struct, **opts):
        role: str
        content: list[dict[str, Any]] | UnsetType = UNSET
        candidates: list[Candidate] | UnsetType = UNSET

    class Record(Struct, **opts):
        messages: list[Message]
        schemaVersion: str | UnsetType = UNSET
        system: SystemList = UNSET  # type: ignore[valid-type]
        toolConfig: ToolConfig = UNSET  # type: ignore[valid-type]

    return Record


class DpoFormat:
    """Bedrock Converse conversations ending in ranked candidate responses."""

    name = "dpo"

    def __init__(self) -> None:
        self._sft = converse.ConverseFormat()

    def decoder(self, forbid_unknown: bool) -> msgspec.json.Decoder[Any]:
        return msgspec.json.Decoder(types(forbid_unknown))

    def check(self, record: Any, ctx: FormatContext, report: Report) -> RecordFacts:
        messages = record.messages
        last = len(messages) - 1
        # What is reported, so the SFT checks run once per candidate report each problem once.
        reported: set[tuple[str, str, str]] = set()
        prompt: list[Any] = []
        extra_keys = 0  # keys of the record minus keys of the views the SFT checks see
        for index, message in enumerate(messages[:-1]):
            if message.candidates is not UNSET:
                report(
                    "preference",
                    f"$.messages[{index}].candidates",
                    "candidates may appear only in the last message",
                )
            elif message.content is UNSET:
                report("schema", f"$.messages[{index}]", "required field 'content' is missing")
            view = _content_view(message, index, reported)
            prompt.append(view)
            extra_keys += _keys(message) - 2 - count_keys(view.content)
        replies: list[Any] = []
        with_candidates = False
        if messages:
            final = messages[-1]
            with_candidates = _check_candidates(final, last, report)
            if with_candidates:
                replies = [_Message(final.role, item.content) for item in final.candidates]
            else:
                replies = [_content_view(final, last, reported)]
            extra_keys += _keys(final) - 2 - count_keys(replies[0].content)
        keys = chars = kinds = 0
        for c_index, reply in enumerate(replies or [None]):
            view = SimpleNamespace(
                schemaVersion=record.schemaVersion,
                system=record.system,
                toolConfig=record.toolConfig,
                messages=prompt if reply is None else [*prompt, reply],
            )
            mapped = _mapped(report, reported, last, c_index if with_candidates else None)
            run_keys, run_chars, run_kinds = self._sft.check(view, ctx, mapped)
            if not c_index:
                keys = run_keys
            chars = max(chars, run_chars)  # the prompt and its longest candidate
            kinds |= run_kinds
        if kinds & VIDEO:
            _report_videos(messages, report)
        return keys + extra_keys, chars, kinds

    def texts(self, record: Any) -> Iterator[tuple[str, str]]:
        messages = record.messages
        with_candidates = bool(messages) and messages[-1].candidates is not UNSET
        prompt = [
            _Message(message.role, [] if message.content is UNSET else message.content)
            for message in (messages[:-1] if with_candidates else messages)
        ]
        yield from self._sft.texts(SimpleNamespace(system=record.system, messages=prompt))
        if not with_candidates:
            return
        last = len(messages) - 1
        for c_index, candidate in enumerate(messages[-1].candidates):
            view = SimpleNamespace(
                system=UNSET, messages=[_Message("assistant", candidate.content)]
            )
            target = f"$.messages[{last}].candidates[{c_index}]"
            for path, text in self._sft.texts(view):
                yield target + path.removeprefix("$.messages[0]"), text


def _check_candidates(message: Any, index: int, report: Report) -> bool:
    """Check the last message's candidates; True when it has some."""
    path = f"$.messages[{index}]"
    candidates = message.candidates
    if candidates is UNSET:
        report(
            "preference",
            path,
            "the last message must be an assistant message with candidates (at least two "
            "responses, labelled preferred and non-preferred)",
        )
        return False
    if message.content is not UNSET:
        report(
            "preference",
            f"{path}.content",
            "a message with candidates holds no content (each candidate has its own)",
        )
    if len(candidates) < MIN_CANDIDATES:
        report(
            "preference",
            f"{path}.candidates",
            f"{len(candidates)} candidate(s); at least {MIN_CANDIDATES} are needed",
        )
    labels = set()
    for c_index, candidate in enumerate(candidates):
        label = candidate.preferenceLabel
        if label in LABELS:
            labels.add(label)
        else:
            report(
                "preference",
                f"{path}.candidates[{c_index}].preferenceLabel",
                f"{label!r} is not a preference label (allowed: {', '.join(LABELS)})",
            )
    missing = [label for label in LABELS if label not in labels]
    if len(candidates) >= MIN_CANDIDATES and len(missing) == 1:
        report(
            "preference",
            f"{path}.candidates",
            f"no candidate is labelled {missing[0]!r}; one must be preferred and one non-preferred",
        )
    return bool(candidates)


def _content_view(message: Any, index: int, reported: set[tuple[str, str, str]]) -> Any:
    """The message as the SFT checks see it: a missing content is an empty one, whose
    'content is empty' is left unsaid (the missing content or candidates is reported)."""
    if message.content is not UNSET:
        return message
    reported.add(("empty-content", f"$.messages[{index}].content", "content is empty"))
    return _Message(message.role, [])


def _keys(message: Any) -> int:
    """Keys of a message as decoded."""
    keys = 1
    if message.content is not UNSET:
        keys += 1 + count_keys(message.content)
    if message.candidates is not UNSET:
        keys += 1 + sum(2 + count_keys(candidate.content) for candidate in message.candidates)
    return keys


def _mapped(
    report: Report, reported: set[tuple[str, str, str]], last: int, candidate: int | None
) -> Report:
    """A report that moves the last message's content paths to candidate `candidate` and
    drops what was already reported."""
    prefix = f"$.messages[{last}].content"
    target = f"$.messages[{last}].candidates[{candidate}].content"

    def mapped(rule_id: str, path: str, message: str) -> None:
        if candidate is not None and path.startswith(prefix):
            path = target + path[len(prefix) :]
        key = (rule_id, path, message)
        if key not in reported:
            reported.add(key)
            report(rule_id, path, message)

    return mapped


def _report_videos(messages: list[Any], report: Report) -> None:
    for m_index, message in enumerate(messages):
        contents = []
        if message.content is not UNSET:
            contents.append((f"$.messages[{m_index}].content", message.content))
        if message.candidates is not UNSET:
            contents.extend(
                (f"$.messages[{m_index}].candidates[{c_index}].content", candidate.content)
                for c_index, candidate in enumerate(message.candidates)
            )
        for path, content in contents:
            for b_index, block in enumerate(content):
                if "video" in block:
                    report("media", f"{path}[{b_index}].video", "DPO records cannot hold videos")


class _Message:
    """A message as the SFT checks see it."""

    __slots__ = ("content", "role")

    def __init__(self, role: str, content: list[dict[str, Any]]) -> None:
        self.role, self.content = role, content
