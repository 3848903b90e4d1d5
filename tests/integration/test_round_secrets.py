"""A whole round with secrets set writes none of them anywhere.

The round mirrors to a real ``mlflow server`` behind a small proxy that answers 401 to every
request without the right basic-auth credentials, so the round's MLflow runs exist only if the
credentials reached MLflow's client. They come from the environment
(``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``) or from the Airflow connection
``backend.mlflow_conn_id`` names; an AWS secret key sits in the environment and in the
``aws_default`` connection. After the round, every file the round could have written is
searched for every secret: the output root (ledger, recipes, job folders with job.json and job
logs, report), the Airflow metadata database and logs (XCom included), the MLflow server's
store and artifacts, what was sent to MLflow, and the output and log records captured.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from airflow_env import AIRFLOW_HOME
from tuneloop.local.demo_task import write_demo_data

DAGS = Path(__file__).resolve().parent / "dags"
TESTS = Path(__file__).resolve().parents[1]
CAMPAIGNS = Path(os.environ.setdefault("TUNELOOP_TEST_CAMPAIGNS", tempfile.mkdtemp()))
SIZES = {"train": 16, "validation": 4, "test": 4, "eval": 8, "rft": 8, "cpt": 4}
MLFLOW_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")

pytestmark = pytest.mark.slow


# --- an MLflow server that requires basic auth ---------------------------------------------------


class AuthProxy(ThreadingHTTPServer):
    """Forwards requests that carry ``expected`` basic-auth credentials to ``upstream``;
    answers 401 to any other. Keeps what it was sent (paths and bodies), to search."""

    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream = upstream
        self.expected = ""
        self.passed = 0
        self.refused = 0
        self.sent: list[bytes] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def require(self, user: str, password: str) -> None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        with self.lock:
            self.expected, self.passed, self.refused, self.sent = f"Basic {token}", 0, 0, []


class _ProxyHandler(BaseHTTPRequestHandler):
    server: AuthProxy

    def do_GET(self) -> None:
        self._forward()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_GET

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        proxy = self.server
        with proxy.lock:
            proxy.sent.append(self.path.encode() + b"\n" + (body or b""))
            allowed = self.headers.get("Authorization") == proxy.expected
            if allowed:
                proxy.passed += 1
            else:
                proxy.refused += 1
        if not allowed:
            self._answer(401, {"WWW-Authenticate": 'Basic realm="mlflow"'}, b"")
            return
        skipped = {"host", "authorization", "connection", "content-length", "transfer-encoding"}
        headers = {k: v for k, v in self.headers.items() if k.lower() not in skipped}
        request = urllib.request.Request(
            proxy.upstream + self.path, data=body, method=self.command, headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                self._answer(response.status, dict(response.headers), response.read())
        except urllib.error.HTTPError as error:
            self._answer(error.code, dict(error.headers), error.read())

    def _answer(self, status: int, headers: dict[str, str], data: bytes) -> None:
        self.send_response(status)
        # The server sets its own; the length is the body's as sent here.
        own = {"content-length", "transfer-encoding", "connection", "date", "server"}
        for key, value in headers.items():
            if key.lower() not in own:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A real ``mlflow server`` (SQLite, artifacts proxied into a folder) on a free port:
    its URL and its folder."""
    import socket

    folder = tmp_path_factory.mktemp("mlflow-server")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{folder / 'mlflow.db'}",
        "--artifacts-destination",
        str(folder / "artifacts"),
    ]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    for name in MLFLOW_ENV:
        env.pop(name, None)
    url = f"http://127.0.0.1:{port}"
    with (folder / "server.log").open("wb") as log:
        process = subprocess.Popen(
            argv, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        # Ready is an answer on /health; the loop ends on that or on the process exiting.
        while not _healthy(url):
            if process.poll() is not None:
                log_text = (folder / "server.log").read_text(errors="replace")
                pytest.fail(f"mlflow server exited: {log_text[-2000:]}")
            threading.Event().wait(0.5)  # between two probes, not a synchronisation
        yield url, folder
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(60)


@pytest.fixture(scope="module")
def proxy(mlflow_server: tuple[str, Path]) -> Iterator[AuthProxy]:
    server = AuthProxy(mlflow_server[0])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(60)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("secret-round-data")
    write_demo_data(folder, sizes=SIZES)
    return folder


# --- the round ---------------------------------------------------------------------------------


def campaign_text(name: str, root: Path, data: Path, mlflow_uri: str, conn_id: str) -> str:
    connection = f"  mlflow_conn_id: {conn_id}\n" if conn_id else ""
    return f"""
name: {name}
backend:
  type: local
  output_root: {root}
  mlflow_uri: {mlflow_uri}
{connection}  entrypoint: fakes.instant_jobs:run
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
  max_rounds: 3
"""


def files_holding(folder: Path, needles: dict[str, bytes]) -> dict[str, list[str]]:
    """{secret name: files under ``folder`` whose bytes hold it}."""
    found: dict[str, list[str]] = {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.is_symlink():
            continue
        content = path.read_bytes()
        for name, needle in needles.items():
            if needle in content:
                found.setdefault(name, []).append(str(path))
    return found


def leaks_of(
    needles: dict[str, bytes], folders: dict[str, Path], texts: dict[str, bytes]
) -> dict[str, Any]:
    """{where: the secrets found there}, for every folder and text that holds one."""
    leaks: dict[str, Any] = {}
    for where, folder in folders.items():
        if found := files_holding(folder, needles):
            leaks[where] = found
    for where, text in texts.items():
        if found_in_text := [name for name, needle in needles.items() if needle in text]:
            leaks[where] = found_in_text
    return leaks


def set_secrets(source: str, monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, bytes], str]:
    """Fresh secrets in the environment and Airflow connections: the MLflow user and password
    from ``source`` (``environment`` or ``connection``), an AWS secret key in both. Returns
    {secret name: its bytes} (with the basic-auth header MLflow's client sends) and the
    connection id the campaign names ('' for the environment)."""
    token = secrets.token_hex(12)
    user, password = f"tl-user-{token[:8]}", f"tl-mlflow-pw-{token}"
    aws_secret = f"tl-aws-secret-{secrets.token_hex(16)}"
    conn_id = ""
    if source == "environment":
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    else:
        conn_id = "tl_secret_mlflow"
        for variable in MLFLOW_ENV:
            monkeypatch.delenv(variable, raising=False)
        connection = {"conn_type": "http", "login": user, "password": password}
        monkeypatch.setenv("AIRFLOW_CONN_TL_SECRET_MLFLOW", json.dumps(connection))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIATUNELOOPSECRETS")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", aws_secret)
    aws = {"conn_type": "aws", "login": "AKIATUNELOOPSECRETS", "password": aws_secret}
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(aws))
    needles = {
        "MLflow user": user.encode(),
        "MLflow password": password.encode(),
        "basic-auth header": base64.b64encode(f"{user}:{password}".encode()),
        "AWS secret key": aws_secret.encode(),
    }
    return needles, conn_id


