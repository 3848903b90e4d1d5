"""The quick path for text-only SFT records, and the streaming scan it relies on.

The quick path may only ever skip work: every report it produces must equal the one the full
path produces on its own. The tests below check that directly (the same files validated with the
quick path switched off), and check the two claims it rests on: the quick check accepts only
records the full check finds nothing wrong with (with the same facts), and the scan flags every
accepted line that repeats a key.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tuneloop.data import reader, validator
from tuneloop.data.converse_quick import SUSPICIOUS
from tuneloop.data.formats import NEEDS_FULL_CHECK, FormatContext, pack_facts
from tuneloop.data.registry import get_format
from tuneloop.data.scan import StreamScan
from tuneloop.data.validator import Options, validate_dataset
from tuneloop.recipes.catalog import MODELS

pytest.importorskip("hyperscan")  # the quick path needs the streaming scan

CORPUS = Path(__file__).resolve().parents[2] / "data" / "corpus"
LITE = MODELS["amazon.nova-lite-v1:0:300k"]
TINY = MODELS["local.tiny-chat-v1"]
SFT = get_format("sft")
CTX = FormatContext(spec=LITE, platform="sagemaker")
QUICK = SFT.quick_path(CTX)  # type: ignore[attr-defined]
VERSION = "bedrock-conversation-2024"


def record(*turns: str, system: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    value: dict[str, Any] = {"schemaVersion": VERSION}
    if system is not None:
        value["system"] = [{"text": text} for text in system]
    value["messages"] = [
        {"role": "user" if index % 2 == 0 else "assistant", "content": [{"text": text}]}
        for index, text in enumerate(turns)
    ]
    value.update(extra)
    return value


def line(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


def full_facts(raw: bytes) -> tuple[list[tuple[str, str, str]], int, int]:
    """What the full path reports for one line, and its (chars, kinds)."""
    reported: list[tuple[str, str, str]] = []
    record = SFT.decoder(forbid_unknown=True).decode(raw)
    _, chars, kinds = SFT.check(record, CTX, lambda *issue: reported.append(issue))
    return reported, chars, kinds


def validate(path: Path, *, workers: int = 1, spec=LITE, **options: Any):
    options.setdefault("max_errors", 10_000)
    return validate_dataset(str(path), SFT, spec, options=Options(**options), workers=workers)


def same_without_quick_path(
    path: Path, monkeypatch: pytest.MonkeyPatch, *, workers: int = 1, **options: Any
) -> Any:
    """Validate with the quick path and without it; the reports must be equal."""
    quick = validate(path, workers=workers, **options)
    with monkeypatch.context() as patch:
        patch.setattr(validator, "stream_scan_available", lambda: False)
        full = validate(path, workers=workers, **options)
    assert quick.to_dict(exclude={"seconds"}) == full.to_dict(exclude={"seconds"})
    return quick


# --- the quick check -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        record("Hi", "Hello"),
        record("Hi", "Hello", "More?", "Sure:\nyes", system=["Be brief."]),
        record("é ü 漢字 😀", "ok", system=[]),
        record("a", "b", system=["one", "two"]),
        {
            "schemaVersion": VERSION,
            "messages": [
                {"role": "user", "content": [{"text": "two"}, {"text": "blocks"}]},
                {"role": "assistant", "content": [{"text": "fine"}]},
            ],
        },
    ],
)
def test_accepted_records_have_the_full_checks_facts(value: dict[str, Any]) -> None:
    raw = line(value)
    reported, chars, kinds = full_facts(raw)
    assert reported == []
    assert QUICK.check(raw) == pack_facts(chars, kinds)
    assert QUICK.check(json.dumps(value, separators=(",", ":")).encode()) == QUICK.check(raw)


@pytest.mark.parametrize(
    "raw",
    [
        line(record("Hi")),  # ends with the user
        line(record()),  # no messages
        line(record("Hi", "   ")),  # blank text
        line(record("Hi", "")),
        line(record("Hi", "\u3000")),
        line(record("Hi", "ok", system=[" "])),
        line({"messages": record("Hi", "ok")["messages"]}),  # no schemaVersion
        line({**record("Hi", "ok"), "schemaVersion": "v1"}),
        line(record("Hi", "ok", metadata=1)),  # unknown key
        line(record("Hi", "ok", toolConfig={"tools": []})),
        line(
            {
                "schemaVersion": VERSION,
                "messages": [
                    {"role": "assistant", "content": [{"text": "first"}]},
                    {"role": "user", "content": [{"text": "second"}]},
                ],
            }
        ),
        line(
            {
                "schemaVersion": VERSION,
                "messages": [
                    {"role": "user", "content": []},
                    {"role": "assistant", "content": [{"text": "ok"}]},
                ],
            }
        ),
        line(
            {
                "schemaVersion": VERSION,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "image": {
                                    "format": "png",
                                    "source": {"s3Location": {"uri": "s3://b/k"}},
                                }
                            }
                        ],
                    },
                    {"role": "assistant", "content": [{"text": "ok"}]},
                ],
            }
        ),
        line(record("Hi", "ok"))[:-1],  # truncated
        line(record("Hi", "ok")).replace(b'"ok"', b"NaN"),
        line(record("Hi", "ok")).replace(b"Hi", b"H\xffi"),
        line(record("Hi\\ud800", "ok")).replace(b"\\\\", b"\\"),  # lone surrogate
        b"",
        b"   ",
        b"[]",
    ],
)
def test_anything_else_needs_the_full_check(raw: bytes) -> None:
    assert QUICK.check(raw) == NEEDS_FULL_CHECK


# --- repeated keys: the scan flags every line the quick check accepts ------------------------


def _dumps(value: Any, rng: random.Random, repeat: int) -> str:
    """JSON with random spacing; the ``repeat``-th object met writes one of its keys twice."""
    counter = [0]

    def space() -> str:
        return rng.choice(["", "", " ", "  ", "\t", "\r"])

    def dump(item: Any) -> str:
        if isinstance(item, dict):
            members = [
                f"{space()}{json.dumps(key)}{space()}:{space()}{dump(value)}{space()}"
                for key, value in item.items()
            ]
            if counter[0] == repeat and members:
                members.insert(rng.randrange(len(members) + 1), rng.choice(members))
            counter[0] += 1
            return "{" + ",".join(members) + "}"
        if isinstance(item, list):
            return "[" + ",".join(space() + dump(value) + space() for value in item) + "]"
        return json.dumps(item, ensure_ascii=rng.random() < 0.5)

    return dump(value)


TEXTS = st.text(alphabet='ab :,"\\]}{[\n\u00e9', min_size=1, max_size=8).filter(str.strip)
KEYS = (b'"text"', b'"role"', b'"content"', b'"messages"', b'"system"', b'"schemaVersion"')


@st.composite
def text_records(draw: st.DrawFn) -> dict[str, Any]:
    """Records the quick check accepts as they are (before any key is repeated)."""
    turns = [draw(TEXTS) for _ in range(2 * draw(st.integers(1, 2)))]
    value = record(*turns, system=draw(st.one_of(st.none(), st.lists(TEXTS, max_size=2))))
    for message in value["messages"]:
        message["content"] = [{"text": draw(TEXTS)} for _ in range(draw(st.integers(1, 2)))]
    return value


def _escape_a_key(raw: bytes, rng: random.Random) -> bytes:
    """One key written with an escape (it decodes to the same name)."""
    found = [(key, at) for key in KEYS for at in _positions(raw, key + b":")]
    found += [(key, at) for key in KEYS for at in _positions(raw, key + b" :")]
    if not found:
        return raw
    key, at = rng.choice(found)
    return raw[:at] + b'"\\u00' + b"%02x" % key[1] + key[2:] + raw[at + len(key) :]


def _positions(raw: bytes, needle: bytes) -> list[int]:
    positions, at = [], raw.find(needle)
    while at != -1:
        positions.append(at)
        at = raw.find(needle, at + 1)
    return positions


def _flagged(raw: bytes, patterns: tuple[bytes, ...] = SUSPICIOUS) -> bool:
    scan = StreamScan(patterns)
    return bool(scan.feed(raw) + scan.finish())


def _has_repeated_key(raw: bytes) -> bool:
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        if len({key for key, _ in items}) != len(items):
            raise KeyError("repeated")
        return dict(items)

    try:
        json.loads(raw, object_pairs_hook=pairs)
    except KeyError:
        return True
    return False


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=text_records(), seed=st.integers(0, 2**32), escaped=st.booleans())
def test_every_accepted_line_with_a_repeated_key_is_flagged(
    value: dict[str, Any], seed: int, escaped: bool
) -> None:
    rng = random.Random(seed)
    objects = _count_objects(value)
    # The record itself (the last object written) gets its share: its keys are the hardest.
    repeat = objects - 1 if rng.random() < 0.3 else rng.randrange(objects)
    raw = _dumps(value, rng, repeat).encode()
    if escaped:
        raw = _escape_a_key(raw, rng)
    assert _has_repeated_key(raw) or escaped
    if QUICK.check(raw) != NEEDS_FULL_CHECK and _has_repeated_key(raw):
        assert _flagged(raw), raw


def _count_objects(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + sum(_count_objects(item) for item in value.values())
    if isinstance(value, list):
        return sum(_count_objects(item) for item in value)
    return 0


def _message(role: str, text: str = "x") -> str:
    return f'{{"role": "{role}", "content": [{{"text": "{text}"}}]}}'


_SV = f'"schemaVersion": "{VERSION}"'
_PAIR = f'"messages": [{_message("user")}, {_message("assistant")}]'
# For each pattern, in order, a line the quick check accepts whose repeated key only it flags.
ONLY_ONE_PATTERN_FLAGS = [
    f'{{{_SV}, "system": [{{"text": "a", "text": "b"}}], {_PAIR}}}',
    f'{{{_SV}, "messages": [{{"role": "user", "content": [{{"text": "x"}}], "role": "user"}},'
    f" {_message('assistant')}]}}",
    f'{{{_SV}, "messages": [{{"role": "user", "content": [], "content": [{{"text": "x"}}]}},'
    f" {_message('assistant')}]}}",
    f"{{{_SV}, {_SV}, {_PAIR}}}",
    f'{{{_SV}, "system": [], "system": [{{"text": "a"}}], {_PAIR}}}',
    f"{{{_SV}, {_PAIR}, {_PAIR}}}",
    f'{{{_SV}, "messages": [], {_PAIR}}}',
    f'{{{_SV}, "system": [{{"text": "a", "te\\u0078t": "b"}}], {_PAIR}}}',
]


@pytest.mark.parametrize("index", range(len(SUSPICIOUS)))
def test_each_pattern_is_needed(index: int) -> None:
    raw = ONLY_ONE_PATTERN_FLAGS[index].encode()
    assert _has_repeated_key(raw)
    assert QUICK.check(raw) != NEEDS_FULL_CHECK
    others = tuple(pattern for i, pattern in enumerate(SUSPICIOUS) if i != index)
    assert not _flagged(raw, others)
    assert _flagged(raw)


@pytest.mark.parametrize(
    "raw",
    [
        line(record("Hi", "ok")),
        json.dumps(record("a:b", 'say "x": y', system=[']}], "messages": ['])).encode(),
        json.dumps(record("Hi", "ok"), separators=(",", ":")).encode(),
        json.dumps(record('\u00e9 "x": y', 'back\\slash "k": v')).encode(),  # ensure_ascii
        json.dumps(record("Hi", "ok"), indent=None, separators=(" , ", " : ")).encode(),
    ],
)
def test_ordinary_lines_are_not_flagged(raw: bytes) -> None:
    """Otherwise the quick path would hardly ever run."""
    assert QUICK.check(raw) != NEEDS_FULL_CHECK
    assert not _flagged(raw)


def test_keys_in_another_order_take_the_full_path() -> None:
    """Valid, and reported as valid, but the scan cannot vouch for their keys."""
    raw = line({"messages": record("Hi", "ok")["messages"], "schemaVersion": VERSION})
    assert QUICK.check(raw) != NEEDS_FULL_CHECK and _flagged(raw)


# --- the scan in the reading thread ----------------------------------------------------------


def test_scan_hits_count_from_the_first_byte_fed() -> None:
    """A hit is where a match ends, shifted left, with the low bit set for a reserved token;
    it comes with the chunk that ends its line, or from finish() for a last line."""
    data = b'{"text": "User: hi", "text": 1}\n{"a": 1}\n{"text": 2, "text": 3}'
    chunks = [data[i : i + 5] for i in range(0, len(data), 5)]
    token_end = data.index(b"User:") + len(b"User:")
    keys_end = [at + len(b', "text":') for at in _positions(data, b', "text":')]
    scan = StreamScan([rb',[ \t]*"text"[ \t]*:'])
    fed = [scan.feed(chunk) for chunk in chunks]
    first_newline = data.index(b"\n")
    assert fed[first_newline // 5] == [token_end << 1 | 1, keys_end[0] << 1]
    assert [hit for hits in fed for hit in hits] == fed[first_newline // 5]
    assert scan.finish() == [keys_end[1] << 1]


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 10, 64, 4096])
def test_scan_finds_the_same_whatever_the_chunk_size(size: int) -> None:
    data = b"\n".join(line(record(f"User: {i}", "ok")) for i in range(30))
    data = data.replace(b'"schemaVersion"', b'"schemaVersion": "x", "schemaVersion"', 3)
    scan = StreamScan(SUSPICIOUS)
    whole = scan.feed(data) + scan.finish()
    assert len(whole) == 33  # 30 reserved tokens, 3 repeated keys
    scan = StreamScan(SUSPICIOUS)
    hits = [hit for at in range(0, len(data), size) for hit in scan.feed(data[at : at + size])]
    assert hits + scan.finish() == whole


def test_scan_drops_a_line_the_validator_skips() -> None:
    scan = StreamScan(SUSPICIOUS, max_line=10)
    chunks = [b'{"x": "User: ', b"0123456789", b'"}\n{"t": "Bot: x"}\n']
    hits = [scan.feed(chunk) for chunk in chunks]
    bot_end = len(b"".join(chunks)) - len(b' x"}\n')
    assert hits == [[], [], [bot_end << 1 | 1]]


# --- whole files: the same report with and without the quick path ----------------------------


def _quick_file(path: Path, rng: random.Random, count: int = 400) -> Path:
    """Mostly quick-path records, with everything that must leave it sprinkled in."""
    lines: list[bytes] = []
    for index in range(count):
        value = record(
            f"Question {index}: why?",
            'Because "it works": trust me.\nOK',
            system=["Be brief."] if index % 3 else None,
        )
        kind = index % 23
        if kind == 1:
            lines.append(_dumps(value, rng, rng.randrange(_count_objects(value))).encode())
        elif kind == 2:
            lines.append(line(record(f"User: question {index}", "ok")))
        elif kind == 3:
            lines.append(line({"messages": value["messages"], "schemaVersion": VERSION}))
        elif kind == 4:
            lines.append(b"")
        elif kind == 5:
            lines.append(line(value)[:-3])
        elif kind == 6:
            lines.append(line(record("x" * 3000, "long")))
        elif kind == 7:
            lines.append(line(value).replace(b'"text"', b'"te\\u0078t"', 1))
        elif kind == 8:
            lines.append(lines[0])  # a duplicate record
        elif kind == 9:
            lines.append(line(record(f"Q {index}", "   ")))
        elif kind == 10:
            lines.append(line(record(f"Q {index}", "ok", metadata=index)))
        elif kind == 11:
            lines.append(line(value).replace(b"Question", b"\\u003cimage\\u003e", 1))
        else:
            lines.append(line(value))
    path.write_bytes(b"\xef\xbb\xbf" + b"\r\n".join(lines[:50]) + b"\n" + b"\n".join(lines[50:]))
    return path


@pytest.mark.parametrize("chunk", [8 << 20, 7, 333, 4096])
def test_quick_path_changes_no_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    path = _quick_file(tmp_path / "quick.jsonl", random.Random(chunk))
    monkeypatch.setattr(reader, "CHUNK", chunk)
    report = same_without_quick_path(path, monkeypatch, spec=TINY)
    counts = report.error_counts
    assert {"duplicate-key", "reserved-token", "invalid-json", "blank-line", "too-long"} <= set(
        counts
    )
    assert {"duplicate-record", "blank-text", "unknown-key", "bom"} <= set(counts)
    same_without_quick_path(path, monkeypatch, spec=TINY, allow=frozenset({"unknown-key"}))
    same_without_quick_path(path, monkeypatch, spec=TINY, max_errors=3)


def test_quick_path_with_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _quick_file(tmp_path / "quick.jsonl", random.Random(5), count=2000)
    monkeypatch.setattr(reader, "CHUNK", 4096)
    one = validate(path)
    for workers in (2, 3):
        many = same_without_quick_path(path, monkeypatch, workers=workers)
        assert many.to_dict(exclude={"seconds"}) == one.to_dict(exclude={"seconds"})


def test_matches_in_a_skipped_line_flag_nothing_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A line too long to hold is skipped; its scanner matches must not land on the next one."""
    monkeypatch.setattr(reader, "CHUNK", 256)
    monkeypatch.setattr(validator, "MAX_LINE_BYTES", 1000)
    long = line(record("User: " * 400, "ok"))
    path = tmp_path / "skip.jsonl"
    path.write_bytes(b"\n".join([line(record("a", "b")), long, line(record("c", "d"))]) + b"\n")
    report = same_without_quick_path(path, monkeypatch)
    assert [(e.line, e.rule) for e in report.errors] == [(2, "too-long")]


def test_corpus_files_give_the_same_report(monkeypatch: pytest.MonkeyPatch) -> None:
    for path in sorted((CORPUS / "sft").glob("*.jsonl")) + sorted((CORPUS / "file").glob("*")):
        same_without_quick_path(path, monkeypatch)
