"""Airflow round DAGs: one DAG ``tuneloop_<campaign>`` per campaign file in recipes/campaigns/
(or $TUNELOOP_CAMPAIGNS_DIR). A broken campaign file is reported as an import error naming the
file, line and field, and costs only its own DAG."""

from tuneloop.pipeline.dag import campaign_dags

globals().update(campaign_dags())
