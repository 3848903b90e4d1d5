"""``make demo``: the demo campaign through a real Airflow on the local backend."""
