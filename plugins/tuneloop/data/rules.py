"""Every dataset rule by id: what it checks, how to fix a violation, and whether it can be relaxed.

Strict by default: each relaxable rule is an error unless the campaign (`allow:` on a dataset)
or the CLI (`--allow RULE`) relaxes it, and a report says which flag would. Relaxed rules are
still counted and shown as warnings, so nothing passes silently.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    id: str
    summary: str
    fix: str
    relaxable: bool = False


_RULES = (
    # File and JSON Lines level.
    Rule("invalid-json", "a line is not valid JSON", "fix the JSON syntax on that line", True),
    Rule("non-utf8", "a line is not valid UTF-8", "re-encode the file as UTF-8", True),
    Rule(
        "bom",
        "the file starts with a UTF-8 byte order mark",
        "save the file as UTF-8 without BOM",
        True,
    ),
    Rule(
        "blank-line",
        "a blank or whitespace-only line",
        "remove empty lines; JSON Lines has one record per line",
        True,
    ),
    Rule(
        "nan",
        "NaN or Infinity, which JSON does not allow",
        "replace it with a number, a string or null",
        True,
    ),
    Rule(
        "duplicate-key",
        "an object repeats a key (only the last value would be kept)",
        "keep one of the two keys",
        True,
    ),
    Rule("not-object", "a record is not a JSON object", "write one JSON object per line", True),
    Rule(
        "unknown-key",
        "a key the format does not define (often a typo)",
        "remove or rename the key",
        True,
    ),
    Rule(
        "duplicate-record", "a record repeats an earlier line exactly", "remove the duplicate", True
    ),
    Rule(
        "too-long",
        "a record is longer than the model's context window",
        "shorten or split the record",
        True,
    ),
    # Schema.
    Rule("schema", "a field is missing or has the wrong type", "see the message"),
    Rule(
        "schema-version",
        "schemaVersion is missing or not bedrock-conversation-2024",
        'add "schemaVersion": "bedrock-conversation-2024"',
        True,
    ),
    # Conversations.
    Rule(
        "role-order",
        "roles must alternate user, assistant, ..., ending with assistant",
        "reorder or merge the messages",
    ),
    Rule("empty-content", "a message or content list is empty", "add content or drop it"),
    Rule("blank-text", "a text is empty or whitespace only", "write the text or remove it", True),
    Rule(
        "reserved-token",
        "text contains a token the model reserves (User:, Bot:, [EOS], ...)",
        "rephrase so the token does not appear (e.g. 'User -' instead of 'User:')",
        True,
    ),
    Rule(
        "media",
        "an image, video or document is not allowed here or is malformed",
        "see the message",
    ),
    Rule(
        "mixed-modality",
        "the dataset mixes image records and video records",
        "split images and videos into separate datasets",
        True,
    ),
    Rule("reasoning", "reasoningContent is not allowed here", "see the message"),
    Rule("tools", "tool configuration or tool use is inconsistent", "see the message"),
    Rule("preference", "DPO candidates are malformed", "see the message"),
    # RFT and evaluation.
    Rule(
        "missing-reference-answer",
        "an RFT record has no reference_answer",
        "add reference_answer (a string or an object) for the reward function",
        True,
    ),
    # Dataset level.
    Rule(
        "sample-count",
        "too few or too many records for the model and platform",
        "add or remove records",
    ),
    Rule("not-supported", "the model does not support this dataset", "see the message"),
)

RULES: dict[str, Rule] = {rule.id: rule for rule in _RULES}
RELAXABLE = tuple(rule.id for rule in _RULES if rule.relaxable)


def rule(rule_id: str) -> Rule:
    return RULES[rule_id]
