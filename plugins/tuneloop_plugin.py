"""Registers tuneloop with Airflow: the job operators' extra links and the pages behind them.

The API server builds a task's links from the serialized DAG; it finds link classes through
plugins, so the "Job console" and "MLflow run" buttons of the job operators need this file in
Airflow's plugins folder (or the package installed). The links lead to pages the API server
serves through the FastAPI app mounted here at ``/tuneloop`` (``tuneloop.web``): a local job's
page and the task's MLflow run. Operators and triggers need no plugin.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from tuneloop.links import URL_PREFIX
from tuneloop.pipeline.operators import JobConsoleLink, MlflowRunLink
from tuneloop.web.app import app as web_app


class TuneloopPlugin(AirflowPlugin):
    name = "tuneloop"
    operator_extra_links = [JobConsoleLink(), MlflowRunLink()]
    fastapi_apps = [{"app": web_app, "url_prefix": URL_PREFIX, "name": "tuneloop pages"}]
