"""MLflow credentials never sit in a URI: a campaign whose ``backend.mlflow_uri`` carries user
info is refused with one line that hides the password; credentials come from an Airflow
connection or the environment, live in the environment only while MLflow is called, and are
registered with Airflow's secrets masker."""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path

import pytest

from tuneloop.cli.main import main
from tuneloop.config.file import parse_campaign
from tuneloop.errors import CampaignError
from tuneloop.recipes.tracking_uri import DATABASE_CREDENTIALS_FIX
from tuneloop.tracking import credentials
from tuneloop.tracking.credentials import (
    PASSWORD_ENV,
    USERNAME_ENV,
    CredentialsError,
    check_connection,
    mlflow_credentials,
)

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "recipes" / "campaigns" / "demo.yaml"
HYPERPOD = REPO / "recipes" / "campaigns" / "examples" / "support-bot-hyperpod.yaml"
PASSWORD = "pw-Zq81-unit-secret"
PROBLEM_LINE = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): (?P<path>[\w.\[\]-]+): .+$")


def campaign_with(source: Path, folder: Path, backend_lines: str) -> tuple[Path, int]:
    """``source`` with ``backend_lines`` added under ``backend:``, written to ``folder``; and
    the line number of the first added line."""
    lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if line.startswith("backend:")) + 1
    rest = [line for line in lines[at:] if not line.startswith("  mlflow_uri:")]  # one only
    text = "".join(lines[:at]) + backend_lines + "".join(rest)
    path = folder / source.name
    path.write_text(text, encoding="utf-8")
    return path, at + 1


URIS = {
    "user and password": (
        f"https://alice:{PASSWORD}@mlflow.example.com:5000",
        "https://alice:***@mlflow.example.com:5000",
    ),
    "a lone user name (a token)": (
        f"https://{PASSWORD}@mlflow.example.com",
        "https://***@mlflow.example.com",
    ),
    "a password with '@', '/', '?' and '#'": (
        f"http://alice:a@b/c?d#{PASSWORD}@10.0.0.5:5000/mlflow",
        "http://alice:***@10.0.0.5:5000/mlflow",
    ),
    "spaces around it": (
        f"  https://alice:{PASSWORD}@mlflow.example.com  ",
        "https://alice:***@mlflow.example.com",
    ),
}


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
@pytest.mark.parametrize("source", [DEMO, HYPERPOD], ids=["local", "hyperpod"])
@pytest.mark.parametrize(("uri", "shown"), URIS.values(), ids=URIS.keys())
def test_campaign_validate_refuses_credentials_in_the_uri(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    source: Path,
    uri: str,
    shown: str,
    as_json: bool,
) -> None:
    path, line = campaign_with(source, tmp_path, f"  mlflow_uri: {json.dumps(uri)}\n")
    argv = ["campaign", "validate", str(path), "--offline", *(["--json"] if as_json else [])]
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2
    assert PASSWORD not in out + err
    assert out == ""
    problems = err.strip().splitlines()
    assert len(problems) == 1, err
    found = PROBLEM_LINE.match(problems[0])
    assert found, problems[0]
    assert (found["file"], int(found["line"]), found["path"]) == (
        str(path),
        line,
        "backend.mlflow_uri",
    )
    assert repr(shown) in problems[0]
    for fix in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "backend.mlflow_conn_id"):
        assert fix in problems[0]
    assert "Traceback" not in err


def test_a_database_uri_with_credentials_is_refused_with_the_database_fix(tmp_path: Path) -> None:
    uri = f"postgresql://mlflow:{PASSWORD}@db.internal:5432/mlflow"
    path, line = campaign_with(DEMO, tmp_path, f"  mlflow_uri: {uri}\n")
    with pytest.raises(CampaignError) as raised:
        parse_campaign(path.read_text(encoding="utf-8"), path)
    (problem,) = raised.value.problems
    assert problem.line == line and problem.path == "backend.mlflow_uri"
    assert "'postgresql://mlflow:***@db.internal:5432/mlflow'" in problem.message
    assert "PGPASSWORD" in problem.message
    assert PASSWORD not in str(raised.value)


@pytest.mark.parametrize(
    "uri",
    [
        "https://mlflow.example.com:5000/team/mlflow",
        "arn:aws:sagemaker:us-east-1:123456789012:mlflow-app/app-support",
        "sqlite:////srv/me@corp/mlflow.db",
        "file:///srv/me@corp/mlruns",
        "/srv/me@corp/mlruns",
        "",
    ],
)
def test_a_uri_without_credentials_is_kept_as_written(tmp_path: Path, uri: str) -> None:
    path, _ = campaign_with(DEMO, tmp_path, f"  mlflow_uri: {json.dumps(uri)}\n")
    cf = parse_campaign(path.read_text(encoding="utf-8"), path)
    assert cf.campaign.backend.mlflow_uri == uri


