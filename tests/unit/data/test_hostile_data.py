"""Hostile datasets: memory that does not grow with invalid lines, files without records, paths
that are not regular files, a line past the cap read by workers, media URIs the service refuses.

Memory is measured in a child process (its own peak, VmHWM, less what it held before the
validation), under an address-space limit so that a regression fails instead of exhausting
the machine."""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tuneloop.data import reader, validator
from tuneloop.data.converse import SERVICE_URI_MESSAGE
from tuneloop.data.registry import get_format
from tuneloop.data.report import DatasetReport
from tuneloop.data.validator import Options, validate_dataset
from tuneloop.errors import StorageError
from tuneloop.recipes.catalog import MODELS

LITE = MODELS["amazon.nova-lite-v1:0:300k"]
SFT = get_format("sft")
VERSION = "bedrock-conversation-2024"
ADDRESS_SPACE = 2 << 30
LINUX = Path("/proc/self/status").exists()

# Validates argv[1] with argv[2] workers and argv[3]-byte chunks, then prints the report and
# how much its peak resident memory grew while validating (and the workers' peak).
MEASURE = r"""
import json, re, resource, sys
from tuneloop.data import reader
from tuneloop.data.registry import get_format
from tuneloop.data.validator import Options, validate_dataset
from tuneloop.recipes.catalog import MODELS

def kilobytes(key):
    with open("/proc/self/status") as status:
        return int(re.search(rf"^{key}:\s+(\d+) kB", status.read(), re.M).group(1))

path, workers, chunk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
reader.CHUNK = chunk
before = kilobytes("VmRSS")
report = validate_dataset(
    path,
    get_format("sft"),
    MODELS["amazon.nova-lite-v1:0:300k"],
    options=Options(max_errors=100),
    workers=workers,
)
print(json.dumps({
    "growth_mb": (kilobytes("VmHWM") - before) / 1024,
    "workers_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    "report": report.to_json(),
}))
"""


def _limit_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def _measure(path: Path, *, workers: int = 1, chunk: int = 8 << 20) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path), str(workers), str(chunk)],
        capture_output=True,
        text=True,
        timeout=300,  # generous: about 3 s on two busy cores
        preexec_fn=_limit_address_space,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout)
    result["report"] = DatasetReport.from_json(result["report"])
    return result


def record(question: str, *, answer: bool = True, **extra: Any) -> str:
    messages = [{"role": "user", "content": [{"text": question}]}]
    if answer:
        messages.append({"role": "assistant", "content": [{"text": "Sure."}]})
    return json.dumps({"schemaVersion": VERSION, **extra, "messages": messages})


def _invalid_lines(path: Path, count: int) -> dict[str, int]:
    """``count`` distinct invalid lines of three kinds; the errors expected of each rule."""
    expected = {"invalid-json": 0, "role-order": 0, "unknown-key": 0}
    with path.open("w") as out:
        for index in range(count):
            kind = index % 10
            if kind == 0:
                out.write(f"not json {index}\n")
                expected["invalid-json"] += 1
            elif kind <= 5:
                out.write(record(f"question {index}", answer=False) + "\n")
                expected["role-order"] += 1
            else:
                out.write(record(f"question {index}", note=index) + "\n")
                expected["unknown-key"] += 1
    return expected


# --- memory and counts --------------------------------------------------------------------------


@pytest.mark.skipif(not LINUX, reason="reads the peak resident memory from /proc")
def test_memory_does_not_grow_with_invalid_lines(tmp_path: Path) -> None:
    """Errors are counted per rule and only the first max_errors are kept; an invalid line is
    not indexed for duplicates. Before, each invalid line kept about 240 bytes: the 150,000
    more lines of the larger file cost 35 MB more (the peaks 18 and 53 MB; now 16 and 16)."""
    _invalid_lines(tmp_path / "small.jsonl", 50_000)
    expected = _invalid_lines(tmp_path / "large.jsonl", 200_000)
    # Chunks of 1 MB: the read-ahead buffers are full on both files, so the difference between
    # the two peaks is what grows with the lines.
    small = _measure(tmp_path / "small.jsonl", chunk=1 << 20)
    large = _measure(tmp_path / "large.jsonl", chunk=1 << 20)
    assert large["growth_mb"] - small["growth_mb"] < 12, (small, large)
    assert large["growth_mb"] < 100, large

    report: DatasetReport = large["report"]
    assert report.error_counts == expected
    assert report.records == report.invalid_records == 200_000 and report.valid_records == 0
    assert len(report.errors) == 100
    assert [issue.line for issue in report.errors] == list(range(1, 101))
    assert report.duplicates == 0


