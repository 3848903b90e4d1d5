"""The DPO format (Nova 1 preference data), through the corpus in tests/data/corpus/dpo.

Each invalid case names the rules its file breaks, the first error's rule and its 1-based line.
Invalid files keep a valid record first, so a line number that is off by one fails the test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import pytest

from tuneloop.cli.main import MODEL_ALIASES, main
from tuneloop.data.formats import SYSTEM, TEXT, FormatContext
from tuneloop.data.registry import get_format, supports
from tuneloop.data.report import DatasetReport
from tuneloop.data.validator import Options, validate_dataset
from tuneloop.recipes.catalog import MODELS

DPO = Path(__file__).resolve().parents[2] / "data" / "corpus" / "dpo"
# The CLI's model aliases, plus the local model.
MODEL = {**MODEL_ALIASES, "tiny": "local.tiny-chat-v1"}
V = "bedrock-conversation-2024"


def validate(
    name: str, model: str = "lite", platform: str = "sagemaker", **options: Any
) -> DatasetReport:
    return validate_dataset(
        str(DPO / name),
        get_format("dpo"),
        MODELS[MODEL[model]],
        platform=platform,
        options=Options(**options),
    )


class Case(NamedTuple):
    name: str
    rules: tuple[str, ...]
    """Every rule with an error; the first is the first error's."""
    line: int
    model: str = "lite"


INVALID = [
    Case("invalid-preference.jsonl", ("preference",), 2),
    Case("invalid-media.jsonl", ("media",), 2),
    Case("invalid-media.jsonl", ("media",), 2, "pro"),
    Case("invalid-media-video.jsonl", ("media",), 2),
    Case("invalid-role-order.jsonl", ("role-order",), 2),
    Case("invalid-blank-text.jsonl", ("blank-text",), 2),
    Case("invalid-unknown-key.jsonl", ("unknown-key",), 2),
    Case("invalid-schema.jsonl", ("schema",), 2),
    Case("invalid-reserved-token.jsonl", ("reserved-token",), 2),
    Case("invalid-schema-version.jsonl", ("schema-version",), 2),
    Case("valid.jsonl", ("media",), 3, "micro"),  # an image, for a text-only model
]


@pytest.mark.parametrize("case", INVALID, ids=lambda c: f"{c.name}@{c.model}")
def test_invalid_file(case: Case) -> None:
    report = validate(case.name, case.model)
    assert not report.ok
    assert set(report.error_counts) == set(case.rules), report.errors
    first = report.errors[0]
    assert (first.rule, first.line) == (case.rules[0], case.line), report.errors


@pytest.mark.parametrize("model", ["lite", "pro"])
def test_valid_file(model: str) -> None:
    report = validate("valid.jsonl", model)
    assert report.ok, report.errors
    assert report.errors == [] and report.warnings == []
    assert report.records == report.valid_records == 3
    assert report.modalities == {"text": 3, "system": 1, "image": 1}


def test_every_corpus_file_is_tested() -> None:
    tested = {case.name for case in INVALID} | {"valid.jsonl"}
    assert {path.name for path in DPO.glob("*")} == tested


def test_preference_messages() -> None:
    report = validate("invalid-preference.jsonl")
    found = [(issue.line, issue.path, issue.message.split(";")[0]) for issue in report.errors]
    assert found == [
        (2, "$.messages[1].candidates", "no candidate is labelled 'non-preferred'"),
        (3, "$.messages[1].candidates", "1 candidate(s)"),
        (4, "$.messages[1].candidates", "no candidate is labelled 'non-preferred'"),
        (
            4,
            "$.messages[1].candidates[1].preferenceLabel",
            "'rejected' is not a preference label (allowed: preferred, non-preferred)",
        ),
        (
            5,
            "$.messages[1]",
            "the last message must be an assistant message with candidates (at least two "
            "responses, labelled preferred and non-preferred)",
        ),
    ]


def test_problems_in_candidates_are_reported_at_the_candidate() -> None:
    media = validate("invalid-media.jsonl").errors
    assert [issue.path for issue in media] == ["$.messages[1].candidates[0].content[1].image"]
    token = validate("invalid-reserved-token.jsonl").errors
    assert [issue.path for issue in token] == ["$.messages[1].candidates[1].content[0].text"]


def _check(record: dict[str, Any], model: str = "lite") -> tuple[Any, list[tuple]]:
    fmt = get_format("dpo")
    line = msgspec.json.encode(record)
    decoded = fmt.decoder(forbid_unknown=True).decode(line)
    issues: list[tuple] = []
    facts = fmt.check(
        decoded,
        FormatContext(spec=MODELS[MODEL[model]], platform="sagemaker"),
        lambda *issue: issues.append(issue),
    )
    return facts, issues


def _candidates(*texts: str) -> list[dict[str, Any]]:
    labels = ["preferred", *["non-preferred"] * (len(texts) - 1)]
    return [
        {"content": [{"text": text}], "preferenceLabel": label}
        for text, label in zip(texts, labels, strict=True)
    ]


