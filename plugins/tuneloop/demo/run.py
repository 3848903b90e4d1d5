"""``make demo``: the demo campaign through Airflow's own scheduler, no cloud account needed.

Starts Airflow on this machine (API server, scheduler, dag-processor and triggerer on SQLite
with the LocalExecutor; home ``<project>/.tuneloop/airflow``), waits until the DAG
``tuneloop_demo`` (recipes/campaigns/demo.yaml: SFT -> RFT -> evaluate on the local backend) is
parsed, triggers one run with an empty conf through the REST API and follows the chain: each
round's ``next_round`` / ``rollback`` task triggers the next run itself, and the scheduler runs
it. Prints a line whenever the running task or its job's progress changes, a summary per round,
then the lifecycle: the campaign's lifecycle DAG (``tuneloop_demo_lifecycle``) runs after each
recorded round on its own, and once more at the end, triggered with ``apply: true``; the demo
waits for that run and prints what the lifecycle archived (round folders older than the last
``keep_last: 2`` rounds and not the champion become tarballs under ``.tuneloop/demo/archive/``)
and the bytes and estimated storage cost saved. Then the rounds table, and how to open the
Airflow UI and MLflow on these runs. Every run stays in Airflow's history.

    python -m tuneloop.demo [--rounds N] [--fresh] [--keep-running] [--project-dir DIR]
    python -m tuneloop.demo --stop       # stop an Airflow left up by --keep-running

State lives in ``<project>/.tuneloop/``: ``demo/`` (data, jobs, ledger, report, MLflow store)
and ``airflow/`` (Airflow home, SQLite database, logs). Without ``--fresh`` a second demo
continues the campaign and the Airflow history; ``--fresh`` removes both folders first.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from tuneloop.demo.embedded_airflow import (
    AirflowApiError,
    AirflowClient,
    AirflowProcesses,
    AirflowStartError,
    airflow_env,
    default_components,
    free_port,
    passwords_file,
)
from tuneloop.demo.report import (
    ProgressLine,
    print_lifecycle,
    print_round,
    summarize,
    ui_hint,
)
from tuneloop.errors import MessageError

REPO = Path(__file__).resolve().parents[3]
DAG_ID = "tuneloop_demo"
LIFECYCLE_DAG_ID = "tuneloop_demo_lifecycle"
CAMPAIGN_FILE = REPO / "recipes" / "campaigns" / "demo.yaml"
STATE_FILE = "demo-processes.json"
"""In the Airflow home: the processes a ``--keep-running`` demo left up (for ``--stop``)."""

POLL_SECONDS = 1.0
JOB_POLL_SECONDS = 5.0
"""How often the REST API is asked while a job runs (its progress is read every second)."""
PARSE_TIMEOUT = 180.0
ROUND_TIMEOUT = 1800.0
LIFECYCLE_TIMEOUT = 600.0
"""The lifecycle run (behind any run the last round's record started) may take this long."""
ACTIVE_STATES = ("queued", "running")
TASK_ACTIVE = ("running", "deferred")
UNDER_WAY = ("queued", "running", "success")
TASK_WAITING = ("scheduled", "queued", "up_for_retry", "up_for_reschedule", "restarting")

# Settings of the demo's Airflow (on top of embedded_airflow.airflow_env). Chosen for a laptop:
# a few task processes at a time, the scheduler looking again every half second when idle (so a
# round does not wait on it between tasks), the DAG file re-parsed every 30 s (Airflow's default).
DEMO_SETTINGS = {
    "AIRFLOW__CORE__PARALLELISM": "4",
    "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5",
    "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "30",
    "AIRFLOW__API__WORKERS": "1",
}


_CLOCK_SLACK = timedelta(seconds=5)
"""Records are stamped by task processes: a little slack for their clocks' rounding."""


class _Interrupted(Exception):
    """SIGTERM or SIGHUP: stop like on Ctrl-C."""


class DemoError(MessageError):
    """A round failed or Airflow did not come up; the message says what and where to look
    (``str()`` is the message alone: it names a run or a log, not a file and line)."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tuneloop-demo", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="follow at most this many rounds (3)")
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="start over: remove .tuneloop/demo (data, jobs, ledger, report, MLflow store) and "
        ".tuneloop/airflow (Airflow's database and logs) first",
    )
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="leave Airflow running at the end (its UI shows the runs); stop it with --stop",
    )
    parser.add_argument(
        "--stop", action="store_true", help="stop the Airflow an earlier --keep-running left up"
    )
    parser.add_argument(
        "--check-stopped",
        action="store_true",
        help="exit 1, saying where, if the demo's Airflow is still running (make airflow)",
    )
    parser.add_argument("--keep", action="store_true", help=argparse.SUPPRESS)  # the old default
    parser.add_argument(
        "--project-dir",
        default=str(REPO),
        help="folder whose .tuneloop/ holds the demo's data, jobs, ledger and Airflow home "
        "(default: the repository)",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    project = Path(args.project_dir).absolute()
    state = project / ".tuneloop"
    home = state / "airflow"
    campaign_dir = state / "demo"

    left_up = _left_running(home)
    if args.stop:
        return _stop_left_running(home, left_up)
    if args.check_stopped:
        if left_up:
            print(
                f"the demo's Airflow is still running (--keep-running) on {home}: open "
                f"{left_up.get('api_url', '?')}, or stop it first with: "
                f"python -m tuneloop.demo --stop --project-dir {project}",
                file=sys.stderr,
            )
            return 1
        return 0
    if left_up:
        print(
            f"Airflow of an earlier demo with --keep-running is still running on {home} "
            f"({left_up.get('api_url', '?')}); stop it first: "
            f"python -m tuneloop.demo --stop --project-dir {project}",
            file=sys.stderr,
        )
        return 1
    if args.fresh:
        for folder in (campaign_dir, home):
            if folder.exists():
                print(f"--fresh: removing {folder}")
                shutil.rmtree(folder)
    os.environ["TUNELOOP_PROJECT_DIR"] = str(project)

    with _signals_as_interrupts():
        return Demo(args, project, home, campaign_dir).run()


class Demo:
    def __init__(self, args: argparse.Namespace, project: Path, home: Path, campaign_dir: Path):
        self.args = args
        self.project = project
        self.home = home
        self.campaign_dir = campaign_dir
        self.began = time.monotonic()
        self.started_at = datetime.now(UTC)
        self.airflow: AirflowProcesses | None = None
        self.client: AirflowClient | None = None
        self.paused = False
        from tuneloop.rounds.ledger import Ledger

        self.ledger = Ledger(str(campaign_dir))

    # -- the whole demo --

    def run(self) -> int:
        args = self.args
        finished = self._finished_campaign()
        if finished is not None and not self._has_active_run_on_disk():
            return self._say_finished(finished)
        print(
            f"tuneloop demo: SFT -> RFT -> evaluate of a tiny model, up to {args.rounds} "
            f"round(s), through Airflow's scheduler"
        )
        self._write_data()
        keep_running = False
        try:
            self._start_airflow()
            rounds = self._follow_rounds()
            cf = _load_campaign()
            if rounds is not None:
                self._run_lifecycle(cf)
            summarize(self.ledger, self.campaign_dir, time.monotonic() - self.began, cf)
            keep_running = args.keep_running
            if rounds is None:
                return 1
            return 0
        except DemoError as exc:
            print(f"\n{exc}", file=sys.stderr)
            # Left up on request, to look at the failure in the UI (unless Airflow itself failed).
            keep_running = args.keep_running and self.client is not None
            return 1
        except (KeyboardInterrupt, _Interrupted):
            print("\ninterrupted: stopping Airflow", file=sys.stderr)
            print(
                "The run in progress stays in Airflow's history; `make demo` continues it "
                "(a local training job already started finishes on its own and is adopted).",
                file=sys.stderr,
            )
            return 130
        finally:
            self._finish_airflow(keep_running)

    # -- before Airflow --

    def _finished_campaign(self) -> Any:
        latest = self.ledger.latest()
        if latest is not None and latest.decision.action.value in ("finish", "stop"):
            return latest
        return None

    def _has_active_run_on_disk(self) -> bool:
        """A run left queued or running in the Airflow database (read without Airflow)."""
        import sqlite3

        database = self.home / "airflow.db"
        if not database.exists():
            return False
        try:
            with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
                rows = db.execute(
                    "select count(*) from dag_run where dag_id = ? and state in (?, ?)",
                    (DAG_ID, *ACTIVE_STATES),
                ).fetchone()
        except sqlite3.Error:
            return False
        return bool(rows and rows[0])

    def _say_finished(self, record: Any) -> int:
        decision = record.decision
        print(
            f"The demo campaign already finished: round {record.round} decided "
            f"{decision.action.value} ({decision.reason})"
        )
        summarize(self.ledger, self.campaign_dir, None, _load_campaign())
        print(ui_hint(self.home, running_url=None))
        print(
            "To run the demo again from the start: make demo DEMO_ARGS=--fresh   "
            "(python -m tuneloop.demo --fresh; removes .tuneloop/demo and .tuneloop/airflow)"
        )
        return 0

    def _write_data(self) -> None:
        from tuneloop.local.demo_task import FILES, write_demo_data

        folder = self.campaign_dir / "data"
        if all((folder / name).exists() for name in FILES.values()):
            print(f"  demo data: {folder} (kept)")
            return
        write_demo_data(folder)
        print(f"  demo data written to {folder}")

    # -- Airflow --

    def _start_airflow(self) -> None:
        env = airflow_env(
            self.home,
            port=free_port(),
            dags_folder=REPO / "dags",
            plugins_folder=REPO / "plugins",
            extra={
                **DEMO_SETTINGS,
                "TUNELOOP_PROJECT_DIR": str(self.project),
                **(
                    {"AIRFLOW__LOGGING__LOGGING_LEVEL": os.environ["TUNELOOP_DEMO_LOG_LEVEL"]}
                    if os.environ.get("TUNELOOP_DEMO_LOG_LEVEL")
                    else {}
                ),
            },
        )
        log_dir = self.home / "logs" / "processes"
        self.airflow = AirflowProcesses(env, default_components(), log_dir)
        print(
            f"  starting Airflow (api-server, scheduler, dag-processor, triggerer) on SQLite in "
            f"{self.home}; process logs in {log_dir}"
        )
        began = time.monotonic()
        try:
            self.airflow.start(timeout=300)
        except AirflowStartError as exc:
            raise DemoError(f"Airflow did not start: {exc}") from None
        self._record_processes()
        self.client = self.airflow.client()
        print(f"  Airflow is up at {self.airflow.api_url} ({time.monotonic() - began:.0f} s)")
        self._wait_parsed(since=datetime.now(UTC))
        self._unpause(DAG_ID)

    def _wait_parsed(self, since: datetime) -> None:
        """Wait until the dag-processor has parsed the DAG file since Airflow started; an
        import error that costs tuneloop_demo ends the demo with the error."""
        client = self._client()
        # The dag-processor may have parsed it before `since` (it starts with the others).
        started = min(self.airflow_started_at(), since)
        errors_seen_at: list[float] = []

        def parsed() -> dict[str, Any] | None:
            dag = client.dag(DAG_ID)
            fresh = dag is not None and _after(dag.get("last_parsed_time"), started)
            if fresh and not dag.get("is_stale"):  # type: ignore[union-attr]
                return dag
            errors = [e for e in client.import_errors() if _after(e.get("timestamp"), started)]
            if errors:
                errors_seen_at.append(time.monotonic())
                if time.monotonic() - errors_seen_at[0] > 5:  # not just the order of two writes
                    text = "\n".join(f"{e['filename']}:\n{e['stack_trace']}" for e in errors)
                    raise DemoError(
                        f"the DAG file could not be imported, so {DAG_ID} is missing:\n{text}"
                    )
            return None

        began = time.monotonic()
        try:
            dag = client.wait_for(
                parsed, timeout=PARSE_TIMEOUT, what=f"the dag-processor parsing {DAG_ID}"
            )
        except TimeoutError as exc:
            assert self.airflow is not None
            raise DemoError(f"{exc}; see {self.airflow.log_path('dag-processor')}") from None
        for error in client.import_errors():
            if _after(error.get("timestamp"), started):
                print(f"  note: an import error beside {DAG_ID}:\n{error['stack_trace']}")
        print(f"  {DAG_ID} parsed ({time.monotonic() - began:.0f} s, {dag['fileloc']})")

    def airflow_started_at(self) -> datetime:
        assert self.airflow is not None
        return min(self.airflow.started_at.values())

    def _client(self) -> AirflowClient:
        assert self.client is not None
        return self.client

    def _record_processes(self) -> None:
        assert self.airflow is not None
        import psutil

        pids = {}
        for name, pid in self.airflow.pids().items():
            with contextlib.suppress(psutil.Error):
                pids[name] = {"pid": pid, "created": psutil.Process(pid).create_time()}
        (self.home / STATE_FILE).write_text(
            json.dumps({"api_url": self.airflow.api_url, "processes": pids}, indent=2) + "\n"
        )

    def _finish_airflow(self, keep_running: bool) -> None:
        if self.client is not None:
            self.client.close()
        if self.airflow is None:
            return
        if keep_running:
            print(
                f"\nAirflow keeps running at {self.airflow.api_url} (user admin, password in "
                f"{passwords_file(self.airflow.env)}).\nStop it with: python -m tuneloop.demo "
                f"--stop --project-dir {self.project}"
            )
            return
        began = time.monotonic()
        print("stopping Airflow ...", end="", flush=True)
        with _signals_ignored():  # a second Ctrl-C must not leave half of it running
            self.airflow.stop()
        (self.home / STATE_FILE).unlink(missing_ok=True)
        print(f" stopped ({time.monotonic() - began:.0f} s).")
        print(ui_hint(self.home, running_url=None))

    # -- the rounds --

    def _follow_rounds(self) -> int | None:
        """Follow runs until a round ends the campaign or --rounds rounds ran; the number of
        rounds followed, or None when a run ended without recording its round."""
        client = self._client()
        runs = client.dag_runs(DAG_ID)
        active = [r for r in runs if r.get("state") in ACTIVE_STATES]
        if active:
            run = active[0]
            print(
                f"\ncontinuing run {run['dag_run_id']} ({run['state']}) that an earlier demo left "
                "in Airflow"
            )
        else:
            run = client.trigger(DAG_ID, {})
            print(f"\ntriggered run {run['dag_run_id']} (manual, empty conf)")
        followed = 0
        progress = ProgressLine(sys.stdout)
        while True:
            round_began = time.monotonic()
            run_id = run["dag_run_id"]
            number = self._round_of(run_id)
            print(f"\n== round {number} (run {run_id}, {_started_by(run)})")
            last = followed + 1 >= self.args.rounds
            final = self._watch(run_id, number, progress, last=last)
            followed += 1
            record = self._record_of(run_id)
            if final["state"] != "success":
                self._explain_failure(run_id)
                raise DemoError(
                    f"round {number} failed (run {run_id} {final['state']}); the tasks' logs are "
                    f"under {self.home / 'logs'}"
                )
            if record is None:
                self._explain_no_record(run_id, final)
                return None
            print_round(record, time.monotonic() - round_began)
            decision = record.decision
            if decision.action.value not in ("continue", "rollback"):
                return followed
            next_run_id = self._next_run_id(run_id, record)
            next_run = self._wait_next_run(next_run_id)
            if followed >= self.args.rounds:
                waits = (
                    f"the DAG is paused so that it waits; the next `make demo` continues with it "
                    f"(or unpause {DAG_ID} in the UI)"
                    if self.paused and next_run["state"] == "queued"
                    else "it stops with Airflow now; the next `make demo` continues it"
                )
                print(
                    f"\nstopped following after {followed} round(s) (--rounds "
                    f"{self.args.rounds}); round {decision.next_round} was already triggered as "
                    f"run {next_run_id} ({next_run['state']}): {waits}"
                )
                return followed
            run = next_run

    # -- the lifecycle --

    def _run_lifecycle(self, cf: Any) -> None:
        """Trigger the lifecycle DAG with ``apply: true`` and wait for it: it runs after any
        lifecycle run the last round's record started (one run at a time), so once it ends the
        ledger's plan is carried out. Then print what the lifecycle did during this demo."""
        client = self._client()
        try:
            client.wait_for(
                lambda: client.dag(LIFECYCLE_DAG_ID),
                timeout=PARSE_TIMEOUT,
                what=f"the dag-processor parsing {LIFECYCLE_DAG_ID}",
            )
        except TimeoutError as exc:
            raise DemoError(f"{exc}; see {self._airflow_log('dag-processor')}") from None
        self._unpause(LIFECYCLE_DAG_ID)  # an earlier Airflow session may have paused it
        run = client.trigger(LIFECYCLE_DAG_ID, {"apply": True})
        run_id = run["dag_run_id"]
        print(
            f"\n== lifecycle (keep_last {cf.campaign.retention.keep_last}): {LIFECYCLE_DAG_ID} "
            f"runs after each round; now run {run_id} with apply: true"
        )
        try:
            final = client.wait_for_run(LIFECYCLE_DAG_ID, run_id, timeout=LIFECYCLE_TIMEOUT)
        except TimeoutError as exc:
            raise DemoError(f"the lifecycle run did not end: {exc}") from None
        if final["state"] != "success":
            self._explain_failure(run_id, dag_id=LIFECYCLE_DAG_ID)
            raise DemoError(
                f"the lifecycle run {run_id} {final['state']}; its tasks' logs are under "
                f"{self.home / 'logs'}"
            )
        from tuneloop.lifecycle.store import LifecycleStore

        store = LifecycleStore.for_campaign(cf.campaign)
        plan = next((p for p in reversed(store.plans()) if p.run_id == run_id), None)
        if plan is None:
            raise DemoError(f"the lifecycle run {run_id} succeeded without recording a plan")
        print_lifecycle(plan, self._since_demo(store), self.campaign_dir)

    def _since_demo(self, store: Any) -> list[Any]:
        """The applies recorded since this demo began (the runs after each round, and ours)."""
        since = self.started_at - _CLOCK_SLACK
        return [a for a in store.applies() if a.started_at >= since]

    def _unpause(self, dag_id: str) -> None:
        """Unpause ``dag_id``; a 5xx answer (SQLite busy while the dag-processor writes the
        DAGs it parsed) is asked again, up to a minute."""
        client = self._client()

        def unpaused() -> bool:
            client.unpause(dag_id)
            return True

        try:
            client.wait_for(unpaused, timeout=60, what=f"unpausing {dag_id}")
        except TimeoutError as exc:
            raise DemoError(f"{exc}; see {self._airflow_log('api-server')}") from None

    def _airflow_log(self, name: str) -> Path:
        assert self.airflow is not None
        return self.airflow.log_path(name)

    def _round_of(self, run_id: str) -> int:
        """The round a run plans: its claim in the ledger, else the ledger's next round."""
        with contextlib.suppress(Exception):
            for claim in self.ledger.claims():
                if claim.run_id == run_id:
                    return int(claim.round)
        return self.ledger.next_round()

    def _record_of(self, run_id: str) -> Any:
        for record in reversed(self.ledger.records()):
            if record.run_id == run_id:
                return record
        return None

    def _next_run_id(self, run_id: str, record: Any) -> str:
        with contextlib.suppress(AirflowApiError):
            value = self._client().xcom(DAG_ID, run_id, "decide", key="next_run_id")
            if isinstance(value, str) and value:
                return value
        return f"round_{record.decision.next_round:04d}__after_{record.round:04d}"

    def _wait_next_run(self, run_id: str) -> dict[str, Any]:
        client = self._client()

        def exists() -> dict[str, Any] | None:
            try:
                return client.dag_run(DAG_ID, run_id)
            except AirflowApiError as exc:
                if exc.status == 404:
                    return None
                raise

        try:
            return client.wait_for(exists, timeout=60, what=f"run {run_id} (the next round)")
        except TimeoutError as exc:
            raise DemoError(
                f"the decision's branch did not trigger the next round: {exc}"
            ) from None

    def _watch(
        self, run_id: str, number: int, progress: ProgressLine, *, last: bool
    ) -> dict[str, Any]:
        """Poll the run until it ends, printing what runs; the final run.

        The jobs' progress is read from their status files every second; the REST API is asked
        every second too, except while a job runs and no job starts or ends (then every
        ``JOB_POLL_SECONDS``), so that following a round costs the API server little CPU.

        In the ``last`` round followed, the DAG is paused once the round's next_round/rollback
        task is under way (past scheduling), so the run it triggers stays queued instead of
        starting while Airflow is being stopped; the next demo unpauses it."""
        client = self._client()
        jobs = JobWatcher(self._jobs_root())
        deadline = time.monotonic() + ROUND_TIMEOUT
        run: dict[str, Any] = {}
        tis: list[dict[str, Any]] = []
        asked = float("-inf")
        seen_jobs: list[str] = []
        while True:
            self._check_processes()
            interval = POLL_SECONDS
            active = jobs.active(round_number=number)
            names = [job["name"] + job["state"] for job in active]
            wait = JOB_POLL_SECONDS if active else POLL_SECONDS
            if names != seen_jobs or time.monotonic() - asked >= wait - 0.05:
                seen_jobs = names
                asked = time.monotonic()
                try:
                    run = client.dag_run(DAG_ID, run_id)
                    if run["state"] not in ACTIVE_STATES:
                        progress.done()
                        return run
                    tis = client.task_instances(DAG_ID, run_id)
                except (AirflowApiError, httpx.HTTPError) as exc:
                    text = f"round {number}  (Airflow API: {str(exc)[:80]})"
                    progress.show(text, key="api-error")
                    time.sleep(interval)
                    continue
            text, key = _describe(number, run, tis, active)
            progress.show(text, key=key)
            if last and not self.paused:
                states = {ti["task_id"]: ti.get("state") for ti in tis}
                if any(states.get(t) in UNDER_WAY for t in ("next_round", "rollback")):
                    client.pause(DAG_ID)
                    self.paused = True
                elif states.get("decide") in ("running", "success"):
                    interval = POLL_SECONDS / 5  # the branch is near: look closely
                    asked = float("-inf")
            if time.monotonic() > deadline:
                raise DemoError(
                    f"round {number} (run {run_id}) did not end within {ROUND_TIMEOUT:.0f}s"
                )
            time.sleep(interval)

    def _check_processes(self) -> None:
        assert self.airflow is not None
        for name in self.airflow.components:
            code = self.airflow.returncode(name)
            if code is not None:
                raise DemoError(
                    f"airflow {name} exited with {code}; see {self.airflow.log_path(name)}"
                )

    def _jobs_root(self) -> Path:
        from tuneloop.config.backend import job_backend_config

        return Path(job_backend_config(_load_campaign().campaign)["root"])

    def _explain_failure(self, run_id: str, dag_id: str = DAG_ID) -> None:
        client = self._client()
        try:
            tis = client.task_instances(dag_id, run_id)
        except AirflowApiError as exc:
            print(f"(cannot list the run's tasks: {exc})", file=sys.stderr)
            return
        failed = [ti for ti in tis if ti.get("state") == "failed"]
        for ti in failed:
            name = ti["task_id"] + (f"[{ti['map_index']}]" if ti.get("map_index", -1) >= 0 else "")
            print(
                f"\ntask {name} failed (try {ti.get('try_number')}); the end of its log:",
                file=sys.stderr,
            )
            try:
                text = client.task_log(
                    dag_id,
                    run_id,
                    ti["task_id"],
                    int(ti.get("try_number") or 1),
                    map_index=int(ti.get("map_index", -1)),
                )
            except AirflowApiError as exc:
                text = f"(log not available: {exc})"
            lines = [line for line in text.splitlines() if "::group::" not in line]
            lines = [line for line in lines if "::endgroup::" not in line][-40:]
            print("\n".join("    " + line for line in lines), file=sys.stderr)
        if not failed:
            states = sorted({str(ti.get("state")) for ti in tis})
            print(f"no task failed (task states: {', '.join(states)})", file=sys.stderr)

    def _explain_no_record(self, run_id: str, run: dict[str, Any]) -> None:
        """A run that succeeded without recording its round: a dry run, or tasks that Airflow
        removed because the DAG changed under it (the DAG file failed to import meanwhile)."""
        client = self._client()
        counts: dict[str, int] = {}
        for ti in client.task_instances(DAG_ID, run_id):
            counts[str(ti.get("state"))] = counts.get(str(ti.get("state")), 0) + 1
        states = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        print(f"run {run_id} ended ({run['state']}) without recording a round; its tasks: {states}")
        started = run.get("start_date")
        for error in client.import_errors():
            if _after(
                error.get("timestamp"), _parse_time(started) or datetime.min.replace(tzinfo=UTC)
            ):
                print(f"the DAG file failed to import meanwhile:\n{error['stack_trace']}")
        if counts.get("removed"):
            print(
                "Airflow removed tasks that the DAG no longer had: the DAG file or the campaign "
                "changed (or failed to load) while the round ran"
            )


class JobWatcher:
    """Progress of the local jobs under the campaign's jobs root (their status.json)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._labels: dict[str, dict[str, str]] = {}
        self._final: set[str] = set()

    def active(self, round_number: int) -> list[dict[str, Any]]:
        """Jobs of this round (and the base model's evaluation) that are pending or running:
        labels, kind and progress."""
        from tuneloop.local.runner import SPEC_FILE, STATUS_FILE, format_duration

        found = []
        try:
            entries = list(self.root.iterdir())
        except OSError:
            return []
        for entry in entries:
            name = entry.name
            if name.startswith(".") or name in self._final:
                continue
            try:
                status = json.loads((entry / STATUS_FILE).read_text(encoding="utf-8"))
                if name not in self._labels:
                    spec = json.loads((entry / SPEC_FILE).read_text(encoding="utf-8"))
                    self._labels[name] = {
                        **(spec.get("labels") or {}),
                        "kind": spec.get("kind", ""),
                    }
            except (OSError, ValueError):
                continue
            state = str(status.get("state", "")).upper()
            if state not in ("PENDING", "RUNNING"):
                self._final.add(name)
                continue
            labels = self._labels[name]
            if labels.get("round") not in (None, "0", str(round_number)):  # 0: the base model
                continue
            job: dict[str, Any] = {"name": name, "state": state.lower(), **labels}
            progress = status.get("progress") or {}
            if progress.get("step") is not None:
                job["step"] = int(progress["step"])
                job["total"] = progress.get("total")
                eta = _remaining(progress.get("eta"))
                if eta is not None:
                    job["eta"] = format_duration(eta)
            found.append(job)
        return sorted(found, key=lambda j: j["name"])


def _describe(
    number: int, run: dict[str, Any], tis: list[dict[str, Any]], jobs: list[dict[str, Any]]
) -> tuple[str, str]:
    """One progress line and the part of it whose change is worth a line at once."""
    counts: dict[str, int] = {}
    for ti in tis:
        if ti.get("state") in TASK_ACTIVE:
            counts[ti["task_id"]] = counts.get(ti["task_id"], 0) + 1
    waiting = sorted({ti["task_id"] for ti in tis if ti.get("state") in TASK_WAITING})
    if counts:
        tasks = ", ".join(f"{t} x{n}" if n > 1 else t for t, n in sorted(counts.items()))
    elif waiting:
        tasks = f"(queued: {', '.join(waiting)})"
    else:
        tasks = f"(run {run.get('state')})"
    parts = [f"round {number}", tasks]
    named = len(jobs) > 1 or len(counts) != 1
    for job in jobs:
        stage = str(job.get("stage") or job.get("kind") or job["name"])
        words = [stage] if named or not tasks.endswith(stage) else []
        if "step" in job:
            words.append(f"step {job['step']}" + (f"/{job['total']}" if job.get("total") else ""))
            if job.get("eta"):
                words.append(f"ETA {job['eta']}")
        else:
            words.append(f"({job['state']})")
        parts.append("  ".join(words))
    key = " | ".join([tasks, *(str(j.get("stage") or j["name"]) for j in jobs)])
    return "  ".join(parts), key


def _started_by(run: dict[str, Any]) -> str:
    run_type = str(run.get("run_type", "")).lower()
    reason = (run.get("conf") or {}).get("reason")
    if run_type == "manual" and not run.get("conf"):
        return "manual, empty conf"
    if reason:
        return f"{run_type}: {reason}"
    return run_type or "?"


def _remaining(eta: str | None) -> float | None:
    if not eta:
        return None
    try:
        moment = datetime.fromisoformat(eta)
    except ValueError:
        return None
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        when = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _after(text: str | None, moment: datetime) -> bool:
    when = _parse_time(text)
    return when is not None and when >= moment


def _load_campaign() -> Any:
    from tuneloop.config.file import load_campaign

    return load_campaign(CAMPAIGN_FILE)


# -- processes left up by --keep-running --


def _left_running(home: Path) -> dict[str, Any] | None:
    """What STATE_FILE records, if any of those processes still runs."""
    path = home / STATE_FILE
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if _live_processes(recorded):
        return recorded
    path.unlink(missing_ok=True)
    return None


def _live_processes(recorded: dict[str, Any]) -> dict[str, Any]:
    import psutil

    live = {}
    for name, entry in (recorded.get("processes") or {}).items():
        try:
            process = psutil.Process(int(entry["pid"]))
            if abs(process.create_time() - float(entry["created"])) < 1:
                live[name] = process
        except (psutil.Error, KeyError, TypeError, ValueError):
            continue
    return live


def _stop_left_running(home: Path, recorded: dict[str, Any] | None, grace: float = 20) -> int:
    import psutil

    if not recorded:
        print(f"no Airflow of an earlier demo is running on {home}")
        return 0
    live = _live_processes(recorded)
    family: list[Any] = list(live.values())
    for process in live.values():
        with contextlib.suppress(psutil.Error):
            family.extend(process.children(recursive=True))
            process.terminate()
    print(f"stopping Airflow on {home} ({', '.join(live)}) ...")
    _, alive = psutil.wait_procs(family, timeout=grace)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=10)
    (home / STATE_FILE).unlink(missing_ok=True)
    print("stopped.")
    return 0


@contextlib.contextmanager
def _signals_as_interrupts() -> Iterator[None]:
    """SIGTERM and SIGHUP end the demo like Ctrl-C (Airflow's processes are stopped)."""

    def interrupt(signum: int, frame: Any) -> None:
        raise _Interrupted(signal.Signals(signum).name)

    saved = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
