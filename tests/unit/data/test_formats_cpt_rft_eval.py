"""CPT, RFT and evaluation (gen_qa, llm_judge) formats, through the corpus in tests/data/corpus.

Each invalid case names the rules its file breaks, the first error's rule and its 1-based line.
Invalid files keep a valid record first, so a line number that is off by one fails the test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import pytest

from tuneloop.cli.main import main
from tuneloop.data.formats import IMAGE, SYSTEM, TEXT, TOOLS, FormatContext
from tuneloop.data.registry import FAMILIES, FORMATS, get_format, supports
from tuneloop.data.report import DatasetReport
from tuneloop.data.validator import Options, validate_dataset
from tuneloop.recipes.catalog import MODELS

CORPUS = Path(__file__).resolve().parents[2] / "data" / "corpus"
MODEL = {
    "micro": "amazon.nova-micro-v1:0:128k",
    "lite": "amazon.nova-lite-v1:0:300k",
    "lite-2": "amazon.nova-2-lite-v1:0:256k",
    "tiny": "local.tiny-chat-v1",
    "hf": "local.hf-causal-lm",
}
FORMAT_NAMES = ("cpt", "rft", "gen_qa", "llm_judge")


def validate(
    fmt: str, name: str, model: str = "lite-2", platform: str = "sagemaker", **options: Any
) -> DatasetReport:
    return validate_dataset(
        str(CORPUS / fmt / name),
        get_format(fmt),
        MODELS[MODEL[model]],
        platform=platform,
        options=Options(**options),
    )


class Case(NamedTuple):
    fmt: str
    name: str
    rules: tuple[str, ...]
    """Every rule with an error; the first is the first error's."""
    line: int
    model: str = "lite-2"


INVALID = [
    Case("cpt", "invalid-blank-text.jsonl", ("blank-text",), 2),
    Case("cpt", "invalid-unknown-key.jsonl", ("unknown-key",), 3),
    Case("cpt", "invalid-schema.jsonl", ("schema", "unknown-key"), 2),
    Case("cpt", "invalid-reserved-token.jsonl", ("reserved-token",), 2),
    Case("cpt", "invalid-duplicate-key.jsonl", ("duplicate-key",), 2),
    Case("cpt", "invalid-blank-text.jsonl", ("blank-text",), 2, "micro"),
    Case("cpt", "invalid-blank-text.jsonl", ("blank-text",), 2, "tiny"),
    Case("rft", "invalid-missing-reference-answer.jsonl", ("missing-reference-answer",), 2),
    Case("rft", "invalid-role-order.jsonl", ("role-order",), 2),
    Case("rft", "invalid-empty-content.jsonl", ("empty-content",), 2),
    Case("rft", "invalid-blank-text.jsonl", ("blank-text",), 2),
    Case("rft", "invalid-unknown-key.jsonl", ("unknown-key",), 2),
    Case("rft", "invalid-tools.jsonl", ("tools",), 2),
    Case("rft", "invalid-media.jsonl", ("media",), 2),
    Case("rft", "invalid-schema.jsonl", ("schema",), 2),
    Case("rft", "invalid-reserved-token.jsonl", ("reserved-token",), 2),
    Case("rft", "invalid-duplicate-key.jsonl", ("duplicate-key",), 2),
    Case("rft", "invalid-missing-reference-answer.jsonl", ("missing-reference-answer",), 2, "tiny"),
    Case("gen_qa", "invalid-blank-text.jsonl", ("blank-text",), 2),
    Case("gen_qa", "invalid-unknown-key.jsonl", ("unknown-key",), 2),
    Case("gen_qa", "invalid-schema.jsonl", ("schema",), 2),
    Case("gen_qa", "invalid-media.jsonl", ("media",), 2),
    Case("gen_qa", "invalid-reserved-token.jsonl", ("reserved-token",), 2),
    Case("gen_qa", "valid-images.jsonl", ("media",), 1, "micro"),
    Case("gen_qa", "valid-images.jsonl", ("media",), 1, "tiny"),
    Case("llm_judge", "invalid-unknown-key.jsonl", ("schema", "unknown-key"), 2),
    Case("llm_judge", "invalid-schema.jsonl", ("schema", "not-object"), 2),
    Case("llm_judge", "invalid-blank-text.jsonl", ("blank-text",), 2),
    Case("llm_judge", "invalid-reserved-token.jsonl", ("reserved-token",), 2),
]

VALID = [
    ("cpt", "valid.jsonl", "lite-2"),
    ("cpt", "valid.jsonl", "micro"),
    ("cpt", "valid.jsonl", "tiny"),
    ("rft", "valid.jsonl", "lite-2"),
    ("rft", "valid.jsonl", "tiny"),
    ("gen_qa", "valid.jsonl", "lite-2"),
    ("gen_qa", "valid.jsonl", "micro"),
    ("gen_qa", "valid.jsonl", "hf"),
    ("gen_qa", "valid-images.jsonl", "lite-2"),
    ("gen_qa", "valid-images.jsonl", "lite"),
    ("llm_judge", "valid.jsonl", "lite-2"),
    ("llm_judge", "valid.jsonl", "micro"),
]


