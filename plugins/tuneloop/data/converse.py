"""SFT data in the Bedrock Converse format (`bedrock-conversation-2024`).

Text, multi-turn, system prompts, images, videos, documents, `reasoningContent` (Nova 2 Lite)
and tool use. Rules follow the Nova data-preparation guides; where the public reference validator
is looser (unknown keys ignored, whitespace-only text, case-insensitive token matching that
rejects ordinary prose) this module follows the documentation instead.
"""

import re
from collections.abc import Iterator
from functools import cache
from types import SimpleNamespace
from typing import Any

import msgspec
from msgspec import UNSET, Struct, UnsetType

from tuneloop.data.formats import (
    DOCUMENT,
    IMAGE,
    REASONING,
    SCHEMA_VERSION,
    SYSTEM,
    TEXT,
    TOOLS,
    VIDEO,
    FormatContext,
    QuickPath,
    RecordFacts,
    Report,
    count_keys,
    unknown_key_message,
)

IMAGE_FORMATS = ("jpeg", "png", "gif", "webp")
IMAGE_FORMATS_NOVA2 = ("jpeg", "png", "gif")
VIDEO_FORMATS = ("mov", "mkv", "mp4", "webm")
VIDEO_FORMATS_NOVA2 = ("mov", "mkv", "mp4")
DOCUMENT_FORMATS = ("pdf",)
URI_CHARACTER = re.compile(r"[\w\-/.]")
"""What the service accepts after ``s3://`` in a media URI (its pattern is ``^[\\w\\-/\\.]+$``:
letters, digits, underscores, hyphens, slashes and dots). A URI with a space or a parenthesis
would pass here and fail the training job."""
SERVICE_URI_MESSAGE = (
    "Invalid characters in 'uri'. Only alphanumeric, underscores, hyphens, slashes, and dots are "
    "allowed"
)
MAX_IMAGES_PER_MESSAGE = 10
BLOCK_KINDS = ("text", "image", "video", "document", "reasoningContent", "toolUse", "toolResult")


# No `from __future__ import annotations` here: msgspec resolves the annotations of the classes
# defined inside types() at runtime, where string annotations would not find them.


@cache
def types(forbid_unknown: bool) -> Any:
    """The record types; `forbid_unknown=False` is the relaxed variant (--allow unknown-key)."""
    opts = {"forbid_unknown_fields": forbid_unknown}

    class S3Location(Struct, **opts):
        uri: str
        bucketOwner: str | UnsetType = UNSET

    class Source(Struct, **opts):
        s3Location: S3Location

    class Media(Struct, **opts):
        format: str
        source: Source

    class ReasoningText(Struct, **opts):
        text: str
        signature: str | UnsetType = UNSET

    class Reasoning(Struct, **opts):
        reasoningText: ReasoningText

    class ToolUse(Struct, **opts):
        toolUseId: str
        name: str
        input: Any

    class ToolResultContent(Struct, **opts):
        text: str | UnsetType = UNSET
        json: Any = UNSET

    class ToolResult(Struct, **opts):
        toolUseId: str
        content: list[ToolResultContent]
        status: str | UnsetType = UNSET

    class Block(Struct, **opts):
        text: str | UnsetType = UNSET
        image: Media | UnsetType = UNSET
        video: Media | UnsetType = UNSET
        document: Media | UnsetType = UNSET
        reasoningContent: Reasoning | UnsetType = UNSET
        toolUse: ToolUse | UnsetType = UNSET
        toolResult: ToolResult | UnsetType = UNSET

    class Message(Struct, **opts):
        role: str
        # Blocks stay dicts while decoding: a text block is checked in three operations, and
        # any other block is converted to Block (and so validated) when it is met.
        content: list[dict[str, Any]]

    class SystemText(Struct, **opts):
        text: str

    class InputSchema(Struct, **opts):
        json: dict[str, Any]

    class ToolSpec(Struct, **opts):
        name: str
        inputSchema: InputSchema
        description: str | UnsetType = UNSET

    class Tool(Struct, **opts):
        toolSpec: ToolSpec

    class ToolConfig(Struct, **opts):
        tools: list[Tool]
        toolChoice: Any = UNSET

    class Record(Struct, **opts):
        messages: list[Message]
        schemaVersion: str | UnsetType = UNSET
        system: list[SystemText] | UnsetType = UNSET
        toolConfig: ToolConfig | UnsetType = UNSET

    return SimpleNamespace(Record=Record, Block=Block)


