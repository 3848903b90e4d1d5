"""Where a campaign's files live: relative local paths, the campaign's and each round's folder.

A campaign may name local files relatively (``.tuneloop/demo/data/train.jsonl``). Airflow runs
tasks, and the local backend runs jobs, from other working directories, so such paths are made
absolute against ``$TUNELOOP_PROJECT_DIR`` (``make demo`` and ``make airflow`` set it to the
repository), else the working directory of the process that reads the campaign.

Under the backend's ``output_root``, a campaign keeps everything in one folder named after it
(the ledger, the report, the baseline's output) and each round's job outputs in
``rounds/<nnnn>``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from tuneloop import storage

if TYPE_CHECKING:
    from tuneloop.config.campaign import Campaign

PROJECT_DIR_ENV = "TUNELOOP_PROJECT_DIR"


def project_dir() -> Path:
    return Path(os.environ.get(PROJECT_DIR_ENV) or Path.cwd())


def absolute(uri: str) -> str:
    """A relative local path made absolute; URIs (s3://, ...) and absolute paths unchanged."""
    if not uri or ("://" in uri and not uri.startswith("file://")):
        return uri
    path = storage.local_path(uri)
    return uri if path.is_absolute() else str(project_dir() / path)


def campaign_root(campaign: Campaign) -> str:
    """The campaign's folder: its ledger, report, baseline output and rounds."""
    return storage.join(campaign.backend.output_root, campaign.name)


def round_root(campaign: Campaign, round_number: int) -> str:
    """The folder holding the job outputs of round ``round_number``."""
    return storage.join(campaign_root(campaign), "rounds", f"{round_number:04d}")
