"""Evaluation results: the metrics an evaluation job wrote, read from its output.

A Nova evaluation job writes ``results_<timestamp>.json``, lighteval-style::

    {"results": {"custom|gen_qa_gen_qa|0": {"rougeL": 0.91, ...}, "all": {"rougeL": 0.91, ...}}}

On HyperPod (and the local backend) it lands in ``<output>/<job>/eval-result/``; a SageMaker
training job packs it into ``<output>/<job>/output/output.tar.gz`` as
``<job>/eval_results/results_<timestamp>.json`` (beside inference_output.jsonl and TensorBoard
events). ``read_eval_metrics`` takes the job folder, the eval-result folder, a results file or the
tarball, picks the newest results file (by name, which carries the timestamp; then by
modification time) and returns the numbers under ``results.all``. A tarball is streamed: only the
results files are held in memory. ``artifacts.format_compliance`` finds the job's answers
(inference_output.jsonl) the same way.

Beside the task's metrics, the local backend's results may hold ``perplexity`` (PERPLEXITY) on
the campaign's domain texts.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from tuneloop import storage
from tuneloop.errors import Problem, StorageError, TuneloopError

PERPLEXITY = "perplexity"
"""exp(mean negative log-likelihood per token) of the model on a domain text set; lower is
better. The local backend's evaluation reports it beside the task's metrics."""

EVAL_DIR = "eval-result"
RESULTS_FILE = re.compile(r"^results_.*\.json$")
# Where a training job's evaluation results are packed, relative to the job folder.
JOB_TARBALL = "output/output.tar.gz"
TARBALL_SUFFIXES = (".tar.gz", ".tgz", ".tar")


class EvalResultsError(TuneloopError):
    """An evaluation output folder holds no usable results."""


def _local_candidates(
    folder: Path, name_glob: str = "results_*.json", pattern: re.Pattern[str] = RESULTS_FILE
) -> list[tuple[str, float, str]]:
    """(name, mtime, path) of the regular files under ``folder`` whose name matches."""
    if not folder.is_dir():
        return []
    return [
        (path.name, path.stat().st_mtime, str(path))
        for path in folder.rglob(name_glob)
        if path.is_file() and pattern.match(path.name)
    ]


def _s3_candidates(
    folder: str, pattern: re.Pattern[str] = RESULTS_FILE
) -> list[tuple[str, float, str]]:
    """(name, last modified, URI) of the objects under ``folder`` whose name matches."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = storage.split_s3(folder)
    prefix = prefix.rstrip("/") + "/"
    found = []
    try:
        pages = storage.s3_client().get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                name = item["Key"].rsplit("/", 1)[-1]
                if pattern.match(name):
                    found.append(
                        (name, item["LastModified"].timestamp(), f"s3://{bucket}/{item['Key']}")
                    )
    except (ClientError, BotoCoreError) as exc:
        raise StorageError([Problem("", f"cannot list {folder}: {exc}")]) from None
    return found


def _no_results(where: str) -> EvalResultsError:
    return EvalResultsError(
        [
            Problem(
                "",
                f"no results_*.json under {where}",
                fix="point at the output folder of an evaluation job that finished",
            )
        ]
    )


def find_results(output_uri: str) -> str:
    """The newest ``results_*.json`` under ``<output_uri>/eval-result/`` (a results file itself
    is returned as is). The folder layout only; ``read_eval_metrics`` also reads tarballs."""
    name = output_uri.rstrip("/").rsplit("/", 1)[-1]
    if RESULTS_FILE.match(name):
        return output_uri
    base = output_uri.rstrip("/")
    folder = base if name == EVAL_DIR else storage.join(base, EVAL_DIR)
    found = newest_file(folder)
    if found is None:
        raise _no_results(folder)
    return found