@pytest.mark.skipif(not LINUX, reason="reads the peak resident memory from /proc")
def test_workers_count_invalid_lines_exactly(tmp_path: Path) -> None:
    path = tmp_path / "invalid.jsonl"
    expected = _invalid_lines(path, 100_000)
    one = _measure(path, chunk=1 << 20)["report"]
    two = _measure(path, workers=2, chunk=1 << 20)
    assert two["report"].to_dict(exclude={"seconds"}) == one.to_dict(exclude={"seconds"})
    assert one.error_counts == expected and one.invalid_records == 100_000
    assert two["workers_mb"] < 200 and two["growth_mb"] < 100, two


def test_the_text_report_says_how_many_more_of_each_rule(tmp_path: Path) -> None:
    path = tmp_path / "invalid.jsonl"
    expected = _invalid_lines(path, 1000)
    report = validate_dataset(str(path), SFT, LITE, options=Options(max_errors=10))
    text = report.to_text()
    assert "first 10 of 1000 errors:" in text
    shown = {rule: sum(issue.rule == rule for issue in report.errors) for rule in expected}
    for rule, count in expected.items():
        assert f"    and {count - shown[rule]:,} more of rule {rule} (counted, not listed)" in text


def test_max_errors_is_capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """However many errors are asked for, at most MAX_LISTED are kept (the rest counted)."""
    monkeypatch.setattr(validator, "MAX_LISTED", 7)
    path = tmp_path / "invalid.jsonl"
    _invalid_lines(path, 50)
    for workers in (1, 2):
        report = validate_dataset(
            str(path), SFT, LITE, options=Options(max_errors=10**9), workers=workers
        )
        assert len(report.errors) == 7 and sum(report.error_counts.values()) == 50


def test_a_message_quoting_a_huge_value_is_clipped(tmp_path: Path) -> None:
    path = tmp_path / "key.jsonl"
    key = "k" * 100_000
    path.write_text(record("hello", **{key: 1}) + "\n")
    report = validate_dataset(str(path), SFT, LITE)
    (issue,) = report.errors
    assert issue.rule == "unknown-key"
    assert len(issue.path) <= validator.CLIP and len(issue.message) <= validator.CLIP
    assert "more characters)" in issue.path


def test_only_records_without_errors_are_checked_for_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "repeats.jsonl"
    bad = record("no answer", answer=False)
    good = record("with an answer")
    path.write_text("\n".join([bad, good, bad, good, "oops", "oops"]) + "\n")
    report = validate_dataset(str(path), SFT, LITE)
    assert report.error_counts == {"role-order": 2, "duplicate-record": 1, "invalid-json": 2}
    assert [i.line for i in report.errors if i.rule == "duplicate-record"] == [4]
    assert report.invalid_records == 5 and report.duplicates == 1


# --- files that are not regular files -----------------------------------------------------------

CLI = "import sys; from tuneloop.cli.main import main; sys.exit(main())"


def _special(tmp_path: Path, kind: str) -> str:
    if kind == "fifo":
        os.mkfifo(tmp_path / "train.jsonl")
    elif kind == "directory":
        (tmp_path / "train.jsonl").mkdir()
    elif kind == "link-to-dev-zero":
        (tmp_path / "train.jsonl").symlink_to("/dev/zero")
    elif kind == "socket":
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(tmp_path / "train.jsonl"))
        server.close()  # the socket file stays
    else:
        return f"/dev/{kind.removeprefix('dev-')}"
    return str(tmp_path / "train.jsonl")


SPECIAL = {
    "fifo": "a FIFO",
    "dev-zero": "a character device",
    "dev-urandom": "a character device",
    "link-to-dev-zero": "a character device",
    "directory": "a directory",
    "socket": "a socket",
}


@pytest.mark.parametrize(
    ("kind", "workers"),
    [(kind, "1") for kind in SPECIAL] + [("fifo", "2"), ("dev-zero", "2"), ("directory", "0")],
)
def test_only_regular_files_are_read(tmp_path: Path, kind: str, workers: str) -> None:
    """Refused at once with one line and exit 2: a FIFO would block the open, /dev/zero and
    /dev/urandom never end. (A child process with a generous time limit: the old reader
    hung here.)"""
    path = _special(tmp_path, kind)
    argv = ["data", "validate", path, "--format", "sft", "--model", "lite", "--workers", workers]
    done = subprocess.run(
        [sys.executable, "-c", CLI, *argv],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_limit_address_space,
        check=False,
    )
    assert (done.returncode, done.stdout) == (2, ""), done.stderr[-3000:]
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"{path}: is {SPECIAL[kind]}")
    assert "not a regular file" in line and "(allowed: a regular file" in line
    assert "; fix: " in line


@pytest.mark.parametrize("kind", ["directory", "socket", "link-to-dev-zero", "fifo"])
def test_the_reader_refuses_without_opening(tmp_path: Path, kind: str) -> None:
    path = _special(tmp_path, kind)
    with pytest.raises(StorageError) as raised:
        reader.check_regular_file(path)
    (problem,) = raised.value.problems
    assert problem.source == path and SPECIAL[kind] in problem.message
    with pytest.raises(StorageError):
        reader.line_aligned_ranges(Path(path), 4)


