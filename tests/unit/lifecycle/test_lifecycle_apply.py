"""Apply on a real local campaign tree: archive, delete, crash anywhere and apply again, and a
round claimed while apply runs.

Every tree is a campaign folder with a ledger of recorded rounds (two stages each, SFT then RFT)
and their stage and evaluation folders on disk; plans come from `service.plan_campaign`, so the
inventory, retention and planning are the real ones.
"""

from __future__ import annotations

import contextlib
import tarfile
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lifecycle_ledgers import (
    ESCROW,
    KB,
    STAGES,
    S3Tree,
    Tree,
    build_s3_tree,
    build_tree,
    files_of,
    round_claim,
)
from tuneloop.lifecycle.apply import apply_plan
from tuneloop.lifecycle.local_archive import extract_tarball, read_digest, verify_tarball
from tuneloop.lifecycle.records import LOCAL_ARCHIVE_CLASS, ApplyReport, LifecyclePlan
from tuneloop.lifecycle.service import apply_campaign, plan_campaign, protection_now
from tuneloop.rounds.ledger import RoundClaim

LOCAL_STEPS = ("tarball-written", "verified", "recorded", "original-removed", "deleted")
TREES = settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
"""Hypothesis settings for tests that build a campaign tree per example."""


# --- a campaign tree ----------------------------------------------------------------------------


def snapshot(tree: Tree) -> dict[Path, dict[str, bytes]]:
    """Every file of every round folder, by folder."""
    folders = [tree.folder(n, s) for n in range(1, tree.rounds + 1) for s in STAGES]
    folders += [tree.evaluation(n) for n in range(1, tree.rounds + 1)]
    return {folder: files_of(folder) for folder in folders}


def files_in_tarball(tarball: Path) -> dict[str, bytes]:
    found = {}
    with tarfile.open(tarball) as archive:
        for member in archive.getmembers():
            if member.isfile():
                handle = archive.extractfile(member)
                assert handle is not None
                found[member.name] = handle.read()
    return found


def assert_nothing_lost(
    tree: Tree, before: dict[Path, dict[str, bytes]], deletable: set[Path]
) -> None:
    """Every file is in its folder or in a verified tarball; only planned deletes may be gone."""
    for folder, files in before.items():
        if folder.is_dir():
            assert files_of(folder) == files, folder
            continue
        tarball = tree.tarball(folder)
        if tarball.is_file():
            digest = read_digest(str(tarball))
            assert digest is not None and verify_tarball(str(tarball), digest), tarball
            assert files_in_tarball(tarball) == files, tarball
            continue
        assert folder in deletable, f"{folder} is gone and has no tarball"


def planned(plan: LifecyclePlan, action: str) -> set[Path]:
    return {Path(line.artifact.uri) for line in plan.actions if line.action == action}


def protection(tree: Tree | S3Tree) -> Callable[[], tuple[set[int], set[str]]]:
    store = tree.store()
    return lambda: protection_now(tree.campaign, store)


def apply_with(
    tree: Tree | S3Tree, plan: LifecyclePlan, crash_at: Callable[[str, str], None] | None = None
) -> ApplyReport:
    """``plan`` applied as the lifecycle DAG's task applies it, ``crash_at`` called at each step."""
    return apply_plan(
        tree.campaign, plan, store=tree.store(), still_protected=protection(tree), crash_at=crash_at
    )


class Crash(Exception):
    """A process dying at a step, as far as apply can tell."""


def crash_on(step: str, occurrence: int = 1) -> Callable[[str, str], None]:
    seen = 0

    def crash_at(name: str, uri: str) -> None:
        nonlocal seen
        if name == step:
            seen += 1
            if seen == occurrence:
                raise Crash(f"{step} #{occurrence} ({uri})")

    return crash_at


# --- archive -----------------------------------------------------------------------------------


