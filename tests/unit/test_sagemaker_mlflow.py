"""SageMaker managed MLflow with the sagemaker-mlflow plugin installed: a SageMaker ARN reaches
its server with SigV4-signed requests, and every other tracking URI goes without the plugin's
header hook and its warnings.

The ARN's endpoint is a real ``mlflow server`` on loopback, reached through a small recording
proxy (``SAGEMAKER_MLFLOW_CUSTOM_ENDPOINT``, the plugin's own setting); only the AWS credentials
are made up (environment variables, read by botocore's own credential chain)."""

from __future__ import annotations

import http.client
import logging
import sys
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mlflow_server import MlflowServer
from tuneloop.tracking import sagemaker_mlflow
from tuneloop.tracking.mirror import TrackingError, resolve_store

ACCESS_KEY = "AKIDTUNELOOPTEST"
SECRET_KEY = "tuneloop-test-secret"
REGION = "us-east-1"
APP_ARN = f"arn:aws:sagemaker:{REGION}:123456789012:mlflow-app/app-XXXX"
SERVER_ARN = f"arn:aws:sagemaker:{REGION}:123456789012:mlflow-tracking-server/x"


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class RecordingProxy(ThreadingHTTPServer):
    """Forwards every request to ``upstream`` (host, port) and keeps what it was sent."""

    daemon_threads = True

    def __init__(self, upstream: tuple[str, int]) -> None:
        super().__init__(("127.0.0.1", 0), _Forward)
        self.upstream = upstream
        self.seen: list[Seen] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Forward(BaseHTTPRequestHandler):
    server: RecordingProxy

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k: v for k, v in self.headers.items()}
        self.server.seen.append(Seen(self.command, self.path, headers, body))
        upstream = http.client.HTTPConnection(*self.server.upstream, timeout=60)
        forwarded = {k: v for k, v in headers.items() if k.lower() not in ("host", "connection")}
        upstream.request(self.command, self.path, body=body or None, headers=forwarded)
        answer = upstream.getresponse()
        content = answer.read()
        self.send_response(answer.status)
        for key, value in answer.getheaders():
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)
        upstream.close()

    do_GET = do_POST = do_PATCH = do_DELETE = _forward

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    running = MlflowServer(tmp_path_factory.mktemp("sagemaker-mlflow-server"))
    running.start()
    yield running
    running.stop()


@pytest.fixture
def proxy(server: MlflowServer) -> Iterator[RecordingProxy]:
    running = RecordingProxy(("127.0.0.1", server.port))
    thread = threading.Thread(
        target=running.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    yield running
    running.shutdown()
    running.server_close()
    thread.join()


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "SAGEMAKER_MLFLOW_ASSUME_ROLE_ARN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")


def _log_a_run(uri: str, experiment: str) -> str:
    from mlflow import MlflowClient

    with sagemaker_mlflow.tracking_to(uri):
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        experiment_id = client.create_experiment(experiment)
        run = client.create_run(experiment_id)
        client.log_param(run.info.run_id, "learning_rate", "0.0002")
        client.log_metric(run.info.run_id, "exact_match", 0.75, step=1)
        client.set_terminated(run.info.run_id)
    return str(run.info.run_id)


