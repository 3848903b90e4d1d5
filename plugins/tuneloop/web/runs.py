"""Find the MLflow run of a task instance of a round DAG, and read runs of a campaign's store.

``tuneloop.tracking.mirror`` mirrors a round when ``decide`` records it: a campaign run, a round run
tagged ``tuneloop.round`` and ``tuneloop.airflow_run_id`` (the DAG run that trained the round),
and under it a run per stage (``tuneloop.kind=stage``, ``tuneloop.stage=<name>``) and the
evaluation run (``tuneloop.kind=evaluation``). A task maps onto them by its id:

- ``train_<stage>`` and ``checkpoint_<stage>``: the stage run (the round run when the stage
  was skipped in that round);
- ``evaluate``: the evaluation run;
- every other task (``evaluate_baseline``, ``plan_round``, ``decide``, ...): the round run,
  which holds the baseline's metrics beside the round's.

Before ``decide`` has mirrored the round there is no run yet: the answer says so, with the
campaign's experiment. Nothing here writes to MLflow; a local SQLite store that does not exist
yet is not created. mlflow is imported inside functions (the API server pays for it on the
first request that needs it).

MLflow's credentials come from the campaign's ``backend.mlflow_conn_id`` connection or the API
server's environment (`tuneloop.tracking.credentials`), only for the length of each read.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from tuneloop.errors import TuneloopError
from tuneloop.tracking.credentials import mlflow_credentials
from tuneloop.tracking.mirror import (
    MODEL_PREFIX,
    TAG_CAMPAIGN,
    TAG_KIND,
    TAG_NOTE,
    TAG_PARENT,
    TAG_ROUND,
    TAG_STAGE,
    TrackingError,
    TrackingStore,
    quiet_mlflow,
    resolve_store,
)
from tuneloop.web.campaigns import CampaignInfo
from tuneloop.web.errors import RunsUnavailableError

log = logging.getLogger(__name__)

TAG_AIRFLOW_RUN = "tuneloop.airflow_run_id"
PENDING = "recorded when the round is decided"
"""What the page says before ``decide`` has mirrored the round."""

_clients: dict[str, Any] = {}
_clients_lock = threading.Lock()
_connections: dict[Path, tuple[tuple[int, int], str]] = {}


def public_uri(uri: str) -> str:
    """``uri`` without user and password (a server URL may carry them)."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri.rstrip("/")
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=netloc)).rstrip("/")


def without_password(text: str, uri: str) -> str:
    """``text`` with the password of ``uri`` (if any) replaced by ***."""
    password = urlsplit(uri).password if "://" in uri else None
    return text.replace(password, "***") if password else text


def task_target(task_id: str) -> tuple[str, str | None]:
    """(run kind, stage) of the MLflow run a task's link opens."""
    for prefix in ("train_", "checkpoint_"):
        if task_id.startswith(prefix) and len(task_id) > len(prefix):
            return "stage", task_id[len(prefix) :]
    if task_id == "evaluate":
        return "evaluation", None
    return "round", None


