"""The lifecycle DAG with Airflow's dag.test(): one per campaign, started daily or by the
campaign's rounds Asset; its first run only plans, later runs apply.

Rounds run on the local backend with the instant fake jobs (as in test_rounds.py): stage
folders are small, so the campaigns here archive whatever their size (min_archive_bytes 0).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
from test_rounds import (  # noqa: F401  (fixtures)
    DAGS,
    GATE,
    Campaign,
    _own_campaign_files,
    campaign_text,
    data,
)

REPO = DAGS.parents[2]
RETENTION = "retention:\n  keep_last: 1\n  min_archive_bytes: 0\n"
METRICS = {1: 0.5, 2: 0.6, 3: 0.7}


def lifecycle_dag(campaign: Campaign) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS / "tuneloop_test_lifecycle.py"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags[f"{campaign.dag_id}_lifecycle"]


def two_rounds(name: str, tmp_path: Path, data: Path) -> Campaign:  # noqa: F811
    """A campaign that keeps the last round only, after two rounds (round 2 the champion)."""
    text = campaign_text(name, tmp_path, data, GATE) + RETENTION
    campaign = Campaign(name, tmp_path, text, dict(METRICS))
    first = campaign.run()
    assert first.state == "success"
    conf = campaign.triggered("round_0002__after_0001")
    assert conf is not None
    second = campaign.run(conf)
    assert second.state == "success"
    assert campaign.ledger().champion().round == 2
    # Round 2 started from round 1, which is where it was: restore_base had nothing to do, and
    # did it at once.
    assert campaign.xcom(second, "plan_round", key="restore") == {}
    restored = campaign.xcom(second, "restore_base")
    assert restored == {"base_round": None, "restored": [], "waited_for": []}
    assert campaign.task_states(second)["restore_base"] == "success"
    return campaign


def test_the_lifecycle_dag_of_the_demo_campaign() -> None:
    """Daily or after a round is recorded (the Asset the round DAG's decide updates), one run
    at a time, no catch-up, an optional apply param; built without a warning from Airflow."""
    from airflow.sdk import Asset

    from tuneloop.pipeline.dag import campaign_dag
    from tuneloop.pipeline.lifecycle_dag import lifecycle_dag as build

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dag = build(REPO / "recipes" / "campaigns" / "demo.yaml")
        rounds = campaign_dag(REPO / "recipes" / "campaigns" / "demo.yaml")
    assert dag.dag_id == "tuneloop_demo_lifecycle"
    assert dag.max_active_runs == 1 and dag.catchup is False
    assert set(dag.task_dict) == {"plan_lifecycle", "apply_lifecycle", "mirror_lifecycle"}
    assert dag.task_dict["plan_lifecycle"].downstream_task_ids == {
        "apply_lifecycle",
        "mirror_lifecycle",
    }
    assert dag.task_dict["apply_lifecycle"].downstream_task_ids == {"mirror_lifecycle"}
    asset = Asset("x-tuneloop://demo/rounds")
    assert rounds.task_dict["decide"].outlets == [asset]
    timetable: Any = dag.timetable
    assert type(timetable).__name__ == "AssetOrTimeSchedule"
    assert timetable.timetable.expression == "0 0 * * *"
    assert list(timetable.asset_condition.objects) == [asset]
    param = dag.params.get_param("apply")
    assert param.value is None and "null" in param.schema["type"]
    dag.params.validate()
    # restore_base sits between proceed and the first training stage (after it, the reward
    # probe of the demo's RFT stage).
    assert rounds.task_dict["restore_base"].upstream_task_ids >= {"proceed"}
    assert rounds.task_dict["restore_base"].downstream_task_ids == {"probe_reward"}
    assert rounds.task_dict["probe_reward"].downstream_task_ids == {"train_sft"}


def test_the_repository_campaigns_have_lifecycle_dags(airflow_db: Path) -> None:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags" / "tuneloop_lifecycle.py"))
    assert not bag.import_errors
    assert "tuneloop_demo_lifecycle" in bag.dags
    assert all(dag_id.endswith("_lifecycle") for dag_id in bag.dags)


def test_a_broken_campaign_is_reported_once(
    airflow_db: Path,
    tmp_path: Path,
    data: Path,  # noqa: F811  (the fixture imported above)
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A broken campaign file gets neither DAG; only the round DAG file reports it (a second
    report from the lifecycle file would repeat the same import error)."""
    import structlog
    from airflow.dag_processing.dagbag import DagBag
    from airflow.dag_processing.processor import _serialize_dags

    folder = tmp_path / "campaigns"
    folder.mkdir()
    (folder / "good.yaml").write_text(campaign_text("good", tmp_path, data, GATE))
    (folder / "broken.yaml").write_text(
        campaign_text("broken", tmp_path, data, GATE).replace("technique: full", "technique: x")
    )
    (folder / "zcopy.yaml").write_text(campaign_text("good", tmp_path, data, GATE))
    monkeypatch.setenv("TUNELOOP_CAMPAIGNS_DIR", str(folder))

    bag = DagBag(dag_folder=str(REPO / "dags" / "tuneloop_lifecycle.py"))
    assert bag.import_errors == {}
    serialized, errors = _serialize_dags(bag, structlog.get_logger())
    assert [dag.dag_id for dag in serialized] == ["tuneloop_good_lifecycle"]
    assert errors == {}


def test_should_apply() -> None:
    from tuneloop.lifecycle.records import LifecyclePlan
    from tuneloop.pipeline.lifecycle_dag import should_apply

    def plan(*, first: bool, acting: bool) -> LifecyclePlan:
        action = {
            "artifact": {
                "uri": "/tmp/x",
                "round": 1,
                "stage": "sft",
                "kind": "checkpoint",
                "owner": "local",
                "bytes": 1,
            },
            "action": "archive" if acting else "keep",
            "reason": "r",
        }
        return LifecyclePlan.model_validate(
            {
                "campaign": "c",
                "sequence": 1 if first else 2,
                "archive_storage_class": "GLACIER",
                "delete_intermediates": False,
                "keep_last": 1,
                "region": "us-east-1",
                "prices_source": "s",
                "retained": [],
                "actions": [action],
                "monthly_cost_before": 0,
                "monthly_cost_after": 0,
                "first": first,
            }
        )

    assert should_apply(plan(first=True, acting=True), None)[0] is False
    assert "first lifecycle plan" in should_apply(plan(first=True, acting=True), None)[1]
    assert should_apply(plan(first=True, acting=True), True)[0] is True
    assert should_apply(plan(first=False, acting=True), None)[0] is True
    assert should_apply(plan(first=False, acting=True), False)[0] is False
    assert should_apply(plan(first=False, acting=False), True) == (
        False,
        "the plan archives and deletes nothing",
    )


@pytest.mark.slow
def test_the_first_run_plans_and_the_second_applies(
    airflow_db: Path,
    tmp_path: Path,
    data: Path,  # noqa: F811  (the fixture imported above)
) -> None:
    """Two rounds, keep_last 1: round 1 is a candidate. The campaign's first lifecycle run
    records a plan and moves nothing; the second archives round 1's stage folders into
    tarballs under archive/ and removes the folders."""
    from tuneloop.lifecycle.store import LifecycleStore

    campaign = two_rounds("lifedag", tmp_path, data)
    one = campaign.ledger().read(1)
    folders = [Path(stage.output_uri) for stage in one.stages]
    assert all(folder.is_dir() for folder in folders)
    dag = lifecycle_dag(campaign)

    first = dag.test(run_conf={}, logical_date=None)
    assert first.state == "success"
    states = _states(dag.dag_id, first.run_id)
    assert states == {
        "plan_lifecycle": "success",
        "apply_lifecycle": "skipped",
        "mirror_lifecycle": "success",
    }
    store = LifecycleStore(str(tmp_path / campaign.name))
    plans = store.plans()
    assert [p.sequence for p in plans] == [1] and plans[0].first
    archived = {a.artifact.uri.rstrip("/") for a in plans[0].actions if a.action == "archive"}
    assert {str(f) for f in folders} <= archived
    assert store.applies() == []
    assert all(folder.is_dir() for folder in folders)  # nothing moved
    assert not (tmp_path / campaign.name / "archive").exists()

    second = dag.test(run_conf={}, logical_date=None)
    assert second.state == "success"
    assert _states(dag.dag_id, second.run_id)["apply_lifecycle"] == "success"
    assert [p.sequence for p in store.plans()] == [1, 2]
    (report,) = store.applies()
    assert report.sequence == 2
    assert {r.outcome for r in report.results if r.uri.rstrip("/") in archived} == {"archived"}
    for folder in folders:
        assert not folder.exists()
    tarballs = list((tmp_path / campaign.name / "archive").rglob("*.tar.gz"))
    assert len(tarballs) >= len(folders)
    # Round 2 (champion, last round, next base) is untouched.
    assert all(Path(s.output_uri).is_dir() for s in campaign.ledger().read(2).stages)


def _states(dag_id: str, run_id: str) -> dict[str, str]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(TaskInstance).filter_by(dag_id=dag_id, run_id=run_id)
        return {ti.task_id: str(ti.state) for ti in rows}
