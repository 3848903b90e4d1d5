"""The absolute http(s) URLs of tuneloop's pages on the Airflow API server.

Workers, the triggerer and the API server compute the same URLs from Airflow's ``[api] base_url``
(``AIRFLOW__API__BASE_URL``), the address people open the UI at; when it is unset, or not an
absolute http(s) URL, ``http://localhost:8080`` (Airflow's default). Only the standard library
is imported at module level: the local job backend builds its console URL here on every status.
"""

from __future__ import annotations

import os
from urllib.parse import quote, urlencode, urlsplit

URL_PREFIX = "/tuneloop"
"""Where the plugin mounts its FastAPI app on the API server."""
JOBS_PATH = f"{URL_PREFIX}/jobs"
MLFLOW_PATH = f"{URL_PREFIX}/mlflow"
DEFAULT_BASE_URL = "http://localhost:8080"
BASE_URL_ENV = "AIRFLOW__API__BASE_URL"


def api_base_url() -> str:
    """Airflow's ``[api] base_url`` without its trailing slash, or ``http://localhost:8080``."""
    value = os.environ.get(BASE_URL_ENV)
    if value is None:
        try:
            from airflow.sdk.configuration import conf
        except ImportError:  # no Airflow in this process (a job, a script)
            value = ""
        else:
            value = conf.get("api", "base_url", fallback="") or ""
    return absolute_base(value)


def absolute_base(value: str) -> str:
    """``value`` if it is an absolute http(s) URL (trailing slash removed), else the default."""
    value = (value or "").strip()
    parts = urlsplit(value)
    if parts.scheme in ("http", "https") and parts.netloc:
        return value.rstrip("/")
    return DEFAULT_BASE_URL


def job_page_url(root: str, name: str, base: str | None = None) -> str:
    """The page of local job ``name`` under the jobs folder ``root``."""
    base = api_base_url() if base is None else absolute_base(base)
    return f"{base}{JOBS_PATH}/{quote(name, safe='')}?{urlencode({'root': str(root)})}"


def mlflow_link_url(
    dag_id: str, run_id: str, task_id: str, map_index: int = -1, base: str | None = None
) -> str:
    """The page that finds the MLflow run of one task instance when it is opened."""
    base = api_base_url() if base is None else absolute_base(base)
    query = {"dag_id": dag_id, "run_id": run_id, "task_id": task_id}
    if map_index is not None and map_index >= 0:
        query["map_index"] = str(map_index)
    return f"{base}{MLFLOW_PATH}?{urlencode(query)}"


def is_http(url: object) -> bool:
    """Whether ``url`` is an absolute http(s) URL (what Airflow's UI shows as a link)."""
    if not isinstance(url, str):
        return False
    parts = urlsplit(url.strip())
    return parts.scheme in ("http", "https") and bool(parts.netloc)
