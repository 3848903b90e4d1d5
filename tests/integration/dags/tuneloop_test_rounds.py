"""Airflow round DAGs of the campaign files a test writes into $TUNELOOP_TEST_CAMPAIGNS."""

import os

from tuneloop.pipeline.dag import campaign_dags

_folder = os.environ.get("TUNELOOP_TEST_CAMPAIGNS", "")
if _folder:
    globals().update(campaign_dags(_folder))
