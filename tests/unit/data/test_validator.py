"""The validator beyond single rules: relaxing rules, the report, streaming in chunks, S3
objects and the multi-process mode, which must all agree with one plain pass."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tuneloop.data import reader, validator
from tuneloop.data.registry import get_format
from tuneloop.data.report import DatasetReport
from tuneloop.data.rules import RELAXABLE, RULES
from tuneloop.data.validator import Options, validate_dataset
from tuneloop.errors import StorageError
from tuneloop.recipes.catalog import MODELS

CORPUS = Path(__file__).resolve().parents[2] / "data" / "corpus"
LITE = MODELS["amazon.nova-lite-v1:0:300k"]
LITE2 = MODELS["amazon.nova-2-lite-v1:0:256k"]
TINY = MODELS["local.tiny-chat-v1"]
SFT = get_format("sft")
VERSION = "bedrock-conversation-2024"


def validate(path: Path | str, spec=LITE, *, platform="sagemaker", workers=1, **options):
    return validate_dataset(
        str(path),
        SFT,
        spec,
        platform=platform,
        options=Options(**options),
        workers=workers,
    )


def record(question: str, answer: str = "Sure.", **extra) -> str:
    value = {
        "schemaVersion": VERSION,
        "messages": [
            {"role": "user", "content": [{"text": question}]},
            {"role": "assistant", "content": [{"text": answer}]},
        ],
        **extra,
    }
    return json.dumps(value)


def same(a: DatasetReport, b: DatasetReport, *, uri: bool = True) -> None:
    """Equal in everything but the timing (and the URI when ``uri`` is False)."""
    skip = {"seconds"} | (set() if uri else {"uri"})
    assert a.to_dict(exclude=skip) == b.to_dict(exclude=skip)


# --- relaxing rules --------------------------------------------------------------------------

RELAX = {
    "invalid-json": [("file/invalid_json.jsonl", LITE)],
    "non-utf8": [("file/non_utf8.jsonl", LITE)],
    "bom": [("file/bom.jsonl", LITE)],
    "blank-line": [("file/blank_line.jsonl", LITE), ("file/trailing_blank_lines.jsonl", LITE)],
    "nan": [("file/nan.jsonl", LITE), ("file/infinity.jsonl", LITE)],
    "duplicate-key": [("file/duplicate_key.jsonl", LITE), ("file/duplicate_key_top.jsonl", LITE)],
    "not-object": [("file/not_object_array.jsonl", LITE)],
    "unknown-key": [
        ("sft/unknown_key_top.jsonl", LITE),
        ("sft/unknown_key_top_typo.jsonl", LITE),
        ("sft/unknown_key_message.jsonl", LITE),
        ("sft/unknown_key_block.jsonl", LITE),
        ("sft/unknown_key_media_source.jsonl", LITE),
    ],
    "duplicate-record": [("file/duplicate_record.jsonl", LITE)],
    "too-long": [("file/too_long.jsonl", TINY)],
    "schema-version": [
        ("sft/schema_version_missing.jsonl", LITE),
        ("sft/schema_version_wrong.jsonl", LITE),
    ],
    "blank-text": [("sft/blank_text_user.jsonl", LITE), ("sft/blank_text_system.jsonl", LITE)],
    "reserved-token": [
        ("sft/reserved_tokens.jsonl", LITE),
        ("sft/reserved_token_escaped.jsonl", LITE),
    ],
    "mixed-modality": [("sft/mixed_modality.jsonl", LITE)],
}
RELAX_CASES = [(rule, file, spec) for rule, cases in RELAX.items() for file, spec in cases]


_FILE_AND_SFT_RULES = {
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
    "schema-version",
    "blank-text",
    "reserved-token",
    "mixed-modality",
}


def test_relax_table_covers_the_relaxable_sft_rules() -> None:
    # Relaxable rules of other formats (RFT, evaluation) are tested with those formats.
    assert set(RELAX) == _FILE_AND_SFT_RULES
    assert set(RELAX) <= set(RELAXABLE)


@pytest.mark.parametrize(
    ("rule", "file", "spec"), RELAX_CASES, ids=[f"{r}-{Path(f).stem}" for r, f, _ in RELAX_CASES]
)
def test_relaxed_rule_is_a_counted_warning(rule: str, file: str, spec) -> None:
    strict = validate(CORPUS / file, spec)
    assert not strict.ok
    assert rule in strict.error_counts
    assert f"{rule}: {strict.error_counts[rule]}  (relax with --allow {rule})" in strict.to_text()

    relaxed = validate(CORPUS / file, spec, allow=frozenset({rule}))
    assert relaxed.ok, relaxed.errors
    assert relaxed.errors == [] and relaxed.invalid_records == 0
    assert relaxed.allowed == [rule]
    assert relaxed.warning_counts.get(rule, 0) >= 1
    assert {issue.rule for issue in relaxed.warnings} == {rule}
    assert relaxed.warnings[0].line == strict.errors[0].line
    assert relaxed.warning_counts[rule] == strict.error_counts[rule]
    text = relaxed.to_text()
    assert ": VALID " in text and f"relaxed: {rule}" in text and "warnings by rule:" in text


def test_relaxed_rules_only_hide_themselves(tmp_path: Path) -> None:
    """Relaxing one rule leaves the others errors: a BOM is forgiven, a blank line is not."""
    path = tmp_path / "bom_and_blank.jsonl"
    path.write_bytes((CORPUS / "file/bom.jsonl").read_bytes() + b"\n" + record("More").encode())
    report = validate(path, allow=frozenset({"bom"}))
    assert report.error_counts == {"blank-line": 1}
    assert report.warning_counts == {"bom": 1}
    assert report.errors[0].line == 3


def test_invalid_utf8_in_an_unknown_keys_value_is_found_when_unknown_keys_are_relaxed() -> None:
    """A relaxed unknown key is skipped, not decoded; its bytes must still be UTF-8."""
    path = CORPUS / "file/non_utf8_unknown_key.jsonl"
    strict = validate(path)
    assert strict.error_counts == {"non-utf8": 1, "unknown-key": 1}
    relaxed = validate(path, allow=frozenset({"unknown-key"}))
    assert relaxed.error_counts == {"non-utf8": 1}
    assert [(e.line, e.rule) for e in relaxed.errors] == [(2, "non-utf8")]
    assert "at byte 61 " in relaxed.errors[0].message and not relaxed.ok
    both = validate(path, allow=frozenset({"unknown-key", "non-utf8"}))
    assert both.ok and both.warning_counts == {"non-utf8": 1, "unknown-key": 1}
    same(validate(path, allow=frozenset({"unknown-key"}), workers=2), relaxed)


def test_relaxing_several_rules_at_once(tmp_path: Path) -> None:
    lines = [
        record("First"),
        "",
        record("User: second"),
        record("First"),
        record("Third", extra=1),
        record("Fourth").replace('{"schemaVersion"', '{"schemaVersion": "x", "schemaVersion"'),
    ]
    path = tmp_path / "many.jsonl"
    path.write_text("\n".join(lines) + "\n")
    allow = frozenset(
        {"blank-line", "reserved-token", "duplicate-record", "unknown-key", "duplicate-key"}
    )
    report = validate(path, allow=allow)
    assert report.ok, report.errors
    assert report.warning_counts == {rule: 1 for rule in allow}
    assert [w.line for w in report.warnings] == [2, 3, 4, 5, 6]
    assert report.allowed == sorted(allow)


@pytest.mark.parametrize("rule", ["schema", "role-order", "media", "sample-count", "nope"])
def test_only_relaxable_rules_can_be_relaxed(rule: str) -> None:
    with pytest.raises(ValueError, match="cannot relax"):
        validate(CORPUS / "sft/valid_text.jsonl", allow=frozenset({rule}))


def test_text_report_names_no_flag_for_strict_rules() -> None:
    text = validate(CORPUS / "sft/role_two_users.jsonl").to_text()
    assert "role-order: 1" in text and "--allow" not in text
    assert ": INVALID (sft for amazon.nova-lite-v1:0:300k on sagemaker)" in text
    assert "role_two_users.jsonl:2: $.messages[1].role: [role-order]" in text
    assert "; fix: " + RULES["role-order"].fix in text


# --- the report ------------------------------------------------------------------------------


def test_token_estimate_and_max_length(tmp_path: Path) -> None:
    # Record i holds 40 * i characters of text: about 10 * i tokens.
    path = tmp_path / "lengths.jsonl"
    path.write_text("".join(record("q" * (40 * i - 2), "ok") + "\n" for i in range(1, 101)))
    report = validate(path, max_length=900)
    assert report.ok
    tokens = report.tokens
    assert (tokens.p50, tokens.p95, tokens.max) == (510, 960, 1000)
    assert tokens.max_length == 900 and tokens.context_length == LITE.context_length
    assert tokens.over_max_length == 10
    assert report.warning_counts == {"truncated": 10}
    assert report.warnings[0].line == 0 and "max_length 900" in report.warnings[0].message
    assert "10 records would be truncated at max_length" in report.to_text()
    assert "p50 510, p95 960, max 1000 vs max_length 900" in report.to_text()

    without = validate(path)
    assert without.tokens.over_max_length == 0 and without.warnings == []
    assert validate(path, max_length=1000).tokens.over_max_length == 0


@given(
    lengths=st.lists(st.integers(0, 5000) | st.sampled_from([0, 3, 4, 5, 400]), min_size=1),
    max_length=st.none() | st.integers(1, 1300),
)
def test_token_stats_are_those_of_the_sorted_lengths(
    lengths: list[int], max_length: int | None
) -> None:
    """Counting distinct lengths gives what indexing every sorted record length would."""
    ordered = sorted(lengths)
    tokens = validator._token_stats(Counter(lengths), max_length, 300_000)
    assert tokens.p50 == ordered[len(ordered) // 2] // 4
    assert tokens.p95 == ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))] // 4
    assert tokens.max == ordered[-1] // 4
    limit = (max_length or 0) * 4
    assert tokens.over_max_length == (sum(n > limit for n in ordered) if max_length else 0)


def test_token_estimate_counts_system_and_reasoning_text() -> None:
    report = validate(CORPUS / "sft/valid_system_some.jsonl")
    line = json.loads((CORPUS / "sft/valid_system_some.jsonl").read_text().splitlines()[2])
    chars = sum(len(s["text"]) for s in line["system"])
    chars += sum(len(b["text"]) for m in line["messages"] for b in m["content"])
    assert report.tokens.max >= chars // 4


def test_duplicates_are_counted_and_point_to_the_first(tmp_path: Path) -> None:
    a, b, c = record("A"), record("B"), record("C")
    path = tmp_path / "dups.jsonl"
    path.write_text("\n".join([a, b, a, c, b, a]) + "\n")
    report = validate(path)
    assert report.duplicates == 3
    assert report.error_counts == {"duplicate-record": 3}
    assert [(e.line, e.message) for e in report.errors] == [
        (3, "same as line 1"),
        (5, "same as line 2"),
        (6, "same as line 1"),
    ]
    assert report.invalid_records == 3 and report.valid_records == 3
    relaxed = validate(path, allow=frozenset({"duplicate-record"}))
    assert relaxed.ok and relaxed.duplicates == 3


@pytest.mark.parametrize(
    ("file", "spec", "modalities"),
    [
        ("sft/valid_text.jsonl", LITE, {"text": 10}),
        ("sft/valid_system_some.jsonl", LITE, {"text": 3, "system": 2}),
        ("sft/valid_images.jsonl", LITE, {"text": 5, "image": 4}),
        ("sft/valid_video.jsonl", LITE, {"text": 3, "video": 2}),
        ("sft/valid_document.jsonl", LITE2, {"text": 1, "document": 1}),
        ("sft/valid_reasoning.jsonl", LITE2, {"text": 2, "reasoning": 2}),
        ("sft/valid_tools.jsonl", LITE, {"text": 3, "tools": 2}),
    ],
)
def test_modalities(file: str, spec, modalities: dict[str, int]) -> None:
    report = validate(CORPUS / file, spec)
    assert report.ok
    assert report.modalities == modalities


@pytest.mark.parametrize(
    "file",
    ["sft/valid_text.jsonl", "file/bom.jsonl", "file/non_utf8.jsonl", "file/valid_crlf.jsonl"],
)
def test_sha256_and_size_are_the_files(file: str) -> None:
    data = (CORPUS / file).read_bytes()
    report = validate(CORPUS / file)
    assert report.sha256 == hashlib.sha256(data).hexdigest()
    assert report.bytes == len(data)


def test_sha256_of_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    report = validate(path)
    assert report.sha256 == hashlib.sha256(b"").hexdigest()
    assert report.records == 0 and report.bytes == 0


@pytest.mark.parametrize(
    ("data", "what"),
    [(b"", "is empty"), (b"\n \n\t\n", "holds only blank lines"), (b"\r\n", "holds only blank")],
)
@pytest.mark.parametrize("platform", ["sagemaker", "bedrock"])
def test_a_dataset_without_records_is_invalid(
    tmp_path: Path, data: bytes, what: str, platform: str
) -> None:
    """A round would train on nothing: one dataset-level error, on every platform."""
    path = tmp_path / "empty.jsonl"
    path.write_bytes(data)
    report = validate(path, platform=platform, allow=frozenset({"blank-line"}))
    assert not report.ok and report.records == 0 and report.invalid_records == 0
    assert report.error_counts == {"sample-count": 1}
    (issue,) = report.errors
    assert issue.line == 0 and what in issue.message and "at least" in issue.message
    assert issue.fix == RULES["sample-count"].fix
    text = report.to_text()
    assert "INVALID" in text and f"{path}: $: [sample-count] no records" in text
    same(validate(path, platform=platform, workers=2), validate(path, platform=platform))


def test_max_errors_lists_the_first_and_counts_all() -> None:
    full = validate(CORPUS / "sft/reserved_tokens.jsonl")
    assert len(full.errors) == 9
    report = validate(CORPUS / "sft/reserved_tokens.jsonl", max_errors=3)
    assert [e.line for e in report.errors] == [2, 3, 4]
    assert report.errors == full.errors[:3]
    assert report.error_counts == {"reserved-token": 9}
    assert report.invalid_records == 9
    assert "first 3 of 9 errors" in report.to_text()
    none = validate(CORPUS / "sft/reserved_tokens.jsonl", max_errors=0)
    assert none.errors == [] and none.error_counts == {"reserved-token": 9} and not none.ok
    warned = validate(
        CORPUS / "sft/reserved_tokens.jsonl", max_errors=2, allow=frozenset({"reserved-token"})
    )
    assert [w.line for w in warned.warnings] == [2, 3]
    assert warned.warning_counts == {"reserved-token": 9}


def test_max_errors_keeps_the_earliest_lines_whatever_order_they_are_found(
    tmp_path: Path,
) -> None:
    """A repeated key is found after the rest of its chunk, yet listed in line order."""
    dup = record("A").replace('"role": "user"', '"role": "user", "role": "user"')
    path = tmp_path / "order.jsonl"
    path.write_text("\n".join([record("ok"), dup, "", "[1]", record("User: x")]) + "\n")
    report = validate(path, max_errors=2)
    assert [(e.line, e.rule) for e in report.errors] == [(2, "duplicate-key"), (3, "blank-line")]
    assert sum(report.error_counts.values()) == 4


def test_report_json_round_trip() -> None:
    report = validate(CORPUS / "sft/mixed_modality.jsonl", max_length=10)
    again = DatasetReport.from_json(report.to_json())
    assert again == report
    data = json.loads(report.to_json())
    assert data["errors"][0]["rule"] == "mixed-modality"
    assert data["tokens"]["max_length"] == 10


# --- streaming: chunk sizes, large files, S3 -------------------------------------------------


def _mixed_file(path: Path, repeat: int = 1) -> Path:
    """Valid and invalid lines from the corpus, CRLF lines, duplicates and no final newline."""
    parts = [(CORPUS / "file/bom.jsonl").read_bytes()]
    for name in (
        "file/invalid_json.jsonl",
        "file/non_utf8.jsonl",
        "file/blank_line.jsonl",
        "file/nan.jsonl",
        "file/duplicate_key.jsonl",
        "file/not_object_array.jsonl",
        "file/valid_crlf.jsonl",
        "sft/unknown_key_message.jsonl",
        "sft/reserved_tokens.jsonl",
        "sft/reserved_token_escaped.jsonl",
        "sft/valid_images.jsonl",
        "sft/media_two_videos.jsonl",
        "sft/tools_repeated_id.jsonl",
        "sft/valid_prose.jsonl",
        "sft/role_two_users.jsonl",
    ):
        parts.append((CORPUS / name).read_bytes())
    body = b"".join(parts[1:])
    data = parts[0] + body * repeat + record("The last line has no newline").encode()
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(("first", "chunk"), [(3, 3), (7, 7), (5, 64), (64, 1000), (4096, 4096)])
def test_chunk_size_does_not_change_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first: int, chunk: int
) -> None:
    path = _mixed_file(tmp_path / "mixed.jsonl")
    expected = validate(path, max_errors=1000)
    assert expected.error_counts["duplicate-record"] > 0 and expected.errors[0].rule == "bom"
    monkeypatch.setattr(reader, "FIRST_CHUNK", first)
    monkeypatch.setattr(reader, "CHUNK", chunk)
    sizes = [len(c) for c in reader.read_chunks(str(path))]
    assert sizes[0] == first and set(sizes[1:-1]) <= {chunk}
    same(validate(path, max_errors=1000), expected)
    relaxed = frozenset({"bom", "duplicate-key", "reserved-token", "unknown-key"})
    got = validate(path, allow=relaxed)
    monkeypatch.setattr(reader, "CHUNK", 8 << 20)
    same(got, validate(path, allow=relaxed))


@pytest.mark.parametrize("piece", [1, 7, 100, 5000])
def test_piece_size_does_not_change_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, piece: int
) -> None:
    """Lines are split from a chunk a piece at a time (memory bounded by the piece, not the
    chunk); where the pieces end changes nothing, with the quick path or without it."""
    path = _mixed_file(tmp_path / "mixed.jsonl", repeat=3)
    monkeypatch.setattr(reader, "CHUNK", 6000)
    relaxed = frozenset({"bom", "duplicate-key", "reserved-token", "unknown-key"})
    expected = [validate(path, max_errors=1000), validate(path, allow=relaxed)]
    monkeypatch.setattr(validator, "PIECE", piece)
    same(validate(path, max_errors=1000), expected[0])
    same(validate(path, allow=relaxed), expected[1])
    same(validate(path, max_errors=1000, workers=2), expected[0])
    monkeypatch.setattr(validator, "stream_scan_available", lambda: False)
    same(validate(path, max_errors=1000), expected[0])


def test_pieces_end_with_a_newline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(validator, "PIECE", 4)
    chunk = b"ab\ncdefgh\n\n\nij\nklmnopq"
    pieces = list(validator._pieces(chunk, 100))
    assert b"".join(piece for _, piece in pieces) == chunk
    assert all(piece.endswith(b"\n") for _, piece in pieces[:-1])
    offsets = list(itertools.accumulate((len(piece) for _, piece in pieces), initial=100))
    assert [at for at, _ in pieces] == offsets[:-1]
    assert len(pieces) == 3
    assert list(validator._pieces(b"abc", 7)) == [(7, b"abc")]


@pytest.mark.slow
def test_file_larger_than_one_chunk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _mixed_file(tmp_path / "big.jsonl", repeat=1)
    unit = path.read_bytes()
    repeat = reader.CHUNK * 5 // (4 * len(unit)) + 2  # about 10 MB
    _mixed_file(path, repeat=repeat)
    assert path.stat().st_size > reader.CHUNK
    big = validate(path, max_errors=50)
    assert big.records > 10_000
    assert big.error_counts["duplicate-record"] > 1000
    assert big.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setattr(reader, "CHUNK", 1 << 16)
    same(validate(path, max_errors=50), big)


def test_line_longer_than_the_limit_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reader, "CHUNK", 256)
    monkeypatch.setattr(validator, "MAX_LINE_BYTES", 1000)
    path = tmp_path / "huge.jsonl"
    lines = [record("ok"), record("x" * 5000), record("fine"), "", record("end")]
    path.write_text("\n".join(lines) + "\n")
    report = validate(path)
    assert [(e.line, e.rule) for e in report.errors] == [(2, "too-long"), (4, "blank-line")]
    assert report.records == 4 and report.invalid_records == 1
    assert "longer than" in report.errors[0].message


@pytest.fixture
def bucket(s3_server: str) -> str:
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    name = "datasets-validator"
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if name not in existing:
        client.create_bucket(Bucket=name)
    return name


def _upload(bucket: str, key: str, path: Path) -> str:
    from tuneloop import storage

    storage.s3_client().put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
    return f"s3://{bucket}/{key}"


def test_s3_object_gives_the_same_report(
    tmp_path: Path, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _mixed_file(tmp_path / "mixed.jsonl")
    uri = _upload(bucket, "train/mixed.jsonl", path)
    local = validate(path)
    remote = validate(uri)
    assert remote.uri == uri
    same(remote, local, uri=False)
    # Many small reads from the stream, and a worker count (S3 is read in one pass).
    monkeypatch.setattr(reader, "CHUNK", 100)
    same(validate(uri, workers=4), local, uri=False)


def test_missing_s3_object_is_a_storage_error(bucket: str) -> None:
    with pytest.raises(StorageError) as raised:
        validate(f"s3://{bucket}/no/such.jsonl")
    assert "object not found" in str(raised.value.problems[0].message)


def test_missing_local_file_is_a_storage_error(tmp_path: Path) -> None:
    for workers in (1, 2):
        with pytest.raises(StorageError) as raised:
            validate(tmp_path / "missing.jsonl", workers=workers)
        assert raised.value.problems[0].message == "file not found"
    with pytest.raises(StorageError):
        validate(f"file://{tmp_path}/missing.jsonl")


def test_file_uri_reads_the_local_file() -> None:
    path = CORPUS / "sft/valid_text.jsonl"
    same(validate(f"file://{path}"), validate(path), uri=False)


# --- several processes -----------------------------------------------------------------------


def _spread_file(path: Path) -> Path:
    """Errors, warnings and duplicates in every part of the file, duplicates across parts."""
    lines: list[str] = []
    for i in range(600):
        if i % 97 == 5:
            lines.append(record("Question 3"))  # duplicates line 4, whatever part they are in
        elif i % 89 == 7:
            lines.append("")
        elif i % 71 == 9:
            lines.append(
                record(f"Question {i}").replace('"role": "user"', '"role": "user", "role": "user"')
            )
        elif i % 53 == 11:
            lines.append(record(f"User: question {i}"))
        elif i % 43 == 13:
            lines.append('{"messages": [')
        elif i % 31 == 2:
            lines.append(record(f"Question {i}", extra=i))
        else:
            lines.append(record(f"Question {i}"))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"max_errors": 5},
        {"max_errors": 0},
        {"allow": frozenset({"reserved-token", "duplicate-record", "blank-line"})},
        {"allow": frozenset({"unknown-key", "duplicate-key"}), "max_errors": 7},
    ],
)
@pytest.mark.parametrize("workers", [2, 3])
def test_workers_give_the_same_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, options: dict, workers: int
) -> None:
    monkeypatch.setattr(reader, "CHUNK", 4096)
    path = _spread_file(tmp_path / "spread.jsonl")
    ranges = reader.line_aligned_ranges(path, workers)
    assert len(ranges) == workers
    data = path.read_bytes()
    assert ranges[0][0] == 0 and ranges[-1][1] == len(data)
    for (_, end), (start, _) in itertools.pairwise(ranges):
        assert end == start and data[start - 1 : start] == b"\n"

    one = validate(path, **options)
    many = validate(path, workers=workers, **options)
    same(many, one)
    assert one.duplicates >= 5 and not one.ok
    counts = {**one.error_counts, **one.warning_counts}
    assert {"duplicate-record", "blank-line", "reserved-token", "invalid-json"} <= set(counts)


# Forcing fork while the test process runs other threads (the S3 server) is the point here.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
@pytest.mark.parametrize("threads", [1, 2])
def test_workers_fork_or_spawn_give_the_same_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threads: int
) -> None:
    """A process with other threads (an Airflow task) spawns its workers; a single-threaded one
    forks them. Record digests are the same in every process, so duplicates across ranges are
    found either way."""
    import threading

    monkeypatch.setattr(threading, "active_count", lambda: threads)
    monkeypatch.setattr(reader, "CHUNK", 4096)
    path = _spread_file(tmp_path / "spread.jsonl")
    same(validate(path, workers=2), validate(path))


def test_workers_with_a_bom_media_and_no_final_newline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reader, "CHUNK", 2048)
    path = _mixed_file(tmp_path / "mixed.jsonl", repeat=3)
    assert len(reader.line_aligned_ranges(path, 4)) == 4
    for options in ({}, {"allow": frozenset({"bom", "mixed-modality"})}, {"max_errors": 3}):
        same(validate(path, workers=4, **options), validate(path, **options))
    images = CORPUS / "sft/valid_images.jsonl"
    videos = CORPUS / "sft/valid_video.jsonl"
    path.write_bytes(images.read_bytes() * 20 + videos.read_bytes() * 20)
    one = validate(path, max_errors=1000)
    assert one.error_counts["mixed-modality"] == 1
    same(validate(path, workers=3, max_errors=1000), one)


def test_read_ahead_shortens_the_switch_interval_only_while_it_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reading thread gets the GIL back within 1 ms while chunks are read ahead; the
    process's own switch interval is back afterwards, also when reading stops early, when two
    reads overlap, and when reading fails."""
    import sys

    monkeypatch.setattr(reader, "CHUNK", 4096)
    path = _spread_file(tmp_path / "spread.jsonl")
    original = sys.getswitchinterval()
    seen: list[float] = []

    def note(chunk: bytes) -> int:
        seen.append(sys.getswitchinterval())
        return len(chunk)

    assert sum(size for _, size in reader.read_ahead(reader.read_chunks(str(path)), note)) > 0
    assert max(seen) <= 0.001 and sys.getswitchinterval() == original

    first = reader.read_ahead(reader.read_chunks(str(path)), len)
    second = reader.read_ahead(reader.read_chunks(str(path)), len)
    next(first), next(second)
    first.close()
    assert sys.getswitchinterval() <= 0.001  # the second read is still going
    second.close()
    assert sys.getswitchinterval() == original

    with pytest.raises(StorageError):
        list(reader.read_ahead(reader.read_chunks(str(tmp_path / "missing.jsonl")), len))
    assert sys.getswitchinterval() == original
    same(validate(path), validate(path, workers=2))
    assert sys.getswitchinterval() == original


