"""Validate a JSON Lines dataset, streaming, for one format, model and platform.

The hot loop is short on purpose. msgspec decodes each line straight into typed records
(rejecting wrong types and unknown keys in C); the format's check covers what types cannot say.
Scans that would otherwise run once per line run once per 8 MB chunk instead:

- reserved tokens are searched in the raw chunk; only lines with a hit get the exact,
  per-text check;
- repeated keys: msgspec keeps the last of two equal keys silently, so the number of keys in the
  raw text (``":`` outside strings) is compared with the number decoded; only a chunk whose
  counts differ is examined line by line, and only a differing line is parsed again to find
  the repeated key.

A format with a quick path (SFT: text-only records, see converse_quick) goes faster still
(run_quick). The thread that reads the file also scans it with Hyperscan, which releases the
GIL: reserved tokens, and every place where a record of the quick shape could hide a repeated
key. The validating thread then runs one quick check per line, mapped in C, and keeps its books
per chunk; a line the quick check does not vouch for, or that the scan matched, takes the full
path above, and a repeated key there is looked for line by line. Reports are the same either way.

Memory is bounded whatever the input. An invalid line costs nothing that lasts: errors are
counted per rule and only the first ``max_errors`` (at most MAX_LISTED) are kept, and a line with
an error is left out of the duplicate index. What grows is that index, 16 bytes per valid
record; lengths are counted per distinct value. Each chunk is split into lines a piece of about
PIECE bytes at a time, so a chunk of tiny lines does not become millions of objects at once,
and a line longer than MAX_LINE_BYTES is skipped, never held.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import operator
import time
from array import array
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

import msgspec
from xxhash import xxh3_64_intdigest

from tuneloop.data.formats import (
    IMAGE,
    KIND_BITS,
    KIND_MASK,
    KIND_NAMES,
    NEEDS_FULL_CHECK,
    VIDEO,
    DatasetFormat,
    FormatContext,
    QuickPath,
    pack_facts,
    unknown_key_message,
)
from tuneloop.data.reader import prefetched, read_ahead, read_chunks
from tuneloop.data.report import DataIssue, DatasetReport, TokenStats
from tuneloop.data.rules import RELAXABLE, RULES
from tuneloop.data.scan import (
    RESERVED_TOKENS,
    ReservedScanner,
    StreamScan,
    stream_scan_available,
)
from tuneloop.recipes.catalog import ModelSpec

BOM = b"\xef\xbb\xbf"
MEDIA = IMAGE | VIDEO
# A longer line is reported and skipped rather than held in memory: no model's context comes close.
MAX_LINE_BYTES = 64 << 20
PIECE = 1 << 20
"""Lines are split from a chunk about this many bytes at a time (see _pieces)."""
MAX_LISTED = 10_000
"""The most errors (and warnings) a report lists, whatever max_errors asks: the rest are counted."""
CHARS_PER_TOKEN = 4
SET_DIGESTS = 400_000
_BLANK = -1
"""What _Pass._full_line returns for a blank line (a decoded record has at least one key)."""
_CHARS_OF: Callable[[int], int] = KIND_BITS.__rrshift__  # packed facts -> chars, in C
_KINDS_OF: Callable[[int], int] = KIND_MASK.__and__  # packed facts -> kinds, in C


@dataclass
class Options:
    allow: frozenset[str] = frozenset()
    max_errors: int = 100
    max_length: int | None = None
    role: str = "train"
    """train or validation: some models accept no validation set on some platforms."""


@dataclass
class _State:
    """Everything one pass accumulates; partial states from workers merge into one."""

    records: int = 0
    invalid: int = 0
    errors: list[DataIssue] = field(default_factory=list)
    error_counts: Counter[str] = field(default_factory=Counter)
    warnings: list[DataIssue] = field(default_factory=list)
    warning_counts: Counter[str] = field(default_factory=Counter)
    kinds: Counter[int] = field(default_factory=Counter)
    lengths: Counter[int] = field(default_factory=Counter)
    """Records by length in characters: a file of N bytes has fewer than sqrt(2N) lengths."""
    digests: array[int] = field(default_factory=lambda: array("Q"))
    """The digest of each record without an error, in line order (with digest_lines);
    duplicates are found from these at the end, which takes 16 bytes a record instead of a
    dict's hundred. A record with an error is left out: it is invalid already, and indexing
    every invalid line would let memory grow with them."""
    digest_lines: array[int] = field(default_factory=lambda: array("q"))
    duplicates: int = 0
    first_image: int = 0
    first_video: int = 0
    lines: int = 0


class _Pass:
    """One streaming pass over a byte range."""

    def __init__(self, fmt: DatasetFormat, ctx: FormatContext, options: Options) -> None:
        self.fmt, self.ctx, self.options = fmt, ctx, options
        self.allow = options.allow
        self.strict = fmt.decoder(forbid_unknown=True)
        self.lenient = fmt.decoder(forbid_unknown=False)
        self.decoder = self.lenient if "unknown-key" in self.allow else self.strict
        self.state = _State()
        self.line_no = 0
        self.listed = min(options.max_errors, MAX_LISTED)
        """How many errors, and how many warnings, the report lists."""
        self._counted = 0
        """The line last counted in state.invalid. Lines are checked in order, so a report on
        another line is on a line not counted yet; _revisit() handles the few reports made
        after later lines were checked."""
        self.context_chars = ctx.spec.context_length * CHARS_PER_TOKEN
        self._scanner: ReservedScanner | None = None
        self._kinds: list[int] = []
        """Kinds of the records checked the full way since the last flush into state.kinds."""
        self._lengths: list[int] = []
        """Their lengths, likewise flushed into state.lengths."""
        quick_path = getattr(fmt, "quick_path", None)
        self.quick: QuickPath | None = None
        """The format's quick path, when it has one and the raw bytes can be scanned alongside
        (run_quick); otherwise run() takes every line the full way."""
        if quick_path is not None and stream_scan_available():
            self.quick = quick_path(ctx)
        self.quick_limit = pack_facts(self.context_chars, KIND_MASK)
        """Packed facts above this are longer than the context: the full path reports them."""

    @property
    def scanner(self) -> ReservedScanner:
        if self._scanner is None:
            self._scanner = ReservedScanner()
        return self._scanner

    # -- reporting ---------------------------------------------------------------------------

    def report(self, rule_id: str, path: str, message: str) -> None:
        state = self.state
        if rule_id in self.allow:
            state.warning_counts[rule_id] += 1
            _keep(state.warnings, self.line_no, path, rule_id, message, self.listed)
            return
        # Line 0 is the whole dataset, and a blank line is not a record.
        if self.line_no and self.line_no != self._counted and rule_id != "blank-line":
            self._counted = self.line_no
            state.invalid += 1
        state.error_counts[rule_id] += 1
        _keep(state.errors, self.line_no, path, rule_id, message, self.listed)

    def _revisit(self, line_no: int, invalid: bool) -> None:
        """Report on ``line_no`` again, after later lines were checked; ``invalid``: whether it
        is counted as invalid already."""
        self.line_no = line_no
        self._counted = line_no if invalid else 0

    # -- the pass ----------------------------------------------------------------------------

    def run(self, chunks: Iterable[bytes], first_chunk: bool = True) -> _State:
        partial = _Partial()
        skipping = False
        line_no = 0
        for chunk in chunks:
            if first_chunk:
                first_chunk = False
                chunk = self._strip_bom(chunk)
            for _, piece in _pieces(chunk):
                if skipping:  # inside a line too long to hold in memory
                    newline = piece.find(b"\n")
                    if newline == -1:
                        continue
                    skipping, piece = False, piece[newline + 1 :]
                cut = piece.rfind(b"\n") + 1
                if cut == 0:
                    partial.add(piece, 0)
                    if partial.size > MAX_LINE_BYTES:
                        line_no += 1
                        self._line_too_large(line_no)
                        partial.clear()
                        skipping = True
                    continue
                tail = len(piece) - cut
                buffer = partial.take(piece)
                cut = len(buffer) - tail
                partial.add(buffer[cut:], 0)
                line_no = self._lines(buffer, cut, line_no)
        if partial.size:
            rest = partial.take(b"\n")
            self._lines(rest, len(rest), line_no)
        elif skipping:
            self.state.lines = line_no
        return self.state

    def _strip_bom(self, chunk: bytes) -> bytes:
        """The first chunk without its byte order mark, which is reported."""
        if not chunk.startswith(BOM):
            return chunk
        self.line_no = 1
        self.report("bom", "$", "the file starts with a UTF-8 byte order mark")
        return chunk[len(BOM) :]

    def run_quick(
        self, items: Iterable[tuple[bytes | None, list[int]]], first_chunk: bool = True
    ) -> _State:
        """Like run(), for a pass with a quick path.

        ``items`` pairs each chunk with the StreamScan hits in the lines it ends, and ends with
        ``(None, hits)``: those of a last line without a newline. Lines are cut from each chunk
        as it comes, without joining it to the carried-over partial line first.
        """
        pending: deque[int] = deque()
        """StreamScan hits not yet given to a line, in the order of their offsets."""
        partial = _Partial()  # the line begun and not yet ended
        at = 0  # the offset of the next chunk
        skipping = False
        line_no = 0
        for chunk, hits in items:
            pending.extend(hits)
            if chunk is None:
                break
            chunk_at = at
            at += len(chunk)
            if first_chunk:
                first_chunk = False
                stripped = self._strip_bom(chunk)
                chunk_at += len(chunk) - len(stripped)
                chunk = stripped
            for piece_at, piece in _pieces(chunk, chunk_at):
                if skipping:  # inside a line too long to hold in memory
                    newline = piece.find(b"\n")
                    if newline == -1:
                        continue
                    skipping = False
                    piece, piece_at = piece[newline + 1 :], piece_at + newline + 1
                lines = piece.split(b"\n")
                tail = lines.pop()
                if not lines:  # no newline: the partial line grows
                    partial.add(tail, piece_at)
                    if partial.size > MAX_LINE_BYTES:
                        line_no += 1
                        self._line_too_large(line_no)
                        partial.clear()
                        skipping = True
                    continue
                start = partial.at if partial.size else piece_at
                lines[0] = partial.take(lines[0])
                partial.add(tail, piece_at + len(piece) - len(tail))
                line_no = self._quick_lines(lines, line_no, start, pending)
        if partial.size:
            start = partial.at
            self._quick_lines([partial.take(b"")], line_no, start, pending)
        elif skipping:
            self.state.lines = line_no
        return self.state

    def _line_too_large(self, line_no: int) -> None:
        """A line longer than MAX_LINE_BYTES: reported, then skipped without holding it."""
        self.line_no = line_no
        self.state.records += 1
        self.report("too-long", "$", f"the line is longer than {MAX_LINE_BYTES >> 20} MB")
        self.state.lines = line_no

    def _lines(self, buffer: bytes, end: int, line_no: int) -> int:
        """Validate the complete lines in ``buffer[:end]``; return the last line number.

        Every line takes the full path; repeated keys are looked for line by line only when the
        chunk's count of ``":`` differs from the keys decoded.
        """
        lines = buffer[: end - 1].split(b"\n")
        first_line = line_no + 1
        hits = self.scanner.lines_with_hits(buffer, end, first_line)
        state = self.state
        full_line = self._full_line
        decoded = _Decoded()
        valid: list[int] = []
        """Indexes of the records without an error (so far), for the duplicate index."""
        records = 0
        for index, line in enumerate(lines):
            line_no += 1
            keys = full_line(line, line_no, line_no in hits)
            if keys == _BLANK:
                continue  # not a record, so neither valid nor invalid
            records += 1
            ok = self._counted != line_no
            if keys is not None:
                decoded.add(line_no, keys, ok)
            if ok:
                valid.append(index)
        state.records += records
        self._flush_facts()
        spoiled: set[int] = set()
        if decoded.lines:
            # One scan of the chunk; line by line only when the totals disagree (a relaxed
            # duplicate-key or unknown-key is still found, as a warning).
            clean = len(decoded.lines) == len(lines)
            if not clean or buffer.count(b'":', 0, end) != sum(decoded.keys):
                spoiled = self._repeated_keys_by_line(lines, first_line, decoded)
        self._index(lines, valid, first_line, spoiled)
        state.lines = line_no
        return line_no

    def _index(
        self, lines: list[bytes], valid: list[int], first_line: int, spoiled: set[int]
    ) -> None:
        """Add the records at ``valid`` (indexes in ``lines``) to the duplicate index, but for
        the ``spoiled`` lines: found invalid after the rest (a repeated key)."""
        if spoiled:
            valid = [index for index in valid if first_line + index not in spoiled]
        self.state.digests.extend([record_digest(lines[index]) for index in valid])
        self.state.digest_lines.extend([first_line + index for index in valid])

    def _quick_lines(
        self, lines: list[bytes], line_no: int, start: int, pending: deque[int]
    ) -> int:
        """Validate complete lines, the first beginning at offset ``start``; return the last
        line number.

        The hot loop of run_quick: one quick check per line, mapped in C, and the bookkeeping
        in bulk. Only a batch with a line the quick check did not vouch for, or a line the
        scanner matched, goes through lines one by one (_mixed_lines).
        """
        results = list(map(self.quick.check, lines))  # type: ignore[union-attr]
        matched = _matched_lines(lines, start, pending) if pending else {}
        for index in matched:
            results[index] = NEEDS_FULL_CHECK
        # (A line counted already has an error reported before its check: the byte order mark.)
        if (
            NEEDS_FULL_CHECK in results
            or max(results) > self.quick_limit
            or self._counted > line_no
        ):
            return self._mixed_lines(lines, line_no, results, matched)
        state = self.state
        count = len(lines)
        state.records += count
        state.lengths.update(map(_CHARS_OF, results))
        state.kinds.update(map(_KINDS_OF, results))
        state.digests.extend(map(record_digest, lines))
        state.digest_lines.extend(range(line_no + 1, line_no + 1 + count))
        state.lines = line_no + count
        return state.lines

    def _mixed_lines(
        self, lines: list[bytes], line_no: int, results: list[int], matched: dict[int, bool]
    ) -> int:
        """Lines the quick check vouched for are counted as they are; the others take the full
        path, and those that decoded are looked at for repeated keys one by one."""
        state = self.state
        first_line = line_no + 1
        limit = self.quick_limit
        full_line = self._full_line
        lengths = self._lengths.append
        kinds = self._kinds.append
        decoded = _Decoded()
        valid: list[int] = []
        records = 0
        for index, (line, packed) in enumerate(zip(lines, results, strict=True)):
            line_no += 1
            if 0 <= packed <= limit:
                lengths(packed >> KIND_BITS)
                kinds(packed & KIND_MASK)
                if self._counted != line_no:
                    valid.append(index)
            else:
                keys = full_line(line, line_no, matched.get(index, False))
                if keys == _BLANK:
                    continue
                ok = self._counted != line_no
                if keys is not None:
                    decoded.add(line_no, keys, ok)
                if ok:
                    valid.append(index)
            records += 1
        state.records += records
        self._flush_facts()
        spoiled: set[int] = set()
        if decoded.lines:
            spoiled = self._repeated_keys_by_line(lines, first_line, decoded)
        self._index(lines, valid, first_line, spoiled)
        state.lines = line_no
        return line_no

    def _full_line(self, line: bytes, line_no: int, hit: bool) -> int | None:
        """Check one line the full way and report what is wrong with it.

        Returns the number of keys decoded (for the repeated-key check), None when the line did
        not decode, or _BLANK for a blank line (not a record). ``hit``: the scanner matched the
        line, so its texts are searched for reserved tokens.
        """
        self.line_no = line_no
        if not line or line.isspace():
            self.report("blank-line", "$", "blank line")
            return _BLANK
        try:
            record = self.decoder.decode(line)
        except (
            msgspec.ValidationError,
            msgspec.DecodeError,
            UnicodeDecodeError,
            RecursionError,  # nested deeper than the parser goes
        ) as exc:
            record = self._decode_failed(line, exc)
        else:
            if self.decoder is self.lenient and not self._skipped_bytes_are_utf8(line):
                return None
        if record is None:
            return None
        state = self.state
        keys, chars, kinds = self.fmt.check(record, self.ctx, self.report)
        if hit:
            self._check_reserved(record)
        self._lengths.append(chars)
        self._kinds.append(kinds)
        if kinds & MEDIA:
            if kinds & IMAGE and not state.first_image:
                state.first_image = line_no
            if kinds & VIDEO and not state.first_video:
                state.first_video = line_no
        if chars > self.context_chars:
            self.report(
                "too-long",
                "$",
                f"about {chars // CHARS_PER_TOKEN} tokens, more than "
                f"{self.ctx.spec.display_name}'s context of {self.ctx.spec.context_length}",
            )
        return keys

    def _flush_facts(self) -> None:
        self.state.kinds.update(self._kinds)  # counted in C, once per piece
        self.state.lengths.update(self._lengths)
        self._kinds.clear()
        self._lengths.clear()

    def _decode_failed(self, line: bytes, exc: Exception) -> Any:
        if isinstance(exc, msgspec.ValidationError):
            unknown_key = self._schema_error(str(exc))
            if unknown_key and self.decoder is self.strict:
                # Reported once; read the record leniently so its other problems show too
                # (the rest of the line may also be malformed, hold NaN or invalid UTF-8).
                if not self._skipped_bytes_are_utf8(line):
                    return None
                self.decoder = self.lenient
                try:
                    return self._decode(line.decode("utf-8", "replace").encode())
                finally:
                    self.decoder = self.strict
            return None
        if isinstance(exc, UnicodeDecodeError):
            self.report("non-utf8", "$", f"invalid UTF-8 at byte {exc.start} of the line")
            if "non-utf8" not in self.allow:
                return None
            return self._decode(line.decode("utf-8", "replace").encode())
        return self._malformed(line)

    def _skipped_bytes_are_utf8(self, line: bytes) -> bool:
        """Report invalid UTF-8 that lenient decoding would not see; False to stop there.

        The lenient decoder skips the values of unknown keys without decoding them, so a line
        with an unknown key is checked here: invalid UTF-8 is an error wherever it is.
        """
        if line.isascii():
            return True
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as exc:
            self.report("non-utf8", "$", f"invalid UTF-8 at byte {exc.start} of the line")
            return "non-utf8" in self.allow
        return True

    def _decode(self, line: bytes) -> Any:
        """Decode a line outside the hot loop (a retry), with the same failure handling."""
        try:
            return self.decoder.decode(line)
        except (
            msgspec.ValidationError,
            msgspec.DecodeError,
            UnicodeDecodeError,
            RecursionError,
        ) as exc:
            return self._decode_failed(line, exc)

    def _malformed(self, line: bytes) -> Any:
        constants: list[str] = []

        def constant(name: str) -> float:
            constants.append(name)
            return float(name)

        try:
            value = json.loads(line, parse_constant=constant)
        except UnicodeDecodeError as exc:
            self.report("non-utf8", "$", f"invalid UTF-8 at byte {exc.start} of the line")
            return None
        except json.JSONDecodeError as exc:
            self.report("invalid-json", "$", f"not valid JSON: {exc.msg} at column {exc.colno}")
            return None
        except RecursionError:
            self.report("invalid-json", "$", "values nest too deeply to parse")
            return None
        if not constants:
            # Python's parser also accepts what msgspec rightly rejects: an unpaired UTF-16
            # surrogate escape (\ud800), or a line in UTF-16.
            self.report(
                "invalid-json", "$", "not valid JSON: an unpaired surrogate escape or not UTF-8"
            )
            return None
        # Python's parser accepts NaN and Infinity; msgspec (and JSON) do not.
        self.report("nan", "$", "NaN or Infinity is not valid JSON")
        if "nan" not in self.allow:
            return None
        try:
            return msgspec.convert(value, self.decoder.type)
        except msgspec.ValidationError as exc:
            self._schema_error(str(exc))
            return None

    def _schema_error(self, text: str) -> bool:
        """Report a msgspec validation error; True when it was an unknown key."""
        message, _, where = text.partition(" - at `")
        path = where.rstrip("`") or "$"
        if message.startswith("Object contains unknown field `"):
            name = message.split("`")[1]
            self.report(
                "unknown-key", f"{path}.{name}", unknown_key_message(name, self.strict.type)
            )
            return True
        if message.startswith("Expected `object`") and path == "$":
            self.report("not-object", "$", f"the record is not a JSON object ({message})")
        elif message.startswith("Object missing required field `"):
            name = message.split("`")[1]
            self.report("schema", path, f"required field {name!r} is missing")
        else:
            self.report("schema", path, message.replace("`", "'"))
        return False

    def _check_reserved(self, record: Any) -> None:
        for path, text in self.fmt.texts(record):
            found = [token for token in RESERVED_TOKENS if token in text]
            if found:
                self.report(
                    "reserved-token",
                    path,
                    "reserved token "
                    + ", ".join(repr(t) for t in found)
                    + " in the text (matched case-sensitively)",
                )

    def _repeated_keys_by_line(
        self, lines: list[bytes], first_line: int, decoded: _Decoded
    ) -> set[int]:
        """Report repeated keys (and relaxed unknown keys) line by line; return the lines
        without an error before that have one now."""
        saved = self.line_no, self._counted
        spoiled: set[int] = set()
        for line_no, decoded_keys, ok in zip(decoded.lines, decoded.keys, decoded.ok, strict=True):
            line = lines[line_no - first_line]
            if line.count(b'":') - line.count(b'\\":') == decoded_keys:
                continue
            self._revisit(line_no, invalid=not ok)
            self._report_keys(line)
            if ok and self._counted == line_no:
                spoiled.add(line_no)
        self.line_no, self._counted = saved
        return spoiled

    def _report_keys(self, line: bytes) -> None:
        """Report a repeated key in a line whose raw text holds more keys than were decoded."""
        if self.decoder is self.lenient:
            # The relaxed decoder dropped unknown keys: report them, as warnings.
            try:
                # (with non-UTF-8 bytes replaced: this line has them only if relaxed)
                self.strict.decode(line.decode("utf-8", "replace").encode())
            except msgspec.ValidationError as exc:
                self._schema_error(str(exc))
            except (msgspec.DecodeError, RecursionError):
                pass  # NaN or deep nesting: reported already
        repeated = _find_repeated_key(line)
        if repeated is None:
            return  # a quote-colon inside a string, not a repeated key
        self.report(
            "duplicate-key",
            repeated[0],
            f"key {repeated[1]!r} appears twice in this object; only the last value would be kept",
        )


def issue_order(issue: DataIssue) -> tuple[int, str, str, str]:
    """The order issues are listed in, whichever way the file was read."""
    return (issue.line, issue.path, issue.rule, issue.message)


@dataclass
class _Decoded:
    """The lines of a piece that decoded into records, for the repeated-key check."""

    lines: list[int] = field(default_factory=list)
    keys: list[int] = field(default_factory=list)
    """Keys decoded from each."""
    ok: list[bool] = field(default_factory=list)
    """Whether each was without an error."""

    def add(self, line_no: int, keys: int, ok: bool) -> None:
        self.lines.append(line_no)
        self.keys.append(keys)
        self.ok.append(ok)


class _Partial:
    """The start of a line not ended yet, as the pieces read so far: a line that spans many
    chunks is joined once, when it ends, instead of copied again with every chunk."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0
        self.at = 0
        """The offset of its first byte."""

    def add(self, data: bytes, at: int) -> None:
        """Append ``data``, read at offset ``at``."""
        if not data:
            return
        if not self.parts:
            self.at = at
        self.parts.append(data)
        self.size += len(data)

    def take(self, end: bytes) -> bytes:
        """The line so far followed by ``end``; afterwards nothing is held."""
        if not self.parts:
            return end
        line = b"".join([*self.parts, end])
        self.clear()
        return line

    def clear(self) -> None:
        self.parts, self.size = [], 0


