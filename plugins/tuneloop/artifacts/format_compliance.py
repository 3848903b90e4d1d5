"""Format compliance: the share of an evaluation's answers that have the campaign's output format.

The answers are the evaluation job's inference output, ``inference_output.jsonl``: one
``{"prompt", "inference", "gold", "metadata"}`` object per sample, where ``inference`` is the
model's answer (a string; a list of strings is read as its first one, a null as an empty
answer). Nova's ``gen_qa`` evaluation writes it, and so does the local backend (``gen_qa`` and
``rft_eval``); benchmarks and judges write none, and asking for their compliance is an
InferenceOutputError. It lies beside the results file:

- HyperPod and the local backend: ``<job>/eval-result/inference_output.jsonl``;
- a SageMaker training job: inside ``<job>/output/output.tar.gz``
  (``<job>/eval_results/inference_output.jsonl``).

``read_inference_outputs`` takes what ``artifacts.evaluation.read_eval_metrics`` takes: the job
folder, its eval-result folder, a results file (the output beside it), the output file itself or
the tarball. Only regular files are read (a tarball's links and devices are skipped); the file is
streamed line by line, never held whole, and a line longer than ``MAX_LINE_BYTES`` is an error.

How an answer is judged (``compliance``), after stripping the whitespace around it:

- ``valid_json``: the answer parses as one JSON value (an object, an array, a string, a number,
  true, false or null; ``NaN`` and ``Infinity`` are not JSON). One fenced block around the
  whole answer, three backticks (optionally followed by ``json``, in any case) at its start and
  three at its end, is removed first: models often fence JSON so. Text outside the fence, or a
  second block, fails the check.
- ``regex``: ``re.fullmatch`` of the regular expression on the answer.

``format_compliance`` (``FORMAT_COMPLIANCE``) is the share of compliant answers, from 0 to 1; the
round computes it from the evaluation's output on every backend, and the gate may target it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import IO, Any, Protocol

from tuneloop import storage
from tuneloop.artifacts.evaluation import (
    EVAL_DIR,
    RESULTS_FILE,
    is_tarball,
    job_tarballs,
    newest_file,
)
from tuneloop.errors import Problem, StorageError, TuneloopError

FORMAT_COMPLIANCE = "format_compliance"
"""Share (0..1) of the evaluation's answers that have the campaign's output format."""

INFERENCE_OUTPUT = "inference_output.jsonl"
INFERENCE_OUTPUT_FILE = re.compile(r"^inference_output\.jsonl$")
MAX_LINE_BYTES = 16 * 1024 * 1024
"""Longest line of an inference output read; one sample's record is far shorter."""
CHUNK_BYTES = 1024 * 1024
FAILED_EXAMPLES = 3
"""Non-compliant answers kept, to show what went wrong."""
EXAMPLE_CHARS = 200
"""An example answer is cut to this many characters."""

_FENCE = re.compile(r"\A```(?:json)?(?P<body>.*)```\Z", re.S | re.I)
_NO_ANSWERS_FIX = (
    "format compliance needs an evaluation task that generates answers (gen_qa; rft_eval on "
    "the local backend): point at the output of such a job that finished"
)


class FormatSpec(Protocol):
    """The answer shape to check (``config.monitoring.OutputFormat`` is one)."""

    @property
    def valid_json(self) -> bool: ...

    @property
    def regex(self) -> str: ...


class InferenceOutputError(TuneloopError):
    """An evaluation's output holds no answers to check, or answers that cannot be read."""


@dataclass(frozen=True)
class ComplianceResult:
    """How many answers were checked and the share that had the format."""

    rate: float
    """Compliant answers / answers checked, from 0 to 1 (0 when none were checked)."""
    checked: int
    passed: int
    failed_examples: tuple[str, ...] = ()
    """The first non-compliant answers (at most FAILED_EXAMPLES, each cut to EXAMPLE_CHARS)."""

    def as_dict(self) -> dict[str, Any]:
        """The result as JSON-ready data (for a round record or a task's return value)."""
        return {
            "rate": self.rate,
            "checked": self.checked,
            "passed": self.passed,
            "failed_examples": list(self.failed_examples),
        }

    def describe(self) -> str:
        """One line: the rate, the counts and the first failure."""
        text = f"{FORMAT_COMPLIANCE} {self.rate:.4f} ({self.passed} of {self.checked} answers)"
        if self.failed_examples:
            text += f"; first failing answer: {self.failed_examples[0]!r}"
        return text


