"""The lifecycle plan: each rule on hand-built ledgers, and its safety over random ledgers."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lifecycle_ledgers import (
    ESCROW,
    judged_round,
    round_claim,
    s3_campaign,
    stage_uri,
)
from tuneloop.config.campaign import Campaign
from tuneloop.lifecycle.planning import plan_lifecycle, plan_region
from tuneloop.lifecycle.records import (
    LOCAL_ARCHIVE_CLASS,
    LOCAL_CLASS,
    Artifact,
    LifecyclePlan,
    Owner,
)
from tuneloop.lifecycle.retention import (
    CHAMPION,
    NEXT_BASE,
    PINNED,
    normalised,
    protected_uris,
    retention_set,
)
from tuneloop.recipes.catalog import STORAGE_PRICES_SOURCE
from tuneloop.rounds.decision import Action
from tuneloop.rounds.ledger import RoundClaim, RoundRecord, champion_of

ROOT = "s3://bucket/tuneloop/demo"
MB = 1024 * 1024


def campaign(**retention: Any) -> Campaign:
    return s3_campaign("bucket", backend_region="eu-west-1", **retention)


def folder(n: int, stage: str) -> str:
    return stage_uri(ROOT, n, stage)


def record(
    n: int,
    *,
    promoted: bool = False,
    action: Action = Action.CONTINUE,
    next_base_round: int | None = None,
    rollback_of: int | None = None,
    stages: tuple[str, ...] = ("sft", "rft"),
) -> RoundRecord:
    acting = action in (Action.CONTINUE, Action.ROLLBACK)
    return judged_round(
        n,
        ROOT,
        stages=stages,
        promoted=promoted,
        action=action,
        next_round=n + 1 if acting else None,
        next_base_round=next_base_round if acting else None,
        rollback_of=rollback_of,
    )


def artifact(
    uri: str, n: int, stage: str, *, owner: Owner, nbytes: int, storage_class: str = "STANDARD"
) -> Artifact:
    """What the inventory lists: round ``n``'s output (an object on S3) or checkpoint."""
    return Artifact(
        uri=uri,
        round=n,
        stage=stage,
        kind="output" if owner == "customer" else "checkpoint",
        owner=owner,
        bytes=nbytes,
        storage_class=storage_class,
        estimated=owner == "escrow",
    )


def s3_object(
    n: int, stage: str, name: str, nbytes: int = 50 * MB, storage_class: str = "STANDARD"
) -> Artifact:
    return artifact(
        f"{folder(n, stage)}/{name}",
        n,
        stage,
        owner="customer",
        nbytes=nbytes,
        storage_class=storage_class,
    )


def local_folder(n: int, stage: str, storage_class: str = LOCAL_CLASS) -> Artifact:
    uri = f"/data/demo/rounds/{n:04d}/{stage}"
    return artifact(uri, n, stage, owner="local", nbytes=300 * MB, storage_class=storage_class)


def escrow(n: int, stage: str) -> Artifact:
    uri = f"s3://{ESCROW}/demo-r{n:04d}-{stage}/step_10"
    return artifact(uri, n, stage, owner="escrow", nbytes=20 * 1024 * MB)


def plan(
    records: list[RoundRecord],
    artifacts: list[Artifact],
    *,
    pins: frozenset[int] = frozenset(),
    claims: tuple[RoundClaim, ...] = (),
    **retention: Any,
) -> LifecyclePlan:
    c = campaign(**retention)
    return plan_lifecycle(
        c,
        records,
        artifacts,
        retained=retention_set(
            records, keep_last=c.retention.keep_last, pins=set(pins), claims=list(claims)
        ),
        protected=protected_uris(records, list(claims)),
        sequence=1,
        first=True,
        run_id="cli-test",
    )


def line(result: LifecyclePlan, uri: str) -> tuple[str, str]:
    (found,) = [a for a in result.actions if a.artifact.uri == uri]
    return found.action, found.reason


# Five rounds; round 2 is the champion, round 5 continues from itself.
LEDGER = [
    record(1, promoted=True),
    record(2, promoted=True),
    record(3),
    record(4),
    record(5, next_base_round=5),
]