class ConverseFormat:
    """Bedrock Converse records for supervised fine-tuning."""

    name = "sft"

    def __init__(self) -> None:
        self._blocks = {True: types(True).Block, False: types(False).Block}

    def decoder(self, forbid_unknown: bool) -> msgspec.json.Decoder[Any]:
        return msgspec.json.Decoder(types(forbid_unknown).Record)

    def check(self, record: Any, ctx: FormatContext, report: Report) -> RecordFacts:
        """Check one record. The loops below are the validator's hot path: the common text
        block takes three operations; everything else goes to `_other_block`."""
        keys, chars, kinds = 1, 0, TEXT
        version = record.schemaVersion
        if version is UNSET:
            report("schema-version", "$", f"schemaVersion is missing (expected {SCHEMA_VERSION!r})")
        else:
            keys += 1
            if version != SCHEMA_VERSION:
                report(
                    "schema-version", "$.schemaVersion", f"{version!r} is not {SCHEMA_VERSION!r}"
                )
        system = record.system
        if system is not UNSET:
            keys += 1 + len(system)
            kinds |= SYSTEM
            for s_index, item in enumerate(system):
                text = item.text
                chars += len(text)
                if not text or text.isspace():
                    report("blank-text", f"$.system[{s_index}].text", "system text is blank")
        state: _RecordState | None = None
        if record.toolConfig is not UNSET:
            state = _RecordState(ctx, report, record.toolConfig)
            keys += state.keys
        messages = record.messages
        if not messages:
            report("empty-content", "$.messages", "messages is empty")
            return keys, chars, kinds
        expected = "user"
        m_index = -1
        for message in messages:
            m_index += 1
            role = message.role
            if role != expected:
                _role_error(role, expected, m_index, report)
            expected = "assistant" if role == "user" else "user"
            content = message.content
            keys += 2 + len(content)
            if not content:
                report("empty-content", f"$.messages[{m_index}].content", "content is empty")
                continue
            for block in content:
                text = block.get("text")
                if type(text) is str and len(block) == 1:
                    chars += len(text)
                    if not text or text.isspace():
                        report(
                            "blank-text",
                            f"{_block_path(m_index, content, block)}.text",
                            "text is blank",
                        )
                    continue
                if state is None:
                    state = _RecordState(ctx, report, UNSET)
                keys_added, chars_added = state.block(
                    self._blocks[True],
                    self._blocks[False],
                    block,
                    role,
                    _block_path(m_index, content, block),
                )
                keys += keys_added - 1  # the block's own key was counted with the content
                chars += chars_added
            if state is not None:
                state.end_message(m_index)
        if expected != "user":  # the last message was not from the assistant
            report(
                "role-order",
                f"$.messages[{len(messages) - 1}].role",
                "the last message must be from the assistant",
            )
        if state is not None:
            kinds |= state.finish()
        return keys, chars, kinds

    def quick_path(self, ctx: FormatContext) -> QuickPath:
        """Text-only records in the documented key order, checked in one call (see
        converse_quick); the model and platform change nothing for them."""
        from tuneloop.data.converse_quick import quick_path

        return quick_path()

    def texts(self, record: Any) -> Iterator[tuple[str, str]]:
        if record.system is not UNSET:
            for index, item in enumerate(record.system):
                yield f"$.system[{index}].text", item.text
        for m_index, message in enumerate(record.messages):
            for b_index, block in enumerate(message.content):
                path = f"$.messages[{m_index}].content[{b_index}]"
                text = block.get("text")
                if isinstance(text, str):
                    yield f"{path}.text", text
                reasoning = block.get("reasoningContent")
                if isinstance(reasoning, dict):
                    inner = reasoning.get("reasoningText")
                    if isinstance(inner, dict) and isinstance(inner.get("text"), str):
                        yield f"{path}.reasoningContent.reasoningText.text", inner["text"]
                result = block.get("toolResult")
                if isinstance(result, dict) and isinstance(result.get("content"), list):
                    for c_index, item in enumerate(result["content"]):
                        if isinstance(item, dict) and isinstance(item.get("text"), str):
                            yield f"{path}.toolResult.content[{c_index}].text", item["text"]


def _block_path(m_index: int, content: list[dict[str, Any]], block: dict[str, Any]) -> str:
    # Found by identity only when a path is needed, so the hot loop keeps no block index.
    b_index = next(i for i, item in enumerate(content) if item is block)
    return f"$.messages[{m_index}].content[{b_index}]"


def _role_error(role: str, expected: str, index: int, report: Report) -> None:
    if role in ("user", "assistant"):
        message = f"expected {expected} but found {role} (roles alternate, starting with user)"
    else:
        message = f"{role!r} is not a role here (allowed: user, assistant)"
    report("role-order", f"$.messages[{index}].role", message)