class CampaignRuns:
    """Read-only access to one campaign's runs in its MLflow store."""

    def __init__(self, info: CampaignInfo) -> None:
        self.info = info
        self.experiment_name = f"{MODEL_PREFIX}{info.name}"
        try:
            self.store: TrackingStore = resolve_store(info.tracking_uri)
        except (TrackingError, OSError) as error:
            raise RunsUnavailableError(
                without_password(_first_line(error), info.tracking_uri)
            ) from None
        self.where = public_uri(self.store.uri)
        self.conn_id = tracking_connection(info.path)

    @property
    def is_server(self) -> bool:
        return self.store.kind == "server"

    def server_url(self, fragment: str) -> str:
        """A page of the MLflow server's UI (``#/experiments/...``)."""
        return f"{public_uri(self.store.uri)}/{fragment}"

    # -- reading -----------------------------------------------------------------------------

    def experiment_id(self) -> str | None:
        """The campaign's experiment, or None when nothing was mirrored yet."""
        if not self._store_exists():
            return None
        with self._reading("find the experiment"):
            found = self._client().get_experiment_by_name(self.experiment_name)
        if found is None or found.lifecycle_stage == "deleted":
            return None
        return str(found.experiment_id)

    def round_runs(self, experiment_id: str) -> list[Any]:
        """The campaign's round runs, newest round first."""
        runs = self._search(
            experiment_id, f"tags.`{TAG_CAMPAIGN}` = '{_quoted(self.info.name)}'", "round"
        )
        return sorted(runs, key=lambda r: -int(r.data.tags.get(TAG_ROUND, "0") or 0))

    def round_run_of(self, experiment_id: str, airflow_run_id: str) -> Any | None:
        """The round run that DAG run ``airflow_run_id`` recorded."""
        for run in self.round_runs(experiment_id):
            if run.data.tags.get(TAG_AIRFLOW_RUN) == airflow_run_id:
                return run
        return None

    def children(self, experiment_id: str, parent_id: str) -> list[Any]:
        runs = self._search(experiment_id, f"tags.`{TAG_PARENT}` = '{_quoted(parent_id)}'")
        return sorted(runs, key=lambda r: r.info.start_time or 0)

    def target_run(self, experiment_id: str, round_run: Any, task_id: str) -> tuple[Any, str]:
        """The run a task's link opens, and a note when it falls back to the round run."""
        kind, stage = task_target(task_id)
        if kind == "round":
            return round_run, ""
        for child in self.children(experiment_id, round_run.info.run_id):
            tags = child.data.tags
            if tags.get(TAG_KIND) == kind and (stage is None or tags.get(TAG_STAGE) == stage):
                return child, ""
        what = f"stage {stage!r}" if stage else "the evaluation"
        return round_run, f"the round has no MLflow run for {what}: showing the round's run"

    def run(self, run_id: str) -> Any | None:
        """A run of this campaign by id (None when it is not one of the campaign's)."""
        from mlflow.exceptions import MlflowException

        if not self._store_exists():
            return None
        try:
            with self._reading(f"read run {run_id}"):
                found = self._client().get_run(run_id)
        except RunsUnavailableError as error:
            if isinstance(error.__cause__, MlflowException):
                return None
            raise
        if found.data.tags.get(TAG_CAMPAIGN) != self.info.name:
            return None
        return found

    def describe(self, run: Any, experiment_id: str | None = None) -> dict[str, Any]:
        """A run as the page shows it: times, tags of tuneloop, params, latest metrics."""
        tags = dict(run.data.tags)
        shown_tags = {k: v for k, v in sorted(tags.items()) if k.startswith("tuneloop.")}
        children = self.children(experiment_id or run.info.experiment_id, run.info.run_id)
        return {
            "run_id": run.info.run_id,
            "name": run.info.run_name,
            "experiment_id": str(run.info.experiment_id),
            "status": run.info.status,
            "start_time": run.info.start_time,
            "end_time": run.info.end_time,
            "kind": tags.get(TAG_KIND, ""),
            "round": tags.get(TAG_ROUND),
            "stage": tags.get(TAG_STAGE),
            "parent_id": tags.get(TAG_PARENT),
            "note": tags.get(TAG_NOTE, ""),
            "tags": shown_tags,
            "params": dict(sorted(run.data.params.items())),
            "metrics": dict(sorted(run.data.metrics.items())),
            "children": [
                {
                    "run_id": child.info.run_id,
                    "name": child.info.run_name,
                    "kind": child.data.tags.get(TAG_KIND, ""),
                    "stage": child.data.tags.get(TAG_STAGE),
                }
                for child in children
            ],
        }

    # -- plumbing ----------------------------------------------------------------------------

    def _store_exists(self) -> bool:
        """False for a local SQLite store whose database file does not exist yet."""
        if self.store.kind != "local":
            return True
        return Path(self.store.uri.removeprefix("sqlite:///")).is_file()

    def _client(self) -> Any:
        uri = self.store.uri
        with _clients_lock:
            client = _clients.get(uri)
            if client is None:
                from mlflow import MlflowClient

                client = _clients[uri] = MlflowClient(tracking_uri=uri, registry_uri=uri)
        return client

    def _search(self, experiment_id: str, filter_string: str, kind: str | None = None) -> list[Any]:
        from mlflow.entities import ViewType

        if kind is not None:
            filter_string += f" and tags.`{TAG_KIND}` = '{kind}'"
        runs: list[Any] = []
        token = None
        with self._reading("search runs"):
            while True:
                page = self._client().search_runs(
                    [experiment_id],
                    filter_string=filter_string,
                    run_view_type=ViewType.ACTIVE_ONLY,
                    max_results=1000,
                    page_token=token,
                )
                runs.extend(page)
                token = page.token
                if not token:
                    return runs

    def _reading(self, action: str) -> Any:
        return _Reading(action, self.store.uri, self.conn_id)


