"""Reading and writing by URI: ``s3://bucket/key``, ``file:///path`` or a plain local path.

boto3 is imported only when an s3:// URI is touched, so modules a DAG imports at parse time can
use this one freely.
"""

from __future__ import annotations

import gzip
import os
import tarfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple
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
        except (ClientError, BotoCoreError) as exc:
            raise _read_error(uri, exc) from None
        return body.decode("utf-8")
    path = local_path(uri)
    if not path.is_file():
        raise FileNotFoundError(uri)
    return path.read_text(encoding="utf-8")


def _read_error(uri: str, exc: Exception) -> Exception:
    """What a failed S3 read means to the caller: a missing object or bucket is
    FileNotFoundError; anything else (access denied, no credentials, no network, a bad
    endpoint) a StorageError that says what to check."""
    response = getattr(exc, "response", None)  # a ClientError's; BotoCoreError has none
    code = response.get("Error", {}).get("Code", "") if response else ""
    if code in {"NoSuchKey", "NoSuchBucket", "404", "NotFound"}:
        return FileNotFoundError(uri)
    return StorageError([Problem("", f"cannot read {uri}: {code or exc}", fix=_ACCESS_FIX)])


def exists(uri: str) -> bool:
    try:
        read_text(uri)
    except FileNotFoundError:
        return False
    return True


# --- streaming reads and tar members ---------------------------------------------------------

# A tar member we hold in memory (a manifest, a results file) is small; anything bigger than this
# that matches is not what we are looking for, and holding it could exhaust a worker's memory.
MAX_MEMBER_BYTES = 64 * 1024 * 1024


class TarMember(NamedTuple):
    """One file read from a tarball: its normalised path inside the archive, mtime and bytes."""

    name: str
    mtime: float
    data: bytes


@contextmanager
def open_binary(uri: str) -> Iterator[BinaryIO]:
    """The object's bytes as a stream that is read as it is consumed, never whole into memory.

    Closing (leaving the ``with``) early drops the rest of an S3 download. FileNotFoundError when
    the object does not exist.
    """
    if not is_s3(uri):
        path = local_path(uri)
        if not path.is_file():
            raise FileNotFoundError(uri)
        with path.open("rb") as handle:
            yield handle
        return
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3(uri)
    try:
        body = s3_client().get_object(Bucket=bucket, Key=key)["Body"]
    except (ClientError, BotoCoreError) as exc:
        raise _read_error(uri, exc) from None
    try:
        yield body
    finally:
        body.close()


def tar_member_name(name: str) -> str:
    """A member path without the ``./`` that ``tar -C dir .`` puts in front of every name."""
    while name.startswith("./"):
        name = name[2:]
    return name.lstrip("/")


def tar_members(
    uri: str, wanted: Callable[[str], bool], *, max_bytes: int = MAX_MEMBER_BYTES
) -> Iterator[TarMember]:
    """The regular files of a ``.tar`` or ``.tar.gz`` whose normalised name ``wanted`` accepts.

    The archive is read as a stream, in order: a caller that stops iterating once it has what it
    needs (a manifest at the root of a multi-gigabyte output.tar.gz) never downloads the rest.
    FileNotFoundError when the archive does not exist; StorageError when it is not a readable
    tarball or a wanted member is larger than ``max_bytes``.
    """
    with open_binary(uri) as stream:
        try:
            with tarfile.open(fileobj=stream, mode="r|*") as archive:
                for member in archive:
                    name = tar_member_name(member.name)
                    if not member.isfile() or not wanted(name):
                        continue
                    if member.size > max_bytes:
                        raise StorageError(
                            [
                                Problem(
                                    "",
                                    f"{uri}: member {name} is {member.size} bytes, more than the "
                                    f"{max_bytes} this reader holds in memory",
                                )
                            ]
                        )
                    handle = archive.extractfile(member)
                    data = handle.read() if handle is not None else b""
                    yield TarMember(name, float(member.mtime), data)
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise StorageError(
                [
                    Problem(
                        "",
                        f"{uri} is not a readable tar.gz archive ({exc or type(exc).__name__})",
                        fix="point at the output.tar.gz a finished job wrote, copied whole",
                    )
                ]
            ) from None
