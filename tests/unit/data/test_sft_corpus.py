"""The SFT (Bedrock Converse) corpus: every rule that applies to SFT or to any JSONL file has
at least one invalid file, and realistic valid files must pass.

Each invalid case names the rule and the 1-based line of the first error (0 for a dataset-level
rule). Invalid files keep a valid record before the bad one, so a line number that is off by one
fails the test.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pytest

from tuneloop.cli.main import MODEL_ALIASES
from tuneloop.data.registry import get_format
from tuneloop.data.report import DatasetReport
from tuneloop.data.rules import RULES
from tuneloop.data.validator import Options, validate_dataset
from tuneloop.recipes.catalog import MODELS

CORPUS = Path(__file__).resolve().parents[2] / "data" / "corpus"
# The CLI's model aliases, plus the local model.
MODEL = {**MODEL_ALIASES, "tiny": "local.tiny-chat-v1"}
SM, BR = "sagemaker", "bedrock"

# The rules that apply to SFT datasets or to any file; each must have an invalid case below.
SFT_RULES = (
    "invalid-json",
    "non-utf8",
    "bom",
    "blank-line",
    "nan",
    "duplicate-key",
    "not-object",
    "unknown-key",
    "duplicate-record",
    "too-long",
    "schema",
    "schema-version",
    "role-order",
    "empty-content",
    "blank-text",
    "reserved-token",
    "media",
    "mixed-modality",
    "reasoning",
    "tools",
    "sample-count",
    "not-supported",
)


def validate(
    name: str, model: str = "lite", platform: str = SM, **options: object
) -> DatasetReport:
    return validate_dataset(
        str(CORPUS / name),
        get_format("sft"),
        MODELS[MODEL[model]],
        platform=platform,
        options=Options(**options),  # type: ignore[arg-type]
    )


class Case(NamedTuple):
    file: str
    model: str
    platform: str
    rule: str
    line: int
    also: frozenset[str] = frozenset()
    """Other rules the file breaks as well (e.g. a dataset-level bound)."""
    role: str = "train"


INVALID = [
    # File and JSON Lines level.
    Case("file/invalid_json.jsonl", "lite", SM, "invalid-json", 3),
    Case("file/invalid_json_single_quotes.jsonl", "lite", SM, "invalid-json", 2),
    Case("file/non_utf8.jsonl", "lite", SM, "non-utf8", 2),
    Case("file/non_utf8_unknown_key.jsonl", "lite", SM, "non-utf8", 2, frozenset({"unknown-key"})),
    Case("file/bom.jsonl", "lite", SM, "bom", 1),
    Case("file/blank_line.jsonl", "lite", SM, "blank-line", 2),
    Case("file/whitespace_line.jsonl", "lite", SM, "blank-line", 3),
    Case("file/trailing_blank_lines.jsonl", "lite", SM, "blank-line", 3),
    Case("file/nan.jsonl", "lite", SM, "nan", 2),
    Case("file/infinity.jsonl", "lite", SM, "nan", 3),
    Case("file/duplicate_key.jsonl", "lite", SM, "duplicate-key", 2),
    Case("file/duplicate_key_top.jsonl", "lite", SM, "duplicate-key", 3),
    Case("file/not_object_array.jsonl", "lite", SM, "not-object", 2),
    Case("file/not_object_string.jsonl", "lite", SM, "not-object", 3),
    Case("file/duplicate_record.jsonl", "lite", SM, "duplicate-record", 3),
    Case("file/too_long.jsonl", "tiny", SM, "too-long", 2),
    # Unknown keys at every level.
    Case("sft/unknown_key_top.jsonl", "lite", SM, "unknown-key", 2),
    Case("sft/unknown_key_top_typo.jsonl", "lite", SM, "unknown-key", 3),
    Case("sft/unknown_key_message.jsonl", "lite", SM, "unknown-key", 2),
    Case("sft/unknown_key_block.jsonl", "lite", SM, "unknown-key", 2),
    Case("sft/unknown_key_media_source.jsonl", "lite", SM, "unknown-key", 2),
    # Schema.
    Case("sft/schema_missing_messages.jsonl", "lite", SM, "schema", 2),
    Case("sft/schema_messages_not_list.jsonl", "lite", SM, "schema", 2),
    Case("sft/schema_content_not_list.jsonl", "lite", SM, "schema", 2),
    Case("sft/schema_text_not_string.jsonl", "lite", SM, "schema", 2),
    Case("sft/schema_system_not_list.jsonl", "lite", SM, "schema", 2),
    Case("sft/schema_role_missing.jsonl", "lite", SM, "schema", 2),
    Case("sft/schema_block_empty.jsonl", "lite", SM, "schema", 2),
    Case("sft/schema_block_two_kinds.jsonl", "lite", SM, "schema", 2),
    Case("sft/schema_version_missing.jsonl", "lite", SM, "schema-version", 2),
    Case("sft/schema_version_wrong.jsonl", "lite", SM, "schema-version", 2),
    # Conversations.
    Case("sft/role_starts_with_assistant.jsonl", "lite", SM, "role-order", 2),
    Case("sft/role_two_users.jsonl", "lite", SM, "role-order", 2),
    Case("sft/role_ends_with_user.jsonl", "lite", SM, "role-order", 2),
    Case("sft/role_unknown.jsonl", "lite", SM, "role-order", 2),
    Case("sft/role_single_message.jsonl", "lite", SM, "role-order", 2),
    Case("sft/empty_content.jsonl", "lite", SM, "empty-content", 2),
    Case("sft/empty_messages.jsonl", "lite", SM, "empty-content", 2),
    Case("sft/blank_text_user.jsonl", "lite", SM, "blank-text", 2),
    Case("sft/blank_text_assistant.jsonl", "lite", SM, "blank-text", 2),
    Case("sft/blank_text_empty.jsonl", "lite", SM, "blank-text", 2),
    Case("sft/blank_text_system.jsonl", "lite", SM, "blank-text", 2),
    Case("sft/reserved_tokens.jsonl", "lite", SM, "reserved-token", 2),
    Case("sft/reserved_token_escaped.jsonl", "lite", SM, "reserved-token", 2),
    Case("sft/reserved_token_system.jsonl", "lite", SM, "reserved-token", 2),
    Case("sft/reserved_token_assistant_reply.jsonl", "lite", SM, "reserved-token", 3),
    Case("sft/reserved_token_reasoning.jsonl", "lite-2", SM, "reserved-token", 2),
    # Media.
    Case("sft/media_image_in_assistant.jsonl", "lite", SM, "media", 2),
    Case("sft/media_image_bad_format.jsonl", "lite", SM, "media", 2),
    Case("sft/media_image_webp.jsonl", "lite-2", SM, "media", 2),
    Case("sft/valid_image_webp.jsonl", "lite-2", SM, "media", 1),
    Case("sft/media_video_webm.jsonl", "lite-2", SM, "media", 2),
    Case("sft/media_eleven_images.jsonl", "lite", SM, "media", 2),
    Case("sft/media_two_videos.jsonl", "lite", SM, "media", 2),
    Case("sft/media_video_and_image.jsonl", "lite", SM, "mixed-modality", 2, frozenset({"media"})),
    Case("sft/media_image_micro.jsonl", "micro", SM, "media", 2),
    Case("sft/valid_images.jsonl", "micro", SM, "media", 1),
    Case("sft/media_document_nova1.jsonl", "lite", SM, "media", 2),
    Case("sft/media_document_nova1.jsonl", "pro", SM, "media", 2),
    Case("sft/media_two_documents.jsonl", "lite-2", SM, "media", 2),
    Case("sft/media_not_s3.jsonl", "lite", SM, "media", 2),
    Case("sft/mixed_modality.jsonl", "lite", SM, "mixed-modality", 4),
    # Reasoning (Nova 2 Lite only, assistant only, text-only records).
    Case("sft/reasoning_nova1.jsonl", "lite", SM, "reasoning", 2),
    Case("sft/valid_reasoning.jsonl", "pro", SM, "reasoning", 1),
    Case("sft/reasoning_in_user.jsonl", "lite-2", SM, "reasoning", 2),
    Case("sft/reasoning_with_image.jsonl", "lite-2", SM, "reasoning", 2),
    # Tools.
    Case("sft/tools_use_in_user.jsonl", "lite", SM, "tools", 2),
    Case("sft/tools_undefined.jsonl", "lite", SM, "tools", 2),
    Case("sft/tools_repeated_id.jsonl", "lite", SM, "tools", 2),
    Case("sft/tools_result_without_use.jsonl", "lite", SM, "tools", 2),
    Case("sft/tools_empty_list.jsonl", "lite", SM, "tools", 2),
    Case("sft/tools_use_without_config.jsonl", "lite", SM, "tools", 2),
    # Nova 2 Lite SFT on Bedrock takes no tools (and at least 200 records).
    Case("sft/tools_valid_nova2.jsonl", "lite-2", BR, "sample-count", 0, frozenset({"tools"})),
    # Dataset level: Bedrock sample bounds, and no validation set for Nova 2 Lite on Bedrock.
    Case("sft/sample_count_7.jsonl", "lite", BR, "sample-count", 0),
    Case("sft/sample_count_7.jsonl", "micro", BR, "sample-count", 0),
    Case("sft/valid_text.jsonl", "lite-2", BR, "sample-count", 0),
    Case("sft/valid_text.jsonl", "lite-2", BR, "not-supported", 0, role="validation"),
]

VALID = [
    ("file/valid_crlf.jsonl", "lite", SM),
    ("file/valid_no_trailing_newline.jsonl", "lite", SM),
    ("file/valid_crlf_no_trailing_newline.jsonl", "lite-2", SM),
    ("file/valid_unicode.jsonl", "micro", SM),
    ("file/too_long.jsonl", "micro", SM),
    ("sft/valid_text.jsonl", "micro", SM),
    ("sft/valid_text.jsonl", "lite", BR),
    ("sft/valid_text.jsonl", "tiny", SM),
    ("sft/valid_multiturn.jsonl", "pro", SM),
    ("sft/valid_system_some.jsonl", "lite-2", SM),
    ("sft/valid_images.jsonl", "lite", SM),
    ("sft/valid_images.jsonl", "lite-2", SM),
    ("sft/valid_image_webp.jsonl", "lite", SM),
    ("sft/valid_video.jsonl", "pro", SM),
    ("sft/valid_video.jsonl", "lite-2", SM),
    ("sft/media_video_webm.jsonl", "lite", SM),
    ("sft/valid_document.jsonl", "lite-2", SM),
    ("sft/media_document_nova1.jsonl", "lite-2", SM),
    ("sft/valid_reasoning.jsonl", "lite-2", SM),
    ("sft/reasoning_nova1.jsonl", "lite-2", SM),
    ("sft/valid_tools.jsonl", "lite", SM),
    ("sft/valid_tools.jsonl", "lite-2", SM),
    ("sft/tools_valid_nova2.jsonl", "lite-2", SM),
    ("sft/valid_prose.jsonl", "lite", SM),
    ("sft/valid_prose.jsonl", "micro", SM),
    ("sft/sample_count_7.jsonl", "lite", SM),
]


def _id(case: Case) -> str:
    return f"{Path(case.file).stem}-{case.model}-{case.platform}-{case.role}"


@pytest.mark.parametrize("case", INVALID, ids=_id)
def test_invalid_file(case: Case) -> None:
    report = validate(case.file, case.model, case.platform, role=case.role)
    assert not report.ok
    assert set(report.error_counts) == {case.rule} | case.also
    first = report.errors[0]
    assert (first.rule, first.line) == (case.rule, case.line), report.errors
    assert all(issue.line >= 0 for issue in report.errors)
    if case.line and case.rule not in ("blank-line", "mixed-modality"):
        # (a blank line is not a record; mixed-modality is about the dataset)
        assert report.invalid_records >= 1
        assert first.fix == RULES[case.rule].fix
    assert not report.warnings


@pytest.mark.parametrize(("file", "model", "platform"), VALID, ids=lambda v: str(v))
def test_valid_file(file: str, model: str, platform: str) -> None:
    report = validate(file, model, platform)
    assert report.ok, report.errors
    assert report.errors == [] and report.error_counts == {}
    assert report.warnings == [] and report.warning_counts == {}
    assert report.invalid_records == 0
    assert report.records == report.valid_records > 0


def test_every_sft_rule_has_an_invalid_file() -> None:
    covered = {case.rule for case in INVALID} | {r for case in INVALID for r in case.also}
    assert set(SFT_RULES) <= set(RULES)
    assert set(SFT_RULES) - covered == set()
    files = {case.file for case in INVALID} | {file for file, _, _ in VALID}
    on_disk = {str(p.relative_to(CORPUS)) for d in ("sft", "file") for p in (CORPUS / d).iterdir()}
    on_disk.discard("file/.gitattributes")
    assert on_disk - files == set(), "corpus files without a case"
    assert files - on_disk == set()


def test_corpus_files_keep_their_bytes() -> None:
    """Line endings and odd bytes are what these files test; a checkout must not change them."""
    crlf = (CORPUS / "file/valid_crlf.jsonl").read_bytes()
    assert crlf.count(b"\r\n") == 3 and crlf.count(b"\n") == 3
    assert not (CORPUS / "file/valid_no_trailing_newline.jsonl").read_bytes().endswith(b"\n")
    assert (CORPUS / "file/bom.jsonl").read_bytes().startswith(b"\xef\xbb\xbf")
    with pytest.raises(UnicodeDecodeError):
        (CORPUS / "file/non_utf8.jsonl").read_bytes().decode()
    long_line = (CORPUS / "file/too_long.jsonl").read_text().splitlines()[1]
    assert len(long_line) > MODELS[MODEL["tiny"]].context_length * 4


def test_each_reserved_token_is_reported_on_its_line() -> None:
    tokens = ["User:", "Bot:", "Assistant:", "System:", "Thought:", "[EOS]", "<image>"]
    tokens += ["<video>", "<unk>"]
    report = validate("sft/reserved_tokens.jsonl")
    assert report.error_counts == {"reserved-token": len(tokens)}
    assert [issue.line for issue in report.errors] == list(range(2, 2 + len(tokens)))
    for issue, token in zip(report.errors, tokens, strict=True):
        assert issue.path == "$.messages[0].content[0].text"
        assert repr(token) in issue.message
    assert report.invalid_records == len(tokens)


def test_reserved_token_paths_outside_user_text() -> None:
    assert validate("sft/reserved_token_system.jsonl").errors[0].path == "$.system[0].text"
    reply = validate("sft/reserved_token_assistant_reply.jsonl").errors[0]
    assert reply.path == "$.messages[1].content[0].text"
    reasoning = validate("sft/reserved_token_reasoning.jsonl", "lite-2").errors[0]
    assert reasoning.path == "$.messages[1].content[0].reasoningContent.reasoningText.text"
    escaped = validate("sft/reserved_token_escaped.jsonl").errors[0]
    assert "'<image>'" in escaped.message


def test_reserved_tokens_without_hyperscan(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pure-Python scanner finds the same lines as Hyperscan."""
    import sys

    monkeypatch.setitem(sys.modules, "hyperscan", None)  # import fails: the `re` engine runs
    from tuneloop.data.scan import ReservedScanner

    assert ReservedScanner().engine == "re"
    report = validate("sft/reserved_tokens.jsonl")
    assert [issue.line for issue in report.errors] == list(range(2, 11))
    assert validate("sft/reserved_token_escaped.jsonl").error_counts == {"reserved-token": 1}
    assert validate("sft/valid_prose.jsonl").ok


