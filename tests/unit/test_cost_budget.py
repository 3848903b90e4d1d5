"""What jobs cost and what a campaign may spend: the price table, each job's GPU-hours and
dollars, the budget in the campaign file, the gate's stop and the refusal before a round's
first job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tuneloop.config.campaign import Gate, HyperPodBackend, LocalBackend, TrainingJobsBackend
from tuneloop.config.file import load_for_rounds, parse_campaign
from tuneloop.config.paths import campaign_root
from tuneloop.errors import CampaignError
from tuneloop.recipes.catalog import INSTANCE_RESOURCES, MODELS, Method, Technique
from tuneloop.recipes.catalog import allowed_instance_types as allowed
from tuneloop.recipes.prices import (
    LOCAL_NOTE,
    PRICES,
    PRICES_DEFAULT_REGION,
    PRICES_SOURCE,
    UNPRICED,
    gpus_per_instance,
    price_per_hour,
)
from tuneloop.rounds.cost import job_cost, total_cost
from tuneloop.rounds.decision import Action, Decision, RoundSummary
from tuneloop.rounds.gate import budget_refusal, decide
from tuneloop.rounds.ledger import EvaluationCost, Ledger, RoundRecord
from tuneloop.rounds.start import BudgetExceededError, start_round
from tuneloop.tracking.report import render_cost

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "recipes" / "campaigns" / "demo.yaml"
CLAIMS = REPO / "recipes" / "campaigns" / "examples" / "claims-smtj.yaml"
ROLE = "arn:aws:iam::123456789012:role/SageMakerNovaTraining"


def catalog_instance_types() -> set[str]:
    """Every instance type the catalog lets a Nova training or evaluation job use."""
    methods: list[Method | None] = [*Method, None]
    found = {t for model in MODELS for m in methods for t in allowed(model, m)}
    return found | set(INSTANCE_RESOURCES)


# --- the price table -----------------------------------------------------------------------


def test_every_catalog_instance_type_has_a_us_east_1_price_or_a_reason() -> None:
    types = catalog_instance_types()
    assert "ml.p5.48xlarge" in types and "ml.g5.12xlarge" in types
    priced = set(PRICES[PRICES_DEFAULT_REGION])
    assert not priced & set(UNPRICED), "a type is both priced and unpriced"
    assert types <= priced | set(UNPRICED), types - priced - set(UNPRICED)
    assert all(reason for reason in UNPRICED.values())
    assert all(price > 0 for price in PRICES[PRICES_DEFAULT_REGION].values())
    assert "aws.amazon.com/sagemaker/pricing" in PRICES_SOURCE and "2026-12-05" in PRICES_SOURCE


def test_an_unlisted_region_uses_us_east_1_and_says_so() -> None:
    here = price_per_hour("ml.g5.12xlarge", "us-east-1")
    there = price_per_hour("ml.g5.12xlarge", "eu-west-2")
    assert here.usd_per_hour == there.usd_per_hour == PRICES["us-east-1"]["ml.g5.12xlarge"]
    assert here.note == "" and here.region == "us-east-1"
    assert there.region == "us-east-1"
    assert there.note == "no prices for eu-west-2 in the table: us-east-1's are used"


def test_an_unknown_price_is_none_with_the_reason_and_the_fix() -> None:
    price = price_per_hour("ml.p5.48xlarge", "us-east-1")
    assert price.usd_per_hour is None
    assert "price of ml.p5.48xlarge unknown" in price.note
    assert "set backend.price_per_hour" in price.note
    other = price_per_hour("ml.m5.xlarge", "us-east-1")
    assert other.usd_per_hour is None and "not in tuneloop's price table" in other.note


def test_the_campaigns_price_wins_over_the_table() -> None:
    price = price_per_hour("ml.p5.48xlarge", "us-west-2", {"ml.p5.48xlarge": 60.0})
    assert (price.usd_per_hour, price.source, price.region) == (
        60.0,
        "backend.price_per_hour",
        "us-west-2",
    )
    assert price_per_hour("ml.g5.12xlarge", "us-east-1", {"ml.p5.48xlarge": 60.0}).source == (
        PRICES_SOURCE
    )


def test_local_jobs_are_free_and_cpu_only_instances_have_no_gpus() -> None:
    local = price_per_hour(None, None)
    assert local.usd_per_hour == 0.0 and local.note == LOCAL_NOTE
    assert gpus_per_instance(None) == 0
    for cpu in ("ml.m5.xlarge", "ml.c5.2xlarge", "ml.r5.large", "ml.t3.medium"):
        assert gpus_per_instance(cpu) == 0, cpu
    assert gpus_per_instance("ml.p5.48xlarge") == 8
    assert gpus_per_instance("ml.g5.12xlarge") == 4
    assert gpus_per_instance("ml.p6-b200.48xlarge") == 1  # unknown GPU type: not dropped


# --- what one job cost ---------------------------------------------------------------------


def smtj(instance_type: str = "ml.g5.12xlarge", region: str = "us-east-1", **extra: Any):
    return TrainingJobsBackend.model_validate(
        {
            "region": region,
            "instance_type": instance_type,
            "output_root": "s3://bucket/tuneloop",
            "role_arn": ROLE,
            **extra,
        }
    )


def test_a_training_job_costs_its_instance_hours_times_the_price() -> None:
    # Two instances billed one hour each: SageMaker's BillableTimeInSeconds x InstanceCount.
    cost = job_cost(7200.0, smtj(), {"run": {"replicas": 2}})
    assert cost["instance_type"] == "ml.g5.12xlarge" and cost["instance_count"] == 2
    assert cost["instance_hours"] == 2.0
    assert cost["gpu_hours"] == 8.0
    assert cost["estimated_cost_usd"] == pytest.approx(2 * 7.09)
    assert cost["price_region"] == "us-east-1" and cost["price_source"] == PRICES_SOURCE
    assert cost["cost_note"] == ""


def test_cpu_only_and_local_jobs_count_no_gpu_hours_but_their_instance_hours() -> None:
    cpu = job_cost(3600.0, smtj("ml.m5.xlarge"))
    assert cpu["gpu_hours"] == 0.0 and cpu["instance_hours"] == 1.0
    assert cpu["estimated_cost_usd"] is None and "set backend.price_per_hour" in cpu["cost_note"]
    local = job_cost(1800.0, LocalBackend())
    assert local["instance_type"] == "local" and local["gpu_hours"] == 0.0
    assert local["instance_hours"] == 0.5
    assert local["estimated_cost_usd"] == 0.0 and local["cost_note"] == LOCAL_NOTE


def test_a_hyperpod_cluster_priced_by_the_campaign() -> None:
    backend = HyperPodBackend.model_validate(
        {
            "region": "ap-northeast-1",
            "cluster": "c",
            "output_root": "s3://bucket/tuneloop",
            "price_per_hour": {"ml.p5.48xlarge": 50.0},
        }
    )
    cost = job_cost(4 * 900.0, backend, {"run": {"replicas": 4}})  # wall time x 4 nodes
    assert cost["gpu_hours"] == 8.0 and cost["estimated_cost_usd"] == 50.0
    assert cost["price_source"] == "backend.price_per_hour"


def test_no_billable_time_is_said_and_an_unknown_price_makes_the_total_unknown() -> None:
    cost = job_cost(None, smtj())
    assert cost["gpu_hours"] == 0.0 and cost["estimated_cost_usd"] == 0.0
    assert cost["cost_note"].startswith("the backend reported no billable time")
    assert total_cost([1.0, 2.5]) == 3.5
    assert total_cost([1.0, None]) is None


# --- the budget in the campaign file -------------------------------------------------------


def demo_with_gate(**gate: Any) -> str:
    data = yaml.safe_load(DEMO.read_text())
    data["gate"] = {**data["gate"], **gate}
    return yaml.safe_dump(data, sort_keys=False)


def test_a_budget_in_dollars_gpu_hours_or_both() -> None:
    assert (
        parse_campaign(demo_with_gate(budget={"usd": 500}), DEMO).campaign.gate.usd_budget() == 500
    )
    both = parse_campaign(demo_with_gate(budget={"usd": 5, "gpu_hours": 10}), DEMO)
    assert (both.campaign.gate.usd_budget(), both.campaign.gate.gpu_hour_budget()) == (5, 10)
    old = parse_campaign(demo_with_gate(budget_gpu_hours=7), DEMO).campaign.gate
    assert old.gpu_hour_budget() == 7 and old.usd_budget() is None


@pytest.mark.parametrize(
    ("gate", "where", "says"),
    [
        ({"budget": {"usd": -5}}, "gate.budget.usd", "-5 is out of range (allowed: > 0.0)"),
        ({"budget": {"usd": "lots"}}, "gate.budget.usd", "valid number"),
        ({"budget": {"gpu_hours": float("inf")}}, "gate.budget.gpu_hours", "finite number"),
        (
            {"budget": {"dollars": 5}},
            "gate.budget.dollars",
            "unknown field (allowed: usd, gpu_hours)",
        ),
        ({"budget": {}}, "gate.budget", "names no limit: set usd, gpu_hours or both"),
        ({"budget": 500}, "gate.budget", "500 names no unit: write budget: {usd: 500}"),
        (
            {"budget": {"gpu_hours": 3}, "budget_gpu_hours": 4},
            "gate",
            "keep budget.gpu_hours and remove budget_gpu_hours",
        ),
    ],
)
def test_a_bad_budget_is_one_located_line(gate: dict[str, Any], where: str, says: str) -> None:
    with pytest.raises(CampaignError) as error:
        parse_campaign(demo_with_gate(**gate), DEMO)
    [problem] = error.value.problems
    line = problem.format()
    assert "\n" not in line and line.startswith(f"{DEMO}:{problem.line}: {where}: ")
    assert problem.line is not None and says in line


# --- the gate and the refusal before a round's first job -----------------------------------


def summary(n: int, value: float, *, cost: float | None, hours: float = 0.0, **extra: Any):
    return RoundSummary(
        round=n,
        metrics={"exact_match": value},
        checkpoint=f"s3://out/{n}",
        stages=["sft"],
        methods=[Method.SFT],
        promoted=True,
        action=Action.CONTINUE,
        gpu_hours=hours,
        cost_usd=cost,
        **extra,
    )


def judge(gate: Gate, candidate: RoundSummary, history: list[RoundSummary]) -> Decision:
    from tuneloop.config.campaign import Stage

    stage = Stage.model_validate(
        {"method": "sft", "recipe": "local/sft-full.yaml", "datasets": {"train": "t.jsonl"}}
    )
    return decide(gate, candidate, history, stages=[stage], technique=Technique.LORA)


def test_the_gate_stops_before_a_round_would_pass_the_dollar_budget() -> None:
    history = [summary(1, 0.6, cost=100.0, baseline_cost_usd=20.0)]
    gate = Gate(primary_metric="exact_match", budget={"usd": 330})
    stop = judge(gate, summary(2, 0.7, cost=110.0), history)
    assert stop.action is Action.STOP
    # 100 + 20 (the base model's evaluation, once) + 110 spent; the next round ~105 more.
    assert "$230.00 spent and a next round of about $105.00 would pass the $330.00 budget" in (
        stop.reason
    )
    assert stop.signals["cost_usd_spent"] == 230.0 and stop.signals["budget_usd"] == 330.0
    assert stop.signals["cost_usd_next_estimate"] == 105.0
    roomy = judge(gate.model_copy(update={"budget": None}), summary(2, 0.7, cost=110.0), history)
    assert roomy.action is Action.CONTINUE and roomy.signals["budget_usd"] is None


def test_the_refusal_needs_a_projection_or_a_spent_budget() -> None:
    kw: dict[str, Any] = {"stages": [], "technique": Technique.LORA}
    gate = Gate(primary_metric="exact_match", budget={"usd": 100, "gpu_hours": 50})
    # A first round: no projection yet, nothing spent: it goes on.
    assert budget_refusal(gate, [], ["sft"], **kw) == ""
    # 60 spent, a round like it would pass 100.
    why = budget_refusal(gate, [summary(1, 0.5, cost=60.0, hours=4)], ["sft"], **kw)
    assert why == "$60.00 spent and a next round of about $60.00 would pass the $100.00 budget"
    # Nothing billed yet but the budget is already spent (the base model's evaluation alone).
    spent = [summary(1, 0.5, cost=0.0, baseline_gpu_hours=50.0, baseline_cost_usd=0.0)]
    assert budget_refusal(gate, spent, ["sft"], **kw) == "50 GPU-hours spent of the 50 budget"


def record_spent(cf: Any, usd: float, hours: float) -> None:
    """A round 1 the campaign paid ``usd`` for, the base model's evaluation included."""
    root = campaign_root(cf.campaign)
    Ledger(root).write(
        RoundRecord(
            campaign=cf.campaign.name,
            round=1,
            run_id="manual__1",
            base="tiny-chat",
            metrics={"exact_match": 0.5},
            decision=Decision(
                round=1,
                action=Action.CONTINUE,
                reason="Round 1 improved.",
                promoted=False,
                champion_round=None,
                next_round=2,
                next_stages=["sft", "rft"],
            ),
            gpu_hours=hours,
            estimated_cost_usd=usd - 10.0,
            price_source=PRICES_SOURCE,
            baseline_cost=EvaluationCost(gpu_hours=0.0, estimated_cost_usd=10.0),
        )
    )