def test_candidates_are_archived_and_retained_rounds_kept() -> None:
    artifacts = [s3_object(n, "rft", "output.tar.gz") for n in range(1, 6)]
    result = plan(LEDGER, artifacts, keep_last=2)
    assert [a.action for a in result.actions] == ["archive", "keep", "archive", "keep", "keep"]
    assert line(result, artifacts[1].uri)[1] == CHAMPION
    assert NEXT_BASE in line(result, artifacts[4].uri)[1]
    assert "GLACIER" in line(result, artifacts[0].uri)[1]
    assert result.actions[0].target_class == "GLACIER"
    assert result.bytes_to_archive == 2 * 50 * MB
    assert result.monthly_cost_after < result.monthly_cost_before
    assert [r.round for r in result.retained] == [2, 4, 5]
    assert (result.region, result.prices_source, result.first) == (
        "eu-west-1",
        STORAGE_PRICES_SOURCE,
        True,
    )


def test_evaluation_and_baseline_are_kept() -> None:
    evaluation = s3_object(1, "evaluation", "results.json").model_copy(
        update={"kind": "evaluation"}
    )
    baseline = Artifact(
        uri=f"{ROOT}/baseline/results.json",
        round=0,
        stage="baseline",
        kind="baseline",
        owner="customer",
        bytes=10 * MB,
    )
    result = plan(LEDGER, [evaluation, baseline], keep_last=1)
    assert [a.action for a in result.actions] == ["keep", "keep"]
    assert all("evidence" in a.reason for a in result.actions)


def test_protected_folder_is_kept_even_as_an_intermediate_candidate() -> None:
    pending = round_claim(6, run_id="r6", base_output_uri=folder(1, "sft") + "/")
    artifacts = [s3_object(1, "sft", "output.tar.gz"), escrow(1, "sft"), escrow(1, "rft")]
    result = plan(LEDGER, artifacts, claims=(pending,), keep_last=1, delete_intermediates=True)
    assert line(result, artifacts[0].uri)[0] == "keep"
    assert "claimed or running" in line(result, artifacts[0].uri)[1]
    assert line(result, artifacts[1].uri)[0] == "keep"  # the stage's escrow checkpoint too
    # The round that wrote the folder is a pending base: every stage of it stays.
    assert line(result, artifacts[2].uri) == ("keep", "base of round 6 (claimed or running)")


def test_unrecorded_round_is_kept() -> None:
    running = s3_object(6, "sft", "output.tar.gz")
    assert line(plan(LEDGER, [running], keep_last=1), running.uri) == (
        "keep",
        "round not recorded yet",
    )


def test_delete_intermediates_of_recent_rounds_only() -> None:
    artifacts = [
        s3_object(4, "sft", "output.tar.gz"),
        s3_object(4, "rft", "output.tar.gz"),
        s3_object(5, "sft", "output.tar.gz"),
        s3_object(2, "sft", "output.tar.gz"),
        s3_object(3, "sft", "output.tar.gz"),
    ]
    result = plan(LEDGER, artifacts, keep_last=2, delete_intermediates=True)
    assert line(result, artifacts[0].uri) == (
        "delete",
        "intermediate checkpoint; round 5's record exists",
    )
    assert line(result, artifacts[1].uri)[0] == "keep"  # round 4's last stage
    assert line(result, artifacts[2].uri)[0] == "keep"  # no newer round than 5
    assert line(result, artifacts[3].uri)[0] == "keep"  # the champion keeps every stage
    assert line(result, artifacts[4].uri) == ("delete", "superseded by round 4")
    assert result.bytes_to_delete == 2 * 50 * MB


def test_pinned_round_keeps_its_intermediates() -> None:
    artifacts = [s3_object(4, "sft", "output.tar.gz")]
    result = plan(LEDGER, artifacts, pins=frozenset({4}), keep_last=2, delete_intermediates=True)
    action, reason = line(result, artifacts[0].uri)
    assert action == "keep"
    assert PINNED in reason


