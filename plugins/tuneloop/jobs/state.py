"""The states of a job (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED), as the job protocol
names them.

The enum is defined in ``tuneloop.local.state``: the local runner needs it too and must not
import the protocol above it. Standard library only.
"""

from __future__ import annotations

from tuneloop.local.state import JobState

__all__ = ["JobState"]
