"""Nova-format records to what the TRL trainers take, streamed from JSON Lines files.

| Nova format | TRL record |
|---|---|
| SFT, Bedrock Converse | ``{"prompt": [system?, user, ...], "completion": [assistant]}`` |
| CPT | ``{"text"}`` |
| RFT, OpenAI messages | ``{"id", "prompt": [...], "reference_answer", "metadata": {extras}}`` |
| eval ``gen_qa`` | ``{"prompt": [system?, user], "response"}`` |

Messages come out as ``{"role", "content": str}``. The SFT completion is the last assistant
turn; earlier turns stay in the prompt. The RFT record keeps every extra top-level field (a
grader field such as ``ground_truth``) in ``metadata``, where the reward function finds it, and
gets an id from its line number when it has none. ``tools``, when present, is kept.

The local models are text-only: images, videos, documents and tool use raise ConversionError.
Reasoning content is dropped (the tiny model does not reason). Files are expected to have passed
``tuneloop.data.validator`` already; this module checks only what it needs to convert.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

from tuneloop.errors import Problem, TuneloopError

RFT_KEYS = ("id", "messages", "reference_answer", "tools")
TEXT_ONLY = "the local models take text only"


class ConversionError(TuneloopError):
    """A record cannot be turned into a TRL record."""


class _Unsupported(ValueError):
    pass


def read_jsonl(uri: str) -> Iterator[tuple[int, Any]]:
    """(line number, decoded record) for each non-blank line of a local path, file:// or s3://
    URI, streamed in chunks."""
    from tuneloop.data.reader import read_chunks

    line_no = 0
    rest = b""
    for chunk in read_chunks(uri):
        buffer = rest + chunk
        lines = buffer.split(b"\n")
        rest = lines.pop()
        for line in lines:
            line_no += 1
            if line.strip():
                yield line_no, _decode(uri, line_no, line)
    if rest.strip():
        yield line_no + 1, _decode(uri, line_no + 1, rest)


def _decode(uri: str, line_no: int, line: bytes) -> Any:
    try:
        return json.loads(line)
    except ValueError as exc:
        raise ConversionError([Problem("", f"not valid JSON ({exc})", str(uri), line_no)]) from None


def _converse_text(blocks: Any, where: str) -> str:
    if not isinstance(blocks, list):
        raise _Unsupported(f"{where}.content is not a list of blocks")
    texts = []
    for index, block in enumerate(blocks):
        if not isinstance(block, dict):
            raise _Unsupported(f"{where}.content[{index}] is not an object")
        if "text" in block:
            texts.append(block["text"])
        elif "reasoningContent" in block:
            continue
        else:
            kind = next(iter(block), "empty block")
            raise _Unsupported(f"{where}.content[{index}] is {kind}; {TEXT_ONLY}")
    return "\n".join(texts)


def sft_record(record: dict[str, Any]) -> dict[str, Any]:
    """Bedrock Converse -> prompt/completion in chat messages (the system prompt kept)."""
    if "toolConfig" in record:
        raise _Unsupported(f"$.toolConfig: tool use is not supported; {TEXT_ONLY}")
    prompt: list[dict[str, str]] = []
    system = record.get("system") or []
    if system:
        prompt.append(
            {"role": "system", "content": "\n".join(item.get("text", "") for item in system)}
        )
    messages = record.get("messages") or []
    if not messages or messages[-1].get("role") != "assistant":
        raise _Unsupported("$.messages must end with an assistant turn")
    turns = []
    for index, message in enumerate(messages):
        text = _converse_text(message.get("content"), f"$.messages[{index}]")
        turns.append({"role": message.get("role"), "content": text})
    return {"prompt": prompt + turns[:-1], "completion": turns[-1:]}


def cpt_record(record: dict[str, Any]) -> dict[str, Any]:
    return {"text": record["text"]}


def _openai_text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for index, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise _Unsupported(f"{where}.content[{index}] is {kind}; {TEXT_ONLY}")
            texts.append(part.get("text", ""))
        return "\n".join(texts)
    if content is None:
        return ""
    raise _Unsupported(f"{where}.content is {type(content).__name__}")


def _openai_messages(messages: Any) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise _Unsupported("$.messages is empty")
    out = []
    for index, message in enumerate(messages):
        where = f"$.messages[{index}]"
        role = message.get("role")
        if role == "developer":
            role = "system"
        if role not in ("system", "user", "assistant"):
            raise _Unsupported(f"{where}.role {role!r} is not supported; {TEXT_ONLY}")
        if message.get("tool_calls"):
            raise _Unsupported(f"{where}.tool_calls is not supported; {TEXT_ONLY}")
        out.append({"role": role, "content": _openai_text(message.get("content"), where)})
    return out


def rft_record(
    record: dict[str, Any], line_no: int = 0, *, json_fields: bool = False
) -> dict[str, Any]:
    """RFT prompt -> ``{"id", "prompt", "reference_answer", "metadata"}`` (+ ``tools``).

    With ``json_fields``, ``reference_answer`` and ``metadata`` are JSON strings, so records
    whose reference answers differ in type (a string here, an object there) fit one Arrow
    column."""
    sample_id = record.get("id") or f"line-{line_no:06d}"
    out: dict[str, Any] = {
        "id": str(sample_id),
        "prompt": _openai_messages(record.get("messages")),
        "reference_answer": record.get("reference_answer"),
        "metadata": {key: value for key, value in record.items() if key not in RFT_KEYS},
    }
    if record.get("tools"):
        out["tools"] = record["tools"]
    if json_fields:
        out["reference_answer"] = json.dumps(out["reference_answer"])
        out["metadata"] = json.dumps(out["metadata"])
    return out


def gen_qa_record(record: dict[str, Any]) -> dict[str, Any]:
    """gen_qa -> the prompt to generate from and the expected response."""
    if record.get("images"):
        raise _Unsupported(f"$.images: {TEXT_ONLY}")
    prompt = []
    if record.get("system"):
        prompt.append({"role": "system", "content": record["system"]})
    prompt.append({"role": "user", "content": record["query"]})
    out = {"prompt": prompt, "response": record["response"]}
    if "metadata" in record:
        out["metadata"] = record["metadata"]
    return out


CONVERTERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "sft": sft_record,
    "cpt": cpt_record,
    "gen_qa": gen_qa_record,
}
FORMATS = ("sft", "cpt", "rft", "gen_qa")


def iter_records(uri: str, fmt: str, *, json_fields: bool = False) -> Iterator[dict[str, Any]]:
    """Stream the TRL records of the ``fmt`` dataset (sft, cpt, rft, gen_qa) at ``uri``."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    for line_no, record in read_jsonl(uri):
        try:
            if not isinstance(record, dict):
                raise _Unsupported(f"the record is {type(record).__name__}, not an object")
            if fmt == "rft":
                yield rft_record(record, line_no, json_fields=json_fields)
            else:
                yield CONVERTERS[fmt](record)
        except _Unsupported as exc:
            raise ConversionError([Problem("", str(exc), str(uri), line_no)]) from None
        except (KeyError, TypeError, AttributeError) as exc:
            raise ConversionError(
                [Problem("", f"not a valid {fmt} record ({exc!r})", str(uri), line_no)]
            ) from None


def load_records(
    uri: str, fmt: str, *, limit: int | None = None, json_fields: bool = False
) -> list[dict[str, Any]]:
    """The first ``limit`` (default all) TRL records of a dataset, as a list."""
    records: list[dict[str, Any]] = []
    for record in iter_records(uri, fmt, json_fields=json_fields):
        if limit is not None and len(records) >= limit:
            break
        records.append(record)
    return records