@pytest.mark.parametrize("source", ["environment", "connection"])
def test_a_round_with_secrets_set_writes_none_of_them(
    airflow_db: Path,
    tmp_path: Path,
    data: Path,
    proxy: AuthProxy,
    mlflow_server: tuple[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    source: str,
) -> None:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk._shared.secrets_masker import redact

    from tuneloop.rounds.ledger import Ledger
    from tuneloop.web.campaigns import load_info
    from tuneloop.web.runs import experiment_view

    caplog.set_level("DEBUG")
    needles, conn_id = set_secrets(source, monkeypatch)
    user, password = needles["MLflow user"].decode(), needles["MLflow password"].decode()
    proxy.require(user, password)
    name = f"secret-{source[:3]}"
    monkeypatch.setenv("TUNELOOP_FAKE_JOBS", str(tmp_path / "fake-jobs.json"))
    (tmp_path / "fake-jobs.json").write_text(
        json.dumps({"*": {"metrics": {"exact_match": 0.5}}}), encoding="utf-8"
    )
    root = tmp_path / "out"
    campaign_file = CAMPAIGNS / f"{name}.yaml"
    campaign_file.write_text(campaign_text(name, root, data, proxy.url, conn_id), encoding="utf-8")
    try:
        bag = DagBag(dag_folder=str(DAGS / "tuneloop_test_rounds.py"))
        assert not bag.import_errors, bag.import_errors
        run = bag.dags["tuneloop_" + name.replace("-", "_")].test(run_conf={}, logical_date=None)
        assert run.state == "success"
        record = Ledger(str(root / name)).read(1)
        assert record.decision.action == "continue"

        # The round reached MLflow with the credentials, and every request carried them.
        assert proxy.passed > 0 and proxy.refused == 0, (proxy.passed, proxy.refused)
        view = experiment_view(load_info(campaign_file.resolve()))
        assert [r["round"] for r in view["rounds"]] == ["1"], view
        assert proxy.refused == 0
        recipe = record.stages[0].recipe
        assert recipe["run"]["mlflow_tracking_uri"] == proxy.url
        # The credentials were in the environment only while MLflow was called.
        if source == "connection":
            assert not any(variable in os.environ for variable in MLFLOW_ENV)
        # Airflow's masker knows the MLflow password: a task log line quoting it shows ***.
        assert password not in str(redact(f"a log line quoting {password}"))

        out, err = capfd.readouterr()
        leaks = leaks_of(
            needles,
            {
                "output root (ledger, recipes, job.json, job logs, report)": tmp_path,
                "Airflow home (metadata database with XCom, logs)": AIRFLOW_HOME,
                "MLflow server (store, artifacts, log)": mlflow_server[1],
                "campaign files": CAMPAIGNS,
            },
            {
                "requests sent to MLflow (paths and bodies)": b"\n".join(proxy.sent),
                "captured stdout and stderr": (out + err).encode(),
                "captured log records": caplog.text.encode(),
            },
        )
        assert leaks == {}
        # The search read what the round wrote: the round is in each place it searched.
        assert "Round 1 of" in out + err + caplog.text
        assert run.run_id.encode() in (AIRFLOW_HOME / "airflow.db").read_bytes()
        assert b"tuneloop.round" in (mlflow_server[1] / "mlflow.db").read_bytes()
        assert any((root / name).rglob("job.json"))
    finally:
        campaign_file.unlink(missing_ok=True)