def test_apply_archives_candidates_keeps_the_rest_and_a_second_apply_does_nothing(
    tmp_path: Path,
) -> None:
    tree = build_tree(tmp_path, rounds=5, champion=5, keep_last=2)
    before = snapshot(tree)
    plan, report = apply_campaign(tree.cf, run_id="cli-test")

    assert plan.first and plan.sequence == 1
    archived = {Path(r.uri) for r in report.results if r.outcome == "archived"}
    expected = {tree.folder(n, s) for n in (1, 2, 3) for s in STAGES}
    assert archived == expected
    assert all(r.outcome == "archived" for r in report.results)
    assert report.bytes_archived == sum(
        sum(len(b) for b in before[folder].values()) for folder in expected
    )
    assert report.monthly_cost_after <= report.monthly_cost_before
    for folder in expected:
        assert not folder.exists()
        done = tree.store().done(str(folder), "archive")
        assert done is not None and done.storage_class == LOCAL_ARCHIVE_CLASS
        assert done.archive_uri == str(tree.tarball(folder))
        assert verify_tarball(done.archive_uri, done.digest or "")
    for n in (4, 5):
        for stage in STAGES:
            assert files_of(tree.folder(n, stage)) == before[tree.folder(n, stage)]
    for n in range(1, 6):
        assert files_of(tree.evaluation(n)) == before[tree.evaluation(n)]
    assert tree.store().apply_of(1) == report

    second_plan, second = apply_campaign(tree.cf, run_id="cli-test-2")
    assert second_plan.sequence == 2 and not second_plan.first
    assert second_plan.acting() == []
    assert second.results == [] and second.bytes_archived == 0
    assert_nothing_lost(tree, before, set())


def test_applying_an_applied_plan_returns_its_report_and_acts_on_nothing(tmp_path: Path) -> None:
    tree = build_tree(tmp_path, rounds=4, keep_last=2)
    plan = plan_campaign(tree.cf)
    first = apply_with(tree, plan)

    def no_step(step: str, uri: str) -> None:
        raise AssertionError(f"{step} on {uri}: an applied plan acted again")

    again = apply_with(tree, plan, no_step)
    assert again == first


def test_the_champion_and_the_next_base_are_never_archived(tmp_path: Path) -> None:
    tree = build_tree(tmp_path, rounds=6, champion=2, keep_last=1)
    _, report = apply_campaign(tree.cf)
    archived = {Path(r.uri) for r in report.results if r.outcome == "archived"}
    assert archived == {tree.folder(n, s) for n in (1, 3, 4, 5) for s in STAGES}
    assert tree.folder(2, "rft").is_dir() and tree.folder(2, "sft").is_dir()
    assert tree.folder(6, "rft").is_dir()


def test_a_pinned_round_is_kept(tmp_path: Path) -> None:
    from tuneloop.lifecycle.service import pin_round

    tree = build_tree(tmp_path, rounds=4, keep_last=1)
    pin_round(tree.cf, 2, by="alice", reason="the paper's numbers")
    _, report = apply_campaign(tree.cf)
    assert {Path(r.uri) for r in report.results} == {
        tree.folder(n, s) for n in (1, 3) for s in STAGES
    }
    assert tree.folder(2, "sft").is_dir() and tree.folder(2, "rft").is_dir()


def test_one_failing_artifact_does_not_stop_the_others(tmp_path: Path) -> None:
    tree = build_tree(tmp_path, rounds=4, keep_last=1)
    # A file where round 1's archive folder should be: its tarballs cannot be written.
    blocker = tree.root / "archive" / "rounds" / "0001"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("in the way")
    before = snapshot(tree)
    _, report = apply_campaign(tree.cf)
    outcomes = {Path(r.uri): (r.outcome, r.detail) for r in report.results}
    for stage in STAGES:
        outcome, detail = outcomes[tree.folder(1, stage)]
        assert outcome == "failed" and detail, detail
        assert tree.folder(1, stage).is_dir()
        assert outcomes[tree.folder(2, stage)][0] == "archived"
    assert report.bytes_archived > 0
    assert_nothing_lost(tree, before, set())


# --- delete ------------------------------------------------------------------------------------


def test_delete_intermediates_deletes_superseded_rounds_and_intermediate_stages(
    tmp_path: Path,
) -> None:
    tree = build_tree(tmp_path, rounds=5, keep_last=2, delete_intermediates=True)
    _, report = apply_campaign(tree.cf)
    deleted = {Path(r.uri) for r in report.results if r.outcome == "deleted"}
    superseded = {tree.folder(n, s) for n in (1, 2, 3) for s in STAGES}
    assert deleted == superseded | {tree.folder(4, "sft")}
    assert all(not folder.exists() for folder in deleted)
    assert not (tree.root / "archive").exists()
    assert tree.folder(4, "rft").is_dir()
    assert tree.folder(5, "sft").is_dir() and tree.folder(5, "rft").is_dir()
    assert report.bytes_deleted > 0
    _, second = apply_campaign(tree.cf)
    assert second.results == []