def test_already_archived_small_and_read_by_planning_are_left_alone() -> None:
    artifacts = [
        s3_object(1, "rft", "a.bin", storage_class="GLACIER"),
        s3_object(1, "rft", "b.bin", storage_class="DEEP_ARCHIVE"),
        s3_object(1, "rft", "c.bin", nbytes=1000),
        s3_object(1, "rft", "manifest.json"),
        s3_object(1, "rft", "d.bin", storage_class="GLACIER_IR"),
        local_folder(1, "rft", LOCAL_ARCHIVE_CLASS),
    ]
    result = plan(LEDGER, artifacts, keep_last=1)
    assert line(result, artifacts[0].uri) == ("none", "already archived (GLACIER)")
    assert line(result, artifacts[1].uri) == ("none", "already archived (DEEP_ARCHIVE)")
    action, reason = line(result, artifacts[2].uri)
    assert action == "none"
    assert "40 KB" in reason
    assert line(result, artifacts[3].uri) == ("none", "read by planning: kept readable")
    assert line(result, artifacts[4].uri)[0] == "archive"  # GLACIER_IR -> GLACIER moves on
    assert line(result, artifacts[5].uri) == ("none", "already archived (LOCAL_ARCHIVE)")


def test_local_folder_becomes_a_tarball_priced_as_the_archive_class() -> None:
    artifact = local_folder(1, "rft")
    result = plan(LEDGER, [artifact], keep_last=1, archive_storage_class="DEEP_ARCHIVE")
    (only,) = result.actions
    assert (only.action, only.target_class) == ("archive", LOCAL_ARCHIVE_CLASS)
    assert 0 < only.monthly_cost_after < only.monthly_cost_before


def test_escrow_checkpoint_archive_is_planned() -> None:
    artifact = escrow(1, "rft")
    (only,) = plan(LEDGER, [artifact], keep_last=1).actions
    assert only.action == "archive"
    assert "escrow" in only.reason


def test_region_falls_back_to_backend_then_us_east_1() -> None:
    assert plan_region(campaign()) == "eu-west-1"
    assert plan_region(campaign(region="ap-northeast-1")) == "ap-northeast-1"
    local = Campaign.model_validate(
        {
            **campaign().model_dump(),
            "backend": {"type": "local"},
            "model_type": "local.tiny-chat-v1",
        }
    )
    assert plan_region(local) == "us-east-1"


def test_actions_are_ordered_by_round_stage_and_uri() -> None:
    artifacts = [
        s3_object(3, "sft", "b"),
        s3_object(1, "sft", "z"),
        s3_object(3, "rft", "a"),
        s3_object(3, "sft", "a"),
    ]
    result = plan(LEDGER, artifacts, keep_last=1)
    assert [(a.artifact.round, a.artifact.stage, a.artifact.uri[-1]) for a in result.actions] == [
        (1, "sft", "z"),
        (3, "rft", "a"),
        (3, "sft", "a"),
        (3, "sft", "b"),
    ]


# --- random ledgers ----------------------------------------------------------------------------

STAGE_SETS = (("sft",), ("sft", "rft"), ("cpt", "sft", "rft"))
CLASSES = ("STANDARD", "GLACIER_IR", "GLACIER", "DEEP_ARCHIVE")


