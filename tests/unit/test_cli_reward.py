"""`tuneloop reward probe`: a reward function tried on an RFT dataset from the command line.

Runs the command as a user does: `main()` with the arguments a shell passes (and once the
installed `tuneloop` script in a subprocess), on JSONL files written to a temporary folder,
with the real functions of `fakes.reward_functions` and, for a Lambda, the fake Lambda endpoint
through the Amazon provider's LambdaHook and an Airflow connection from the environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Airflow sets up its logging when first imported, with handlers on the sys.stdout and
# sys.stderr of that moment: imported here, not inside a test whose capsys streams close after
# it (later tests would then log into closed streams).
import airflow.providers.amazon.aws.hooks.lambda_function  # noqa: F401
import pytest

from fakes import reward_functions
from fakes.lambda_server import FakeLambda, fake_lambda
from tuneloop.cli.main import main
from tuneloop.rounds.reward_probe import ProbeReport

REPO = Path(__file__).resolve().parents[2]
FUNCTIONS = "fakes.reward_functions"
SECRET = "cli-probe-secret-never-shown"


def line(rid: str, question: str, reference: Any = None) -> str:
    out: dict[str, Any] = {"id": rid, "messages": [{"role": "user", "content": question}]}
    if reference is not None:
        out["reference_answer"] = reference
    return json.dumps(out)


LINES = [
    line("r1", "2 + 2?", "four"),
    line("r2", "Capital of France?", {"answer": "Paris"}),
    line("r3", "Largest planet?", "Jupiter"),
    line("r4", "No reference here?"),
]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "rft.jsonl"
    path.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def release_slow_calls() -> Iterator[None]:
    reward_functions.RELEASE.clear()
    yield
    reward_functions.RELEASE.set()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["reward", "probe", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_good_function_passes_with_a_short_table(
    capsys: pytest.CaptureFixture[str], data: Path
) -> None:
    code, out, err = run(capsys, "--function", f"{FUNCTIONS}:good", "--data", str(data))

    assert code == 0, out + err
    lines = out.splitlines()
    assert lines[0] == f"reward function {FUNCTIONS}:good: passed"
    table = dict(row.split(None, 1) for row in lines[1:] if row.startswith("  "))
    assert table["records"] == "4 sampled, 1 without reference_answer"
    assert table["pairs"] == "9: good above bad on 100% (needs 90%)"
    assert table["scores"] == "good mean 1, bad mean 0"
    assert table["latency"].startswith("p50 ") and "limit 900 s" in table["latency"]
    assert table["calls"] == "2 (0 failed)"
    assert "warning: 1 of 4 sampled records has no reference_answer (r4)" in out
    assert err == ""


def test_a_bad_function_exits_1_with_each_problem_and_its_fix(
    capsys: pytest.CaptureFixture[str], data: Path
) -> None:
    code, out, _ = run(capsys, "--function", f"{FUNCTIONS}:scores_zero", "--data", str(data))

    assert code == 1
    assert out.splitlines()[0].endswith(": FAILED")
    problems = [row for row in out.splitlines() if row.startswith("problem: ")]
    assert problems == [
        "problem: constant_scores: scores every one of the 12 samples 0 (scores everything 0): "
        "good and bad answers alike; fix: score the answer (the last message, role assistant) "
        "against the reference answer (top-level reference_answer, or "
        "metadata.reference_answer): a correct answer must earn more than an empty or a wrong one"
    ]


def test_json_report_and_options(capsys: pytest.CaptureFixture[str], data: Path) -> None:
    code, out, _ = run(
        capsys,
        "--function",
        f"{FUNCTIONS}:raises",
        "--data",
        str(data),
        "--sample",
        "2",
        "--batch-size",
        "3",
        "--concurrency",
        "2",
        "--timeout",
        "30",
        "--json",
    )

    assert code == 1
    report = ProbeReport.model_validate_json(out)
    assert report.records == 2 and report.batch_size == 3 and report.concurrency_limit == 2
    assert report.timeout_seconds == 30 and report.calls == 3
    assert report.problems[0].check == "function_error"


def test_a_slow_function_times_out(capsys: pytest.CaptureFixture[str], data: Path) -> None:
    code, out, _ = run(
        capsys, "--function", f"{FUNCTIONS}:slow", "--data", str(data), "--timeout", "0.2"
    )

    assert code == 1
    assert "problem: timeout: fakes.reward_functions:slow did not answer a batch of 8" in out


def test_starting_model_answers_give_the_positive_share(
    capsys: pytest.CaptureFixture[str], data: Path, tmp_path: Path
) -> None:
    answers = tmp_path / "inference_output.jsonl"
    rows: list[dict[str, Any]] = [
        {"prompt": "2 + 2?", "inference": "five", "gold": "four", "metadata": None},
        {"prompt": "Capital?", "inference": "Lyon", "gold": {"answer": "Paris"}},
    ]
    answers.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    code, out, _ = run(
        capsys, "--function", f"{FUNCTIONS}:good", "--data", str(data), "--responses", str(answers)
    )

    assert code == 0
    assert "  positive  0.0% of 2 answers of the starting model" in out
    assert "so train with SFT first" in out


def test_a_module_that_cannot_be_imported_fails_the_probe(
    capsys: pytest.CaptureFixture[str], data: Path
) -> None:
    code, out, _ = run(capsys, "--function", "no_such_rewards:score", "--data", str(data))

    assert code == 1
    assert "problem: load: reward function 'no_such_rewards:score': cannot import module" in out


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            LINES[0] + "\n{not json\n",
            "rft.jsonl:2: $: not valid JSON (Expecting property name enclosed in double quotes: "
            "line 1 column 2 (char 1)); fix: write one JSON object per line",
        ),
        (
            LINES[0] + '\n{"id": "x", "reference_answer": "y"}\n',
            "rft.jsonl:2: $: required field 'messages' is missing; fix: correct the record "
            "(`tuneloop data validate FILE --format rft --model lite-2` lists every problem in "
            "the file)",
        ),
        ("[1, 2]\n", "rft.jsonl:1: $: the record is an array, not an object; fix: correct"),
        ("\n\n", "rft.jsonl: holds no records; fix: point it at an RFT dataset"),
    ],
)
def test_bad_data_exits_2_naming_file_line_and_fix(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "rft.jsonl"
    path.write_text(text, encoding="utf-8")

    code, out, err = run(capsys, "--function", f"{FUNCTIONS}:good", "--data", str(path))

    assert code == 2
    assert out == ""
    assert err.startswith(str(tmp_path) + "/")
    assert expected in err
    assert "Traceback" not in err


def test_only_regular_files_are_read(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "--function", f"{FUNCTIONS}:good", "--data", str(tmp_path))

    assert code == 2
    assert "is a directory, not a regular file" in err


def test_a_function_named_neither_way_is_bad_input(
    capsys: pytest.CaptureFixture[str], data: Path
) -> None:
    code, out, err = run(capsys, "--function", "not a function", "--data", str(data))

    assert code == 2 and out == ""
    assert "function: 'not a function' is neither a Lambda function nor a Python callable" in err


@pytest.mark.parametrize(
    "option", [("--sample", "0"), ("--batch-size", "1001"), ("--timeout", "901")]
)
def test_out_of_range_options_exit_2(
    capsys: pytest.CaptureFixture[str], data: Path, option: tuple[str, str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["reward", "probe", "--function", f"{FUNCTIONS}:good", "--data", str(data), *option])

    assert exited.value.code == 2
    assert option[0] in capsys.readouterr().err


@pytest.fixture
def lambdas(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeLambda]:
    with fake_lambda() as fake:
        connection = {
            "conn_type": "aws",
            "login": "AKIACLIEXAMPLE",
            "password": SECRET,
            "extra": {"endpoint_url": fake.url, "region_name": "us-east-1"},
        }
        monkeypatch.setenv("AIRFLOW_CONN_CLI_PROBE", json.dumps(connection))
        yield fake


def test_a_lambda_through_an_airflow_connection(
    capsys: pytest.CaptureFixture[str], data: Path, lambdas: FakeLambda
) -> None:
    good = lambdas.add("reward-good", reward_functions.lambda_handler)
    missing = good.replace("reward-good", "reward-gone")

    code, out, err = run(
        capsys, "--function", good, "--data", str(data), "--aws-conn-id", "cli_probe", "--json"
    )
    gone, gone_out, gone_err = run(
        capsys, "--function", missing, "--data", str(data), "--aws-conn-id", "cli_probe"
    )
    named, named_out, _ = run(
        capsys, "--function", good, "--data", str(data), "--aws-conn-id", "cli_probe", "--hyperpod"
    )

    assert code == 0, out + err
    assert ProbeReport.model_validate_json(out).separation == 1.0  # nothing else on stdout
    assert gone == 1 and "problem: not_found: no Lambda function" in gone_out
    assert named == 1 and "problem: hyperpod_name:" in named_out
    assert SECRET not in out + err + gone_out + gone_err + named_out


def test_the_installed_command(data: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests")}
    command = [
        str(Path(sys.executable).parent / "tuneloop"),
        "reward",
        "probe",
        "--data",
        str(data),
    ]

    passed = subprocess.run(
        [*command, "--function", f"{FUNCTIONS}:good"], capture_output=True, text=True, env=env
    )
    failed = subprocess.run(
        [*command, "--function", f"{FUNCTIONS}:ignores_response"],
        capture_output=True,
        text=True,
        env=env,
    )

    assert passed.returncode == 0, passed.stderr
    assert "passed" in passed.stdout.splitlines()[0]
    assert failed.returncode == 1
    assert "problem: ignores_response:" in failed.stdout
    assert "fix: read the model's answer from messages[-1]['content']" in failed.stdout
