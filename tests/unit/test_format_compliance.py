"""Format compliance: judging answers (JSON, regex) and reading an evaluation's inference output
from a local folder written by the real local evaluation, from S3 (a moto server) and from a
training job's tarball."""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fakes.sagemaker import output_tarball
from tuneloop.artifacts.format_compliance import (
    EXAMPLE_CHARS,
    FORMAT_COMPLIANCE,
    ComplianceResult,
    InferenceOutputError,
    compliance,
    format_compliance_of,
    is_valid_json,
    matches_regex,
    read_inference_outputs,
)
from tuneloop.config.monitoring import OutputFormat
from tuneloop.errors import StorageError

JSON = OutputFormat.model_validate("json")


def regex(pattern: str) -> OutputFormat:
    return OutputFormat(regex=pattern)


# -- judging answers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        '{"name": "Ada", "age": 36}',
        '  \n{"a": [1, 2, {"b": null}]}\n ',
        "[1, 2, 3]",
        "42",
        '"a string"',
        "true",
        '```json\n{"a": 1}\n```',
        '```JSON\n{"a": 1}\n```',
        '```\n{"a": 1}\n```',
        '\n  ```json\n  {"a": 1}\n  ```  \n',
        '```json {"a": 1} ```',
        '{"ville": "Zürich", "名前": "太郎", "emoji": "🙂"}',
        '{"escaped": "\\u00fc\\n"}',
    ],
)
def test_valid_json_answers(answer: str) -> None:
    assert is_valid_json(answer)


@pytest.mark.parametrize(
    "answer",
    [
        "",
        "   \n\t ",
        "```json\n```",
        '{"a": 1',
        "{'a': 1}",
        '{"a": 1} trailing words',
        'Here is the JSON:\n```json\n{"a": 1}\n```',
        '```json\n{"a": 1}\n```\nHope this helps!',
        '```json\n{"a": 1}\n```\n```json\n{"b": 2}\n```',
        "NaN",
        '{"x": Infinity}',
        "[" * 100_000,
        "ANSWER: 82",
    ],
)
def test_invalid_json_answers(answer: str) -> None:
    assert not is_valid_json(answer)


def test_regex_must_match_the_whole_answer() -> None:
    assert matches_regex("ANSWER: 82", r"ANSWER: \d+")
    assert matches_regex("  ANSWER: 82\n", r"ANSWER: \d+")  # surrounding whitespace stripped
    assert not matches_regex("I think ANSWER: 82", r"ANSWER: \d+")
    assert not matches_regex("ANSWER: 82 or 83", r"ANSWER: \d+")
    assert not matches_regex("", r"ANSWER: \d+")
    assert matches_regex("", r"\d*")
    assert matches_regex("Zürich-名前", r"\w+-\w+")
    assert matches_regex("line one\nline two", r"(?s)line.*two")


def test_compliance_counts_and_keeps_the_first_failures() -> None:
    long_failure = "x" * (EXAMPLE_CHARS * 3)
    answers = ['{"ok": 1}', "", long_failure, "nope", '```json\n{"ok": 2}\n```', "{", "[]"]
    result = compliance(answers, JSON)
    assert (result.checked, result.passed) == (7, 3)
    assert result.rate == pytest.approx(3 / 7)
    assert result.failed_examples == ("", "x" * (EXAMPLE_CHARS - 1) + "…", "nope")
    assert "format_compliance 0.4286 (3 of 7 answers)" in result.describe()
    assert json.loads(json.dumps(result.as_dict()))["failed_examples"][2] == "nope"

    result = compliance(iter(["ANSWER: 1", "ANSWER: one", "ANSWER: 22"]), regex(r"ANSWER: \d+"))
    assert result.rate == pytest.approx(2 / 3)
    assert (result.checked, result.passed, result.failed_examples) == (3, 2, ("ANSWER: one",))


def test_compliance_of_no_answers_is_zero_of_zero() -> None:
    assert compliance([], JSON) == ComplianceResult(rate=0.0, checked=0, passed=0)


def test_compliance_reads_answers_once_and_lazily() -> None:
    seen: list[int] = []

    def answers() -> Iterator[str]:
        for i in range(1000):
            seen.append(i)
            yield json.dumps({"i": i})

    assert compliance(answers(), JSON).rate == 1.0
    assert len(seen) == 1000


