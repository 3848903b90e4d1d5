"""A local-backend entry point whose "model" learns only from the quality of its data, in no time.

Use it like ``fakes.instant_jobs`` (``entrypoint: fakes.data_learner:run``, ``python_path:
[<repo>/tests]``). It writes the outputs a real job writes (``fakes.instant_jobs`` does that part),
but what the evaluation reports follows from what the rounds trained on, so a round trained on
poisoned data really regresses and the gate really rolls back:

- a training job reads its training data (``run.data_s3_path``: demo-task records, ``What is
  max(a, b)?`` with an ``ANSWER: n`` reply or a ``reference_answer``) and measures its quality,
  the share of records whose answer is right; the checkpoint's skill moves from the base
  checkpoint's skill (0 for the base model) toward that quality by ``LEARNING_SHARE`` of the
  distance;
- an evaluation job reports ``exact_match``, ``f1_score`` and ``rougeL`` equal to the skill of
  the model it evaluates.

The skill lives in ``<checkpoint>/skill.json``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from fakes import instant_jobs
from tuneloop import storage
from tuneloop.local import outputs
from tuneloop.local.demo_task import parse_answer, reference_number

LEARNING_SHARE = 0.6
"""How far one training job moves the skill toward its data's quality."""

_QUESTION = re.compile(r"max\((-?\d+), (-?\d+)\)")


def run(spec: Any, progress: Callable[[int, int | None], None]) -> dict[str, Any]:
    output = storage.local_path(spec.output).absolute()
    output.mkdir(parents=True, exist_ok=True)
    run_section = spec.recipe.get("run") or {}
    base_skill = skill_of(run_section.get("model_name_or_path"))
    if spec.kind == "eval":
        metrics = {"exact_match": base_skill, "f1_score": base_skill, "rougeL": base_skill}
        results = outputs.write_eval_results(output, "data-learner", metrics)
        progress(1, 1)
        return {"results": str(results), "metrics": metrics}
    quality = data_quality(str(run_section.get("data_s3_path") or ""))
    skill = round(base_skill + (quality - base_skill) * LEARNING_SHARE, 6)
    print(f"{spec.name}: data quality {quality:.3f}, skill {base_skill:.3f} -> {skill:.3f}")
    result = instant_jobs._write_checkpoint(output, spec, {})
    checkpoint = output / outputs.CHECKPOINT_DIR
    (checkpoint / "skill.json").write_text(json.dumps({"skill": skill}), encoding="utf-8")
    progress(1, 1)
    return result


def skill_of(model: str | None) -> float:
    """The skill recorded in a checkpoint folder; 0 for anything else (the base model)."""
    if not model:
        return 0.0
    path = storage.local_path(str(model)) / "skill.json"
    if not path.is_file():
        return 0.0
    return float(json.loads(path.read_text(encoding="utf-8"))["skill"])


def data_quality(uri: str) -> float:
    """The share of records whose answer is the larger of the question's two numbers."""
    right = total = 0
    with storage.local_path(uri).open(encoding="utf-8") as lines:
        for line in lines:
            if not line.strip():
                continue
            total += 1
            right += _is_right(json.loads(line))
    return right / total if total else 0.0


def _is_right(record: Mapping[str, Any]) -> bool:
    text = json.dumps(record.get("messages") or record.get("text") or "")
    asked = _QUESTION.search(text)
    if asked is None:
        return False
    expected = max(int(asked.group(1)), int(asked.group(2)))
    if "reference_answer" in record:
        return reference_number(record["reference_answer"]) == expected
    replies = [
        part.get("text", "")
        for message in record.get("messages") or []
        if message.get("role") == "assistant"
        for part in message.get("content") or []
        if isinstance(part, Mapping)
    ]
    return bool(replies) and parse_answer(replies[-1]) == expected
