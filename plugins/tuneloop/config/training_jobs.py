"""What SageMaker's ``CreateTrainingJob`` accepts for the optional settings of a campaign's
``smtj`` backend: a KMS key, a VPC, tags. One set of rules for two places: the campaign file,
where a bad value is reported with its file and line, and the job backend, which checks any
request it builds before the call is made.

The limits are those of ``CreateTrainingJob``'s input shape in botocore's SageMaker service
model (``KmsKeyId``, ``VpcConfig.Subnets``/``SecurityGroupIds``, ``TagList``, ``TagKey``,
``TagValue``)."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection, Mapping, Sequence

MAX_TAGS = 50
MAX_TAG_KEY = 128
MAX_TAG_VALUE = 256
MAX_SUBNETS = 16
MAX_SECURITY_GROUPS = 5

JOB_LABELS = ("campaign", "round", "stage")
"""The tags every job carries (`rounds.specs`): the backend finds its jobs again by them."""
MANAGED_BY_TAG = "tuneloop:managed-by"
MAX_OWN_TAGS = MAX_TAGS - len(JOB_LABELS) - 1
"""Tags a campaign may add: the service's 50 less the job's labels and the managed-by tag."""

_VPC_ID = re.compile(r"[-0-9a-zA-Z]{1,32}\Z")
_KMS_KEY = re.compile(r"[a-zA-Z0-9:/_-]{1,2048}\Z")
_TAG_PUNCTUATION = frozenset("_.:/=+-@")


def kms_key_problem(key: str) -> tuple[str, str]:
    """(problem, fix) for a KMS key id, ARN or alias; ("", "") when the service takes it."""
    if _KMS_KEY.match(key):
        return "", ""
    return (
        f"kms_key_id {key[:80]!r} is not a KMS key id, ARN or alias",
        "use a key id (1234abcd-...), a key ARN (arn:aws:kms:...:key/...) or an alias "
        "(alias/my-key): letters, digits and ':/_-'",
    )


def vpc_problem(subnets: Sequence[str], security_group_ids: Sequence[str]) -> tuple[str, str]:
    """(problem, fix) for a job's VPC; ("", "") when it is valid or there is none. The service
    needs both subnets and security groups, or neither."""
    if not subnets and not security_group_ids:
        return "", ""
    if not subnets or not security_group_ids:
        return (
            "a VPC needs both subnets and security_group_ids; one of them is empty",
            "set both (the jobs then run in your VPC), or neither",
        )
    for field, values, most in (
        ("subnets", subnets, MAX_SUBNETS),
        ("security_group_ids", security_group_ids, MAX_SECURITY_GROUPS),
    ):
        if len(values) > most:
            return f"{len(values)} {field} given", f"set at most {most} {field}"
        bad = [value for value in values if not _VPC_ID.match(value)]
        if bad:
            return (
                f"{field} value {bad[0][:40]!r} is not a subnet or security group id",
                "use ids such as subnet-0abc123 and sg-0abc123 (letters, digits and '-', at "
                "most 32 characters)",
            )
    return "", ""


def _tag_text_ok(text: str) -> bool:
    """Tag keys and values allow letters, digits, spaces and ``_.:/=+-@`` (the service model's
    ``[\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]*``)."""
    return all(unicodedata.category(char)[0] in "LZN" or char in _TAG_PUNCTUATION for char in text)


def tags_problem(
    tags: Mapping[str, str], reserved: Collection[str] = (*JOB_LABELS, MANAGED_BY_TAG)
) -> tuple[str, str]:
    """(problem, fix) for a campaign's own tags; ("", "") when every job can carry them beside
    its labels (``reserved``)."""
    for key, value in tags.items():
        problem = ""
        if not 1 <= len(key) <= MAX_TAG_KEY or len(value) > MAX_TAG_VALUE:
            problem = f"keys are 1-{MAX_TAG_KEY} characters, values at most {MAX_TAG_VALUE}"
        elif not _tag_text_ok(key) or not _tag_text_ok(value):
            problem = "keys and values allow letters, digits, spaces and _.:/=+-@"
        elif key.lower().startswith("aws:"):
            problem = "the aws: prefix is reserved for AWS"
        elif key in reserved:
            problem = "tuneloop sets this key itself to find its jobs again"
        if problem:
            return f"tag {key[:60]!r} is not allowed: {problem}", "change or remove the tag"
    most = MAX_TAGS - len(reserved)
    if len(tags) > most:
        return f"{len(tags)} tags given", f"set at most {most} tags of your own"
    return "", ""