@st.composite
def ledgers(draw: st.DrawFn) -> dict[str, Any]:
    count = draw(st.integers(1, 7))
    records = []
    for n in range(1, count + 1):
        action = draw(st.sampled_from(list(Action)))
        records.append(
            record(
                n,
                promoted=draw(st.booleans()) and action is not Action.ROLLBACK,
                action=action,
                next_base_round=draw(st.none() | st.integers(1, n)),
                rollback_of=draw(st.none() | st.integers(1, n)) if n > 1 else None,
                stages=draw(st.sampled_from(STAGE_SETS)),
            )
        )
    claims = []
    for number in draw(st.lists(st.integers(1, count + 2), max_size=3)):
        folders = [s.output_uri for r in records for s in r.stages]
        claims.append(
            round_claim(
                number,
                base_round=draw(st.none() | st.integers(1, count)),
                base_output_uri=draw(st.sampled_from(["", *folders])),
            )
        )
    artifacts = []
    for r in records:
        for s in r.stages:
            for name in draw(
                st.lists(st.sampled_from(["model.bin", "manifest.json", "logs"]), unique=True)
            ):
                artifacts.append(
                    s3_object(
                        r.round,
                        s.name,
                        name,
                        nbytes=draw(st.sampled_from([0, 1000, 50 * MB])),
                        storage_class=draw(st.sampled_from(CLASSES)),
                    )
                )
            if draw(st.booleans()):
                artifacts.append(escrow(r.round, s.name))
            if draw(st.booleans()):
                artifacts.append(
                    local_folder(
                        r.round, s.name, draw(st.sampled_from([LOCAL_CLASS, LOCAL_ARCHIVE_CLASS]))
                    )
                )
    artifacts.append(
        Artifact(
            uri=f"{ROOT}/baseline/r.json",
            round=0,
            stage="baseline",
            kind="baseline",
            owner="customer",
            bytes=MB,
        )
    )
    return {
        "records": records,
        "claims": tuple(claims),
        "pins": frozenset(draw(st.sets(st.integers(1, count), max_size=2))),
        "artifacts": artifacts,
        "keep_last": draw(st.integers(1, 4)),
        "delete_intermediates": draw(st.booleans()),
        "archive_storage_class": draw(st.sampled_from(["GLACIER", "DEEP_ARCHIVE", "GLACIER_IR"])),
    }


FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _plan(case: dict[str, Any]) -> LifecyclePlan:
    return plan(
        case["records"],
        case["artifacts"],
        pins=case["pins"],
        claims=case["claims"],
        keep_last=case["keep_last"],
        delete_intermediates=case["delete_intermediates"],
        archive_storage_class=case["archive_storage_class"],
    )


@FAST
@given(ledgers())
def test_what_must_stay_is_never_archived_or_deleted(case: dict[str, Any]) -> None:
    records: list[RoundRecord] = case["records"]
    result = _plan(case)
    champion = champion_of(records)
    latest = records[-1]
    pending = [c for c in case["claims"] if c.round > latest.round]
    untouchable = {champion.round} if champion else set()
    untouchable |= set(case["pins"])
    untouchable |= {c.base_round for c in pending if c.base_round is not None}
    if latest.decision.next_base_round is not None:
        untouchable.add(latest.decision.next_base_round)
    folders = {normalised(c.base_output_uri) for c in pending if c.base_output_uri}
    folders |= {normalised(latest.decision.next_base or "")} - {""}
    recent = {r.round for r in records[-case["keep_last"] :]}
    last_stage = {r.round: r.stages[-1].name for r in records}
    for acting in result.acting():
        artifact = acting.artifact
        assert artifact.round not in untouchable, acting
        assert artifact.kind != "baseline"
        assert folder(artifact.round, artifact.stage) not in folders, acting
        assert not (artifact.round in recent and artifact.stage == last_stage[artifact.round])
        assert artifact.round in {r.round for r in records}


@FAST
@given(ledgers())
def test_planning_is_deterministic(case: dict[str, Any]) -> None:
    first, second = _plan(case), _plan(case)
    shuffled = _plan({**case, "artifacts": list(reversed(case["artifacts"]))})
    strip = {"created_at"}
    assert first.model_dump(exclude=strip) == second.model_dump(exclude=strip)
    assert first.model_dump(exclude=strip) == shuffled.model_dump(exclude=strip)


@FAST
@given(ledgers())
def test_nothing_left_to_archive_means_no_acting_line(case: dict[str, Any]) -> None:
    archived = [
        a.model_copy(
            update={
                "storage_class": LOCAL_ARCHIVE_CLASS
                if a.owner == "local"
                else case["archive_storage_class"]
            }
        )
        for a in case["artifacts"]
    ]
    result = _plan({**case, "artifacts": archived, "delete_intermediates": False})
    assert result.acting() == []
    assert result.monthly_cost_after == pytest.approx(result.monthly_cost_before)
