"""Airflow round DAG of the campaign recipes/campaigns/demo.yaml: DAG id tuneloop_demo.

One small file per campaign, so a broken campaign file shows as an import error of its own DAG
and of no other (written by `tuneloop campaign dag`).
"""

from tuneloop.rounds import campaign_dag

dag = campaign_dag('demo.yaml')
