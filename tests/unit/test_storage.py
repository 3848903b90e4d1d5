"""Storage by URI (local and S3 on moto): existence by HEAD, listings, write-once; and the AWS
seam behind it (tuneloop.aws): one credential path, cached clients."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
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


# --- S3 URIs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "bucket", "key"),
    [
        ("s3://acme-ml-data/a/b.json", "acme-ml-data", "a/b.json"),
        ("s3://acme-ml-data", "acme-ml-data", ""),
        ("s3://acme-ml-data/", "acme-ml-data", ""),
        ("s3://acme-ml-data/runs/r?1#x", "acme-ml-data", "runs/r?1#x"),  # a key as written
    ],
)
def test_split_s3(uri: str, bucket: str, key: str) -> None:
    assert storage.split_s3(uri) == (bucket, key)


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("s3://admin:pw-Kq7-secret@acme-ml-data/k", "user info"),
        ("s3://pw-Kq7-secret@acme-ml-data/k", "user info"),
        ("s3://acme-ml-data:443/k", "a port"),
        ("s3:///k", "names no bucket"),
        ("s3://", "names no bucket"),
        ("s3://acme-ml-data?versionId=1", "characters no bucket name has"),
        ("s3://acme ml-data/k", "characters no bucket name has"),
        ("https://admin:pw-Kq7-secret@acme-ml-data/k", "does not begin with s3://"),
        ("/srv/data/k", "does not begin with s3://"),
    ],
)
def test_split_s3_refuses_what_would_name_another_bucket(uri: str, reason: str) -> None:
    with pytest.raises(StorageError) as raised:
        storage.split_s3(uri)
    [problem] = raised.value.problems
    assert "is not a valid S3 URI" in problem.message and reason in problem.message
    assert problem.fix
    assert "pw-Kq7" not in str(raised.value) and "admin" not in str(raised.value)
    if "@" in uri:
        assert "://***@acme-ml-data/k" in problem.message


def test_a_uri_with_user_info_reaches_no_bucket(bucket: str, s3_calls: list) -> None:
    """``s3://me@bucket`` is not read as ``bucket``: nothing is sent to S3."""
    storage.s3_client().put_object(Bucket=bucket, Key="k.json", Body=b"{}")
    s3_calls.clear()
    with pytest.raises(StorageError, match="user info"):
        storage.read_text(f"s3://me@{bucket}/k.json")
    with pytest.raises(StorageError, match="user info"):
        storage.exists(f"s3://me@{bucket}/k.json")
    with pytest.raises(StorageError, match="a port"):
        storage.write_once(f"s3://{bucket}:443/new.json", b"{}")
    assert s3_calls == []


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


def test_read_text_with_a_limit_fetches_no_more_than_it(root: str) -> None:
    small, large = storage.join(root, "small.yaml"), storage.join(root, "large.yaml")
    storage.write_once(small, b"a: 1\n")
    storage.write_once(large, b"x" * 5000)
    ranges: list[str] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        ranges.append(params.get("Range", ""))

    events = storage.s3_client().meta.events
    events.register("provide-client-params.s3.GetObject", record)
    try:
        assert storage.read_text(small, limit=100) == "a: 1\n"
        with pytest.raises(StorageError, match=r"large\.yaml: is larger than 4,096 bytes"):
            storage.read_text(large, limit=4096)
    finally:
        events.unregister("provide-client-params.s3.GetObject", record)
    if root.startswith("s3://"):  # ranged GETs: never the whole object
        assert ranges == ["bytes=0-100", "bytes=0-4096"]


