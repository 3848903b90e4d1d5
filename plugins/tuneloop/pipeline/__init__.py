"""tuneloop's Airflow face: the DAG factory, task bodies, operators and triggers."""
