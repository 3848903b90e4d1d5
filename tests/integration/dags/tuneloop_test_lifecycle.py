"""Airflow lifecycle DAGs of the campaign files a test writes into $TUNELOOP_TEST_CAMPAIGNS."""

import os

from tuneloop.pipeline.lifecycle_dag import lifecycle_dags

_folder = os.environ.get("TUNELOOP_TEST_CAMPAIGNS", "")
if _folder:
    globals().update(lifecycle_dags(_folder))
