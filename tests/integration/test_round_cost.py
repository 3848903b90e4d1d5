"""What a round cost, end to end with Airflow's dag.test(): each job's cost in the ledger,
MLflow and the report (`check_local_costs`, run on test_rounds' max_rounds round), and a round
refused before its first job when the budget is spent.

Jobs run on the local backend with the instant entry point (``fakes.instant_jobs``), as in
test_rounds: a round takes seconds. Local jobs run on this machine: no GPU-hours, no dollars,
their instance-hours still recorded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_rounds import Campaign, _own_campaign_files, campaign_text, data  # noqa: F401  (fixtures)

from tuneloop.recipes.prices import LOCAL_NOTE

pytestmark = pytest.mark.slow


def check_local_costs(campaign: Campaign, root: Path, record: Any) -> None:
    """What a round of local jobs recorded about its cost, in the ledger, the report and MLflow
    (the round ``test_rounds.test_stop_at_max_rounds`` runs, with a budget: a round takes
    tens of seconds, so this file runs none of its own)."""
    jobs = [*record.stages, record.evaluation_cost, record.baseline_cost]
    assert [s.name for s in record.stages] == ["sft", "rft"]
    for job in jobs:
        assert job is not None
        assert job.instance_type == "local" and job.instance_count == 1
        assert job.billable_seconds is not None
        assert job.instance_hours == pytest.approx(job.billable_seconds / 3600)
        assert job.gpu_hours == 0.0 and job.estimated_cost_usd == 0.0
        assert job.cost_note == LOCAL_NOTE and job.price_source == "local backend"
    assert (record.gpu_hours, record.estimated_cost_usd, record.cost_note) == (0, 0, LOCAL_NOTE)
    # The base model's evaluation was measured by this round: counted here, and in its record.
    [baseline] = list((root / "baselines").glob("*.json"))
    assert '"cost": {' in baseline.read_text()
    signals = record.decision.signals
    assert (signals["budget_usd"], signals["budget_gpu_hours"]) == (500.0, 10.0)
    assert (signals["cost_usd_spent"], signals["gpu_hours_spent"]) == (0.0, 0.0)

    report = (root / "report" / "report.md").read_text()
    assert "## Cost" in report
    assert "| 1 | train sft | local |" in report and "| 1 | evaluate base model | local |" in report
    assert "Campaign total, the base model's evaluation included: 0 GPU-hours, $0.00" in report

    runs = {run.info.run_name: run for run in campaign.mlflow_runs()}
    sft = runs["sft"].data
    assert sft.metrics["cost_usd"] == 0.0 and sft.metrics["gpu_hours"] == 0.0
    assert sft.metrics["instance_hours"] == pytest.approx(record.stages[0].instance_hours)
    assert sft.tags["tuneloop.instance_type"] == "local"
    assert runs["round-1"].data.metrics["cost_usd"] == 0.0
    assert runs["evaluation"].data.metrics["cost_usd"] == 0.0
    campaign_run = next(r for r in runs.values() if r.data.tags.get("tuneloop.kind") == "campaign")
    assert campaign_run.data.metrics["campaign.cost_usd"] == 0.0


def test_a_spent_budget_refuses_the_round_before_any_job(
    airflow_db: Path,
    tmp_path: Path,
    data: Path,  # noqa: F811  (the fixture imported above)
) -> None:
    from tuneloop.rounds.decision import Action, Decision
    from tuneloop.rounds.ledger import RoundRecord

    gate = "  max_rounds: 5\n  budget: {usd: 500}\n"
    campaign = Campaign("spent", tmp_path, campaign_text("spent", tmp_path, data, gate), {})
    # Round 1 cost $300 (it ran on AWS before the campaign moved here): a round like it
    # would pass the $500 budget.
    decision = Decision(
        round=1,
        action=Action.CONTINUE,
        reason="Round 1 improved.",
        promoted=False,
        champion_round=None,
        next_round=2,
    )
    campaign.ledger().write(
        RoundRecord(
            campaign="spent",
            round=1,
            run_id="manual__1",
            base="tiny",
            metrics={"exact_match": 0.5},
            decision=decision,
            estimated_cost_usd=300.0,
        )
    )
    run = campaign.run()
    assert run.state == "failed"
    states = campaign.task_states(run)
    assert states["plan_round"] == "failed"
    assert states["train_sft"] in ("upstream_failed", "skipped")
    assert campaign.jobs() == []
    assert campaign.ledger().claims(2) == []
