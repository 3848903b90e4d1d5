"""tuneloop: iterative fine-tuning of foundation models as Apache Airflow pipelines."""

__version__ = "0.1.0"
