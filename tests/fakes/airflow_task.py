"""Make this process look like one running an Airflow task, to tuneloop.aws as to Airflow itself.

Inside a task, the Task SDK sets ``task_runner.SUPERVISOR_COMMS``; hooks then read connections
through the secrets backends of a worker, the environment's (``AIRFLOW_CONN_<ID>``) first. A test
that defines its connections in the environment needs no supervisor behind the channel: anything
sent on it fails, and the connection look-up goes on to the next backend.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class NoSupervisor:
    """A supervisor channel with no supervisor behind it."""

    def send(self, *_: Any, **__: Any) -> Any:
        raise ConnectionError("no Airflow supervisor in this test")

    async def asend(self, *_: Any, **__: Any) -> Any:
        raise ConnectionError("no Airflow supervisor in this test")


@contextmanager
def inside_a_task() -> Iterator[None]:
    """While open, ``tuneloop.aws.in_airflow()`` is True and hooks read connections."""
    from airflow.sdk.execution_time.supervisor import set_supervisor_comms

    with set_supervisor_comms(NoSupervisor()):
        yield
