"""A ledger record (a plain dict) as what MLflow receives: params, metrics, curves, tags.

Pure functions, no MLflow client: `tuneloop.tracking.mirror` logs what they return. What they return
depends on the record alone, never on when it is logged, so that logging a round again writes
values MLflow already holds:

- metric timestamps come from the record (a stage's start, a round's end, when the record was
  written), never from the clock unless the record has no time at all;
- values longer than MLflow's limits are cut here, the same way on every call;
- `record_digest` ignores when the record was written (``recorded_at``): a record rebuilt on a
  task retry has the digest of the first;
- a stage's normalized series (``series``) are metrics under ``series/<name>`` (`SERIES_PREFIX`:
  ``series/reward_mean``, ``series/train_loss``), apart from the job's raw names, one point per
  step, finite values only (a NaN loss stays in the record and the report, MLflow refuses it);
  what the monitors found is a compact tag (`findings_tag`);
- each reward probe of a round is ``probe.<key>.<field>`` (`probe_key`: the stage it ran for,
  else its place in the list from 1): the function and verdict as params, its numbers as metrics.

tensorboard is imported inside `read_tensorboard_scalars`: DAG files import this module at parse
time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

VOLATILE_KEYS = frozenset({"recorded_at"})
"""Record fields that differ between two writes of the same round: left out of its digest."""
TENSORBOARD_GLOB = "events.out.tfevents.*"

# MLflow's limits (mlflow.utils.validation): longer values are cut here, the same way on every
# call, so that logging a round again compares equal values.
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
MAX_KEY = 250
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000

_log = logging.getLogger(__name__)
_UNSAFE_KEY_CHARS = re.compile(r"[^\w.\- :/]")


def record_digest(record: Mapping[str, Any]) -> str:
    """sha256 of the record's canonical JSON, less when it was written: equal rounds, equal
    digests (a record rebuilt on a task retry differs only in ``recorded_at``)."""
    kept = {k: v for k, v in record.items() if k not in VOLATILE_KEYS}
    text = json.dumps(kept, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def metric_key(name: str) -> str:
    """A metric or param name MLflow accepts (letters, digits, ``_ - . / : space``)."""
    return _UNSAFE_KEY_CHARS.sub("_", name)[:MAX_KEY]


def param_value(value: Any) -> str:
    """A param value as MLflow stores it: strings as they are, the rest as sorted JSON, cut to
    MLflow's limit."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text[:MAX_PARAM_VALUE]


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}``; lists and empty mappings stay JSON, None goes."""
    flat: dict[str, str] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        elif value is not None:
            flat[metric_key(name)] = param_value(value)
    return flat


def millis(when: Any) -> int | None:
    """Epoch milliseconds of an ISO timestamp (naive means UTC), or None."""
    if not when:
        return None
    try:
        moment = datetime.fromisoformat(str(when))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def round_times(record: Mapping[str, Any]) -> tuple[int, int]:
    """(start, end) of a round in epoch ms. Missing times fall back to when the record was
    written, which the ledger keeps: metric timestamps must not change between two loggings."""
    written = millis(record.get("recorded_at"))
    start = millis(record.get("started_at")) or written or _now_ms()
    end = millis(record.get("ended_at")) or written or start
    return start, end


def finite_number(value: Any) -> float | None:
    """``value`` as a float, or None when it is no number or not finite (MLflow refuses NaN)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def finite_scalars(values: Mapping[str, Any] | None) -> dict[str, float]:
    """The finite numbers of a {name: value} mapping, under MLflow-safe names."""
    out: dict[str, float] = {}
    for name, value in (values or {}).items():
        number = finite_number(value)
        if number is not None:
            out[metric_key(str(name))] = number
    return out


def round_params(record: Mapping[str, Any]) -> dict[str, str]:
    """What a round was made of: its base, data digests, job names, checkpoints, hyperparameters,
    and the reward probes' functions and verdicts (`probe_params`).

    Each stage's ``training_config`` is flattened under the stage's name (``sft.optim_config.lr``)
    so that comparing round runs shows what changed between rounds (a rollback halves lr)."""
    params: dict[str, str] = {}
    for key in ("base", "base_round", "rollback_of"):
        if record.get(key) not in (None, ""):
            params[key] = param_value(record[key])
    for data in record.get("datasets") or []:
        where = metric_key(f"data.{data.get('stage', '')}.{data.get('channel', '')}")
        for field in ("uri", "sha256", "records"):
            if data.get(field) not in (None, ""):
                params[f"{where}.{field}"] = param_value(data[field])
    for stage in record.get("stages") or []:
        name = str(stage.get("name", ""))
        if stage.get("job_name"):
            params[metric_key(f"job.{name}")] = param_value(stage["job_name"])
        checkpoint = stage.get("checkpoint") or {}
        if checkpoint.get("uri"):
            params[metric_key(f"checkpoint.{name}")] = param_value(checkpoint["uri"])
        training = (stage.get("recipe") or {}).get("training_config") or {}
        params.update(flatten(training, f"{name}."))
    evaluation = record.get("evaluation") or {}
    if evaluation.get("job_name"):
        params["job.evaluation"] = param_value(evaluation["job_name"])
    params.update(probe_params(record))
    return params