@pytest.mark.parametrize(
    ("file", "path", "words"),
    [
        ("sft/unknown_key_top.jsonl", "$.metadata", "unknown key 'metadata'"),
        ("sft/unknown_key_top_typo.jsonl", "$.mesages", "did you mean 'messages'?"),
        ("sft/unknown_key_message.jsonl", "$.messages[0].name", "unknown key 'name'"),
        ("sft/unknown_key_block.jsonl", "$.messages[0].content[0].cachePoint", "cachePoint"),
        (
            "sft/unknown_key_media_source.jsonl",
            "$.messages[0].content[1].image.source.s3Location.region",
            "unknown key 'region'",
        ),
    ],
)
def test_unknown_key_paths(file: str, path: str, words: str) -> None:
    issue = validate(file).errors[0]
    assert issue.path == path
    assert words in issue.message


@pytest.mark.parametrize(
    ("file", "model", "path", "words"),
    [
        ("sft/role_starts_with_assistant.jsonl", "lite", "$.messages[0].role", "found assistant"),
        ("sft/role_two_users.jsonl", "lite", "$.messages[1].role", "expected assistant"),
        ("sft/role_ends_with_user.jsonl", "lite", "$.messages[2].role", "last message"),
        ("sft/role_unknown.jsonl", "lite", "$.messages[0].role", "'system' is not a role"),
        ("sft/schema_missing_messages.jsonl", "lite", "$", "'messages' is missing"),
        ("sft/schema_text_not_string.jsonl", "lite", "$.messages[0].content[0].text", "str"),
        ("sft/media_image_webp.jsonl", "lite-2", "$.messages[0].content[1].image.format", "webp"),
        ("sft/media_eleven_images.jsonl", "lite", "$.messages[0].content", "11 images"),
        ("sft/media_two_videos.jsonl", "lite", "$.messages", "2 videos"),
        ("sft/media_image_micro.jsonl", "micro", "$.messages[0].content[1].image", "text-only"),
        ("sft/media_document_nova1.jsonl", "lite", "$.messages[0].content[0].document", "Nova 2"),
        (
            "sft/media_not_s3.jsonl",
            "lite",
            "$.messages[0].content[1].image.source.s3Location.uri",
            "s3://",
        ),
        ("sft/mixed_modality.jsonl", "lite", "$", "line 2 has an image and line 4 a video"),
        (
            "sft/tools_undefined.jsonl",
            "lite",
            "$.messages[1].content[0].toolUse.name",
            "get_forecast",
        ),
        (
            "sft/tools_repeated_id.jsonl",
            "lite",
            "$.messages[3].content[0].toolUse.toolUseId",
            "twice",
        ),
        (
            "sft/tools_result_without_use.jsonl",
            "lite",
            "$.messages[2].content[0].toolResult.toolUseId",
            "earlier",
        ),
        ("sft/tools_empty_list.jsonl", "lite", "$.toolConfig.tools", "empty"),
        ("sft/blank_text_system.jsonl", "lite", "$.system[0].text", "blank"),
        ("sft/empty_content.jsonl", "lite", "$.messages[1].content", "empty"),
    ],
)
def test_error_paths_and_messages(file: str, model: str, path: str, words: str) -> None:
    issue = validate(file, model).errors[0]
    assert issue.path == path
    assert words in issue.message


