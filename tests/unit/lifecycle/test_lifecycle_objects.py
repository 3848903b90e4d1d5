"""S3 objects for the lifecycle, against a moto server: listings, HEAD, storage-class changes
by copy in place (whole and multipart, verified, tags and metadata kept), archive tags,
restores and their state, deletes, the bucket lifecycle rule, and AccessDenied from a bucket
policy or IAM."""

from __future__ import annotations

import os
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fakes.s3_access import denied_objects, deny, iam_enforcing_s3
from lifecycle_ledgers import EXPIRE_LOGS, with_rules
from tuneloop.errors import StorageError
from tuneloop.lifecycle import objects
from tuneloop.lifecycle.objects import (
    ARCHIVE_TAG,
    AccessDeniedError,
    ArchiveVerificationError,
    ObjectInfo,
)
from tuneloop.storage import s3_client

MiB = 1024 * 1024


@pytest.fixture
def bucket(s3_server: str) -> str:
    name = f"lifecycle-{uuid.uuid4().hex[:12]}"
    s3_client().create_bucket(Bucket=name)
    return name


def put(bucket: str, key: str, body: bytes = b"x" * 1000, **extra: Any) -> str:
    s3_client().put_object(Bucket=bucket, Key=key, Body=body, **extra)
    return f"s3://{bucket}/{key}"


def put_in_parts(bucket: str, key: str, body: bytes, part: int = 5 * MiB, **extra: Any) -> str:
    """Upload ``body`` as a multipart upload of ``part``-byte parts."""
    client = s3_client()
    upload = client.create_multipart_upload(Bucket=bucket, Key=key, **extra)["UploadId"]
    parts = []
    for number, first in enumerate(range(0, len(body), part), start=1):
        result = client.upload_part(
            Bucket=bucket,
            Key=key,
            UploadId=upload,
            PartNumber=number,
            Body=body[first : first + part],
        )
        parts.append({"PartNumber": number, "ETag": result["ETag"]})
    client.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts}
    )
    return f"s3://{bucket}/{key}"


def restored_body(bucket: str, key: str) -> bytes:
    """The object's bytes, restoring it first (moto restores at once)."""
    client = s3_client()
    client.restore_object(Bucket=bucket, Key=key, RestoreRequest={"Days": 1})
    return bytes(client.get_object(Bucket=bucket, Key=key)["Body"].read())


def tags_of(bucket: str, key: str) -> dict[str, str]:
    tag_set = s3_client().get_object_tagging(Bucket=bucket, Key=key)["TagSet"]
    return {t["Key"]: t["Value"] for t in tag_set}


def info(storage_class: str, restore: str | None = None) -> ObjectInfo:
    return ObjectInfo("s3://b-1/k", 10, storage_class, '"e"', None, restore)


# --- listing and HEAD ------------------------------------------------------------------------


def test_list_objects_is_recursive_under_the_folder_only(bucket: str) -> None:
    put(bucket, "run/a.bin", b"12345")
    put(bucket, "run/deep/b.bin", b"1")
    put(bucket, "runner/c.bin", b"1")  # shares the prefix "run", not the folder
    listed = objects.list_objects(f"s3://{bucket}/run")

    assert [(o.uri, o.bytes, o.storage_class) for o in listed] == [
        (f"s3://{bucket}/run/a.bin", 5, "STANDARD"),
        (f"s3://{bucket}/run/deep/b.bin", 1, "STANDARD"),
    ]
    assert objects.list_objects(f"s3://{bucket}/nothing/") == []


def test_head_gives_size_class_etag_and_checksum_or_none(bucket: str) -> None:
    uri = put(bucket, "a", b"abc", ChecksumAlgorithm="SHA256")
    found = objects.head(uri)

    assert found is not None
    assert (found.bytes, found.storage_class, found.restore) == (3, "STANDARD", None)
    assert found.checksum is not None and found.checksum[0] == "SHA256"
    assert found.etag.strip('"')
    assert objects.head(f"s3://{bucket}/missing") is None


# --- storage class by copy -------------------------------------------------------------------