def test_an_empty_file_exits_1_with_one_error(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"")
    argv = ["data", "validate", str(path), "--format", "sft", "--model", "lite"]
    done = subprocess.run(
        [sys.executable, "-c", CLI, *argv], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1 and done.stderr == ""
    assert done.stdout.startswith(f"{path}: INVALID")
    assert f"{path}: $: [sample-count] no records: the file is empty" in done.stdout


# --- a line past the cap, read by workers -------------------------------------------------------


def test_ranges_are_found_without_reading_a_line_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reader, "CHUNK", 64)
    monkeypatch.setattr(reader, "SEEK_BLOCK", 5)
    lines = [b"x" * (n * 37 % 300) for n in range(1, 60)]
    data = b"\n".join(lines) + b"\n"
    path = tmp_path / "lines.jsonl"
    path.write_bytes(data)
    for parts in (2, 3, 7):
        ranges = reader.line_aligned_ranges(path, parts)
        assert ranges[0][0] == 0 and ranges[-1][1] == len(data)
        for start, end in ranges:
            assert data[end - 1 : end] == b"\n" and start < end
        # Each range starts just after the first newline at or after the start of its share.
        naive = [0]
        for index in range(1, parts):
            at = data.index(b"\n", max(naive[-1], len(data) * index // parts)) + 1
            if at >= len(data):
                break
            if at > naive[-1]:
                naive.append(at)
        assert [start for start, _ in ranges] == naive


@pytest.mark.slow
@pytest.mark.skipif(not LINUX, reason="reads the peak resident memory from /proc")
def test_the_line_cap_holds_with_workers(tmp_path: Path) -> None:
    """A 160 MB line between short ones, read by two workers: the range boundaries are found
    without holding the line (readline() held it whole), and the worker reading it skips it."""
    path = tmp_path / "long.jsonl"
    short = "".join(record(f"question {n}") + "\n" for n in range(2000))
    with path.open("w") as out:
        out.write(short)
        out.write('{"text": "')
        block = "a" * (1 << 20)
        for _ in range(160):
            out.write(block)
        out.write('"}\n')
        out.write(short.replace("question", "query"))
    measured = _measure(path, workers=2)
    report: DatasetReport = measured["report"]
    assert report.error_counts == {"too-long": 1} and report.records == 4001
    assert report.errors[0].line == 2001 and "longer than 64 MB" in report.errors[0].message
    assert measured["growth_mb"] < 100, measured
    assert measured["workers_mb"] < 150, measured


# --- media URIs ----------------------------------------------------------------------------------


def _image_record(uri: str) -> str:
    image = {"format": "png", "source": {"s3Location": {"uri": uri}}}
    messages = [
        {"role": "user", "content": [{"text": "What is this?"}, {"image": image}]},
        {"role": "assistant", "content": [{"text": "A parcel."}]},
    ]
    return json.dumps({"schemaVersion": VERSION, "messages": messages})


URI_PATH = "$.messages[0].content[1].image.source.s3Location.uri"


@pytest.mark.parametrize(
    ("uri", "words"),
    [
        ("s3://bucket/images/img 00001.png", "' '"),
        ("s3://bucket/images/img(00001).png", "'(', ')'"),
        ("s3://bucket/images/a+b=c.png", "'+', '='"),
        ("s3://bucket/images/a.png\n", "'\\n'"),
        ("s3://bucket/images/%20.png", "'%'"),
        ("s3:///images/a.png", "s3://BUCKET/KEY"),
        ("s3://bucket", "s3://BUCKET/KEY"),
        ("s3://bucket/", "s3://BUCKET/KEY"),
        ("https://example.com/a.png", "s3://BUCKET/KEY"),
    ],
)
def test_media_uris_follow_the_service_character_rule(tmp_path: Path, uri: str, words: str) -> None:
    path = tmp_path / "images.jsonl"
    path.write_text(_image_record(uri) + "\n")
    report = validate_dataset(str(path), SFT, LITE)
    assert report.error_counts == {"media": 1}, report.errors
    (issue,) = report.errors
    assert (issue.line, issue.path) == (1, URI_PATH)
    assert words in issue.message
    if "BUCKET" not in words:
        assert "only letters, digits, '_', '-', '/' and '.'" in issue.message
        assert SERVICE_URI_MESSAGE in issue.message and "rename the object" in issue.message
    line = issue.format(str(path))
    assert "\n" not in line and line.startswith(f"{path}:1: {URI_PATH}: [media]")


@pytest.mark.parametrize(
    "uri",
    ["s3://bucket/images/img_00001.png", "s3://my-bucket.eu/a/b-c/d_e.f.png", "s3://b/été.png"],
)
def test_media_uris_the_service_accepts(tmp_path: Path, uri: str) -> None:
    path = tmp_path / "images.jsonl"
    path.write_text(_image_record(uri) + "\n")
    assert validate_dataset(str(path), SFT, LITE).ok
