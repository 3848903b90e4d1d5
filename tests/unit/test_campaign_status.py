"""`tuneloop campaign status`: real ledgers, written round by round as the round DAG writes them.

Every round here is played the way the DAG plays it: `rounds.start.start_round` says where it
starts, the real gate (`gate.decide`) judges its metrics against the ledger's history, and the
record is written once with `Ledger.write`. The command then has to tell the same story.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tuneloop.artifacts.manifest import Checkpoint
from tuneloop.cli.main import main
from tuneloop.cli.status import OVERRIDE_PARAM
from tuneloop.config.file import CampaignFile, load_for_rounds
from tuneloop.config.paths import campaign_root, round_root
from tuneloop.recipes.catalog import MODELS, Platform
from tuneloop.rounds.boxes import RoundConf
from tuneloop.rounds.gate import RoundSummary, decide
from tuneloop.rounds.ledger import (
    Ledger,
    RoundClaim,
    RoundRecord,
    StageRecord,
    champion_of,
    deltas,
    history_of,
)
from tuneloop.rounds.start import start_round

REPO = Path(__file__).resolve().parents[2]
BASELINE = {"exact_match": 0.5, "f1_score": 0.55}
BASE_MODEL = MODELS["local.tiny-chat-v1"].base_model
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def campaign_text(
    output_root: str,
    *,
    name: str = "status-demo",
    max_rounds: int = 5,
    target: float = 0.95,
    backend: str | None = None,
) -> str:
    backend = backend or f"backend:\n  type: local\n  output_root: {output_root}\n"
    return f"""\
name: {name}
description: a campaign for the status command
{backend}model_type: local.tiny-chat-v1
technique: full
stages:
  - method: sft
    recipe: local/sft-full.yaml
    datasets:
      train: data/sft-train.jsonl
  - method: rft
    recipe: local/rft-full.yaml
    datasets:
      train: data/rft-train.jsonl
    reward_function: tuneloop.local.demo_task:reward
evaluation:
  recipe: local/eval-gen-qa.yaml
  dataset: data/eval.jsonl
  metrics: [exact_match, f1_score]
gate:
  primary_metric: exact_match
  targets:
    exact_match: {target}
  regression_tolerance: 0.02
  min_improvement: 0.005
  plateau_rounds: 2
  max_rounds: {max_rounds}
"""


@pytest.fixture
def campaign_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Writes a campaign file (local ledger under tmp_path/out) and returns its path."""
    monkeypatch.setenv("TUNELOOP_PROJECT_DIR", str(tmp_path))

    def write(**kwargs: Any) -> Path:
        path = tmp_path / "campaigns" / "status-demo.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(campaign_text(str(tmp_path / "out"), **kwargs), encoding="utf-8")
        return path

    return write


def play(cf: CampaignFile, metrics: dict[str, float], *, seconds: float = 600.0) -> RoundRecord:
    """One round as the DAG runs it: start from the ledger, judge with the gate, record once."""
    campaign = cf.campaign
    ledger = Ledger(campaign_root(campaign))
    start = start_round(cf, {})
    records = ledger.records()
    n = start.round
    began = T0 + timedelta(hours=n)
    stages = []
    lineage = []
    for index, stage in enumerate(campaign.stages):
        job = f"{campaign.name}-r{n:04d}-{stage.name}"
        output = f"{round_root(campaign, n)}/{job}"
        lineage.append(stage.method)
        stages.append(
            StageRecord(
                name=stage.name,
                method=stage.method,
                technique=campaign.technique,
                job_name=job,
                recipe={"training_config": {"lr": 1e-5}},
                output_uri=output,
                checkpoint=Checkpoint(
                    uri=f"{output}/checkpoint",
                    model_type=campaign.model_type,
                    technique=campaign.technique,
                    platform=Platform.LOCAL,
                    lineage=tuple(lineage),
                    output_uri=output,
                ),
                started_at=began + timedelta(minutes=10 * index),
                ended_at=began + timedelta(minutes=10 * index + 9),
                billable_seconds=seconds / 2,
            )
        )
    hours = seconds / 3600.0
    candidate = RoundSummary(
        round=n,
        metrics=metrics,
        checkpoint=stages[-1].output_uri,
        stages=[s.name for s in stages],
        methods=[s.method for s in stages],
        lineage=lineage,
        gpu_hours=hours,
    )
    decision = decide(
        campaign.gate,
        candidate,
        history_of(records),
        stages=campaign.stages,
        technique=campaign.technique,
        baseline=BASELINE,
    )
    previous = records[-1] if records else None
    champion = champion_of(records)
    record = RoundRecord(
        campaign=campaign.name,
        round=n,
        run_id=f"manual__round-{n}",
        started_at=began,
        ended_at=began + timedelta(minutes=25),
        base=start.base_output_uri or BASE_MODEL,
        base_round=start.base_round,
        rollback_of=start.rollback_of,
        stages=stages,
        evaluation={"job_name": f"{campaign.name}-r{n:04d}-eval", "metrics": metrics},
        baseline=BASELINE,
        metrics={**metrics, "rougeL": 0.1},  # not in evaluation.metrics: not shown
        deltas=deltas(
            metrics,
            previous=previous.metrics if previous else None,
            champion=champion.metrics if champion else None,
            baseline=BASELINE,
        ),
        decision=decision,
        billable_seconds=seconds,
        gpu_hours=hours,
    )
    return ledger.write(record)


