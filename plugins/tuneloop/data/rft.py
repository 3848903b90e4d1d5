"""Reinforcement fine-tuning data in the OpenAI chat-completion format (Nova 2 Lite, local models).

A record holds the prompt (`messages`), the `reference_answer` the reward function compares the
rollouts with, an optional `id` and optional OpenAI function `tools`. Any other top-level key is
passed through to the reward function (a grader field such as `ground_truth`), so the top level
is decoded as a free-form object and only the known parts are converted to typed records; keys
inside messages and tools are still checked strictly. Records are single-turn and text-only.
"""

import difflib
from collections.abc import Iterator
from functools import cache
from types import SimpleNamespace
from typing import Any

import msgspec
from msgspec import UNSET, Struct, UnsetType

from tuneloop.data.formats import (
    SYSTEM,
    TEXT,
    TOOLS,
    FormatContext,
    RecordFacts,
    Report,
    count_keys,
    unknown_key_message,
)

ROLES = ("system", "developer", "user", "assistant", "tool")
SYSTEM_ROLES = ("system", "developer")
KNOWN_KEYS = ("messages", "reference_answer", "id", "tools")

# No `from __future__ import annotations` here: msgspec resolves the annotations of the classes
# defined inside types() at runtime, where string annotations would not find them.


@cache
def types(forbid_unknown: bool) -> Any:
    """The typed parts of a record; `forbid_unknown=False` is the relaxed variant."""
    opts = {"forbid_unknown_fields": forbid_unknown}

    class Part(Struct, **opts):
        type: str
        text: str | UnsetType = UNSET
        image_url: Any = UNSET

    class FunctionCall(Struct, **opts):
        name: str
        arguments: Any = UNSET

    class ToolCall(Struct, **opts):
        function: FunctionCall
        id: str | UnsetType = UNSET
        type: str | UnsetType = UNSET

    class Message(Struct, **opts):
        role: str
        content: str | list[Part] | UnsetType | None = UNSET
        name: str | UnsetType = UNSET
        tool_calls: list[ToolCall] | UnsetType = UNSET
        tool_call_id: str | UnsetType = UNSET

    class Function(Struct, **opts):
        name: str
        description: str | UnsetType = UNSET
        parameters: dict[str, Any] | UnsetType = UNSET
        strict: bool | UnsetType = UNSET

    class Tool(Struct, **opts):
        type: str
        function: Function

    return SimpleNamespace(Messages=list[Message], Tools=list[Tool])


class RftFormat:
    """OpenAI-style prompts with reference answers for reinforcement fine-tuning."""

    name = "rft"

    def __init__(self) -> None:
        self._strict, self._lenient = types(True), types(False)

    def decoder(self, forbid_unknown: bool) -> msgspec.json.Decoder[Any]:
        # Grader fields are free-form, so the top level is an object of any keys either way.
        return msgspec.json.Decoder(dict[str, Any])

    def check(self, record: Any, ctx: FormatContext, report: Report) -> RecordFacts:
        keys, chars, kinds = count_keys(record), 0, TEXT
        raw_messages = record.get("messages", UNSET)
        if raw_messages is UNSET:
            report(
                "schema", "$", "required field 'messages' is missing" + _hint(record, "messages")
            )
        else:
            messages = convert(
                raw_messages, self._strict.Messages, self._lenient.Messages, "$.messages", report
            )
            if messages is not None:
                chars, kinds = _check_messages(messages, report)
        _check_reference_answer(record, report)
        sample_id = record.get("id", UNSET)
        if sample_id is not UNSET:
            if not isinstance(sample_id, str):
                report("schema", "$.id", f"id must be a string, not {_json_type(sample_id)}")
            elif not sample_id or sample_id.isspace():
                report("blank-text", "$.id", "id is blank")
        raw_tools = record.get("tools", UNSET)
        if raw_tools is not UNSET:
            kinds |= TOOLS
            tools = convert(raw_tools, self._strict.Tools, self._lenient.Tools, "$.tools", report)
            if tools is not None:
                chars += _check_tools(tools, report)
        return keys, chars, kinds

    def texts(self, record: Any) -> Iterator[tuple[str, str]]:
        messages = record.get("messages")
        if not isinstance(messages, list):
            return
        for m_index, message in enumerate(messages):
            if not isinstance(message, dict):
                continue
            content = message.get("content")
            path = f"$.messages[{m_index}].content"
            if isinstance(content, str):
                yield path, content
            elif isinstance(content, list):
                for p_index, part in enumerate(content):
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        yield f"{path}[{p_index}].text", part["text"]


def convert(raw: Any, strict: Any, lenient: Any, path: str, report: Report) -> Any:
    """`raw` as the typed value `strict`, reporting what does not fit; None if it cannot be read.

    An unknown key is reported, then the value is read with `lenient` so its other problems show.
    """
    try:
        return msgspec.convert(raw, strict)
    except msgspec.ValidationError as exc:
        message, _, where = str(exc).partition(" - at `")
        where = where.rstrip("`").removeprefix("$")
        if not message.startswith("Object contains unknown field `"):
            _schema_error(message, f"{path}{where}", report)
            return None
        name = message.split("`")[1]
        report("unknown-key", f"{path}{where}.{name}", unknown_key_message(name, strict))
    try:
        return msgspec.convert(raw, lenient)
    except msgspec.ValidationError as exc:
        message, _, where = str(exc).partition(" - at `")
        _schema_error(message, f"{path}{where.rstrip('`').removeprefix('$')}", report)
        return None


