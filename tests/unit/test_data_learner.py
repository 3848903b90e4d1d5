"""The data-learning fake trainer the end-to-end tests use: evaluation follows data quality."""

from __future__ import annotations

import json
from pathlib import Path

from fakes import data_learner
from tuneloop.local.demo_task import write_demo_data
from tuneloop.local.runner import JobSpec


def job(kind: str, folder: Path, *, data: Path | None = None, model: str = "") -> JobSpec:
    run = {"model_name_or_path": model, "model_type": "tiny-chat", "data_s3_path": str(data or "")}
    return JobSpec(name=f"dl-{folder.name}", output=str(folder), recipe={"run": run}, kind=kind)


def poisoned(source: Path, target: Path) -> Path:
    """The same SFT records with every answer off by one."""
    lines = []
    for line in source.read_text().splitlines():
        record = json.loads(line)
        reply = record["messages"][-1]["content"][0]
        reply["text"] = f"ANSWER: {int(reply['text'].split()[-1]) + 1}"
        lines.append(json.dumps(record))
    target.write_text("\n".join(lines) + "\n")
    return target


def train(folder: Path, data: Path, base: str = "") -> str:
    data_learner.run(job("sft", folder, data=data, model=base), lambda *_: None)
    return str(folder / "checkpoint")


def evaluate(folder: Path, model: str) -> float:
    result = data_learner.run(job("eval", folder, model=model), lambda *_: None)
    return result["metrics"]["exact_match"]


def test_good_data_teaches_and_poisoned_data_unteaches(tmp_path: Path) -> None:
    data = write_demo_data(tmp_path / "data", seed=0)
    assert data_learner.data_quality(str(data["train"])) == 1.0
    assert data_learner.data_quality(str(data["rft"])) == 1.0
    bad = poisoned(data["train"], tmp_path / "bad.jsonl")
    assert data_learner.data_quality(str(bad)) == 0.0

    assert evaluate(tmp_path / "e0", "") == 0.0
    first = train(tmp_path / "r1", data["train"])
    assert evaluate(tmp_path / "e1", first) == data_learner.LEARNING_SHARE
    assert (tmp_path / "r1" / "manifest.json").is_file()
    second = train(tmp_path / "r2", bad, base=first)
    assert evaluate(tmp_path / "e2", second) < data_learner.LEARNING_SHARE - 0.3