def test_the_connection_id_must_be_a_name(tmp_path: Path) -> None:
    path, line = campaign_with(DEMO, tmp_path, '  mlflow_conn_id: "my conn\\n"\n')
    with pytest.raises(CampaignError) as raised:
        parse_campaign(path.read_text(encoding="utf-8"), path)
    (problem,) = raised.value.problems
    assert (problem.line, problem.path) == (line, "backend.mlflow_conn_id")


@pytest.mark.parametrize(
    "overrides",
    [
        f'    overrides:\n      run.mlflow_tracking_uri: "https://alice:{PASSWORD}@mlflow.example.com"\n',
        f'    overrides:\n      run:\n        mlflow_tracking_uri: "https://alice:{PASSWORD}@h"\n',
    ],
    ids=["dotted", "nested"],
)
def test_a_stage_override_cannot_put_credentials_in_a_recipe(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, overrides: str
) -> None:
    text = DEMO.read_text(encoding="utf-8").replace(
        "    reward_function: tuneloop.local.demo_task:reward\n",
        "    reward_function: tuneloop.local.demo_task:reward\n" + overrides,
    )
    path = tmp_path / "demo.yaml"
    path.write_text(text, encoding="utf-8")
    code = main(["campaign", "validate", str(path), "--offline"])
    out, err = capsys.readouterr()
    assert code == 2
    assert PASSWORD not in out + err
    (problem,) = err.strip().splitlines()
    found = PROBLEM_LINE.match(problem)
    assert found, problem
    # The recipe model refuses the value, at the campaign line that wrote it.
    written = next(i for i, line in enumerate(text.splitlines(), 1) if PASSWORD in line)
    assert (int(found["line"]), found["path"]) == (
        written,
        "stages[1].overrides.run.mlflow_tracking_uri",
    )
    assert "run.mlflow_tracking_uri: 'https://alice:***@" in problem
    assert "MLFLOW_TRACKING_PASSWORD" in problem