def _pieces(chunk: bytes, at: int = 0) -> Iterator[tuple[int, bytes]]:
    """``chunk`` in pieces of about PIECE bytes, each but the last ending with a newline, with
    the offset of each (``at`` being that of the chunk).

    Splitting bytes into lines makes an object per line: 8 MB of 3-byte lines would make almost
    three million at once (over 100 MB). A piece makes at most a third of a million.
    """
    if len(chunk) <= PIECE:
        yield at, chunk
        return
    start = 0
    while start < len(chunk):
        cut = chunk.find(b"\n", start + PIECE - 1) + 1 or len(chunk)
        yield at + start, chunk[start:cut]
        start = cut


def _keep(
    issues: list[DataIssue], line: int, path: str, rule_id: str, message: str, limit: int
) -> None:
    """Keep the first ``limit`` issues in `issue_order`, whatever order they are found in
    (a repeated key is found after the rest of its chunk)."""
    path, message = _clipped(path), _clipped(message)
    key = (line, path, rule_id, message)
    if len(issues) >= limit:
        if limit == 0 or key >= issue_order(issues[-1]):
            return
        issues.pop()
    fix = RULES[rule_id].fix if rule_id in RULES else None
    issue = DataIssue(line=line, path=path, rule=rule_id, message=message, fix=fix)
    if issues and key < issue_order(issues[-1]):
        bisect.insort(issues, issue, key=issue_order)
    else:
        issues.append(issue)


