"""A local-backend entry point that does no training: it writes a real job's outputs at once.

Use it as ``LocalJobBackend(root, entrypoint="fakes.instant_jobs:run",
python_path=[<repo>/tests])``. The job process then calls ``run(spec, progress)``, which writes
what the embedded trainer would write, in the same layout:

- training kinds (sft, cpt, rft): ``<output>/manifest.json`` whose ``checkpoint_s3_bucket`` names
  ``<output>/checkpoint/`` (created, with a small weights file), and ``checkpoint.json``;
- eval: ``<output>/eval-result/results_<timestamp>.json`` with the scripted metrics under
  ``results.all``.

What a job does is scripted, from two places (the recipe wins where both say something):

1. the recipe's ``fake`` mapping, e.g. ``recipe={"fake": {"metrics": {"accuracy": 0.8}}}``;
2. the JSON file named by ``TUNELOOP_FAKE_JOBS`` (set it in the backend's ``env``): an object
   whose keys select jobs by their labels and whose values are such mappings. A key is ``*``
   (every job) or comma-separated ``label=value`` pairs that must all match, e.g.::

       {"*": {"metrics": {"accuracy": 0.5}},
        "round=2,stage=eval": {"metrics": {"accuracy": 0.7}},
        "round=3": {"fail": "out of memory"}}

   Matching entries are applied in file order, so later, more specific ones override. This is
   how a round DAG's test scripts the metrics of each round.

Keys of a script:

- ``metrics``: ``{name: value}`` an eval job reports (default ``{"accuracy": 0.5}``);
- ``log_lines``: how many numbered lines to print (``"<job> line <i>"``), or a list of lines;
- ``line_interval``: seconds between two printed lines (default 0);
- ``sleep``: seconds to wait before finishing (after the log lines);
- ``wait_for``: a path; the job waits until that file exists (a test decides when it ends);
- ``wait_after``: how many log lines to print before waiting for ``wait_for`` (default: all);
- ``fail``: a message; the job raises ``RuntimeError(message)`` instead of writing outputs;
- ``model_type`` / ``technique``: what checkpoint.json records (defaults: ``run.model_type`` of
  the recipe or ``tiny-chat``; ``lora`` when the recipe mentions LoRA, else ``full``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tuneloop import storage
from tuneloop.local import outputs
from tuneloop.recipes.catalog import Method, Technique

SCRIPT_ENV = "TUNELOOP_FAKE_JOBS"
DEFAULT_METRICS = {"accuracy": 0.5}


def run(spec: Any, progress: Callable[[int, int | None], None]) -> dict[str, Any]:
    """The entry point: follow the job's script, then write its outputs."""
    script = script_for(spec)
    output = storage.local_path(spec.output).absolute()
    output.mkdir(parents=True, exist_ok=True)
    lines = script.get("log_lines", 0)
    if isinstance(lines, int):
        lines = [f"{spec.name} line {i}" for i in range(1, lines + 1)]
    # Waiting part-way through the lines (wait_after) or, by default, after all and the sleep.
    wait_after = int(script.get("wait_after", len(lines)))
    for number, line in enumerate(lines, start=1):
        print(line, flush=True)
        progress(number, len(lines))
        if number == wait_after and number < len(lines):
            _wait_for(script)
        if script.get("line_interval"):
            time.sleep(float(script["line_interval"]))
    if script.get("sleep"):
        time.sleep(float(script["sleep"]))
    if wait_after >= len(lines):
        _wait_for(script)
    if script.get("fail"):
        raise RuntimeError(str(script["fail"]))
    if spec.kind == "eval":
        metrics = dict(script.get("metrics") or DEFAULT_METRICS)
        results = outputs.write_eval_results(output, "fake", metrics)
        return {"results": str(results), "metrics": metrics}
    return _write_checkpoint(output, spec, script)


def _wait_for(script: Mapping[str, Any]) -> None:
    """Until the file ``wait_for`` names exists (none named: not at all)."""
    if script.get("wait_for"):
        while not Path(script["wait_for"]).exists():
            time.sleep(0.05)


def script_for(spec: Any) -> dict[str, Any]:
    """The job's script: the matching entries of the TUNELOOP_FAKE_JOBS file, then the recipe's."""
    script: dict[str, Any] = {}
    path = os.environ.get(SCRIPT_ENV)
    if path:
        entries = json.loads(Path(path).read_text(encoding="utf-8"))
        for selector, entry in entries.items():
            if _selects(selector, spec.labels):
                script.update(entry)
    recipe = spec.recipe if isinstance(spec.recipe, Mapping) else {}
    script.update(recipe.get("fake") or {})
    return script


def _selects(selector: str, labels: Mapping[str, str]) -> bool:
    if selector.strip() == "*":
        return True
    pairs = [part.split("=", 1) for part in selector.split(",") if part.strip()]
    return all(len(p) == 2 and labels.get(p[0].strip()) == p[1].strip() for p in pairs)


def _lineage(base: Any, kind: str) -> list[Method]:
    """The base checkpoint's lineage (as a real job reads it from the base's checkpoint.json)
    followed by this job's method."""
    from tuneloop.local.train import resolve_base

    earlier = list(resolve_base(str(base)).lineage) if base else []
    return [*earlier, Method(kind)] if kind in set(Method) else earlier


def _write_checkpoint(output: Path, spec: Any, script: Mapping[str, Any]) -> dict[str, Any]:
    recipe = spec.recipe if isinstance(spec.recipe, Mapping) else {}
    checkpoint = output / outputs.CHECKPOINT_DIR
    checkpoint.mkdir(parents=True, exist_ok=True)
    (checkpoint / "weights.json").write_text(json.dumps({"job": spec.name}), encoding="utf-8")
    run_section = recipe.get("run") if isinstance(recipe.get("run"), Mapping) else {}
    mentions_lora = "lora" in json.dumps(recipe).lower()
    technique = script.get("technique") or ("lora" if mentions_lora else "full")
    outputs.write_manifest(output, checkpoint)
    record = outputs.write_checkpoint_record(
        output,
        checkpoint_dir=checkpoint,
        model_type=str(script.get("model_type") or run_section.get("model_type") or "tiny-chat"),
        technique=Technique(technique),
        lineage=_lineage(run_section.get("model_name_or_path"), spec.kind),
    )
    return {"checkpoint": record.uri}
