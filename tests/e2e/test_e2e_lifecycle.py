"""The checkpoint lifecycle under the real scheduler, driven through the REST API as a user
drives it: each recorded round starts the campaign's lifecycle DAG through its Asset, the first
lifecycle run only plans, a run triggered with ``apply: true`` archives what the retention set
lets go, and a round restarted from an archived round gets it back in ``restore_base`` before
it trains.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from e2e.campaigns import SFT_ONLY
from e2e.scenarios import campaign_document, plan_of, task_log, wait_until, write_document

if TYPE_CHECKING:
    from e2e.conftest import Stack

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(900)]


def lifecycle_runs(stack: Stack, dag_id: str) -> list[dict[str, Any]]:
    return list(stack.client.dag_runs(dag_id))


def settled(stack: Stack, dag_id: str) -> list[dict[str, Any]] | None:
    """The lifecycle DAG's runs once none is queued or running."""
    runs = lifecycle_runs(stack, dag_id)
    return None if any(r["state"] in ("queued", "running") for r in runs) else runs


def test_rounds_start_the_lifecycle_which_archives_and_a_restart_restores(stack: Stack) -> None:
    """Three rounds, each better than the last (round 3 is the champion), with ``keep_last: 1``:
    the rounds' records start lifecycle runs through the campaign's Asset, and those runs plan
    (the campaign's first plan only plans). A run triggered with ``apply: true`` archives rounds
    1 and 2 (tarballs under archive/, folders gone). Round 4, triggered with
    ``start_from_round: 1``, is planned from the ledger's checkpoint of round 1, its
    ``restore_base`` extracts the tarball, and it trains and records from round 1."""
    document = campaign_document(
        stack,
        "e2e-lifecycle",
        gate={"targets": {"exact_match": 0.99}, "max_rounds": 3},
        stages=SFT_ONLY,
    )
    document["retention"] = {"keep_last": 1}
    campaign = write_document(stack, document)
    stack.fake_jobs.metrics(campaign.name, base=0.1, rounds={1: 0.5, 2: 0.6, 3: 0.7, 4: 0.75})
    dag_id = campaign.dag_id
    lifecycle_id = f"{dag_id}_lifecycle"
    stack.wait_for_dag(dag_id)
    stack.wait_for_dag(lifecycle_id)

    # A manual trigger chains the rounds until max_rounds stops the campaign after round 3.
    first = stack.client.trigger(dag_id, {})["dag_run_id"]
    stack.wait_for_run(dag_id, first)

    def three_rounds() -> list[dict[str, Any]] | None:
        runs = stack.client.dag_runs(dag_id)
        ended = [r for r in runs if r["state"] in ("success", "failed")]
        return runs if len(ended) >= 3 and campaign.record_path(3).is_file() else None

    runs = wait_until(three_rounds, timeout=600, what="three recorded rounds")
    assert all(r["state"] == "success" for r in runs), runs
    assert campaign.record(3).decision.action == "stop"

    # Each record updated the Asset: lifecycle runs followed the rounds. The campaign's first
    # plan was only shown; later plans were applied (with keep_last 1, an old round goes once a
    # newer one is champion and the next round's base).
    def asset_runs_settled() -> list[dict[str, Any]] | None:
        runs = settled(stack, lifecycle_id)
        asset = [r for r in runs or [] if r["run_type"] == "asset_triggered"]
        return runs if asset else None

    for run in wait_until(asset_runs_settled, timeout=300, what="lifecycle runs after rounds"):
        assert run["state"] == "success", stack.run_report(lifecycle_id, run["dag_run_id"])
    from tuneloop.lifecycle.store import LifecycleStore

    store = LifecycleStore(str(campaign.root))
    first_plan = store.plans()[0]
    assert first_plan.first and store.apply_of(first_plan.sequence) is None
    round_folders = {n: Path(campaign.record(n).stages[-1].output_uri) for n in (1, 2, 3)}

    # Apply now, as a person does from the trigger form or the REST API.
    applied = stack.client.trigger(lifecycle_id, {"apply": True})["dag_run_id"]
    stack.wait_for_run(lifecycle_id, applied, timeout=300)
    archived = {
        result.uri
        for report in store.applies()
        for result in report.results
        if result.outcome == "archived"
    }
    for number in (1, 2):
        assert str(round_folders[number]) in archived, store.applies()
        assert not round_folders[number].exists()
        relative = round_folders[number].relative_to(campaign.root)
        assert (campaign.root / "archive" / f"{relative}.tar.gz").is_file()
    assert round_folders[3].is_dir()  # the champion and the last round stay
    # Applying again does nothing: its plan has nothing left to archive or delete.
    again = stack.client.trigger(lifecycle_id, {"apply": True})["dag_run_id"]
    stack.wait_for_run(lifecycle_id, again, timeout=300)
    plan = next(p for p in store.plans() if p.run_id == again)
    assert plan.acting() == [], plan.acting()
    assert stack.task_states(lifecycle_id, again)["apply_lifecycle"] == "skipped"

    # A restart from round 1: restore_base brings it back before training.
    restart = stack.client.trigger(dag_id, {"start_from_round": 1, "after_finish": True})
    restart_id = restart["dag_run_id"]
    stack.wait_for_run(dag_id, restart_id)
    restore = stack.client.xcom(dag_id, restart_id, "plan_round", key="restore")
    assert restore["base_round"] == 1, restore
    assert [item["uri"] for item in restore["items"]] == [str(round_folders[1])]
    states = stack.task_states(dag_id, restart_id)
    assert states["restore_base"] == "success" and states["train_sft"] == "success"
    assert "Round 1's checkpoint is back" in task_log(stack, dag_id, restart_id, "restore_base")
    assert plan_of(stack, dag_id, restart_id)["start"]["base_round"] == 1
    # (Round 1's folder may be archived again by now: round 4's record starts a lifecycle run,
    # and round 1 is no base of a running round any more.)
    four = campaign.record(4)
    assert four.base_round == 1 and four.base == str(round_folders[1])
