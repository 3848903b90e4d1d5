"""Evaluation results: the metrics an evaluation job wrote, read from its output folder.

A Nova evaluation job on HyperPod (and a local one) writes
``<output>/eval-result/results_<timestamp>.json``, lighteval-style::

    {"results": {"custom|gen_qa_gen_qa|0": {"rougeL": 0.91, ...}, "all": {"rougeL": 0.91, ...}}}

``read_eval_metrics`` takes the newest such file (by name, which carries the timestamp; then by
modification time) and returns the numbers under ``results.all``.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from tuneloop import storage
from tuneloop.errors import Problem, StorageError, TuneloopError

EVAL_DIR = "eval-result"
RESULTS_FILE = re.compile(r"^results_.*\.json$")


class EvalResultsError(TuneloopError):
    """An evaluation output folder holds no usable results."""


def _local_candidates(folder: Path) -> list[tuple[str, float, str]]:
    if not folder.is_dir():
        return []
    return [
        (path.name, path.stat().st_mtime, str(path))
        for path in folder.rglob("results_*.json")
        if path.is_file() and RESULTS_FILE.match(path.name)
    ]


def _s3_candidates(folder: str) -> list[tuple[str, float, str]]:
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = storage.split_s3(folder)
    prefix = prefix.rstrip("/") + "/"
    found = []
    try:
        pages = storage.s3_client().get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                name = item["Key"].rsplit("/", 1)[-1]
                if RESULTS_FILE.match(name):
                    found.append(
                        (name, item["LastModified"].timestamp(), f"s3://{bucket}/{item['Key']}")
                    )
    except (ClientError, BotoCoreError) as exc:
        raise StorageError([Problem("", f"cannot list {folder}: {exc}")]) from None
    return found


def find_results(output_uri: str) -> str:
    """The newest ``results_*.json`` under ``<output_uri>/eval-result/`` (a results file itself
    is returned as is)."""
    name = output_uri.rstrip("/").rsplit("/", 1)[-1]
    if RESULTS_FILE.match(name):
        return output_uri
    base = output_uri.rstrip("/")
    folder = base if name == EVAL_DIR else storage.join(base, EVAL_DIR)
    if storage.is_s3(folder):
        candidates = _s3_candidates(folder)
    else:
        candidates = _local_candidates(storage.local_path(folder))
    if not candidates:
        raise EvalResultsError(
            [
                Problem(
                    "",
                    f"no results_*.json under {folder}",
                    fix="point at the output folder of an evaluation job that finished",
                )
            ]
        )
    return max(candidates)[2]


def parse_eval_results(text: str, source: str = "") -> dict[str, float]:
    """The numeric metrics under ``results.all`` of a results file's text."""
    try:
        data: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EvalResultsError(
            [Problem("", f"not valid JSON ({exc.msg}, line {exc.lineno})", source)]
        ) from None
    results = data.get("results") if isinstance(data, dict) else None
    values = results.get("all") if isinstance(results, dict) else None
    if not isinstance(values, dict):
        raise EvalResultsError([Problem("results.all", "missing or not an object", source)])
    metrics = {
        key: float(value)
        for key, value in values.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    }
    if not metrics:
        raise EvalResultsError([Problem("results.all", "holds no numeric metric", source)])
    return metrics


def read_eval_metrics(output_uri: str) -> dict[str, float]:
    """``{metric: value}`` from the newest results file of an evaluation job's output folder
    (a local path, file:// or s3:// URI)."""
    path = find_results(output_uri)
    try:
        text = storage.read_text(path)
    except FileNotFoundError:
        raise EvalResultsError([Problem("", f"{path} disappeared while reading it")]) from None
    return parse_eval_results(text, path)
