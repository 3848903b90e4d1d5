"""S3 objects the lifecycle acts on: list, head, move to another storage class in place
(verified), tag for a bucket lifecycle rule, restore from an archive class, delete, and the
bucket lifecycle rule that archives tagged objects.

Rules:

- Every call goes through `tuneloop.storage.s3_client` (one credential path); boto3 and
  botocore are imported inside functions, so a DAG file may import this module.
- AccessDenied (or a bare 403) from any call is `AccessDeniedError`, naming the URI and what was
  refused: the caller decides whether that is a failure or "not this account's to act on"
  (escrow checkpoints).
- A storage-class change is a copy of the object onto itself: ``CopyObject`` up to
  `COPY_OBJECT_LIMIT` (5 GB, S3's limit for one call) and below ``multipart_threshold``, a
  multipart copy (``UploadPartCopy`` by byte range) above. Metadata, content headers, tags and
  KMS encryption are kept; object ACLs are not (S3 recommends them disabled). On a versioned
  bucket the old bytes stay on as a noncurrent STANDARD version until a noncurrent-version rule
  expires them.
- A copy is verified before anything calls it archived (`ArchiveVerificationError`, one line
  naming the URI): the sizes always, the checksums where S3 gives two comparable values, and
  the ETags where both are MD5-based and built from the same parts. A multipart copy is checked
  part by part *before* it is completed, so a mismatch aborts it and leaves the original
  untouched; what each path compares is written at `_copy_multipart`.
- Restores: `restore_state` reads S3's ``x-amz-restore`` header; `request_restore` never asks
  Expedited of DEEP_ARCHIVE (S3 refuses it) and treats GLACIER_IR as needing none.
- The lifecycle rule (`archive_rule`) is ours by a deterministic ID; `merge_rules` replaces only
  ours and keeps every other rule of the bucket as it was.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlencode

from tuneloop.errors import Problem, StorageError
from tuneloop.storage import error_code, s3_client, split_s3

COPY_OBJECT_LIMIT = 5 * 1024**3
"""The largest object one CopyObject call copies (5 GB); above it only a multipart copy works."""
MIN_PART_BYTES = 5 * 1024**2
"""The smallest part of a multipart upload, except the last."""
MAX_PARTS = 10_000

ARCHIVE_TAG = "tuneloop-archive"
"""The object tag `tag_for_archive` sets (its value: the storage class); `archive_rule` filters
on it."""
ARCHIVE_RULE_PREFIX = "tuneloop-archive-"
"""Our lifecycle rules' IDs begin with this; the rest is a digest of the prefix and class."""

ARCHIVE_CLASSES = ("GLACIER", "DEEP_ARCHIVE", "GLACIER_IR")
NEEDS_RESTORE = frozenset({"GLACIER", "DEEP_ARCHIVE"})
"""Classes whose objects cannot be read until restored (GLACIER_IR reads at once)."""
STORAGE_CLASSES = frozenset(
    {
        "STANDARD",
        "STANDARD_IA",
        "ONEZONE_IA",
        "INTELLIGENT_TIERING",
        "REDUCED_REDUNDANCY",
        "GLACIER",
        "DEEP_ARCHIVE",
        "GLACIER_IR",
    }
)
RESTORE_TIERS = ("Expedited", "Standard", "Bulk")

# S3's checksum algorithms, as the response fields name them (Checksum<ALGORITHM>).
_CHECKSUM_ALGORITHMS = (
    "CRC64NVME",
    "CRC32C",
    "CRC32",
    "SHA256",
    "SHA1",
    "SHA512",
    "MD5",
    "XXHASH64",
    "XXHASH3",
    "XXHASH128",
)
# What a copy asks for when the source has no checksum: computable here (so a split multipart
# copy can check each part) and strong.
_DEFAULT_ALGORITHM = "SHA256"
# Algorithms S3 can keep as one whole-object value across a multipart upload (ChecksumType
# FULL_OBJECT): a copy in parts then ends with a value equal to the source's.
_FULL_OBJECT_ALGORITHMS = frozenset({"CRC64NVME", "CRC32C", "CRC32"})
# Algorithms this module can compute over a byte range (a split multipart copy's parts).
_LOCAL_ALGORITHMS: dict[str, Callable[[], Any]] = {
    "SHA256": hashlib.sha256,
    "SHA1": hashlib.sha1,
}