def test_copy_in_place_keeps_tags_metadata_and_content_and_compares_checksums(
    bucket: str,
) -> None:
    body = os.urandom(4000)
    uri = put(
        bucket,
        "out/model.bin",
        body,
        Tagging="team=ml&keep=yes",
        Metadata={"round": "3"},
        ContentType="application/x-tar",
        ChecksumAlgorithm="CRC32",
    )
    before = objects.head(uri)
    after = objects.change_storage_class(uri, "GLACIER")

    assert before is not None
    assert after.storage_class == "GLACIER"
    assert (after.bytes, after.etag, after.checksum) == (
        before.bytes,
        before.etag,
        before.checksum,
    )
    raw = s3_client().head_object(Bucket=bucket, Key="out/model.bin")
    assert raw["Metadata"] == {"round": "3"}
    assert raw["ContentType"] == "application/x-tar"
    assert restored_body(bucket, "out/model.bin") == body
    assert tags_of(bucket, "out/model.bin") == {"team": "ml", "keep": "yes"}


def test_a_second_change_to_the_same_class_does_nothing(bucket: str) -> None:
    uri = put(bucket, "a")
    first = objects.change_storage_class(uri, "GLACIER_IR")
    modified = s3_client().head_object(Bucket=bucket, Key="a")["LastModified"]
    second = objects.change_storage_class(uri, "GLACIER_IR")

    assert second == first
    assert s3_client().head_object(Bucket=bucket, Key="a")["LastModified"] == modified


def test_a_multipart_source_is_copied_part_for_part_with_the_same_etag(bucket: str) -> None:
    body = os.urandom(11 * MiB)
    uri = put_in_parts(bucket, "ck/weights", body, Metadata={"stage": "sft"}, Tagging="team=ml")
    before = objects.head(uri)
    after = objects.change_storage_class(
        uri, "DEEP_ARCHIVE", multipart_threshold=MiB, part_size=5 * MiB
    )

    assert before is not None and before.etag.endswith('-3"')
    assert after.storage_class == "DEEP_ARCHIVE"
    assert (after.bytes, after.etag) == (before.bytes, before.etag)
    assert s3_client().head_object(Bucket=bucket, Key="ck/weights")["Metadata"] == {"stage": "sft"}
    assert restored_body(bucket, "ck/weights") == body
    assert tags_of(bucket, "ck/weights") == {"team": "ml"}
    assert s3_client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_a_single_put_source_is_split_and_each_part_checked(bucket: str) -> None:
    body = os.urandom(11 * MiB)
    uri = put(bucket, "out/output.tar.gz", body, ChecksumAlgorithm="CRC32", Tagging="a=1")
    before = objects.head(uri)
    after = objects.change_storage_class(uri, "GLACIER", multipart_threshold=MiB, part_size=5 * MiB)

    assert before is not None
    assert after.storage_class == "GLACIER"
    assert after.etag.endswith('-3"')  # three parts of at most 5 MiB
    assert after.checksum == before.checksum  # a whole-object CRC32 both times
    assert restored_body(bucket, "out/output.tar.gz") == body
    assert tags_of(bucket, "out/output.tar.gz") == {"a": "1"}


def test_an_archived_object_must_be_restored_before_it_moves_again(bucket: str) -> None:
    uri = put(bucket, "a")
    objects.change_storage_class(uri, "GLACIER")

    with pytest.raises(StorageError, match="restore it first"):
        objects.change_storage_class(uri, "DEEP_ARCHIVE")


def test_a_missing_object_or_unknown_class_is_refused(bucket: str) -> None:
    with pytest.raises(StorageError, match="does not exist"):
        objects.change_storage_class(f"s3://{bucket}/missing", "GLACIER")
    with pytest.raises(StorageError, match="not an S3 storage class"):
        objects.change_storage_class(put(bucket, "a"), "COLD")


def test_composite_etag_is_what_s3_gives_a_multipart_upload(bucket: str) -> None:
    client = s3_client()
    uri = put_in_parts(bucket, "m", os.urandom(11 * MiB))
    part_etags = [
        client.head_object(Bucket=bucket, Key="m", PartNumber=n)["ETag"] for n in (1, 2, 3)
    ]
    whole = objects.head(uri)

    assert whole is not None
    assert objects.composite_etag(part_etags) == whole.etag.strip('"')


def _response(etag: str, **extra: Any) -> dict[str, Any]:
    return {"ETag": etag, **extra}


def _info(
    nbytes: int = 10, storage_class: str = "GLACIER", etag: str = '"aa"', sha256: str = "v"
) -> ObjectInfo:
    """HEAD of ``s3://b-1/k``: by default the copy that matches `_info`'s STANDARD source."""
    return ObjectInfo("s3://b-1/k", nbytes, storage_class, etag, ("SHA256", sha256), None)


