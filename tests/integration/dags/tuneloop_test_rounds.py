"""Airflow round DAGs of the campaign files a test writes into $TUNELOOP_TEST_CAMPAIGNS."""

import os
from pathlib import Path

from tuneloop.rounds import campaign_dag

_folder = os.environ.get("TUNELOOP_TEST_CAMPAIGNS", "")
if _folder:
    for _path in sorted(Path(_folder).glob("*.yaml")):
        _dag = campaign_dag(_path)
        globals()[_dag.dag_id] = _dag
