"""The round DAG's steps as plain functions: job specs, names, skipped stages, shown metrics,
the run's conf and where a round starts."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tuneloop.config.backend import job_backend_config
from tuneloop.config.file import load_campaign, load_for_rounds
from tuneloop.config.paths import campaign_root, round_root
from tuneloop.errors import CampaignError
from tuneloop.rounds.boxes import CampaignSnapshot, RoundConf, RoundStart
from tuneloop.rounds.gate import Action, Decision
from tuneloop.rounds.plan import plan_round, plan_started_round
from tuneloop.rounds.record import shown_metrics
from tuneloop.rounds.specs import baseline_job, stage_job
from tuneloop.rounds.start import CampaignOverError, RoundError, parse_conf, start_round

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "recipes" / "campaigns" / "demo.yaml"


@pytest.fixture
def demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TUNELOOP_PROJECT_DIR", str(tmp_path))
    return load_for_rounds(DEMO)


def test_local_paths_are_made_absolute_against_the_project_dir(demo, tmp_path: Path) -> None:
    assert demo.campaign.backend.output_root == str(tmp_path / ".tuneloop")
    config = job_backend_config(demo.campaign)
    assert config == {"type": "local", "root": str(tmp_path / ".tuneloop" / "demo" / "jobs")}


def test_a_stage_job_digests_recipe_and_inputs_and_names_the_run(demo) -> None:
    plan = plan_round(demo, round_number=2, offline=True)
    root = round_root(demo.campaign, 2)
    spec = stage_job(plan, root, 0, "tiny-chat")
    assert spec is not None
    assert spec.name.startswith("demo-r2-sft-") and spec.kind == "train"
    assert spec.recipe["run"]["name"] == spec.name
    assert spec.labels == {"campaign": "demo", "round": "2", "stage": "sft"}
    assert spec.output_uri == root
    assert stage_job(plan, root, 0, "tiny-chat") == spec
    other = stage_job(plan, root, 0, "/elsewhere/checkpoint")
    assert other is not None and other.name != spec.name
    assert stage_job(plan, root, 1, "x", stages=["sft"]) is None


def test_the_baseline_job_is_the_same_in_every_round(demo) -> None:
    names = {
        baseline_job(demo, plan_round(demo, round_number=n, offline=True)).name for n in (1, 2, 5)
    }
    assert len(names) == 1 and next(iter(names)).startswith("demo-r0-baseline-")


def test_the_report_shows_the_campaigns_metrics(demo) -> None:
    record = {"metrics": {"exact_match": 0.5, "bleu": 0.1, "rougeL": 0.7}, "baseline": {"em": 0}}
    shown = shown_metrics(demo, record)
    assert shown["metrics"] == {"exact_match": 0.5, "rougeL": 0.7}
    assert shown["baseline"] == {}


def test_an_unknown_stage_in_the_conf_is_refused(demo, tmp_path: Path) -> None:
    with pytest.raises(RoundError, match=r"unknown stage 'dpo'.*allowed: sft, rft"):
        start_round(demo, {"stages": ["dpo"]})


# --- the run's conf -------------------------------------------------------------------------


def test_an_empty_conf_and_the_trigger_forms_defaults_are_accepted() -> None:
    assert parse_conf(None) == RoundConf()
    form = {
        "base_checkpoint": None,
        "start_from_round": None,
        "rollback": None,
        "stages": None,
        "data_overrides": None,
        "dry_run": False,
        "reason": None,
        "after_finish": False,
    }
    assert parse_conf(form) == RoundConf()


def test_unknown_conf_keys_and_wrong_types_are_refused_naming_the_param() -> None:
    with pytest.raises(RoundError) as refused:
        parse_conf({"dry_rn": True, "dry_run": "yes", "start_from_round": 0})
    lines = str(refused.value).splitlines()
    assert len(lines) == 3
    assert any(
        "conf.dry_rn: is not a parameter of this DAG (allowed: base_checkpoint, "
        "start_from_round, rollback, stages, data_overrides, dry_run, reason, after_finish)" in line
        for line in lines
    )
    assert any(
        "conf.dry_run: 'yes' is not accepted" in line and "(allowed: true or false)" in line
        for line in lines
    )
    assert any(
        "conf.start_from_round: 0 is not accepted" in line and "integer >= 1" in line
        for line in lines
    )


def test_data_overrides_name_stages_and_datasets_of_the_campaign(demo) -> None:
    with pytest.raises(RoundError, match=r"conf.data_overrides: unknown stage 'dpo'"):
        start_round(demo, {"data_overrides": {"dpo": {"train": "x.jsonl"}}})
    with pytest.raises(
        RoundError,
        match=r"conf.data_overrides.sft: unknown dataset 'eval' \(allowed: train, validation\)",
    ):
        start_round(demo, {"data_overrides": {"sft": {"eval": "x.jsonl"}}})


# --- a campaign that is over -----------------------------------------------------------------


def _record_rounds(cf, rounds: list[tuple[float, Action]]) -> None:
    from test_ledger import record

    from tuneloop.rounds.ledger import Ledger

    root = campaign_root(cf.campaign)
    ledger = Ledger(root)
    for n, (value, action) in enumerate(rounds, 1):
        decision = Decision(
            round=n,
            action=action,
            reason=f"Round {n}: {action.value}.",
            promoted=True,
            champion_round=n,
            next_round=n + 1 if action is Action.CONTINUE else None,
            next_base=f"{root}/rounds/{n:04d}/demo-r{n:04d}-sft"
            if action is Action.CONTINUE
            else None,
            next_stages=["sft", "rft"] if action is Action.CONTINUE else None,
            signals={"max_rounds": cf.campaign.gate.max_rounds},
        )
        ledger.write(record(n, {"exact_match": value}, decision=decision, root=root))


def test_a_finished_campaign_refuses_another_round_saying_how_to_go_on(demo) -> None:
    _record_rounds(demo, [(0.5, Action.CONTINUE), (0.97, Action.FINISH)])
    with pytest.raises(CampaignOverError) as refused:
        start_round(demo, {})
    text = str(refused.value)
    assert f"{demo.path}: campaign 'demo' is over: round 2 met every target (exact_match 0.97)" in (
        text
    )
    assert "round 3 is not planned and no job is started" in text
    assert "raise gate.max_rounds (now 3) or change gate.targets" in text
    assert "after_finish: true" in text
    # Asked for explicitly, the round runs, from the champion.
    start = start_round(demo, {"after_finish": True})
    assert start.round == 3 and start.base_round == 2
    assert "after the campaign finished (round 2 met every target" in start.reason


def test_a_higher_target_reopens_a_finished_campaign(demo) -> None:
    _record_rounds(demo, [(0.5, Action.CONTINUE), (0.97, Action.FINISH)])
    demo.campaign.gate.targets = {"exact_match": 0.99}
    start = start_round(demo, {})
    assert (start.round, start.base_round) == (3, 2)


def test_max_rounds_ends_the_campaign_until_it_is_raised(demo) -> None:
    _record_rounds(demo, [(0.3, Action.CONTINUE), (0.5, Action.CONTINUE), (0.6, Action.STOP)])
    with pytest.raises(CampaignOverError, match="round 3 reached max_rounds 3"):
        start_round(demo, {})
    demo.campaign.gate.max_rounds = 5
    assert start_round(demo, {}).round == 4


def test_a_campaign_stopped_on_a_plateau_stays_over(demo) -> None:
    _record_rounds(demo, [(0.5, Action.CONTINUE), (0.501, Action.STOP)])
    with pytest.raises(CampaignOverError, match=r"is over: Round 2: stop\."):
        start_round(demo, {})


# --- the campaign, read once per round -------------------------------------------------------


def test_a_snapshot_rebuilds_the_campaign_with_the_files_own_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNELOOP_PROJECT_DIR", str(tmp_path))
    snapshot = CampaignSnapshot.read(DEMO)
    text = DEMO.read_text(encoding="utf-8")
    assert snapshot.text == text
    assert snapshot.sha256 == hashlib.sha256(text.encode()).hexdigest()
    cf = snapshot.load()
    assert cf.path == DEMO and cf.campaign.backend.output_root == str(tmp_path / ".tuneloop")

    broken = tmp_path / "broken.yaml"
    broken.write_text(text.replace("technique: full", "technique: x"), encoding="utf-8")
    with pytest.raises(CampaignError) as from_file:
        load_campaign(broken)
    with pytest.raises(CampaignError) as from_snapshot:
        CampaignSnapshot.read(broken).load()
    assert str(from_snapshot.value) == str(from_file.value)
    assert f"{broken}:" in str(from_snapshot.value)
    with pytest.raises(CampaignError, match="file not found"):
        CampaignSnapshot.read(tmp_path / "missing.yaml")


def test_planning_a_round_leaves_the_campaign_as_it_was(demo, tmp_path: Path) -> None:
    """The conf's data overrides and the absolute data paths go into a copy of the campaign."""
    before = demo.campaign.model_dump()
    start = RoundStart(
        campaign="demo", round=1, data_overrides={"sft": {"train": "elsewhere/train.jsonl"}}
    )
    plan = plan_started_round(demo, start, {})
    assert plan.stages[0].datasets["train"] == str(tmp_path / "elsewhere" / "train.jsonl")
    assert plan.evaluation.dataset == str(tmp_path / ".tuneloop/demo/data/eval.jsonl")
    assert demo.campaign.model_dump() == before