def test_small_file_is_one_range(tmp_path: Path) -> None:
    path = CORPUS / "sft/valid_text.jsonl"
    assert reader.line_aligned_ranges(path, 4) == [(0, path.stat().st_size)]
    same(validate(path, workers=4), validate(path))


@pytest.mark.parametrize("engine", ["hyperscan", "re"])
def test_reserved_scanner_finds_every_line_with_a_hit(
    monkeypatch: pytest.MonkeyPatch, engine: str
) -> None:
    import sys

    from tuneloop.data.scan import RESERVED_TOKENS, ReservedScanner

    if engine == "re":
        monkeypatch.setitem(sys.modules, "hyperscan", None)
    scanner = ReservedScanner()
    if scanner.engine != engine:
        pytest.skip(f"{engine} is not installed")
    lines = []
    for i in range(20_000):  # most lines hold a token: the scan must stay linear
        if i % 5 == 0:
            lines.append(f'{{"text": "line {i} plain"}}')
        elif i % 7 == 0:
            lines.append('{"text": "\\u003cb"}')
        else:
            lines.append(f'{{"text": "line {i} {RESERVED_TOKENS[i % len(RESERVED_TOKENS)]}"}}')
    buffer = ("\n".join(lines) + "\n").encode()
    expected = {10 + i for i, line in enumerate(lines) if "plain" not in line}
    assert scanner.lines_with_hits(buffer, len(buffer), 10) == expected
    # Only the bytes before `end` count.
    end = buffer.index(b"\n") + 1
    assert scanner.lines_with_hits(buffer, end, 1) == set()
    assert scanner.lines_with_hits(buffer, buffer.index(b"\n", end) + 1, 1) == {2}