_DENIED = frozenset({"AccessDenied", "403", "Forbidden", "AllAccessDisabled"})
_MISSING = frozenset({"NoSuchKey", "404", "NotFound"})
_CHANGED = frozenset({"PreconditionFailed", "412"})
_ARCHIVED = frozenset({"InvalidObjectState", "ObjectNotInActiveTierError"})


class AccessDeniedError(StorageError):
    """S3 refused an action on a URI (AccessDenied or 403)."""

    def __init__(self, uri: str, action: str, detail: str = "") -> None:
        self.uri = uri
        self.action = action
        suffix = f" ({detail})" if detail else ""
        super().__init__(
            [
                Problem(
                    "",
                    f"access denied: this account may not {action} it{suffix}",
                    source=uri,
                    fix="grant the AWS identity in use that permission, or leave it to its owner",
                )
            ]
        )


class ArchiveVerificationError(StorageError):
    """A copy's size, checksum or ETag does not match its source's, or nothing could be
    compared before an irreversible step."""

    def __init__(self, uri: str, detail: str) -> None:
        self.uri = uri
        super().__init__([Problem("", f"copy not verified: {detail}", source=uri)])


@dataclass(frozen=True)
class ObjectInfo:
    """One S3 object as a listing or HEAD shows it."""

    uri: str
    bytes: int
    storage_class: str
    """``STANDARD`` where S3 names none."""
    etag: str
    """As S3 gives it, quotes included (``"<md5>"`` or ``"<md5 of md5s>-<parts>"``)."""
    checksum: tuple[str, str] | None
    """(algorithm, base64 value) from a HEAD; a composite one ends ``-<parts>``. None from a
    listing (which names the algorithm only) or when the object has none."""
    restore: str | None
    """S3's ``x-amz-restore`` header, when a restore was asked for."""


RestoreState = Literal["not_archived", "not_requested", "in_progress", "restored"]


# --- errors ----------------------------------------------------------------------------------


