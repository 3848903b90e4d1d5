"""The exit codes of every `tuneloop` command (one module, so that command groups need not
import each other)."""

from __future__ import annotations

EXIT_OK = 0
EXIT_INVALID = 1
"""The input was read and found wanting (an invalid dataset), or a followed job failed."""
EXIT_USAGE = 2
"""A user error: bad file, bad value, incompatible plan."""