def test_a_delete_waits_for_a_newer_rounds_record(tmp_path: Path) -> None:
    tree = build_tree(tmp_path, rounds=3, keep_last=3, delete_intermediates=True)
    plan = plan_campaign(tree.cf, record=False)
    line = next(a for a in plan.actions if a.artifact.uri == str(tree.folder(3, "sft")))
    # A plan that says delete for the latest round's stage: the ledger has no newer round.
    forged = plan.model_copy(update={"actions": [line.model_copy(update={"action": "delete"})]})
    report = apply_with(tree, forged)
    (result,) = report.results
    assert result.outcome == "skipped" and "no round newer than round 3" in result.detail
    assert tree.folder(3, "sft").is_dir()


# --- crashes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("step", LOCAL_STEPS)
@pytest.mark.parametrize("occurrence", [1, 2])
def test_a_crash_at_any_step_loses_nothing_and_the_next_apply_finishes(
    tmp_path: Path, step: str, occurrence: int
) -> None:
    delete = step == "deleted"
    tree = build_tree(tmp_path, rounds=5, keep_last=2, delete_intermediates=delete)
    before = snapshot(tree)
    plan = plan_campaign(tree.cf)
    with pytest.raises(Crash):
        apply_with(tree, plan, crash_on(step, occurrence))
    assert tree.store().apply_of(plan.sequence) is None
    assert_nothing_lost(tree, before, planned(plan, "delete"))

    _, report = apply_campaign(tree.cf)
    assert all(r.outcome != "failed" for r in report.results), report.results
    assert_finished(tree, plan)
    assert_nothing_lost(tree, before, planned(plan, "delete"))
    _, last = apply_campaign(tree.cf)
    assert last.results == []


def assert_finished(tree: Tree, plan: LifecyclePlan) -> None:
    for folder in planned(plan, "archive"):
        assert not folder.exists(), folder
        assert tree.tarball(folder).is_file()
    for folder in planned(plan, "delete"):
        assert not folder.exists(), folder
        assert not tree.tarball(folder).exists()
    leftovers = [p for p in tree.root.rglob(".*") if p.name not in (".", "..")]
    assert leftovers == []