# -- judging answers -----------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def unfenced(answer: str) -> str:
    """The answer without surrounding whitespace and one fenced block around all of it."""
    text = answer.strip()
    fenced = _FENCE.match(text)
    return fenced.group("body").strip() if fenced else text


def is_valid_json(answer: str) -> bool:
    """Whether the (unfenced) answer parses as one strict JSON value."""
    text = unfenced(answer)
    if not text:
        return False
    try:
        json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return False
    return True


@cache
def _compiled(regex: str) -> re.Pattern[str]:
    return re.compile(regex)


def matches_regex(answer: str, regex: str) -> bool:
    """Whether the whole answer (surrounding whitespace stripped) matches ``regex``."""
    return _compiled(regex).fullmatch(answer.strip()) is not None


def _shorten(answer: str) -> str:
    return answer if len(answer) <= EXAMPLE_CHARS else answer[: EXAMPLE_CHARS - 1] + "…"


def compliance(answers: Iterable[str], fmt: FormatSpec) -> ComplianceResult:
    """The share of ``answers`` that have the format (consumed once, in constant memory)."""
    if fmt.valid_json == bool(fmt.regex):
        raise ValueError("a format is valid_json or a regex, exactly one of them")
    checked = passed = 0
    failed: list[str] = []
    for answer in answers:
        checked += 1
        ok = is_valid_json(answer) if fmt.valid_json else matches_regex(answer, fmt.regex)
        if ok:
            passed += 1
        elif len(failed) < FAILED_EXAMPLES:
            failed.append(_shorten(answer))
    return ComplianceResult(
        rate=passed / checked if checked else 0.0,
        checked=checked,
        passed=passed,
        failed_examples=tuple(failed),
    )


# -- reading inference output ---------------------------------------------------------------------