def test_recipes_carry_the_uri_as_written(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    uri = "https://mlflow.example.com:5000"
    path, _ = campaign_with(DEMO, tmp_path, f"  mlflow_uri: {uri}\n")
    assert main(["campaign", "validate", str(path), "--offline", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    recipes = [stage["recipe"] for stage in plan["stages"]] + [plan["evaluation"]["recipe"]]
    assert [r["run"]["mlflow_tracking_uri"] for r in recipes] == [uri] * 3


NOVA_RECIPE = REPO / "recipes" / "nova" / "nova-micro" / "sft-lora.yaml"


@pytest.mark.parametrize("command", ["render", "validate"])
@pytest.mark.parametrize(("uri", "shown"), URIS.values(), ids=URIS.keys())
def test_a_recipe_file_cannot_carry_credentials(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, uri: str, shown: str, command: str
) -> None:
    lines = NOVA_RECIPE.read_text(encoding="utf-8").splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if "mlflow_tracking_uri:" in line)
    lines[at] = f"  mlflow_tracking_uri: {json.dumps(uri)}\n"
    recipe = tmp_path / "sft-lora.yaml"
    recipe.write_text("".join(lines), encoding="utf-8")
    code = main(["recipe", command, str(recipe)])
    out, err = capsys.readouterr()
    assert code == 2
    assert PASSWORD not in out + err
    (problem,) = err.strip().splitlines()
    found = PROBLEM_LINE.match(problem)
    assert found, problem
    assert (found["file"], int(found["line"]), found["path"]) == (
        str(recipe),
        at + 1,
        "run.mlflow_tracking_uri",
    )
    assert repr(shown) in problem and "MLFLOW_TRACKING_PASSWORD" in problem


def test_recipe_render_refuses_credentials_set_on_the_command_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(
        [
            "recipe",
            "render",
            str(NOVA_RECIPE),
            "--set",
            f"run.mlflow_tracking_uri=postgresql://mlflow:{PASSWORD}@db.internal/mlflow",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 2
    assert PASSWORD not in out + err
    assert err.strip().splitlines() == [
        "--set: run.mlflow_tracking_uri: 'postgresql://mlflow:***@db.internal/mlflow' carries "
        "credentials, which tuneloop never stores; fix: " + DATABASE_CREDENTIALS_FIX
    ]


# --- where the credentials come from -----------------------------------------------------------


def _redacted(text: str) -> str:
    from airflow.sdk._shared.secrets_masker import redact

    return str(redact(text))


@pytest.fixture
def connection(monkeypatch: pytest.MonkeyPatch) -> str:
    """An HTTP connection with MLflow credentials, as Airflow reads it from the environment."""
    value = {"conn_type": "http", "login": "tl-unit-user", "password": PASSWORD}
    monkeypatch.setenv("AIRFLOW_CONN_TL_UNIT_MLFLOW", json.dumps(value))
    return "tl_unit_mlflow"


def test_connection_credentials_are_in_the_environment_only_inside(
    monkeypatch: pytest.MonkeyPatch, connection: str
) -> None:
    from mlflow.utils.credentials import read_mlflow_creds

    monkeypatch.setenv(USERNAME_ENV, "someone-else")
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    with mlflow_credentials(connection):
        assert read_mlflow_creds() == ("tl-unit-user", PASSWORD)
    assert os.environ[USERNAME_ENV] == "someone-else"
    assert PASSWORD_ENV not in os.environ
    assert PASSWORD not in _redacted(f"Basic auth failed for {PASSWORD}")


def test_the_environment_password_is_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "pw-env-only-7Hq2-secret"
    monkeypatch.setenv(PASSWORD_ENV, secret)
    import airflow.sdk  # noqa: F401  (this process runs Airflow code, as a task does)

    with mlflow_credentials():
        assert os.environ[PASSWORD_ENV] == secret
    assert secret not in _redacted(f"a log line quoting {secret}")


@pytest.mark.parametrize("name", ["AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"])
def test_the_environments_aws_secrets_are_masked_by_every_round_task(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """Each round task rebuilds its campaign through the same step that masks the MLflow
    password; the AWS secret key and session token of the environment are masked there too."""
    from tuneloop import aws
    from tuneloop.pipeline.tasks import _campaign
    from tuneloop.rounds.boxes import CampaignSnapshot

    secret = f"aws-{name.lower()}-Vb93-unit-secret"
    monkeypatch.setenv(name, secret)
    import airflow.sdk  # noqa: F401  (this process runs Airflow code, as a task does)

    assert secret in _redacted(f"before: {secret}")  # nothing masked it yet
    connection = aws.connection_id()
    try:
        _campaign(CampaignSnapshot.read(DEMO))
    finally:
        aws.use_connection(connection)
    assert secret not in _redacted(f"botocore quoted {secret} in a request")


def test_the_job_operators_mask_the_environments_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """train_<stage> and evaluate run no campaign step; their operator masks the same secrets
    itself, on execute and again when the task resumes after deferring (a new process)."""
    from tuneloop.pipeline import operators

    aws_secret = "aws-operator-Q7e2-unit-secret"
    mlflow_secret = "mlflow-operator-Z81k-unit-secret"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", aws_secret)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", mlflow_secret)
    import airflow.sdk  # noqa: F401  (this process runs Airflow code, as a task does)

    assert aws_secret in _redacted(aws_secret) and mlflow_secret in _redacted(mlflow_secret)
    operators._mask_environment_secrets()
    said = _redacted(f"job said {aws_secret} and {mlflow_secret}")
    assert aws_secret not in said and mlflow_secret not in said


def test_one_campaign_at_a_time_holds_the_credentials(connection: str) -> None:
    """The API server reads MLflow from a thread pool: while one read holds a campaign's
    credentials in the environment, no other read (with other credentials, or none) runs."""
    entered, release, others = threading.Event(), threading.Event(), []

    def holder() -> None:
        with mlflow_credentials(connection):
            entered.set()
            release.wait(60)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert entered.wait(60)
        other = threading.Thread(target=lambda: others.append(credentials._lock.acquire(False)))
        other.start()
        other.join(60)
        assert others == [False]
    finally:
        release.set()
        thread.join(60)
    assert credentials._lock.acquire(False)
    credentials._lock.release()


def test_a_missing_connection_is_one_line_naming_the_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_TL_NOWHERE", raising=False)
    with (
        pytest.raises(CredentialsError, match="AIRFLOW_CONN_TL_NOWHERE"),
        mlflow_credentials("tl_nowhere"),
    ):
        pass
    path, line = campaign_with(DEMO, tmp_path, "  mlflow_conn_id: tl_nowhere\n")
    with pytest.raises(CampaignError) as raised:
        check_connection(parse_campaign(path.read_text(encoding="utf-8"), path))
    (problem,) = raised.value.problems
    assert (problem.source, problem.line, problem.path) == (
        str(path),
        line,
        "backend.mlflow_conn_id",
    )
    assert "'tl_nowhere' does not exist" in problem.message


def test_a_connection_without_a_password_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_TL_NO_PASSWORD", json.dumps({"conn_type": "http", "login": "u"})
    )
    with (
        pytest.raises(CredentialsError, match="has no login or no password"),
        mlflow_credentials("tl_no_password"),
    ):
        pass


def test_the_pages_say_why_when_the_connection_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tuneloop.web.campaigns import CampaignInfo
    from tuneloop.web.errors import RunsUnavailableError
    from tuneloop.web.runs import CampaignRuns

    monkeypatch.delenv("AIRFLOW_CONN_TL_NOWHERE", raising=False)
    path, _ = campaign_with(
        DEMO,
        tmp_path,
        "  mlflow_uri: http://127.0.0.1:9\n  mlflow_conn_id: tl_nowhere\n",
    )
    info = CampaignInfo("demo", "tuneloop_demo", path, "local", str(tmp_path), "http://127.0.0.1:9")
    with pytest.raises(RunsUnavailableError, match="'tl_nowhere' does not exist"):
        CampaignRuns(info).experiment_id()
