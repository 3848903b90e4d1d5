"""Airflow lifecycle DAGs: one DAG ``tuneloop_<campaign>_lifecycle`` per campaign file in
recipes/campaigns/ (or $TUNELOOP_CAMPAIGNS_DIR). It runs daily, on demand and after each round's
record lands. A broken campaign file has no lifecycle DAG; dags/tuneloop_rounds.py reports it."""

# Named here so that the dag-processor imports them once, before it starts a process to parse
# this file ([dag_processor] parsing_pre_import_modules), instead of in every parse.
import airflow.sdk.definitions.decorators  # noqa: F401

from tuneloop.pipeline.lifecycle_dag import lifecycle_dags

globals().update(lifecycle_dags())
