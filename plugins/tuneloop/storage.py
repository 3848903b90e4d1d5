"""Reading and writing by URI: ``s3://bucket/key``, ``file:///path`` or a plain local path.

Reads (whole, streamed, tar members), existence (HEAD on S3, stat locally), listings and
write-once publication (`write_once`, on S3 only to a store shown to honour conditional writes:
`require_conditional_writes`) all live here, so the rest of the package speaks URIs.
S3 clients come from `tuneloop.aws` (the Airflow connection inside Airflow, boto3's default
chain outside, one client per process). boto3 is imported only when an s3:// URI is touched,
so modules a DAG imports at parse time can use this one freely.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple
from urllib.parse import urlparse

from tuneloop import aws
from tuneloop.errors import Problem, StorageError

log = logging.getLogger(__name__)


class ObjectExistsError(StorageError):
    """`write_once` found something at the URI already: another writer published it first."""


class ConditionalWritesUnsupportedError(StorageError):
    """The S3 store accepts ``If-None-Match: *`` without honouring it, so it cannot tell two
    writers of one key apart: nothing may be written once there."""


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


# Characters a bucket name may hold here. S3's own rule is stricter (`recipes.s3_uri`, applied
# where a URI is written); this one only keeps a URI from naming a bucket other than it shows.
_BUCKET = re.compile(r"[A-Za-z0-9._\-]+\Z")


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> (``bucket``, ``a/b``); the key is kept as written.

    A URI parser would read ``s3://me@bucket/k`` as bucket ``bucket`` (or ``me@bucket``) and
    ``s3://bucket:443/k`` as bucket ``bucket``, silently: such a URI is refused, its user info
    never shown."""
    scheme, separator, rest = uri.partition("://")
    if not separator or scheme.lower() != "s3":
        raise _bad_s3_uri(uri, "it does not begin with s3://")
    bucket, _, key = rest.partition("/")
    if "@" in bucket:
        raise _bad_s3_uri(uri, "it has user info before the bucket")
    if not bucket:
        raise _bad_s3_uri(uri, "it names no bucket")
    if ":" in bucket:
        raise _bad_s3_uri(uri, "it has a port")
    if not _BUCKET.match(bucket):
        raise _bad_s3_uri(uri, "its bucket name holds characters no bucket name has")
    return bucket, key.lstrip("/")


def _bad_s3_uri(uri: str, reason: str) -> StorageError:
    fix = (
        "write it as s3://<bucket>/<key>, with no user info or port (S3 access comes from the "
        "AWS connection)"
    )
    return StorageError(
        [Problem("", f"{_redacted(uri)!r} is not a valid S3 URI: {reason}", fix=fix)]
    )


def _redacted(uri: str) -> str:
    """``uri`` with any user info (which may be a secret) as ``***``, cut to one line."""
    scheme, separator, rest = uri.partition("://")
    if separator:
        authority, slash, path = rest.partition("/")
        if "@" in authority:
            uri = f"{scheme}://***@{authority.rpartition('@')[2]}{slash}{path}"
    return uri if len(uri) <= 200 else uri[:200] + "..."


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
    """The process's S3 client (`tuneloop.aws.client`: the Airflow connection inside Airflow,
    the default chain outside; TUNELOOP_S3_ENDPOINT_URL points it at an S3-compatible store)."""
    return aws.client("s3")