@pytest.mark.parametrize("case", INVALID, ids=lambda c: f"{c.fmt}/{c.name}@{c.model}")
def test_invalid_file(case: Case) -> None:
    report = validate(case.fmt, case.name, case.model)
    assert not report.ok
    assert set(report.error_counts) == set(case.rules), report.errors
    first = report.errors[0]
    assert (first.rule, first.line) == (case.rules[0], case.line), report.errors
    assert report.invalid_records >= 1
    assert report.format == case.fmt


@pytest.mark.parametrize(("fmt", "name", "model"), VALID, ids=lambda v: str(v))
def test_valid_file(fmt: str, name: str, model: str) -> None:
    report = validate(fmt, name, model)
    assert report.ok, report.errors
    assert report.errors == [] and report.warnings == []
    assert report.records == report.valid_records > 0


def test_every_corpus_file_is_tested() -> None:
    tested = {(c.fmt, c.name) for c in INVALID} | {(fmt, name) for fmt, name, _ in VALID}
    on_disk = {(fmt, path.name) for fmt in FORMAT_NAMES for path in (CORPUS / fmt).glob("*")}
    assert on_disk == tested


# -- key counts: a wrong count sends every line down the slow repeated-key path ----------------


def _corpus_lines() -> list[tuple[str, str, int, bytes]]:
    lines = []
    for fmt in FORMAT_NAMES:
        for path in sorted((CORPUS / fmt).glob("*.jsonl")):
            if "duplicate-key" in path.name:
                continue
            for number, line in enumerate(path.read_bytes().splitlines(), 1):
                if b'\\"' not in line:
                    lines.append((fmt, path.name, number, line))
    return lines


@pytest.mark.parametrize(
    ("fmt", "name", "number", "line"), _corpus_lines(), ids=lambda v: str(v)[:40]
)
def test_key_count_matches_the_raw_text(fmt: str, name: str, number: int, line: bytes) -> None:
    format_ = get_format(fmt)
    try:
        record = format_.decoder(forbid_unknown=False).decode(line)
    except msgspec.ValidationError:
        return  # not decoded, nothing counted
    ctx = FormatContext(spec=MODELS[MODEL["lite-2"]], platform="sagemaker")
    keys, _, _ = format_.check(record, ctx, lambda *issue: None)
    strict_failed = False
    try:
        format_.decoder(forbid_unknown=True).decode(line)
    except msgspec.ValidationError:
        strict_failed = True  # an unknown key the relaxed decoder dropped
    if not strict_failed:
        assert keys == line.count(b'":')


# -- facts ---------------------------------------------------------------------------------------


def _check(fmt: str, record: dict[str, Any], model: str = "lite-2") -> tuple[Any, list[tuple]]:
    format_ = get_format(fmt)
    decoded = format_.decoder(forbid_unknown=True).decode(msgspec.json.encode(record))
    issues: list[tuple] = []
    facts = format_.check(
        decoded,
        FormatContext(spec=MODELS[MODEL[model]], platform="sagemaker"),
        lambda *issue: issues.append(issue),
    )
    return facts, issues


def test_rft_facts() -> None:
    record = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hi there"}]},
        ],
        "tools": [{"type": "function", "function": {"name": "f", "description": "d"}}],
        "reference_answer": {"a": {"b": 1}},
        "grader": {"x": 1},
    }
    (keys, chars, kinds), issues = _check("rft", record)
    assert issues == []
    assert keys == 17
    assert chars == len("Be brief.") + len("Hi there") + len("f") + len("d")
    assert kinds == TEXT | SYSTEM | TOOLS


def test_gen_qa_facts() -> None:
    record = {
        "query": "q?",
        "response": "r",
        "system": "s",
        "metadata": "{}",
        "images": [{"data": "data:image/png;base64,iVBORw0KGgo="}],
    }
    (keys, chars, kinds), issues = _check("gen_qa", record)
    assert issues == []
    assert (keys, chars, kinds) == (6, 4, TEXT | SYSTEM | IMAGE)


def test_texts_list_what_the_model_reads() -> None:
    rft = get_format("rft")
    record = rft.decoder(True).decode(
        b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}]},'
        b' {"role": "assistant", "content": "b"}], "reference_answer": "c", "note": "d"}'
    )
    assert list(rft.texts(record)) == [
        ("$.messages[0].content[0].text", "a"),
        ("$.messages[1].content", "b"),
    ]
    gen_qa = get_format("gen_qa")
    record = gen_qa.decoder(True).decode(b'{"query": "q", "response": "r", "system": "s"}')
    assert [path for path, _ in gen_qa.texts(record)] == ["$.query", "$.response", "$.system"]


# -- messages --------------------------------------------------------------------------------