@pytest.mark.parametrize(
    ("after", "after_response", "what"),
    [
        (_info(nbytes=9), _response('"aa"'), "the size"),
        (_info(sha256="other"), _response('"aa"'), "SHA256 checksum"),
        (_info(etag='"bb"'), _response('"bb"'), "the ETag"),
        (_info(storage_class="STANDARD"), _response('"aa"'), "in STANDARD after the copy"),
    ],
)
def test_a_copy_that_differs_from_its_source_is_not_verified(
    after: ObjectInfo, after_response: dict[str, Any], what: str
) -> None:
    source = _info(storage_class="STANDARD")
    with pytest.raises(ArchiveVerificationError) as caught:
        objects._verify_copy(source, _response('"aa"'), after, after_response, "GLACIER")

    message = str(caught.value)
    assert what in message and "s3://b-1/k" in message and "\n" not in message


def test_kms_etags_are_not_compared() -> None:
    source = ObjectInfo("s3://b-1/k", 10, "STANDARD", '"aa"', None, None)
    after = ObjectInfo("s3://b-1/k", 10, "GLACIER", '"bb"', None, None)
    kms = {"ServerSideEncryption": "aws:kms"}
    objects._verify_copy(
        source, _response('"aa"', **kms), after, _response('"bb"', **kms), "GLACIER"
    )


# --- tags ------------------------------------------------------------------------------------


def test_tag_for_archive_keeps_other_tags_and_is_idempotent(bucket: str) -> None:
    uri = put(bucket, "a", Tagging="team=ml")
    objects.tag_for_archive(uri, "GLACIER")
    objects.tag_for_archive(uri, "GLACIER")
    assert tags_of(bucket, "a") == {"team": "ml", ARCHIVE_TAG: "GLACIER"}

    objects.tag_for_archive(uri, "DEEP_ARCHIVE")
    assert tags_of(bucket, "a") == {"team": "ml", ARCHIVE_TAG: "DEEP_ARCHIVE"}


def test_tag_for_archive_refuses_an_eleventh_tag_and_other_classes(bucket: str) -> None:
    uri = put(bucket, "a", Tagging="&".join(f"t{n}={n}" for n in range(10)))
    with pytest.raises(StorageError, match="10 tags"):
        objects.tag_for_archive(uri, "GLACIER")
    with pytest.raises(StorageError, match="not an archive storage class"):
        objects.tag_for_archive(uri, "STANDARD")


# --- restores --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("storage_class", "restore", "state"),
    [
        ("STANDARD", None, "not_archived"),
        ("GLACIER_IR", None, "not_archived"),
        ("STANDARD_IA", None, "not_archived"),
        ("GLACIER", None, "not_requested"),
        ("DEEP_ARCHIVE", None, "not_requested"),
        ("GLACIER", 'ongoing-request="true"', "in_progress"),
        (
            "DEEP_ARCHIVE",
            'ongoing-request="false", expiry-date="Fri, 23 Dec 2026 00:00:00 GMT"',
            "restored",
        ),
    ],
)
def test_restore_state_reads_the_restore_header(
    storage_class: str, restore: str | None, state: str
) -> None:
    assert objects.restore_state(info(storage_class, restore)) == state


def test_request_restore_restores_an_archived_object_once(bucket: str) -> None:
    uri = put(bucket, "a")
    objects.change_storage_class(uri, "GLACIER")
    assert objects.restore_state(objects.head(uri)) == "not_requested"  # type: ignore[arg-type]

    assert objects.request_restore(uri, days=2, tier="Standard") == "restored"  # moto: at once
    header = objects.head(uri).restore  # type: ignore[union-attr]
    assert header is not None and 'ongoing-request="false"' in header
    assert objects.request_restore(uri, days=2, tier="Bulk") == "restored"


def test_request_restore_never_asks_expedited_of_deep_archive(bucket: str) -> None:
    uri = put(bucket, "a")
    objects.change_storage_class(uri, "DEEP_ARCHIVE")

    with pytest.raises(StorageError, match="Expedited") as caught:
        objects.request_restore(uri, days=1, tier="Expedited")
    assert "restore_tier" in str(caught.value)
    assert objects.head(uri).restore is None  # type: ignore[union-attr]  # nothing was asked


