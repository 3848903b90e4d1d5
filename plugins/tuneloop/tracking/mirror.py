"""Mirror the round ledger into MLflow: a run per campaign, a child run per round, nested runs.

The ledger is the source of truth; MLflow is a view of it that people browse and compare. So
everything here is idempotent and keyed on the ledger's identities, never on time:

- the campaign run is found again by its tags (``tuneloop.kind=campaign``, ``tuneloop.campaign``)
  and never duplicated; a round run by ``tuneloop.round``; a stage run by ``tuneloop.stage``
  under its round run; the evaluation run likewise (``tuneloop.kind=evaluation``);
- metric timestamps come from the record (`tuneloop.artifacts.training_metrics` turns a record into
  params, metrics and tags, the same way on every call), so logging a round again writes rows
  MLflow already holds and drops them; params are logged only when missing;
- a round run holds the record's digest once it is complete: logging the same record again
  only re-checks the champion alias.

What each run holds: a stage run its rendered recipe (params and ``recipe.yaml``), the job's raw
training curves, the normalized series as per-step metrics ``series/<name>`` (finite points only),
what the monitors found (tag ``tuneloop.findings``) and why monitoring stopped it (tag
``tuneloop.stopped_early``); a round run the evaluation's metrics, deltas, timings, the reward
probes (``probe.<stage or n>.separation``, ...), why it failed (tag ``tuneloop.failed``), the
record as ``round.json`` and the round report (``report/``: report.md, report.png, training.png).

One registered model per campaign (``tuneloop-<campaign>``) gets a version per promoted round.
No weights are logged: the version's source is the checkpoint URI itself when it is remote
(``s3://...``); a local checkpoint folder is not accepted as a source by an MLflow server (it
must lie inside the run's artifacts), so the version points at ``runs:/<round run>/checkpoint``,
a small ``checkpoint.json`` that names the checkpoint. Either way the version is tagged
``tuneloop.checkpoint_uri``. The alias ``champion`` always names the ledger's champion: moved on
promotion, put back on the champion's version after a rollback.

Where tracking goes (``Tracker(tracking_uri=...)``):

- a folder (the demo's default): ``sqlite:///<folder>/mlflow.db``, artifacts in
  ``<folder>/artifacts``; open it with ``mlflow ui --backend-store-uri sqlite:///<folder>/mlflow.db``;
- ``sqlite:///path.db``: artifacts in ``artifacts/`` beside the database file;
- ``http(s)://host:port``: an MLflow tracking server (its artifact settings apply);
- ``arn:aws:sagemaker:<region>:<account>:mlflow-tracking-server/<name>`` or ``.../mlflow-app/<id>``:
  SageMaker managed MLflow, through the ``sagemaker-mlflow`` package that the workers'
  requirements.txt installs (MLflow's plugin that signs requests with the worker's AWS
  credentials); `sagemaker_mlflow` keeps its request hooks to ARNs, so other URIs go without
  its header and its warnings.

An unreachable server raises `TrackingError` (after MLflow's own HTTP retries, tuned with
``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` and ``MLFLOW_HTTP_REQUEST_TIMEOUT``); the caller decides
whether a round may finish untracked. Logging it again later fills MLflow in.

mlflow is imported inside functions: DAG files import this module at parse time.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from tuneloop.artifacts.training_metrics import (
    MAX_TAG_VALUE,
    METRICS_PER_BATCH,
    PARAMS_PER_BATCH,
    findings_tag,
    finite_number,
    finite_scalars,
    flatten,
    metric_key,
    millis,
    param_value,
    record_digest,
    round_checkpoint,
    round_metrics,
    round_note,
    round_params,
    round_times,
    series_curves,
    stage_params,
    tag_value,
    training_curves,
)
from tuneloop.errors import Problem, TuneloopError

MODEL_PREFIX = "tuneloop-"
CHAMPION_ALIAS = "champion"
LOCAL_DB = "mlflow.db"
LOCAL_ARTIFACTS = "artifacts"
LOCAL_UI = "http://127.0.0.1:5000"
"""Where ``mlflow ui`` serves by default."""

INVALID_HOST = "Invalid Host header"
"""How an MLflow server refuses a Host it was not told to answer to (403)."""
TAG_CAMPAIGN = "tuneloop.campaign"
TAG_KIND = "tuneloop.kind"
TAG_ROUND = "tuneloop.round"
TAG_STAGE = "tuneloop.stage"
TAG_RECORD = "tuneloop.record_sha256"
"""Set on a round run when everything of the record is logged: the run is complete."""
TAG_FINDINGS = "tuneloop.findings"
"""On a stage run: what the monitors found (`training_metrics.findings_tag`)."""
TAG_STOPPED_EARLY = "tuneloop.stopped_early"
"""On a stage run: why monitoring stopped its job."""
TAG_FAILED = "tuneloop.failed"
"""On a round run: why the round failed before its evaluation."""
TAG_PARENT = "mlflow.parentRunId"
TAG_NOTE = "mlflow.note.content"

CHECKPOINT_ARTIFACT = "checkpoint"
REPORT_ARTIFACT = "report"

# Loggers whose INFO lines are noise to an Airflow task log (database migrations on first use,
# "waiting for model version creation"). Warnings and errors still come through.
_NOISY_LOGGERS = ("mlflow", "alembic")

StoreKind = Literal["local", "database", "server", "sagemaker"]
Kind = Literal["campaign", "round", "stage", "evaluation"]
UNCHANGED = object()
"""The champion alias stays where it is."""


class TrackingError(TuneloopError):
    """MLflow could not be reached, or refused what was logged. The ledger still holds the round."""


@dataclass(frozen=True)
class TrackingStore:
    """Where tracking goes, resolved from the URI a campaign names."""

    uri: str
    """What MLflow's client is given (a folder becomes a sqlite URI)."""
    kind: StoreKind
    artifact_location: str | None = None
    """Artifact root for experiments created here; None: the server's or MLflow's default."""