def read_text(uri: str, limit: int | None = None) -> str:
    """The object's content as UTF-8 text; FileNotFoundError when it does not exist.

    With ``limit``, at most ``limit + 1`` bytes are fetched (a ranged GET on S3) and a larger
    object is a StorageError: a recipe named by a job must not be downloaded whole before its
    size is known."""
    if is_s3(uri):
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = split_s3(uri)
        extra = {} if limit is None else {"Range": f"bytes=0-{limit}"}
        try:
            body = s3_client().get_object(Bucket=bucket, Key=key, **extra)["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            raise _read_error(uri, exc) from None
    else:
        path = local_path(uri)
        if not path.is_file():
            raise FileNotFoundError(uri)
        with path.open("rb") as handle:
            body = handle.read(-1 if limit is None else limit + 1)
    if limit is not None and len(body) > limit:
        raise StorageError(
            [Problem("", f"is larger than {limit:,} bytes", source=uri, fix="name a smaller file")]
        )
    return body.decode("utf-8")


def read_if_exists(uri: str) -> str | None:
    """The text at ``uri``, or None when no file or object is there.

    Unlike `read_text`, a bucket that does not exist is a StorageError, as access denied is: a
    wrong URI or region must not look like an empty folder to a caller that would then write.
    """
    if not is_s3(uri):
        path = local_path(uri)
        return path.read_text(encoding="utf-8") if path.is_file() else None
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3(uri)
    try:
        body = s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        if error_code(exc) in _MISSING - {"NoSuchBucket"}:
            return None
        raise _access_error(uri, "read", exc) from None
    except BotoCoreError as exc:
        raise _access_error(uri, "read", exc) from None
    return str(body.decode("utf-8"))


# Error codes of a key or bucket that does not exist (HEAD answers a bare 404).
_MISSING = frozenset({"NoSuchKey", "NoSuchBucket", "404", "NotFound"})


def _read_error(uri: str, exc: Exception) -> Exception:
    """What a failed S3 read means to the caller: a missing object or bucket is
    FileNotFoundError; anything else (access denied, no credentials, no network, a bad
    endpoint) a StorageError that says what to check."""
    code = error_code(exc)  # a ClientError's; BotoCoreError has none
    if code in _MISSING:
        return FileNotFoundError(uri)
    return StorageError([Problem("", f"cannot read {uri}: {code or exc}", fix=_ACCESS_FIX)])


def exists(uri: str) -> bool:
    """Whether a file or object is at ``uri``: a HEAD request on S3 (the object is not read),
    a stat locally. StorageError when S3 cannot answer (access denied, no credentials)."""
    if not is_s3(uri):
        return local_path(uri).is_file()
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return _head(uri)
    except (ClientError, BotoCoreError) as exc:
        raise _read_error(uri, exc) from None


def _head(uri: str) -> bool:
    """HEAD the object: False when it (or its bucket) does not exist; botocore's error when S3
    cannot say."""
    from botocore.exceptions import ClientError

    bucket, key = split_s3(uri)
    try:
        s3_client().head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if error_code(exc) in _MISSING:
            return False
        raise
    return True


def list_names(folder: str) -> list[str]:
    """Names of the files directly in ``folder`` (none when it does not exist), unsorted."""
    if not is_s3(folder):
        path = local_path(folder)
        return [p.name for p in path.iterdir() if p.is_file()] if path.is_dir() else []
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = split_s3(folder)
    prefix = prefix.rstrip("/") + "/"
    names: list[str] = []
    try:
        pages = s3_client().get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
            names.extend(item["Key"][len(prefix) :] for item in page.get("Contents", []))
    except (ClientError, BotoCoreError) as exc:
        raise _access_error(folder, "list", exc) from None
    return names


def _access_error(uri: str, action: str, exc: Exception) -> StorageError:
    """``<uri>: cannot <action> it (<code>: <message>)``, and what to check."""
    detail = str(exc)
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error", {})
        detail = f"{error.get('Code', '')}: {error.get('Message', '')}".strip(": ")
    return StorageError(
        [
            Problem(
                "",
                f"cannot {action} it ({detail or exc})",
                source=uri,
                fix="check the AWS credentials and region in this environment and that they "
                "may use the bucket",
            )
        ]
    )


# --- write once ------------------------------------------------------------------------------


def write_once(uri: str, data: bytes, *, content_type: str = "application/json") -> None:
    """Create ``uri`` with ``data``; ObjectExistsError when something is there already.

    Of two writers, exactly one succeeds, and a reader never sees half the data. Locally the
    data is written to a temporary file and published with a hard link, which fails when the
    name exists (a rename would silently replace it); on S3 with ``If-None-Match: *``, which
    the service refuses (412) when the key exists, or (409) while another conditional write to
    it is in flight. Before its first S3 write to a bucket, the process checks that the store
    honours that condition (`require_conditional_writes`, probing next to ``uri``):
    ConditionalWritesUnsupportedError when it does not.
    """
    created = (
        _write_once_s3(uri, data, content_type) if is_s3(uri) else _write_once_local(uri, data)
    )
    if not created:
        raise ObjectExistsError([Problem("", "already exists: it is written once", source=uri)])


def _write_once_local(uri: str, data: bytes) -> bool:
    path = local_path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temporary file is complete and on disk before it gets its final name.
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            return _create_exclusive(path, data)  # a filesystem without hard links
        return True
    finally:
        os.unlink(temporary)


def _create_exclusive(path: Path, data: bytes) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return True


def _write_once_s3(uri: str, data: bytes, content_type: str) -> bool:
    from botocore.exceptions import BotoCoreError, ClientError

    # No existence check first: a HEAD then a PUT lets two writers both find the key free. The
    # condition alone decides, on a store known to honour it.
    require_conditional_writes(uri.rsplit("/", 1)[0])
    bucket, key = split_s3(uri)
    try:
        s3_client().put_object(
            Bucket=bucket, Key=key, Body=data, ContentType=content_type, IfNoneMatch="*"
        )
    except ClientError as exc:
        if error_code(exc) in _CONDITION_REFUSED:
            return False
        raise _access_error(uri, "write", exc) from None
    except BotoCoreError as exc:
        raise _access_error(uri, "write", exc) from None
    return True


# What S3 answers a conditional PUT of a key that exists (412), or of one another conditional
# write is creating at that moment (409).
_CONDITION_REFUSED = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409"})
# What a store that does not implement the condition at all may answer.
_CONDITION_UNIMPLEMENTED = frozenset({"NotImplemented", "501"})

PROBE_PREFIX = ".tuneloop-conditional-write-probe-"
"""Name (under the probed folder) of the object `require_conditional_writes` writes and removes."""

_verdicts: dict[tuple[str, str], bool] = {}
_verdicts_lock = threading.Lock()


def require_conditional_writes(folder: str) -> None:
    """Make sure the S3 store behind ``folder`` honours ``If-None-Match: *``; nothing locally.

    Some S3-compatible stores accept the header and ignore it: every writer of a key is then
    told it created it, which would let two runs record the same round. So the first time a
    process writes once to a bucket (per endpoint), it puts a probe object under ``folder``
    twice with the condition (the second put must be refused) and deletes it. The verdict is
    kept for the process; ConditionalWritesUnsupportedError when the store ignores the
    condition, StorageError when the probe cannot be written at all.
    """
    if not is_s3(folder):
        return
    bucket, _ = split_s3(folder)
    verdict_key = (str(s3_client().meta.endpoint_url), bucket)
    # Held while probing, so that concurrent first writers probe once, not once each.
    with _verdicts_lock:
        honoured = _verdicts.get(verdict_key)
        if honoured is None:
            honoured = _verdicts[verdict_key] = _probe_conditional_writes(folder)
    if not honoured:
        raise _unsupported_error(folder, verdict_key[0])


def _probe_conditional_writes(folder: str) -> bool:
    """Put one new probe key twice with ``If-None-Match: *``: True when the second is refused."""
    probe = join(folder, f"{PROBE_PREFIX}{uuid.uuid4().hex}")
    # A store that refuses even a new key's conditional PUT has no condition to rely on either.
    if not _conditional_put(probe, b"first", folder):
        return False
    try:
        return not _conditional_put(probe, b"second", folder)
    finally:
        _remove_probe(probe)


def _conditional_put(uri: str, data: bytes, folder: str) -> bool:
    """PUT ``uri`` with ``If-None-Match: *``: True when the store took it, False when it refused
    the condition or does not implement it; StorageError naming ``folder`` (the user's, not the
    probe's name) for anything else."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3(uri)
    try:
        s3_client().put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
    except ClientError as exc:
        if error_code(exc) in _CONDITION_REFUSED | _CONDITION_UNIMPLEMENTED:
            return False
        raise _access_error(folder, "write under", exc) from None
    except BotoCoreError as exc:
        raise _access_error(folder, "write under", exc) from None
    return True


def _remove_probe(uri: str) -> None:
    """Delete the probe object; a store that refuses deletes keeps it, with a warning (the
    verdict stands either way)."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3(uri)
    try:
        s3_client().delete_object(Bucket=bucket, Key=key)
    except (ClientError, BotoCoreError) as exc:
        log.warning("could not delete the probe object %s (%s); it is safe to delete", uri, exc)


def _unsupported_error(folder: str, endpoint: str) -> ConditionalWritesUnsupportedError:
    bucket, _ = split_s3(folder)
    return ConditionalWritesUnsupportedError(
        [
            Problem(
                "",
                f"the S3 store at {endpoint} does not honour conditional writes (PUT with "
                f"If-None-Match: *) in bucket {bucket}, and records written exactly once need "
                "them: without them two runs could both record the same round; nothing was "
                "written",
                source=folder,
                fix="use Amazon S3 or an S3-compatible store that supports conditional writes, "
                "or set output_root to a local or shared filesystem folder",
            )
        ]
    )


def error_code(exc: Exception) -> str:
    """The code of a botocore ClientError (``NoSuchKey``, ``AccessDenied``, ``412``...); '' for
    any other error."""
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


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
    # Imported here: tarfile costs each DAG parse that loads storage a few milliseconds.
    import gzip
    import tarfile
    import zlib

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
