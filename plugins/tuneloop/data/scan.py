"""Find the lines of a chunk that may hold a reserved token, in one pass over the raw bytes.

Tokens are rare, so searching each 8 MB chunk once and checking only the lines with a hit costs
far less than searching every text of every record. Hyperscan (x86-64) matches all tokens in one
SIMD pass at several GB/s; elsewhere Python's `re` does the same job more slowly.
"""

from __future__ import annotations

import re
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
