"""The states of a job, shared by the local runner and the job protocol (``tuneloop.jobs``).

They live here, in the lowest layer that needs them: the runner (and the job processes it
starts) must not import the job protocol, which sits above it; ``tuneloop.jobs.state`` gives
the protocol the same enum. Standard library only.
"""

from __future__ import annotations

import enum


class JobState(enum.StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    STOPPED = "STOPPED"

    @property
    def final(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.STOPPED)