def _detail(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error", {})
        return f"{error.get('Code', '')}: {error.get('Message', '')}".strip(": ")
    return str(exc) or type(exc).__name__


def _error(uri: str, action: str, exc: Exception) -> StorageError:
    """What a failed S3 call means: AccessDeniedError for a refusal, else a StorageError that
    names the URI and the action."""
    if error_code(exc) in _DENIED:
        return AccessDeniedError(uri, action, _detail(exc))
    if error_code(exc) in _ARCHIVED:
        return StorageError(
            [
                Problem(
                    "",
                    f"cannot {action} it: it is in an archive storage class and not restored "
                    f"({_detail(exc)})",
                    source=uri,
                    fix="restore it first (tuneloop lifecycle restore)",
                )
            ]
        )
    return StorageError([Problem("", f"cannot {action} it ({_detail(exc)})", source=uri)])


def _uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


# --- reading ---------------------------------------------------------------------------------


def list_objects(prefix_uri: str) -> list[ObjectInfo]:
    """Every object under the folder ``prefix_uri`` (recursively; ``s3://b/a`` means ``a/...``,
    not ``ab``), in key order. A folder with nothing in it is an empty list."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3(prefix_uri)
    prefix = key if not key or key.endswith("/") else key + "/"
    found: list[ObjectInfo] = []
    try:
        pages = s3_client().get_paginator("list_objects_v2")
        for page in pages.paginate(
            Bucket=bucket, Prefix=prefix, OptionalObjectAttributes=["RestoreStatus"]
        ):
            found.extend(_listed(bucket, item) for item in page.get("Contents", []))
    except (ClientError, BotoCoreError) as exc:
        raise _error(prefix_uri, "list", exc) from None
    return found


def _listed(bucket: str, item: dict[str, Any]) -> ObjectInfo:
    return ObjectInfo(
        uri=_uri(bucket, item["Key"]),
        bytes=int(item.get("Size", 0)),
        storage_class=item.get("StorageClass") or "STANDARD",
        etag=item.get("ETag", ""),
        checksum=None,
        restore=_restore_header(item.get("RestoreStatus")),
    )


def _restore_header(status: dict[str, Any] | None) -> str | None:
    """A listing's RestoreStatus written as the ``x-amz-restore`` header a HEAD gives."""
    if not status:
        return None
    if status.get("IsRestoreInProgress"):
        return 'ongoing-request="true"'
    expiry = status.get("RestoreExpiryDate")
    if expiry is None:
        return 'ongoing-request="false"'
    when = expiry.strftime("%a, %d %b %Y %H:%M:%S GMT") if hasattr(expiry, "strftime") else expiry
    return f'ongoing-request="false", expiry-date="{when}"'


def head(uri: str) -> ObjectInfo | None:
    """The object at ``uri`` (with its checksum), or None when there is none."""
    response = _head_response(uri)
    return None if response is None else _info(uri, response)


def _head_response(uri: str, part_number: int | None = None) -> dict[str, Any] | None:
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3(uri)
    extra = {} if part_number is None else {"PartNumber": part_number}
    try:
        response: dict[str, Any] = s3_client().head_object(
            Bucket=bucket, Key=key, ChecksumMode="ENABLED", **extra
        )
    except ClientError as exc:
        if error_code(exc) in _MISSING:
            return None
        raise _error(uri, "read", exc) from None
    except BotoCoreError as exc:
        raise _error(uri, "read", exc) from None
    return response


def _info(uri: str, response: dict[str, Any]) -> ObjectInfo:
    return ObjectInfo(
        uri=uri,
        bytes=int(response.get("ContentLength", 0)),
        storage_class=response.get("StorageClass") or "STANDARD",
        etag=response.get("ETag", ""),
        checksum=_checksum(response),
        restore=response.get("Restore"),
    )


def _checksum(response: dict[str, Any]) -> tuple[str, str] | None:
    for algorithm in _CHECKSUM_ALGORITHMS:
        value = response.get(f"Checksum{algorithm}")
        if value:
            return algorithm, value
    return None


def _composite(response: dict[str, Any]) -> bool:
    """Whether the object's checksum is a checksum of its parts' checksums: equal only between
    objects built from the same parts, never to a whole-object value. A single PUT's is whole;
    a multipart upload's is composite unless S3 says FULL_OBJECT."""
    if response.get("ChecksumType"):
        return bool(response["ChecksumType"] == "COMPOSITE")
    return _parts_of(response.get("ETag", "")) is not None


# --- storage class ---------------------------------------------------------------------------


def change_storage_class(
    uri: str,
    storage_class: str,
    *,
    multipart_threshold: int = COPY_OBJECT_LIMIT,
    part_size: int = 512 * 1024**2,
) -> ObjectInfo:
    """Copy the object onto itself in ``storage_class``, verified; the object as it is after.

    Nothing to do (the object returned as it is) when it is in that class already. StorageError
    when it does not exist, is archived and not restored, changed while being copied, or is
    encrypted with a customer-provided key (which tuneloop never holds)."""
    if storage_class not in STORAGE_CLASSES:
        raise StorageError(
            [
                Problem(
                    "storage_class",
                    f"{storage_class!r} is not an S3 storage class",
                    source=uri,
                    allowed=", ".join(sorted(STORAGE_CLASSES)),
                )
            ]
        )
    response = _head_response(uri)
    if response is None:
        raise StorageError([Problem("", "does not exist", source=uri)])
    source = _info(uri, response)
    if source.storage_class == storage_class:
        return source
    if restore_state(source) in ("not_requested", "in_progress"):
        raise StorageError(
            [
                Problem(
                    "",
                    f"is in {source.storage_class} and not restored: S3 cannot copy it",
                    source=uri,
                    fix="restore it first (tuneloop lifecycle restore)",
                )
            ]
        )
    if response.get("SSECustomerAlgorithm"):
        raise StorageError(
            [
                Problem(
                    "",
                    "is encrypted with a customer-provided key, which tuneloop does not hold: "
                    "it cannot be copied",
                    source=uri,
                    fix="change its storage class with the key's owner, or with a bucket "
                    "lifecycle rule (archive_mode: tags)",
                )
            ]
        )
    if source.bytes <= min(multipart_threshold, COPY_OBJECT_LIMIT):
        _copy_whole(source, response, storage_class)
    else:
        _copy_multipart(source, response, storage_class, part_size)
    after_response = _head_response(uri)
    if after_response is None:
        raise ArchiveVerificationError(uri, "the object is gone after the copy")
    after = _info(uri, after_response)
    _verify_copy(source, response, after, after_response, storage_class)
    return after


def _encryption(response: dict[str, Any]) -> dict[str, Any]:
    """The source's KMS encryption, to be asked again of the copy (else S3 would encrypt the
    copy with the bucket's default key)."""
    if not str(response.get("ServerSideEncryption", "")).startswith("aws:kms"):
        return {}
    settings: dict[str, Any] = {"ServerSideEncryption": response["ServerSideEncryption"]}
    if response.get("SSEKMSKeyId"):
        settings["SSEKMSKeyId"] = response["SSEKMSKeyId"]
    if response.get("BucketKeyEnabled") is not None:
        settings["BucketKeyEnabled"] = response["BucketKeyEnabled"]
    return settings


def _md5_etags(response: dict[str, Any]) -> bool:
    """S3's ETags are MD5 digests (of the object, or of its parts' digests) unless the object is
    encrypted with KMS or a customer key."""
    return not str(response.get("ServerSideEncryption", "")).startswith("aws:kms") and not (
        response.get("SSECustomerAlgorithm")
    )


def _parts_of(etag: str) -> int | None:
    """The number of parts of a multipart upload's ETag (``"...-3"``); None for a single PUT."""
    match = re.fullmatch(r'"?[0-9a-fA-F]{32}-(\d+)"?', etag)
    return int(match.group(1)) if match else None


def _algorithm(source: ObjectInfo) -> str:
    """The checksum a copy asks S3 for: the source's, so the two compare; else SHA256."""
    return source.checksum[0] if source.checksum else _DEFAULT_ALGORITHM


def _copy_whole(source: ObjectInfo, response: dict[str, Any], storage_class: str) -> None:
    """One CopyObject, server side. It cannot be checked before it replaces the object: S3
    copies within itself with its own integrity checks, and `_verify_copy` compares after."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3(source.uri)
    try:
        s3_client().copy_object(
            Bucket=bucket,
            Key=key,
            CopySource={"Bucket": bucket, "Key": key},
            # Refused (412) when the object changed since the HEAD: what we verify against.
            CopySourceIfMatch=source.etag,
            StorageClass=storage_class,
            MetadataDirective="COPY",
            TaggingDirective="COPY",
            ChecksumAlgorithm=_algorithm(source),
            **_encryption(response),
        )
    except (ClientError, BotoCoreError) as exc:
        raise _copy_error(source.uri, exc) from None


def _copy_error(uri: str, exc: Exception) -> StorageError:
    if error_code(exc) in _CHANGED:
        return StorageError(
            [
                Problem(
                    "",
                    "changed while it was being copied; nothing was replaced",
                    source=uri,
                    fix="run the lifecycle again",
                )
            ]
        )
    return _error(uri, "copy", exc)


@dataclass(frozen=True)
class _Part:
    number: int
    first: int
    last: int
    """Inclusive byte offsets, as CopySourceRange writes them."""
    checksum: str | None = None
    """The source part's checksum (a composite source's HEAD with PartNumber), when S3 gives it."""


def _copy_multipart(
    source: ObjectInfo, response: dict[str, Any], storage_class: str, part_size: int
) -> None:
    """Copy in parts, checked before the copy replaces the original.

    - A source that was itself a multipart upload is copied part for part (its own part
      boundaries, from HEAD with PartNumber). Before completing, the composite ETag computed
      from the copied parts' ETags (MD5 of their MD5s) must equal the source's ETag, and each
      part's checksum must equal the source part's where S3 reports both.
    - A source from a single PUT is split into ``part_size`` parts, and each source range is
      read back and hashed here: its MD5 must equal the copied part's ETag, and its checksum the
      part's checksum where S3 reports one. (A single PUT has no per-range value in S3 to
      compare with; it is at most 5 GB, so reading it is bounded.)
    - A source with a whole-object CRC checksum is copied with ChecksumType FULL_OBJECT and its
      checksum given to CompleteMultipartUpload, which S3 refuses when the parts do not add up
      to it.
    - When none of these applies (a KMS-encrypted source with no checksum), nothing can be
      compared, and the upload is aborted: the original stays as it was.

    Tags are read from the source and given to CreateMultipartUpload, so the object never
    exists without them; completion is conditional on the source's ETag (IfMatch).
    """
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3(source.uri)
    client = s3_client()
    algorithm = _algorithm(source)
    full_object = (
        source.checksum is not None
        and not _composite(response)
        and algorithm in _FULL_OBJECT_ALGORITHMS
    )
    reused = _parts_of(source.etag) is not None
    try:
        parts = (
            _source_parts(source, composite=_composite(response))
            if reused
            else _split(source.bytes, part_size)
        )
        tags = client.get_object_tagging(Bucket=bucket, Key=key).get("TagSet", [])
        created = client.create_multipart_upload(
            Bucket=bucket,
            Key=key,
            StorageClass=storage_class,
            ChecksumAlgorithm=algorithm,
            **({"ChecksumType": "FULL_OBJECT"} if full_object else {}),
            **_content_settings(response),
            **_encryption(response),
            **({"Tagging": urlencode([(t["Key"], t["Value"]) for t in tags])} if tags else {}),
        )
    except (ClientError, BotoCoreError) as exc:
        raise _copy_error(source.uri, exc) from None
    upload_id = created["UploadId"]
    try:
        copied = [_copy_part(source, upload_id, part) for part in parts]
        compared = _check_parts(source, response, parts, copied, algorithm, reused=reused)
        if not compared and not full_object:
            raise ArchiveVerificationError(
                source.uri,
                "S3 gives no ETag or checksum to compare the copied parts with (a "
                "KMS-encrypted object without a checksum); the original was left as it was",
            )
        completion: dict[str, Any] = {}
        if full_object and source.checksum is not None:
            completion = {
                f"Checksum{algorithm}": source.checksum[1],
                "ChecksumType": "FULL_OBJECT",
            }
        client.complete_multipart_upload(
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={
                "Parts": [_completed(p, r, algorithm) for p, r in zip(parts, copied, strict=True)]
            },
            IfMatch=source.etag,
            MpuObjectSize=source.bytes,
            **completion,
        )
    except BaseException as exc:
        _abort(bucket, key, upload_id)
        if isinstance(exc, ClientError | BotoCoreError):
            raise _copy_error(source.uri, exc) from None
        raise


def _abort(bucket: str, key: str, upload_id: str) -> None:
    """Abort an unfinished copy (its parts are billed until aborted); a failure to abort is not
    the caller's error, which is already on its way."""
    from botocore.exceptions import BotoCoreError, ClientError

    with contextlib.suppress(ClientError, BotoCoreError):
        s3_client().abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)