def play_all(path: Path, scores: list[float]) -> CampaignFile:
    cf = load_for_rounds(path)
    for score in scores:
        play(cf, {"exact_match": score, "f1_score": score + 0.05})
    return cf


def status(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["campaign", "status", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def status_json(capsys: pytest.CaptureFixture[str], campaign: str) -> dict[str, Any]:
    code, out, err = status(capsys, campaign, "--json")
    assert code == 0, err
    return json.loads(out)


def output_of(cf: CampaignFile, n: int, stage: str = "rft") -> str:
    return f"{round_root(cf.campaign, n)}/{cf.campaign.name}-r{n:04d}-{stage}"


# --- new, continuing, rollback, finished ---------------------------------------------------------


def test_a_new_campaign_starts_round_1_from_the_base_model(capsys, campaign_file) -> None:
    path = campaign_file()
    code, out, err = status(capsys, str(path))
    assert code == 0, err
    assert err == ""
    assert "Campaign status-demo" in out
    assert "No round recorded yet." in out
    assert "Champion: none yet (the base model is still the best)" in out
    assert "State:    new: no round is recorded yet" in out
    assert f"Next:     round 1 from the base model ({BASE_MODEL}); stages sft, rft" in out
    assert "no rollback adjustments" in out

    data = status_json(capsys, str(path))
    assert data["rounds"] == [] and data["champion"] is None
    assert data["state"] == {
        "state": "new",
        "why": "no round is recorded yet",
        "finished_because": None,
        "running": None,
    }
    assert data["next_round"]["round"] == 1
    assert data["next_round"]["base_uri"] == "" and data["next_round"]["base_round"] is None
    assert data["next_round"]["rollback"] is False and data["next_round"]["refused"] is False


def test_two_rounds_continue_from_the_latest_checkpoint(capsys, campaign_file) -> None:
    path = campaign_file()
    cf = play_all(path, [0.6, 0.7])
    code, out, err = status(capsys, str(path))
    assert code == 0, err
    lines = out.splitlines()
    # The table: the baseline row, then one row per round, the champion starred.
    table = [line for line in lines if line.startswith(("baseline", "1 ", "2 "))]
    assert table[0].split()[:4] == ["baseline", "base", "model", "-"]
    assert table[1].split()[:4] == ["1", "base", "model", "sft>rft"]
    assert table[2].split()[:5] == ["2", "*", "round", "1", "sft>rft"]
    assert "0.7000" in table[2] and "+0.1000" in table[2] and "continue" in table[2]
    # Each round in full: the reason, the deltas, costs, run and times.
    assert "Round 2  run manual__round-2  2026-03-02 11:00:00+00:00 -> " in out
    assert "(25m00s)" in out
    assert "exact_match 0.7 (vs previous +0.1, vs champion +0.1, vs baseline +0.2)" in out
    assert (
        "decision: continue (promoted). Round 2 improved exact_match to 0.7, +0.1 over the "
        "champion (round 1, 0.6), and becomes the champion; round 3 continues from its "
        "checkpoint." in out
    )
    assert "cost: 0.1667 GPU-hours, price unknown, 600 billable seconds" in out
    assert "rougeL" not in out  # only the campaign's metrics
    assert f"Champion: round 2 (exact_match 0.7), checkpoint {output_of(cf, 2)}" in out
    assert "Cost:     0.3333 GPU-hours, price unknown, 1200 billable seconds over 2 rounds" in out
    assert "State:    ready: round 2 decided continue" in out
    assert f"Next:     round 3 from round 2's checkpoint ({output_of(cf, 2)}); stages sft, rft" in (
        out
    )
    assert "no rollback adjustments" in out


def test_a_rollback_restarts_from_the_champion_with_the_adjustments(capsys, campaign_file) -> None:
    path = campaign_file()
    cf = play_all(path, [0.6, 0.5])
    data = status_json(capsys, str(path))
    assert data["rounds"][1]["decision"]["action"] == "rollback"
    assert data["rounds"][1]["decision"]["reason"].startswith("Round 2 regressed: exact_match 0.5")
    assert data["champion"]["round"] == 1
    nxt = data["next_round"]
    assert nxt["round"] == 3 and nxt["base_round"] == 1 and nxt["base_uri"] == output_of(cf, 1)
    assert nxt["rollback"] is True and nxt["rollback_of"] == 2
    assert nxt["adjustments"] == ["learning rate x 0.5 (gate.rollback.lr_scale)"]
    assert "restarts from round 1's checkpoint with half the learning rate" in nxt["reason"]

    code, out, _ = status(capsys, str(path))
    assert code == 0
    assert f"Next:     round 3 from round 1's checkpoint ({output_of(cf, 1)})" in out
    assert (
        "  rollback adjustments (round 2 regressed): learning rate x 0.5 "
        "(gate.rollback.lr_scale)" in out
    )

    # The restarted round is shown as such once it is recorded.
    play(cf, {"exact_match": 0.65, "f1_score": 0.7})
    data = status_json(capsys, str(path))
    third = data["rounds"][2]
    assert third["base"] == "round 1 (rollback of 2)"
    assert third["rollback_of"] == 2 and third["base_round"] == 1
    assert third["deltas"]["previous"] == {"exact_match": pytest.approx(0.15), "f1_score": 0.15}
    assert data["champion"]["round"] == 3
    assert data["next_round"]["rollback"] is False and data["next_round"]["base_round"] == 3
    code, out, _ = status(capsys, str(path))
    assert code == 0
    assert "  rollback of round 2" in out


def test_a_campaign_that_met_its_target_refuses_the_next_round(capsys, campaign_file) -> None:
    path = campaign_file()
    cf = play_all(path, [0.6, 0.96])
    code, out, err = status(capsys, str(path))
    assert code == 0, err
    assert "State:    finished (target met): round 2 met every target (exact_match 0.96)" in out
    assert "Next:     round 3 is refused:" in out
    assert "campaign 'status-demo' is over: round 2 met every target" in out
    assert f"(run anyway, it would start from round 2's checkpoint ({output_of(cf, 2)}))" in out
    assert "  To go on:" in out
    assert f"  - raise gate.max_rounds in {cf.path} (now 5) above 2" in out
    assert f'  - trigger the round with the Param {OVERRIDE_PARAM}: true (conf {{"' in out

    data = status_json(capsys, str(path))
    assert data["state"]["state"] == "finished"
    assert data["state"]["finished_because"] == "target_met"
    nxt = data["next_round"]
    assert nxt["refused"] is True and nxt["round"] == 3 and nxt["base_round"] == 2
    assert len(nxt["refusal"]) == 1 and str(cf.path) in nxt["refusal"][0]
    assert len(nxt["how_to_go_on"]) == 3
    assert OVERRIDE_PARAM in RoundConf.model_fields


def test_max_rounds_finishes_the_campaign_until_it_is_raised(capsys, campaign_file) -> None:
    path = campaign_file(max_rounds=2)
    cf = play_all(path, [0.6, 0.7])
    data = status_json(capsys, str(path))
    assert data["rounds"][1]["decision"]["action"] == "stop"
    assert data["state"]["state"] == "finished"
    assert data["state"]["finished_because"] == "max_rounds"
    assert data["state"]["why"].startswith("round 2 reached max_rounds 2")
    assert data["next_round"]["refused"] is True
    assert "raise gate.max_rounds" in data["next_round"]["refusal"][0]

    campaign_file(max_rounds=4)  # the way to go on the refusal names
    data = status_json(capsys, str(path))
    assert data["state"]["state"] == "ready"
    assert "the campaign file's gate now allows more rounds (max_rounds 4" in data["state"]["why"]
    nxt = data["next_round"]
    assert nxt["refused"] is False and nxt["round"] == 3
    assert nxt["base_round"] == 2 and nxt["base_uri"] == output_of(cf, 2)


def test_a_claimed_round_that_is_not_recorded_is_running(capsys, campaign_file) -> None:
    path = campaign_file()
    cf = play_all(path, [0.6])
    ledger = Ledger(campaign_root(cf.campaign))
    ledger.claim(
        RoundClaim(campaign="status-demo", round=2, run_id="scheduled__2026-03-03"),
        is_active=lambda run_id: True,
    )
    data = status_json(capsys, str(path))
    assert data["state"]["state"] == "running"
    assert data["state"]["running"]["round"] == 2
    assert data["state"]["running"]["run_id"] == "scheduled__2026-03-03"
    assert data["next_round"]["waits_for"] == 2
    code, out, _ = status(capsys, str(path))
    assert code == 0
    assert "State:    running: round 2 was claimed by run scheduled__2026-03-03 at " in out
    assert "round 2 is claimed by a run: a new run waits for it" in out


# --- finding the campaign, bad input --------------------------------------------------------------


def test_a_campaign_is_found_by_name_in_the_campaigns_folder(
    capsys, campaign_file, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = campaign_file()
    monkeypatch.setenv("TUNELOOP_CAMPAIGNS_DIR", str(path.parent))
    assert status_json(capsys, "status-demo")["file"] == str(path)
    renamed = path.rename(path.with_name("some-file.yml"))
    assert status_json(capsys, "status-demo")["file"] == str(renamed)  # by its name: field
    code, out, err = status(capsys, "nothing-here")
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        f"nothing-here: no such campaign file, and no campaign of that name in the campaigns "
        f"folder {path.parent} (campaigns there: status-demo); fix: give the path of a campaign "
        "file, or the name of one in that folder (TUNELOOP_CAMPAIGNS_DIR chooses the folder)"
    ]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            ("max_rounds: 5", "max_round: 5"),
            r"^(?P<file>\S+status-demo\.yaml):\d+: gate\.max_round: .+",
        ),
        (("name: status-demo", "name: Status Demo"), r"^\S+status-demo\.yaml:1: name: .+"),
        (("gate:\n", "gate: [\n"), r"^\S+status-demo\.yaml:\d+: .*YAML.*"),
    ],
)
def test_a_broken_campaign_file_is_one_line_and_exit_2(
    capsys, campaign_file, change: tuple[str, str], expected: str
) -> None:
    path = campaign_file()
    path.write_text(path.read_text().replace(*change), encoding="utf-8")
    code, out, err = status(capsys, str(path))
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert re.match(expected, lines[0]), lines[0]
    assert "Traceback" not in err


