"""Where relative local paths in a campaign point: the project folder.

A campaign may name local files relatively (``.tuneloop/demo/data/train.jsonl``). Airflow runs
tasks, and the local backend runs jobs, from other working directories, so such paths are made
absolute against ``$TUNELOOP_PROJECT_DIR`` (``make demo`` and ``make airflow`` set it to the
repository), else the working directory of the process that reads the campaign.
"""

from __future__ import annotations

import os
from pathlib import Path

from tuneloop import storage

PROJECT_DIR_ENV = "TUNELOOP_PROJECT_DIR"


def project_dir() -> Path:
    return Path(os.environ.get(PROJECT_DIR_ENV) or Path.cwd())


def absolute(uri: str) -> str:
    """A relative local path made absolute; URIs (s3://, ...) and absolute paths unchanged."""
    if not uri or ("://" in uri and not uri.startswith("file://")):
        return uri
    path = storage.local_path(uri)
    return uri if path.is_absolute() else str(project_dir() / path)
