"""The folders the API server may show files from, and reading inside them only.

A page names a jobs folder and a job (``/tuneloop/jobs/<name>?root=<folder>``); both come from
whoever sends the request. So a file is read only when its real path (symlinks followed) lies
inside one of the **local roots**:

- ``[tuneloop] local_roots`` in Airflow's configuration (``AIRFLOW__TUNELOOP__LOCAL_ROOTS``):
  folders separated by commas or the path separator, e.g. a shared jobs volume;
- ``$TUNELOOP_LOCAL_ROOT``, the local runner's default jobs folder, when it is set;
- the folders of every local campaign in the campaigns folder: ``<output_root>/<campaign>``
  (its jobs, round outputs and ledger) and its ``jobs_root`` when it has one.

A name with ``..``, a relative or absolute path where a name belongs, or a symlink that leads
out of the roots is refused with ``AccessRefusedError``, and nothing of the target is read.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from tuneloop.local.runner import ROOT_ENV
from tuneloop.web.errors import AccessRefusedError

OPTION_SECTION = "tuneloop"
OPTION_KEY = "local_roots"
OPTION_ENV = "AIRFLOW__TUNELOOP__LOCAL_ROOTS"
MAX_JSON_BYTES = 512 * 1024


def configured_roots() -> list[str]:
    """``[tuneloop] local_roots`` and ``$TUNELOOP_LOCAL_ROOT``, as written."""
    value = os.environ.get(OPTION_ENV)
    if value is None:
        try:
            from airflow.configuration import conf

            value = conf.get(OPTION_SECTION, OPTION_KEY, fallback="") or ""
        except ImportError:
            value = ""
    roots = [part.strip() for part in re.split(rf"[,{re.escape(os.pathsep)}]", value)]
    env_root = os.environ.get(ROOT_ENV, "").strip()
    return [root for root in [*roots, env_root] if root]


def local_roots() -> list[Path]:
    """Every local root, resolved (symlinks followed); only absolute paths count."""
    from tuneloop.web.campaigns import folder_campaigns

    candidates: list[Path] = [Path(root) for root in configured_roots()]
    candidates += [path for info in folder_campaigns() for path in info.local_roots]
    roots: list[Path] = []
    for candidate in candidates:
        if not candidate.is_absolute():
            continue
        real = candidate.resolve()
        if real not in roots:
            roots.append(real)
    return roots


def inside(path: Path, roots: Iterable[Path]) -> bool:
    """Whether ``path``'s real location is one of ``roots`` or below one."""
    real = path.resolve()
    return any(real == root or real.is_relative_to(root) for root in roots)


class Roots:
    """Reads confined to a fixed set of resolved folders."""

    def __init__(self, roots: Iterable[Path]) -> None:
        self.roots = [Path(root).resolve() for root in roots]

    def folder(self, value: str) -> Path:
        """The folder ``value`` names (an absolute path), if it lies inside the roots."""
        path = Path(value)
        if not value or "\x00" in value or not path.is_absolute():
            raise AccessRefusedError(f"{value!r} is not an absolute folder path")
        if not inside(path, self.roots):
            raise AccessRefusedError(f"{value} is outside the folders this server may show")
        return path.resolve()

    def child(self, folder: Path, name: str) -> Path:
        """``folder/name`` for a plain ``name`` (no separator, not . or ..), inside the roots."""
        if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
            raise AccessRefusedError(f"{name!r} is not a plain file or folder name")
        path = folder / name
        if (path.exists() or path.is_symlink()) and not inside(path, self.roots):
            raise AccessRefusedError(f"{path} leads outside the folders this server may show")
        return path

    def allows(self, path: Path) -> bool:
        return inside(path, self.roots)

    def read_text(self, path: Path, limit: int = MAX_JSON_BYTES) -> str | None:
        """The file's text (None when missing or too large); refused when it leads out."""
        if not path.exists():
            return None
        if not inside(path, self.roots):
            raise AccessRefusedError(f"{path} leads outside the folders this server may show")
        if not path.is_file() or path.stat().st_size > limit:
            return None
        return path.read_text(encoding="utf-8", errors="replace")