def resolve_store(tracking_uri: str) -> TrackingStore:
    """Turn a campaign's ``mlflow_uri`` (folder, sqlite, server or SageMaker ARN) into a store."""
    uri = tracking_uri.strip()
    if not uri:
        raise _config_error(
            "is empty", "set backend.mlflow_uri to a folder, an http(s) URL or a SageMaker ARN"
        )
    if uri.startswith("arn:"):
        return _sagemaker_store(uri)
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        return TrackingStore(uri=uri.rstrip("/"), kind="server")
    if parsed.scheme == "sqlite":
        database = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None
        if database is None or not database.is_absolute():
            # sqlite:///relative.db resolves against the process's working folder, which differs
            # between Airflow's processes: insist on one place.
            raise _config_error(
                f"{uri!r} is not an absolute sqlite path",
                "write sqlite:////absolute/path/mlflow.db, or give a folder",
            )
        database.parent.mkdir(parents=True, exist_ok=True)
        return TrackingStore(
            uri=uri, kind="local", artifact_location=str(database.parent / LOCAL_ARTIFACTS)
        )
    if parsed.scheme in ("", "file"):
        folder = Path(parsed.path if parsed.scheme == "file" else uri).expanduser().resolve()
        folder.mkdir(parents=True, exist_ok=True)
        return TrackingStore(
            uri=f"sqlite:///{folder / LOCAL_DB}",
            kind="local",
            artifact_location=str(folder / LOCAL_ARTIFACTS),
        )
    # postgresql://, mysql://, ...: a database MLflow talks to directly.
    return TrackingStore(uri=uri, kind="database")


def _sagemaker_store(uri: str) -> TrackingStore:
    from tuneloop.tracking import sagemaker_mlflow

    if not sagemaker_mlflow.is_arn(uri):
        raise _config_error(
            f"{uri!r} is not a SageMaker managed MLflow ARN",
            "copy the ARN of the tracking server "
            "(arn:aws:sagemaker:<region>:<account>:mlflow-tracking-server/<name>) "
            "or of the MLflow app (...:mlflow-app/<id>) from the SageMaker console",
        )
    if not sagemaker_mlflow.available():
        raise _config_error(
            "a SageMaker managed MLflow ARN needs the sagemaker-mlflow package, "
            "which is not installed",
            "install the workers' requirements.txt again (it pins sagemaker-mlflow; "
            "MWAA: the requirements.txt `make mwaa` builds)",
        )
    return TrackingStore(uri=uri, kind="sagemaker")


def _config_error(message: str, fix: str) -> TrackingError:
    return TrackingError([Problem(path="backend.mlflow_uri", message=message, fix=fix)])


def _redacted(text: str, uri: str) -> str:
    """``text`` without the password ``uri`` carries (MLflow's messages repeat the URI)."""
    password = urlparse(uri).password if "://" in uri else None
    return text.replace(f":{password}@", ":***@") if password else text


def _is_remote(uri: str) -> bool:
    return urlparse(uri).scheme not in ("", "file")


