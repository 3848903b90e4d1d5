"""Campaign files for the end-to-end tests, and what their rounds leave behind.

Every test writes its own campaign file (so it gets its own DAG, ``tuneloop_<name>``) into the
campaigns folder the running dag-processor reads. The campaigns use the local backend with the
instant fake trainer (``fakes.instant_jobs``): a job writes a real job's outputs at once, and the
metrics each evaluation reports are scripted per campaign, round and stage in the file the
workers' ``TUNELOOP_FAKE_JOBS`` names (``FakeJobs``).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parents[1]

DATA_SIZES = {"train": 40, "validation": 8, "test": 8, "eval": 16, "rft": 16, "cpt": 8}
"""Small datasets: validation takes a moment, the fake jobs ignore their content."""

DEFAULT_GATE = {
    "primary_metric": "exact_match",
    "targets": {"exact_match": 0.9},
    "regression_tolerance": 0.02,
    "max_rounds": 5,
}


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` so that a reader (the dag-processor) never sees half a file: into a hidden
    temporary name it ignores, then renamed over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


class FakeJobs:
    """The script of the fake trainer (the JSON file ``TUNELOOP_FAKE_JOBS`` names on every
    worker): selectors of job labels -> what such a job does (see tests/fakes/instant_jobs.py).

    Jobs read the file when they start, so a test may add entries while the stack runs.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        if not path.exists():
            write_atomically(path, "{}")

    def entries(self) -> dict[str, Any]:
        return dict(json.loads(self.path.read_text(encoding="utf-8")))

    def add(self, selector: str, entry: dict[str, Any]) -> None:
        """Add (or replace) one entry; later entries win where several match a job."""
        with self._lock:
            entries = self.entries()
            entries.pop(selector, None)
            entries[selector] = entry
            write_atomically(self.path, json.dumps(entries, indent=1))

    def metrics(self, campaign: str, base: float, rounds: dict[int, float]) -> None:
        """Every evaluation of ``campaign`` reports ``exact_match = base`` (the base model's
        too), except round n's, which reports ``rounds[n]``."""
        self.add(f"campaign={campaign}", {"metrics": {"exact_match": base}})
        for number, value in rounds.items():
            self.add(
                f"campaign={campaign},round={number},stage=eval",
                {"metrics": {"exact_match": value}},
            )


SFT_THEN_RFT = ("sft", "rft")
"""The demo campaign's stages: a round trains twice, then evaluates."""
SFT_ONLY = ("sft",)
"""One training stage: a round of a test whose scenario does not need a second stage, about a
fifth shorter (a training task, its checkpoint task and a dataset to validate fewer)."""


def _stage(method: str, data: Path) -> dict[str, Any]:
    """The campaign file's section for a stage of ``method`` (sft or rft) on the demo data."""
    if method == "sft":
        return {
            "method": "sft",
            "recipe": "local/sft-full.yaml",
            "datasets": {
                "train": str(data / "sft-train.jsonl"),
                "validation": str(data / "sft-validation.jsonl"),
            },
        }
    return {
        "method": "rft",
        "recipe": "local/rft-full.yaml",
        "datasets": {"train": str(data / "rft-train.jsonl")},
        "reward_function": "tuneloop.local.demo_task:reward",
    }


def campaign_text(
    name: str,
    *,
    output_root: Path,
    data: Path,
    mlflow_uri: str,
    gate: dict[str, Any] | None = None,
    stages: tuple[str, ...] = SFT_THEN_RFT,
) -> str:
    """A campaign like recipes/campaigns/demo.yaml (SFT then RFT of local.tiny-chat-v1, then an
    evaluation; ``stages=SFT_ONLY``: SFT, then the evaluation), on the local backend with the
    instant fake trainer, tracked in ``mlflow_uri``."""
    gate = {**DEFAULT_GATE, **(gate or {})}
    document = {
        "name": name,
        "description": f"end-to-end test campaign {name}",
        "backend": {
            "type": "local",
            "output_root": str(output_root),
            "mlflow_uri": mlflow_uri,
            "entrypoint": "fakes.instant_jobs:run",
            "python_path": [str(TESTS)],
        },
        "model_type": "local.tiny-chat-v1",
        "technique": "full",
        "stages": [_stage(method, data) for method in stages],
        "evaluation": {
            "recipe": "local/eval-gen-qa.yaml",
            "dataset": str(data / "eval.jsonl"),
            "metrics": ["exact_match"],
        },
        "gate": gate,
    }
    # JSON is YAML: no quoting questions for paths and URIs.
    return json.dumps(document, indent=2) + "\n"


class Campaign:
    """One campaign file of a test, its DAG and its outputs."""

    def __init__(self, name: str, path: Path, output_root: Path) -> None:
        self.name = name
        self.path = path
        self.output_root = output_root

    @property
    def dag_id(self) -> str:
        return "tuneloop_" + self.name.replace("-", "_")

    @property
    def root(self) -> Path:
        """The campaign's folder under its output root (ledger, jobs, reports)."""
        return self.output_root / self.name

    def record_path(self, number: int) -> Path:
        return self.root / "rounds" / f"{number:04d}.json"

    def record(self, number: int) -> Any:
        """Round ``number``'s ledger record."""
        from tuneloop.rounds.ledger import Ledger

        return Ledger(str(self.root)).read(number)

    def backend(self) -> Any:
        """The job backend the campaign's jobs run on, built from the campaign file as the round
        tasks build it."""
        from tuneloop.config.backend import job_backend_config
        from tuneloop.config.file import load_campaign
        from tuneloop.jobs import make_backend

        return make_backend(job_backend_config(load_campaign(self.path).campaign))

    def jobs(self, **labels: str) -> list[Any]:
        """The campaign's jobs (JobStatus, oldest first) whose labels match ``labels``."""
        return self.backend().find({"campaign": self.name, **labels})