def test_a_round_is_refused_before_any_job_when_it_would_pass_the_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNELOOP_PROJECT_DIR", str(tmp_path))
    path = tmp_path / "demo.yaml"
    path.write_text(demo_with_gate(budget={"usd": 500}), encoding="utf-8")
    cf = load_for_rounds(path)
    record_spent(cf, usd=300.0, hours=2.0)
    with pytest.raises(BudgetExceededError) as refused:
        start_round(cf, {})
    [problem] = refused.value.problems
    line = problem.format()
    assert problem.line == cf.line("gate", "budget", "usd") and problem.line is not None
    assert line.startswith(
        f"{path}:{problem.line}: gate.budget.usd: round 2 of campaign 'demo' is refused "
    )
    assert "before any job is submitted: $300.00 spent and a next round of about $290.00" in line
    assert "fix: raise the budget in the campaign file" in line
    # A dry run submits nothing: it is let through; so is a round within the budget.
    assert start_round(cf, {"dry_run": True}).round == 2
    path.write_text(demo_with_gate(budget={"usd": 600}), encoding="utf-8")
    assert start_round(load_for_rounds(path), {}).round == 2


# --- the record and the report -------------------------------------------------------------


def test_a_round_record_counts_the_base_models_evaluation_once() -> None:
    base = EvaluationCost(job_name="b", gpu_hours=2.0, estimated_cost_usd=20.0)
    record = RoundRecord.model_validate(
        {
            "campaign": "c",
            "round": 1,
            "run_id": "r",
            "base": "m",
            "metrics": {},
            "decision": {
                "round": 1,
                "action": "stop",
                "reason": ".",
                "promoted": False,
                "champion_round": None,
            },
            "gpu_hours": 8.0,
            "estimated_cost_usd": 80.0,
            "baseline_cost": base.model_dump(),
        }
    )
    assert (record.spent_gpu_hours(), record.spent_usd()) == (10.0, 100.0)
    summary = record.summary()
    assert (summary.gpu_hours, summary.cost_usd) == (8.0, 80.0)
    assert (summary.baseline_gpu_hours, summary.baseline_cost_usd) == (2.0, 20.0)
    older = RoundRecord.model_validate(
        {**record.model_dump(mode="json", exclude={"estimated_cost_usd", "baseline_cost"})}
    )
    assert older.spent_usd() is None  # a record written before costs: unknown, not free


