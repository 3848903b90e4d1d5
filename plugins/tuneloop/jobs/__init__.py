"""Job backends: local, hyperpod and smtj behind one protocol (see ``base``).

Backends are imported only when built, so importing this package costs nothing at DAG parse
time (kubernetes and boto3 load inside the backend modules' functions).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from tuneloop.errors import Problem, TuneloopError

if TYPE_CHECKING:  # the package itself stays light: DAG files import it
    from tuneloop.jobs.base import JobBackend

BACKENDS = {
    "local": "tuneloop.jobs.local:LocalJobBackend",
    "hyperpod": "tuneloop.jobs.hyperpod:HyperPodJobBackend",
    "smtj": "tuneloop.jobs.smtj:TrainingJobsBackend",
}


def make_backend(config: dict[str, Any]) -> JobBackend:
    """The backend described by ``config`` (what a backend's ``config()`` returned).

    ``config["type"]`` is one of BACKENDS, or ``module:Class`` for a backend of your own.
    """
    kind = str(config.get("type", ""))
    target = BACKENDS.get(kind, kind if ":" in kind else "")
    if not target:
        raise TuneloopError(
            [
                Problem(
                    "backend.type",
                    f"unknown backend {kind!r}",
                    fix=f"use one of {', '.join(BACKENDS)}",
                )
            ]
        )
    module, _, name = target.partition(":")
    cls = getattr(import_module(module), name)
    settings = {k: v for k, v in config.items() if k != "type"}
    return cls(**settings)
