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
    # A job's trigger fires no sooner than 1.5 heartbeat intervals after its task deferred
    # (pipeline.triggers.settle_seconds); the tests' instant jobs would wait 8 s each at the
    # default interval of 5 s.
    "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "0.2",
}
os.environ.update(AIRFLOW_ENV)
