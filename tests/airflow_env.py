"""Airflow settings for every test: a throwaway AIRFLOW_HOME on SQLite and the test DAGs folder.

Imported by tests/conftest.py before any test module, because Airflow reads its configuration
once, when it is first imported (a unit test importing airflow.sdk would otherwise use
~/airflow).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DAGS = REPO / "tests" / "integration" / "dags"

AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="tuneloop-airflow-"))
AIRFLOW_ENV = {
    "AIRFLOW_HOME": str(AIRFLOW_HOME),
    "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
    "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{AIRFLOW_HOME / 'airflow.db'}",
    "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
    # dag.test() runs no executor, so a trigger has no worker's report to wait for
    # (pipeline.triggers.settle_seconds): the tests' instant jobs would wait 8 s each.
    # The end-to-end stack sets it back to Airflow's own heartbeat-based wait.
    "AIRFLOW__TUNELOOP__TRIGGER_SETTLE_SECONDS": "0",
}
os.environ.update(AIRFLOW_ENV)
