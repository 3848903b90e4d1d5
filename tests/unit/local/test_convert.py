"""Nova-format records to TRL records."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tuneloop.local.convert import ConversionError, iter_records, load_records

SYSTEM = "You answer questions about refunds."


def jsonl(*records) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


def test_sft_converse_to_prompt_completion(write_file: Callable[[str, str], Path]) -> None:
    multi_turn = {
        "schemaVersion": "bedrock-conversation-2024",
        "system": [{"text": SYSTEM}],
        "messages": [
            {"role": "user", "content": [{"text": "Refund window?"}]},
            {"role": "assistant", "content": [{"text": "30 days."}]},
            {"role": "user", "content": [{"text": "Opened"}, {"text": "items?"}]},
            {
                "role": "assistant",
                "content": [
                    {"reasoningContent": {"reasoningText": {"text": "policy says 14"}}},
                    {"text": "14 days."},
                ],
            },
        ],
    }
    no_system = {
        "messages": [
            {"role": "user", "content": [{"text": "hi"}]},
            {"role": "assistant", "content": [{"text": "hello"}]},
        ]
    }
    path = write_file("sft.jsonl", jsonl(multi_turn, "", no_system))
    first, second = load_records(str(path), "sft")
    assert first == {
        "prompt": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "Refund window?"},
            {"role": "assistant", "content": "30 days."},
            {"role": "user", "content": "Opened\nitems?"},
        ],
        "completion": [{"role": "assistant", "content": "14 days."}],
    }
    assert second["prompt"] == [{"role": "user", "content": "hi"}]


def test_media_and_tools_are_refused_with_the_line(write_file: Callable[[str, str], Path]) -> None:
    image = {
        "messages": [
            {
                "role": "user",
                "content": [{"image": {"format": "png", "source": {"bytes": "x"}}}],
            },
            {"role": "assistant", "content": [{"text": "a cat"}]},
        ]
    }
    ok = {"messages": [{"role": "user", "content": [{"text": "hi"}]}, image["messages"][1]]}
    path = write_file("media.jsonl", jsonl(ok, image))
    with pytest.raises(ConversionError, match=r"media.jsonl:2: .*content\[0\] is image; "):
        load_records(str(path), "sft")
    rft = {"messages": [{"role": "tool", "content": "x"}], "reference_answer": "a"}
    with pytest.raises(ConversionError, match="role 'tool' is not supported"):
        load_records(str(write_file("tool.jsonl", jsonl(rft))), "rft")
    with pytest.raises(ConversionError, match="not valid JSON"):
        load_records(str(write_file("bad.jsonl", '{"text": "a"}\n{"text": \n')), "cpt")
    with pytest.raises(ConversionError, match="not a valid cpt record"):
        load_records(str(write_file("cpt.jsonl", jsonl({"body": "x"}))), "cpt")
    with pytest.raises(ValueError, match="format 'dpo'"):
        load_records(str(path), "dpo")


def test_cpt_and_streaming(write_file: Callable[[str, str], Path]) -> None:
    path = write_file("cpt.jsonl", jsonl({"text": "one"}, {"text": "two"}).rstrip("\n"))
    assert list(iter_records(f"file://{path}", "cpt")) == [{"text": "one"}, {"text": "two"}]
    assert load_records(str(path), "cpt", limit=1) == [{"text": "one"}]


def test_rft_keeps_reference_id_and_grader_fields(write_file: Callable[[str, str], Path]) -> None:
    full = {
        "id": "sample-00001",
        "messages": [
            {"role": "developer", "content": "You are a math tutor."},
            {"role": "user", "content": [{"type": "text", "text": "12 times 7?"}]},
        ],
        "reference_answer": {"solution": "84"},
        "ground_truth": "84",
        "tools": [{"type": "function", "function": {"name": "calc"}}],
    }
    bare = {"messages": [{"role": "user", "content": "2+2?"}], "reference_answer": "4"}
    path = write_file("rft.jsonl", jsonl(full, bare))
    first, second = load_records(str(path), "rft")
    assert first == {
        "id": "sample-00001",
        "prompt": [
            {"role": "system", "content": "You are a math tutor."},
            {"role": "user", "content": "12 times 7?"},
        ],
        "reference_answer": {"solution": "84"},
        "metadata": {"ground_truth": "84"},
        "tools": full["tools"],
    }
    assert second == {
        "id": "line-000002",
        "prompt": [{"role": "user", "content": "2+2?"}],
        "reference_answer": "4",
        "metadata": {},
    }
    encoded = load_records(str(path), "rft", json_fields=True)
    assert [json.loads(r["reference_answer"]) for r in encoded] == [{"solution": "84"}, "4"]
    assert json.loads(encoded[0]["metadata"]) == {"ground_truth": "84"}


def test_gen_qa_to_prompt_and_response(write_file: Callable[[str, str], Path]) -> None:
    records = [
        {"system": "Be brief.", "query": "Next: 1, 2, 4?", "response": "8", "metadata": "{}"},
        {"query": "q", "response": "r"},
    ]
    first, second = load_records(str(write_file("qa.jsonl", jsonl(*records))), "gen_qa")
    assert first == {
        "prompt": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Next: 1, 2, 4?"},
        ],
        "response": "8",
        "metadata": "{}",
    }
    assert second == {"prompt": [{"role": "user", "content": "q"}], "response": "r"}


def test_demo_files_convert(demo_data: dict[str, Path]) -> None:
    from tuneloop.local.demo_task import FORMATS, reward
    from tuneloop.local.rewards import make_sample

    for name, path in demo_data.items():
        records = load_records(str(path), FORMATS[name], limit=3)
        assert len(records) == 3, name
    sft = load_records(str(demo_data["train"]), "sft", limit=1)[0]
    assert [m["role"] for m in sft["prompt"]] == ["system", "user"]
    rft = load_records(str(demo_data["rft"]), "rft", limit=2)
    assert rft[0]["metadata"] == {
        "operands": json.loads(demo_data["rft"].open().readline())["operands"]
    }
    answer = rft[0]["reference_answer"]  # the ideal reply: "ANSWER: <n>"
    samples = [
        make_sample(r["id"], r["prompt"], answer, r["reference_answer"], r["metadata"]) for r in rft
    ]
    assert reward(samples)[0]["aggregate_reward_score"] == 1.0