CLIP = 400
"""The most characters of a path or message an issue keeps: a message quotes values from the
line (a key, a URI), and a line may hold 64 MB."""


def _clipped(text: str) -> str:
    if len(text) <= CLIP:
        return text
    return f"{text[: CLIP - 50]}... ({len(text) - CLIP + 50:,} more characters)"


def _matched_lines(lines: list[bytes], start: int, pending: deque[int]) -> dict[int, bool]:
    """The lines (the first beginning at offset ``start``, each followed by a newline) in which
    a pending StreamScan hit ends, by index, each with whether a reserved-token pattern matched
    there. Those hits leave ``pending``."""
    newlines = [start + index + length for index, length in enumerate(accumulate(map(len, lines)))]
    matched: dict[int, bool] = {}
    last = newlines[-1]
    while pending and pending[0] >> 1 <= last:
        hit = pending.popleft()
        stop = hit >> 1
        if stop > start:  # not in a skipped line or the byte order mark
            index = bisect.bisect_left(newlines, stop)
            matched[index] = matched.get(index, False) or bool(hit & 1)
    return matched


class _Object(dict[str, Any]):
    """A parsed JSON object that remembers a key it saw twice."""

    repeated: str | None = None


def _find_repeated_key(line: bytes) -> tuple[str, str] | None:
    """(path of the object, key) of the first repeated key, by a slow exact parse."""

    def pairs(items: list[tuple[str, Any]]) -> _Object:
        obj = _Object(items)
        if len(obj) != len(items):
            seen: set[str] = set()
            obj.repeated = next(k for k, _ in items if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        return obj

    try:
        root = json.loads(line, object_pairs_hook=pairs)
        return _locate_repeated(root, "$")
    except (ValueError, RecursionError):
        return None


def _locate_repeated(value: Any, path: str) -> tuple[str, str] | None:
    if isinstance(value, _Object):
        if value.repeated is not None:
            return path, value.repeated
        for key, item in value.items():
            found = _locate_repeated(item, f"{path}.{key}")
            if found:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _locate_repeated(item, f"{path}[{index}]")
            if found:
                return found
    return None


# --- public entry point ------------------------------------------------------------------------

SAMPLE_BOUNDS_BEDROCK: dict[tuple[str, str], tuple[int, int]] = {
    ("nova-1", "sft"): (8, 20_000),
    ("nova-2", "sft"): (200, 20_000),
    ("nova-2", "rft"): (100, 20_000),
    ("nova-1", "dpo"): (8, 20_000),
}


def validate_dataset(
    uri: str,
    fmt: DatasetFormat,
    spec: ModelSpec,
    *,
    platform: str = "sagemaker",
    options: Options | None = None,
    workers: int = 1,
) -> DatasetReport:
    """Validate ``uri`` (a path, file:// or s3:// URI) and return the report."""
    options = options or Options()
    unknown = set(options.allow) - set(RELAXABLE)
    if unknown:
        raise ValueError(
            f"cannot relax {', '.join(sorted(unknown))} (relaxable: {', '.join(RELAXABLE)})"
        )
    started = time.perf_counter()
    ctx = FormatContext(spec=spec, platform=platform)
    digest = hashlib.sha256()
    size = 0

    def hashed(chunk: bytes) -> None:
        nonlocal size
        digest.update(chunk)
        size += len(chunk)

    validation = _Pass(fmt, ctx, options)
    ranges = _ranges(uri, workers)
    if len(ranges) == 1:
        state = _run(validation, read_chunks(uri), hashed, first_chunk=True)
    else:
        state = _run_parallel(uri, fmt, ctx, options, ranges, validation, hashed)
    _report_duplicates(validation, state)
    return _finish(
        uri,
        fmt,
        ctx,
        options,
        validation,
        state,
        digest.hexdigest(),
        size,
        time.perf_counter() - started,
    )


def _ranges(uri: str, workers: int) -> list[tuple[int, int]]:
    from tuneloop import storage
    from tuneloop.data.reader import line_aligned_ranges

    if workers <= 1 or storage.is_s3(uri):
        return [(0, -1)]
    try:
        return line_aligned_ranges(storage.local_path(uri), workers)
    except OSError:
        return [(0, -1)]  # one pass, whose reader reports the unreadable file


record_digest: Callable[[bytes], int] = xxh3_64_intdigest
"""A record's 64-bit digest for the duplicate check: the same in every process (unlike the
salted hash()), and about five times faster than hash() on records of a kilobyte."""


def _validate_range(
    uri: str,
    start: int,
    end: int,
    fmt_name: str,
    spec: ModelSpec,
    platform: str,
    options: Options,
) -> _State:
    """One worker: validate a line-aligned byte range, numbering lines from 1."""
    from tuneloop.data.registry import get_format

    validation = _Pass(get_format(fmt_name), FormatContext(spec=spec, platform=platform), options)
    return _run(validation, read_chunks(uri, start, end), None, first_chunk=start == 0)


def _run(
    validation: _Pass,
    chunks: Iterable[bytes],
    each: Callable[[bytes], None] | None,
    *,
    first_chunk: bool,
) -> _State:
    """Read ``chunks`` in a thread (calling ``each`` on every one there) and validate them.

    With a quick path, the reading thread also scans each chunk with Hyperscan, which releases
    the GIL: the scan overlaps with the validation instead of adding to it.
    """
    if validation.quick is None:
        if each is not None:
            chunks = prefetched(chunks, each)
        return validation.run(chunks, first_chunk=first_chunk)
    scan = StreamScan(validation.quick.suspicious, MAX_LINE_BYTES)

    def read(chunk: bytes | None) -> list[int]:
        if chunk is None:  # the end: the last line may have no newline
            return scan.finish()
        if each is not None:
            each(chunk)
        return scan.feed(chunk)

    ended: Iterable[bytes | None] = itertools.chain(chunks, [None])
    return validation.run_quick(read_ahead(ended, read), first_chunk=first_chunk)


def _run_parallel(
    uri: str,
    fmt: DatasetFormat,
    ctx: FormatContext,
    options: Options,
    ranges: list[tuple[int, int]],
    validation: _Pass,
    hashed: Any,
) -> _State:
    """Validate ranges in worker processes and merge them into what one pass would report."""
    import threading
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_all_start_methods, get_context

    # Forked children start at once. Forking a process with other threads (an Airflow task,
    # say) can deadlock the child, so there workers are spawned instead.
    fork = "fork" in get_all_start_methods() and threading.active_count() == 1
    context = get_context("fork" if fork else "spawn")
    with ProcessPoolExecutor(max_workers=len(ranges), mp_context=context) as pool:
        futures = [
            pool.submit(
                _validate_range,
                uri,
                start,
                end,
                fmt.name,
                ctx.spec,
                ctx.platform,
                options,
            )
            for start, end in ranges
        ]
        for chunk in read_chunks(uri):  # the file's digest, while the workers run
            hashed(chunk)
        parts = [future.result() for future in futures]
    merged = _State()
    validation.state = merged
    offset = 0
    for state in parts:
        for issue in (*state.errors, *state.warnings):
            issue.line += offset
        merged.errors.extend(state.errors)
        merged.warnings.extend(state.warnings)
        merged.error_counts.update(state.error_counts)
        merged.warning_counts.update(state.warning_counts)
        merged.kinds.update(state.kinds)
        merged.lengths.update(state.lengths)
        merged.records += state.records
        merged.invalid += state.invalid
        if state.first_image and not merged.first_image:
            merged.first_image = state.first_image + offset
        if state.first_video and not merged.first_video:
            merged.first_video = state.first_video + offset
        merged.digests.extend(state.digests)
        merged.digest_lines.extend(line + offset for line in state.digest_lines)
        offset += state.lines
    merged.lines = offset
    merged.errors.sort(key=issue_order)
    merged.warnings.sort(key=issue_order)
    del merged.errors[validation.listed :]
    del merged.warnings[validation.listed :]
    return merged


def _report_duplicates(validation: _Pass, state: _State) -> None:
    """Report each record that repeats an earlier one, in line order.

    Only records without an error are indexed, so each duplicate is a record found valid so
    far: reporting it (unless relaxed) makes it invalid.

    Sorting the digests finds which repeat without a dict over every record; only repeated
    digests are then followed, in file order, to name the first occurrence. Most files repeat
    nothing: up to SET_DIGESTS records a set says so three times faster than sorting (beyond,
    its memory would count against the peak).
    """
    digests = state.digests
    if len(digests) <= SET_DIGESTS and len(set(digests)) == len(digests):
        return
    ordered = sorted(digests)
    if not any(map(operator.eq, ordered, itertools.islice(ordered, 1, None))):
        return
    repeated = {a for a, b in itertools.pairwise(ordered) if a == b}
    del ordered
    first_seen: dict[int, int] = {}
    for digest, line in zip(state.digests, state.digest_lines, strict=True):
        if digest not in repeated:
            continue
        earlier = first_seen.setdefault(digest, line)
        if earlier == line:
            continue
        state.duplicates += 1
        validation._revisit(line, invalid=False)
        validation.report("duplicate-record", "$", f"same as line {earlier}")


def _token_stats(counts: Counter[int], max_length: int | None, context_length: int) -> TokenStats:
    """p50, p95 and max of the records' characters, in tokens, and how many exceed max_length.

    Lengths repeat a lot (a file of N bytes has fewer than sqrt(2N) distinct ones), so counting
    them and sorting the distinct values is several times faster than sorting every record.
    """
    tokens = TokenStats(max_length=max_length, context_length=context_length)
    if not counts:
        return tokens
    values = sorted(counts)
    total = counts.total()
    wanted = [total // 2, min(total - 1, int(total * 0.95))]  # positions in the sorted lengths
    found: list[int] = []
    seen = 0
    for value in values:
        seen += counts[value]
        while wanted and wanted[0] < seen:
            found.append(value)
            wanted.pop(0)
        if not wanted:
            break
    tokens.p50, tokens.p95 = (value // CHARS_PER_TOKEN for value in found)
    tokens.max = values[-1] // CHARS_PER_TOKEN
    if max_length:
        limit = max_length * CHARS_PER_TOKEN
        over = values[bisect.bisect_right(values, limit) :]
        tokens.over_max_length = sum(counts[value] for value in over)
    return tokens


def _check_dataset(
    fmt: DatasetFormat, ctx: FormatContext, options: Options, validation: _Pass, state: _State
) -> None:
    """Checks of the whole file, once every line is read: modalities, sample count, role."""
    validation.line_no = 0
    if state.first_image and state.first_video:
        later = max(state.first_image, state.first_video)
        validation._revisit(later, invalid=_was_invalid(state, later, options))
        validation.report(
            "mixed-modality",
            "$",
            f"line {state.first_image} has an image and line "
            f"{state.first_video} a video; a dataset holds one or the other",
        )
        validation.line_no = 0
    bounds = SAMPLE_BOUNDS_BEDROCK.get((ctx.spec.family, fmt.name))
    applies = ctx.platform == "bedrock" and bounds is not None and options.role == "train"
    if not state.records:
        what = "is empty" if not state.lines else "holds only blank lines"
        validation.report(
            "sample-count",
            "$",
            f"no records: the file {what}, so a round would train on nothing "
            f"(allowed: at least {_records(bounds[0] if applies and bounds else 1)})",
        )
    elif applies and bounds:
        low, high = bounds
        if not low <= state.records <= high:
            validation.report(
                "sample-count",
                "$",
                f"{state.records} records; {ctx.spec.display_name} "
                f"{fmt.name.upper()} on Bedrock takes {low} to {high}",
            )
    if (
        ctx.platform == "bedrock"
        and options.role == "validation"
        and fmt.name == "sft"
        and ctx.nova2
    ):
        validation.report(
            "not-supported", "$", "Nova 2 Lite SFT on Bedrock does not accept a validation dataset"
        )


def _records(count: int) -> str:
    return "1 record" if count == 1 else f"{count} records"


def _was_invalid(state: _State, line_no: int, options: Options) -> bool:
    """Whether the record on ``line_no`` has an error already, once duplicates are reported:
    it was left out of the duplicate index, or repeats an earlier record in it."""
    index = bisect.bisect_left(state.digest_lines, line_no)
    if index == len(state.digest_lines) or state.digest_lines[index] != line_no:
        return True
    repeats = state.digests.index(state.digests[index]) < index
    return repeats and "duplicate-record" not in options.allow


def _finish(
    uri: str,
    fmt: DatasetFormat,
    ctx: FormatContext,
    options: Options,
    validation: _Pass,
    state: _State,
    sha256: str,
    size: int,
    seconds: float,
) -> DatasetReport:
    _check_dataset(fmt, ctx, options, validation, state)
    tokens = _token_stats(state.lengths, options.max_length, ctx.spec.context_length)
    if tokens.over_max_length:
        state.warning_counts["truncated"] += tokens.over_max_length
        state.warnings.append(
            DataIssue(
                line=0,
                rule="truncated",
                message=f"{tokens.over_max_length} records are longer than max_length "
                f"{options.max_length} (estimate) and would be truncated",
                fix="raise max_length or shorten those records",
            )
        )
    modalities: Counter[str] = Counter()
    for kinds, count in state.kinds.items():
        for bit, name in KIND_NAMES.items():
            if kinds & bit:
                modalities[name] += count
    state.errors.sort(key=issue_order)
    state.warnings.sort(key=issue_order)
    return DatasetReport(
        uri=uri,
        format=fmt.name,
        model_type=ctx.spec.model_type,
        platform=ctx.platform,
        ok=not state.error_counts,
        records=state.records,
        valid_records=state.records - state.invalid,
        invalid_records=state.invalid,
        errors=state.errors,
        error_counts=dict(state.error_counts),
        warnings=state.warnings,
        warning_counts=dict(state.warning_counts),
        allowed=sorted(options.allow),
        duplicates=state.duplicates,
        modalities=dict(modalities),
        tokens=tokens,
        sha256=sha256,
        bytes=size,
        seconds=round(seconds, 3),
    )
