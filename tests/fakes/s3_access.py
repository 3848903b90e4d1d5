"""S3 that refuses access, for tests of what tuneloop does when AWS says AccessDenied.

Two ways, because moto enforces access in two places:

- `denied_objects(bucket, prefix)`: a **bucket policy** that denies every action on the
  objects under ``prefix``. moto's server checks a bucket's policy on every object request
  (HEAD, GET, PUT with its copies, tags and multipart parts, POST restores and uploads, DELETE)
  in its default mode, so this works on the session's ``s3_server`` and changes nothing
  outside that bucket. S3 answers such requests 403 with an empty body, which botocore reads as
  error code ``403``. It does not deny listings: moto checks bucket-level requests only
  against IAM (below).

- `iam_enforcing_s3(denied=...)`: a moto server in **its own process**, switched to checking
  every request against IAM (``/moto-api/reset-auth``, what INITIAL_NO_AUTH_ACTION_COUNT sets),
  with one IAM user allowed everything except the ``denied`` statements. It has to be another
  process: the switch is a module global of moto's, and flipping it in this one would make the
  session's ``s3_server`` refuse the test credentials too. Inside the ``with``,
  ``TUNELOOP_S3_ENDPOINT_URL`` and the AWS credentials point at it (so
  ``tuneloop.storage.s3_client()`` talks to it as that user); they are restored on leaving.
  Use it for what a bucket policy cannot deny here, e.g. listing an escrow bucket::

      with iam_enforcing_s3(buckets=["customer-escrow-1"],
                            denied=[deny("s3:ListBucket", "customer-escrow-1")]) as server:
          server.client.put_object(Bucket="customer-escrow-1", Key="ck/a", Body=b"x")
          ...  # list_objects("s3://customer-escrow-1/ck/") raises AccessDeniedError

  ``server.admin`` (the test credentials, which IAM does not know) works only before
  enforcement: make buckets and objects through ``buckets=`` and ``setup=``, or afterwards
  through ``server.client`` (the user's, allowed everything not denied).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


def _client(endpoint: str | None = None, **credentials: str) -> Any:
    import boto3

    if endpoint is None:
        from tuneloop.storage import s3_client

        return s3_client()
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **credentials)


@contextmanager
def denied_objects(
    bucket: str, prefix: str = "", *, actions: Iterable[str] = ("s3:*",), client: Any = None
) -> Iterator[None]:
    """While inside: a bucket policy on ``bucket`` denies everyone ``actions`` (all by default)
    on the objects whose keys begin with ``prefix``. The bucket's previous policy (or none)
    comes back after.

    moto names an object request's action after its HTTP method, not S3's operation:
    ``s3:HeadObject``, ``s3:GetObject``, ``s3:PutObject`` (which covers CopyObject, tagging and
    UploadPartCopy), ``s3:PostObject`` (RestoreObject, Create/CompleteMultipartUpload) and
    ``s3:DeleteObject``. To deny one operation the way S3 would, name S3's action and moto's,
    e.g. ``("s3:RestoreObject", "s3:PostObject")``."""
    from botocore.exceptions import ClientError

    s3 = client or _client()
    try:
        previous: str | None = s3.get_bucket_policy(Bucket=bucket)["Policy"]
    except ClientError:
        previous = None
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "DenyObjectsForTests",
                "Effect": "Deny",
                "Principal": "*",
                "Action": list(actions),
                "Resource": f"arn:aws:s3:::{bucket}/{prefix}*",
            }
        ],
    }
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
    try:
        yield
    finally:
        if previous is None:
            s3.delete_bucket_policy(Bucket=bucket)
        else:
            s3.put_bucket_policy(Bucket=bucket, Policy=previous)


def deny(action: str, bucket: str, key_pattern: str | None = None) -> dict[str, Any]:
    """An IAM Deny statement for `iam_enforcing_s3`: ``action`` (``s3:ListBucket``,
    ``s3:GetObject``...) on the bucket, or on its objects matching ``key_pattern``."""
    resource = f"arn:aws:s3:::{bucket}" + (f"/{key_pattern}" if key_pattern is not None else "")
    return {"Effect": "Deny", "Action": action, "Resource": resource}


@dataclass
class EnforcingS3:
    endpoint: str
    admin: Any
    """A client with the test credentials: usable only before enforcement (``setup=``)."""
    client: Any
    """A client with the IAM user's credentials (what tuneloop's client uses inside)."""


_SERVER_START = "Running on"
_START_BOUND_S = 60.0


@contextmanager
def iam_enforcing_s3(
    *,
    denied: Iterable[dict[str, Any]] = (),
    buckets: Iterable[str] = (),
    setup: Callable[[Any], None] | None = None,
) -> Iterator[EnforcingS3]:
    """A moto S3 server in its own process that checks every request against IAM, as a user
    allowed everything but the ``denied`` statements (see the module docstring)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    saved = {
        name: os.environ.get(name)
        for name in ("TUNELOOP_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    }
    try:
        _wait_until_serving(process)
        endpoint = f"http://127.0.0.1:{port}"
        test_credentials = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
        admin = _client(endpoint, **test_credentials)
        for name in buckets:
            admin.create_bucket(Bucket=name)
        if setup is not None:
            setup(admin)
        key = _user_allowed_all_but(endpoint, list(denied), test_credentials)
        _enforce(endpoint)
        os.environ.update(
            TUNELOOP_S3_ENDPOINT_URL=endpoint,
            AWS_ACCESS_KEY_ID=key["AccessKeyId"],
            AWS_SECRET_ACCESS_KEY=key["SecretAccessKey"],
        )
        user = _client(
            endpoint,
            aws_access_key_id=key["AccessKeyId"],
            aws_secret_access_key=key["SecretAccessKey"],
        )
        yield EnforcingS3(endpoint=endpoint, admin=admin, client=user)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        process.terminate()
        process.wait(timeout=30)


def _wait_until_serving(process: subprocess.Popen[str]) -> None:
    """Block until the server says it is listening (its log line), then keep draining its log
    so that a full pipe never stalls it. The bound is a backstop for a server that never
    starts."""
    serving = threading.Event()

    def read_log() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            if _SERVER_START in line:
                serving.set()
        serving.set()  # the process ended: stop waiting, and say so below

    threading.Thread(target=read_log, daemon=True).start()
    if not serving.wait(_START_BOUND_S) or process.poll() is not None:
        raise RuntimeError("the IAM-enforcing moto server did not start")


def _user_allowed_all_but(
    endpoint: str, denied: list[dict[str, Any]], credentials: dict[str, str]
) -> dict[str, str]:
    import boto3

    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1", **credentials)
    iam.create_user(UserName="tuneloop-tests")
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}, *denied],
    }
    iam.put_user_policy(
        UserName="tuneloop-tests", PolicyName="tests", PolicyDocument=json.dumps(policy)
    )
    key = iam.create_access_key(UserName="tuneloop-tests")["AccessKey"]
    return {"AccessKeyId": key["AccessKeyId"], "SecretAccessKey": key["SecretAccessKey"]}


def _enforce(endpoint: str) -> None:
    """From the next request on, every request is checked against IAM."""
    request = urllib.request.Request(
        f"{endpoint}/moto-api/reset-auth",
        data=b"0",
        method="POST",
        headers={"Content-Type": "text/plain"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()
