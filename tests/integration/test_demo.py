"""`make demo` for one real round: Airflow's own scheduler runs the demo campaign's DAG on the
local backend, progress is printed while the round runs, the round is recorded, the run it
triggered stays queued in Airflow's history, the campaign's lifecycle DAG plans and applies (with
one round there is nothing to archive: what an apply archives is tested in
tests/integration/test_lifecycle_dag.py and tests/e2e/test_e2e_lifecycle.py), and no Airflow
process outlives the demo."""

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
from typing import NamedTuple

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
DEMO_LIMIT = 900.0
"""Seconds a demo round may take (a real round's training, on a machine that may be busy)."""
FAILING_LIMIT = 600.0
"""Seconds a demo whose round fails at its data check may take."""
CHECKS = 120.0
"""pytest's limit for a demo test goes beyond the demo's by this much: the demo is stopped and
its leftovers looked for after it ends."""


class DemoRun(NamedTuple):
    returncode: int
    lines: list[str]
    started: dict[str, dict]
    """The processes the demo started (from the file it keeps while they run)."""

    @property
    def out(self) -> str:
        return "".join(self.lines)


def run_demo(project: Path, *args: str, timeout: float = DEMO_LIMIT) -> DemoRun:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIRFLOW", "TUNELOOP_")) or k == "TUNELOOP_HOME"
    }
    env["PYTHONPATH"] = str(REPO / "plugins")
    state = project / ".tuneloop" / "airflow" / "demo-processes.json"
    demo = subprocess.Popen(
        [sys.executable, "-m", "tuneloop.demo", *args, "--project-dir", str(project)],
        env=env,
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(demo.stdout), daemon=True)
    reader.start()
    started: dict[str, dict] = {}
    deadline = time.monotonic() + timeout
    while demo.poll() is None and time.monotonic() < deadline:
        if not started and state.exists():
            text = state.read_text()
            if text.strip():
                started = json.loads(text)["processes"]
        time.sleep(0.2)
    if demo.poll() is None:
        demo.kill()
        pytest.fail(f"the demo did not end within {timeout:.0f}s:\n" + "".join(lines[-50:]))
    reader.join(timeout=30)
    return DemoRun(demo.returncode, lines, started)


def assert_no_airflow_left(project: Path, started: dict[str, dict]) -> None:
    """Not the processes it started, nor anything in their groups, nor anything else running
    with its Airflow home."""
    home = project / ".tuneloop" / "airflow"
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


@pytest.mark.slow
@pytest.mark.timeout(DEMO_LIMIT + CHECKS)
def test_demo_runs_a_round_under_the_scheduler(tmp_path: Path) -> None:
    home = tmp_path / ".tuneloop" / "airflow"
    demo = run_demo(tmp_path, "--rounds", "1")
    out, lines = demo.out, demo.lines
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

    # The lifecycle ran, with nothing to archive yet: round 1 is the champion.
    assert "== lifecycle (keep_last 2): tuneloop_demo_lifecycle runs after each round" in out
    assert "   rounds kept: round 1 (champion" in out
    assert "   archived: nothing" in out
    assert "   lifecycle: archived 0 folder(s), 0 B; deleted 0; estimated storage cost saved" in out

    assert "## Storage" in (state_dir / "demo" / "report" / "report.md").read_text()
    assert_no_airflow_left(tmp_path, demo.started)


@pytest.mark.slow
@pytest.mark.timeout(FAILING_LIMIT + CHECKS)
def test_a_failing_round_names_the_task_and_shows_the_end_of_its_log(tmp_path: Path) -> None:
    from tuneloop.local.demo_task import FILES, write_demo_data

    data = tmp_path / ".tuneloop" / "demo" / "data"
    write_demo_data(data)
    train = data / FILES["train"]
    train.write_text("this line is not JSON\n" + train.read_text())
    demo = run_demo(tmp_path, "--rounds", "1", timeout=FAILING_LIMIT)
    out = demo.out
    assert demo.returncode == 1, out[-6000:]
    assert "demo data: " in out and "(kept)" in out  # the broken file was not overwritten
    assert re.search(r"task validate_data\[\d\] failed \(try 1\); the end of its log:", out), out
    assert "sft-train.jsonl:1" in out, out[-6000:]  # the validator's problem, from the task log
    assert re.search(r"round 1 failed \(run manual__\S+ failed\)", out), out[-3000:]
    assert_no_airflow_left(tmp_path, demo.started)
