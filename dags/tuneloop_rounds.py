"""Airflow round DAGs: one DAG ``tuneloop_<campaign>`` per campaign file in recipes/campaigns/
(or $TUNELOOP_CAMPAIGNS_DIR). A broken campaign file is reported as an import error naming the
file, line and field, and costs only its own DAG."""

# The Airflow modules the round DAGs are built from, named here so that the dag-processor imports
# them once, before it starts a process to parse this file ([dag_processor]
# parsing_pre_import_modules), instead of in every parse.
import airflow.providers.standard.decorators.branch_python
import airflow.providers.standard.decorators.short_circuit
import airflow.sdk.bases.resumablejobmixin
import airflow.sdk.bases.sensor
import airflow.sdk.definitions.decorators  # noqa: F401

from tuneloop.pipeline.dag import campaign_dags

globals().update(campaign_dags())
