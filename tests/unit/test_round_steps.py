"""The round DAG's steps as plain functions: job specs, names, skipped stages, shown metrics."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneloop import round_steps
from tuneloop.campaign import job_backend_config
from tuneloop.jobs.base import JobSpec
from tuneloop.plan import plan_round
from tuneloop.round_record import shown_metrics

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "recipes" / "campaigns" / "demo.yaml"


@pytest.fixture
def demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TUNELOOP_PROJECT_DIR", str(tmp_path))
    return round_steps.load(str(DEMO))


def test_local_paths_are_made_absolute_against_the_project_dir(demo, tmp_path: Path) -> None:
    assert demo.campaign.backend.output_root == str(tmp_path / ".tuneloop")
    config = job_backend_config(demo.campaign)
    assert config == {"type": "local", "root": str(tmp_path / ".tuneloop" / "demo" / "jobs")}


def test_a_stage_job_digests_recipe_and_inputs_and_names_the_run(demo) -> None:
    plan = plan_round(demo, round_number=2, offline=True)
    first = round_steps.stage_job(plan, 0, "tiny-chat")
    spec = JobSpec.model_validate(first)
    assert spec.name.startswith("demo-r2-sft-") and spec.kind == "train"
    assert spec.recipe["run"]["name"] == spec.name
    assert spec.labels == {"campaign": "demo", "round": "2", "stage": "sft"}
    assert round_steps.stage_job(plan, 0, "tiny-chat") == first
    other = round_steps.stage_job(plan, 0, "/elsewhere/checkpoint")
    assert other["name"] != first["name"]
    assert round_steps.stage_job(plan, 1, "x", stages=["sft"]) is None


def test_the_baseline_job_is_the_same_in_every_round(demo) -> None:
    names = {
        round_steps.baseline_job(demo, plan_round(demo, round_number=n, offline=True))["name"]
        for n in (1, 2, 5)
    }
    assert len(names) == 1 and next(iter(names)).startswith("demo-r0-baseline-")


def test_the_report_shows_the_campaigns_metrics(demo) -> None:
    record = {"metrics": {"exact_match": 0.5, "bleu": 0.1, "rougeL": 0.7}, "baseline": {"em": 0}}
    shown = shown_metrics(demo, record)
    assert shown["metrics"] == {"exact_match": 0.5, "rougeL": 0.7}
    assert shown["baseline"] == {}


def test_an_unknown_stage_in_the_conf_is_refused(demo, tmp_path: Path) -> None:
    with pytest.raises(round_steps.RoundError, match=r"unknown stage 'dpo'.*allowed: sft, rft"):
        round_steps.start_round(demo, {"stages": ["dpo"]})