def test_request_restore_needs_nothing_for_glacier_ir_or_standard(bucket: str) -> None:
    instant = put(bucket, "ir")
    objects.change_storage_class(instant, "GLACIER_IR")
    assert objects.request_restore(instant, days=1, tier="Expedited") == "not_archived"
    assert objects.request_restore(put(bucket, "std"), days=1, tier="Standard") == "not_archived"


def test_request_restore_refuses_bad_input(bucket: str) -> None:
    uri = put(bucket, "a")
    with pytest.raises(StorageError, match="not a restore tier"):
        objects.request_restore(uri, days=1, tier="Fast")
    with pytest.raises(StorageError, match="out of range"):
        objects.request_restore(uri, days=0, tier="Standard")
    with pytest.raises(StorageError, match="nothing to restore"):
        objects.request_restore(f"s3://{bucket}/missing", days=1, tier="Standard")


# --- delete ----------------------------------------------------------------------------------


def test_delete_object_deletes_and_a_missing_object_is_fine(bucket: str) -> None:
    uri = put(bucket, "a")
    objects.delete_object(uri)
    objects.delete_object(uri)
    assert objects.head(uri) is None


# --- access denied ---------------------------------------------------------------------------


def test_a_bucket_policy_deny_is_access_denied_naming_uri_and_action(bucket: str) -> None:
    uri = put(bucket, "escrow/ck.bin")
    allowed = put(bucket, "open/a")
    with denied_objects(bucket, "escrow/"):
        calls = {
            "read": lambda: objects.head(uri),
            "read the tags of": lambda: objects.tag_for_archive(uri, "GLACIER"),
            "delete": lambda: objects.delete_object(uri),
        }
        for action, call in calls.items():
            with pytest.raises(AccessDeniedError) as caught:
                call()
            assert (caught.value.uri, caught.value.action) == (uri, action)
            message = str(caught.value)
            assert uri in message and action in message and "\n" not in message
        assert objects.head(allowed) is not None  # only the prefix is denied
    assert objects.head(uri) is not None  # and only while inside


@pytest.mark.parametrize("size", [1000, 11 * MiB])
def test_a_denied_copy_is_access_denied_and_leaves_the_object(bucket: str, size: int) -> None:
    uri = put(bucket, "escrow/ck.bin", os.urandom(size))
    writes = ("s3:PutObject", "s3:PostObject", "s3:PutObjectTagging")
    with denied_objects(bucket, "escrow/", actions=writes), pytest.raises(AccessDeniedError) as e:
        objects.change_storage_class(uri, "GLACIER", multipart_threshold=MiB)
    assert e.value.action == "copy"
    assert objects.head(uri).storage_class == "STANDARD"  # type: ignore[union-attr]


def test_denied_tagging_and_restore_are_access_denied(bucket: str) -> None:
    archived = put(bucket, "escrow/ck.bin")
    objects.change_storage_class(archived, "GLACIER")
    standard = put(bucket, "escrow/out.json")
    writes = ("s3:PutObject", "s3:PutObjectTagging", "s3:PostObject", "s3:RestoreObject")
    with denied_objects(bucket, "escrow/", actions=writes):
        with pytest.raises(AccessDeniedError) as restore:
            objects.request_restore(archived, days=1, tier="Standard")
        with pytest.raises(AccessDeniedError) as tag:
            objects.tag_for_archive(standard, "GLACIER")
    assert (restore.value.action, tag.value.action) == ("restore", "tag")
    objects.tag_for_archive(standard, "GLACIER")  # allowed again once the policy is gone


def test_a_denied_listing_is_access_denied() -> None:
    with iam_enforcing_s3(
        buckets=["customer-escrow-ab", "open-bucket"],
        denied=[deny("s3:ListBucket", "customer-escrow-ab")],
    ) as server:
        server.client.put_object(Bucket="open-bucket", Key="run/a", Body=b"1")
        with pytest.raises(AccessDeniedError) as caught:
            objects.list_objects("s3://customer-escrow-ab/ck/")
        assert caught.value.action == "list"
        assert "s3://customer-escrow-ab/ck/" in str(caught.value)
        assert [o.uri for o in objects.list_objects("s3://open-bucket/run/")] == [
            "s3://open-bucket/run/a"
        ]


# --- the bucket lifecycle rule ---------------------------------------------------------------