def test_a_missing_campaign_file_or_a_broken_ledger_is_one_line(
    capsys, campaign_file, tmp_path: Path
) -> None:
    code, out, err = status(capsys, str(tmp_path / "nope.yaml"))
    assert code == 2 and out == ""
    assert err.startswith(f"{tmp_path / 'nope.yaml'}: no such campaign file")
    assert err.count("\n") == 1

    path = campaign_file()
    cf = play_all(path, [0.6])
    record = Path(Ledger(campaign_root(cf.campaign)).round_uri(1))
    record.write_text(record.read_text()[:40], encoding="utf-8")  # a damaged record
    code, out, err = status(capsys, str(path))
    assert code == 2 and out == ""
    assert err.startswith(f"{record}: not valid JSON") and err.count("\n") == 1
    assert "fix: records are written once" in err


def test_a_subprocess_run_loads_no_airflow_mlflow_or_torch(campaign_file) -> None:
    path = campaign_file()
    play_all(path, [0.6, 0.5])
    code = (
        "import json, sys\n"
        "from tuneloop.cli.main import main\n"
        f"rc = main(['campaign', 'status', {str(path)!r}])\n"
        "heavy = ('airflow', 'mlflow', 'torch', 'transformers', 'boto3', 'matplotlib')\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in heavy)\n"
        "print(json.dumps({'rc': rc, 'loaded': loaded}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "plugins")}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode == 0, result.stderr
    *printed, last = result.stdout.strip().splitlines()
    assert json.loads(last) == {"rc": 0, "loaded": []}
    assert any(line.startswith("Next:     round 3 from round 1's checkpoint") for line in printed)


# --- the JSON object -----------------------------------------------------------------------------


def test_the_json_object_holds_every_field(capsys, campaign_file) -> None:
    path = campaign_file()
    cf = play_all(path, [0.6, 0.7])
    data = status_json(capsys, str(path))
    assert set(data) == {
        "campaign",
        "file",
        "ledger",
        "primary_metric",
        "higher_is_better",
        "targets",
        "max_rounds",
        "baseline",
        "rounds",
        "champion",
        "totals",
        "state",
        "next_round",
    }
    assert data["campaign"] == "status-demo" and data["file"] == str(path)
    assert data["ledger"] == campaign_root(cf.campaign)
    assert data["targets"] == {"exact_match": ">= 0.95"} and data["max_rounds"] == 5
    assert data["baseline"] == BASELINE
    second = data["rounds"][1]
    assert second == {
        "round": 2,
        "run_id": "manual__round-2",
        "base": "round 1",
        "base_uri": output_of(cf, 1),
        "base_round": 1,
        "rollback_of": None,
        "stages": ["sft", "rft"],
        "primary": 0.7,
        "metrics": {"exact_match": 0.7, "f1_score": 0.75},
        "deltas": {
            "previous": {"exact_match": 0.1, "f1_score": 0.1},
            "champion": {"exact_match": 0.1, "f1_score": 0.1},
            "baseline": {"exact_match": 0.2, "f1_score": 0.2},
        },
        "decision": {
            "action": "continue",
            "reason": second["decision"]["reason"],
            "promoted": True,
            "champion_round": 2,
            "recommendation": "",
        },
        "checkpoint": output_of(cf, 2),
        "gpu_hours": pytest.approx(600 / 3600),
        "billable_seconds": 600.0,
        "cost_usd": None,  # written without a price: unknown, not free
        "cost_note": "",
        "started_at": "2026-03-02T11:00:00Z",
        "ended_at": "2026-03-02T11:25:00Z",
        "recorded_at": second["recorded_at"],
    }
    assert second["decision"]["reason"].startswith("Round 2 improved exact_match to 0.7")
    assert data["champion"] == {
        "round": 2,
        "checkpoint": output_of(cf, 2),
        "model_uri": f"{output_of(cf, 2)}/checkpoint",
        "primary": 0.7,
    }
    assert data["totals"] == {
        "rounds": 2,
        "gpu_hours": pytest.approx(1200 / 3600),
        "billable_seconds": 1200.0,
        "cost_usd": None,
        "price_sources": [],
        "budget_usd": None,
        "budget_gpu_hours": None,
    }
    assert data["state"]["state"] == "ready"
    assert data["next_round"] == {
        "round": 3,
        "starts_from": f"round 2's checkpoint ({output_of(cf, 2)})",
        "base_uri": output_of(cf, 2),
        "base_round": 2,
        "rollback": False,
        "rollback_of": None,
        "adjustments": [],
        "stages": ["sft", "rft"],
        "reason": data["rounds"][1]["decision"]["reason"],
        "refused": False,
        "refusal": [],
        "how_to_go_on": [],
        "waits_for": None,
    }


# --- a ledger on S3 ------------------------------------------------------------------------------


def test_a_ledger_on_s3(capsys, s3_server: str, tmp_path: Path) -> None:
    from tuneloop.storage import s3_client

    bucket = f"status-{uuid.uuid4().hex[:12]}"
    s3_client().create_bucket(Bucket=bucket)
    backend = (
        "backend:\n  type: smtj\n  region: us-east-1\n"
        "  role_arn: arn:aws:iam::123456789012:role/Training\n"
        f"  output_root: s3://{bucket}/tuneloop\n"
    )
    path = tmp_path / "s3-campaign.yaml"
    path.write_text(campaign_text("", backend=backend), encoding="utf-8")
    cf = play_all(path, [0.6, 0.5])
    assert Ledger(campaign_root(cf.campaign)).root == f"s3://{bucket}/tuneloop/status-demo"

    data = status_json(capsys, str(path))
    assert data["ledger"] == f"s3://{bucket}/tuneloop/status-demo"
    assert [r["decision"]["action"] for r in data["rounds"]] == ["continue", "rollback"]
    assert data["champion"]["round"] == 1
    assert data["champion"]["checkpoint"] == output_of(cf, 1)
    assert output_of(cf, 1).startswith(f"s3://{bucket}/tuneloop/status-demo/rounds/0001/")
    assert data["next_round"]["round"] == 3 and data["next_round"]["rollback"] is True

    # A bucket that is not there: one line naming it, exit 2.
    path.write_text(campaign_text("", backend=backend.replace(bucket, bucket + "-gone")))
    code, out, err = status(capsys, str(path))
    assert code == 2 and out == ""
    assert err.startswith(f"s3://{bucket}-gone/tuneloop/status-demo/rounds: cannot list it")
    assert err.count("\n") == 1 and "NoSuchBucket" in err
