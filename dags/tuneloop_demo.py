"""Airflow round DAG of the demo campaign (recipes/campaigns/demo.yaml): DAG id tuneloop_demo.

One small file per campaign, so a broken campaign file shows as an import error of its own DAG
and of no other. A new campaign gets its DAG from a copy of this file naming its YAML file
(`tuneloop campaign dag NAME` writes it).
"""

from tuneloop.rounds import campaign_dag

dag = campaign_dag("demo.yaml")