def _lines(stream: IO[bytes], source: str) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of a binary stream, read in chunks; a line over MAX_LINE_BYTES is an
    InferenceOutputError."""
    rest = b""
    number = 0
    while chunk := stream.read(CHUNK_BYTES):
        pieces = (rest + chunk).split(b"\n")
        rest = pieces.pop()
        for piece in pieces:
            number += 1
            yield number, piece
        if len(rest) > MAX_LINE_BYTES:
            break
    if len(rest) > MAX_LINE_BYTES:
        raise InferenceOutputError(
            [
                Problem(
                    "",
                    f"line {number + 1} is longer than {MAX_LINE_BYTES} bytes",
                    source,
                    fix="point at an evaluation job's inference_output.jsonl",
                )
            ]
        )
    if rest:
        yield number + 1, rest


def _records(stream: IO[bytes], source: str) -> Iterator[dict[str, Any]]:
    for number, line in _lines(stream, source):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as exc:
            raise InferenceOutputError(
                [Problem("", f"not valid JSON ({exc})", source, number)]
            ) from None
        if not isinstance(record, dict):
            raise InferenceOutputError(
                [
                    Problem(
                        "", f"the record is {type(record).__name__}, not an object", source, number
                    )
                ]
            )
        yield record


def _file_records(uri: str) -> Iterator[dict[str, Any]]:
    try:
        with storage.open_binary(uri) as stream:
            yield from _records(stream, uri)
    except FileNotFoundError:
        raise _no_output(f"{uri}: it does not exist") from None


def _tarball_records(uri: str) -> Iterator[dict[str, Any]]:
    """The records of the first regular ``inference_output.jsonl`` in a tarball, streamed.
    FileNotFoundError when the tarball does not exist."""
    # Imported here: tarfile costs each DAG parse a few milliseconds.
    import gzip
    import tarfile
    import zlib

    with storage.open_binary(uri) as stream:
        try:
            with tarfile.open(fileobj=stream, mode="r|*") as archive:
                for member in archive:
                    name = storage.tar_member_name(member.name)
                    if not member.isfile() or name.rsplit("/", 1)[-1] != INFERENCE_OUTPUT:
                        continue
                    handle = archive.extractfile(member)
                    if handle is not None:
                        yield from _records(handle, f"{uri}!{name}")
                    return
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise StorageError(
                [
                    Problem(
                        "",
                        f"{uri} is not a readable tar.gz archive ({exc or type(exc).__name__})",
                        fix="point at the output.tar.gz a finished job wrote, copied whole",
                    )
                ]
            ) from None
    raise _no_output(f"{uri} (an evaluation job packs it as <job>/eval_results/{INFERENCE_OUTPUT})")


def _no_output(where: str) -> InferenceOutputError:
    return InferenceOutputError(
        [Problem("", f"no {INFERENCE_OUTPUT} in {where}", fix=_NO_ANSWERS_FIX)]
    )


def find_inference_output(result_uri: str) -> str | None:
    """The ``inference_output.jsonl`` of an evaluation job's folder layout (the file itself, the
    one beside a results file, or the newest under the eval-result folder); None when the
    layout has none (a training job's tarball may still hold it)."""
    base = result_uri.rstrip("/")
    name = base.rsplit("/", 1)[-1]
    if name == INFERENCE_OUTPUT:
        return base
    if RESULTS_FILE.match(name):
        folder = base.rsplit("/", 1)[0] if "/" in base else "."
        return storage.join(folder, INFERENCE_OUTPUT)
    folder = base if name == EVAL_DIR else storage.join(base, EVAL_DIR)
    return newest_file(folder, INFERENCE_OUTPUT, INFERENCE_OUTPUT_FILE)


def read_inference_outputs(result_uri: str) -> Iterator[dict[str, Any]]:
    """The records of an evaluation job's ``inference_output.jsonl``, streamed in file order.

    ``result_uri`` (a local path, file:// or s3:// URI) is the job folder, its eval-result
    folder, a results file, the output file, or an output.tar.gz; a job folder without the file
    is read from the ``output/output.tar.gz`` a SageMaker training job leaves there. An output
    that cannot be found or read is an InferenceOutputError (or a StorageError for a broken
    archive or an S3 failure).
    """
    base = result_uri.rstrip("/")
    if is_tarball(base):
        try:
            yield from _tarball_records(base)
        except FileNotFoundError:
            raise _no_output(f"{base}: the archive does not exist") from None
        return
    found = find_inference_output(base)
    if found is not None:
        yield from _file_records(found)
        return
    name = base.rsplit("/", 1)[-1]
    if name == EVAL_DIR:
        raise _no_output(base)
    tarballs = job_tarballs(base)
    for tarball in tarballs:
        try:
            yield from _tarball_records(tarball)
        except FileNotFoundError:
            continue
        return
    raise _no_output(f"{storage.join(base, EVAL_DIR)}, nor in {' or '.join(tarballs)}")


def answer_of(record: dict[str, Any], where: str = "") -> str:
    """A record's answer: ``inference`` (a list's first string; null is an empty answer).
    ``where`` names the record in errors."""
    if "inference" not in record:
        raise InferenceOutputError(
            [
                Problem(
                    "inference",
                    "the record has no inference field",
                    where,
                    fix="point at an evaluation job's inference output",
                )
            ]
        )
    value = record["inference"]
    if isinstance(value, list):
        value = value[0] if value else ""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InferenceOutputError(
            [
                Problem(
                    "inference",
                    f"must be a string (or a list of strings), not {type(value).__name__}",
                    where,
                )
            ]
        )
    return value


def format_compliance_of(result_uri: str, fmt: FormatSpec) -> ComplianceResult:
    """The format compliance of an evaluation job's answers; InferenceOutputError when the job
    wrote no inference output or it holds no answer."""
    answers = (
        answer_of(record, f"{result_uri} (answer {index})")
        for index, record in enumerate(read_inference_outputs(result_uri), 1)
    )
    result = compliance(answers, fmt)
    if result.checked == 0:
        raise InferenceOutputError(
            [Problem("", f"the inference output of {result_uri} holds no answers")]
        )
    return result
