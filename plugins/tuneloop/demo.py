"""``make demo``: the demo campaign through Airflow on this machine, no cloud account needed.

Runs ``tuneloop_demo`` (recipes/campaigns/demo.yaml: SFT -> RFT -> evaluate on the local
backend) with Airflow's own ``dag.test()`` on a SQLite metadata database, for up to 3 rounds.
Each round after the first is the run that the previous round's ``next_round`` / ``rollback``
task triggered: its conf is taken from the DAG run Airflow created, and that queued run is then
executed here (no scheduler needed). Prints the rounds table, writes the round report and says
how to open it and the MLflow UI.

    python -m tuneloop.demo [--rounds N] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DAG_ID = "tuneloop_demo"


def airflow_env(home: Path, project: Path) -> dict[str, str]:
    """Airflow settings for a local, single-machine run on SQLite."""
    return {
        "AIRFLOW_HOME": str(home),
        "TUNELOOP_PROJECT_DIR": str(project),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": os.environ.get("TUNELOOP_DEMO_LOG_LEVEL", "WARNING"),
    }


def _migrate(env: dict[str, str]) -> None:
    airflow = Path(sys.executable).with_name("airflow")
    command = [str(airflow) if airflow.exists() else "airflow", "db", "migrate"]
    result = subprocess.run(
        command, env={**os.environ, **env}, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        raise SystemExit(f"airflow db migrate failed ({result.returncode})")


def _queued_conf(run_id: str) -> dict[str, Any] | None:
    """The conf of the run the previous round triggered; the run itself is then removed, since
    this process runs it (so no scheduler started later runs that round a second time)."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        run = session.query(DagRun).filter_by(dag_id=DAG_ID, run_id=run_id).one_or_none()
        if run is None:
            return None
        conf = dict(run.conf or {})
        session.delete(run)
    return conf


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tuneloop-demo", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="at most this many rounds (3)")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="continue the previous demo campaign instead of a new one",
    )
    parser.add_argument(
        "--project-dir",
        default=str(REPO),
        help="folder whose .tuneloop/ holds the demo's data, jobs, ledger and Airflow home "
        "(default: the repository)",
    )
    args = parser.parse_args(argv)

    project = Path(args.project_dir).absolute()
    state = project / ".tuneloop"
    home = state / "airflow"
    campaign_dir = state / "demo"
    if not args.keep:
        shutil.rmtree(campaign_dir, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True, exist_ok=True)
    env = airflow_env(home, project)
    os.environ.update(env)
    os.chdir(REPO)

    began = time.monotonic()
    print("tuneloop demo: SFT -> RFT -> evaluate of a tiny model, up to", args.rounds, "rounds")
    from tuneloop.local.demo_task import write_demo_data

    write_demo_data(campaign_dir / "data")
    print("  demo data written to", campaign_dir / "data")
    _migrate(env)

    from airflow.dag_processing.dagbag import DagBag  # after the environment is set

    bag = DagBag(dag_folder=str(REPO / "dags" / "tuneloop_rounds.py"))
    if DAG_ID not in bag.dags:
        sys.stderr.write("\n".join(bag.import_errors.values()) + "\n")
        return 1
    dag = bag.dags[DAG_ID]

    from tuneloop.demo_report import print_round, summarize
    from tuneloop.ledger import Ledger

    ledger = Ledger(str(campaign_dir))
    conf: dict[str, Any] = {}
    for _ in range(args.rounds):
        round_began = time.monotonic()
        number = ledger.next_round()
        started_by = f"the DAG run round {number - 1}'s decision triggered" if conf else "manual"
        print(f"\n== round {number} ({started_by})")
        run = dag.test(run_conf=conf, logical_date=None)
        record = ledger.latest()
        if record is None or record.round != number:
            state = getattr(run, "state", "unknown")
            print(f"round {number} did not record a decision (DAG run {state}); see the logs above")
            return 1
        print_round(record, time.monotonic() - round_began)
        decision = record.decision
        if decision.action.value not in ("continue", "rollback"):
            break
        next_run = f"round_{decision.next_round:04d}__after_{record.round:04d}"
        queued = _queued_conf(next_run)
        if queued is None:
            print(f"the {decision.action.value} branch did not trigger run {next_run}")
            return 1
        conf = queued
    from tuneloop.campaign_file import load_campaign

    cf = load_campaign(REPO / "recipes" / "campaigns" / "demo.yaml")
    summarize(ledger, campaign_dir, time.monotonic() - began, cf)
    return 0


if __name__ == "__main__":
    sys.exit(main())
