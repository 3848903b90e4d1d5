"""End-to-end tests: a real Airflow (PostgreSQL, Redis, Celery workers, MLflow) driven through
its REST API, its CLI and a headless browser. The fixtures are in conftest.py."""