def test_the_report_has_a_cost_section_per_job_round_and_campaign() -> None:
    stage = {
        "name": "sft",
        "instance_type": "ml.g5.12xlarge",
        "instance_count": 2,
        "instance_hours": 2.0,
        "gpu_hours": 8.0,
        "estimated_cost_usd": 14.18,
        "price_source": PRICES_SOURCE,
    }
    evaluation = {
        **stage,
        "instance_count": 1,
        "instance_hours": 0.5,
        "gpu_hours": 2.0,
        "estimated_cost_usd": 3.545,
    }
    first = {
        "round": 1,
        "stages": [stage],
        "evaluation_cost": evaluation,
        "baseline_cost": evaluation,
        "gpu_hours": 10.0,
        "estimated_cost_usd": 17.725,
        "price_source": PRICES_SOURCE,
    }
    unknown = {**stage, "estimated_cost_usd": None, "cost_note": "price of x unknown"}
    second = {
        **first,
        "round": 2,
        "stages": [unknown],
        "baseline_cost": None,
        "estimated_cost_usd": None,
    }
    text = "\n".join(render_cost([first, second]))
    assert text.startswith("## Cost")
    assert "| 1 | train sft | 2 × ml.g5.12xlarge | 2 | 8 | $14.18 | — |" in text
    assert "| 1 | evaluate base model | 1 × ml.g5.12xlarge | 0.5 | 2 | $3.54 | — |" in text
    assert "| 1 | **round total** | | | **12** | **$21.27** | |" in text
    assert "| 2 | train sft | 2 × ml.g5.12xlarge | 2 | 8 | unknown | price of x unknown |" in text
    assert "| 2 | **round total** | | | **10** | **unknown** | |" in text
    assert "Campaign total, the base model's evaluation included: 22 GPU-hours, unknown" in text
    assert f"- Prices: {PRICES_SOURCE}" in text
    assert render_cost([{"round": 1, "stages": []}]) == []  # records from before costs