def tracking_connection(path: Path) -> str:
    """The campaign file's ``backend.mlflow_conn_id`` ('' when it names none or does not
    load), read again only when the file changes."""
    from tuneloop.config.file import load_campaign

    try:
        stat = path.stat()
    except OSError:
        return ""
    key = (stat.st_mtime_ns, stat.st_size)
    with _clients_lock:
        cached = _connections.get(path)
    if cached is not None and cached[0] == key:
        return cached[1]
    try:
        conn_id = load_campaign(path).campaign.backend.mlflow_conn_id
    except (TuneloopError, OSError, ValueError):
        conn_id = ""
    with _clients_lock:
        _connections[path] = (key, conn_id)
    return conn_id


class _Reading:
    """MLflow calls, quietly and with the campaign's credentials; a failure becomes
    RunsUnavailableError naming the store (without its password)."""

    def __init__(self, action: str, uri: str, conn_id: str = "") -> None:
        self.action = action
        self.uri = uri
        self._quiet = quiet_mlflow(uri)
        self._credentials = mlflow_credentials(conn_id)

    def __enter__(self) -> None:
        try:
            self._credentials.__enter__()
        except Exception as error:  # no connection, or Airflow could not be asked for it
            message = f"could not {self.action} in MLflow at {public_uri(self.uri)}"
            raise RunsUnavailableError(f"{message}: {_first_line(error)}") from None
        self._quiet.__enter__()

    def __exit__(self, kind: Any, error: BaseException | None, trace: Any) -> Literal[False]:
        try:
            self._quiet.__exit__(kind, error, trace)
        finally:
            self._credentials.__exit__(kind, error, trace)
        if error is None or isinstance(error, RunsUnavailableError):
            return False
        import requests
        from mlflow.exceptions import MlflowException

        if isinstance(error, MlflowException | requests.RequestException | OSError):
            where = public_uri(self.uri)
            message = f"could not {self.action} in MLflow at {where}: {_first_line(error)}"
            raise RunsUnavailableError(without_password(message, self.uri)) from error
        return False


def planned_round(dag_id: str, run_id: str) -> int | None:
    """The round DAG run ``run_id`` planned (plan_round's XCom ``round``), if Airflow has it."""
    try:
        from airflow.models.xcom import XComModel
        from airflow.utils.session import create_session
        from sqlalchemy import select

        with create_session() as session:
            value = session.scalar(
                select(XComModel.value).where(
                    XComModel.dag_id == dag_id,
                    XComModel.run_id == run_id,
                    XComModel.task_id == "plan_round",
                    XComModel.key == "round",
                )
            )
    except Exception as error:  # no metadata database in this process
        log.info("Could not read the round of %s/%s: %s", dag_id, run_id, error)
        return None
    try:
        data: Any = json.loads(value) if isinstance(value, str) else value
        return int(data["start"]["round"])
    except (TypeError, ValueError, KeyError):
        return None


