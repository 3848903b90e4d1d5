"""The demo task: its datasets in Nova formats and its reward in the Lambda contract."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tuneloop.data.registry import get_format
from tuneloop.data.validator import validate_dataset
from tuneloop.local import demo_task
from tuneloop.local.demo_task import DEFAULT_SIZES, FORMATS, lambda_handler, reward, write_demo_data
from tuneloop.local.rewards import validate_output
from tuneloop.recipes.catalog import MODELS

QUESTION = re.compile(r"max\((\d+), (\d+)\)")


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def pairs(path: Path) -> list[tuple[int, int]]:
    found = [tuple(map(int, m)) for m in QUESTION.findall(path.read_text(encoding="utf-8"))]
    return [(a, b) for a, b in found]


def test_every_file_validates_for_the_tiny_model(demo_data: dict[str, Path]) -> None:
    spec = MODELS["local.tiny-chat-v1"]
    assert set(demo_data) == set(DEFAULT_SIZES)
    for name, path in demo_data.items():
        report = validate_dataset(str(path), get_format(FORMATS[name]), spec)
        assert report.ok, report.to_text()
        assert report.records == DEFAULT_SIZES[name]
        assert report.tokens.max < 128 // 4  # well inside the recipes' max_length


def test_files_use_the_nova_formats(demo_data: dict[str, Path]) -> None:
    sft = rows(demo_data["train"])[0]
    assert sft["schemaVersion"] == "bedrock-conversation-2024"
    assert sft["system"] == [{"text": demo_task.SYSTEM_PROMPT}]
    assert [m["role"] for m in sft["messages"]] == ["user", "assistant"]
    a, b = map(int, QUESTION.search(sft["messages"][0]["content"][0]["text"]).groups())
    assert sft["messages"][1]["content"] == [{"text": f"ANSWER: {max(a, b)}"}]
    rft = rows(demo_data["rft"])
    assert len({r["id"] for r in rft}) == len(rft)
    assert rft[0]["messages"][0] == {"role": "system", "content": demo_task.SYSTEM_PROMPT}
    assert rft[0]["reference_answer"] == f"ANSWER: {max(rft[0]['operands'])}"
    qa = rows(demo_data["eval"])[0]
    assert set(qa) == {"system", "query", "response"} and qa["response"].startswith("ANSWER: ")
    assert set(rows(demo_data["cpt"])[0]) == {"text"}


def test_held_out_questions_are_disjoint_from_training(demo_data: dict[str, Path]) -> None:
    def unordered(name: str) -> set[frozenset[int]]:
        return {frozenset(p) for p in pairs(demo_data[name])}

    held = {name: unordered(name) for name in ("validation", "eval", "test")}
    training = unordered("train") | unordered("rft") | unordered("cpt")
    for name, questions in held.items():
        assert len(questions) == DEFAULT_SIZES[name]
        assert not questions & training, name
    assert not held["validation"] & held["eval"] and not held["eval"] & held["test"]
    assert not held["validation"] & held["test"]
    train = pairs(demo_data["train"])
    assert len(set(train)) == len(train)
    assert not set(pairs(demo_data["rft"])) & set(train)  # RFT prompts are new to SFT
    assert all(10 <= n <= 99 for p in train for n in p) and all(a != b for a, b in train)


def test_reproducible_for_a_seed(tmp_path: Path, demo_data: dict[str, Path]) -> None:
    again = write_demo_data(tmp_path / "same", seed=0)
    other = write_demo_data(tmp_path / "other", seed=1, sizes={"train": 100})
    for name, path in demo_data.items():
        assert again[name].read_bytes() == path.read_bytes(), name
    assert other["eval"].read_bytes() != demo_data["eval"].read_bytes()
    assert len(rows(other["train"])) == 100


def test_sizes_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown demo sets"):
        write_demo_data(tmp_path, sizes={"training": 10})
    with pytest.raises(ValueError, match="at least one"):
        write_demo_data(tmp_path, sizes={"eval": 0})
    with pytest.raises(ValueError, match="left after the held-out sets"):
        write_demo_data(tmp_path, sizes={"train": 9000})


def sample(answer, reference="82", where="top", sample_id="s-1", **extra) -> dict:
    out = {
        "id": sample_id,
        "messages": [
            {"role": "user", "content": "What is max(37, 82)?"},
            {"role": "assistant", "content": answer},
        ],
        **extra,
    }
    if where == "top":
        out["reference_answer"] = reference
    elif where == "metadata":
        out["metadata"] = {"reference_answer": reference, "my_key": "x"}
    return out


def scores(samples: list[dict]) -> list[float]:
    output = reward(samples)
    validate_output(output, [s.get("id") for s in samples])  # the contract, strictly
    return [entry["aggregate_reward_score"] for entry in output]


def test_reward_scores_exact_format_and_wrong_answers() -> None:
    answers = [
        "ANSWER: 82",
        " ANSWER: 82\n",
        "ANSWER: 37",
        "82",
        "ANSWER: 82 because",
        "The answer is ANSWER: 82",
        "",
        "ANSWER:",
    ]
    got = scores([sample(a, sample_id=i) for i, a in enumerate(answers)])
    assert got == [1.0, 1.0, demo_task.FORMAT_CREDIT, 0.0, 0.0, 0.0, 0.0, 0.0]


def test_reward_finds_the_reference_at_top_level_or_in_metadata() -> None:
    for where in ("top", "metadata"):
        for reference in ("82", "ANSWER: 82", 82, 82.0, {"answer": 82}, "#### 82"):
            assert scores([sample("ANSWER: 82", reference, where)]) == [1.0], (where, reference)
    as_text = sample("ANSWER: 82", where="none", metadata=json.dumps({"reference_answer": "82"}))
    assert scores([as_text]) == [1.0]
    missing = reward([sample("ANSWER: 82", where="none")])[0]
    assert missing["aggregate_reward_score"] == 0.0
    metrics = {m["name"]: m for m in missing["metrics_list"]}
    assert metrics["reference_found"]["value"] == 0.0
    assert metrics["correct"]["type"] == "Reward" and metrics["format"]["type"] == "Metric"


def test_reward_keeps_ids_and_order_and_survives_malformed_samples() -> None:
    batch = [
        sample("ANSWER: 82", sample_id=7),
        {"id": "no-messages", "reference_answer": "82"},
        {"id": "user-last", "messages": [{"role": "user", "content": "hi"}]},
        sample([{"type": "text", "text": "ANSWER: 82"}], sample_id="parts"),
        {"id": "bad-messages", "messages": "ANSWER: 82", "reference_answer": "82"},
    ]
    output = reward(batch)
    assert [o["id"] for o in output] == [7, "no-messages", "user-last", "parts", "bad-messages"]
    assert [o["aggregate_reward_score"] for o in output] == [1.0, 0.0, 0.0, 1.0, 0.0]
    assert set(output[0]) == {"id", "aggregate_reward_score", "metrics_list"}


def test_lambda_handler_takes_the_event_list() -> None:
    event = [sample("ANSWER: 82"), sample("ANSWER: 1", sample_id="s-2")]
    assert lambda_handler(event, None) == reward(event)
    assert lambda_handler({"body": json.dumps(event)}, None) == reward(event)
    assert lambda_handler({"samples": event}, None) == reward(event)
    with pytest.raises(ValueError, match="list of samples"):
        lambda_handler({"id": 1}, None)


def test_importing_the_demo_task_is_light() -> None:
    import subprocess
    import sys

    code = (
        "import sys, tuneloop.local.demo_task, tuneloop.local.rewards, tuneloop.local.convert\n"
        "print(sorted(m for m in ('torch', 'transformers', 'tokenizers') if m in sys.modules))"
    )
    plugins = str(Path(__file__).resolve().parents[3] / "plugins")
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": plugins}
    )
    assert result.stdout.strip() == "[]", result.stderr
