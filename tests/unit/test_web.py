"""tuneloop's pages (tuneloop.web) over real HTTP: a uvicorn server on a loopback port serving the
plugin's app mounted at /tuneloop the way Airflow's API server mounts plugin apps, real local
jobs, and real MLflow stores (a SQLite folder store and an `mlflow server`).

Airflow's login is replaced here by an access checker that admits everyone and records which
DAG each page asked about; tests/integration/test_links.py runs the same pages behind a real
Airflow API server and its auth manager.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest
import yaml
from test_tracking import CAMPAIGN, make_record, mlflow_server  # noqa: F401  (a fixture)

from tuneloop import links as urls
from tuneloop.jobs.base import JobSpec, JobState, job_name
from tuneloop.jobs.local import LocalJobBackend
from tuneloop.tracking.mirror import Tracker
from tuneloop.web.app import Access, access, campaign_dag_id
from tuneloop.web.app import app as web_app

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
SECRET = "hunter2-do-not-show"
DAG_ID = campaign_dag_id(CAMPAIGN)


class OpenAccess(Access):
    """Everyone is logged in and may read everything; the DAGs asked about are recorded."""

    asked: list[tuple[str | None, str]] = []

    async def user(self) -> Any:
        return "tester"

    async def require(self, user: Any, dag_id: str | None, entity: str) -> None:
        OpenAccess.asked.append((dag_id, entity))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """The plugin's app under /tuneloop of a parent app, served by uvicorn on loopback."""
    import uvicorn
    from fastapi import FastAPI

    parent = FastAPI()
    parent.mount(urls.URL_PREFIX, web_app)  # as airflow.api_fastapi.app.init_plugins does
    web_app.dependency_overrides[access] = OpenAccess
    port = _free_port()
    config = uvicorn.Config(parent, host="127.0.0.1", port=port, log_level="warning")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not uv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        uv.should_exit = True
        thread.join(timeout=30)
        web_app.dependency_overrides.clear()


@pytest.fixture
def client(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=60, follow_redirects=False) as http:
        yield http


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, server: str, tmp_path: Path) -> dict[str, Path]:
    """Links point at the test server; tmp_path/allowed is the only local root; an empty
    campaigns folder."""
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    campaigns = tmp_path / "campaigns"
    campaigns.mkdir()
    monkeypatch.setenv(urls.BASE_URL_ENV, server + "/")
    monkeypatch.setenv("AIRFLOW__TUNELOOP__LOCAL_ROOTS", str(allowed))
    monkeypatch.setenv("TUNELOOP_CAMPAIGNS_DIR", str(campaigns))
    monkeypatch.delenv("TUNELOOP_LOCAL_ROOT", raising=False)
    OpenAccess.asked.clear()
    return {"allowed": allowed, "campaigns": campaigns, "outside": tmp_path / "outside"}


def backend_in(root: Path) -> LocalJobBackend:
    return LocalJobBackend(
        str(root),
        entrypoint="fakes.instant_jobs:run",
        python_path=[str(TESTS)],
        env={"TUNELOOP_API_TOKEN": SECRET},
        grace=2.0,
    )


def submit(backend: LocalJobBackend, output: Path, kind: str = "train", **fake: Any) -> str:
    method = "eval" if kind == "eval" else "sft"
    recipe = {"run": {"model_type": "tiny-chat"}, "fake": fake}
    spec = JobSpec(
        name=job_name(CAMPAIGN, 1, method, recipe),
        kind=kind,
        method=method,
        recipe=recipe,
        output_uri=str(output),
        labels={"campaign": CAMPAIGN, "round": "1", "stage": method},
    )
    return backend.submit(spec).name


def with_query(url: str, **params: Any) -> str:
    """``url`` with more query parameters (httpx's ``params`` would replace its query)."""
    from urllib.parse import urlencode

    return f"{url}&{urlencode(params)}"


