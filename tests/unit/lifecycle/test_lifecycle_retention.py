"""The retention set and the protected folders, derived from hand-built ledgers."""

from __future__ import annotations

from lifecycle_ledgers import judged_round, round_claim, stage_uri
from tuneloop.lifecycle.retention import (
    CHAMPION,
    NEXT_BASE,
    PINNED,
    claimed_base_reason,
    kept_only_as_recent,
    last_rounds_reason,
    protected_uris,
    retention_set,
)
from tuneloop.rounds.decision import Action
from tuneloop.rounds.ledger import RoundRecord

ROOT = "s3://bucket/tuneloop/demo"


def folder(n: int, stage: str = "sft") -> str:
    return stage_uri(ROOT, n, stage)


def record(
    n: int,
    *,
    promoted: bool = True,
    action: Action = Action.CONTINUE,
    next_base_round: int | None = -1,
    rollback_of: int | None = None,
    stages: tuple[str, ...] = ("sft",),
) -> RoundRecord:
    """Round ``n``; by default promoted and continuing from itself."""
    if next_base_round == -1:
        next_base_round = n if action in (Action.CONTINUE, Action.ROLLBACK) else None
    return judged_round(
        n,
        ROOT,
        stages=stages,
        promoted=promoted,
        action=action,
        next_round=n + 1 if next_base_round is not None else None,
        next_base_round=next_base_round,
        rollback_of=rollback_of,
    )


def test_champion_last_rounds_and_next_base() -> None:
    records = [record(1), record(2, promoted=False), record(3, promoted=False), record(4)]
    kept = retention_set(records, keep_last=2, pins=set(), claims=[])
    assert kept == {
        3: [last_rounds_reason(2)],
        4: [CHAMPION, last_rounds_reason(2), NEXT_BASE],
    }


def test_rolled_back_round_loses_the_title() -> None:
    records = [
        record(1),
        record(2),
        record(3, promoted=False, action=Action.ROLLBACK, next_base_round=1, rollback_of=2),
    ]
    kept = retention_set(records, keep_last=1, pins=set(), claims=[])
    assert kept == {1: [CHAMPION, NEXT_BASE], 3: [last_rounds_reason(1)]}


def test_pins_are_kept() -> None:
    records = [record(n) for n in range(1, 6)]
    kept = retention_set(records, keep_last=1, pins={2}, claims=[])
    assert kept[2] == [PINNED]
    assert sorted(kept) == [2, 5]


def test_claimed_base_round_is_kept() -> None:
    records = [record(n, promoted=n == 1, next_base_round=None) for n in range(1, 5)]
    kept = retention_set(records, keep_last=1, pins=set(), claims=[round_claim(5, base_round=2)])
    assert kept[2] == [claimed_base_reason(5)]


def test_claims_for_recorded_rounds_are_history() -> None:
    records = [record(n, promoted=n == 1, next_base_round=None) for n in range(1, 5)]
    kept = retention_set(records, keep_last=1, pins=set(), claims=[round_claim(3, base_round=2)])
    assert 2 not in kept


def test_claim_naming_a_folder_keeps_the_round_that_wrote_it() -> None:
    records = [
        record(n, promoted=n == 1, next_base_round=None, stages=("sft", "rft")) for n in range(1, 5)
    ]
    pending = round_claim(5, base_output_uri=folder(2, "sft") + "/")
    kept = retention_set(records, keep_last=1, pins=set(), claims=[pending])
    assert kept[2] == [claimed_base_reason(5)]
    assert protected_uris(records, [pending]) == {folder(2, "sft")}


def test_claim_naming_no_base_keeps_champion_and_latest() -> None:
    records = [record(n, promoted=n == 2, next_base_round=None) for n in range(1, 6)]
    kept = retention_set(records, keep_last=1, pins=set(), claims=[round_claim(6)])
    assert kept[2] == [CHAMPION, claimed_base_reason(6)]
    assert kept[5] == [last_rounds_reason(1), claimed_base_reason(6)]


def test_no_records_keeps_only_pins_and_claimed_bases() -> None:
    assert retention_set([], keep_last=3, pins=set(), claims=[round_claim(1)]) == {}


def test_protected_folders_are_pending_bases_only() -> None:
    records = [record(1), record(2)]
    claims = [
        round_claim(2, base_output_uri=folder(1)),
        round_claim(3, base_output_uri="file:///x/out/"),
    ]
    assert protected_uris(records, claims) == {"/x/out", folder(2)}


def test_only_recent_rounds_may_lose_intermediates() -> None:
    assert kept_only_as_recent([last_rounds_reason(3)])
    assert not kept_only_as_recent([last_rounds_reason(3), PINNED])
    assert not kept_only_as_recent([CHAMPION])
    assert not kept_only_as_recent([])
