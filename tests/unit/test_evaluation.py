"""Reading evaluation results: the newest results_*.json under <output>/eval-result/ or in a
training job's output.tar.gz."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fakes.sagemaker import output_tarball
from tuneloop.artifacts.evaluation import (
    EvalResultsError,
    find_results,
    read_eval_metrics,
    read_tarball_metrics,
)
from tuneloop.errors import StorageError, TuneloopError
from tuneloop.local.outputs import write_eval_results

# The shape the Nova evaluation container writes for gen_qa (lighteval-style).
NOVA_GEN_QA = {
    "results": {
        "custom|gen_qa_gen_qa|0": {
            "rouge1": 0.915,
            "rouge1_stderr": 0.0035,
            "rougeL": 0.9,
            "em": 0.8,
            "f1": 0.88,
        },
        "all": {
            "rouge1": 0.915,
            "rouge1_stderr": 0.0035,
            "rougeL": 0.9,
            "em": 0.8,
            "f1": 0.88,
            "bleu": 71,
        },
    },
    "config_general": {"model_name": "nova"},
}


def write(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_nova_shaped_results(tmp_path: Path) -> None:
    write(tmp_path / "eval-result" / "results_2025-06-01T10-00-00.123.json", NOVA_GEN_QA)
    metrics = read_eval_metrics(str(tmp_path))
    assert metrics == {
        "rouge1": 0.915,
        "rouge1_stderr": 0.0035,
        "rougeL": 0.9,
        "em": 0.8,
        "f1": 0.88,
        "bleu": 71.0,
    }
    assert read_eval_metrics(f"file://{tmp_path}/") == metrics


def test_what_the_local_evaluation_writes_is_read_back(tmp_path: Path) -> None:
    path = write_eval_results(tmp_path, "gen_qa_gen_qa", {"exact_match": 0.5, "rougeL": 1})
    assert path.parent.name == "eval-result" and path.name.startswith("results_")
    assert read_eval_metrics(str(tmp_path)) == {"exact_match": 0.5, "rougeL": 1.0}


def test_the_newest_results_file_wins(tmp_path: Path) -> None:
    folder = tmp_path / "eval-result"
    older = write(folder / "results_2025-06-01T10-00-00.json", {"results": {"all": {"a": 1}}})
    write(folder / "results_2025-06-02T09-00-00.json", {"results": {"all": {"a": 2}}})
    # Names carry the timestamp: a file touched later but named earlier does not win.
    os.utime(older, (2e9, 2e9))
    assert read_eval_metrics(str(tmp_path)) == {"a": 2.0}
    # Nested folders count too, and non-results files are ignored.
    write(
        folder / "details" / "model" / "results_2025-06-03T00-00-00.json",
        {"results": {"all": {"a": 3}}},
    )
    write(folder / "inference_output.jsonl", {})
    assert read_eval_metrics(str(tmp_path)) == {"a": 3.0}
    # The eval-result folder itself and a results file are accepted as well.
    assert read_eval_metrics(str(folder)) == {"a": 3.0}
    assert read_eval_metrics(str(older)) == {"a": 1.0}


def test_find_results_names_the_file(tmp_path: Path) -> None:
    path = write_eval_results(tmp_path, "t", {"a": 1}, when=datetime(2025, 6, 1, tzinfo=UTC))
    assert find_results(str(tmp_path)) == str(path)
    assert path.name == "results_2025-06-01T00-00-00.json"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"results": {"custom|x|0": {"a": 1}}}, "results.all: missing"),
        ({"metrics": {"a": 1}}, "results.all: missing"),
        ({"results": {"all": {"note": "n/a"}}}, "no numeric metric"),
        ([1, 2], "results.all: missing"),
    ],
)
def test_results_without_results_all_are_refused(tmp_path: Path, content, message) -> None:
    write(tmp_path / "eval-result" / "results_1.json", content)
    with pytest.raises(EvalResultsError, match=message):
        read_eval_metrics(str(tmp_path))


def test_invalid_json_is_refused(tmp_path: Path) -> None:
    (tmp_path / "eval-result").mkdir()
    (tmp_path / "eval-result" / "results_1.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(EvalResultsError, match="not valid JSON"):
        read_eval_metrics(str(tmp_path))


def test_no_results_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TuneloopError, match=r"no results_\*\.json under .*eval-result"):
        read_eval_metrics(str(tmp_path / "missing"))
    write(tmp_path / "eval-result" / "summary.json", NOVA_GEN_QA)
    with pytest.raises(EvalResultsError, match="no results"):
        read_eval_metrics(str(tmp_path))


def test_s3_output_folder(s3_server: str) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    s3.create_bucket(Bucket="evals")
    prefix = "out/my-eval-job/eval-result"
    for stamp, value in (("2025-06-01T10-00-00", 0.1), ("2025-06-02T10-00-00", 0.7)):
        body = json.dumps({"results": {"all": {"exact_match": value}}})
        s3.put_object(Bucket="evals", Key=f"{prefix}/results_{stamp}.json", Body=body)
    s3.put_object(Bucket="evals", Key=f"{prefix}/inference_output.jsonl", Body=b"{}")
    assert read_eval_metrics("s3://evals/out/my-eval-job") == {"exact_match": 0.7}
    assert read_eval_metrics("s3://evals/out/my-eval-job/") == {"exact_match": 0.7}
    with pytest.raises(EvalResultsError, match="no results"):
        read_eval_metrics("s3://evals/out/other-job")


# --- SageMaker training jobs: results packed in output/output.tar.gz --------------------------


def results(value: float) -> str:
    return json.dumps({"results": {"custom|gen_qa_gen_qa|0": {"em": value}, "all": {"em": value}}})


# What an evaluation training job packs: <job>/eval_results/results_*.json and friends.
EVAL_TARBALL = {
    "my-eval/eval_results/results_2025-06-01T10-00-00.json": results(0.25),
    "my-eval/eval_results/results_2025-06-02T10-00-00.json": results(0.75),
    "my-eval/eval_results/inference_output.jsonl": '{"prompt": "p"}\n',
    "my-eval/tensorboard_results/eval/events.out.tfevents.1": b"\x00\x01",
}


def write_tarball(folder: Path, members: dict, raw: bytes | None = None) -> Path:
    (folder / "output").mkdir(parents=True, exist_ok=True)
    path = folder / "output" / "output.tar.gz"
    path.write_bytes(raw if raw is not None else output_tarball(members))
    return path


def test_results_in_a_training_job_tarball(tmp_path: Path) -> None:
    tarball = write_tarball(tmp_path / "my-eval", EVAL_TARBALL)
    assert read_eval_metrics(str(tmp_path / "my-eval")) == {"em": 0.75}
    assert read_eval_metrics(str(tarball)) == {"em": 0.75}
    assert read_eval_metrics(f"file://{tmp_path}/my-eval/output/") == {"em": 0.75}
    assert read_tarball_metrics(str(tarball)) == {"em": 0.75}
    # The folder layout, when present, is what the job folder means.
    write(tmp_path / "my-eval" / "eval-result" / "results_1.json", {"results": {"all": {"a": 1}}})
    assert read_eval_metrics(str(tmp_path / "my-eval")) == {"a": 1.0}


def test_tarball_without_results_is_a_clear_error(tmp_path: Path) -> None:
    write_tarball(tmp_path, {"manifest.json": '{"checkpoint_s3_bucket": "s3://x"}'})
    with pytest.raises(EvalResultsError) as info:
        read_eval_metrics(str(tmp_path))
    [problem] = info.value.problems
    assert "output.tar.gz holds no results_*.json" in problem.message
    assert "training job's output.tar.gz holds a manifest" in problem.fix


def test_tarball_with_broken_results(tmp_path: Path) -> None:
    members = {**EVAL_TARBALL, "my-eval/eval_results/results_2025-07-01T00-00-00.json": "{oops"}
    write_tarball(tmp_path, members)
    with pytest.raises(EvalResultsError, match="not valid JSON") as info:
        read_eval_metrics(str(tmp_path))
    assert info.value.problems[0].source.endswith(
        "output.tar.gz!my-eval/eval_results/results_2025-07-01T00-00-00.json"
    )
    data = output_tarball(EVAL_TARBALL)
    write_tarball(tmp_path, {}, raw=data[: len(data) // 2])
    with pytest.raises(StorageError, match=r"is not a readable tar\.gz archive"):
        read_eval_metrics(str(tmp_path))


def test_nothing_anywhere_names_both_places(tmp_path: Path) -> None:
    with pytest.raises(EvalResultsError) as info:
        read_eval_metrics(str(tmp_path / "job"))
    message = info.value.problems[0].message
    assert f"{tmp_path}/job/eval-result" in message
    assert f"{tmp_path}/job/output/output.tar.gz" in message
    with pytest.raises(EvalResultsError, match="the archive does not exist"):
        read_eval_metrics(str(tmp_path / "job" / "output" / "output.tar.gz"))


def test_training_job_tarball_on_s3(s3_server: str) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    s3.create_bucket(Bucket="smtj-evals")
    key = "out/my-eval/output/output.tar.gz"
    s3.put_object(Bucket="smtj-evals", Key=key, Body=output_tarball(EVAL_TARBALL))
    assert read_eval_metrics("s3://smtj-evals/out/my-eval") == {"em": 0.75}
    assert read_eval_metrics(f"s3://smtj-evals/{key}") == {"em": 0.75}
    s3.put_object(
        Bucket="smtj-evals",
        Key="out/train-job/output/output.tar.gz",
        Body=output_tarball({"manifest.json": "{}"}),
    )
    with pytest.raises(EvalResultsError, match=r"holds no results_\*\.json"):
        read_eval_metrics("s3://smtj-evals/out/train-job/")
    with pytest.raises(EvalResultsError, match="nor in s3://smtj-evals/out/never/output"):
        read_eval_metrics("s3://smtj-evals/out/never")
