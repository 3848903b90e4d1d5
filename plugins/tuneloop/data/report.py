"""The result of validating one dataset, as data (ledger, XCom, --json) and as text.

msgspec structs rather than pydantic models: the validator already decodes with msgspec, and
`tuneloop data validate` then starts without importing pydantic (about 70 ms of every run).
"""

from __future__ import annotations

import builtins
from collections import Counter
from typing import Any

import msgspec
from msgspec import Struct, field

from tuneloop.data.rules import RULES


class _Data(Struct):
    def to_dict(self, exclude: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
        """Plain JSON-ready data (nested structs as dicts), without the ``exclude`` fields."""
        data: dict[str, Any] = msgspec.to_builtins(self)
        for name in exclude:
            data.pop(name, None)
        return data

    def to_json(self, indent: int = 0) -> str:
        raw = msgspec.json.encode(self)
        return (msgspec.json.format(raw, indent=indent) if indent else raw).decode()


class DataIssue(_Data, kw_only=True):
    """One problem on one line."""

    line: int
    """1-based line number; 0 for a problem with the whole dataset."""
    path: str = "$"
    """JSON path inside the record, e.g. $.messages[2].content[0].text."""
    rule: str
    message: str
    fix: str | None = None

    def format(self, source: str) -> str:
        where = f"{source}:{self.line}" if self.line else source
        text = f"{where}: {self.path}: [{self.rule}] {self.message}"
        return f"{text}; fix: {self.fix}" if self.fix else text


class TokenStats(_Data, kw_only=True):
    """Estimated tokens per record (about 4 characters of text per token)."""

    p50: int = 0
    p95: int = 0
    max: int = 0
    max_length: int | None = None
    """The recipe's max_length the estimate is compared with."""
    over_max_length: int = 0
    """Records that would be truncated at max_length."""
    context_length: int | None = None
    """The model's context window."""


class DatasetReport(_Data, kw_only=True):
    """What a dataset validation found. `ok` is the verdict."""

    uri: str
    format: str
    model_type: str
    platform: str
    ok: bool
    records: int = 0
    """Lines holding a record (blank lines excluded)."""
    valid_records: int = 0
    invalid_records: int = 0
    errors: list[DataIssue] = field(default_factory=list)
    """The first errors, in line order (see max_errors)."""
    error_counts: dict[str, int] = field(default_factory=dict)
    """Errors per rule, over the whole file."""
    warnings: list[DataIssue] = field(default_factory=list)
    warning_counts: dict[str, int] = field(default_factory=dict)
    allowed: list[str] = field(default_factory=list)
    """Rules relaxed for this run; their violations are warnings."""
    duplicates: int = 0
    modalities: dict[str, int] = field(default_factory=dict)
    """Records containing each kind of content: text, image, video, document, reasoning, tools."""
    tokens: TokenStats = field(default_factory=TokenStats)
    sha256: str = ""
    bytes: int = 0
    seconds: float = 0.0

    @classmethod
    def from_json(cls, text: str | builtins.bytes) -> DatasetReport:  # the field shadows `bytes`
        return msgspec.json.decode(text, type=cls)

    @property
    def megabytes_per_second(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds else 0.0

    def to_text(self) -> str:
        verdict = "VALID" if self.ok else "INVALID"
        lines = [
            f"{self.uri}: {verdict} ({self.format} for {self.model_type} on {self.platform})",
            f"  records: {self.records} ({self.valid_records} valid, {self.invalid_records} "
            f"invalid), duplicates: {self.duplicates}",
        ]
        if self.modalities:
            mix = ", ".join(f"{k} {v}" for k, v in sorted(self.modalities.items()))
            lines.append(f"  content: {mix}")
        t = self.tokens
        budget = f" vs max_length {t.max_length}" if t.max_length else ""
        lines.append(f"  tokens (estimate): p50 {t.p50}, p95 {t.p95}, max {t.max}{budget}")
        if t.over_max_length:
            lines.append(f"  {t.over_max_length} records would be truncated at max_length")
        lines.append(f"  sha256: {self.sha256}  ({self.bytes} bytes, {self.seconds:.2f} s)")
        for title, counts in (("errors", self.error_counts), ("warnings", self.warning_counts)):
            if not counts:
                continue
            lines.append(f"  {title} by rule:")
            for rule_id, count in sorted(counts.items(), key=lambda kv: -kv[1]):
                known = RULES.get(rule_id)
                hint = ""
                if title == "errors" and known is not None and known.relaxable:
                    hint = f"  (relax with --allow {rule_id})"
                lines.append(f"    {rule_id}: {count}{hint}")
        if self.errors:
            shown = len(self.errors)
            total = sum(self.error_counts.values())
            lines.append(f"  first {shown} of {total} errors:")
            lines.extend(f"    {issue.format(self.uri)}" for issue in self.errors)
            lines.extend(_not_listed(self.errors, self.error_counts))
        if self.warnings:
            lines.append(f"  first {len(self.warnings)} warnings:")
            lines.extend(f"    {issue.format(self.uri)}" for issue in self.warnings)
            lines.extend(_not_listed(self.warnings, self.warning_counts))
        if self.allowed:
            lines.append(f"  relaxed: {', '.join(self.allowed)}")
        return "\n".join(lines) + "\n"


SUMMARISED = frozenset({"truncated"})
"""Rules whose one issue stands for every record it counts."""


def _not_listed(listed: list[DataIssue], counts: dict[str, int]) -> list[str]:
    """One line per rule with more issues than listed: only the first are kept, the rest
    counted (so a file of a million bad lines takes no more memory than one of a hundred)."""
    shown = Counter(issue.rule for issue in listed)
    more = {rule: count - shown[rule] for rule, count in counts.items() if rule not in SUMMARISED}
    return [
        f"    and {count:,} more of rule {rule_id} (counted, not listed)"
        for rule_id, count in sorted(more.items(), key=lambda kv: (-kv[1], kv[0]))
        if count > 0
    ]