def test_a_dollar_budget_without_a_price_is_refused_before_any_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3_server: str
) -> None:
    import uuid

    from tuneloop.storage import s3_client

    monkeypatch.setenv("TUNELOOP_PROJECT_DIR", str(tmp_path))
    bucket = f"cost-{uuid.uuid4().hex[:12]}"
    s3_client().create_bucket(Bucket=bucket)
    data = yaml.safe_load(CLAIMS.read_text())
    data["backend"]["output_root"] = f"s3://{bucket}/tuneloop"
    data["gate"]["budget"] = {"usd": 1000}
    path = tmp_path / "claims.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    cf = load_for_rounds(path)
    assert cf.campaign.backend.instance_type == "ml.p5.48xlarge"  # no price in the table
    with pytest.raises(BudgetExceededError) as refused:
        start_round(cf, {})
    line = refused.value.problems[0].format()
    assert line.startswith(f"{path}:{cf.line('gate', 'budget', 'usd')}: gate.budget.usd: ")
    assert "the dollar budget cannot be checked: the price of ml.p5.48xlarge unknown" in line
    assert "fix: add backend.price_per_hour" in line
    # `tuneloop campaign validate` says the same, before any DAG runs.
    from tuneloop.rounds.plan import plan_round

    with pytest.raises(CampaignError) as planned:
        plan_round(cf)
    assert line in [problem.format() for problem in planned.value.problems]
    data["backend"]["price_per_hour"] = {"ml.p5.48xlarge": 55.0}
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    assert start_round(load_for_rounds(path), {}).round == 1
