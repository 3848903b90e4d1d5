"""Storage by URI (local and S3 on moto): existence by HEAD, listings, write-once; and the AWS
seam behind it (tuneloop.aws): one credential path, cached clients."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fakes.airflow_task import inside_a_task
from tuneloop import aws, storage
from tuneloop.errors import StorageError


@pytest.fixture
def bucket(s3_server: str) -> str:
    name = f"storage-{uuid.uuid4().hex[:12]}"
    storage.s3_client().create_bucket(Bucket=name)
    return name


@pytest.fixture(params=["local", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "root")
    return f"s3://{request.getfixturevalue('bucket')}/root"


@pytest.fixture
def s3_calls() -> Iterator[list[str]]:
    """The S3 operations the process's client sends while the test runs."""
    calls: list[str] = []

    def record(event_name: str, **_: Any) -> None:
        calls.append(event_name.rsplit(".", 1)[-1])

    events = storage.s3_client().meta.events
    events.register("before-call.s3", record)
    try:
        yield calls
    finally:
        events.unregister("before-call.s3", record)


# --- existence, reading, listing -------------------------------------------------------------


def test_exists_asks_s3_with_head_and_never_reads_the_object(bucket: str, s3_calls: list) -> None:
    storage.s3_client().put_object(Bucket=bucket, Key="big/manifest.json", Body=b"x" * 100_000)
    s3_calls.clear()

    assert storage.exists(f"s3://{bucket}/big/manifest.json")
    assert not storage.exists(f"s3://{bucket}/big/missing.json")
    assert not storage.exists(f"s3://{bucket}-gone/big/manifest.json")
    assert s3_calls == ["HeadObject", "HeadObject", "HeadObject"]