@TREES
@given(
    rounds=st.integers(min_value=2, max_value=5),
    keep_last=st.integers(min_value=1, max_value=3),
    champion_back=st.integers(min_value=0, max_value=3),
    delete_intermediates=st.booleans(),
    crashes=st.lists(
        st.tuples(st.sampled_from(LOCAL_STEPS), st.integers(min_value=1, max_value=4)),
        max_size=3,
    ),
)
def test_any_crashes_then_an_apply_lose_nothing_and_finish(
    rounds: int,
    keep_last: int,
    champion_back: int,
    delete_intermediates: bool,
    crashes: list[tuple[str, int]],
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        tree = build_tree(
            Path(folder),
            rounds=rounds,
            keep_last=keep_last,
            champion=max(1, rounds - champion_back),
            delete_intermediates=delete_intermediates,
        )
        before = snapshot(tree)
        plan = plan_campaign(tree.cf)
        deletable = planned(plan, "delete")
        for step, occurrence in crashes:
            # The same plan again after each crash, as an Airflow retry of the task would.
            with contextlib.suppress(Crash):
                apply_with(tree, plan, crash_on(step, occurrence))
            assert_nothing_lost(tree, before, deletable)
        report = apply_with(tree, plan)
        assert all(r.outcome != "failed" for r in report.results), report.results
        assert_finished(tree, plan)
        assert_nothing_lost(tree, before, deletable)
        _, last = apply_campaign(tree.cf)
        assert last.results == []


# --- a round claimed while apply runs ---------------------------------------------------------


def claim_round(tree: Tree, base: Path, base_round: int) -> RoundClaim:
    return tree.ledger().claim(
        round_claim(
            tree.rounds + 1,
            run_id="scheduled__next",
            base_output_uri=str(base),
            base_round=base_round,
        ),
        is_active=lambda run_id: True,
    )


@pytest.mark.parametrize("step", ["tarball-written", "verified", "recorded"])
def test_a_base_claimed_before_its_removal_is_never_removed(tmp_path: Path, step: str) -> None:
    tree = build_tree(tmp_path, rounds=5, keep_last=2)
    base = tree.folder(2, "rft")
    plan = plan_campaign(tree.cf)
    assert base in planned(plan, "archive")
    claimed = threading.Event()

    def claim_then_go_on(name: str, uri: str) -> None:
        # The claiming run is another thread; apply goes on only once its claim is written.
        if name == step and uri == str(base) and not claimed.is_set():

            def claim() -> None:
                claim_round(tree, base, 2)
                claimed.set()

            worker = threading.Thread(target=claim)
            worker.start()
            assert claimed.wait(timeout=30), "the claim was never written"
            worker.join()

    report = apply_with(tree, plan, claim_then_go_on)
    outcomes = {Path(r.uri): r for r in report.results}
    for stage in STAGES:
        result = outcomes[tree.folder(2, stage)]
        assert result.outcome == "skipped" and "kept now" in result.detail, result
        assert tree.folder(2, stage).is_dir()
    assert outcomes[tree.folder(1, "rft")].outcome == "archived"
    assert outcomes[tree.folder(3, "rft")].outcome == "archived"


def claimed_once_set_aside(
    tree: Tree, base: Path, *, restore_meanwhile: bool
) -> Callable[[], tuple[set[int], set[str]]]:
    """The ledger as apply reads it, with a round claiming ``base`` the moment apply has set
    the folder aside (the one point between its last look and the removal). With
    ``restore_meanwhile``, that round's restore_base, looking then, found the folder missing
    and extracted its tarball."""
    looks = protection(tree)

    def ledger_now() -> tuple[set[int], set[str]]:
        aside = base.parent / f".{base.name}.removing"
        if aside.is_dir() and not tree.ledger().claims(6):
            claim_round(tree, base, 2)
            if restore_meanwhile:
                tarball = str(tree.tarball(base))
                digest = read_digest(tarball)
                assert digest is not None
                extract_tarball(tarball, str(base), digest)
        return looks()

    return ledger_now


@pytest.mark.parametrize("restore_meanwhile", [False, True], ids=["put-back", "restored"])
def test_a_base_claimed_while_it_is_set_aside_stays(
    tmp_path: Path, restore_meanwhile: bool
) -> None:
    """The claim lands after apply's last look but before the folder is deleted: apply asks
    the ledger once more with the folder set aside and puts it back (or, when the round's
    restore_base has already extracted it, keeps that copy). The round finds its base."""
    tree = build_tree(tmp_path, rounds=5, keep_last=2)
    before = snapshot(tree)
    base = tree.folder(2, "rft")
    plan = plan_campaign(tree.cf)
    assert base in planned(plan, "archive")
    report = apply_plan(
        tree.campaign,
        plan,
        store=tree.store(),
        still_protected=claimed_once_set_aside(tree, base, restore_meanwhile=restore_meanwhile),
    )
    (result,) = [r for r in report.results if Path(r.uri) == base]
    assert result.outcome == "skipped" and "kept now" in result.detail, result
    assert base.is_dir() and files_of(base) == before[base]
    assert not (base.parent / f".{base.name}.removing").exists()
    assert_nothing_lost(tree, before, set())


def test_a_claim_racing_apply_never_loses_its_base(tmp_path: Path) -> None:
    """The claim and the apply run at the same time, with no hook between them: whichever is
    first, the claimed base is either still a folder or was archived before the claim landed
    (and is then a verified tarball a restore brings back)."""
    tree = build_tree(tmp_path, rounds=5, keep_last=2)
    before = snapshot(tree)
    base = tree.folder(3, "rft")
    start = threading.Barrier(2)
    results: dict[str, object] = {}

    def claim() -> None:
        start.wait()
        results["claim"] = claim_round(tree, base, 3)

    def apply() -> None:
        start.wait()
        results["apply"] = apply_campaign(tree.cf)

    threads = [threading.Thread(target=claim), threading.Thread(target=apply)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert set(results) == {"claim", "apply"}
    assert_nothing_lost(tree, before, set())
    # From now on the claimed base stays: a further apply keeps it.
    if base.is_dir():
        _, report = apply_campaign(tree.cf)
        assert str(base) not in {r.uri for r in report.results}
        assert base.is_dir()


# --- S3 (moto) -----------------------------------------------------------------------------------


def storage_class(uri: str) -> str:
    from tuneloop.lifecycle.objects import head

    info = head(uri)
    assert info is not None, uri
    return info.storage_class


def tags(uri: str) -> dict[str, str]:
    from tuneloop.storage import s3_client, split_s3

    bucket, key = split_s3(uri)
    found = s3_client().get_object_tagging(Bucket=bucket, Key=key)["TagSet"]
    return {tag["Key"]: tag["Value"] for tag in found}


def test_s3_copy_mode_moves_candidates_to_the_archive_class(s3_server: str, tmp_path: Path) -> None:
    tree = build_s3_tree(tmp_path, rounds=3, keep_last=1)
    _, report = apply_campaign(tree.cf)
    by_uri = {r.uri: r for r in report.results}
    for n in (1, 2):
        for name in ("output/output.tar.gz", "tensorboard/events.out"):
            uri = f"{tree.folder(n)}/{name}"
            assert by_uri[uri].outcome == "archived", by_uri[uri]
            assert storage_class(uri) == "GLACIER"
            done = tree.store().done(uri, "archive")
            assert done is not None and done.storage_class == "GLACIER" and done.digest
        # Read by planning, and too small to be worth archiving: left readable.
        assert storage_class(f"{tree.folder(n)}/manifest.json") == "STANDARD"
        # The escrow bucket let this account act: its checkpoint was archived too.
        escrow = f"{tree.escrow_prefix(n)}/model.bin"
        assert by_uri[escrow].outcome == "archived"
        assert storage_class(escrow) == "GLACIER"
    for name in ("output/output.tar.gz", "tensorboard/events.out"):
        assert storage_class(f"{tree.folder(3)}/{name}") == "STANDARD"
    assert storage_class(f"{tree.escrow_prefix(3)}/model.bin") == "STANDARD"
    assert report.bytes_archived == 2 * (2 * 200 + 300) * KB

    second_plan, second = apply_campaign(tree.cf)
    assert second_plan.acting() == [] and second.results == []


def test_s3_tags_mode_tags_for_the_bucket_rule(s3_server: str, tmp_path: Path) -> None:
    from tuneloop.lifecycle.apply import TAGGED_DETAIL
    from tuneloop.lifecycle.objects import ARCHIVE_TAG

    tree = build_s3_tree(tmp_path, rounds=2, keep_last=1, archive_mode="tags")
    _, report = apply_campaign(tree.cf)
    uri = f"{tree.folder(1)}/output/output.tar.gz"
    (result,) = [r for r in report.results if r.uri == uri]
    assert result.outcome == "archived" and result.detail == TAGGED_DETAIL
    assert tags(uri) == {ARCHIVE_TAG: "GLACIER"}
    assert storage_class(uri) == "STANDARD"  # the bucket's rule moves it, not apply
    assert ARCHIVE_TAG not in tags(f"{tree.folder(2)}/output/output.tar.gz")

    # Applying again does nothing: what was tagged is left to the bucket's rule.
    second_plan, second = apply_campaign(tree.cf)
    assert second_plan.acting() == [] and second.results == []
    (line,) = [a for a in second_plan.actions if a.artifact.uri == uri]
    assert line.action == "none" and "bucket's lifecycle rule" in line.reason


def test_escrow_access_denied_is_retained_by_the_service_not_a_failure(
    s3_server: str, tmp_path: Path
) -> None:
    from fakes.s3_access import denied_objects
    from tuneloop.lifecycle.apply import RETAINED_BY_SERVICE

    tree = build_s3_tree(tmp_path, rounds=3, keep_last=1)
    with denied_objects(ESCROW):
        _, report = apply_campaign(tree.cf)
    escrow = [r for r in report.results if r.uri.startswith(f"s3://{ESCROW}/")]
    assert {r.uri for r in escrow} == {f"{tree.escrow_prefix(n)}/model.bin" for n in (1, 2)}
    for result in escrow:
        assert result.outcome == "retained_by_service", result
        assert result.detail.startswith(RETAINED_BY_SERVICE) and "a month" in result.detail
        assert storage_class(result.uri) == "STANDARD"
    customer = [r for r in report.results if r not in escrow]
    assert customer and all(r.outcome == "archived" for r in customer)


def test_customer_access_denied_fails_that_line_only(s3_server: str, tmp_path: Path) -> None:
    from fakes.s3_access import denied_objects

    tree = build_s3_tree(tmp_path, rounds=3, keep_last=1)
    denied = tree.folder(1).removeprefix(f"s3://{tree.bucket}/")
    with denied_objects(tree.bucket, f"{denied}/output/"):
        _, report = apply_campaign(tree.cf)
    by_uri = {r.uri: r for r in report.results}
    refused = by_uri[f"{tree.folder(1)}/output/output.tar.gz"]
    assert refused.outcome == "failed" and "access denied" in refused.detail
    assert by_uri[f"{tree.folder(2)}/output/output.tar.gz"].outcome == "archived"
    assert by_uri[f"{tree.folder(1)}/tensorboard/events.out"].outcome == "archived"


@pytest.mark.parametrize("step", ["copied", "verified", "recorded"])
def test_s3_crash_then_apply_finishes(s3_server: str, tmp_path: Path, step: str) -> None:
    tree = build_s3_tree(tmp_path, rounds=3, keep_last=1)
    plan = plan_campaign(tree.cf)
    with pytest.raises(Crash):
        apply_with(tree, plan, crash_on(step, 2))
    # The task's retry carries out the same plan: what the crash cut short is finished and
    # recorded, nothing is copied twice.
    report = apply_with(tree, plan)
    assert all(r.outcome in ("archived", "skipped") for r in report.results), report.results
    for line in plan.acting():
        assert storage_class(line.artifact.uri) == "GLACIER"
        assert tree.store().done(line.artifact.uri, "archive") is not None
    fresh, last = apply_campaign(tree.cf)
    assert fresh.acting() == [] and last.results == []


@TREES
@given(
    rounds=st.integers(min_value=2, max_value=5),
    keep_last=st.integers(min_value=1, max_value=2),
    champion_back=st.integers(min_value=0, max_value=3),
    delete_intermediates=st.booleans(),
    pins=st.sets(st.integers(min_value=1, max_value=5), max_size=2),
    claimed=st.tuples(st.integers(min_value=1, max_value=5), st.sampled_from(STAGES)),
    claim_at=st.tuples(st.sampled_from(LOCAL_STEPS), st.integers(min_value=1, max_value=4)),
)
def test_what_must_stay_stays_while_a_round_is_claimed_meanwhile(
    rounds: int,
    keep_last: int,
    champion_back: int,
    delete_intermediates: bool,
    pins: set[int],
    claimed: tuple[int, str],
    claim_at: tuple[str, int],
) -> None:
    """The champion, pinned rounds and the next round's base are never removed; a base claimed
    while apply runs is removed only if its removal came before the claim."""
    from tuneloop.lifecycle.service import pin_round

    with tempfile.TemporaryDirectory() as folder:
        champion = max(1, rounds - champion_back)
        tree = build_tree(
            Path(folder),
            rounds=rounds,
            keep_last=keep_last,
            champion=champion,
            delete_intermediates=delete_intermediates,
        )
        pins = {n for n in pins if n <= rounds}
        for n in pins:
            pin_round(tree.cf, n)
        base_round = min(claimed[0], rounds)
        base = tree.folder(base_round, claimed[1])
        before = snapshot(tree)
        plan = plan_campaign(tree.cf)
        removed_before_claim: set[str] = set()
        removed: set[str] = set()
        seen = 0

        def claim_meanwhile(step: str, uri: str) -> None:
            nonlocal seen
            if step in ("original-removed", "deleted"):
                removed.add(uri)
            if step == claim_at[0]:
                seen += 1
                if seen == claim_at[1]:
                    removed_before_claim.update(removed)
                    claim_round(tree, base, base_round)

        apply_with(tree, plan, claim_meanwhile)
        assert_nothing_lost(tree, before, planned(plan, "delete"))
        for n in {champion} | pins:
            for stage in STAGES:
                assert tree.folder(n, stage).is_dir(), (n, stage)
        assert tree.folder(champion, STAGES[-1]).is_dir()  # the next round's base
        claim_landed = seen >= claim_at[1]
        if claim_landed and str(base) not in removed_before_claim:
            assert base.is_dir(), f"{base} was removed after it was claimed"
