"""`make demo` for one real round: Airflow's own scheduler runs the demo campaign's DAG on the
local backend, progress is printed while the round runs, the round is recorded, the run it
triggered stays queued in Airflow's history, and no Airflow process outlives the demo."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_runs_a_round_under_the_scheduler(tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIRFLOW", "TUNELOOP_")) or k == "TUNELOOP_HOME"
    }
    env["PYTHONPATH"] = str(REPO / "plugins")
    home = tmp_path / ".tuneloop" / "airflow"
    demo = subprocess.Popen(
        [sys.executable, "-m", "tuneloop.demo", "--rounds", "1", "--project-dir", str(tmp_path)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(demo.stdout), daemon=True)
    reader.start()
    # The processes the demo started, from the file it keeps while they run.
    started: dict[str, dict] = {}
    deadline = time.monotonic() + 900
    while demo.poll() is None and time.monotonic() < deadline:
        state = home / "demo-processes.json"
        if not started and state.exists():
            with_contents = state.read_text()
            if with_contents.strip():
                started = json.loads(with_contents)["processes"]
        time.sleep(0.2)
    if demo.poll() is None:
        demo.kill()
        pytest.fail("the demo did not end within 15 minutes:\n" + "".join(lines[-50:]))
    reader.join(timeout=30)
    out = "".join(lines)
    assert demo.returncode == 0, out[-6000:]

    # The scheduler ran round 1; the run it triggered is in the history, queued, not deleted.
    assert "triggered run manual__" in out
    assert "round 1: sft -> rft, exact_match 0.513 (base model 0.000)" in out
    assert "decision: continue." in out
    assert (
        "round 2 was already triggered as run round_0002__after_0001 (queued): the DAG is paused"
        in out
    )
    with sqlite3.connect(home / "airflow.db") as db:
        runs = db.execute(
            "select run_id, run_type, state from dag_run where dag_id = 'tuneloop_demo' order by id"
        ).fetchall()
        tasks = dict(
            db.execute(
                "select task_id, state from task_instance where run_id = ? and map_index = -1",
                (runs[0][0],),
            ).fetchall()
        )
        paused = db.execute("select is_paused from dag where dag_id = 'tuneloop_demo'").fetchone()
    assert paused == (1,)  # so that round 2 waits for the next demo (which unpauses it)
    assert len(runs) == 2, runs
    assert runs[0][0].startswith("manual__") and runs[0][1:] == ("manual", "success")
    assert runs[1][0] == "round_0002__after_0001" and runs[1][2] == "queued"
    assert tasks["next_round"] == "success" and tasks["decide"] == "success"
    assert tasks["finish"] == "skipped"

    # Progress while the round ran: the task, and the job's step, total and ETA.
    progress = [line for line in lines if re.match(r"round 1  train_sft  step \d+/300", line)]
    assert progress, out[-6000:]
    assert any("ETA" in line for line in progress)
    assert any(line.startswith("round 1  train_rft") for line in lines)
    assert any(line.startswith("round 1  evaluate") for line in lines)

    # What it leaves: ledger record, report, MLflow store, and how to open the UI.
    state_dir = tmp_path / ".tuneloop"
    record = json.loads((state_dir / "demo" / "rounds" / "0001.json").read_text())
    assert record["metrics"]["exact_match"] > record["baseline"]["exact_match"]
    assert (state_dir / "demo" / "report" / "report.png").is_file()
    assert (state_dir / "demo" / "mlflow.db").is_file()
    assert f"make airflow PROJECT_DIR={tmp_path}" in out
    assert "password in " + str(home / "simple_auth_manager_passwords.json.generated") in out
    assert not (REPO / "models").exists()

    # No Airflow process is left: not the ones it started, nor anything in their groups, nor
    # anything else running with its Airflow home.
    assert set(started) == {"api-server", "scheduler", "dag-processor", "triggerer"}
    assert not (home / "demo-processes.json").exists()
    groups = {entry["pid"] for entry in started.values()}
    left = []
    for process in psutil.process_iter():
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                continue
            ours = process.pid in groups or os.getpgid(process.pid) in groups
            if ours or process.environ().get("AIRFLOW_HOME") == str(home):
                left.append((process.pid, process.name()))
        except (psutil.Error, OSError):
            continue
    assert left == []