def _content_settings(response: dict[str, Any]) -> dict[str, Any]:
    """The source's metadata and content headers, which a multipart upload does not copy."""
    names = (
        "ContentType",
        "ContentEncoding",
        "ContentDisposition",
        "ContentLanguage",
        "CacheControl",
        "Expires",
        "WebsiteRedirectLocation",
    )
    settings = {name: response[name] for name in names if response.get(name)}
    settings["Metadata"] = dict(response.get("Metadata") or {})
    return settings


def _source_parts(source: ObjectInfo, *, composite: bool) -> list[_Part]:
    """The source's own part boundaries (and part checksums where S3 gives them)."""
    count = _parts_of(source.etag) or 1
    parts: list[_Part] = []
    offset = 0
    for number in range(1, count + 1):
        response = _head_response(source.uri, part_number=number)
        if response is None:
            raise StorageError(
                [Problem("", "disappeared while it was being copied", source=source.uri)]
            )
        size = int(response.get("ContentLength", 0))
        part_checksum = _checksum(response)
        value = part_checksum[1] if part_checksum and composite else None
        parts.append(_Part(number, offset, offset + size - 1, value))
        offset += size
    if offset != source.bytes:
        raise ArchiveVerificationError(
            source.uri, f"its parts add up to {offset} bytes, not its {source.bytes}"
        )
    return parts


