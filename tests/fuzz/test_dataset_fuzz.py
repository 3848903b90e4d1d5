"""Hostile dataset lines (any JSON, near-valid records of each format, raw bytes, deep nesting,
huge numbers) get a report, never an exception; and a dataset with no record is never valid."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from fuzz.support import (
    REPO,
    VALUES,
    assert_clean_text,
    bounded,
    fuzz_settings,
    mutated,
)
from tuneloop.data.registry import FORMATS, get_format, supports
from tuneloop.data.rules import RELAXABLE
from tuneloop.data.validator import Options, validate_dataset
from tuneloop.recipes.catalog import MODELS

CORPUS = REPO / "tests" / "data" / "corpus"


def _valid_records(fmt: str) -> list[Any]:
    files = sorted((CORPUS / fmt).glob("valid*.jsonl"))
    return [json.loads(line) for path in files for line in path.read_text().splitlines() if line]


RECORDS = {fmt: _valid_records(fmt) for fmt in FORMATS}
PAIRS = [
    (fmt, model_type)
    for fmt in FORMATS
    for model_type, spec in MODELS.items()
    if supports(fmt, spec) and RECORDS[fmt]
]
RAW_LINES = [
    b"",
    b"   ",
    b"\xff\xfe",
    b"\xef\xbb\xbf{}",
    b"\x00",
    b"[" * 100_000,
    b'{"a":' * 5_000,
    b"9" * 5_000,
    b'{"n": ' + b"9" * 5_000 + b"}",
    b'{"n": 1e999999}',
    b'{"n": NaN}',
    b'{"a": 1, "a": 2}',
    b'"just a string"',
    b"[]",
    b"null",
]


def _json_line(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, default=str).encode("utf-8", "surrogatepass")


@st.composite
def datasets(draw: st.DrawFn) -> tuple[str, str, bytes]:
    """(format, model_type, the file's bytes)."""
    fmt, model_type = draw(st.sampled_from(PAIRS))
    line = st.one_of(
        st.sampled_from(RECORDS[fmt]).flatmap(mutated).map(_json_line),
        st.sampled_from(RECORDS[fmt]).map(_json_line),
        VALUES.map(_json_line),
        st.sampled_from(RAW_LINES),
        st.binary(max_size=24),
    )
    lines = draw(st.lists(line, max_size=6))
    ending = draw(st.sampled_from([b"\n", b"\r\n"]))
    body = ending.join(lines) + draw(st.sampled_from([b"", ending]))
    return fmt, model_type, body


OPTIONS = st.builds(
    Options,
    allow=st.frozensets(st.sampled_from(RELAXABLE)),
    max_errors=st.integers(0, 5),
    max_length=st.one_of(st.none(), st.integers(1, 4096)),
    role=st.sampled_from(["train", "validation"]),
)


@pytest.fixture(scope="module")
def dataset_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dataset-fuzz") / "data.jsonl"


@fuzz_settings()
@given(
    dataset=datasets(),
    options=OPTIONS,
    platform=st.sampled_from(["sagemaker", "bedrock"]),
)
def test_hostile_lines_get_a_report(
    dataset_file: Path, dataset: tuple[str, str, bytes], options: Options, platform: str
) -> None:
    fmt, model_type, body = dataset
    dataset_file.write_bytes(body)
    with bounded():
        report = validate_dataset(
            str(dataset_file),
            get_format(fmt),
            MODELS[model_type],
            platform=platform,
            options=options,
            workers=1,
        )
        text, as_json = report.to_text(), report.to_json()
    event("valid" if report.ok else "invalid")
    assert_clean_text(text)
    assert json.loads(as_json)["ok"] is report.ok
    if not body.strip():
        assert not report.ok, "a dataset with no record passed: a round would train on nothing"