# ---------------------------------------------------------------------------------------------
# MLflow
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def quiet_mlflow(uri: str | None = None) -> Iterator[None]:
    """MLflow's INFO chatter and warnings off for the duration; errors still pass.

    With ``uri``, the calls inside talk to that tracking URI as far as the sagemaker-mlflow
    plugin is concerned: signed when it is a SageMaker MLflow ARN, left alone (no header, no
    warning) when it is not (`sagemaker_mlflow.tracking_to`)."""
    from tuneloop.tracking import sagemaker_mlflow

    plugin = sagemaker_mlflow.tracking_to(uri) if uri is not None else contextlib.nullcontext()
    if uri is None:
        sagemaker_mlflow.install()
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        with plugin, warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"mlflow(\.|$)")
            warnings.filterwarnings("ignore", module=r"alembic(\.|$)")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


class Tracker:
    """One campaign's mirror in MLflow. Build it anywhere; mlflow is imported on first use."""

    def __init__(self, tracking_uri: str, campaign: str, experiment: str | None = None) -> None:
        self.store = resolve_store(tracking_uri)
        self.campaign = campaign
        self.experiment = experiment or f"{MODEL_PREFIX}{campaign}"
        self.model_name = f"{MODEL_PREFIX}{campaign}"
        self._client: Any = None
        self._experiment_id: str | None = None
        self._calling = False

    # -- public ------------------------------------------------------------------------------

    def log_round(
        self, record: Mapping[str, Any], *, report_files: Iterable[str | Path] = ()
    ) -> dict[str, str]:
        """Mirror one ledger record (``RoundRecord.model_dump(mode="json")``); idempotent.

        ``report_files`` (the round report's Markdown and PNGs) go to the round run's and the
        campaign run's ``report/`` artifacts; the Markdown also becomes the campaign run's
        description. Returns the run ids, ``round_url`` (the run in the MLflow UI),
        ``open_with`` (for a local store: the command that serves that UI), ``model_version``
        (registered for this round, or "") and ``champion_version`` (where the alias points,
        or "")."""
        if str(record.get("campaign", self.campaign)) != self.campaign:
            raise TrackingError(
                [
                    Problem(
                        path="campaign",
                        message=f"record of campaign {record.get('campaign')!r} given to the "
                        f"tracker of campaign {self.campaign!r}",
                        fix="build a Tracker for the record's campaign",
                    )
                ]
            )
        number = int(record["round"])
        files = [Path(f) for f in report_files]
        with self._calls(f"log round {number} of campaign {self.campaign!r}"):
            runs = self._campaign_runs()
            campaign_run = self._ensure_campaign_run(runs, record)
            round_run = self._find(runs, kind="round", round=number)
            digest = record_digest(record)
            if round_run is None or round_run.data.tags.get(TAG_RECORD) != digest:
                round_run = self._log_round_runs(record, campaign_run, round_run, runs)
                self._log_campaign_progress(campaign_run, round_run, record, files)
                # Last: from here on the round run is complete and logging it again is a no-op.
                self.client.set_tag(round_run.info.run_id, TAG_RECORD, digest)
            version = self._ensure_version(record, round_run)
            # Only the newest round speaks for the champion: logging an older round again
            # must not move the alias back.
            rounds = [self._round_of(run) for run in runs if self._is(run, "round")]
            newest = number >= max(rounds, default=number)
            champion = self._champion_target(record, version)
            if newest and (champion is None or isinstance(champion, tuple)):  # not UNCHANGED
                self._point_alias(campaign_run.info.run_id, champion)
            if newest:
                self._set_campaign_status(campaign_run, record)
        url, hint = self.run_url(round_run.info.run_id)
        champion_version = champion[0] if isinstance(champion, tuple) and newest else ""
        return {
            "campaign_run_id": campaign_run.info.run_id,
            "round_run_id": round_run.info.run_id,
            "round_url": url,
            "open_with": hint,
            "model_version": version or "",
            "champion_version": champion_version,
        }

    def catch_up(self, records: Sequence[Mapping[str, Any]]) -> list[int]:
        """Log the rounds of ``records`` that MLflow lacks, or holds only in part (a round whose
        ``decide`` could not reach the tracking server), oldest first; the round numbers logged.

        A round MLflow holds complete is left alone, even if its record now differs: that is a
        rewritten ledger, which `log_round` reports when that round is logged again. Once
        something was logged, the champion alias is put where the newest record says: a round
        logged late may be the champion that a later round, logged while it was missing, named.
        Catching up again logs nothing."""
        with self._calls(f"read the rounds of campaign {self.campaign!r}"):
            runs = self._campaign_runs()
        complete = {
            self._round_of(run)
            for run in runs
            if self._is(run, "round") and run.data.tags.get(TAG_RECORD)
        }
        missing = sorted(
            (r for r in records if int(r["round"]) not in complete), key=lambda r: int(r["round"])
        )
        for record in missing:
            self.log_round(record)
        newest = max(records, key=lambda r: int(r["round"]), default=None)
        if missing and newest is not None and newest is not missing[-1]:
            self._repoint_champion(newest)
        return [int(r["round"]) for r in missing]

    def _repoint_champion(self, record: Mapping[str, Any]) -> None:
        """The alias where ``record`` (a round MLflow holds complete) says the champion is,
        unless MLflow holds a newer round, which speaks for the champion instead."""
        number = int(record["round"])
        with self._calls(f"point the champion of campaign {self.campaign!r}"):
            runs = self._campaign_runs()
            rounds = [self._round_of(run) for run in runs if self._is(run, "round")]
            campaign_run = self._find(runs, kind="campaign")
            if number < max(rounds, default=number) or campaign_run is None:
                return
            champion = self._champion_target(record, self._version_of_round(number))
            if champion is None or isinstance(champion, tuple):  # not UNCHANGED
                self._point_alias(campaign_run.info.run_id, champion)

    def champion(self) -> tuple[int | None, str] | None:
        """(round, version) the ``champion`` alias names, or None."""
        from mlflow.exceptions import MlflowException

        with self._calls(f"read the champion of campaign {self.campaign!r}"):
            try:
                found = self.client.get_model_version_by_alias(self.model_name, CHAMPION_ALIAS)
            except MlflowException as error:
                if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                    return None
                raise
        round_tag = found.tags.get(TAG_ROUND)
        return (int(round_tag) if round_tag else None, str(found.version))

    def run_url(self, run_id: str) -> tuple[str, str]:
        """(the run's page in the MLflow UI, how to open that UI when it is not a server)."""
        fragment = f"#/experiments/{self.experiment_id}/runs/{run_id}"
        if self.store.kind == "server":
            return f"{self.store.uri}/{fragment}", ""
        if self.store.kind == "sagemaker":
            return "", (
                f"open the MLflow app {self.store.uri} from SageMaker Studio, then "
                f"experiment {self.experiment!r}, run {run_id}"
            )
        return f"{LOCAL_UI}/{fragment}", f"mlflow ui --backend-store-uri {self.store.uri}"

    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.store.uri, registry_uri=self.store.uri)
        return self._client

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            with self._calls(f"open experiment {self.experiment!r}"):
                self._experiment_id = self._ensure_experiment()
        return self._experiment_id

    # -- failures ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _calls(self, action: str) -> Iterator[None]:
        """MLflow calls, quietly; what fails becomes a TrackingError naming the action (the
        outermost one, when calls nest: "log round 3", not "open experiment")."""
        import requests
        from mlflow.exceptions import MlflowException

        if self._calling:
            yield
            return
        self._calling = True
        try:
            with quiet_mlflow(self.store.uri):
                yield
        except TrackingError:
            raise
        except (MlflowException, requests.RequestException, OSError) as error:
            detail = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            raise TrackingError(
                [
                    Problem(
                        path="",
                        source="MLflow",
                        message=_redacted(
                            f"could not {action} at {self.store.uri}: {detail}", self.store.uri
                        ),
                        fix=self._fix_for(str(error)),
                    )
                ]
            ) from error
        finally:
            self._calling = False

    def _fix_for(self, error: str) -> str:
        safe = "the round is safe in the ledger, and logging it again fills MLflow in"
        if INVALID_HOST in error:
            # MLflow's DNS-rebinding protection: a server answers only to the host names it
            # was told, and a docker-compose service name (mlflow:5000) is not among them.
            host = urlparse(self.store.uri).netloc.rpartition("@")[2]
            return (
                f"start the server with --allowed-hosts '{host},localhost:*,127.0.0.1:*' "
                f"so that it answers to {host}; {safe}"
            )
        return (
            "check that the tracking server is up and reachable from this worker "
            f"(and its credentials); {safe}"
        )

    # -- runs --------------------------------------------------------------------------------

    def _ensure_experiment(self) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(self.experiment)
        if found is None:
            try:
                return str(
                    self.client.create_experiment(
                        self.experiment,
                        artifact_location=self.store.artifact_location,
                        tags={TAG_CAMPAIGN: self.campaign},
                    )
                )
            except MlflowException as error:
                if error.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                found = self.client.get_experiment_by_name(self.experiment)  # lost a race
        if found.lifecycle_stage == "deleted":
            raise TrackingError(
                [
                    Problem(
                        source="MLflow",
                        path=f"experiment {self.experiment!r}",
                        message="is deleted in MLflow",
                        fix=f"restore it (mlflow experiments restore --experiment-id "
                        f"{found.experiment_id}) or name another experiment",
                    )
                ]
            )
        return str(found.experiment_id)

    def _campaign_runs(self) -> list[Any]:
        """Every live run of this campaign (campaign, rounds, stages), oldest first."""
        from mlflow.entities import ViewType

        runs: list[Any] = []
        token = None
        while True:
            page = self.client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.`{TAG_CAMPAIGN}` = '{self.campaign}'",
                run_view_type=ViewType.ACTIVE_ONLY,
                max_results=1000,
                order_by=["attributes.start_time ASC"],
                page_token=token,
            )
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    @staticmethod
    def _is(run: Any, kind: Kind) -> bool:
        return run.data.tags.get(TAG_KIND) == kind

    @staticmethod
    def _round_of(run: Any) -> int:
        return int(run.data.tags.get(TAG_ROUND, "0"))

    def _find(
        self,
        runs: Sequence[Any],
        *,
        kind: Kind,
        round: int | None = None,
        parent: str | None = None,
        stage: str | None = None,
    ) -> Any | None:
        for run in runs:
            tags = run.data.tags
            if (
                tags.get(TAG_KIND) == kind
                and (round is None or tags.get(TAG_ROUND) == str(round))
                and (parent is None or tags.get(TAG_PARENT) == parent)
                and (stage is None or tags.get(TAG_STAGE) == stage)
            ):
                return run
        return None

    def _create_run(
        self, name: str, start_ms: int, tags: Mapping[str, str], parent: str | None
    ) -> Any:
        all_tags = {TAG_CAMPAIGN: self.campaign, **tags}
        if parent:
            all_tags[TAG_PARENT] = parent
        return self.client.create_run(
            self.experiment_id, start_time=start_ms, tags=all_tags, run_name=name
        )

    def _ensure_campaign_run(self, runs: list[Any], record: Mapping[str, Any]) -> Any:
        found = self._find(runs, kind="campaign")
        if found is not None:
            return found
        start = round_times(record)[0]
        run = self._create_run(self.campaign, start, {TAG_KIND: "campaign"}, parent=None)
        runs.append(run)
        return run

    def _child(
        self,
        runs: list[Any],
        *,
        kind: Kind,
        name: str,
        round: int,
        parent: str,
        start_ms: int,
        stage: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> Any:
        """The run found by (kind, round, parent, stage), created when missing."""
        found = self._find(runs, kind=kind, round=round, parent=parent, stage=stage)
        if found is not None:
            return found
        own = {TAG_KIND: kind, TAG_ROUND: str(round), **(tags or {})}
        if stage is not None:
            own[TAG_STAGE] = stage
        run = self._create_run(name, start_ms, own, parent=parent)
        runs.append(run)
        return run

    def _log_round_runs(
        self,
        record: Mapping[str, Any],
        campaign_run: Any,
        round_run: Any | None,
        runs: list[Any],
    ) -> Any:
        """The round run and its nested stage and evaluation runs, with their data."""
        number = int(record["round"])
        start, end = round_times(record)
        decision = record.get("decision") or {}
        if round_run is None:
            round_run = self._child(
                runs,
                kind="round",
                name=f"round-{number}",
                round=number,
                parent=campaign_run.info.run_id,
                start_ms=start,
            )
        round_id = round_run.info.run_id
        tags = {
            "tuneloop.decision.action": tag_value(decision.get("action")),
            "tuneloop.decision.reason": tag_value(decision.get("reason")),
            "tuneloop.promoted": tag_value(bool(decision.get("promoted"))).lower(),
            "tuneloop.champion_round": tag_value(decision.get("champion_round")),
            "tuneloop.airflow_run_id": tag_value(record.get("run_id")),
            TAG_NOTE: round_note(record),
        }
        if decision.get("recommendation"):
            tags["tuneloop.decision.recommendation"] = tag_value(decision["recommendation"])
        if record.get("failed"):
            tags[TAG_FAILED] = tag_value(record["failed"])
        metrics = [(k, v, number, end) for k, v in round_metrics(record).items()]
        metrics += [(k, v, number, end) for k, v in round_cost_metrics(record).items()]
        tags |= job_cost_tags(record)
        self._log(round_run, round_params(record), metrics, tags)
        with tempfile.TemporaryDirectory(prefix="tuneloop-mlflow-") as scratch:
            self._log_round_artifacts(round_id, record, Path(scratch))

        for stage in record.get("stages") or []:
            self._log_stage(runs, round_id, number, stage, start)
        if record.get("evaluation"):
            self._log_evaluation(runs, round_id, record, end)

        self._terminate(round_id, end)
        return self.client.get_run(round_id)

    def _log_round_artifacts(self, run_id: str, record: Mapping[str, Any], scratch: Path) -> None:
        round_file = scratch / "round.json"
        round_file.write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
        self.client.log_artifact(run_id, str(round_file))
        data = scratch / "data"
        data.mkdir()
        for entry in record.get("datasets") or []:
            name = metric_key(f"{entry.get('stage', '')}-{entry.get('channel', '')}")
            (data / f"{name}.json").write_text(
                json.dumps(entry, indent=2, sort_keys=True, default=str) + "\n"
            )
        if any(data.iterdir()):
            self.client.log_artifacts(run_id, str(data), "data")
        checkpoint = round_checkpoint(record)
        if checkpoint is not None:
            pointer = scratch / CHECKPOINT_ARTIFACT
            pointer.mkdir()
            (pointer / "checkpoint.json").write_text(
                json.dumps(dict(checkpoint), indent=2, sort_keys=True, default=str) + "\n"
            )
            self.client.log_artifacts(run_id, str(pointer), CHECKPOINT_ARTIFACT)

    def _log_stage(
        self,
        runs: list[Any],
        round_id: str,
        number: int,
        stage: Mapping[str, Any],
        round_start: int,
    ) -> None:
        name = str(stage.get("name") or stage.get("method") or "stage")
        start = millis(stage.get("started_at")) or round_start
        end = millis(stage.get("ended_at")) or start
        run = self._child(
            runs,
            kind="stage",
            name=name,
            round=number,
            parent=round_id,
            start_ms=start,
            stage=name,
            tags={"tuneloop.method": tag_value(stage.get("method"))},
        )
        curves = {**training_curves(stage, start), **series_curves(stage, start)}
        metrics = [
            (key, value, step, stamp)
            for key, curve in curves.items()
            for step, value, stamp in curve
        ]
        metrics += [(key, value, 0, end) for key, value in job_cost_metrics(stage).items()]
        tags = {"tuneloop.job_name": tag_value(stage.get("job_name")), **job_cost_tags(stage)}
        if stage.get("findings"):
            tags[TAG_FINDINGS] = findings_tag(stage["findings"])
        if stage.get("stopped_early"):
            tags[TAG_STOPPED_EARLY] = tag_value(stage["stopped_early"])
        self._log(run, stage_params(stage), metrics, tags)
        if stage.get("recipe"):
            self._log_recipe(run.info.run_id, stage["recipe"])
        self._terminate(run.info.run_id, end)

    def _log_evaluation(
        self, runs: list[Any], round_id: str, record: Mapping[str, Any], end: int
    ) -> None:
        evaluation = record.get("evaluation") or {}
        number = int(record["round"])
        run = self._child(
            runs,
            kind="evaluation",
            name="evaluation",
            round=number,
            parent=round_id,
            start_ms=end,
            stage="evaluation",
        )
        params = {
            f"evaluation.{key}": param_value(evaluation[key])
            for key in ("job_name", "result_uri")
            if evaluation.get(key)
        }
        plan_eval = (record.get("plan") or {}).get("evaluation") or {}
        params.update(flatten(plan_eval.get("recipe") or {}))
        metrics = [
            (k, v, number, end)
            for k, v in finite_scalars(evaluation.get("metrics") or record.get("metrics")).items()
        ]
        cost = record.get("evaluation_cost") or {}
        metrics += [(k, v, number, end) for k, v in job_cost_metrics(cost).items()]
        self._log(
            run,
            params,
            metrics,
            {"tuneloop.job_name": tag_value(evaluation.get("job_name")), **job_cost_tags(cost)},
        )
        if plan_eval.get("recipe"):
            self._log_recipe(run.info.run_id, plan_eval["recipe"])
        self._terminate(run.info.run_id, end)

    def _log_recipe(self, run_id: str, recipe: Mapping[str, Any]) -> None:
        """The job's rendered recipe as the run's ``recipe.yaml``, keys in the recipe's order."""
        import yaml

        with tempfile.TemporaryDirectory(prefix="tuneloop-mlflow-") as scratch:
            path = Path(scratch) / "recipe.yaml"
            path.write_text(yaml.safe_dump(dict(recipe), sort_keys=False))
            self.client.log_artifact(run_id, str(path))

    def _log_campaign_progress(
        self,
        campaign_run: Any,
        round_run: Any,
        record: Mapping[str, Any],
        report_files: Sequence[Path],
    ) -> None:
        """The campaign run's curves (a point per round, the baseline at step 0), its latest
        decision, and the report (on the round run too)."""
        number = int(record["round"])
        end = round_times(record)[1]
        metrics = [
            (k, v, number, end)
            for k, v in finite_scalars(
                record.get("metrics") or (record.get("evaluation") or {}).get("metrics")
            ).items()
        ]
        first = campaign_run.info.start_time
        metrics += [(k, v, 0, first) for k, v in finite_scalars(record.get("baseline")).items()]
        # What the campaign spent up to this round (the gate's own sums, the base model's
        # evaluation included): one point per round.
        signals = (record.get("decision") or {}).get("signals") or {}
        for signal, key in CAMPAIGN_SPEND_METRICS.items():
            value = finite_number(signals.get(signal))
            if value is not None:
                metrics.append((key, value, number, end))
        tags: dict[str, str] = {}
        for path in report_files:
            self.client.log_artifact(campaign_run.info.run_id, str(path), REPORT_ARTIFACT)
            self.client.log_artifact(round_run.info.run_id, str(path), REPORT_ARTIFACT)
            if path.suffix == ".md":
                text = path.read_text(encoding="utf-8")
                if len(text) <= MAX_TAG_VALUE:
                    tags[TAG_NOTE] = text  # the campaign run's description in the UI
        self._log(campaign_run, {}, metrics, tags)

    def _set_campaign_status(self, campaign_run: Any, record: Mapping[str, Any]) -> None:
        """The newest round's decision on the campaign run; finished once it finished or stopped
        (running again if a later round follows)."""
        decision = record.get("decision") or {}
        run_id = campaign_run.info.run_id
        tags = {
            "tuneloop.last_round": str(int(record["round"])),
            "tuneloop.decision.action": tag_value(decision.get("action")),
            "tuneloop.decision.reason": tag_value(decision.get("reason")),
        }
        for key, value in tags.items():
            self.client.set_tag(run_id, key, value)
        if decision.get("action") in ("finish", "stop"):
            end = round_times(record)[1]
            if campaign_run.info.status != "FINISHED" or campaign_run.info.end_time != end:
                self._terminate(run_id, end)
        elif campaign_run.info.status != "RUNNING":
            self.client.update_run(run_id, status="RUNNING")

    def _log(
        self,
        run: Any,
        params: Mapping[str, str],
        metrics: Sequence[tuple[str, float, int, int]],
        tags: Mapping[str, str],
    ) -> None:
        """Params that are missing, every metric point (MLflow drops exact repeats), the tags.

        A param already logged with another value means the ledger was rewritten under the same
        campaign and round (params are immutable in MLflow)."""
        from mlflow.entities import Metric, Param, RunTag

        run_id = run.info.run_id
        logged = run.data.params
        changed = sorted(k for k, v in params.items() if k in logged and logged[k] != v)
        if changed:
            key = changed[0]
            raise TrackingError(
                [
                    Problem(
                        source="MLflow",
                        path=f"run {run.info.run_name!r} ({run_id}).params.{key}",
                        message=f"already logged as {logged[key]!r}, the record now says "
                        f"{params[key]!r} ({len(changed)} params differ): the ledger of "
                        f"campaign {self.campaign!r} was rewritten since it was tracked",
                        fix="track the new ledger in another experiment (Tracker(..., "
                        "experiment=...)) or delete the campaign's runs in MLflow",
                    )
                ]
            )
        fresh = [Param(k, v) for k, v in params.items() if k not in logged]
        for i in range(0, len(fresh), PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=fresh[i : i + PARAMS_PER_BATCH])
        points = [Metric(k, v, stamp, step) for k, v, step, stamp in metrics]
        for i in range(0, len(points), METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=points[i : i + METRICS_PER_BATCH])
        run_tags = [RunTag(k, v) for k, v in tags.items()]
        for i in range(0, len(run_tags), PARAMS_PER_BATCH):
            self.client.log_batch(run_id, tags=run_tags[i : i + PARAMS_PER_BATCH])

    def _terminate(self, run_id: str, end_ms: int) -> None:
        # set_terminated prints "View run ... at: <url>" to stdout for a server: noise here.
        with contextlib.redirect_stdout(io.StringIO()):
            self.client.set_terminated(run_id, status="FINISHED", end_time=end_ms)

    # -- registry ----------------------------------------------------------------------------

    def _ensure_registered_model(self) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(self.model_name)
        except MlflowException as error:
            if error.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            try:
                self.client.create_registered_model(
                    self.model_name,
                    tags={TAG_CAMPAIGN: self.campaign},
                    description=f"Checkpoints promoted by the tuneloop campaign {self.campaign}.",
                )
            except MlflowException as race:
                if race.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise

    def _versions(self) -> list[Any]:
        if not self._registered_model_exists():
            return []
        return list(self.client.search_model_versions(f"name = '{self.model_name}'"))

    def _registered_model_exists(self) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(self.model_name)
        except MlflowException as error:
            if error.error_code == "RESOURCE_DOES_NOT_EXIST":
                return False
            raise
        return True

    def _version_of_round(self, number: int) -> str | None:
        for version in self._versions():
            if version.tags.get(TAG_ROUND) == str(number):
                return str(version.version)
        return None

    def _ensure_version(self, record: Mapping[str, Any], round_run: Any) -> str | None:
        """The model version of a promoted round, registered once (found by the round run)."""
        decision = record.get("decision") or {}
        checkpoint = round_checkpoint(record)
        if not decision.get("promoted") or checkpoint is None:
            return None
        run_id = round_run.info.run_id
        for version in self._versions():
            if version.run_id == run_id:
                return str(version.version)
        self._ensure_registered_model()
        uri = str(checkpoint["uri"])
        source = uri if _is_remote(uri) else f"runs:/{run_id}/{CHECKPOINT_ARTIFACT}"
        number = int(record["round"])
        tags = {
            TAG_CAMPAIGN: self.campaign,
            TAG_ROUND: str(number),
            "tuneloop.checkpoint_uri": tag_value(uri),
        }
        for key in ("model_type", "technique", "platform"):
            if checkpoint.get(key):
                tags[f"tuneloop.{key}"] = tag_value(checkpoint[key])
        created = self.client.create_model_version(
            self.model_name,
            source=source,
            run_id=run_id,
            tags=tags,
            description=f"Round {number} of {self.campaign}: {decision.get('reason', '')}"[
                :MAX_TAG_VALUE
            ],
        )
        return str(created.version)

    def _champion_target(
        self, record: Mapping[str, Any], this_version: str | None
    ) -> tuple[str, int] | object | None:
        """Where the alias goes after this round: (version, round) of the ledger's champion,
        None when the ledger has no champion, UNCHANGED when the champion's round has no version
        here (its record was never mirrored: better a stale alias than none)."""
        decision = record.get("decision") or {}
        if decision.get("promoted") and this_version is not None:
            return this_version, int(record["round"])
        champion_round = decision.get("champion_round")
        if champion_round is None:
            return None
        found = self._version_of_round(int(champion_round))
        return (found, int(champion_round)) if found is not None else UNCHANGED

    def _point_alias(self, campaign_run_id: str | None, target: tuple[str, Any] | None) -> None:
        """Move (or remove) the champion alias, and say so on the campaign run."""
        from mlflow.exceptions import MlflowException

        if target is None:
            if self._registered_model_exists():
                with contextlib.suppress(MlflowException):
                    self.client.delete_registered_model_alias(self.model_name, CHAMPION_ALIAS)
            tags = {"tuneloop.champion_round": "", "tuneloop.champion_version": ""}
        else:
            version, round_number = target
            self.client.set_registered_model_alias(self.model_name, CHAMPION_ALIAS, version)
            tags = {
                "tuneloop.champion_round": tag_value(round_number),
                "tuneloop.champion_version": version,
            }
        if campaign_run_id:
            for key, value in tags.items():
                self.client.set_tag(campaign_run_id, key, value)


# --- cost -----------------------------------------------------------------------------------

CAMPAIGN_SPEND_METRICS = {
    "gpu_hours_spent": "campaign.gpu_hours",
    "cost_usd_spent": "campaign.cost_usd",
}
"""Decision signals -> the campaign run's cumulative spend metrics."""


def job_cost_metrics(job: Mapping[str, Any]) -> dict[str, float]:
    """A job's billed time and cost as run metrics (a stage's, the evaluation's): ``cost_usd``
    is absent when the price is unknown (the ``tuneloop.cost_note`` tag says why)."""
    metrics: dict[str, float] = {}
    for field, key in (
        ("billable_seconds", "billable_seconds"),
        ("instance_hours", "instance_hours"),
        ("gpu_hours", "gpu_hours"),
        ("estimated_cost_usd", "cost_usd"),
    ):
        value = finite_number(job.get(field))
        if value is not None:
            metrics[key] = value
    return metrics


def round_cost_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """The round's dollar estimate and the base model's evaluation it paid for."""
    metrics: dict[str, float] = {}
    cost = finite_number(record.get("estimated_cost_usd"))
    if cost is not None:
        metrics["cost_usd"] = cost
    baseline = record.get("baseline_cost") or {}
    for key, value in job_cost_metrics(baseline).items():
        metrics[f"baseline.{key}"] = value
    return metrics


def job_cost_tags(job: Mapping[str, Any]) -> dict[str, str]:
    """Where a job's (or round's) cost estimate comes from, as run tags."""
    tags = {}
    for field in ("instance_type", "price_source", "price_region", "cost_note"):
        if job.get(field):
            tags[f"tuneloop.{field}"] = tag_value(job[field])
    return tags
