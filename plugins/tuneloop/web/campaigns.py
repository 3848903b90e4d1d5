"""Which campaign a DAG runs, as the API server can tell: its tracking URI and its folders.

A round DAG is built from a campaign file; the API server finds that file

1. in the campaigns folder (``$TUNELOOP_CAMPAIGNS_DIR``, else the repository's
   recipes/campaigns/), the folder ``dags/tuneloop_rounds.py`` builds its DAGs from;
2. else through the DAG itself: the round DAG's description (``doc_md``, written by
   ``tuneloop.pipeline.dag``) names its campaign file, and the API server reads it from the
   serialized DAG in Airflow's database.

Files are loaded again only when they change (modification time and size). Relative local
paths in a campaign are made absolute against ``$TUNELOOP_PROJECT_DIR``, as the workers do: give
the API server the same value.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from tuneloop import storage
from tuneloop.errors import TuneloopError

log = logging.getLogger(__name__)

CAMPAIGN_FILE_LINE = re.compile(r"^- campaign file: `([^`\n]+)`", re.MULTILINE)
"""How ``tuneloop.pipeline.dag`` names a round DAG's campaign file in its ``doc_md``."""


@dataclass(frozen=True)
class CampaignInfo:
    """What the pages need of one campaign."""

    name: str
    dag_id: str
    path: Path
    backend: str
    """local, hyperpod or smtj."""
    root: str
    """The campaign's folder (``<output_root>/<name>``): its jobs, rounds and ledger."""
    tracking_uri: str
    """The MLflow store its rounds are mirrored to ('' when MLflow is off)."""
    jobs_root: str = ""
    """Where a local campaign's job processes keep their folders (``backend.jobs_root``, by
    default ``<root>/jobs``); '' for other backends."""

    @property
    def local_roots(self) -> list[Path]:
        """The campaign's folders on this machine (its folder and its jobs root), when local."""
        if self.backend != "local":
            return []
        return [storage.local_path(p) for p in (self.root, self.jobs_root) if _is_local(p)]


def _is_local(uri: str) -> bool:
    return bool(uri) and ("://" not in uri or uri.startswith("file://"))


_lock = threading.Lock()
_loaded: dict[Path, tuple[tuple[int, int], CampaignInfo | None]] = {}


def load_info(path: Path) -> CampaignInfo | None:
    """The campaign of one file (None when it cannot be loaded), cached while it is unchanged."""
    try:
        stat = path.stat()
    except OSError:
        return None
    key = (stat.st_mtime_ns, stat.st_size)
    with _lock:
        cached = _loaded.get(path)
    if cached is not None and cached[0] == key:
        return cached[1]
    info = _read(path)
    with _lock:
        _loaded[path] = (key, info)
    return info


def _read(path: Path) -> CampaignInfo | None:
    from tuneloop.config.backend import job_backend_config
    from tuneloop.config.file import load_for_rounds as load
    from tuneloop.config.paths import campaign_root
    from tuneloop.rounds.record import tracking_uri

    try:
        cf = load(str(path))
    except (TuneloopError, OSError, ValueError) as error:
        # A broken campaign is reported by the dag-processor; here it has no pages.
        log.info("Campaign file %s not loaded: %s", path, str(error).splitlines()[0])
        return None
    campaign = cf.campaign
    return CampaignInfo(
        name=campaign.name,
        dag_id=campaign.dag_id,
        path=path,
        backend=campaign.backend.type,
        root=campaign_root(campaign),
        tracking_uri=tracking_uri(cf),
        jobs_root=str(job_backend_config(campaign).get("root") or "")
        if campaign.backend.type == "local"
        else "",
    )


def folder_campaigns() -> list[CampaignInfo]:
    """The campaigns of the campaigns folder (the files that load)."""
    from tuneloop.config.file import campaigns_folder

    folder = campaigns_folder()
    try:
        paths = sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])
    except OSError:
        return []
    return [info for path in paths if (info := load_info(path.resolve())) is not None]


def campaign_for_dag(dag_id: str) -> CampaignInfo | None:
    """The campaign whose round DAG is ``dag_id``, or None when it is not a campaign's DAG."""
    for info in folder_campaigns():
        if info.dag_id == dag_id:
            return info
    path = _campaign_file_of_dag(dag_id)
    if path is None:
        return None
    found = load_info(path)
    return found if found is not None and found.dag_id == dag_id else None


def _campaign_file_of_dag(dag_id: str) -> Path | None:
    """The campaign file named in the serialized DAG's ``doc_md`` (None if none or no DB)."""
    try:
        from airflow.models.serialized_dag import SerializedDagModel

        found = SerializedDagModel.get(dag_id)
        data = found.data if found is not None else None
    except Exception as error:  # no metadata database here, or not migrated
        log.info("Could not read DAG %s from Airflow's database: %s", dag_id, error)
        return None
    doc = ((data or {}).get("dag") or {}).get("doc_md") or ""
    match = CAMPAIGN_FILE_LINE.search(doc)
    return Path(match.group(1)).resolve() if match else None
