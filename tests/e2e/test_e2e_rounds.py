"""Rounds under the real scheduler: Celery workers run the tasks, the triggerer waits on the
jobs, PostgreSQL holds the state. Driven as a user drives Airflow: the REST API and the CLI.

Each test writes its own campaign file (its own DAG); the fake trainer's metrics are scripted per
campaign and round, so the gate's decisions are known in advance.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

from tuneloop.jobs.state import JobState

if TYPE_CHECKING:
    from e2e.conftest import Stack

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(900)]


def plan_of(stack: Stack, dag_id: str, run_id: str) -> dict[str, Any]:
    """What plan_round decided for a run (its XCom ``round``)."""
    return dict(stack.client.xcom(dag_id, run_id, "plan_round", key="round"))


def test_round_continues_into_the_round_it_triggers(stack: Stack) -> None:
    """A round triggered with an empty conf runs to decide, records itself in the ledger and
    triggers the next round, which starts from the conf next_round gave it (round 2, on round
    1's checkpoint) and finishes the campaign."""
    campaign = stack.write_campaign("e2e-chain")
    stack.fake_jobs.metrics(campaign.name, base=0.1, rounds={1: 0.5, 2: 0.95})
    stack.wait_for_dag(campaign.dag_id)
    dag_id = campaign.dag_id

    first = stack.client.trigger(dag_id, {})["dag_run_id"]
    stack.wait_for_run(dag_id, first)
    states = stack.task_states(dag_id, first)
    assert states["decide"] == "success"
    assert states["next_round"] == "success"
    assert states["rollback"] == "skipped" and states["finish"] == "skipped"

    assert campaign.record_path(1).is_file()
    one = campaign.record(1)
    assert one.round == 1 and one.decision.action == "continue"
    assert one.metrics["exact_match"] == 0.5 and one.baseline["exact_match"] == 0.1
    checkpoint = one.stages[-1].output_uri

    # next_round triggered the run decide named, with the conf decide computed.
    second = stack.client.xcom(dag_id, first, "decide", key="next_run_id")
    next_conf = stack.client.xcom(dag_id, first, "decide", key="next_conf")
    assert next_conf["base_checkpoint"] == checkpoint and next_conf["rollback"] is False
    triggered = stack.client.dag_run(dag_id, second)
    assert {k: triggered["conf"].get(k) for k in next_conf} == next_conf

    stack.wait_for_run(dag_id, second)
    plan = plan_of(stack, dag_id, second)
    assert plan["start"]["round"] == 2
    assert plan["start"]["base_output_uri"] == checkpoint
    assert plan["start"]["base_round"] == 1

    two = campaign.record(2)
    assert two.base_round == 1 and two.base == checkpoint
    assert two.decision.action == "finish" and two.metrics["exact_match"] == 0.95
    states = stack.task_states(dag_id, second)
    assert states["finish"] == "success" and states["next_round"] == "skipped"

    # The campaign finished: no third round was triggered.
    assert [r["dag_run_id"] for r in stack.client.dag_runs(dag_id)] == [first, second]
    # One job per stage and round (the base model's evaluation once for the campaign).
    jobs = campaign.jobs()
    assert len(campaign.jobs(round="0")) == 1  # the base model's evaluation
    for number in ("1", "2"):
        assert sorted(j.labels["stage"] for j in campaign.jobs(round=number)) == [
            "eval",
            "rft",
            "sft",
        ]
    assert len(jobs) == 7
    assert all(j.state == JobState.SUCCEEDED for j in jobs), [(j.name, j.state) for j in jobs]
    # The rounds are mirrored to the MLflow server the campaign names.
    rounds = stack.mlflow.runs(f"tuneloop-{campaign.name}", "tags.`tuneloop.kind` = 'round'")
    assert sorted(r["tags"]["tuneloop.round"] for r in rounds) == ["1", "2"]


def test_dry_run_plans_and_validates_without_a_job(stack: Stack) -> None:
    """A dry run triggered with the CLI (``airflow dags trigger --conf '{"dry_run": true}'``):
    plan_round and validate_data succeed, then the round stops; no job is submitted and the
    ledger holds neither a record nor a claim."""
    campaign = stack.write_campaign("e2e-dry")
    stack.wait_for_dag(campaign.dag_id)
    dag_id = campaign.dag_id

    run_id = "dry_run_from_the_cli"
    stack.airflow.cli(
        "dags", "trigger", dag_id, "--conf", json.dumps({"dry_run": True}), "--run-id", run_id
    )
    stack.wait_for_run(dag_id, run_id)
    states = stack.task_states(dag_id, run_id)
    assert states["plan_round"] == "success"
    assert states["validate_data"] == "success"  # every mapped instance
    assert states["proceed"] == "success"
    skipped = ("restore_base", "probe_reward", "train_sft", "train_rft", "evaluate")
    for task in (*skipped, "evaluate_baseline"):
        assert states[task] == "skipped", (task, states)
    assert states["decide"] == "skipped", states
    plan = plan_of(stack, dag_id, run_id)
    assert plan["start"]["dry_run"] is True and plan["start"]["round"] == 1

    assert campaign.jobs() == []
    assert not campaign.record_path(1).exists()
    from tuneloop.rounds.ledger import Ledger

    ledger = Ledger(str(campaign.root))
    assert ledger.records() == [] and ledger.claims() == []