def until(condition: Any, what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# -- URLs -----------------------------------------------------------------------------------------


def test_urls_are_absolute_http_from_the_api_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(urls.BASE_URL_ENV, "https://airflow.example.com/team-a/")
    url = urls.job_page_url("/data/jobs root", "demo-r0001-sft-abc")
    assert url == (
        "https://airflow.example.com/team-a/tuneloop/jobs/demo-r0001-sft-abc"
        "?root=%2Fdata%2Fjobs+root"
    )
    link = urls.mlflow_link_url("tuneloop_demo", "manual__2026-01-01T00:00:00+00:00", "train_sft")
    parts = urlsplit(link)
    assert (parts.scheme, parts.netloc, parts.path) == (
        "https",
        "airflow.example.com",
        "/team-a/tuneloop/mlflow",
    )
    assert parse_qs(parts.query) == {
        "dag_id": ["tuneloop_demo"],
        "run_id": ["manual__2026-01-01T00:00:00+00:00"],
        "task_id": ["train_sft"],
    }
    for unusable in ("", "/", "localhost:8080", "file:///tmp"):
        monkeypatch.setenv(urls.BASE_URL_ENV, unusable)
        assert urls.api_base_url() == "http://localhost:8080"
    monkeypatch.delenv(urls.BASE_URL_ENV)
    assert urls.is_http(urls.api_base_url())  # from Airflow's configuration, else the default


def test_campaign_dag_id_matches_the_campaign_model() -> None:
    from tuneloop.config.file import load_campaign

    demo = load_campaign(REPO / "recipes" / "campaigns" / "demo.yaml").campaign
    assert campaign_dag_id(demo.name) == demo.dag_id
    assert campaign_dag_id("support-bot") == "tuneloop_support_bot"


# -- the job page ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_finished_local_job_shows_state_log_tail_and_outputs(
    client: httpx.Client, env: dict[str, Path]
) -> None:
    backend = backend_in(env["allowed"] / "jobs")
    name = submit(backend, env["allowed"] / "out", log_lines=300)
    status = until(lambda: (s := backend.status(name)).final and s, "the job to end")
    assert status.state is JobState.SUCCEEDED

    url = status.console_url
    assert url.startswith(f"{client.base_url}/tuneloop/jobs/{name}?root="), url
    page = client.get(url)
    assert page.status_code == 200, page.text
    html = page.text
    assert "SUCCEEDED" in html
    # The last 200 lines of job.log: the runner's closing line and lines 102-300.
    assert f"{name} line 300\n" in html and f"{name} line 102\n" in html
    assert f"{name} line 101\n" not in html and "succeeded" in html
    assert "manifest.json" in html and "checkpoint_s3_bucket" in html
    assert "checkpoint.json" in html and "tiny-chat" in html
    assert 'http-equiv="refresh"' not in html  # a final job needs no refresh
    assert SECRET not in html and "TUNELOOP_API_TOKEN" not in html
    # The page asked for the campaign's DAG's task logs.
    assert OpenAccess.asked[-1] == (DAG_ID, "TASK_LOGS")

    data = client.get(with_query(url, format="json", lines=5)).json()
    assert data["state"] == "SUCCEEDED" and data["final"] is True
    lines = data["log"]["lines"]
    assert lines[:4] == [f"{name} line {i}" for i in range(297, 301)]
    assert len(lines) == 5 and lines[4].endswith(f"job {name} succeeded")
    assert data["progress"]["step"] == 300 and data["progress"]["total"] == 300
    assert data["labels"] == {"campaign": CAMPAIGN, "round": "1", "stage": "sft"}
    assert data["outputs"]["shown"] is True
    assert data["outputs"]["manifest"]["checkpoint_s3_bucket"].endswith("/checkpoint")
    assert {f["name"] for f in data["outputs"]["files"]} >= {"manifest.json", "checkpoint"}
    assert data["started_at"] and data["ended_at"] and data["duration_seconds"] >= 0
    assert SECRET not in json.dumps(data)


@pytest.mark.slow
def test_an_evaluation_job_shows_its_metrics(client: httpx.Client, env: dict[str, Path]) -> None:
    backend = backend_in(env["allowed"] / "jobs")
    name = submit(backend, env["allowed"] / "out", kind="eval", metrics={"exact_match": 0.625})
    status = until(lambda: (s := backend.status(name)).final and s, "the job to end")
    page = client.get(status.console_url)
    assert page.status_code == 200 and "Evaluation: results_" in page.text
    assert "exact_match" in page.text and "0.625" in page.text
    data = client.get(with_query(status.console_url, format="json")).json()
    assert data["outputs"]["evaluation"][0]["metrics"] == {"exact_match": 0.625}