def stage_params(stage: Mapping[str, Any]) -> dict[str, str]:
    """A stage run's params: the whole rendered recipe flattened, plus how the stage ran."""
    params = flatten(stage.get("recipe") or {})
    for key in ("method", "technique", "job_name", "output_uri"):
        if stage.get(key):
            params[f"stage.{key}"] = param_value(stage[key])
    checkpoint = stage.get("checkpoint") or {}
    for key in ("uri", "model_type", "technique", "platform", "lineage"):
        if checkpoint.get(key):
            params[f"checkpoint.{key}"] = param_value(checkpoint[key])
    return params


def round_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """A round run's single values: eval metrics, baseline, deltas, timings, billable time, the
    gate's numeric signals (plateau count, GPU-hours so far...) and the reward probes' numbers
    (`probe_metrics`)."""
    metrics = finite_scalars(
        record.get("metrics") or (record.get("evaluation") or {}).get("metrics")
    )
    metrics.update({f"baseline.{k}": v for k, v in finite_scalars(record.get("baseline")).items()})
    for against, deltas in (record.get("deltas") or {}).items():
        prefix = metric_key(f"delta.{against}.")
        metrics.update({f"{prefix}{k}": v for k, v in finite_scalars(deltas).items()})
    metrics.update({f"seconds.{k}": v for k, v in finite_scalars(record.get("timings")).items()})
    for key in ("billable_seconds", "gpu_hours"):
        value = finite_number(record.get(key))
        if value is not None:
            metrics[key] = value
    signals = (record.get("decision") or {}).get("signals")
    metrics.update({f"signal.{k}": v for k, v in finite_scalars(signals).items()})
    metrics.update(probe_metrics(record))
    return metrics


Curve = list[tuple[int, float, int]]
"""(step, value, timestamp ms) points of one metric."""


def training_curves(stage: Mapping[str, Any], default_ms: int) -> dict[str, Curve]:
    """A stage's training curves: the record's ``training_metrics``, and TensorBoard scalars of a
    local output folder for the names the record does not hold (the record wins: it is the
    ledger's copy)."""
    start = millis(stage.get("started_at")) or default_ms
    curves: dict[str, Curve] = {}
    for name, points in (stage.get("training_metrics") or {}).items():
        curve = []
        for point in points or []:
            if len(point) < 2:
                continue
            value = finite_number(point[1])
            if value is not None:
                curve.append((int(point[0]), value, start))
        if curve:
            curves[metric_key(str(name))] = curve
    folder = _local_folder(
        stage.get("output_uri") or (stage.get("checkpoint") or {}).get("output_uri")
    )
    if folder is not None:
        for name, curve in read_tensorboard_scalars(folder).items():
            curves.setdefault(name, curve)
    return curves


def _local_folder(uri: Any) -> Path | None:
    if not uri:
        return None
    parsed = urlparse(str(uri))
    if parsed.scheme not in ("", "file"):
        return None  # TensorBoard events on S3 are read by the job's monitoring, not here
    folder = Path(parsed.path if parsed.scheme == "file" else str(uri))
    return folder if folder.is_dir() else None


def read_tensorboard_scalars(folder: Path) -> dict[str, Curve]:
    """Scalars of every TensorBoard events file under ``folder``: name -> points by step.

    Empty when the ``tensorboard`` package is not importable. A step logged twice (a job that
    restarted) keeps its last value."""
    try:
        from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
        from tensorboard.util import tensor_util
    except ImportError:
        return {}
    by_name: dict[str, dict[int, tuple[float, int]]] = {}
    for path in sorted(folder.rglob(TENSORBOARD_GLOB)):
        try:
            events = list(EventFileLoader(str(path)).Load())
        except Exception as error:  # best effort: the record holds the curves the gate used
            _log.warning("Skipping unreadable TensorBoard events %s: %s", path, error)
            continue
        for event in events:
            if not event.HasField("summary"):
                continue
            for value in event.summary.value:
                kind = value.WhichOneof("value")
                if kind == "simple_value":
                    number = finite_number(value.simple_value)
                elif kind == "tensor":
                    array = tensor_util.make_ndarray(value.tensor)
                    number = finite_number(array.item()) if array.size == 1 else None
                else:
                    number = None
                if number is not None:
                    wall = int(event.wall_time * 1000)
                    by_name.setdefault(metric_key(value.tag), {})[int(event.step)] = (number, wall)
    return {
        name: [(step, value, wall) for step, (value, wall) in sorted(points.items())]
        for name, points in sorted(by_name.items())
    }


