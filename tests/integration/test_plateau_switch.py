"""Technique switching end to end: an [sft, rft] campaign that plateaus runs RFT alone, then SFT
alone, each round being the run the round before it triggered (Airflow's dag.test()).

Jobs run on the local backend as real job processes; the instant entry point
(``fakes.instant_jobs``) writes a training job's checkpoint (with its lineage) at once and
reports the evaluation metrics this test scripts per round, so a round takes seconds.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from tuneloop.local.demo_task import write_demo_data

DAGS = Path(__file__).resolve().parent / "dags"
TESTS = Path(__file__).resolve().parents[1]
# The test DAG file builds a DAG per campaign file in this folder (shared with test_rounds).
CAMPAIGNS = Path(os.environ.setdefault("TUNELOOP_TEST_CAMPAIGNS", tempfile.mkdtemp()))
SIZES = {"train": 40, "validation": 8, "test": 8, "eval": 16, "rft": 16, "cpt": 8}

pytestmark = pytest.mark.slow

NAME = "switcher"
BASE_MODEL_SCORE = 0.5
# Every round gains 0.001, under min_improvement (0.01): each stage set plateaus after two
# rounds (plateau_rounds 2), and max_rounds (5) ends the campaign.
ROUND_SCORES = {1: 0.501, 2: 0.502, 3: 0.503, 4: 0.504, 5: 0.505}


@pytest.fixture
def campaign_file(tmp_path: Path) -> Iterator[Path]:
    data = tmp_path / "data"
    write_demo_data(data, sizes=SIZES)
    path = CAMPAIGNS / f"{NAME}.yaml"
    path.write_text(
        f"""
name: {NAME}
backend:
  type: local
  output_root: {tmp_path}
  entrypoint: fakes.instant_jobs:run
  python_path: [{TESTS}]
model_type: local.tiny-chat-v1
technique: full
stages:
  - method: sft
    recipe: local/sft-full.yaml
    datasets: {{train: {data}/sft-train.jsonl}}
  - method: rft
    recipe: local/rft-full.yaml
    datasets: {{train: {data}/rft-train.jsonl}}
    reward_function: tuneloop.local.demo_task:reward
evaluation:
  recipe: local/eval-gen-qa.yaml
  dataset: {data}/eval.jsonl
  metrics: [exact_match]
gate:
  primary_metric: exact_match
  min_improvement: 0.01
  plateau_rounds: 2
  max_rounds: 5
""",
        encoding="utf-8",
    )
    script: dict[str, Any] = {"*": {"metrics": {"exact_match": BASE_MODEL_SCORE}}}
    for number, score in ROUND_SCORES.items():
        script[f"round={number},stage=eval"] = {"metrics": {"exact_match": score}}
    fake_jobs = tmp_path / "fake-jobs.json"
    fake_jobs.write_text(json.dumps(script), encoding="utf-8")
    os.environ["TUNELOOP_FAKE_JOBS"] = str(fake_jobs)
    yield tmp_path / NAME
    path.unlink()


def round_dag() -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS / "tuneloop_test_rounds.py"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags[f"tuneloop_{NAME}"]


def triggered_conf(run_id: str) -> dict[str, Any] | None:
    """The conf of the run a round's next_round or rollback task triggered (None: none)."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        run = session.query(DagRun).filter_by(dag_id=f"tuneloop_{NAME}", run_id=run_id)
        found = run.one_or_none()
        return None if found is None else dict(found.conf or {})


def task_states(run: Any) -> dict[str, str]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(TaskInstance).filter_by(dag_id=run.dag_id, run_id=run.run_id)
        return {ti.task_id: str(ti.state) for ti in rows}


def test_plateaus_switch_from_every_stage_to_rft_then_sft(
    airflow_db: Path, campaign_file: Path
) -> None:
    from tuneloop.rounds.ledger import Ledger

    conf: dict[str, Any] = {}
    trained: dict[int, set[str]] = {}
    for number in ROUND_SCORES:
        run = round_dag().test(run_conf=conf, logical_date=None)
        assert run.state == "success", number
        states = task_states(run)
        trained[number] = {s for s in ("sft", "rft") if states[f"train_{s}"] == "success"}
        following = triggered_conf(f"round_{number + 1:04d}__after_{number:04d}")
        if number < max(ROUND_SCORES):
            assert following is not None, number
            conf = following

    records = Ledger(str(campaign_file)).records()
    assert [r.round for r in records] == [1, 2, 3, 4, 5]
    ran = [[s.name for s in r.stages] for r in records]
    assert ran == [["sft", "rft"], ["sft", "rft"], ["rft"], ["rft"], ["sft"]]
    assert [sorted(trained[n]) for n in ROUND_SCORES] == [sorted(stages) for stages in ran]
    actions = [r.decision.action.value for r in records]
    assert actions == ["continue", "continue", "continue", "continue", "stop"]
    assert records[1].decision.next_stages == ["rft"]
    assert records[1].decision.reason.endswith(
        "exact_match improved by less than 0.01 for 2 rounds in a row, so round 3 switches "
        "from SFT + RFT to RFT (stages: rft), starting from its checkpoint."
    )
    assert records[3].decision.next_stages == ["sft"]
    assert records[3].decision.reason.endswith(
        "exact_match improved by less than 0.01 for 2 rounds in a row, so round 5 switches "
        "from RFT to SFT (stages: sft), starting from its checkpoint."
    )
    assert records[4].decision.reason.endswith(
        "the campaign stops with round 5 as the champion: max_rounds 5 reached."
    )
    # Each round started from the checkpoint of the round before it, so the last checkpoint's
    # lineage holds every stage each round ran.
    for earlier, later in pairwise(records):
        assert later.base == earlier.stages[-1].output_uri
    lineage = records[4].stages[-1].checkpoint.lineage
    assert [m.value for m in lineage] == [name for stages in ran for name in stages]
    assert triggered_conf("round_0006__after_0005") is None