def test_missing_reference_answer_suggests_the_misspelled_key() -> None:
    report = validate("rft", "invalid-missing-reference-answer.jsonl")
    messages = [issue.message for issue in report.errors]
    assert "rename 'referance_answer' to 'reference_answer'" in messages[0]
    assert messages[1] == "reference_answer is missing"


def test_llm_judge_suggests_the_exact_case() -> None:
    report = validate("llm_judge", "invalid-unknown-key.jsonl")
    unknown = next(issue for issue in report.errors if issue.rule == "unknown-key")
    assert unknown.path == "$.response_a"
    assert "did you mean 'response_A'?" in unknown.message


def test_rft_role_and_tool_messages() -> None:
    report = validate("rft", "invalid-role-order.jsonl")
    by_line = {issue.line: issue for issue in report.errors}
    assert "single-turn" in by_line[2].message
    assert by_line[3].path == "$.messages[1].role"
    tools = validate("rft", "invalid-tools.jsonl")
    assert [issue.line for issue in tools.errors] == [2, 3, 3, 4]


# -- relaxing rules ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "name", "rule"),
    [
        ("rft", "invalid-missing-reference-answer.jsonl", "missing-reference-answer"),
        ("rft", "invalid-unknown-key.jsonl", "unknown-key"),
        ("rft", "invalid-reserved-token.jsonl", "reserved-token"),
        ("rft", "invalid-duplicate-key.jsonl", "duplicate-key"),
        ("cpt", "invalid-blank-text.jsonl", "blank-text"),
        ("cpt", "invalid-unknown-key.jsonl", "unknown-key"),
        ("gen_qa", "invalid-unknown-key.jsonl", "unknown-key"),
        ("gen_qa", "invalid-blank-text.jsonl", "blank-text"),
        ("llm_judge", "invalid-blank-text.jsonl", "blank-text"),
    ],
)
def test_relaxed_rule_is_a_warning(fmt: str, name: str, rule: str) -> None:
    report = validate(fmt, name, allow=frozenset({rule}))
    assert report.ok, report.errors
    assert report.error_counts == {}
    assert report.warning_counts.get(rule, 0) >= 1
    assert report.valid_records == report.records


def test_relaxing_unknown_key_keeps_a_missing_field_an_error() -> None:
    report = validate("llm_judge", "invalid-unknown-key.jsonl", allow=frozenset({"unknown-key"}))
    assert not report.ok
    assert report.error_counts == {"schema": 1}
    assert report.warning_counts == {"unknown-key": 1}


# -- model families, sample counts, workers, CLI -----------------------------------------------


def test_registry() -> None:
    assert {"cpt", "rft", "gen_qa", "llm_judge"} <= set(FORMATS) <= set(FAMILIES)
    for name in FORMAT_NAMES:
        assert get_format(name).name == name
    expected = {
        "cpt": {"micro", "lite", "lite-2", "tiny", "hf"},
        "rft": {"lite-2", "tiny", "hf"},
        "gen_qa": {"micro", "lite", "lite-2", "tiny", "hf"},
        "llm_judge": {"micro", "lite", "lite-2"},
    }
    for name, models in expected.items():
        assert {m for m, t in MODEL.items() if supports(name, MODELS[t])} == models


def test_rft_on_bedrock_needs_100_records() -> None:
    report = validate("rft", "valid.jsonl", platform="bedrock")
    assert report.error_counts == {"sample-count": 1}
    assert "100 to 20000" in report.errors[0].message


def test_workers_report_what_one_process_reports() -> None:
    path = str(CORPUS / "rft" / "invalid-role-order.jsonl")
    spec = MODELS[MODEL["lite-2"]]
    one = validate_dataset(path, get_format("rft"), spec)
    two = validate_dataset(path, get_format("rft"), spec, workers=2)
    assert two.errors == one.errors and two.invalid_records == one.invalid_records


@pytest.mark.parametrize(
    ("fmt", "name", "model", "code"),
    [
        ("rft", "valid.jsonl", "lite-2", 0),
        ("rft", "invalid-missing-reference-answer.jsonl", "lite-2", 1),
        ("rft", "valid.jsonl", "lite", 2),
        ("cpt", "valid.jsonl", "lite-2", 0),
        ("cpt", "invalid-blank-text.jsonl", "lite-2", 1),
        ("gen_qa", "valid.jsonl", "lite-2", 0),
        ("gen_qa", "invalid-media.jsonl", "lite-2", 1),
        ("llm_judge", "valid.jsonl", "lite-2", 0),
        ("llm_judge", "invalid-unknown-key.jsonl", "lite-2", 1),
        ("llm_judge", "valid.jsonl", "local.tiny-chat-v1", 2),
    ],
)
def test_cli(
    fmt: str, name: str, model: str, code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(CORPUS / fmt / name)
    assert main(["data", "validate", path, "--format", fmt, "--model", model]) == code
    _, err = capsys.readouterr()
    if code == 2:
        assert "does not take" in err
