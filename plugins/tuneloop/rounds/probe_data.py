"""The reward probe's input, read as the dataset validator reads it: the first records of an RFT
dataset. (The starting model's answers come from `artifacts.format_compliance`, which reads an
evaluation's ``inference_output.jsonl`` in every backend's layout.)

Bad lines are a ConfigError naming the file, the line, the field and the fix; a missing or
irregular file a StorageError. Only the records asked for are read.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from tuneloop.errors import ConfigError, Problem

FIX_DATA = (
    "correct the record (`tuneloop data validate FILE --format rft --model lite-2` lists every "
    "problem in the file)"
)
MAX_LISTED = 20
"""Bad lines listed at most."""


def read_rft_records(uri: str, limit: int) -> list[dict[str, Any]]:
    """The first ``limit`` records of an RFT dataset, each checked as the validator checks it
    (a missing reference answer is allowed: such records make no pairs). ConfigError listing
    every bad line among them; StorageError for a missing or irregular file."""
    from tuneloop.data.formats import FormatContext
    from tuneloop.data.rft import RftFormat
    from tuneloop.recipes.catalog import MODELS

    rft = RftFormat()
    context = FormatContext(spec=MODELS["amazon.nova-2-lite-v1:0:256k"], platform="sagemaker")
    records: list[dict[str, Any]] = []
    problems: list[Problem] = []
    for line_no, record in _lines(uri, limit):
        if not isinstance(record, dict):
            problems.append(
                Problem(
                    "$",
                    f"the record is {_json_type(record)}, not an object",
                    source=uri,
                    line=line_no,
                    fix=FIX_DATA,
                )
            )
            continue

        def report(rule: str, path: str, message: str, line_no: int = line_no) -> None:
            if rule != "missing-reference-answer":
                problems.append(Problem(path, message, source=uri, line=line_no, fix=FIX_DATA))

        rft.check(record, context, report)
        records.append(record)
    if problems:
        raise ConfigError(problems[:MAX_LISTED])
    if not records:
        raise ConfigError(
            [
                Problem(
                    "",
                    "holds no records",
                    source=uri,
                    fix="point it at an RFT dataset (JSON Lines, one record per line)",
                )
            ]
        )
    return records


def _lines(uri: str, limit: int | None) -> Iterator[tuple[int, Any]]:
    """(line number, decoded JSON) of the first ``limit`` non-blank lines; a line that is not
    JSON is a ConfigError at its line."""
    from tuneloop.local.convert import ConversionError, read_jsonl

    count = 0
    try:
        for line_no, value in read_jsonl(uri):
            if limit is not None and count >= limit:
                return
            count += 1
            yield line_no, value
    except ConversionError as exc:
        raise ConfigError(
            [
                Problem(
                    p.path or "$",
                    p.message,
                    source=p.source,
                    line=p.line,
                    fix="write one JSON object per line",
                )
                for p in exc.problems
            ]
        ) from None


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    return "a boolean" if isinstance(value, bool) else "a number"