class _RecordState:
    """What a record with media, reasoning or tools has shown so far (the uncommon path)."""

    def __init__(self, ctx: FormatContext, report: Report, tool_config: Any) -> None:
        self.ctx, self.report = ctx, report
        self.kinds = 0
        self.keys = 0
        self.videos = self.documents = 0
        self.images_in_message = self.media_in_message = self.videos_in_message = 0
        self.tool_uses: set[str] = set()
        self.tools: set[str] | None = None
        if tool_config is not UNSET:
            self.kinds |= TOOLS
            self.tools, extra = _check_tool_config(tool_config, ctx, report)
            self.keys = 1 + extra

    def block(
        self, strict: Any, lenient: Any, raw: dict[str, Any], role: str, path: str
    ) -> tuple[int, int]:
        """Validate one non-text block; return (keys, text characters) it holds."""
        report = self.report
        try:
            block = msgspec.convert(raw, strict)
        except msgspec.ValidationError as exc:
            message, _, where = str(exc).partition(" - at `")
            where = where.rstrip("`").removeprefix("$")
            if message.startswith("Object contains unknown field `"):
                name = message.split("`")[1]
                report("unknown-key", f"{path}{where}.{name}", unknown_key_message(name, strict))
                try:
                    block = msgspec.convert(raw, lenient)
                except msgspec.ValidationError:
                    return count_keys(raw), 0
            else:
                report("schema", f"{path}{where}", message.replace("`", "'"))
                return count_keys(raw), 0
        present = [name for name in BLOCK_KINDS if getattr(block, name) is not UNSET]
        if len(present) != 1:
            report(
                "schema",
                path,
                "a content block holds exactly one of "
                + ", ".join(BLOCK_KINDS)
                + (f"; found {', '.join(present)}" if present else "; found none"),
            )
            return count_keys(raw), 0
        kind = present[0]
        keys, chars = count_keys(raw), 0
        if kind == "text":
            text = block.text
            chars = len(text)
            if not text or text.isspace():
                report("blank-text", f"{path}.text", "text is blank")
        elif kind in ("image", "video", "document"):
            self.media_in_message += 1
            if kind == "image":
                self.images_in_message += 1
                self.kinds |= IMAGE
            elif kind == "video":
                self.videos += 1
                self.videos_in_message += 1
                self.kinds |= VIDEO
            else:
                self.documents += 1
                self.kinds |= DOCUMENT
            _check_media(kind, getattr(block, kind), role, f"{path}.{kind}", self.ctx, report)
        elif kind == "reasoningContent":
            self.kinds |= REASONING
            text = block.reasoningContent.reasoningText.text
            chars = len(text)
            _check_reasoning(text, role, f"{path}.reasoningContent", self.ctx, report)
        elif kind == "toolUse":
            self.kinds |= TOOLS
            _check_tool_use(block.toolUse, role, self.tools, self.tool_uses, path, report)
        else:
            self.kinds |= TOOLS
            _check_tool_result(block.toolResult, role, self.tool_uses, path, report)
        return keys, chars

    def end_message(self, index: int) -> None:
        if self.images_in_message > MAX_IMAGES_PER_MESSAGE:
            self.report(
                "media",
                f"$.messages[{index}].content",
                f"{self.images_in_message} images in one message (at most "
                f"{MAX_IMAGES_PER_MESSAGE})",
            )
        if self.videos_in_message and self.media_in_message > self.videos_in_message:
            self.report(
                "media",
                f"$.messages[{index}].content",
                "a message with a video cannot also hold images or documents",
            )
        self.images_in_message = self.media_in_message = self.videos_in_message = 0

    def finish(self) -> int:
        if self.videos > 1:
            self.report("media", "$.messages", f"{self.videos} videos in one record (at most 1)")
        if self.documents > 1:
            self.report(
                "media", "$.messages", f"{self.documents} documents in one record (at most 1)"
            )
        if self.kinds & REASONING and self.kinds & (IMAGE | VIDEO):
            self.report(
                "reasoning",
                "$.messages",
                "reasoningContent is for text-only records; this one has images or videos",
            )
        return self.kinds