def _quoted(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# -- what the pages ask ---------------------------------------------------------------------


def resolve_task_run(dag_id: str, run_id: str, task_id: str) -> dict[str, Any]:
    """Where the "MLflow run" link of one task instance leads.

    ``status`` is ``redirect`` (``redirect``: the run in the MLflow server's UI), ``found``
    (``run``: the run, to render here), ``pending`` (the round is not mirrored yet),
    ``not_campaign``, ``off`` (the campaign has no MLflow store) or ``error``; ``message``
    says it in a sentence.
    """
    from tuneloop.web.campaigns import campaign_for_dag

    out: dict[str, Any] = {
        "dag_id": dag_id,
        "run_id": run_id,
        "task_id": task_id,
        "campaign": None,
        "status": "",
        "message": "",
        "redirect": "",
        "experiment_id": None,
        "experiment_url": "",
        "round": None,
        "run": None,
        "note": "",
    }
    info = campaign_for_dag(dag_id)
    if info is None:
        out["status"] = "not_campaign"
        out["message"] = (
            f"DAG {dag_id} is not the round DAG of a campaign this server knows, so its tasks "
            "have no MLflow run. (The API server reads campaign files from "
            "$TUNELOOP_CAMPAIGNS_DIR, or the file a round DAG names.)"
        )
        return out
    out["campaign"] = info.name
    if not info.tracking_uri:
        out["status"] = "off"
        out["message"] = (
            f"Campaign {info.name} does not mirror its rounds to MLflow: "
            f"set backend.mlflow_uri in {info.path}."
        )
        return out
    try:
        runs = CampaignRuns(info)
        experiment = runs.experiment_id()
        out["experiment_id"] = experiment
        if runs.is_server:
            fragment = f"#/experiments/{experiment}" if experiment else "#/experiments"
            out["experiment_url"] = runs.server_url(fragment)
        round_run = runs.round_run_of(experiment, run_id) if experiment else None
        if round_run is None or not experiment:
            number = planned_round(dag_id, run_id)
            out["round"] = number
            which = f"round {number}" if number is not None else "this DAG run's round"
            out["status"] = "pending"
            out["message"] = (
                f"The MLflow run of {which} of campaign {info.name} is {PENDING}: task decide "
                f"of DAG run {run_id} mirrors the round to MLflow ({runs.where})."
            )
            return out
        out["round"] = int(round_run.data.tags.get(TAG_ROUND, "0") or 0)
        target, out["note"] = runs.target_run(experiment, round_run, task_id)
        if runs.is_server:
            out["status"] = "redirect"
            out["redirect"] = runs.server_url(
                f"#/experiments/{experiment}/runs/{target.info.run_id}"
            )
            out["message"] = f"The run is in the MLflow server at {runs.where}."
        else:
            out["status"] = "found"
            out["run"] = runs.describe(target, experiment)
            out["message"] = f"Read from the campaign's MLflow store ({runs.where})."
    except RunsUnavailableError as error:
        out["status"] = "error"
        out["message"] = str(error)
    return out


def experiment_view(info: CampaignInfo) -> dict[str, Any]:
    """The campaign's experiment: its round runs, newest first (no runs yet: an empty list)."""
    runs = CampaignRuns(info)
    experiment = runs.experiment_id()
    rounds = []
    if experiment is not None:
        for run in runs.round_runs(experiment):
            tags = run.data.tags
            rounds.append(
                {
                    "run_id": run.info.run_id,
                    "name": run.info.run_name,
                    "round": tags.get(TAG_ROUND),
                    "airflow_run_id": tags.get(TAG_AIRFLOW_RUN, ""),
                    "decision": tags.get("tuneloop.decision.action", ""),
                    "reason": tags.get("tuneloop.decision.reason", ""),
                    "metrics": dict(sorted(run.data.metrics.items())),
                }
            )
    return {
        "campaign": info.name,
        "experiment": runs.experiment_name,
        "experiment_id": experiment,
        "store": runs.where,
        "server_url": runs.server_url(f"#/experiments/{experiment}") if runs.is_server else "",
        "rounds": rounds,
    }