def test_archive_rule_filters_on_prefix_and_tag_and_has_a_stable_id() -> None:
    rule = objects.archive_rule("campaigns/demo/", "GLACIER")

    assert rule["ID"] == objects.archive_rule("campaigns/demo/", "GLACIER")["ID"]
    assert rule["ID"].startswith("tuneloop-archive-")
    assert rule["ID"] != objects.archive_rule("campaigns/other/", "GLACIER")["ID"]
    assert rule["ID"] != objects.archive_rule("campaigns/demo/", "DEEP_ARCHIVE")["ID"]
    assert rule["Filter"] == {
        "And": {"Prefix": "campaigns/demo/", "Tags": [{"Key": ARCHIVE_TAG, "Value": "GLACIER"}]}
    }
    assert rule["Transitions"] == [{"Days": 0, "StorageClass": "GLACIER"}]
    assert rule["Status"] == "Enabled"
    assert objects.archive_rule("", "GLACIER_IR")["Filter"] == {
        "Tag": {"Key": ARCHIVE_TAG, "Value": "GLACIER_IR"}
    }


rule_ids = st.text(alphabet="abcdefghij-", min_size=1, max_size=6)


@settings(max_examples=200, deadline=None)
@given(
    ids=st.lists(rule_ids, unique=True, max_size=8),
    ours=st.sampled_from(["GLACIER", "DEEP_ARCHIVE", "GLACIER_IR"]),
    has_ours=st.booleans(),
)
def test_merge_rules_replaces_ours_and_keeps_the_rest(
    ids: list[str], ours: str, has_ours: bool
) -> None:
    rule = objects.archive_rule("p/", ours)
    existing = [{"ID": i, "Status": "Enabled", "Filter": {"Prefix": i}} for i in ids]
    if has_ours:
        existing.insert(len(existing) // 2, {"ID": rule["ID"], "Status": "Disabled"})
    snapshot = [dict(r) for r in existing]

    merged = objects.merge_rules(existing, rule)

    assert existing == snapshot  # pure
    assert [r for r in merged if r["ID"] == rule["ID"]] == [rule]
    assert [r for r in merged if r["ID"] != rule["ID"]] == [
        r for r in existing if r["ID"] != rule["ID"]
    ]
    assert objects.merge_rules(merged, rule) == merged


def test_apply_policy_writes_our_rule_once_and_keeps_other_rules(bucket: str) -> None:
    with_rules(bucket, EXPIRE_LOGS)

    written = objects.apply_policy(bucket, "campaigns/demo/", "GLACIER")
    again = objects.apply_policy(bucket, "campaigns/demo/", "GLACIER")

    stored = s3_client().get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    ours = objects.archive_rule("campaigns/demo/", "GLACIER")["ID"]
    assert [r["ID"] for r in stored] == ["expire-logs", ours]
    assert next(r for r in stored if r["ID"] == "expire-logs") == EXPIRE_LOGS
    assert [r["ID"] for r in written] == [r["ID"] for r in again] == ["expire-logs", ours]


def test_apply_policy_on_a_bucket_without_rules(bucket: str) -> None:
    written = objects.apply_policy(bucket, "", "DEEP_ARCHIVE")
    stored = s3_client().get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]

    assert written == [objects.archive_rule("", "DEEP_ARCHIVE")]
    assert [r["ID"] for r in stored] == [written[0]["ID"]]
    assert stored[0]["Transitions"] == [{"Days": 0, "StorageClass": "DEEP_ARCHIVE"}]


def test_copied_parts_that_do_not_add_up_to_the_source_stop_before_completion() -> None:
    parts = [objects._Part(1, 0, 5 * MiB - 1), objects._Part(2, 5 * MiB, 6 * MiB - 1)]
    copied = [{"ETag": '"' + "1" * 32 + '"'}, {"ETag": '"' + "2" * 32 + '"'}]
    expected = objects.composite_etag([c["ETag"] for c in copied])
    source = ObjectInfo("s3://b-1/k", 6 * MiB, "STANDARD", f'"{expected}"', None, None)
    assert objects._check_parts(source, {}, parts, copied, "SHA256", reused=True)

    other = ObjectInfo("s3://b-1/k", 6 * MiB, "STANDARD", '"' + "3" * 32 + '-2"', None, None)
    with pytest.raises(ArchiveVerificationError, match="composite ETag"):
        objects._check_parts(other, {}, parts, copied, "SHA256", reused=True)
