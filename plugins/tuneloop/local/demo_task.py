"""The demo task: the larger of two two-digit numbers, answered as ``ANSWER: <n>``.

A tiny model learns it in well under a minute on two CPU cores (two-digit addition is too hard
at this size), so a whole campaign runs on a laptop. ``write_demo_data`` writes the datasets in
the formats Nova jobs take, and ``reward`` is the reward function in the Nova reward Lambda
contract; ``lambda_handler`` lets the same code run as a Lambda.

Held-out questions (validation, eval, test) never share a pair of numbers with a training
question (SFT, CPT, RFT), in either order.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Iterable, Mapping
from itertools import combinations
from pathlib import Path
from typing import Any

SCHEMA_VERSION = "bedrock-conversation-2024"
SYSTEM_PROMPT = "Reply with ANSWER: <n>."
LOW, HIGH = 10, 99
FORMAT_CREDIT = 0.1
"""Reward for an answer in the right format with the wrong number."""

DEFAULT_SIZES: dict[str, int] = {
    "train": 6000,
    "validation": 200,
    "test": 300,
    "eval": 300,
    "rft": 400,
    "cpt": 6000,
}
HELD_OUT = ("validation", "eval", "test")
FILES = {
    "train": "sft-train.jsonl",
    "validation": "sft-validation.jsonl",
    "cpt": "cpt.jsonl",
    "rft": "rft-train.jsonl",
    "eval": "eval.jsonl",
    "test": "test.jsonl",
}
FORMATS = {
    "train": "sft",
    "validation": "sft",
    "cpt": "cpt",
    "rft": "rft",
    "eval": "gen_qa",
    "test": "gen_qa",
}
"""Each file's dataset format (``tuneloop.data.registry`` name)."""

ANSWER_RE = re.compile(r"ANSWER:\s*(-?\d+)")
STRICT_ANSWER_RE = re.compile(r"\s*ANSWER: (-?\d+)\s*")
_INT_RE = re.compile(r"-?\d+")


def question(a: int, b: int) -> str:
    return f"What is max({a}, {b})?"


def answer(a: int, b: int) -> str:
    return f"ANSWER: {max(a, b)}"


# -- data ---------------------------------------------------------------------------------------


def split_questions(seed: int, sizes: Mapping[str, int]) -> dict[str, list[tuple[int, int]]]:
    """The (a, b) questions of every set, reproducible for ``seed``.

    Held-out sets draw whole pairs (either order is the same pair); training sets draw from the
    pairs left, in both orders. SFT training and RFT questions are distinct while the pool
    lasts; CPT reuses the training questions.
    """
    rng = random.Random(seed)
    pairs = list(combinations(range(LOW, HIGH + 1), 2))
    rng.shuffle(pairs)
    out: dict[str, list[tuple[int, int]]] = {}
    start = 0
    for name in HELD_OUT:
        chosen = pairs[start : start + sizes[name]]
        start += sizes[name]
        out[name] = [(a, b) if rng.random() < 0.5 else (b, a) for a, b in chosen]
    if start > len(pairs):
        raise ValueError(
            f"held-out sets ask for {start} questions; there are {len(pairs)} pairs of "
            f"numbers from {LOW} to {HIGH}"
        )
    pool = [(a, b) for a, b in pairs[start:]] + [(b, a) for a, b in pairs[start:]]
    rng.shuffle(pool)
    for name in ("train", "rft", "cpt"):
        if sizes[name] > len(pool):
            raise ValueError(
                f"{name} asks for {sizes[name]} questions; {len(pool)} are left after the "
                "held-out sets"
            )
    out["train"] = pool[: sizes["train"]]
    rest = pool[sizes["train"] :] + pool[: sizes["train"]]  # unseen by SFT first
    out["rft"] = rest[: sizes["rft"]]
    out["cpt"] = rng.sample(pool, sizes["cpt"])
    return out


def sft_record(a: int, b: int) -> dict[str, Any]:
    """One Bedrock Converse SFT record."""
    return {
        "schemaVersion": SCHEMA_VERSION,
        "system": [{"text": SYSTEM_PROMPT}],
        "messages": [
            {"role": "user", "content": [{"text": question(a, b)}]},
            {"role": "assistant", "content": [{"text": answer(a, b)}]},
        ],
    }


def cpt_record(a: int, b: int) -> dict[str, Any]:
    return {"text": f"{question(a, b)}\n{answer(a, b)}"}


def rft_record(index: int, a: int, b: int) -> dict[str, Any]:
    """One RFT prompt: OpenAI-style messages, the reference answer (the ideal reply, as the
    reward function wants it: the reward probe scores it as the known good answer) and a
    grader field."""
    return {
        "id": f"max-{index:05d}",
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": question(a, b)},
        ],
        "reference_answer": answer(a, b),
        "operands": [a, b],
    }


def gen_qa_record(a: int, b: int) -> dict[str, Any]:
    return {"system": SYSTEM_PROMPT, "query": question(a, b), "response": answer(a, b)}


