"""Reading and writing by URI: ``s3://bucket/key``, ``file:///path`` or a plain local path.

boto3 is imported only when an s3:// URI is touched, so modules a DAG imports at parse time can
use this one freely.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tuneloop.errors import Problem, StorageError


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> (``bucket``, ``a/b``)."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise StorageError([Problem("", f"not an s3:// URI: {uri!r}")])
    return parsed.netloc, parsed.path.lstrip("/")


def local_path(uri: str) -> Path:
    if uri.startswith("file://"):
        return Path(urlparse(uri).path)
    return Path(uri)


def join(base: str, *parts: str) -> str:
    """Join URI path segments with single slashes, keeping the scheme."""
    text = base.rstrip("/")
    for part in parts:
        text = f"{text}/{part.strip('/')}"
    return text


_ACCESS_FIX = (
    "check the AWS credentials and region in this environment and that they may read the "
    "bucket (or skip remote checks where the command offers --offline)"
)


def s3_client() -> Any:
    import boto3

    # TUNELOOP_S3_ENDPOINT_URL points tests and on-premises users at an S3-compatible endpoint.
    endpoint = os.environ.get("TUNELOOP_S3_ENDPOINT_URL") or None
    return boto3.client("s3", endpoint_url=endpoint)


def read_text(uri: str) -> str:
    """The object's content as UTF-8 text; FileNotFoundError when it does not exist."""
    if is_s3(uri):
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = split_s3(uri)
        try:
            body = s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in {"NoSuchKey", "NoSuchBucket", "404", "NotFound"}:
                raise FileNotFoundError(uri) from None
            raise StorageError(
                [Problem("", f"cannot read {uri}: {code or exc}", fix=_ACCESS_FIX)]
            ) from None
        except BotoCoreError as exc:  # no credentials, no network, bad endpoint
            raise StorageError(
                [Problem("", f"cannot read {uri}: {exc}", fix=_ACCESS_FIX)]
            ) from None
        return body.decode("utf-8")
    path = local_path(uri)
    if not path.is_file():
        raise FileNotFoundError(uri)
    return path.read_text(encoding="utf-8")


def exists(uri: str) -> bool:
    try:
        read_text(uri)
    except FileNotFoundError:
        return False
    return True
