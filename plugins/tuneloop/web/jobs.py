"""A local job as its page shows it: state, progress, times, log tail and outputs.

Read from the job's folder (``tuneloop.local.runner``: ``status.json``, ``job.json``,
``job.log``) and its output folder (``manifest.json``, ``checkpoint.json``,
``eval-result/results_*.json``), through ``Roots`` only. Reading changes nothing: the state is
the one recorded by the job and by whoever last polled it (the task's trigger, every few
seconds while it waits).

What is left out on purpose: the job's environment (never written to the job folder either),
and everything outside the local roots.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tuneloop import storage
from tuneloop.artifacts.manifest import CHECKPOINT_RECORD, MANIFEST
from tuneloop.errors import TuneloopError
from tuneloop.local import runner as local
from tuneloop.web.errors import AccessRefusedError, JobMissingError
from tuneloop.web.roots import Roots

EVAL_DIR = "eval-result"
DEFAULT_LINES = 200
MAX_LINES = 5000
MAX_LOG_BYTES = 2 * 1024 * 1024
MAX_LISTED = 200
MAX_RESULTS = 20


def clamp_lines(lines: int | None) -> int:
    return max(1, min(MAX_LINES, int(lines or DEFAULT_LINES)))


def job_view(roots: Roots, root: str, name: str, lines: int = DEFAULT_LINES) -> dict[str, Any]:
    """Everything the job page shows, as JSON-ready data.

    Raises ``AccessRefusedError`` for a folder outside the roots or a name that is not a job name,
    ``JobMissingError`` when no such job exists.
    """
    try:
        local.validate_name(name)
    except TuneloopError:
        raise AccessRefusedError(f"{name!r} is not a job name (a DNS label)") from None
    folder = roots.folder(root)
    directory = roots.child(folder, name)
    status_text = roots.read_text(directory / local.STATUS_FILE) if directory.is_dir() else None
    spec_text = roots.read_text(directory / local.SPEC_FILE) if directory.is_dir() else None
    if status_text is None or spec_text is None:
        raise JobMissingError(f"no job {name!r} in {folder}")
    try:
        status = local.JobStatus.from_dict(json.loads(status_text))
        spec = local.JobSpec.from_dict(json.loads(spec_text))
    except (ValueError, TypeError) as error:
        raise JobMissingError(f"{directory} is not a readable job folder ({error})") from None
    started, ended = local.parse_iso(status.started_at), local.parse_iso(status.ended_at)
    end = ended or (datetime.now(UTC) if started and not status.final else None)
    return {
        "name": spec.name,
        "root": str(folder),
        "state": status.state.value,
        "final": status.final,
        "summary": status.summary(),
        "message": status.message,
        "reason": status.reason,
        "exit_code": status.exit_code,
        "kind": spec.kind,
        "labels": dict(spec.labels),
        "entrypoint": spec.entrypoint,
        "created_at": status.created_at or spec.created_at,
        "started_at": status.started_at,
        "ended_at": status.ended_at,
        "duration_seconds": (end - started).total_seconds() if started and end else None,
        "progress": _progress(status),
        "log": _log(roots, directory / local.LOG_FILE, clamp_lines(lines)),
        "outputs": _outputs(roots, spec.output),
        "recipe": spec.recipe,
    }


def _progress(status: local.JobStatus) -> dict[str, Any] | None:
    progress = status.progress
    if progress is None:
        return None
    running = not status.final
    remaining = progress.remaining() if running else None
    return {
        "step": progress.step,
        "total": progress.total,
        "fraction": progress.fraction,
        "eta": progress.eta if running else None,
        "eta_seconds": remaining,
        "eta_text": local.format_duration(remaining) if remaining is not None else "",
        "updated_at": progress.updated_at,
    }


def _log(roots: Roots, path: Path, lines: int) -> dict[str, Any]:
    if not path.exists():
        return {"lines": [], "size": 0, "shown": lines}
    if not roots.allows(path):
        raise AccessRefusedError(f"{path} leads outside the folders this server may show")
    size = path.stat().st_size
    text = local.tail_text(path, lines, max_bytes=min(MAX_LOG_BYTES, max(64 * 1024, lines * 400)))
    return {"lines": text.splitlines() if text else [], "size": size, "shown": lines}


def _outputs(roots: Roots, uri: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "uri": uri,
        "shown": False,
        "why": "",
        "files": [],
        "manifest": None,
        "checkpoint": None,
        "evaluation": [],
    }
    if not uri or ("://" in uri and not uri.startswith("file://")):
        out["why"] = "the outputs are not on this machine"
        return out
    folder = storage.local_path(uri)
    if not folder.is_absolute() or not roots.allows(folder):
        out["why"] = "the output folder is outside the folders this server may show"
        return out
    if not folder.is_dir():
        out["why"] = "nothing written yet"
        return out
    out["shown"] = True
    entries = sorted(folder.iterdir(), key=lambda p: p.name)[:MAX_LISTED]
    out["files"] = [_entry(roots, entry) for entry in entries]
    out["manifest"] = _json(roots, folder / MANIFEST)
    out["checkpoint"] = _json(roots, folder / CHECKPOINT_RECORD)
    results = folder / EVAL_DIR
    if results.is_dir() and roots.allows(results):
        files = sorted(
            (p for p in results.iterdir() if p.name.startswith("results_")),
            key=lambda p: p.name,
            reverse=True,
        )[:MAX_RESULTS]
        for path in files:
            data = _json(roots, path)
            if isinstance(data, dict):
                found = (data.get("results") or {}).get("all")
                out["evaluation"].append(
                    {"file": path.name, "metrics": found if isinstance(found, dict) else {}}
                )
    return out


def _entry(roots: Roots, path: Path) -> dict[str, Any]:
    allowed = roots.allows(path)
    is_dir = allowed and path.is_dir()
    size = path.stat().st_size if allowed and path.is_file() else None
    return {"name": path.name, "dir": is_dir, "size": size, "outside": not allowed}


def _json(roots: Roots, path: Path) -> Any:
    try:
        text = roots.read_text(path)
    except AccessRefusedError:
        return None
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None