def test_facts_and_one_report_per_problem() -> None:
    record = {
        "schemaVersion": V,
        "system": [{"text": "sys"}],
        "messages": [
            {"role": "user", "content": [{"text": " "}]},
            {"role": "assistant", "candidates": _candidates("short", "a longer one", "mid")},
        ],
    }
    (keys, chars, kinds), issues = _check(record)
    assert keys == msgspec.json.encode(record).count(b'":') == 18
    assert chars == len("sys") + 1 + len("a longer one")  # the prompt and its longest candidate
    assert kinds == TEXT | SYSTEM
    assert issues == [("blank-text", "$.messages[0].content[0].text", "text is blank")]


@pytest.mark.parametrize(
    "messages",
    [
        [],
        [{"role": "user", "content": [{"text": "q"}]}],
        [{"role": "user"}, {"role": "assistant", "candidates": _candidates("a", "b")}],
        [
            {"role": "user", "content": [{"text": "q"}], "candidates": _candidates("a", "b")},
            {"role": "assistant", "candidates": _candidates("a", "b")},
        ],
        [
            {"role": "user", "content": [{"text": "q"}]},
            {"role": "assistant", "content": [{"text": "x"}], "candidates": []},
        ],
        [
            {"role": "user", "content": [{"text": "q"}]},
            {
                "role": "assistant",
                "candidates": [
                    {"content": [{"image": {"format": "png", "source": {"s3Location": {}}}}]}
                ],
            },
        ],
    ],
)
def test_key_count_of_malformed_records(messages: list[dict[str, Any]]) -> None:
    record = {"schemaVersion": V, "messages": messages}
    line = msgspec.json.encode(record)
    fmt = get_format("dpo")
    try:
        decoded = fmt.decoder(forbid_unknown=True).decode(line)
    except msgspec.ValidationError:
        return
    ctx = FormatContext(spec=MODELS[MODEL["lite"]], platform="sagemaker")
    keys, _, _ = fmt.check(decoded, ctx, lambda *issue: None)
    assert keys == line.count(b'":')


def test_key_count_of_corpus_lines() -> None:
    fmt = get_format("dpo")
    strict, lenient = fmt.decoder(forbid_unknown=True), fmt.decoder(forbid_unknown=False)
    ctx = FormatContext(spec=MODELS[MODEL["lite"]], platform="sagemaker")
    checked = 0
    for path in sorted(DPO.glob("*.jsonl")):
        for line in path.read_bytes().splitlines():
            try:
                strict.decode(line)
            except msgspec.ValidationError:
                continue  # unknown keys are dropped by the relaxed decoder
            keys, _, _ = fmt.check(lenient.decode(line), ctx, lambda *issue: None)
            assert keys == line.count(b'":'), (path.name, line)
            checked += 1
    assert checked > 15


def test_texts_include_every_candidate() -> None:
    fmt = get_format("dpo")
    record = fmt.decoder(True).decode(
        msgspec.json.encode(
            {
                "schemaVersion": V,
                "system": [{"text": "s"}],
                "messages": [
                    {"role": "user", "content": [{"text": "q"}]},
                    {"role": "assistant", "candidates": _candidates("a", "b")},
                ],
            }
        )
    )
    assert list(fmt.texts(record)) == [
        ("$.system[0].text", "s"),
        ("$.messages[0].content[0].text", "q"),
        ("$.messages[1].candidates[0].content[0].text", "a"),
        ("$.messages[1].candidates[1].content[0].text", "b"),
    ]


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("invalid-unknown-key.jsonl", "unknown-key"),
        ("invalid-blank-text.jsonl", "blank-text"),
        ("invalid-schema-version.jsonl", "schema-version"),
        ("invalid-reserved-token.jsonl", "reserved-token"),
    ],
)
def test_relaxed_rule_is_a_warning(name: str, rule: str) -> None:
    report = validate(name, allow=frozenset({rule}))
    assert report.ok, report.errors
    assert report.warning_counts.get(rule, 0) >= 1
    assert report.valid_records == report.records


def test_nova_1_only_and_bedrock_bounds() -> None:
    assert {m for m, t in MODEL.items() if supports("dpo", MODELS[t])} == {"micro", "lite", "pro"}
    report = validate("valid.jsonl", platform="bedrock")
    assert report.error_counts == {"sample-count": 1}
    assert "8 to 20000" in report.errors[0].message


@pytest.mark.parametrize(
    ("name", "model", "code"),
    [
        ("valid.jsonl", "lite", 0),
        ("invalid-preference.jsonl", "lite", 1),
        ("valid.jsonl", "lite-2", 2),
    ],
)
def test_cli(name: str, model: str, code: int, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "validate", str(DPO / name), "--format", "dpo", "--model", model]) == code
    capsys.readouterr()