def test_exists_locally_is_a_stat_of_a_file(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    (tmp_path / "manifest.json").write_text("{}")
    assert storage.exists(str(tmp_path / "manifest.json"))
    assert storage.exists(f"file://{tmp_path / 'manifest.json'}")
    assert not storage.exists(str(tmp_path / "folder"))
    assert not storage.exists(str(tmp_path / "missing.json"))


def test_exists_when_s3_cannot_answer_says_what_to_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNELOOP_S3_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with pytest.raises(StorageError) as info:
        storage.exists("s3://acme/job/manifest.json")
    [problem] = info.value.problems
    assert problem.message.startswith("cannot read s3://acme/job/manifest.json")
    assert "credentials" in (problem.fix or "")


def test_list_names_lists_the_files_directly_in_a_folder(root: str) -> None:
    assert storage.list_names(storage.join(root, "rounds")) == []
    for name in ("rounds/0001.json", "rounds/0002.json", "rounds/deeper/0003.json"):
        storage.write_once(storage.join(root, name), b"{}")
    assert sorted(storage.list_names(storage.join(root, "rounds"))) == ["0001.json", "0002.json"]


def test_read_if_exists(root: str) -> None:
    uri = storage.join(root, "baselines", "abc.json")
    assert storage.read_if_exists(uri) is None
    storage.write_once(uri, '{"é": 1}'.encode())
    assert storage.read_if_exists(uri) == '{"é": 1}'


def test_a_missing_bucket_is_an_error_not_an_empty_folder(s3_server: str) -> None:
    gone = f"s3://storage-gone-{uuid.uuid4().hex[:8]}/root"
    with pytest.raises(StorageError, match=r"cannot read it \(NoSuchBucket"):
        storage.read_if_exists(f"{gone}/rounds/0001.json")
    with pytest.raises(StorageError, match=r"^s3://storage-gone-\w+/root/rounds: cannot list it"):
        storage.list_names(f"{gone}/rounds")
    with pytest.raises(StorageError, match=r"cannot write it \(NoSuchBucket"):
        storage.write_once(f"{gone}/rounds/0001.json", b"{}")


# --- write once --------------------------------------------------------------------------------


def test_write_once_refuses_a_second_writer(root: str) -> None:
    uri = storage.join(root, "claims", "0001-1.json")
    storage.write_once(uri, b"first")
    with pytest.raises(storage.ObjectExistsError) as info:
        storage.write_once(uri, b"second")
    assert isinstance(info.value, StorageError)
    assert str(info.value).startswith(f"{uri}: already exists")
    assert storage.read_text(uri) == "first"


def test_write_once_leaves_no_temporary_file_behind(tmp_path: Path) -> None:
    uri = str(tmp_path / "rounds" / "0001.json")
    storage.write_once(uri, b"{}")
    with pytest.raises(storage.ObjectExistsError):
        storage.write_once(uri, b"[]")
    assert [p.name for p in (tmp_path / "rounds").iterdir()] == ["0001.json"]


def test_write_once_on_s3_is_a_conditional_put(bucket: str, s3_calls: list) -> None:
    uri = f"s3://{bucket}/rounds/0001.json"
    storage.write_once(uri, b"{}")
    # Looked up first (some S3-compatible stores ignore the condition), then put conditionally.
    assert s3_calls == ["HeadObject", "PutObject"]
    head = storage.s3_client().head_object(Bucket=bucket, Key="rounds/0001.json")
    assert head["ContentType"] == "application/json"


# --- the AWS seam ------------------------------------------------------------------------------


@pytest.fixture
def moto_connection(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """An Airflow connection (from the environment) to the moto server, in eu-west-1."""
    extra = {"endpoint_url": s3_server, "region_name": "eu-west-1"}
    monkeypatch.setenv("AIRFLOW_CONN_AWS_SEAM", json.dumps({"conn_type": "aws", "extra": extra}))
    return "aws_seam"


def test_outside_airflow_the_default_chain_is_used_and_connections_are_not_read(
    moto_connection: str,
) -> None:
    assert not aws.in_airflow()
    client = aws.client("sagemaker", "us-west-2", conn_id=moto_connection)
    assert client.meta.endpoint_url == "https://api.sagemaker.us-west-2.amazonaws.com"
    assert client.meta.region_name == "us-west-2"


def test_inside_airflow_the_connection_is_used(moto_connection: str, s3_server: str) -> None:
    with inside_a_task():
        assert aws.in_airflow()
        client = aws.client("sagemaker", conn_id=moto_connection)
        assert client.meta.endpoint_url == s3_server
        assert client.meta.region_name == "eu-west-1"
        # None: the default chain, inside Airflow too.
        default = aws.client("sagemaker", "us-west-2", conn_id=None)
        assert default.meta.endpoint_url == "https://api.sagemaker.us-west-2.amazonaws.com"
    assert not aws.in_airflow()


def test_storage_uses_the_process_connection_inside_airflow(
    moto_connection: str, s3_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TUNELOOP_S3_ENDPOINT_URL")
    assert aws.connection_id() == aws.DEFAULT_CONN_ID
    aws.use_connection(moto_connection)
    try:
        with inside_a_task():
            assert storage.s3_client().meta.endpoint_url == s3_server
            assert storage.s3_client().meta.region_name == "eu-west-1"
    finally:
        aws.use_connection(aws.DEFAULT_CONN_ID)
    # Outside Airflow the connection is not read: boto3's default S3 endpoint.
    assert storage.s3_client().meta.endpoint_url.endswith(".amazonaws.com")


def test_the_s3_endpoint_override_wins_over_the_connection(
    moto_connection: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNELOOP_S3_ENDPOINT_URL", "http://127.0.0.1:9")
    with inside_a_task():
        assert aws.client("s3", conn_id=moto_connection).meta.endpoint_url == "http://127.0.0.1:9"
    assert aws.client("s3").meta.endpoint_url == "http://127.0.0.1:9"


def test_clients_are_made_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    first = aws.client("sts", "us-east-1")
    assert aws.client("sts", "us-east-1") is first
    assert aws.client("sts", "eu-west-1") is not first
    assert aws.client("sts", "us-east-1", config={"retries": {"max_attempts": 1}}) is not first
    # boto3 read the environment when it made the client: a changed setting makes a new one.
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", "http://127.0.0.1:9")
    moved = aws.client("sts", "us-east-1")
    assert moved is not first and moved.meta.endpoint_url == "http://127.0.0.1:9"
    aws.clear()
    assert aws.client("sts", "us-east-1") is not moved


def test_the_seam_never_imports_boto3_or_airflow_at_import_time() -> None:
    import subprocess
    import sys

    code = (
        "import sys, tuneloop.aws, tuneloop.storage\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'boto3', 'botocore', 'airflow'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