# --- lines that once escaped as exceptions or got the wrong rule -----------------------------

_TOOLS = {
    "tools": [
        {
            "toolSpec": {
                "name": "lookup",
                "description": "Look something up",
                "inputSchema": {"json": {"type": "object"}},
            }
        }
    ]
}


def _tool_record(tool_input: str) -> str:
    value = {
        "schemaVersion": VERSION,
        "toolConfig": _TOOLS,
        "messages": [
            {"role": "user", "content": [{"text": "Look it up."}]},
            {
                "role": "assistant",
                "content": [{"toolUse": {"toolUseId": "t1", "name": "lookup", "input": "@"}}],
            },
            {
                "role": "user",
                "content": [{"toolResult": {"toolUseId": "t1", "content": [{"text": "found"}]}}],
            },
            {"role": "assistant", "content": [{"text": "Found it."}]},
        ],
    }
    return json.dumps(value).replace('"@"', tool_input)


@pytest.mark.parametrize(
    ("line", "rules"),
    [
        pytest.param(
            record("A", metadata=1).replace("1}", "NaN}"),
            {"unknown-key", "nan"},
            id="unknown-key-and-nan",
        ),
        pytest.param(
            record("A", metadata=1)[:-2],
            {"unknown-key", "invalid-json"},
            id="unknown-key-and-truncated",
        ),
        pytest.param(
            '{"metadata": 1, ' + record("A\\ud800")[1:].replace("\\\\", "\\"),
            {"unknown-key", "invalid-json"},
            id="unknown-key-and-surrogate",
        ),
        pytest.param(
            record("A\\ud800 B").replace("\\\\", "\\"), {"invalid-json"}, id="lone-surrogate"
        ),
        pytest.param(
            record("A\\udc00").replace("\\\\", "\\"), {"invalid-json"}, id="lone-low-surrogate"
        ),
        pytest.param(_tool_record("[" * 600 + "]" * 600), set(), id="nested-600"),
        pytest.param(_tool_record("[" * 5000 + "]" * 5000), {"invalid-json"}, id="nested-5000"),
        pytest.param("[" * 5000 + "]" * 5000, {"not-object"}, id="nested-array-record"),
        pytest.param(_tool_record('{"n": 1e999}'), {"schema"}, id="number-out-of-range"),
        pytest.param(_tool_record('{"n": Infinity}'), {"nan"}, id="infinity"),
        pytest.param("\r", {"blank-line"}, id="crlf-blank-line"),
        pytest.param("\x00", {"invalid-json"}, id="nul"),
    ],
)
def test_odd_lines(tmp_path: Path, line: str, rules: set[str]) -> None:
    path = tmp_path / "odd.jsonl"
    path.write_text(record("First") + "\n" + line + "\n" + record("Last") + "\n")
    report = validate(path)
    assert set(report.error_counts) == rules
    assert {issue.line for issue in report.errors} <= {2}
    assert report.records == (2 if rules == {"blank-line"} else 3)


