"""What the end-to-end scenario and fault tests look at, as a user would look at it.

- campaign files beyond the default one: another trainer (``fakes.data_learner``), a schedule,
  data URIs templated with ``{{ ds }}``;
- task instances, their tries and logs through the REST API;
- the ledger a user can read: round records and claims under ``<output_root>/<campaign>/``;
- which Celery worker runs a task (the task instance's ``pid`` from the REST API, found in that
  worker's process tree), and stopping, killing and restarting that worker.

Everything waits on events with a deadline; nothing sleeps for a fixed time and hopes.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

from e2e.campaigns import Campaign, campaign_text

if TYPE_CHECKING:
    from e2e.conftest import Stack

T = TypeVar("T")

FINAL_RUN_STATES = ("success", "failed")
_LOG_RECORD_KEYS = frozenset({"timestamp", "level", "event", "logger", "error_detail", "loc"})


# -- campaign files -------------------------------------------------------------------------------


def campaign_document(stack: Stack, name: str, **options: Any) -> dict[str, Any]:
    """The default test campaign (``campaigns.campaign_text``) as a dict, to be changed."""
    text = campaign_text(
        name,
        output_root=stack.project_dir / "outputs",
        data=stack.data_dir,
        mlflow_uri=stack.mlflow.url,
        **options,
    )
    return dict(json.loads(text))


def write_document(stack: Stack, document: dict[str, Any]) -> Campaign:
    """Write a campaign document (JSON is YAML) as ``<name>.yaml`` in the campaigns folder."""
    return stack.write_campaign(document["name"], json.dumps(document, indent=2) + "\n")


def learning_from_data(document: dict[str, Any]) -> dict[str, Any]:
    """The campaign trains with ``fakes.data_learner``: its evaluations follow the quality of
    the data its rounds trained on."""
    document["backend"]["entrypoint"] = "fakes.data_learner:run"
    return document


def poisoned_copy(source: Path, target: Path) -> Path:
    """The SFT records of ``source`` with every answer off by one (still valid records)."""
    lines = []
    for line in source.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        reply = record["messages"][-1]["content"][0]
        reply["text"] = f"ANSWER: {int(reply['text'].split()[-1]) + 1}"
        lines.append(json.dumps(record))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return target


def daily_schedule_after_now(now: datetime | None = None) -> tuple[str, date]:
    """A daily cron schedule and a start date such that no scheduled run is due for at least an
    hour: the next firing is later today (the start date is today, already begun) or, late in
    the day, tomorrow. Backfills of earlier days are then the only runs."""
    now = now or datetime.now(UTC)
    fire = (now + timedelta(hours=2)).replace(minute=0, second=0, microsecond=0)
    return f"0 {fire.hour} * * *", fire.date()


# -- runs and task instances ------------------------------------------------------------------


def _run_path(dag_id: str, run_id: str) -> str:
    return f"dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}"


def task_instance(stack: Stack, dag_id: str, run_id: str, task_id: str) -> dict[str, Any]:
    """One (unmapped) task instance as the REST API shows it."""
    path = f"{_run_path(dag_id, run_id)}/taskInstances/{quote(task_id, safe='')}"
    return dict(stack.client.request("GET", path))


def tries(stack: Stack, dag_id: str, run_id: str, task_id: str) -> list[dict[str, Any]]:
    """Every try of a task instance (the REST API's try history), oldest first."""
    path = f"{_run_path(dag_id, run_id)}/taskInstances/{quote(task_id, safe='')}/tries"
    answer = stack.client.request("GET", path)
    found = list(answer.get("task_instances") or [])
    return sorted(found, key=lambda t: int(t.get("try_number") or 0))


def wait_task(
    stack: Stack,
    dag_id: str,
    run_id: str,
    task_id: str,
    states: Iterable[str],
    *,
    timeout: float = 180.0,
    interval: float = 0.5,
) -> dict[str, Any]:
    """The task instance once its state is one of ``states``; a run that ended first fails
    with its report."""
    wanted = set(states)

    def reached() -> dict[str, Any] | None:
        with contextlib.suppress(Exception):
            ti = task_instance(stack, dag_id, run_id, task_id)
            if ti.get("state") in wanted:
                return ti
        run = stack.client.dag_run(dag_id, run_id)
        if run.get("state") in FINAL_RUN_STATES:
            raise AssertionError(
                f"run {run_id} ended {run['state']} before {task_id} was "
                f"{'/'.join(sorted(wanted))}:\n{stack.run_report(dag_id, run_id)}"
            )
        return None

    return stack.client.wait_for(
        reached,
        timeout=timeout,
        what=f"{task_id} of {run_id} in state {sorted(wanted)}",
        interval=interval,
    )


def wait_run_ended(
    stack: Stack, dag_id: str, run_id: str, timeout: float = 240.0
) -> dict[str, Any]:
    """The run once it ended, whatever its state."""
    return stack.client.wait_for_run(dag_id, run_id, timeout=timeout)


def wait_runs(
    stack: Stack, dag_id: str, count: int, *, timeout: float = 120.0
) -> list[dict[str, Any]]:
    """The DAG's runs (oldest first) once there are at least ``count``."""

    def enough() -> list[dict[str, Any]] | None:
        runs = stack.client.dag_runs(dag_id)
        return runs if len(runs) >= count else None

    return stack.client.wait_for(enough, timeout=timeout, what=f"{count} runs of {dag_id}")


def plan_of(stack: Stack, dag_id: str, run_id: str) -> dict[str, Any]:
    """What plan_round decided for a run (its XCom ``round``: start, plan, datasets)."""
    return dict(stack.client.xcom(dag_id, run_id, "plan_round", key="round"))


def task_log(stack: Stack, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> str:
    """A try's log as the REST API serves it
    (``/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try}``), one line
    per record, with the messages of any exception."""
    path = f"{_run_path(dag_id, run_id)}/taskInstances/{quote(task_id, safe='')}/logs/{try_number}"
    answer = stack.client.request(
        "GET",
        path,
        params={"full_content": "true", "map_index": -1},
        headers={"Accept": "application/json"},
    )
    content = answer.get("content") if isinstance(answer, dict) else answer
    if isinstance(content, str):
        return content
    lines = []
    for item in content or []:
        if not isinstance(item, dict):
            lines.append(str(item))
            continue
        extra = " ".join(
            f"{key}={value}"
            for key, value in item.items()
            if key not in _LOG_RECORD_KEYS and value not in (None, "")
        )
        lines.append(f"{str(item.get('level', '')).upper()} {item.get('event', '')} {extra}")
        for detail in item.get("error_detail") or []:
            lines.append(f"  {detail.get('exc_type', '')}: {detail.get('exc_value', '')}")
    return "\n".join(lines)


def parse_time(text: str | None) -> datetime:
    assert text, "no time recorded"
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def backfill(stack: Stack, dag_id: str, *args: str) -> str:
    """``airflow backfill create --dag-id DAG ARGS...``; returns what it printed."""
    done = stack.airflow.cli("backfill", "create", "--dag-id", dag_id, *args, timeout=180)
    return str(done.stdout) + str(done.stderr)


# -- the ledger and the jobs a user can look at -------------------------------------------------


def claims(campaign: Campaign, number: int | None = None) -> list[dict[str, Any]]:
    """The round claims under ``<campaign root>/claims/`` (``<nnnn>-<attempt>.json``), as JSON,
    sorted by name; only round ``number``'s when given."""
    folder = campaign.root / "claims"
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.glob("*.json")):
        if number is None or path.name.startswith(f"{number:04d}-"):
            found.append({"file": path.name, **json.loads(path.read_text(encoding="utf-8"))})
    return found


def stages_of_jobs(campaign: Campaign, number: int) -> list[str]:
    """The stage label of every job of round ``number`` (the backend's ``find``), sorted."""
    return sorted(job.labels["stage"] for job in campaign.jobs(round=str(number)))


def release(path: Path) -> None:
    """Let the fake jobs waiting on ``path`` (their ``wait_for``) finish."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


def hold_jobs(stack: Stack, campaign: Campaign, gate: Path, **labels: str | int) -> None:
    """The campaign's jobs with these labels wait until ``gate`` exists."""
    selector = ",".join([f"campaign={campaign.name}", *(f"{k}={v}" for k, v in labels.items())])
    stack.fake_jobs.add(selector, {"wait_for": str(gate)})


class Gates:
    """Files that held jobs wait for (``hold``); whatever a test did not release is released
    when it ends (``release_all``), so no job of a failed test waits on into the next one."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.paths: list[Path] = []

    def hold(self, campaign: Campaign, **labels: str | int) -> Path:
        """Hold the campaign's jobs with these labels; returns the file that releases them."""
        suffix = "-".join(str(v) for v in labels.values())
        gate = self.stack.project_dir / "gates" / f"{campaign.name}-{suffix}"
        hold_jobs(self.stack, campaign, gate, **labels)
        self.paths.append(gate)
        return gate

    def release_all(self) -> None:
        for gate in self.paths:
            release(gate)


# -- workers --------------------------------------------------------------------------------------


def process_tree(root_pid: int) -> list[Any]:
    """The process ``root_pid`` and every process under it (psutil.Process), parents first."""
    import psutil

    try:
        root = psutil.Process(root_pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def worker_running(stack: Stack, pid: int | None) -> str | None:
    """The Celery worker whose process tree holds process ``pid`` (a task instance's ``pid``),
    or None."""
    if not pid:
        return None
    for name, root in stack.airflow.pids().items():
        if not name.startswith("worker-"):
            continue
        if any(p.pid == pid for p in process_tree(root)):
            return name
    return None


def freeze(stack: Stack, name: str) -> list[Any]:
    """SIGSTOP every process of one Airflow component (its whole tree), so that it is caught
    exactly as it is now; returns the stopped processes."""
    import psutil

    root = stack.airflow.pids()[name]
    stopped: dict[int, Any] = {}
    for _ in range(2):  # a child forked while the first pass ran is caught by the second
        for process in process_tree(root):
            if process.pid not in stopped:
                with contextlib.suppress(psutil.Error):
                    process.send_signal(signal.SIGSTOP)
                    stopped[process.pid] = process
    return list(stopped.values())


def thaw(processes: Iterable[Any]) -> None:
    import psutil

    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.send_signal(signal.SIGCONT)


def restart_worker(stack: Stack, name: str, timeout: float = 180.0) -> None:
    """Start a killed Celery worker again and wait until its log says it is ready."""
    log = stack.airflow.log_path(name)
    offset = log.stat().st_size if log.exists() else 0
    stack.airflow.start_component(name)

    def ready() -> bool:
        with open(log, "rb") as stream:
            stream.seek(offset)
            return b" ready." in stream.read()

    wait_until(ready, timeout=timeout, what=f"{name} ready again (log {log})")


def wait_until(
    condition: Callable[[], T | bool | None], *, timeout: float, what: str, interval: float = 0.2
) -> T:
    """Poll ``condition`` until it is truthy (returned); TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(interval)


def job_process_detached(runner: Any, labels: dict[str, str]) -> Any | None:
    """The local job with these labels once its process runs on its own: the launcher recorded
    its pid and exited, so the job is no longer a child of the task that submitted it (a
    worker's death no longer takes it along). None before that."""
    import psutil

    for status in runner.find(labels):
        if status.pid is None:
            continue
        try:
            parent = psutil.Process(status.pid).parent()
            # A launcher that is exiting reads as an empty command line until the kernel has
            # handed its children over: the job is still its child (and in the worker's tree).
            command = " ".join(parent.cmdline()) if parent is not None else ""
        except psutil.Error:
            return status  # ended already, or its parent is gone: it is on its own too
        if parent is None or (command and "--launch" not in command):
            return status
    return None
