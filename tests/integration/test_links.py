"""The job tasks' extra links in a real Airflow: the plugin loads, the API server serves the pages
behind its login, and the links a finished task shows lead to them.

A real ``airflow api-server`` runs on a free loopback port on this session's database; a job
DAG runs with ``dag.test()`` in this process (its worker code computes the links), and the test
reads the links as the UI does (``/api/v2/.../links``) and follows them.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from airflow_env import AIRFLOW_ENV
from tuneloop.jobs.local import LocalJobBackend
from tuneloop.links import mlflow_link_url

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
VENV_BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_airflow_lists_the_plugin_with_its_pages() -> None:
    """``airflow plugins`` in a fresh process: the links and the FastAPI app at /tuneloop."""
    env = {**os.environ, **AIRFLOW_ENV, "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}"}
    result = subprocess.run(
        [str(VENV_BIN / "airflow"), "plugins", "--output", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)}
    plugin = plugins["tuneloop"]
    assert plugin["fastapi_apps"] == [
        {"app": "fastapi.applications.FastAPI", "url_prefix": "/tuneloop", "name": "tuneloop pages"}
    ]
    assert plugin["operator_extra_links"] == [
        "<tuneloop.pipeline.operators.JobConsoleLink object>",
        "<tuneloop.pipeline.operators.MlflowRunLink object>",
    ]


def test_every_job_task_of_a_round_dag_has_both_links() -> None:
    from tuneloop.pipeline.dag import campaign_dag

    dag = campaign_dag(REPO / "recipes" / "campaigns" / "demo.yaml")
    job_tasks = {"train_sft", "train_rft", "evaluate", "evaluate_baseline"}
    for task_id in job_tasks:
        names = {link.name for link in dag.get_task(task_id).operator_extra_links}
        assert names == {"Job console", "MLflow run"}, task_id


@pytest.fixture(scope="module")
def api_server(airflow_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """``airflow api-server`` on a free port, SimpleAuthManager with user admin, base_url set to
    its address and one local root; its process group is stopped afterwards."""
    root = tmp_path_factory.mktemp("api-server")
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    passwords = root / "passwords.json"
    env = {
        **os.environ,
        **AIRFLOW_ENV,
        "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
        "AIRFLOW__API__BASE_URL": base,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__TUNELOOP__LOCAL_ROOTS": str(root / "local"),
        "TUNELOOP_CAMPAIGNS_DIR": str(root / "campaigns"),  # no campaign here
    }
    log = (root / "api-server.log").open("wb")
    process = subprocess.Popen(
        [str(VENV_BIN / "airflow"), "api-server", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 180
    try:
        while True:
            try:
                if httpx.get(f"{base}/api/v2/monitor/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"api-server did not start:\n{(root / 'api-server.log').read_text()}")
            time.sleep(0.3)
        password = json.loads(passwords.read_text())["admin"]
        token = httpx.post(
            f"{base}/auth/token", json={"username": "admin", "password": password}, timeout=30
        ).json()["access_token"]
        yield {"base": base, "token": token, "local": root / "local"}
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


@pytest.mark.slow
def test_the_links_of_a_finished_job_task_open_their_pages(
    airflow: Any, dags: dict, api_server: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, token = api_server["base"], api_server["token"]
    # The worker (this process, under dag.test) builds links from the same [api] base_url.
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", base)
    backend = LocalJobBackend(
        str(api_server["local"] / "jobs"),
        entrypoint="fakes.instant_jobs:run",
        python_path=[str(TESTS)],
        grace=2.0,
    )
    name = "links-r0001-sft-0123456789"
    job = {
        "name": name,
        "kind": "train",
        "method": "sft",
        "recipe": {"run": {"model_type": "tiny-chat"}, "fake": {"log_lines": 3}},
        "output_uri": str(api_server["local"] / "out"),
        "labels": {"round": "1", "stage": "sft"},
    }
    run = airflow.run_dag(dags["tuneloop_train"], {"backend": backend.config(), "job": job})
    assert run.state == "success"

    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base, timeout=60, follow_redirects=False) as http:
        answer = http.get(
            f"/api/v2/dags/tuneloop_train/dagRuns/{run.run_id}/taskInstances/train/links",
            headers=auth,
        )
        assert answer.status_code == 200, answer.text
        links = answer.json()["extra_links"]
        console, mlflow = links["Job console"], links["MLflow run"]
        assert console.startswith(f"{base}/tuneloop/jobs/{name}?root="), links
        assert mlflow.startswith(f"{base}/tuneloop/mlflow?dag_id=tuneloop_train&run_id="), links

        # A browser without a session is sent to Airflow's login, back to the page after.
        anonymous = http.get(console)
        assert anonymous.status_code == 303
        assert "/auth/login" in anonymous.headers["location"]
        assert "next=" in anonymous.headers["location"]
        assert http.get(console + "&format=json").status_code == 401
        assert http.get(console, headers={"Authorization": "Bearer not-a-token"}).status_code in (
            303,
            401,
            403,
        )

        # Logged in (a token, or the UI's session cookie): the job's page.
        page = http.get(console, headers=auth)
        assert page.status_code == 200, page.text
        assert "SUCCEEDED" in page.text and f"{name} line 3" in page.text
        assert "manifest.json" in page.text
        with httpx.Client(base_url=base, timeout=60, cookies={"_token": token}) as browser:
            assert "SUCCEEDED" in browser.get(console).text

        # MLflow: this test DAG is no campaign's round DAG, and the page says so.
        answer = http.get(mlflow, headers=auth)
        assert answer.status_code == 200
        assert "is not the round DAG of a campaign" in answer.text

        # A folder outside the API server's local roots is refused behind the login too.
        refused = http.get(f"/tuneloop/jobs/{name}", params={"root": "/etc"}, headers=auth)
        assert refused.status_code == 403 and "local_roots" in refused.text


@pytest.mark.slow
def test_the_links_of_a_round_lead_to_its_job_pages_and_mlflow_runs(
    airflow_db: Path, api_server: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real round of a campaign (instant fake jobs) run by dag.test: every job task links to
    its job's page and its MLflow run, through the API server; a later dry run's MLflow link
    says its round is not decided yet. The API server finds the campaign file through the
    round DAG it serialized (the file is not in its campaigns folder)."""
    from airflow.dag_processing.dagbag import DagBag

    from tuneloop.local.demo_task import write_demo_data

    base, auth = api_server["base"], {"Authorization": f"Bearer {api_server['token']}"}
    campaigns = Path(os.environ.setdefault("TUNELOOP_TEST_CAMPAIGNS", tempfile.mkdtemp()))
    root = api_server["local"] / "campaigns"
    data = root / "data"
    write_demo_data(data, sizes={"train": 24, "validation": 8, "eval": 8, "rft": 8, "cpt": 8})
    name = "links-round"
    campaign_file = campaigns / f"{name}.yaml"
    campaign_file.write_text(
        f"""
name: {name}
backend:
  type: local
  output_root: {root}
  entrypoint: fakes.instant_jobs:run
  python_path: [{TESTS}]
model_type: local.tiny-chat-v1
technique: full
stages:
  - method: sft
    recipe: local/sft-full.yaml
    datasets: {{train: {data}/sft-train.jsonl}}
evaluation:
  recipe: local/eval-gen-qa.yaml
  dataset: {data}/eval.jsonl
  metrics: [exact_match]
gate:
  primary_metric: exact_match
  targets: {{exact_match: 0.9}}
  max_rounds: 5
""",
        encoding="utf-8",
    )
    script = root / "fake-jobs.json"
    script.write_text(json.dumps({"*": {"metrics": {"exact_match": 0.4}, "log_lines": 2}}))
    monkeypatch.setenv("TUNELOOP_FAKE_JOBS", str(script))
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", base)
    dag_id = "tuneloop_links_round"
    http = httpx.Client(base_url=base, timeout=60, follow_redirects=False, headers=auth)

    def links(run_id: str, task_id: str) -> dict[str, str]:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/links"
        answer = http.get(path)
        assert answer.status_code == 200, answer.text
        return answer.json()["extra_links"]

    try:
        bag = DagBag(dag_folder=str(TESTS / "integration" / "dags" / "tuneloop_test_rounds.py"))
        assert not bag.import_errors, bag.import_errors
        run = bag.dags[dag_id].test(run_conf={}, logical_date=None)
        assert run.state == "success"
        for task_id, kind in (
            ("train_sft", "stage"),
            ("evaluate", "evaluation"),
            ("evaluate_baseline", "round"),
        ):
            found = links(run.run_id, task_id)
            console, mlflow = found["Job console"], found["MLflow run"]
            assert console.startswith(f"{base}/tuneloop/jobs/"), (task_id, found)
            assert mlflow.startswith(f"{base}/tuneloop/mlflow?"), (task_id, found)
            page = http.get(console)
            assert page.status_code == 200 and "SUCCEEDED" in page.text, (task_id, page.text)
            answer = http.get(mlflow + "&format=json").json()
            assert answer["status"] == "found", (task_id, answer)
            assert answer["run"]["kind"] == kind and answer["run"]["round"] == "1"
            assert http.get(mlflow).status_code == 200

        # dag.test deletes the earlier run (it has no logical date): checked above, first. A dry
        # run's job tasks are skipped without running, so they have no links (Airflow stores a
        # task's links when it runs); the URL its train_sft link would have:
        dry = bag.dags[dag_id].test(run_conf={"dry_run": True}, logical_date=None)
        assert links(dry.run_id, "train_sft") == {"Job console": None, "MLflow run": None}
        dry_link = mlflow_link_url(dag_id, dry.run_id, "train_sft")
        pending = http.get(dry_link + "&format=json").json()
        assert pending["status"] == "pending" and pending["round"] == 2, pending
        page = http.get(dry_link)
        assert "round 2 of campaign links-round is recorded when the round is decided" in (
            page.text
        )
    finally:
        http.close()
        campaign_file.unlink()