def write_demo_data(
    folder: str | Path, seed: int = 0, sizes: Mapping[str, int] | None = None
) -> dict[str, Path]:
    """Write the demo datasets in ``folder``; return each set's path by name.

    ``sizes`` overrides DEFAULT_SIZES per set (train, validation, test, eval, rft, cpt).
    """
    unknown = set(sizes or {}) - set(DEFAULT_SIZES)
    if unknown:
        raise ValueError(
            f"unknown demo sets {', '.join(sorted(unknown))} (known: {', '.join(DEFAULT_SIZES)})"
        )
    merged = {**DEFAULT_SIZES, **(sizes or {})}
    for name, size in merged.items():
        if size < 1:
            raise ValueError(f"the {name} set needs at least one question, not {size}")
    questions = split_questions(seed, merged)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    records: dict[str, Iterable[dict[str, Any]]] = {
        "train": (sft_record(a, b) for a, b in questions["train"]),
        "validation": (sft_record(a, b) for a, b in questions["validation"]),
        "cpt": (cpt_record(a, b) for a, b in questions["cpt"]),
        "rft": (rft_record(i, a, b) for i, (a, b) in enumerate(questions["rft"], 1)),
        "eval": (gen_qa_record(a, b) for a, b in questions["eval"]),
        "test": (gen_qa_record(a, b) for a, b in questions["test"]),
    }
    paths = {}
    for name, rows in records.items():
        path = folder / FILES[name]
        scratch = path.with_name(path.name + ".tmp")
        with scratch.open("w", encoding="utf-8") as out:
            for row in rows:
                out.write(json.dumps(row, separators=(",", ":")) + "\n")
        scratch.replace(path)
        paths[name] = path
    return paths


# -- reward -------------------------------------------------------------------------------------


def parse_answer(text: str) -> int | None:
    """The number after the last ``ANSWER:``, or None."""
    found = ANSWER_RE.findall(text or "")
    return int(found[-1]) if found else None


def reference_number(reference: Any) -> int | None:
    """The expected number from a reference answer: ``82``, ``"82"``, ``"ANSWER: 82"``,
    ``{"answer": 82}``... None when it holds no number."""
    if isinstance(reference, bool):
        return None
    if isinstance(reference, int):
        return reference
    if isinstance(reference, float):
        return int(reference) if math.isfinite(reference) and reference.is_integer() else None
    if isinstance(reference, str):
        parsed = parse_answer(reference)
        if parsed is not None:
            return parsed
        numbers = _INT_RE.findall(reference)
        return int(numbers[-1]) if numbers else None
    if isinstance(reference, Mapping):
        for key in ("answer", "reference_answer", "ground_truth", "value", "solution"):
            if key in reference:
                return reference_number(reference[key])
    return None


def score_answer(text: str, reference: Any) -> tuple[float, dict[str, float]]:
    """(reward, metrics) for one generated answer: 1.0 for exactly ``ANSWER: <n>`` with the
    right number, FORMAT_CREDIT for the right format with the wrong number, 0.0 otherwise
    (and 0.0 when the reference holds no number)."""
    expected = reference_number(reference)
    strict = STRICT_ANSWER_RE.fullmatch(text or "")
    found = parse_answer(text)
    correct = strict is not None and expected is not None and int(strict.group(1)) == expected
    if expected is None:
        score = 0.0  # nothing to compare with: no credit, not even for the format
    else:
        score = 1.0 if correct else FORMAT_CREDIT if strict is not None else 0.0
    metrics = {
        "exact_match": float(correct),
        "format": float(strict is not None),
        "answer_found": float(found is not None and found == expected),
    }
    return score, metrics


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "") if isinstance(part, Mapping) else str(part) for part in content
        )
    return ""


def _generated(sample: Mapping[str, Any]) -> str | None:
    """The text of the last message, if the assistant wrote it."""
    messages = sample.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    last = messages[-1]
    if not isinstance(last, Mapping) or last.get("role") != "assistant":
        return None
    return _text(last.get("content"))


def _reference(sample: Mapping[str, Any]) -> Any:
    if sample.get("reference_answer") is not None:
        return sample["reference_answer"]
    metadata = sample.get("metadata")
    if isinstance(metadata, str):  # some senders serialise metadata
        try:
            metadata = json.loads(metadata)
        except ValueError:
            metadata = None
    if isinstance(metadata, Mapping):
        return metadata.get("reference_answer")
    return None


def reward(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Score a batch in the Nova reward Lambda contract.

    Each sample is ``{"id", "messages": [..., {"role": "assistant", "content": ...}],
    "reference_answer"}``, or has the reference under ``metadata.reference_answer``. Returns one
    ``{"id", "aggregate_reward_score", "metrics_list"}`` per sample, in order. A sample without
    a generated answer or a usable reference scores 0.
    """
    results = []
    for sample in samples:
        sample = sample if isinstance(sample, Mapping) else {}
        generated = _generated(sample)
        reference = _reference(sample)
        if generated is None:
            score, metrics = 0.0, {"exact_match": 0.0, "format": 0.0, "answer_found": 0.0}
        else:
            score, metrics = score_answer(generated, reference)
        metrics["reference_found"] = float(reference_number(reference) is not None)
        results.append(
            {
                "id": sample.get("id"),
                "aggregate_reward_score": score,
                "metrics_list": [
                    {"name": "correct", "value": metrics["exact_match"], "type": "Reward"},
                    *(
                        {"name": name, "value": value, "type": "Metric"}
                        for name, value in metrics.items()
                        if name != "exact_match"
                    ),
                ],
            }
        )
    return results


def lambda_handler(event: Any, context: Any = None) -> list[dict[str, Any]]:
    """The AWS Lambda entry point: ``event`` is the list of samples (or ``{"samples": [...]}``,
    or an API Gateway body holding either)."""
    if isinstance(event, Mapping) and "body" in event:
        body = event["body"]
        event = json.loads(body) if isinstance(body, str | bytes) else body
    if isinstance(event, Mapping) and "samples" in event:
        event = event["samples"]
    if not isinstance(event, list):
        raise ValueError(f"expected a list of samples, got {type(event).__name__}")
    return reward(event)
