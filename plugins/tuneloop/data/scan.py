"""Find the lines of a chunk that may hold a reserved token, in one pass over the raw bytes.

Tokens are rare, so searching each 8 MB chunk once and checking only the lines with a hit costs
far less than searching every text of every record. Hyperscan (x86-64) matches all tokens in one
SIMD pass at several GB/s; elsewhere Python's `re` does the same job more slowly.

With Hyperscan, `StreamScan` also runs in the thread that reads the file, with more patterns
(those of a format's quick path): a scan releases the GIL, so it costs the validating thread
nothing. It reports where each match ends, counted from the first byte read; the validator maps
those offsets to lines.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache
from typing import Any

RESERVED_TOKENS = (
    "User:",
    "Bot:",
    "Assistant:",
    "System:",
    "Thought:",
    "[EOS]",
    "<image>",
    "<video>",
    "<unk>",
)
# Also the JSON escape of "<" that some serializers write ("\u003cimage\u003e").
_PATTERNS = [re.escape(token).encode() for token in RESERVED_TOKENS] + [rb"\\u003[cC]"]
_RESERVED_COUNT = len(_PATTERNS)


class ReservedScanner:
    def __init__(self) -> None:
        self._database: Any = None
        try:
            import hyperscan
        except ImportError:
            self._regex = re.compile(b"|".join(_PATTERNS))
            return
        database = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
        database.compile(
            expressions=_PATTERNS, ids=list(range(len(_PATTERNS))), flags=[0] * len(_PATTERNS)
        )
        self._database = database

    @property
    def engine(self) -> str:
        return "hyperscan" if self._database is not None else "re"

    def lines_with_hits(self, buffer: bytes, end: int, first_line: int) -> set[int]:
        """Line numbers (``first_line`` is the line at offset 0) whose bytes before ``end``
        contain a reserved token or its escape."""
        offsets: list[int] = []
        if self._database is not None:

            def collect(_id: int, _start: int, stop: int, _flags: int, _ctx: Any) -> None:
                offsets.append(stop)

            self._database.scan(
                buffer[:end] if end < len(buffer) else buffer, match_event_handler=collect
            )
        else:
            offsets = [match.start() for match in self._regex.finditer(buffer, 0, end)]
        # Count newlines from one hit to the next, not from the start each time: a chunk where
        # most lines hold a token would otherwise take quadratic time.
        lines: set[int] = set()
        line, previous = first_line, 0
        for offset in sorted(offsets):
            line += buffer.count(b"\n", previous, offset)
            previous = offset
            lines.add(line)
        return lines


@cache
def _line_database(extra: tuple[bytes, ...]) -> Any:
    """The reserved-token patterns plus ``extra``, compiled once per process."""
    import hyperscan

    patterns = [*_PATTERNS, *extra]
    database = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    database.compile(expressions=patterns, ids=list(range(len(patterns))), flags=0)
    return database


class StreamScan:
    """Scans a file (or a byte range of one) fed chunk by chunk, whole lines at a time.

    No pattern spans a newline, so scanning complete lines is exact. Each chunk is scanned in
    two blocks: the line it completes (joined to the start carried over from earlier chunks:
    one line, a small copy) and, in place, the lines after it up to its last newline.
    (Hyperscan's streaming and vectored modes would save the join, but can miss a match when
    the pieces are small.)

    A hit is ``stop << 1 | reserved``: where a match ends, counted from the first byte fed, and
    whether a reserved-token pattern matched (rather than one of ``extra``). Hits come in the
    order of their lines. A line growing past ``max_line`` bytes before its newline is dropped
    unscanned, as the validator skips it. Feed from one thread at a time; call finish() after
    the last chunk for the line left without a newline.
    """

    def __init__(self, extra: Sequence[bytes] = (), max_line: int = 1 << 62) -> None:
        import hyperscan

        self._database = _line_database(tuple(extra))
        # Scratch space is per scan: another validation in this process may scan at the same time.
        self._scratch = hyperscan.Scratch(self._database)
        self._max_line = max_line
        self._hits: list[int] = []
        self._base = 0  # the offset of the block being scanned
        self._pieces: list[bytes] = []  # the line begun and not yet ended
        self._size = 0  # bytes in the pieces
        self._at = 0  # the offset of the next chunk
        self._skipping = False

    def _on_match(self, pattern: int, _start: int, stop: int, _flags: int, _ctx: Any) -> None:
        self._hits.append((self._base + stop) << 1 | (pattern < _RESERVED_COUNT))

    def _scan(self, block: Any, base: int) -> None:
        self._base = base
        self._database.scan(block, match_event_handler=self._on_match, scratch=self._scratch)

    def feed(self, chunk: bytes) -> list[int]:
        """The hits in the lines that end in ``chunk``."""
        chunk_at, self._at = self._at, self._at + len(chunk)
        start = 0
        if self._skipping:
            start = chunk.find(b"\n") + 1
            if start == 0:
                return []
            self._skipping = False
        first = chunk.find(b"\n", start) + 1
        if first == 0:
            if not self._pieces:
                self._base = chunk_at + start
            self._pieces.append(chunk[start:])
            self._size += len(chunk) - start
            # The validator skips such a line too; a byte order mark it strips is counted here.
            if self._size > self._max_line + 3:
                self._pieces, self._size, self._skipping = [], 0, True
            return []
        if self._pieces:
            base = self._base
            self._scan(b"".join([*self._pieces, chunk[start:first]]), base)
        else:
            self._scan(memoryview(chunk)[start:first], chunk_at + start)
        cut = chunk.rfind(b"\n") + 1
        if cut > first:
            self._scan(memoryview(chunk)[first:cut], chunk_at + first)
        self._pieces = [chunk[cut:]] if cut < len(chunk) else []
        self._size = len(chunk) - cut
        self._base = chunk_at + cut
        hits, self._hits = self._hits, []
        return hits

    def finish(self) -> list[int]:
        """The hits in the last line, when the data does not end with a newline."""
        if self._pieces:
            self._scan(b"".join(self._pieces), self._base)
        self._pieces, self._size = [], 0
        hits, self._hits = self._hits, []
        return hits


def stream_scan_available() -> bool:
    """Whether StreamScan works here (Hyperscan is installed)."""
    try:
        import hyperscan  # noqa: F401
    except ImportError:
        return False
    return True
