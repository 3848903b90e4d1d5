"""Write a local job's results in the layout Nova jobs write, so one code path reads both.

A training job's output folder holds ``manifest.json`` (``checkpoint_s3_bucket`` names the
checkpoint), tuneloop's ``checkpoint.json`` (how the checkpoint was trained), the checkpoint itself
under ``checkpoint/``, TensorBoard events under ``tensorboard/`` and ``training.log``; an RFT job
also ``reward_samples.jsonl`` (every step's rewards, for the distribution bands). An evaluation
job writes ``eval-result/results_<timestamp>.json`` with metrics under ``results.all``, as the
Nova evaluation container does.

Metrics lines (`metrics_line`) take Nova's HyperPod form, ``global_step: N | name: value | ...``,
so that one parser (``tuneloop.artifacts.series.LogMetrics``) reads the curves of every backend
from its job log.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tuneloop.artifacts.manifest import CHECKPOINT_RECORD, MANIFEST, Checkpoint
from tuneloop.artifacts.series import REWARD_SAMPLES
from tuneloop.recipes.catalog import Method, Platform, Technique

CHECKPOINT_DIR = "checkpoint"
TENSORBOARD_DIR = "tensorboard"
EVAL_DIR = "eval-result"
TRAINING_LOG = "training.log"


def _write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2)
        handle.write("\n")
    os.chmod(temp, 0o644)  # mkstemp creates files only their owner can read
    os.replace(temp, path)
    return path


def write_manifest(output_dir: Path, checkpoint_dir: Path) -> Path:
    """manifest.json naming the checkpoint, as a Nova training job writes it."""
    return _write_json(
        output_dir / MANIFEST, {"checkpoint_s3_bucket": str(checkpoint_dir.resolve())}
    )


def write_checkpoint_record(
    output_dir: Path,
    *,
    checkpoint_dir: Path,
    model_type: str,
    technique: Technique,
    lineage: Sequence[Method],
) -> Checkpoint:
    """checkpoint.json beside the manifest: what the compatibility checks of the next stage need."""
    checkpoint = Checkpoint(
        uri=str(checkpoint_dir.resolve()),
        model_type=model_type,
        technique=technique,
        platform=Platform.LOCAL,
        lineage=tuple(lineage),
        output_uri=str(output_dir.resolve()),
    )
    _write_json(output_dir / CHECKPOINT_RECORD, checkpoint.model_dump(mode="json"))
    return checkpoint


def write_eval_results(
    output_dir: Path, task: str, metrics: Mapping[str, float], when: datetime | None = None
) -> Path:
    """eval-result/results_<timestamp>.json, with the metrics under results.all."""
    stamp = (when or datetime.now(UTC)).strftime("%Y-%m-%dT%H-%M-%S")
    values = {name: float(value) for name, value in metrics.items()}
    return _write_json(
        output_dir / EVAL_DIR / f"results_{stamp}.json",
        {"results": {f"custom|{task}|0": values, "all": values}},
    )


class JobLog:
    """Lines to a log file in the output folder (training.log), echoed to the job's log."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, message: str, *, echo: bool = True) -> None:
        line = f"[tuneloop] {datetime.now(UTC):%Y-%m-%d %H:%M:%S}Z {message}"
        if echo:
            print(line, file=sys.stderr, flush=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")


def tensorboard_writer(output_dir: Path) -> Any:
    """A TensorBoard SummaryWriter for the job's events (imports torch: job processes only)."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(output_dir / TENSORBOARD_DIR))


# Characters a metric name keeps in a metrics line; others (a reward function may name its
# metrics freely) become "_", so that a name can never read as another pair or a step.
_UNSAFE_NAME = re.compile(r"[^\w/@.\-]")


def metrics_line(step: int, total: int | None, scalars: Mapping[str, float]) -> str:
    """``step 3/20 | global_step: 3 | name: value | ...``: one step's metrics in Nova's HyperPod
    log form (whole numbers as integers, the rest to 6 significant digits, NaN as ``nan``)."""
    fields = {
        "global_step": float(step),
        **{k: v for k, v in scalars.items() if k != "global_step"},
    }
    shown = " | ".join(
        f"{_UNSAFE_NAME.sub('_', name)}: {_number(value)}" for name, value in fields.items()
    )
    return f"step {step}/{total} | {shown}" if total else f"step {step} | {shown}"


def _number(value: float) -> str:
    if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.6g}"


def append_reward_samples(output_dir: Path, step: int, rewards: Sequence[float]) -> None:
    """One line of ``reward_samples.jsonl``: the rewards a step's samples got (unscored samples
    left out)."""
    with (output_dir / REWARD_SAMPLES).open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"step": step, "rewards": [float(r) for r in rewards]}) + "\n")