def _check_media(
    kind: str, media: Any, role: str, path: str, ctx: FormatContext, report: Report
) -> None:
    if ctx.text_only:
        report("media", path, f"{ctx.spec.display_name} is text-only; {kind}s are not allowed")
        return
    if role != "user":
        report("media", path, f"{kind}s may appear only in user messages")
    allowed: tuple[str, ...]
    if kind == "image":
        allowed = IMAGE_FORMATS_NOVA2 if ctx.nova2 else IMAGE_FORMATS
    elif kind == "video":
        allowed = VIDEO_FORMATS_NOVA2 if ctx.nova2 else VIDEO_FORMATS
    else:
        allowed = DOCUMENT_FORMATS
        if not ctx.nova2:
            report(
                "media",
                path,
                f"documents are supported by Nova 2 Lite, not {ctx.spec.display_name}",
            )
    if media.format not in allowed:
        report(
            "media",
            f"{path}.format",
            f"{media.format!r} is not a {kind} format {ctx.spec.display_name} accepts "
            f"(allowed: {', '.join(allowed)})",
        )
    _check_media_uri(media.source.s3Location.uri, f"{path}.source.s3Location.uri", report)


def _check_media_uri(uri: str, path: str, report: Report) -> None:
    """An object in S3, named with only the characters the service accepts."""
    bucket, _, key = uri[5:].partition("/")
    if not uri.startswith("s3://") or not bucket or not key:
        report(
            "media",
            path,
            f"{uri!r} is not an s3:// URI of an object (allowed: s3://BUCKET/KEY); write the "
            "URI of the object in S3",
        )
        return
    odd = sorted({char for char in uri[5:] if not URI_CHARACTER.fullmatch(char)})
    if odd:
        shown = ", ".join(repr(char) for char in odd[:10])
        report(
            "media",
            path,
            f"{uri!r} holds {shown}; the service allows only letters, digits, '_', '-', '/' and "
            f"'.' after s3:// (its words: {SERVICE_URI_MESSAGE!r}); rename the object (and the "
            "URI) with only those characters",
        )


def _check_reasoning(text: str, role: str, path: str, ctx: FormatContext, report: Report) -> None:
    if not ctx.nova2:
        report(
            "reasoning",
            path,
            f"reasoningContent is supported by Nova 2 Lite, not {ctx.spec.display_name}",
        )
    if role != "assistant":
        report("reasoning", path, "reasoningContent may appear only in assistant messages")
    if not text or text.isspace():
        report("blank-text", f"{path}.reasoningText.text", "reasoning text is blank")


def _check_tool_config(config: Any, ctx: FormatContext, report: Report) -> tuple[set[str], int]:
    keys = 1 + int(config.toolChoice is not UNSET) + count_keys(config.toolChoice)
    names: set[str] = set()
    if ctx.nova2 and ctx.platform == "bedrock":
        report("tools", "$.toolConfig", "tool use is not supported for Nova 2 Lite SFT on Bedrock")
    if not config.tools:
        report("tools", "$.toolConfig.tools", "tools is empty")
    for index, tool in enumerate(config.tools):
        spec = tool.toolSpec
        path = f"$.toolConfig.tools[{index}].toolSpec"
        keys += 1 + 2 + (spec.description is not UNSET) + 1 + count_keys(spec.inputSchema.json)
        if not spec.name.strip():
            report("tools", f"{path}.name", "tool name is blank")
        elif spec.name in names:
            report("tools", f"{path}.name", f"tool {spec.name!r} is defined twice")
        names.add(spec.name)
        if "type" not in spec.inputSchema.json:
            report("tools", f"{path}.inputSchema.json", "the JSON schema needs a 'type'")
    return names, keys


def _check_tool_use(
    use: Any, role: str, tools: set[str] | None, seen: set[str], path: str, report: Report
) -> None:
    if role != "assistant":
        report("tools", f"{path}.toolUse", "toolUse may appear only in assistant messages")
    if tools is None:
        report("tools", f"{path}.toolUse", "toolUse needs a toolConfig defining the tool")
    elif use.name not in tools:
        report(
            "tools",
            f"{path}.toolUse.name",
            f"tool {use.name!r} is not defined in toolConfig (defined: {', '.join(sorted(tools))})",
        )
    if use.toolUseId in seen:
        report("tools", f"{path}.toolUse.toolUseId", f"toolUseId {use.toolUseId!r} is used twice")
    seen.add(use.toolUseId)


def _check_tool_result(result: Any, role: str, seen: set[str], path: str, report: Report) -> None:
    if role != "user":
        report("tools", f"{path}.toolResult", "toolResult may appear only in user messages")
    if result.toolUseId not in seen:
        report(
            "tools",
            f"{path}.toolResult.toolUseId",
            f"toolUseId {result.toolUseId!r} does not answer an earlier toolUse",
        )
    for index, item in enumerate(result.content):
        if (item.text is UNSET) == (item.json is UNSET):
            report(
                "tools",
                f"{path}.toolResult.content[{index}]",
                "each toolResult content item holds exactly one of text and json",
            )