def test_tools_on_bedrock_nova2_are_refused_per_record() -> None:
    report = validate("sft/tools_valid_nova2.jsonl", "lite-2", BR)
    tools = [issue for issue in report.errors if issue.rule == "tools"]
    assert [(issue.line, issue.path) for issue in tools] == [(2, "$.toolConfig")]
    assert report.invalid_records == 1  # the dataset-level bound marks no line


@pytest.mark.parametrize(("model", "low"), [("lite", 8), ("micro", 8), ("pro", 8), ("lite-2", 200)])
def test_bedrock_sample_bounds(tmp_path: Path, model: str, low: int) -> None:
    valid = (CORPUS / "sft/valid_text.jsonl").read_text().splitlines()[0]

    def check(count: int) -> DatasetReport:
        path = tmp_path / f"{count}.jsonl"
        lines = (valid.replace("refund window", f"refund window {i}") for i in range(count))
        path.write_text("".join(line + "\n" for line in lines))
        return validate_dataset(
            str(path), get_format("sft"), MODELS[MODEL[model]], platform=BR, options=Options()
        )

    below, at = check(low - 1), check(low)
    assert below.error_counts == {"sample-count": 1}
    assert below.errors[0].line == 0
    assert f"{low - 1} records" in below.errors[0].message
    assert at.ok
    # SageMaker has no such bound, and a validation set is not counted against it.
    assert validate_dataset(
        str(tmp_path / f"{low - 1}.jsonl"), get_format("sft"), MODELS[MODEL[model]]
    ).ok


def test_validation_role_is_fine_elsewhere() -> None:
    for model, platform in (("lite-2", SM), ("lite", BR), ("micro", BR)):
        report = validate("sft/sample_count_7.jsonl", model, platform, role="validation")
        assert report.ok, (model, platform, report.errors)