def _schema_error(message: str, path: str, report: Report) -> None:
    if message.startswith("Object missing required field `"):
        report("schema", path, f"required field {message.split('`')[1]!r} is missing")
    else:
        report("schema", path, message.replace("`", "'"))


def _check_messages(messages: list[Any], report: Report) -> tuple[int, int]:
    chars, kinds = 0, TEXT
    if not messages:
        report("empty-content", "$.messages", "messages is empty")
        return chars, kinds
    users = 0
    for m_index, message in enumerate(messages):
        path = f"$.messages[{m_index}]"
        role = message.role
        if role in SYSTEM_ROLES:
            kinds |= SYSTEM
            if m_index:
                report("role-order", f"{path}.role", f"a {role} message may only come first")
        elif role == "user":
            users += 1
            if users == 2:
                report(
                    "role-order",
                    f"{path}.role",
                    "a second user message; RFT records are single-turn (one user message)",
                )
        elif role == "tool":
            kinds |= TOOLS
        elif role != "assistant":
            report(
                "role-order",
                f"{path}.role",
                f"{role!r} is not a role here (allowed: {', '.join(ROLES)})",
            )
        if message.tool_calls is not UNSET:
            kinds |= TOOLS
            if role != "assistant":
                report(
                    "tools",
                    f"{path}.tool_calls",
                    "tool_calls may appear only in assistant messages",
                )
        content = message.content
        if type(content) is str:
            chars += len(content)
            if not content or content.isspace():
                report("blank-text", f"{path}.content", "content is blank")
        elif content is UNSET or content is None:
            if message.tool_calls is UNSET:
                report("empty-content", f"{path}.content", "content is missing")
        elif not content:
            report("empty-content", f"{path}.content", "content is empty")
        else:
            for p_index, part in enumerate(content):
                part_path = f"{path}.content[{p_index}]"
                if part.type != "text":
                    report(
                        "media",
                        f"{part_path}.type",
                        f"RFT records are text-only; {part.type!r} parts are not supported",
                    )
                elif part.text is UNSET:
                    report("schema", part_path, "a text part needs 'text'")
                else:
                    chars += len(part.text)
                    if not part.text or part.text.isspace():
                        report("blank-text", f"{part_path}.text", "text is blank")
    if not users:
        report("role-order", "$.messages", "the record needs a user message")
    return chars, kinds


def _check_reference_answer(record: dict[str, Any], report: Report) -> None:
    answer = record.get("reference_answer", UNSET)
    if answer is UNSET:
        report(
            "missing-reference-answer",
            "$",
            "reference_answer is missing" + _hint(record, "reference_answer"),
        )
    elif isinstance(answer, str):
        if not answer or answer.isspace():
            report("blank-text", "$.reference_answer", "reference_answer is blank")
    elif isinstance(answer, dict):
        if not answer:
            report("schema", "$.reference_answer", "reference_answer is an empty object")
    else:
        report(
            "schema",
            "$.reference_answer",
            f"reference_answer must be a string or an object, not {_json_type(answer)}",
        )


def _check_tools(tools: list[Any], report: Report) -> int:
    chars = 0
    if not tools:
        report("tools", "$.tools", "tools is empty")
    names: set[str] = set()
    for index, tool in enumerate(tools):
        path = f"$.tools[{index}]"
        if tool.type != "function":
            report("tools", f"{path}.type", f"tool type {tool.type!r} is not 'function'")
        function = tool.function
        name = function.name
        chars += len(name)
        if not name.strip():
            report("tools", f"{path}.function.name", "function name is blank")
        elif name in names:
            report("tools", f"{path}.function.name", f"function {name!r} is defined twice")
        names.add(name)
        description = function.description
        if description is not UNSET:
            chars += len(description)
            if not description.strip():
                report("tools", f"{path}.function.description", "function description is blank")
        parameters = function.parameters
        if parameters is not UNSET:
            if parameters.get("type") != "object":
                report(
                    "tools",
                    f"{path}.function.parameters.type",
                    "function parameters must be a JSON schema of type 'object'",
                )
            properties = parameters.get("properties", {})
            if not isinstance(properties, dict):
                report(
                    "tools",
                    f"{path}.function.parameters.properties",
                    "properties must be an object",
                )
    return chars


def _hint(record: dict[str, Any], wanted: str) -> str:
    """ "; rename 'referance_answer' to 'reference_answer'?" when the record has a key close to
    `wanted`."""
    others = [key for key in record if key not in KNOWN_KEYS]
    folded = wanted.replace("_", "").lower()
    close = [key for key in others if key.replace("_", "").replace("-", "").lower() == folded]
    close = close or difflib.get_close_matches(wanted, others, n=1, cutoff=0.7)
    return f"; rename {close[0]!r} to {wanted!r}?" if close else ""


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "a string"
