"""Every hostile input of issue 13 (cases.yaml), read by the real `tuneloop` command: one clean
line and exit 2 (or the report and exit 1 for an invalid dataset), within the time and memory
limits, with no traceback and nothing of a secret or of a file that is no recipe in the output."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from adversarial.corpus import FILES, Case, build_case, error_lines, forbidden_texts, load_cases
from adversarial.corpus import run_case as run_command

CASES = load_cases()
# Python talking instead of tuneloop: a traceback, or an object shown by its repr.
NOT_FOR_USERS = re.compile(r"Traceback|<bound method|<function |<built-in | object at 0x")


@pytest.mark.parametrize(
    "case",
    [pytest.param(case, marks=[pytest.mark.slow] if case.slow else []) for case in CASES],
    ids=[case.id for case in CASES],
)
def test_hostile_input_gets_one_clean_answer(case: Case, tmp_path: Path) -> None:
    case_dir = tmp_path / "case"
    build_case(case, case_dir)
    outcome = run_command(case, case_dir)
    first_lines = "\n".join(outcome.output.splitlines()[:5])
    assert outcome.code is not None, f"no answer within {case.timeout:.0f} s:\n{first_lines}"
    python = NOT_FOR_USERS.search(outcome.output)
    assert python is None, f"the output shows {python.group(0)!r}:\n{outcome.output[-3000:]}"
    assert outcome.code == case.exit, f"exit {outcome.code}, not {case.exit}:\n{first_lines}"
    if case.report:
        _assert_dataset_report(case, outcome.stdout)
    else:
        lines = error_lines(outcome.stderr)
        assert len(lines) == 1, f"{len(lines)} error lines, not 1:\n{first_lines}"
        assert case.names in lines[0], f"the error does not name {case.names!r}: {lines[0]}"
    for text in forbidden_texts(case, case_dir):
        assert text not in outcome.output, f"the output echoes {text!r}"
    for text in case.expect:
        assert text in outcome.output, f"the output does not mention {text!r}:\n{first_lines}"
    for name in case.absent:
        assert not (case_dir / name).exists(), f"the command created {name!r}"
    if case.max_rss_mb is not None:
        assert outcome.max_rss_mb is not None, "the command wrote no peak memory"
        assert outcome.max_rss_mb < case.max_rss_mb, (
            f"peak memory {outcome.max_rss_mb:.0f} MB, over {case.max_rss_mb} MB"
        )


def _assert_dataset_report(case: Case, stdout: str) -> None:
    """An invalid dataset's answer is the report: its first line (or the JSON's uri) names the
    file and says it is invalid."""
    if stdout.lstrip().startswith("{"):
        report = json.loads(stdout)
        assert case.names in report["uri"] and report["ok"] is False, stdout[:500]
        return
    first = stdout.splitlines()[0] if stdout else ""
    assert case.names in first and "INVALID" in first, f"not an invalid-dataset report: {first}"


def test_the_corpus_covers_every_point_of_the_issue() -> None:
    assert {case.point for case in CASES} == {1, 2, 3, 4, 5, 6}
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids)), "case ids must be unique"


def test_every_corpus_file_is_used_and_small() -> None:
    used = {spec["copy"] for case in CASES for spec in case.files.values() if "copy" in spec}
    on_disk = {str(path.relative_to(FILES)) for path in FILES.rglob("*") if path.is_file()}
    assert on_disk == used
    for name in on_disk:
        assert (FILES / name).stat().st_size < 16_384, f"{name}: big files are made at test time"