def test_utf16_line_is_not_json(tmp_path: Path) -> None:
    path = tmp_path / "utf16.jsonl"
    path.write_bytes(
        record("First").encode() + b"\n" + record("Second").encode("utf-16-le") + b"\n"
    )
    report = validate(path)
    assert report.error_counts == {"invalid-json": 1}
    assert [(e.line, e.rule) for e in report.errors] == [(2, "invalid-json")]


@pytest.mark.parametrize("limit", [0, 10_000])
def test_duplicates_found_the_same_with_a_set_or_by_sorting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: int
) -> None:
    """Up to SET_DIGESTS records a set tells whether any repeats; beyond, sorting does."""
    monkeypatch.setattr(validator, "SET_DIGESTS", limit)
    unique = tmp_path / "unique.jsonl"
    unique.write_text("".join(record(f"Question {i}") + "\n" for i in range(50)))
    report = validate(unique)
    assert report.duplicates == 0 and report.ok
    repeated = tmp_path / "repeated.jsonl"
    repeated.write_text("".join(record(f"Question {i % 20}") + "\n" for i in range(50)))
    report = validate(repeated, max_errors=1000)
    assert report.duplicates == 30
    assert [e.message for e in report.errors[:2]] == ["same as line 1", "same as line 2"]
    assert [e.line for e in report.errors[:2]] == [21, 22]
