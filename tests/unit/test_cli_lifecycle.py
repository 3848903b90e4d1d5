"""`tuneloop lifecycle`: plan, apply, restore, pin and apply-policy on real ledgers.

Rounds are recorded as the round DAG records them (the real gate decides, `Ledger.write` writes
once), and each stage leaves a real output folder on disk; the commands then plan, archive to
tarballs and restore through `tuneloop.lifecycle.service`, the same code the lifecycle DAG runs.
The S3 side of apply-policy runs against moto's server.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from lifecycle_ledgers import (
    EXPIRE_LOGS,
    checkpoint,
    keep_two_text,
    stage_folder,
    stage_record,
    with_rules,
)
from tuneloop.cli.main import main
from tuneloop.config.file import CampaignFile, load_for_rounds
from tuneloop.config.paths import campaign_root, round_root
from tuneloop.lifecycle.records import LifecyclePlan
from tuneloop.recipes.catalog import MODELS
from tuneloop.rounds.gate import RoundSummary, decide
from tuneloop.rounds.ledger import Ledger, RoundRecord, history_of
from tuneloop.rounds.start import start_round

BASELINE = {"exact_match": 0.1}
BASE_MODEL = MODELS["local.tiny-chat-v1"].base_model
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
WEIGHTS = 200_000
"""Bytes of each stage's weights file: enough to be worth archiving."""


@pytest.fixture
def campaigns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TUNELOOP_PROJECT_DIR", str(tmp_path))
    folder = tmp_path / "campaigns"
    folder.mkdir()
    monkeypatch.setenv("TUNELOOP_CAMPAIGNS_DIR", str(folder))
    (folder / "keep-two.yaml").write_text(keep_two_text(str(tmp_path / "out")), encoding="utf-8")
    return folder


def play(cf: CampaignFile, score: float) -> RoundRecord:
    """One round as the DAG plays it, each stage leaving its output folder on disk."""
    campaign = cf.campaign
    ledger = Ledger(campaign_root(campaign))
    start = start_round(cf, {})
    n = start.round
    began = T0 + timedelta(hours=n)
    stages, lineage = [], []
    for index, stage in enumerate(campaign.stages):
        output = f"{round_root(campaign, n)}/{campaign.name}-r{n:04d}-{stage.name}"
        folder = stage_folder(
            Path(output),
            weights=bytes([n, index]) * (WEIGHTS // 2),
            manifest=json.dumps({"checkpoint_s3_bucket": output}),
        )
        lineage.append(stage.method)
        held = checkpoint(
            str(folder / "checkpoint"),
            output,
            model_type=campaign.model_type,
            technique=campaign.technique,
            lineage=tuple(lineage),
        )
        stages.append(
            stage_record(
                stage.name,
                output,
                method=stage.method,
                technique=campaign.technique,
                checkpoint=held,
                started_at=began,
                ended_at=began + timedelta(minutes=9),
            )
        )
    metrics = {"exact_match": score}
    summary = RoundSummary(
        round=n,
        metrics=metrics,
        checkpoint=stages[-1].output_uri,
        stages=[s.name for s in stages],
        methods=[s.method for s in stages],
        lineage=lineage,
        gpu_hours=0.1,
    )
    records = ledger.records()
    decision = decide(
        campaign.gate,
        summary,
        history_of(records),
        stages=campaign.stages,
        technique=campaign.technique,
        baseline=BASELINE,
    )
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
        evaluation={"job_name": f"eval-{n}", "metrics": metrics},
        baseline=BASELINE,
        metrics=metrics,
        decision=decision,
    )
    return ledger.write(record)


