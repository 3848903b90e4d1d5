"""Registers tuneloop's operator extra links with Airflow.

The API server builds a task's links from the serialized DAG; it finds link classes through
plugins, so the "Job console" and "MLflow run" buttons of the job operators need this file in
Airflow's plugins folder (or the package installed). Operators and triggers need no plugin.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from tuneloop.operators import JobConsoleLink, MlflowRunLink


class TuneloopPlugin(AirflowPlugin):
    name = "tuneloop"
    operator_extra_links = [JobConsoleLink(), MlflowRunLink()]
