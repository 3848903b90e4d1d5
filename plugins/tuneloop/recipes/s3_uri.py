"""S3 URIs, checked for more than their prefix: one rule for every field that holds one.

``s3://bucket/key`` names an object (or a folder) by bucket and key and nothing else: a URI
with user info (``s3://me@customer-escrow-1/x``), a port, a query string or a fragment, an
empty or malformed bucket name, or a space or control character is not one S3 or the service
would read as the user meant, so it is refused where it is written rather than when a job
fails on it. Bucket names follow S3's rules for general purpose buckets: 3-63 characters,
lowercase letters, digits, '.' and '-', beginning and ending with a letter or digit, no '..',
not formatted as an IP address. Keys are at most 1,024 bytes of UTF-8.

The service's escrow buckets (``customer-escrow-<account>-...``) hold the checkpoints it
trains; they are never a place for datasets or job outputs.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from pydantic_core import PydanticCustomError

from tuneloop.errors import ConfigError, Problem

SCHEME = "s3://"
ESCROW_PREFIX = "customer-escrow-"
MAX_KEY_BYTES = 1024
SHOWN_LENGTH = 200
ALLOWED = (
    "s3://<bucket>/<key>, the bucket 3-63 lowercase letters, digits, '.' and '-', with no user "
    "info, port, query, fragment, space or control character"
)

_BUCKET_CHARACTERS = re.compile(r"[a-z0-9.\-]+\Z")
_IP_ADDRESS = re.compile(r"\d{1,3}(\.\d{1,3}){3}\Z")


class S3Uri:
    """A valid S3 URI's parts. A plain class: the campaign model imports this module at every
    DAG parse, and building a dataclass would cost each parse more than the module's rules."""

    __slots__ = ("bucket", "key")

    def __init__(self, bucket: str, key: str) -> None:
        self.bucket, self.key = bucket, key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, S3Uri) and (self.bucket, self.key) == (other.bucket, other.key)

    def __hash__(self) -> int:
        return hash((self.bucket, self.key))

    def __repr__(self) -> str:
        return f"S3Uri(bucket={self.bucket!r}, key={self.key!r})"


class S3UriError(ConfigError):
    """``reason`` says what is wrong with the URI, without repeating it (the field that holds
    it is named by whoever reports it); ``fix`` what to do."""

    def __init__(self, reason: str, fix: str = "write it as s3://<bucket>/<key>") -> None:
        super().__init__([Problem("", reason, fix=fix)])
        self.reason = reason
        self.fix = fix


def looks_like_s3(value: str) -> bool:
    """Whether ``value`` means to be an S3 URI (``s3:``, any case), so must be a valid one."""
    return value[:3].lower() == "s3:"


def parse_s3_uri(uri: str) -> S3Uri:
    """The bucket and key of ``uri``; S3UriError saying why it is not a valid S3 URI."""
    _check_characters(uri)
    if not uri.startswith(SCHEME):
        raise S3UriError(
            "it does not begin with s3://", "begin it with s3:// (lowercase, two slashes)"
        )
    rest = uri[len(SCHEME) :]
    authority, _, key = rest.partition("/")
    _check_authority(authority, key)
    _check_bucket(authority)
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise S3UriError(
            f"its key is longer than {MAX_KEY_BYTES} bytes", "use a shorter object key"
        )
    return S3Uri(authority, key)


def s3_uri_defect(uri: str) -> S3UriError | None:
    """Why ``uri`` is not a valid S3 URI (and the fix), or None when it is one."""
    try:
        parse_s3_uri(uri)
    except S3UriError as exc:
        return exc
    return None


def shown(uri: str) -> str:
    """``uri`` as an error may print it: user info (which may be a secret) masked, quoted, and
    cut short when it is too long for one line."""
    if uri[:5].lower() == SCHEME:
        authority, slash, key = uri[len(SCHEME) :].partition("/")
        if "@" in authority:
            uri = f"{uri[:5]}***@{authority.rsplit('@', 1)[1]}{slash}{key}"
    return repr(_cut(uri, SHOWN_LENGTH))


def _cut(text: str, length: int) -> str:
    return text if len(text) <= length else text[:length] + "..."


def bucket_of(uri: str) -> str:
    """The bucket an S3 URI points at, as S3 would read it even from a malformed URI (after
    any user info, before any port); empty when ``uri`` is not an s3:// URI."""
    if uri[:5].lower() != SCHEME:
        return ""
    authority = uri[len(SCHEME) :].partition("/")[0]
    return authority.rsplit("@", 1)[-1].partition(":")[0].strip().lower()


def is_escrow(uri: str) -> bool:
    """Whether ``uri`` is in one of the service's escrow buckets, however it is written."""
    return bucket_of(uri.strip()).startswith(ESCROW_PREFIX)


def pydantic_error(uri: str, defect: S3UriError) -> PydanticCustomError:
    """The validation error a model field raises for a URI it refuses: one line, the URI
    quoted with any user info masked."""
    text = f"{shown(uri)} is not a valid S3 URI: {defect.reason}; fix: {defect.fix}"
    return PydanticCustomError("s3_uri", "{text}", {"text": text, "allowed": ALLOWED})


def checked_if_s3(value: Any) -> Any:
    """A pydantic after-validator: a value that means to be an S3 URI must be a valid one;
    anything else (a local path, an empty string, a placeholder) passes unchanged."""
    if isinstance(value, str) and looks_like_s3(value):
        defect = s3_uri_defect(value)
        if defect is not None:
            raise pydantic_error(value, defect)
    return value


# --- the parts ---------------------------------------------------------------------------------


def _check_characters(uri: str) -> None:
    for index, character in enumerate(uri):
        if character.isspace() or unicodedata.category(character).startswith("C"):
            raise S3UriError(
                f"it holds {character!r} at position {index}",
                "remove it: S3 URIs here hold no spaces or control characters (rename the "
                "object if its key has them)",
            )


def _check_authority(authority: str, key: str) -> None:
    if "@" in authority:
        raise S3UriError(
            "it has user info before the bucket",
            "remove everything between s3:// and the '@'; S3 access comes from the AWS "
            "connection, never from the URI",
        )
    if not authority:
        raise S3UriError("it names no bucket", "name the bucket: s3://<bucket>/<key>")
    if ":" in authority:
        raise S3UriError("it has a port", "remove the port: an S3 URI names a bucket, not a server")
    for mark, what in (("?", "a query string"), ("#", "a fragment")):
        if mark in authority or mark in key:
            raise S3UriError(
                f"it has {what} ('{mark}...')",
                f"remove the '{mark}' and what follows it (rename the object if its key has one)",
            )


def _check_bucket(bucket: str) -> None:
    fix = "use the bucket's name as S3 shows it"
    if not 3 <= len(bucket) <= 63:
        shown_bucket = repr(_cut(bucket, 70))
        raise S3UriError(f"bucket name {shown_bucket} is {len(bucket)} characters long", fix)
    if not _BUCKET_CHARACTERS.match(bucket):
        raise S3UriError(
            f"bucket name {bucket!r} holds characters other than lowercase letters, digits, "
            "'.' and '-'",
            fix,
        )
    if not (bucket[0].isalnum() and bucket[-1].isalnum()):
        raise S3UriError(
            f"bucket name {bucket!r} does not begin and end with a letter or digit", fix
        )
    if ".." in bucket:
        raise S3UriError(f"bucket name {bucket!r} has two periods in a row", fix)
    if _IP_ADDRESS.match(bucket):
        raise S3UriError(f"bucket name {bucket!r} is formatted as an IP address", fix)