def three_rounds(campaigns: Path) -> CampaignFile:
    cf = load_for_rounds(campaigns / "keep-two.yaml")
    for score in (0.3, 0.5, 0.7):
        play(cf, score)
    return cf


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["lifecycle", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def succeeded(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """What ``tuneloop lifecycle <argv>`` printed; it has to exit 0."""
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    return out


def round_folders(cf: CampaignFile, number: int) -> list[Path]:
    return sorted(Path(round_root(cf.campaign, number)).glob(f"{cf.campaign.name}-*"))


def tarballs(cf: CampaignFile) -> list[Path]:
    return sorted((Path(campaign_root(cf.campaign)) / "archive").rglob("*.tar.gz"))


def test_plan_prints_what_it_would_do_records_it_and_moves_nothing(
    campaigns: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cf = three_rounds(campaigns)
    out = succeeded(capsys, "plan", "keep-two")
    assert out.startswith("Lifecycle plan 1 of campaign keep-two: keep_last 2, archive to GLACIER")
    acting = [line for line in out.splitlines() if line.startswith("  archive ")]
    assert len(acting) == 2  # round 1's two stage folders
    assert all("local" in line and "LOCAL -> LOCAL_ARCHIVE" in line for line in acting)
    assert all("rounds/0001/keep-two-r0001-" in line for line in acting)
    assert "  round 3: champion" in out
    assert "one of the last 2 rounds" in out
    assert "estimated storage cost: $" in out and "/month now, $" in out and "(prices: " in out
    assert "first plan" in out

    # Recorded, and nothing moved.
    plans = Path(campaign_root(cf.campaign)) / "lifecycle" / "plans"
    assert [p.name for p in plans.iterdir()] == ["0001.json"]
    assert len(round_folders(cf, 1)) == 2 and not tarballs(cf)

    out = succeeded(capsys, "plan", str(campaigns / "keep-two.yaml"), "--json")
    plan = LifecyclePlan.model_validate_json(out)
    assert plan.sequence == 2 and not plan.first
    assert {a.artifact.round for a in plan.acting()} == {1}


def test_apply_archives_to_tarballs_and_a_second_apply_does_nothing(
    campaigns: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cf = three_rounds(campaigns)
    out = succeeded(capsys, "apply", "keep-two")
    assert "  archived: 2 (" in out
    assert out.count("    rounds/0001/keep-two-r0001-") == 2
    assert out.count(".tar.gz") == 2
    assert "/month saved (prices: " in out
    assert round_folders(cf, 1) == []
    assert len(tarballs(cf)) == 2
    assert len(round_folders(cf, 2)) == 2 and len(round_folders(cf, 3)) == 2

    out = succeeded(capsys, "apply", "keep-two", "--json")
    again = json.loads(out)
    assert again["report"]["results"] == [] or all(
        r["outcome"] == "skipped" for r in again["report"]["results"]
    )
    assert again["report"]["bytes_archived"] == 0
    assert len(tarballs(cf)) == 2


def test_restore_brings_an_archived_round_back(
    campaigns: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cf = three_rounds(campaigns)
    last_stage = Path(round_root(cf.campaign, 1)) / "keep-two-r0001-rft"  # what a round reads
    weights = last_stage / "checkpoint" / "weights.bin"
    content = weights.read_bytes()
    assert run(capsys, "apply", "keep-two")[0] == 0
    assert not weights.exists()

    out = succeeded(capsys, "restore", "keep-two", "--round", "1")
    assert "Restore of round 1" in out and "round 1 is readable again" in out
    assert weights.read_bytes() == content

    out = succeeded(capsys, "restore", "keep-two", "--round", "3")
    assert out == "round 3 has nothing archived: nothing to restore\n"


def test_a_pinned_round_is_kept(campaigns: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cf = three_rounds(campaigns)
    out = succeeded(capsys, "pin", "keep-two", "--round", "1", "--reason", "audit 2026")
    assert out == (
        "round 1 of campaign keep-two is pinned (audit 2026): the lifecycle keeps it whatever "
        "the retention rules say\n"
    )
    out = succeeded(capsys, "apply", "keep-two")
    assert "nothing to do" in out
    assert len(round_folders(cf, 1)) == 2 and not tarballs(cf)
    out = succeeded(capsys, "plan", "keep-two")
    assert "  round 1: pinned" in out


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["plan", "no-such-campaign"], "no such campaign file"),
        (["pin", "keep-two", "--round", "7"], "round: round 7 was never recorded"),
        (["restore", "keep-two", "--round", "7"], "round: round 7 was never recorded"),
        (["apply-policy", "keep-two"], "bucket lifecycle rules apply to S3 output roots"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    campaigns: Path, capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    three_rounds(campaigns)
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert len(err.splitlines()) == 1, err
    assert expected in err


def test_round_must_be_a_round_number(campaigns: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["lifecycle", "restore", "keep-two", "--round", "0"])
    assert exit_.value.code == 2
    assert "--round: 0 is less than 1" in capsys.readouterr().err


def test_apply_policy_merges_the_archive_rule_into_the_bucket(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    s3_server: str,
) -> None:
    from tuneloop.storage import s3_client

    monkeypatch.setenv("TUNELOOP_PROJECT_DIR", str(tmp_path))
    client = s3_client()
    client.create_bucket(Bucket="lifecycle-cli")
    with_rules("lifecycle-cli", EXPIRE_LOGS)
    path = tmp_path / "s3-campaign.yaml"
    path.write_text(
        keep_two_text("s3://lifecycle-cli/tuneloop", name="on-s3", extra="  archive_mode: tags\n"),
        encoding="utf-8",
    )
    out = succeeded(capsys, "apply-policy", str(path), "--json")
    written = json.loads(out)
    assert written["prefix"] == "tuneloop/on-s3/"
    ids = [rule["ID"] for rule in written["rules"]]
    assert ids == ["expire-logs", written["rule_id"]]

    out = succeeded(capsys, "apply-policy", str(path))  # again: replaced, not added
    assert "tagged tuneloop-archive=GLACIER move to GLACIER" in out
    assert "note:" not in out  # archive_mode: tags
    rules = client.get_bucket_lifecycle_configuration(Bucket="lifecycle-cli")["Rules"]
    assert [rule["ID"] for rule in rules] == ids