def newest_file(
    folder: str, name_glob: str = "results_*.json", pattern: re.Pattern[str] = RESULTS_FILE
) -> str | None:
    """The newest regular file under ``folder`` (local or s3://, searched recursively) whose
    name matches ``pattern`` (``name_glob`` narrows a local search first): the greatest name,
    then the latest modification time. None when there is none."""
    if storage.is_s3(folder):
        candidates = _s3_candidates(folder, pattern)
    else:
        candidates = _local_candidates(storage.local_path(folder), name_glob, pattern)
    return max(candidates)[2] if candidates else None


def job_tarballs(output_uri: str) -> list[str]:
    """Where a SageMaker training job packed its output, relative to ``output_uri`` (the job
    folder, or its ``output/`` folder)."""
    base = output_uri.rstrip("/")
    tarballs = [storage.join(base, JOB_TARBALL)]
    if base.rsplit("/", 1)[-1] == "output":  # the job's output/ folder rather than the job's
        tarballs.append(storage.join(base, "output.tar.gz"))
    return tarballs


def parse_eval_results(text: str | bytes, source: str = "") -> dict[str, float]:
    """The numeric metrics under ``results.all`` of a results file's text."""
    try:
        data: Any = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        detail = f"{exc.msg}, line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else exc
        raise EvalResultsError([Problem("", f"not valid JSON ({detail})", source)]) from None
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


def is_tarball(uri: str) -> bool:
    return uri.rstrip("/").endswith(TARBALL_SUFFIXES)


def _is_results_member(name: str) -> bool:
    return bool(RESULTS_FILE.match(name.rsplit("/", 1)[-1]))


def read_tarball_metrics(tarball_uri: str) -> dict[str, float]:
    """``{metric: value}`` from the newest results file packed in a job's output.tar.gz.

    FileNotFoundError when the tarball does not exist; EvalResultsError when it holds no
    results file or the newest is unusable.
    """
    newest: tuple[str, float, bytes, str] | None = None
    for member in storage.tar_members(tarball_uri, _is_results_member):
        basename = member.name.rsplit("/", 1)[-1]
        key = (basename, member.mtime, member.data, member.name)
        if newest is None or key[:2] > newest[:2]:
            newest = key
    if newest is None:
        raise EvalResultsError(
            [
                Problem(
                    "",
                    f"{tarball_uri} holds no results_*.json (an evaluation job packs them as "
                    "<job>/eval_results/results_<timestamp>.json)",
                    fix="point at the output of an evaluation job that finished; a training "
                    "job's output.tar.gz holds a manifest, not results",
                )
            ]
        )
    return parse_eval_results(newest[2], f"{tarball_uri}!{newest[3]}")


def read_eval_metrics(output_uri: str) -> dict[str, float]:
    """``{metric: value}`` from the newest results file of an evaluation job's output.

    ``output_uri`` (a local path, file:// or s3:// URI) is the job folder, its eval-result
    folder, a results file, or an output.tar.gz. A job folder without ``eval-result/`` is read
    from the ``output/output.tar.gz`` a SageMaker training job leaves there.
    """
    if is_tarball(output_uri):
        try:
            return read_tarball_metrics(output_uri.rstrip("/"))
        except FileNotFoundError:
            raise _no_results(f"{output_uri}: the archive does not exist") from None
    try:
        path = find_results(output_uri)
    except EvalResultsError:
        name = output_uri.rstrip("/").rsplit("/", 1)[-1]
        if name == EVAL_DIR or RESULTS_FILE.match(name):
            raise
        base = output_uri.rstrip("/")
        tarballs = job_tarballs(base)
        for tarball in tarballs:
            try:
                return read_tarball_metrics(tarball)
            except FileNotFoundError:
                continue
        looked = f"{storage.join(base, EVAL_DIR)}, nor in {' or '.join(tarballs)}"
        raise _no_results(looked) from None
    try:
        text = storage.read_text(path)
    except FileNotFoundError:
        raise EvalResultsError([Problem("", f"{path} disappeared while reading it")]) from None
    return parse_eval_results(text, path)