def test_a_missing_bucket_is_an_error_not_an_empty_folder(s3_server: str) -> None:
    gone = f"s3://storage-gone-{uuid.uuid4().hex[:8]}/root"
    with pytest.raises(StorageError, match=r"cannot read it \(NoSuchBucket"):
        storage.read_if_exists(f"{gone}/rounds/0001.json")
    with pytest.raises(StorageError, match=r"^s3://storage-gone-\w+/root/rounds: cannot list it"):
        storage.list_names(f"{gone}/rounds")
    with pytest.raises(StorageError, match=r"root/rounds: cannot write under it \(NoSuchBucket"):
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
    # The process's first write to the bucket probes the condition (a probe object put twice,
    # the second refused, then deleted); the object itself is put conditionally, never looked
    # up first (a HEAD then a PUT would let two writers both find the key free).
    assert s3_calls == ["PutObject", "PutObject", "DeleteObject", "PutObject"]
    s3_calls.clear()
    storage.write_once(f"s3://{bucket}/rounds/0002.json", b"{}")
    assert s3_calls == ["PutObject"]  # the verdict is kept for the bucket
    head = storage.s3_client().head_object(Bucket=bucket, Key="rounds/0001.json")
    assert head["ContentType"] == "application/json"
    listing = storage.s3_client().list_objects_v2(Bucket=bucket)
    assert [item["Key"] for item in listing["Contents"]] == ["rounds/0001.json", "rounds/0002.json"]


def test_require_conditional_writes_does_nothing_locally(tmp_path: Path) -> None:
    storage.require_conditional_writes(str(tmp_path / "root"))
    assert list(tmp_path.iterdir()) == []


@contextmanager
def answered(event: str, code: str, status: int) -> Iterator[None]:
    """The process's S3 client gets ``code``/``status`` back for ``event`` inside the ``with``:
    what a store says that moto does not."""
    from botocore.awsrequest import AWSResponse

    def answer(**_: object) -> tuple[AWSResponse, dict]:
        response = AWSResponse(url="", status_code=status, headers={}, raw=None)
        error = {"Code": code, "Message": f"{code} (answered by the test)"}
        return response, {"Error": error, "ResponseMetadata": {"HTTPStatusCode": status}}

    events = storage.s3_client().meta.events
    events.register_first(event, answer)
    try:
        yield
    finally:
        events.unregister(event, answer)


def test_a_store_that_does_not_implement_the_condition_is_refused_once_for_all(
    bucket: str, s3_calls: list
) -> None:
    uri = f"s3://{bucket}/root/rounds/0001.json"
    with (
        answered("before-call.s3.PutObject", "NotImplemented", 501),
        pytest.raises(storage.ConditionalWritesUnsupportedError) as info,
    ):
        storage.write_once(uri, b"{}")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"s3://{bucket}/root/rounds: the S3 store at http://127.0.0.1:")
    assert (
        f"does not honour conditional writes (PUT with If-None-Match: *) in bucket {bucket}"
        in message
    )
    assert "records written exactly once need them" in message
    assert message.endswith(
        "; fix: use Amazon S3 or an S3-compatible store that supports conditional writes, or "
        "set output_root to a local or shared filesystem folder"
    )
    # The verdict holds for the process: the store is not asked again.
    s3_calls.clear()
    with pytest.raises(storage.ConditionalWritesUnsupportedError):
        storage.write_once(uri, b"{}")
    assert s3_calls == []
    assert "Contents" not in storage.s3_client().list_objects_v2(Bucket=bucket)


def test_a_probe_that_cannot_be_deleted_is_left_with_a_warning(
    bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        answered("before-call.s3.DeleteObject", "AccessDenied", 403),
        caplog.at_level("WARNING", logger="tuneloop.storage"),
    ):
        storage.write_once(f"s3://{bucket}/root/rounds/0001.json", b"{}")
    listing = storage.s3_client().list_objects_v2(Bucket=bucket)
    keys = sorted(item["Key"] for item in listing["Contents"])
    assert keys[1] == "root/rounds/0001.json"
    assert keys[0].startswith(f"root/rounds/{storage.PROBE_PREFIX}")
    assert f"could not delete the probe object s3://{bucket}/{keys[0]}" in caplog.text


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