def test_a_format_must_be_one_of_json_and_regex() -> None:
    class Neither:
        valid_json = False
        regex = ""

    with pytest.raises(ValueError, match="exactly one"):
        compliance(["{}"], Neither())


def test_metric_name() -> None:
    assert FORMAT_COMPLIANCE == "format_compliance"


# -- the output of a real local evaluation --------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]
ANSWER_FORMAT = r"ANSWER: \d+"


@pytest.fixture(scope="module")
def local_eval(
    tiny_chat_home: Path, demo_data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The output folder of a gen_qa evaluation of the tiny model on 12 demo questions."""
    from tuneloop.local import evaluate as E
    from tuneloop.local.runner import JobSpec
    from tuneloop.recipes.catalog import Platform
    from tuneloop.recipes.render import render_recipe
    from tuneloop.recipes.rules import RecipeContext

    folder = tmp_path_factory.mktemp("local-eval")
    lines = demo_data["eval"].read_text(encoding="utf-8").splitlines()[:12]
    data = folder / "eval.jsonl"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = folder / "my-eval"
    recipe = render_recipe(
        REPO / "recipes" / "local" / "eval-gen-qa.yaml",
        {"run.data_s3_path": str(data), "run.output_s3_path": str(out)},
        context=RecipeContext(platform=Platform.LOCAL),
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TUNELOOP_HOME", str(tiny_chat_home))
        patch.setenv("TUNELOOP_DEVICE", "cpu")
        E.evaluate(recipe, JobSpec(name="my-eval", output=str(out)), lambda *_: None)
    return out


def written_rows(out: Path) -> list[dict]:
    text = (out / "eval-result" / "inference_output.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


def expected(rows: list[dict], fmt: OutputFormat) -> float:
    if fmt.valid_json:
        ok = []
        for row in rows:
            try:
                json.loads(row["inference"].strip())
                ok.append(True)
            except ValueError:
                ok.append(False)
    else:
        ok = [re.fullmatch(fmt.regex, row["inference"].strip()) is not None for row in rows]
    return sum(ok) / len(rows)


def test_every_way_to_name_a_local_evaluation_reads_its_answers(local_eval: Path) -> None:
    rows = written_rows(local_eval)
    assert len(rows) == 12
    [results_file] = (local_eval / "eval-result").glob("results_*.json")
    for uri in (
        str(local_eval),
        f"file://{local_eval}/",
        str(local_eval / "eval-result"),
        str(results_file),
        str(local_eval / "eval-result" / "inference_output.jsonl"),
    ):
        assert list(read_inference_outputs(uri)) == rows, uri


@pytest.mark.parametrize(
    "fmt", [JSON, regex(ANSWER_FORMAT), regex(r"(?s).*")], ids=["json", "answer", "anything"]
)
def test_compliance_of_a_local_evaluation(local_eval: Path, fmt: OutputFormat) -> None:
    rows = written_rows(local_eval)
    result = format_compliance_of(str(local_eval), fmt)
    assert result.checked == 12
    assert result.rate == pytest.approx(expected(rows, fmt))
    assert result.passed == round(result.rate * 12)
    failures = [row["inference"] for row in rows if not _passes(row["inference"], fmt)]
    assert list(result.failed_examples) == [a[:EXAMPLE_CHARS] for a in failures[:3]]


def _passes(answer: str, fmt: OutputFormat) -> bool:
    return is_valid_json(answer) if fmt.valid_json else matches_regex(answer, fmt.regex)


def test_local_evaluation_output_on_s3_and_in_a_tarball(local_eval: Path, s3_server: str) -> None:
    import boto3

    rows = written_rows(local_eval)
    inference = (local_eval / "eval-result" / "inference_output.jsonl").read_bytes()
    [results_file] = (local_eval / "eval-result").glob("results_*.json")
    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    s3.create_bucket(Bucket="format-evals")
    # HyperPod's layout: <job>/eval-result/.
    prefix = "out/my-eval/eval-result"
    s3.put_object(Bucket="format-evals", Key=f"{prefix}/inference_output.jsonl", Body=inference)
    s3.put_object(
        Bucket="format-evals", Key=f"{prefix}/{results_file.name}", Body=results_file.read_bytes()
    )
    for uri in (
        "s3://format-evals/out/my-eval",
        "s3://format-evals/out/my-eval/",
        f"s3://format-evals/{prefix}",
        f"s3://format-evals/{prefix}/{results_file.name}",
    ):
        assert list(read_inference_outputs(uri)) == rows, uri
    local_rate = format_compliance_of(str(local_eval), regex(ANSWER_FORMAT)).rate
    on_s3 = format_compliance_of("s3://format-evals/out/my-eval", regex(ANSWER_FORMAT))
    assert on_s3.rate == local_rate and on_s3.checked == 12

    # A training job's layout: <job>/output/output.tar.gz holding <job>/eval_results/.
    tarball = output_tarball(
        {
            f"smtj-eval/eval_results/{results_file.name}": results_file.read_bytes(),
            "smtj-eval/eval_results/inference_output.jsonl": inference,
            "smtj-eval/tensorboard_results/eval/events.out.tfevents.1": b"\x00",
        }
    )
    s3.put_object(Bucket="format-evals", Key="out/smtj-eval/output/output.tar.gz", Body=tarball)
    assert list(read_inference_outputs("s3://format-evals/out/smtj-eval")) == rows
    assert list(read_inference_outputs("s3://format-evals/out/smtj-eval/output/")) == rows
    with pytest.raises(InferenceOutputError, match="nor in s3://format-evals/out/none/output"):
        list(read_inference_outputs("s3://format-evals/out/none"))


# -- tarballs and layouts -------------------------------------------------------------------------


def answer_lines(*answers: object) -> str:
    return "".join(json.dumps({"prompt": "p", "inference": a, "gold": "g"}) + "\n" for a in answers)


def tarball_with_a_link_first(lines: str) -> bytes:
    """A tarball whose first inference_output.jsonl is a symbolic link, then the real file."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        link = tarfile.TarInfo("./job/eval_results/inference_output.jsonl")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        archive.addfile(link)
        data = lines.encode()
        info = tarfile.TarInfo("./job/eval_results/inference_output.jsonl")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_a_tarball_is_read_from_its_regular_file_only(tmp_path: Path) -> None:
    job = tmp_path / "job"
    (job / "output").mkdir(parents=True)
    tarball = job / "output" / "output.tar.gz"
    tarball.write_bytes(tarball_with_a_link_first(answer_lines('{"a": 1}', "no", ["[1]", "x"])))
    answers = [r["inference"] for r in read_inference_outputs(str(job))]
    assert answers == ['{"a": 1}', "no", ["[1]", "x"]]
    assert [r["inference"] for r in read_inference_outputs(str(tarball))] == answers
    result = format_compliance_of(str(job), JSON)
    # A list of answers counts as its first one.
    assert (result.checked, result.passed, result.failed_examples) == (3, 2, ("no",))


def test_a_fifo_is_not_an_inference_output(tmp_path: Path) -> None:
    folder = tmp_path / "job" / "eval-result"
    folder.mkdir(parents=True)
    os.mkfifo(folder / "inference_output.jsonl")
    with pytest.raises(InferenceOutputError, match=r"no inference_output\.jsonl"):
        list(read_inference_outputs(str(tmp_path / "job")))


def test_the_newest_inference_output_under_the_eval_folder_wins(tmp_path: Path) -> None:
    older = tmp_path / "job" / "eval-result" / "a" / "inference_output.jsonl"
    newer = tmp_path / "job" / "eval-result" / "b" / "inference_output.jsonl"
    for path, answer in ((older, "old"), (newer, "new")):
        path.parent.mkdir(parents=True)
        path.write_text(answer_lines(answer), encoding="utf-8")
    os.utime(older, (1_000_000, 1_000_000))
    os.utime(newer, (2_000_000, 2_000_000))
    # Names are equal, so the modification time decides.
    assert [r["inference"] for r in read_inference_outputs(str(tmp_path / "job"))] == ["new"]


# -- errors -------------------------------------------------------------------------------------


def test_an_evaluation_without_answers_is_a_clear_error(tmp_path: Path) -> None:
    # A benchmark writes results but no inference output.
    folder = tmp_path / "bench" / "eval-result"
    folder.mkdir(parents=True)
    (folder / "results_2025-06-01T10-00-00.json").write_text('{"results": {"all": {"a": 1}}}')
    with pytest.raises(InferenceOutputError) as info:
        format_compliance_of(str(tmp_path / "bench"), JSON)
    [problem] = info.value.problems
    assert f"no inference_output.jsonl in {folder}" in problem.message
    assert f"nor in {tmp_path}/bench/output/output.tar.gz" in problem.message
    assert problem.fix is not None and "gen_qa" in problem.fix
    with pytest.raises(
        InferenceOutputError, match=r"no inference_output\.jsonl in \S*eval-result;"
    ):
        format_compliance_of(str(folder), JSON)
    with pytest.raises(InferenceOutputError, match="it does not exist"):
        format_compliance_of(str(folder / "results_2025-06-01T10-00-00.json"), JSON)


def test_a_tarball_without_answers_is_a_clear_error(tmp_path: Path) -> None:
    job = tmp_path / "job"
    (job / "output").mkdir(parents=True)
    (job / "output" / "output.tar.gz").write_bytes(
        output_tarball({"job/eval_results/results_1.json": "{}"})
    )
    with pytest.raises(InferenceOutputError, match=r"<job>/eval_results/inference_output\.jsonl"):
        format_compliance_of(str(job), JSON)
    with pytest.raises(InferenceOutputError, match="the archive does not exist"):
        format_compliance_of(str(tmp_path / "nothing.tar.gz"), JSON)
    (job / "output" / "output.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(StorageError, match=r"not a readable tar\.gz archive"):
        format_compliance_of(str(job), JSON)


def write_output(tmp_path: Path, text: str) -> str:
    path = tmp_path / "job" / "eval-result" / "inference_output.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return str(tmp_path / "job")


def test_empty_output_holds_no_answers(tmp_path: Path) -> None:
    job = write_output(tmp_path, "\n\n")
    with pytest.raises(InferenceOutputError, match="holds no answers"):
        format_compliance_of(job, JSON)


def test_unreadable_records_name_the_file_and_line(tmp_path: Path) -> None:
    job = write_output(tmp_path, answer_lines("{}") + "{broken\n")
    with pytest.raises(InferenceOutputError) as info:
        format_compliance_of(job, JSON)
    [problem] = info.value.problems
    assert problem.source.endswith("eval-result/inference_output.jsonl") and problem.line == 2
    assert "not valid JSON" in problem.message

    job = write_output(tmp_path, answer_lines("{}") + "[1, 2]\n")
    with pytest.raises(InferenceOutputError, match=r"jsonl:2: the record is list, not an object"):
        format_compliance_of(job, JSON)

    job = write_output(tmp_path, answer_lines("{}") + json.dumps({"prompt": "p"}) + "\n")
    with pytest.raises(InferenceOutputError) as info:
        format_compliance_of(job, JSON)
    [problem] = info.value.problems
    assert problem.format() == (
        f"{job} (answer 2): inference: the record has no inference field; fix: point at an "
        "evaluation job's inference output"
    )

    job = write_output(tmp_path, answer_lines(7))
    with pytest.raises(
        InferenceOutputError, match=r"inference: must be a string \(or a list of strings\), not int"
    ):
        format_compliance_of(job, JSON)


def test_null_answers_are_empty_answers(tmp_path: Path) -> None:
    job = write_output(tmp_path, answer_lines(None, [], "{}"))
    result = format_compliance_of(job, JSON)
    assert (result.checked, result.passed, result.failed_examples) == (3, 1, ("", ""))


def test_an_overlong_line_is_refused_without_holding_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tuneloop.artifacts import format_compliance as F

    monkeypatch.setattr(F, "MAX_LINE_BYTES", 64)
    monkeypatch.setattr(F, "CHUNK_BYTES", 16)
    job = write_output(tmp_path, answer_lines("{}") + answer_lines("x" * 200))
    with pytest.raises(InferenceOutputError, match="line 2 is longer than 64 bytes"):
        format_compliance_of(job, JSON)
    # Lines across chunk boundaries are put back together.
    job = write_output(tmp_path, answer_lines("{}", "[]", "no"))
    assert format_compliance_of(job, JSON).passed == 2