@pytest.mark.slow
def test_a_running_job_shows_progress_and_refreshes(
    client: httpx.Client, env: dict[str, Path], tmp_path: Path
) -> None:
    go = tmp_path / "go"
    backend = backend_in(env["allowed"] / "jobs")
    name = submit(backend, env["allowed"] / "out", log_lines=4, wait_for=str(go))
    url = backend.status(name).console_url

    def running() -> Any:
        data = client.get(with_query(url, format="json")).json()
        progress = data.get("progress") or {}
        done = data["state"] == "RUNNING" and progress.get("step") == 4 and data["log"]["lines"]
        return data if done else None

    data = until(running, "the job to print its lines")
    assert data["final"] is False and data["progress"]["total"] == 4
    assert data["log"]["lines"][-1] == f"{name} line 4"
    html = client.get(url).text
    assert 'http-equiv="refresh"' in html and "RUNNING" in html and "step 4 of 4" in html
    assert "nothing written yet" in html or "Files" in html

    go.touch()
    until(lambda: backend.status(name).final, "the job to end")
    assert "SUCCEEDED" in client.get(url).text


@pytest.mark.slow
def test_paths_outside_the_local_roots_are_refused(
    client: httpx.Client, env: dict[str, Path]
) -> None:
    allowed, outside = env["allowed"], env["outside"]
    # A real job outside the roots.
    foreign = backend_in(outside / "jobs")
    name = submit(foreign, outside / "out", log_lines=2)
    status = until(lambda: (s := foreign.status(name)).final and s, "the job to end")
    (outside / "jobs" / name / "job.log").write_text(f"{SECRET}\n")

    def refused(response: httpx.Response) -> None:
        if response.is_redirect:  # a path that the client or server normalized away
            response = client.get(response.headers["location"], follow_redirects=True)
        assert response.status_code in (403, 404), (response.status_code, response.text)
        assert SECRET not in response.text
        assert "checkpoint_s3_bucket" not in response.text

    # Its own link: the folder is not a local root.
    page = client.get(status.console_url)
    refused(page)
    assert page.status_code == 403 and "local_roots" in page.text
    # .. out of an allowed folder, a relative root, a root that is a file path.
    refused(client.get(f"/tuneloop/jobs/{name}", params={"root": f"{allowed}/../outside/jobs"}))
    refused(client.get(f"/tuneloop/jobs/{name}", params={"root": "outside/jobs"}))
    refused(client.get(f"/tuneloop/jobs/{name}", params={"root": ""}))
    # A name that is a path: .., an absolute path, an encoded separator.
    jobs_root = str(outside / "jobs")
    for bad in ("..", "%2E%2E", quote(f"../outside/jobs/{name}", safe=""), quote(jobs_root)):
        refused(client.get(f"/tuneloop/jobs/{bad}", params={"root": str(allowed)}))
    # Symlinks out: the jobs folder, a job folder, and a job's log file.
    (allowed / "jobs-link").symlink_to(outside / "jobs")
    refused(client.get(f"/tuneloop/jobs/{name}", params={"root": str(allowed / "jobs-link")}))
    (allowed / "jobs").mkdir()
    (allowed / "jobs" / name).symlink_to(outside / "jobs" / name)
    refused(client.get(f"/tuneloop/jobs/{name}", params={"root": str(allowed / "jobs")}))

    mine = backend_in(allowed / "own")
    own = submit(mine, allowed / "out", log_lines=1, sleep=0.0, metrics={"a": 1.0}, kind="eval")
    until(lambda: mine.status(own).final, "the job to end")
    log = allowed / "own" / own / "job.log"
    log.unlink()
    log.symlink_to(outside / "jobs" / name / "job.log")
    refused(client.get(f"/tuneloop/jobs/{own}", params={"root": str(allowed / "own")}))
    # Every request was refused before the page got as far as asking about a DAG.
    assert OpenAccess.asked == []


@pytest.mark.slow
def test_outputs_outside_the_roots_are_not_shown(
    client: httpx.Client, env: dict[str, Path]
) -> None:
    backend = backend_in(env["allowed"] / "jobs")
    name = submit(backend, env["outside"] / "out", log_lines=1)
    status = until(lambda: (s := backend.status(name)).final and s, "the job to end")
    data = client.get(with_query(status.console_url, format="json")).json()
    assert data["state"] == "SUCCEEDED"
    assert data["outputs"]["shown"] is False and "outside" in data["outputs"]["why"]
    assert data["outputs"]["manifest"] is None and data["outputs"]["files"] == []


def test_an_unknown_job_is_a_404(client: httpx.Client, env: dict[str, Path]) -> None:
    page = client.get("/tuneloop/jobs/no-such-job", params={"root": str(env["allowed"])})
    assert page.status_code == 404 and "no job &#x27;no-such-job&#x27;" in page.text
    data = client.get(
        "/tuneloop/jobs/no-such-job", params={"root": str(env["allowed"]), "format": "json"}
    )
    assert data.status_code == 404 and "no job" in data.json()["error"]


