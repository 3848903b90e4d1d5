"""`make demo`'s driver, for one real round: Airflow runs the demo campaign's DAG on the local
backend, the round is recorded, the next run it triggered is picked up, the table printed."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_runs_a_round_through_airflow(tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIRFLOW", "TUNELOOP_")) or k == "TUNELOOP_HOME"
    }
    env["PYTHONPATH"] = str(REPO / "plugins")
    done = subprocess.run(
        [sys.executable, "-m", "tuneloop.demo", "--rounds", "1", "--project-dir", str(tmp_path)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "round 1: sft -> rft, exact_match" in out
    assert "decision: continue." in out  # the base model scores 0; round 1 beats it
    assert "baseline  base model" in out and "1 round(s) in" in out
    state = tmp_path / ".tuneloop"
    record = json.loads((state / "demo" / "rounds" / "0001.json").read_text())
    assert record["metrics"]["exact_match"] > record["baseline"]["exact_match"]
    assert (state / "demo" / "report" / "report.png").is_file()
    assert (state / "demo" / "mlflow.db").is_file()
    # The run round 1 triggered was taken over by the driver, not left for a scheduler.
    with sqlite3.connect(state / "airflow" / "airflow.db") as db:
        queued = db.execute("select run_id from dag_run where state = 'queued'").fetchall()
    assert queued == []
    assert not (REPO / "models").exists()
