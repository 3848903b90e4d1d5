"""Can one triggerer carry 1,000 waiting jobs? Runs N JobTriggers in ONE event loop.

Every trigger waits for its own fake job (``FakeBackend``, defined here and importable as
``trigger_load:FakeBackend``, the way a triggerer rebuilds a backend from its config). The jobs
end at staggered times within ``--seconds``; each poll asks the backend for the status and
new log lines through the executor, as against a real cluster. Prints polls per second, CPU
time per poll, peak RSS and RSS per trigger, and whether every trigger fired its event.

    .venv/bin/python benchmarks/trigger_load.py [--triggers 1000] [--seconds 20]
                                                [--poll-interval 1]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import resource
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")

from tuneloop.jobs.base import JobSpec, JobState, JobStatus, LogChunk

POLLS = itertools.count()
"""Status calls made, over all backends (itertools.count is safe across executor threads)."""


class FakeBackend:
    """Job ``job-<i>`` runs from ``started`` until ``started + seconds * (0.5 + 0.4 * i / n)``;
    its log grows by one line a second. Stateless, so any number of instances agree."""

    type: ClassVar[str] = "trigger_load:FakeBackend"

    def __init__(self, started: float, seconds: float, jobs: int) -> None:
        self.started, self.seconds, self.jobs = started, seconds, jobs

    def config(self) -> dict[str, Any]:
        return {"type": self.type, "started": self.started, "seconds": self.seconds,
                "jobs": self.jobs}  # fmt: skip

    def _ends(self, name: str) -> float:
        index = int(name.rsplit("-", 1)[1])
        return self.started + self.seconds * (0.5 + 0.4 * index / self.jobs)

    def submit(self, spec: JobSpec) -> JobStatus:
        return self.status(spec.name)

    def status(self, name: str) -> JobStatus:
        next(POLLS)
        done = time.time() >= self._ends(name)
        state = JobState.SUCCEEDED if done else JobState.RUNNING
        return JobStatus(name=name, state=state, result_uri=f"fake://{name}")

    def cancel(self, name: str) -> JobStatus:
        return JobStatus(name=name, state=JobState.STOPPED)

    def logs(self, name: str, cursor: str = "") -> LogChunk:
        seen = int(cursor or 0)
        now = int(min(time.time(), self._ends(name)) - self.started)
        return LogChunk(lines=[f"step {i}" for i in range(seen + 1, now + 1)], cursor=str(now))

    def find(self, labels: Mapping[str, str]) -> list[JobStatus]:
        return []


def rss_mb() -> float:
    """Current resident set size (Linux /proc), in MB."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def main(triggers: int, seconds: float, poll_interval: float) -> int:
    from tuneloop.pipeline.triggers import SUCCESS, JobTrigger

    config = FakeBackend(time.time() + 1.0, seconds, triggers).config()
    before = rss_mb()
    waits = [JobTrigger(config, f"job-{i}", poll_interval=poll_interval) for i in range(triggers)]
    cpu_start, wall_start = time.process_time(), time.monotonic()

    async def wait(trigger: JobTrigger) -> bool:
        async for event in trigger.run():
            return event.payload["outcome"] == SUCCESS
        return False

    tasks = [asyncio.create_task(wait(t)) for t in waits]
    await asyncio.sleep(min(2.0, seconds / 4))
    during = rss_mb()
    fired = await asyncio.wait_for(asyncio.gather(*tasks), timeout=seconds * 3 + 30)
    cpu, wall = time.process_time() - cpu_start, time.monotonic() - wall_start
    # The triggers' backends live in the module a triggerer would import (trigger_load), not
    # in this script's __main__: count their polls there.
    import trigger_load

    polls = next(trigger_load.POLLS)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"triggers:            {triggers} in one event loop")
    print(f"wall time:           {wall:.1f} s (jobs end within {seconds:g} s)")
    print(f"polls:               {polls} ({polls / wall:.0f}/s, poll interval {poll_interval:g} s)")
    print(f"CPU per poll:        {cpu / max(1, polls) * 1e3:.3f} ms ({cpu:.1f} s CPU in all)")
    print(f"peak RSS:            {peak:.0f} MB")
    print(f"RSS per trigger:     {(during - before) * 1024 / triggers:.1f} KB while waiting")
    print(f"every trigger fired: {all(fired)} ({sum(fired)}/{triggers} success events)")
    return 0 if all(fired) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--triggers", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--poll-interval", type=float, default=1.0)
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.triggers, args.seconds, args.poll_interval)))