SERIES_PREFIX = "series/"
"""Where a stage run holds the normalized series (``series/reward_mean``)."""
PROBE_NUMBERS = (
    "separation",
    "pairs",
    "good_mean",
    "bad_mean",
    "records",
    "calls",
    "failed_calls",
    "latency_p50_s",
    "latency_max_s",
    "step_seconds",
    "positive_fraction",
)
"""The fields of a reward probe report (`tuneloop.rounds.reward_probe.ProbeReport`) that become
metrics of the round run."""


def series_curves(stage: Mapping[str, Any], default_ms: int) -> dict[str, Curve]:
    """A stage's normalized series as metric curves under `SERIES_PREFIX`: finite values only,
    stamped with the stage's start (from the record, so logging again writes the same rows)."""
    start = millis(stage.get("started_at")) or default_ms
    curves: dict[str, Curve] = {}
    for name, points in sorted((stage.get("series") or {}).items()):
        by_step: dict[int, float] = {}
        for point in points or []:
            if len(point) < 2:
                continue
            value = finite_number(point[1])
            if value is not None:
                by_step[int(point[0])] = value
        if by_step:
            key = metric_key(f"{SERIES_PREFIX}{name}")
            curves[key] = [(step, value, start) for step, value in sorted(by_step.items())]
    return curves


def findings_tag(findings: Any) -> str:
    """What the monitors found, compact: ``plateau warn@32 reward_mean; loss_divergence
    fail_round@21 train_loss`` (no step: judged on the whole curve); "" for none."""
    parts = []
    for finding in findings or []:
        step = finding.get("step")
        where = f"@{step}" if step is not None else ""
        series = f" {finding['series']}" if finding.get("series") else ""
        parts.append(f"{finding.get('detector')} {finding.get('policy')}{where}{series}")
    return tag_value("; ".join(parts))


def probe_key(probe: Mapping[str, Any], index: int, probes: Any) -> str:
    """The name of a probe in MLflow: its stage when the record's probes name distinct stages,
    else its place in the list, from 1."""
    stages = [str(p.get("stage") or "") for p in probes or []]
    stage = str(probe.get("stage") or "")
    unique = stage and stages.count(stage) == 1
    return metric_key(stage if unique else str(index + 1))


def probe_params(record: Mapping[str, Any]) -> dict[str, str]:
    """Each probe's function and verdict: ``probe.<key>.function``, ``probe.<key>.ok``."""
    probes = record.get("probes") or []
    params: dict[str, str] = {}
    for index, probe in enumerate(probes):
        key = f"probe.{probe_key(probe, index, probes)}"
        if probe.get("function"):
            params[f"{key}.function"] = param_value(str(probe["function"]))
        params[f"{key}.ok"] = "true" if probe.get("ok") else "false"
    return params


def probe_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """Each probe's numbers (`PROBE_NUMBERS`) and its count of problems, as
    ``probe.<key>.separation``, ``probe.<key>.problems``..."""
    probes = record.get("probes") or []
    metrics: dict[str, float] = {}
    for index, probe in enumerate(probes):
        key = f"probe.{probe_key(probe, index, probes)}"
        for field in PROBE_NUMBERS:
            value = finite_number(probe.get(field))
            if value is not None:
                metrics[metric_key(f"{key}.{field}")] = value
        metrics[metric_key(f"{key}.problems")] = float(len(probe.get("problems") or []))
    return metrics


def round_checkpoint(record: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The checkpoint a round produced: its last stage's."""
    for stage in reversed(record.get("stages") or []):
        checkpoint: Mapping[str, Any] | None = stage.get("checkpoint")
        if (checkpoint or {}).get("uri"):
            return checkpoint
    return None


def round_note(record: Mapping[str, Any]) -> str:
    """A round run's description in the MLflow UI: the decision, its reason, the recommendation."""
    decision = record.get("decision") or {}
    lines = [f"**Round {record.get('round')}**: {decision.get('action', 'no decision')}"]
    if decision.get("reason"):
        lines.append("")
        lines.append(str(decision["reason"]))
    if decision.get("recommendation"):
        lines.append("")
        lines.append(f"Recommendation: {decision['recommendation']}")
    return "\n".join(lines)[:MAX_TAG_VALUE]


def tag_value(value: Any) -> str:
    """A tag value MLflow accepts: None as empty, the rest as text cut to MLflow's limit."""
    return ("" if value is None else str(value))[:MAX_TAG_VALUE]


def _now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)
