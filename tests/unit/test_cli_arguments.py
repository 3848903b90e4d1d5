"""Out-of-range command-line values get one clear line and exit 2, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneloop.cli.main import main

REPO = Path(__file__).resolve().parents[2]
DEMO = str(REPO / "recipes" / "campaigns" / "demo.yaml")
DATA = str(REPO / "tests" / "data" / "corpus" / "file" / "valid_unicode.jsonl")


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["campaign", "validate", DATA, "--round", "0"], "--round: 0 is less than 1"),
        (["campaign", "validate", DEMO, "--ds", "9999-12-31"], "--ds: 9999-12-31 has no day"),
        (["campaign", "validate", DEMO, "--ds", "0001-01-01"], "--ds: 0001-01-01 has no day"),
        (["campaign", "validate", DEMO, "--ds", "2026-13-45"], "--ds: '2026-13-45' is not a date"),
    ],
)
def test_a_value_out_of_range_is_one_line_and_exit_2(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err


def test_a_negative_max_length_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["data", "validate", DATA, "--format", "sft", "--model", "lite-2", "--max-length", "-5"]
    code = main(argv)
    assert code == 2
    err = capsys.readouterr().err
    assert "--max-length: -5 is not a length (allowed: >= 1)" in err and "Traceback" not in err


def test_a_jobs_root_that_is_a_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_file = tmp_path / "jobs"
    a_file.write_text("not a folder")
    recipe = str(REPO / "recipes" / "local" / "sft-full.yaml")
    code = main(["local", "run", recipe, "--output", str(tmp_path / "o"), "--root", str(a_file)])
    assert code == 2
    err = capsys.readouterr().err
    assert f"--root: {a_file} is not a folder" in err and "Traceback" not in err
    assert a_file.read_text() == "not a folder"


def test_local_run_refuses_a_recipe_it_cannot_train_before_starting_a_job(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = tmp_path / "deep.yaml"
    recipe.write_text("run:\n  name: deep\ntraining_config: " + "[" * 5000 + "\n")
    root = tmp_path / "jobs"
    argv = ["local", "run", str(recipe), "--root", str(root), "--output", str(tmp_path / "out")]
    code = main(argv)
    assert code == 2
    err = capsys.readouterr().err
    assert f"{recipe}:3" in err and "nest more than 64 levels" in err and "Traceback" not in err
    assert not (root / "deep").exists()  # no job process was started


def test_more_errors_than_a_report_lists_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["data", "validate", DATA, "--format", "sft", "--model", "lite-2", "--max-errors"]
    assert main([*argv, "10001"]) == 2
    err = capsys.readouterr().err
    assert "--max-errors: 10001 is more errors than a report lists" in err
    assert "(allowed: >= 0 and <= 10000)" in err
    assert main([*argv, "10000"]) == 0