def _split(size: int, part_size: int) -> list[_Part]:
    """Byte ranges of ``part_size`` (at least S3's 5 MiB, more when 10,000 parts would not do)."""
    size_of_part = max(part_size, MIN_PART_BYTES, -(-size // MAX_PARTS))
    return [
        _Part(number, first, min(first + size_of_part, size) - 1)
        for number, first in enumerate(range(0, size, size_of_part), start=1)
    ]


def _copy_part(source: ObjectInfo, upload_id: str, part: _Part) -> dict[str, Any]:
    bucket, key = split_s3(source.uri)
    result: dict[str, Any] = s3_client().upload_part_copy(
        Bucket=bucket,
        Key=key,
        UploadId=upload_id,
        PartNumber=part.number,
        CopySource={"Bucket": bucket, "Key": key},
        CopySourceRange=f"bytes={part.first}-{part.last}",
        CopySourceIfMatch=source.etag,
    )["CopyPartResult"]
    return result


def _completed(part: _Part, result: dict[str, Any], algorithm: str) -> dict[str, Any]:
    entry = {"PartNumber": part.number, "ETag": result["ETag"]}
    if result.get(f"Checksum{algorithm}"):
        entry[f"Checksum{algorithm}"] = result[f"Checksum{algorithm}"]
    return entry


def _check_parts(
    source: ObjectInfo,
    response: dict[str, Any],
    parts: list[_Part],
    copied: list[dict[str, Any]],
    algorithm: str,
    *,
    reused: bool,
) -> bool:
    """Compare the copied parts with the source before completing (see `_copy_multipart`):
    ArchiveVerificationError on a mismatch; whether anything was compared at all."""
    compared = False
    for part, result in zip(parts, copied, strict=True):
        copied_checksum = result.get(f"Checksum{algorithm}")
        if part.checksum and copied_checksum:
            _require(source.uri, part.checksum == copied_checksum, f"part {part.number}'s checksum")
            compared = True
    md5_etags = _md5_etags(response)
    if reused and md5_etags:
        expected = composite_etag([result["ETag"] for result in copied])
        _require(source.uri, expected == source.etag.strip('"'), "the composite ETag of the parts")
        compared = True
    elif not reused:
        for part, result in zip(parts, copied, strict=True):
            compared |= _check_range(source, part, result, algorithm, md5_etags)
    return compared


def _check_range(
    source: ObjectInfo, part: _Part, result: dict[str, Any], algorithm: str, md5_etags: bool
) -> bool:
    """Read the source's bytes of one part, hash them here and compare with what S3 reports for
    the copied part."""
    digests = _range_digests(source.uri, part, algorithm)
    compared = False
    if md5_etags:
        _require(
            source.uri, digests["MD5"] == result["ETag"].strip('"'), f"part {part.number}'s MD5"
        )
        compared = True
    copied_checksum = result.get(f"Checksum{algorithm}")
    if copied_checksum and algorithm in digests:
        _require(
            source.uri, digests[algorithm] == copied_checksum, f"part {part.number}'s checksum"
        )
        compared = True
    return compared


def _range_digests(uri: str, part: _Part, algorithm: str) -> dict[str, str]:
    """MD5 (hex) and, where computable here, ``algorithm`` (base64) of the source's range."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3(uri)
    md5 = hashlib.md5(usedforsecurity=False)
    other = _LOCAL_ALGORITHMS[algorithm]() if algorithm in _LOCAL_ALGORITHMS else None
    crc = 0
    try:
        body = s3_client().get_object(
            Bucket=bucket, Key=key, Range=f"bytes={part.first}-{part.last}"
        )["Body"]
        for chunk in iter(lambda: body.read(8 * 1024 * 1024), b""):
            md5.update(chunk)
            if other is not None:
                other.update(chunk)
            if algorithm == "CRC32":
                crc = zlib.crc32(chunk, crc)
    except (ClientError, BotoCoreError) as exc:
        raise _error(uri, "read", exc) from None
    digests = {"MD5": md5.hexdigest()}
    if other is not None:
        digests[algorithm] = base64.b64encode(other.digest()).decode()
    if algorithm == "CRC32":
        digests["CRC32"] = base64.b64encode(crc.to_bytes(4, "big")).decode()
    return digests


def composite_etag(part_etags: list[str]) -> str:
    """The ETag S3 gives a multipart upload of these parts: the MD5 of their MD5s, ``-<count>``
    (unquoted)."""
    joined = b"".join(bytes.fromhex(etag.strip('"')) for etag in part_etags)
    return f"{hashlib.md5(joined, usedforsecurity=False).hexdigest()}-{len(part_etags)}"


def _require(uri: str, holds: bool, what: str) -> None:
    if not holds:
        raise ArchiveVerificationError(uri, f"{what} differs from the source's")


def _verify_copy(
    source: ObjectInfo,
    source_response: dict[str, Any],
    after: ObjectInfo,
    after_response: dict[str, Any],
    storage_class: str,
) -> None:
    """After the copy: the size and storage class always; the checksum where both are of one
    algorithm and both whole-object values (or composites of the same number of parts); the
    ETag where both are MD5-based and of the same layout (a single PUT copied whole, or a
    multipart upload copied part for part)."""
    uri = source.uri
    _require(uri, after.bytes == source.bytes, f"the size ({after.bytes} bytes)")
    if after.storage_class != storage_class:
        raise ArchiveVerificationError(
            uri, f"it is in {after.storage_class} after the copy, not {storage_class}"
        )
    same_layout = _parts_of(source.etag) == _parts_of(after.etag)
    if source.checksum and after.checksum and source.checksum[0] == after.checksum[0]:
        source_composite = _composite(source_response)
        if source_composite == _composite(after_response) and (same_layout or not source_composite):
            _require(
                uri, source.checksum[1] == after.checksum[1], f"the {source.checksum[0]} checksum"
            )
    if same_layout and _md5_etags(source_response) and _md5_etags(after_response):
        _require(uri, source.etag == after.etag, "the ETag")


# --- tags ------------------------------------------------------------------------------------


def tag_for_archive(uri: str, storage_class: str) -> None:
    """Set the object's `ARCHIVE_TAG` to ``storage_class``, keeping its other tags, so that
    our bucket lifecycle rule (`archive_rule`) moves it. Nothing is written when the tag is
    already there. S3 allows 10 tags an object: StorageError when the object has 10 others.

    The read and the write are two calls: a tag another writer sets between them is lost.
    Nothing else writes tags to a round's outputs while the lifecycle runs."""
    from botocore.exceptions import BotoCoreError, ClientError

    _check_archive_class(storage_class, "storage_class")
    bucket, key = split_s3(uri)
    client = s3_client()
    try:
        tags = client.get_object_tagging(Bucket=bucket, Key=key).get("TagSet", [])
    except (ClientError, BotoCoreError) as exc:
        raise _error(uri, "read the tags of", exc) from None
    others = [t for t in tags if t["Key"] != ARCHIVE_TAG]
    if len(others) < len(tags) and {"Key": ARCHIVE_TAG, "Value": storage_class} in tags:
        return
    if len(others) >= 10:
        raise StorageError(
            [
                Problem(
                    "",
                    "has 10 tags already, S3's limit: the archive tag cannot be added",
                    source=uri,
                    fix="remove one of its tags, or use archive_mode: copy",
                )
            ]
        )
    try:
        client.put_object_tagging(
            Bucket=bucket,
            Key=key,
            Tagging={"TagSet": [*others, {"Key": ARCHIVE_TAG, "Value": storage_class}]},
        )
    except (ClientError, BotoCoreError) as exc:
        raise _error(uri, "tag", exc) from None


def _check_archive_class(storage_class: str, field: str) -> None:
    if storage_class not in ARCHIVE_CLASSES:
        raise StorageError(
            [
                Problem(
                    field,
                    f"{storage_class!r} is not an archive storage class",
                    allowed=", ".join(ARCHIVE_CLASSES),
                )
            ]
        )


# --- restore ---------------------------------------------------------------------------------

_ONGOING = re.compile(r'ongoing-request\s*=\s*"(true|false)"')


def restore_state(info: ObjectInfo) -> RestoreState:
    """Where the object stands: not in a class that needs a restore (STANDARD, GLACIER_IR and
    the rest); archived with no restore asked; a restore under way; or a restored copy
    readable until its expiry date."""
    if info.storage_class not in NEEDS_RESTORE:
        return "not_archived"
    match = _ONGOING.search(info.restore or "")
    if match is None:
        return "not_requested"
    return "in_progress" if match.group(1) == "true" else "restored"


def request_restore(uri: str, *, days: int, tier: str) -> RestoreState:
    """Ask S3 for a temporary readable copy of an archived object for ``days`` days, from the
    ``tier`` (Expedited, Standard or Bulk); the state after asking.

    Nothing is asked when none is needed (GLACIER_IR and other classes: ``not_archived``) or one
    is under way or done already. Expedited is refused for DEEP_ARCHIVE (S3 offers it only for
    GLACIER), before anything is sent."""
    from botocore.exceptions import BotoCoreError, ClientError

    if tier not in RESTORE_TIERS:
        raise StorageError(
            [
                Problem(
                    "restore_tier",
                    f"{tier!r} is not a restore tier",
                    source=uri,
                    allowed=", ".join(RESTORE_TIERS),
                )
            ]
        )
    if not 1 <= days <= 365:
        raise StorageError(
            [Problem("restore_days", f"{days} is out of range", source=uri, allowed="1 to 365")]
        )
    info = head(uri)
    if info is None:
        raise StorageError([Problem("", "does not exist: there is nothing to restore", source=uri)])
    state = restore_state(info)
    if state != "not_requested":
        return state
    if tier == "Expedited" and info.storage_class == "DEEP_ARCHIVE":
        raise StorageError(
            [
                Problem(
                    "restore_tier",
                    "Expedited retrieval is not offered for DEEP_ARCHIVE",
                    source=uri,
                    allowed="Standard, Bulk",
                    fix="set retention.restore_tier to Standard (about 12 hours) or Bulk",
                )
            ]
        )
    bucket, key = split_s3(uri)
    try:
        s3_client().restore_object(
            Bucket=bucket,
            Key=key,
            RestoreRequest={"Days": days, "GlacierJobParameters": {"Tier": tier}},
        )
    except ClientError as exc:
        if error_code(exc) == "RestoreAlreadyInProgress":
            return "in_progress"
        raise _error(uri, "restore", exc) from None
    except BotoCoreError as exc:
        raise _error(uri, "restore", exc) from None
    after = head(uri)
    return restore_state(after) if after is not None else "in_progress"


# --- delete ----------------------------------------------------------------------------------


def delete_object(uri: str) -> None:
    """Delete the object; one that is not there is fine (S3 says so too)."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3(uri)
    try:
        s3_client().delete_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if error_code(exc) in _MISSING:
            return
        raise _error(uri, "delete", exc) from None
    except BotoCoreError as exc:
        raise _error(uri, "delete", exc) from None


# --- the bucket lifecycle rule ---------------------------------------------------------------


def archive_rule_id(prefix: str, storage_class: str) -> str:
    """Our rule's ID: the same prefix and class always give the same ID, so writing the rule
    again replaces it instead of adding a second."""
    digest = hashlib.sha256(f"{prefix}\0{storage_class}".encode()).hexdigest()[:8]
    return f"{ARCHIVE_RULE_PREFIX}{digest}"


def archive_rule(prefix: str, storage_class: str) -> dict[str, Any]:
    """The lifecycle rule that moves objects under ``prefix`` tagged `ARCHIVE_TAG` =
    ``storage_class`` to that class at once (Days 0: at S3's next daily run).

    Size: since September 2024 S3 does not transition objects under 128 KB unless a rule says
    otherwise (ObjectSizeGreaterThan, or the bucket's TransitionDefaultMinimumObjectSize). We
    leave that default: an archived object is billed 32-40 KB of overhead on top, so a small one
    costs more archived than not, and the plan leaves objects under ``min_archive_bytes``
    (128 KB by default) alone anyway. A small object tagged by hand stays where it is."""
    _check_archive_class(storage_class, "storage_class")
    tag = {"Key": ARCHIVE_TAG, "Value": storage_class}
    rule_filter: dict[str, Any] = (
        {"And": {"Prefix": prefix, "Tags": [tag]}} if prefix else {"Tag": tag}
    )
    return {
        "ID": archive_rule_id(prefix, storage_class),
        "Status": "Enabled",
        "Filter": rule_filter,
        "Transitions": [{"Days": 0, "StorageClass": storage_class}],
    }


def merge_rules(existing: list[dict[str, Any]], rule: dict[str, Any]) -> list[dict[str, Any]]:
    """``existing`` with ``rule`` in place of the rule of the same ID (appended when there is
    none); every other rule as it was, in its order. Pure: neither argument is changed."""
    merged = [rule if other.get("ID") == rule["ID"] else other for other in existing]
    if not any(other.get("ID") == rule["ID"] for other in existing):
        merged.append(rule)
    return merged


def apply_policy(bucket: str, prefix: str, storage_class: str) -> list[dict[str, Any]]:
    """Write our archive rule for ``prefix`` into the bucket's lifecycle configuration, keeping
    every other rule (and the bucket's minimum transition size); the rules written.

    S3 replaces a lifecycle configuration whole and offers no conditional write for it: a rule
    someone else adds between our read and our write is lost. Run it when nobody else edits the
    bucket's lifecycle."""
    from botocore.exceptions import BotoCoreError, ClientError

    uri = f"s3://{bucket}"
    client = s3_client()
    try:
        current = client.get_bucket_lifecycle_configuration(Bucket=bucket)
    except ClientError as exc:
        if error_code(exc) != "NoSuchLifecycleConfiguration":
            raise _error(uri, "read the lifecycle configuration of", exc) from None
        current = {}
    except BotoCoreError as exc:
        raise _error(uri, "read the lifecycle configuration of", exc) from None
    rules = merge_rules(list(current.get("Rules", [])), archive_rule(prefix, storage_class))
    extra = {}
    if current.get("TransitionDefaultMinimumObjectSize"):
        extra["TransitionDefaultMinimumObjectSize"] = current["TransitionDefaultMinimumObjectSize"]
    try:
        client.put_bucket_lifecycle_configuration(
            Bucket=bucket, LifecycleConfiguration={"Rules": rules}, **extra
        )
    except (ClientError, BotoCoreError) as exc:
        raise _error(uri, "write the lifecycle configuration of", exc) from None
    return rules
