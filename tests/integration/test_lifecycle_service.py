"""The lifecycle service end to end, as the DAG and the command line call it: plan and record,
apply, pin, restore a round, on a local campaign and on S3 (moto)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from lifecycle_ledgers import STAGES, build_s3_tree, build_tree, files_of
from tuneloop.config.file import CampaignFile
from tuneloop.lifecycle.local_archive import archive_location
from tuneloop.lifecycle.service import (
    apply_campaign,
    pin_round,
    plan_campaign,
    restore_round,
)
from tuneloop.lifecycle.store import LifecycleError, LifecycleStore


def local_campaign(tmp_path: Path, rounds: int = 3) -> CampaignFile:
    """A local campaign under ``tmp_path/out`` that keeps its last round only, whatever the
    size of a stage folder."""
    return build_tree(tmp_path, rounds=rounds, keep_last=1, min_archive_bytes=0).cf


def test_plan_is_recorded_numbered_and_first_only_once(tmp_path: Path) -> None:
    cf = local_campaign(tmp_path)
    store = LifecycleStore.for_campaign(cf.campaign)
    dry = plan_campaign(cf, record=False)
    assert dry.first and store.plans() == []
    first = plan_campaign(cf, run_id="scheduled__1")
    second = plan_campaign(cf, run_id="scheduled__2")
    assert (first.sequence, first.first) == (1, True)
    assert (second.sequence, second.first) == (2, False)
    assert [p.sequence for p in store.plans()] == [1, 2]
    assert {Path(a.artifact.uri).name for a in first.acting()} == {
        f"demo-r0001-{s}" for s in STAGES
    } | {f"demo-r0002-{s}" for s in STAGES}


def test_planners_at_the_same_time_get_distinct_numbers(tmp_path: Path) -> None:
    cf = local_campaign(tmp_path, rounds=2)
    start = threading.Barrier(4)
    sequences: list[int] = []
    errors: list[BaseException] = []

    def plan() -> None:
        start.wait()
        try:
            sequences.append(plan_campaign(cf).sequence)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=plan) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert sorted(sequences) == [1, 2, 3, 4]
    plans = LifecycleStore.for_campaign(cf.campaign).plans()
    assert [p.first for p in plans] == [True, False, False, False]


def test_restore_round_brings_back_its_final_stage(tmp_path: Path) -> None:
    cf = local_campaign(tmp_path)
    root = tmp_path / "out" / "demo"
    final = root / "rounds" / "0001" / "demo-r0001-rft"
    before = files_of(final)
    apply_campaign(cf)
    assert not final.exists()

    plan, pending = restore_round(cf, 1)
    assert plan is not None and pending == []
    assert plan.base_round == 1 and [i.uri for i in plan.items] == [str(final)]
    assert plan.items[0].archive_uri == archive_location(str(root), str(final))
    assert files_of(final) == before
    # The intermediate stage stays archived: a round restarts from its final stage.
    assert not (root / "rounds" / "0001" / "demo-r0001-sft").exists()
    assert restore_round(cf, 1) == (None, [])


def test_pin_refuses_a_round_never_recorded(tmp_path: Path) -> None:
    cf = local_campaign(tmp_path)
    with pytest.raises(LifecycleError) as info:
        pin_round(cf, 9)
    (problem,) = info.value.problems
    assert "round 9 was never recorded" in problem.message
    assert "rounds 1-3" in problem.message and problem.source == str(cf.path)
    with pytest.raises(LifecycleError, match="round 4 was never recorded"):
        restore_round(cf, 4)


def test_a_pin_keeps_its_round_and_is_idempotent(tmp_path: Path) -> None:
    cf = local_campaign(tmp_path)
    first = pin_round(cf, 1, by="alice", reason="published")
    again = pin_round(cf, 1, by="bob", reason="later")
    assert again == first
    _, report = apply_campaign(cf)
    assert {Path(r.uri).name for r in report.results} == {f"demo-r0002-{s}" for s in STAGES}
    assert (tmp_path / "out" / "demo" / "rounds" / "0001" / "demo-r0001-sft").is_dir()


def test_cli_pin_of_a_round_never_recorded_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tuneloop.cli.main import main

    cf = local_campaign(tmp_path)
    code = main(["lifecycle", "pin", str(cf.path), "--round", "7"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "round 7 was never recorded" in err[0] and "1-3" in err[0]


def test_s3_campaign_apply_then_restore_round(s3_server: str, tmp_path: Path) -> None:
    from tuneloop.lifecycle import objects

    tree = build_s3_tree(
        tmp_path,
        rounds=2,
        stages=STAGES,
        job_objects={"output/output.tar.gz": bytes(4096)},
        escrow=False,
        keep_last=1,
        min_archive_bytes=0,
    )
    cf, root = tree.cf, tree.root
    _, report = apply_campaign(cf)
    final = f"{root}/rounds/0001/demo-r0001-rft/output/output.tar.gz"
    assert {r.uri: r.outcome for r in report.results}[final] == "archived"
    info = objects.head(final)
    assert info is not None and info.storage_class == "GLACIER"

    plan, pending = restore_round(cf, 1)
    assert plan is not None and [i.uri for i in plan.items] == [final]
    assert pending == []  # moto restores at once
    info = objects.head(final)
    assert info is not None and objects.restore_state(info) == "restored"
    assert restore_round(cf, 1) == (None, [])