def _sigv4_signature_checks(seen: Seen, proxy: RecordingProxy, service: str) -> bool:
    """Recompute the request's SigV4 signature with botocore from what the proxy received."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    authorization = seen.headers["Authorization"]
    signed = authorization.split("SignedHeaders=")[1].split(",")[0].split(";")
    headers = {k: v for k, v in seen.headers.items() if k.lower() in signed and k.lower() != "host"}
    request = AWSRequest(
        method=seen.method, url=f"http://{seen.headers['Host']}{seen.path}", data=seen.body
    )
    for key, value in headers.items():
        request.headers[key] = value
    request.context["timestamp"] = seen.headers["X-Amz-Date"]
    signer = SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), service, REGION)
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    return authorization.endswith(f"Signature={expected}")


@pytest.mark.parametrize(
    ("arn", "service", "header"),
    [
        (APP_ARN, "sagemaker", "x-sm-mlflow-app-arn"),
        (SERVER_ARN, "sagemaker-mlflow", "x-mlflow-sm-tracking-server-arn"),
    ],
)
def test_an_arn_logs_a_run_with_signed_requests(
    arn: str,
    service: str,
    header: str,
    server: MlflowServer,
    proxy: RecordingProxy,
    aws_credentials: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mlflow import MlflowClient

    monkeypatch.setenv("SAGEMAKER_MLFLOW_CUSTOM_ENDPOINT", proxy.url)
    assert resolve_store(arn).kind == "sagemaker"

    run_id = _log_a_run(arn, f"tuneloop-{service}")

    landed = MlflowClient(tracking_uri=f"http://127.0.0.1:{server.port}").get_run(run_id)
    assert landed.data.params == {"learning_rate": "0.0002"}
    assert landed.data.metrics == {"exact_match": 0.75}
    assert len(proxy.seen) >= 5
    scope = f"/{REGION}/{service}/aws4_request"
    for seen in proxy.seen:
        authorization = seen.headers.get("Authorization", "")
        assert authorization.startswith(f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/"), seen
        assert scope in authorization
        assert {k.lower(): v for k, v in seen.headers.items()}[header] == arn
    metric_post = next(s for s in proxy.seen if s.path.endswith("/runs/log-metric"))
    assert _sigv4_signature_checks(metric_post, proxy, service)
    assert SECRET_KEY not in repr(proxy.seen)


def test_another_uri_goes_without_the_plugins_header_or_warnings(
    server: MlflowServer,
    proxy: RecordingProxy,
    aws_credentials: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from sagemaker_mlflow.mlflow_sagemaker_request_header_provider import (
        MlflowSageMakerRequestHeaderProvider,
    )

    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _log_a_run(proxy.url, "tuneloop-plain-server")

    assert len(proxy.seen) >= 5
    assert not [s for s in proxy.seen if "Authorization" in s.headers]
    assert not [s for s in proxy.seen if {k.lower() for k in s.headers} & {"x-sm-mlflow-app-arn"}]
    noise = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not noise
    assert not [str(w.message) for w in caught if "sagemaker" in str(w.message).lower()]
    # What the hook would have done for each of those requests, had it applied: fail, and
    # MLflow would have logged that as a warning.
    with sagemaker_mlflow.tracking_to(proxy.url), pytest.raises(IndexError):
        MlflowSageMakerRequestHeaderProvider().request_headers()


def test_only_sagemaker_mlflow_arns_count() -> None:
    assert sagemaker_mlflow.is_arn(APP_ARN) and sagemaker_mlflow.is_arn(SERVER_ARN)
    assert sagemaker_mlflow.is_arn(
        f"arn:aws-us-gov:sagemaker:us-gov-west-1:123456789012:{'mlflow-app/a'}"
    )
    for uri in (
        "arn:aws:sagemaker:us-east-1:123456789012:endpoint/x",
        "arn:aws:sagemaker:us-east-1:123456789012:mlflow-app/",
        "arn:aws:s3:::bucket",
        "http://127.0.0.1:5000",
        "",
    ):
        assert not sagemaker_mlflow.is_arn(uri), uri


def test_an_arn_without_the_plugin_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules is how Python marks a module as not importable.
    monkeypatch.setitem(sys.modules, "sagemaker_mlflow", None)
    with pytest.raises(TrackingError, match="sagemaker-mlflow package") as raised:
        resolve_store(APP_ARN)
    (problem,) = raised.value.problems
    assert problem.path == "backend.mlflow_uri"
    assert "requirements.txt" in problem.fix


def test_the_campaign_mirror_logs_a_round_to_an_arn_and_to_a_server_without_noise(
    server: MlflowServer,
    proxy: RecordingProxy,
    aws_credentials: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """What the round DAG does, through `Tracker`: a round logged to an ARN goes signed; the
    same round logged to a plain server right after carries no plugin header, and neither
    logs a warning (MLflow's process-wide tracking URI is never set)."""
    from test_tracking import CAMPAIGN, make_record

    from tuneloop.tracking.mirror import Tracker

    monkeypatch.setenv("SAGEMAKER_MLFLOW_CUSTOM_ENDPOINT", proxy.url)
    record = make_record(
        1, action="continue", promoted=True, champion=1, exact_match=0.5, checkpoint_root="s3://b/u"
    )
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logged = Tracker(APP_ARN, CAMPAIGN).log_round(record)
        signed = list(proxy.seen)
        proxy.seen.clear()
        Tracker(proxy.url, CAMPAIGN, experiment="plain").log_round(record)
        plain = list(proxy.seen)

    assert logged["model_version"] == "1"
    assert signed and all(s.headers.get("Authorization", "").startswith("AWS4-") for s in signed)
    assert plain and not [s for s in plain if "Authorization" in s.headers]
    assert not [s for s in plain if "x-sm-mlflow-app-arn" in {k.lower() for k in s.headers}]
    noise = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not noise
    assert not [str(w.message) for w in caught if "sagemaker" in str(w.message).lower()]