def test_campaign_folders_are_local_roots(
    env: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from tuneloop.web.roots import local_roots

    monkeypatch.setenv("AIRFLOW__TUNELOOP__LOCAL_ROOTS", "")
    output_root = tmp_path / "campaign-out"
    shared = tmp_path / "shared-jobs"
    write_campaign(env["campaigns"], output_root, mlflow_uri="", jobs_root=str(shared))
    assert local_roots() == [(output_root / CAMPAIGN).resolve(), shared.resolve()]
    monkeypatch.setenv("TUNELOOP_LOCAL_ROOT", str(tmp_path / "runner"))
    assert (tmp_path / "runner").resolve() in local_roots()


# -- MLflow ---------------------------------------------------------------------------------------


def write_campaign(folder: Path, output_root: Path, mlflow_uri: str, jobs_root: str = "") -> Path:
    """A local campaign named like test_tracking's records, from the demo campaign."""
    demo = yaml.safe_load((REPO / "recipes" / "campaigns" / "demo.yaml").read_text())
    demo["name"] = CAMPAIGN
    demo["backend"] = {"type": "local", "output_root": str(output_root)}
    if mlflow_uri:
        demo["backend"]["mlflow_uri"] = mlflow_uri
    if jobs_root:
        demo["backend"]["jobs_root"] = jobs_root
    path = folder / f"{CAMPAIGN}.yaml"
    path.write_text(yaml.safe_dump(demo, sort_keys=False))
    return path


def records(checkpoints: Path) -> list[dict[str, Any]]:
    return [
        make_record(
            1,
            action="continue",
            promoted=True,
            champion=1,
            exact_match=0.5,
            checkpoint_root=str(checkpoints),
        ),
        make_record(
            2,
            action="finish",
            promoted=True,
            champion=2,
            exact_match=0.75,
            checkpoint_root=str(checkpoints),
        ),
    ]


def link(task_id: str, run_id: str = "round_0001", **extra: str) -> dict[str, str]:
    return {"dag_id": DAG_ID, "run_id": run_id, "task_id": task_id, **extra}


@pytest.fixture(scope="module")
def local_store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Rounds 1 and 2 mirrored by tuneloop.tracking.mirror into a local folder store."""
    root = tmp_path_factory.mktemp("web-mlflow")
    tracker = Tracker(str(root / "mlflow"), CAMPAIGN)
    logged = [tracker.log_round(record) for record in records(root / "jobs")]
    return {"root": root, "tracker": tracker, "logged": logged}


@pytest.mark.slow
def test_mlflow_link_renders_the_stage_run_of_a_local_store(
    client: httpx.Client, env: dict[str, Path], local_store: dict[str, Any]
) -> None:
    write_campaign(env["campaigns"], local_store["root"], str(local_store["root"] / "mlflow"))
    tracker = local_store["tracker"]

    found = client.get("/tuneloop/mlflow", params=link("train_sft", format="json")).json()
    assert found["status"] == "found", found
    run = found["run"]
    assert (run["kind"], run["stage"], run["round"]) == ("stage", "sft", "1")
    assert run["parent_id"] == local_store["logged"][0]["round_run_id"]
    stored = tracker.client.get_run(run["run_id"])
    assert run["params"] == dict(stored.data.params) and run["params"]
    assert run["metrics"] == dict(stored.data.metrics)
    assert OpenAccess.asked[-1] == (DAG_ID, "TASK_INSTANCE")

    page = client.get("/tuneloop/mlflow", params=link("train_sft"))
    assert page.status_code == 200
    for key in list(stored.data.params)[:3] + list(stored.data.metrics)[:3]:
        assert key in page.text
    assert "tuneloop.job_name" in page.text

    evaluation = client.get("/tuneloop/mlflow", params=link("evaluate", format="json")).json()
    assert evaluation["run"]["kind"] == "evaluation"
    assert evaluation["run"]["metrics"]["exact_match"] == 0.5
    for task_id in ("evaluate_baseline", "decide"):
        other = client.get("/tuneloop/mlflow", params=link(task_id, format="json")).json()
        assert other["run"]["run_id"] == local_store["logged"][0]["round_run_id"]
        assert other["run"]["kind"] == "round"
    second = client.get(
        "/tuneloop/mlflow", params=link("evaluate", run_id="round_0002", format="json")
    ).json()
    assert second["run"]["metrics"]["exact_match"] == 0.75

    # The round run's page links its nested runs, each rendered here too.
    round_page = client.get("/tuneloop/mlflow", params=link("decide"))
    child = until(lambda: _first_run_link(round_page.text), "a nested run link")
    nested = client.get(child)
    assert nested.status_code == 200 and "MLflow run" in nested.text


def _first_run_link(html: str) -> str | None:
    import re

    found = re.search(r'href="([^"]*/tuneloop/mlflow/runs/[^"]+)"', html)
    return found.group(1).replace("&amp;", "&") if found else None


@pytest.mark.slow
def test_mlflow_link_before_the_round_is_decided(
    client: httpx.Client, env: dict[str, Path], local_store: dict[str, Any]
) -> None:
    write_campaign(env["campaigns"], local_store["root"], str(local_store["root"] / "mlflow"))
    params = link("train_sft", run_id="manual__2026-04-01T00:00:00+00:00")
    page = client.get("/tuneloop/mlflow", params=params)
    assert page.status_code == 200
    assert "recorded when the round is decided" in page.text
    data = client.get("/tuneloop/mlflow", params={**params, "format": "json"}).json()
    assert data["status"] == "pending" and data["campaign"] == CAMPAIGN
    experiment = data["experiment_url"]
    assert experiment.startswith(f"{client.base_url}/tuneloop/mlflow?dag_id={DAG_ID}")
    assert experiment.replace("&", "&amp;") in page.text

    listing = client.get(experiment)
    assert listing.status_code == 200
    assert "round-1" in listing.text and "round-2" in listing.text and "finish" in listing.text
    assert f'{client.base_url}/dags/{DAG_ID}/runs/round_0002"' in listing.text  # the DAG run
    rounds = client.get(with_query(experiment, format="json")).json()["rounds"]
    assert [r["round"] for r in rounds] == ["2", "1"]


def test_mlflow_link_of_a_campaign_with_nothing_recorded_creates_nothing(
    client: httpx.Client, env: dict[str, Path], tmp_path: Path
) -> None:
    write_campaign(env["campaigns"], tmp_path / "fresh", mlflow_uri="")  # SQLite beside ledger
    data = client.get("/tuneloop/mlflow", params=link("train_sft", format="json")).json()
    assert data["status"] == "pending", data
    assert "recorded when the round is decided" in data["message"]
    assert not (tmp_path / "fresh" / CAMPAIGN / "mlflow.db").exists()


def test_mlflow_link_of_a_dag_that_is_no_campaign(
    client: httpx.Client, env: dict[str, Path]
) -> None:
    params = {"dag_id": "tuneloop_train", "run_id": "manual__1", "task_id": "train"}
    page = client.get("/tuneloop/mlflow", params=params)
    assert page.status_code == 200 and "is not the round DAG of a campaign" in page.text
    assert (
        client.get("/tuneloop/mlflow", params={**params, "format": "json"}).json()["status"]
        == "not_campaign"
    )


@pytest.mark.slow
def test_mlflow_link_redirects_to_the_tracking_server(
    client: httpx.Client,
    env: dict[str, Path],
    mlflow_server: str,  # noqa: F811  (the fixture imported from test_tracking)
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The API server holds MLflow credentials in its environment: they never reach a page.
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "tuneloop")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", SECRET)
    write_campaign(env["campaigns"], tmp_path, mlflow_server)
    tracker = Tracker(mlflow_server, CAMPAIGN)
    logged = tracker.log_round(records(tmp_path / "jobs")[0])

    answer = client.get("/tuneloop/mlflow", params=link("train_sft"))
    assert answer.status_code == 307
    location = answer.headers["location"]
    prefix = f"{mlflow_server}/#/experiments/{tracker.experiment_id}/runs/"
    assert location.startswith(prefix) and SECRET not in location
    stage = tracker.client.get_run(location.removeprefix(prefix))
    assert stage.data.tags["tuneloop.stage"] == "sft"
    assert stage.data.tags["mlflow.parentRunId"] == logged["round_run_id"]
    ui = httpx.get(location.split("#")[0], timeout=30)
    assert ui.status_code == 200  # the MLflow UI answers at the address the link gives

    pending = client.get("/tuneloop/mlflow", params=link("evaluate", run_id="round_0009"))
    assert pending.status_code == 200 and "recorded when the round is decided" in pending.text
    experiment = f"{mlflow_server}/#/experiments/{tracker.experiment_id}"
    assert experiment in pending.text and SECRET not in pending.text
