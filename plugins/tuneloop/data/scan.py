"""Find the lines of a chunk that may hold a reserved token, in one pass over the raw bytes.

Tokens are rare, so searching each 8 MB chunk once and checking only the lines with a hit costs
far less than searching every text of every record. Hyperscan (x86-64) matches all tokens in one
SIMD pass at several GB/s; elsewhere Python's `re` does the same job more slowly.

With Hyperscan, `StreamScan` also runs in the thread that reads the file, with more patterns
(those of a format's quick path): a scan releases the GIL, so it costs the validating thread
nothing, and a stream finds matches across chunk boundaries. It reports where each match ends,
counted from the start of the stream; the validator maps those offsets to lines.
"""

from __future__ import annotations

import re
import threading
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


_CLOSING = threading.Lock()


@cache
def _stream_database(extra: tuple[bytes, ...]) -> Any:
    """The reserved-token patterns plus ``extra``, compiled once per process for streams."""
    import hyperscan

    patterns = [*_PATTERNS, *extra]
    database = hyperscan.Database(mode=hyperscan.HS_MODE_STREAM)
    database.compile(expressions=patterns, ids=list(range(len(patterns))), flags=0)
    return database


class StreamScan:
    """One Hyperscan stream over a file (or a byte range of one), fed chunk by chunk.

    A hit is ``stop << 1 | reserved``: the end offset of a match, counted from the first byte
    fed, and whether a reserved-token pattern matched (rather than one of ``extra``). Hits keep
    the order of their offsets. Feed from one thread at a time.
    """

    def __init__(self, extra: Sequence[bytes] = ()) -> None:
        import hyperscan

        database = _stream_database(tuple(extra))
        # Scratch space is per scan: another validation in this process may scan at the same time.
        self._scratch = hyperscan.Scratch(database)
        self._hits: list[int] = []
        self._collect = self._on_match  # the stream keeps a borrowed reference: hold it here
        self._stream = database.stream(match_event_handler=self._collect)
        self._stream.__enter__()  # opens the stream; close() ends it

    def _on_match(self, pattern: int, _start: int, stop: int, _flags: int, _ctx: Any) -> None:
        self._hits.append(stop << 1 | (pattern < _RESERVED_COUNT))

    def feed(self, chunk: bytes) -> list[int]:
        """The hits of the matches that end in ``chunk``."""
        self._stream.scan(chunk, scratch=self._scratch)
        hits, self._hits = self._hits, []
        return hits

    def close(self) -> None:
        # Closing uses the database's own scratch space (passing another one is broken in
        # python-hyperscan 0.9), which streams of other validations share: one at a time.
        with _CLOSING:
            self._stream.close()


def stream_scan_available() -> bool:
    """Whether StreamScan works here (Hyperscan is installed)."""
    try:
        import hyperscan  # noqa: F401
    except ImportError:
        return False
    return True
