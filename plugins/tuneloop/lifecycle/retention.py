"""The retention set: which rounds the lifecycle keeps, derived from the ledger alone.

Pure: records, pins and claims in, a mapping out; nothing is read or written here.

A round is kept, with every reason that applies, when it is:

- the champion (`rounds.ledger.champion_of`: the latest promoted round not rolled back);
- one of the last ``keep_last`` recorded rounds;
- pinned by a person (``tuneloop lifecycle pin``);
- the base of a round that is claimed but not recorded yet (running, or about to): the
  claim's ``base_round``, or the recorded round whose stage folder the claim's
  ``base_output_uri`` names; a claim that names no base at all (written before claims named
  one) keeps the champion and the latest round, since either may be its base;
- the base of the next round: the latest record's ``decision.next_base_round``.

Claims for rounds already recorded are history, not work in progress, and are ignored.

Beside the rounds, `protected_uris` names the exact output folders a pending round starts
from (a claim's ``base_output_uri``, the latest decision's ``next_base``): those are never
archived or deleted even when they are an intermediate stage, since a ``base_checkpoint``
override may point at one.
"""

from __future__ import annotations

from tuneloop.rounds.ledger import RoundClaim, RoundRecord, champion_of

CHAMPION = "champion"
PINNED = "pinned"
NEXT_BASE = "base of the next round"


LAST_ROUNDS_PREFIX = "one of the last "


def last_rounds_reason(keep_last: int) -> str:
    return f"{LAST_ROUNDS_PREFIX}{keep_last} rounds"


def kept_only_as_recent(reasons: list[str]) -> bool:
    """Whether a round is kept only for being among the last ``keep_last``: such a round may
    lose its intermediate stages (``delete_intermediates``); the champion, a pinned round and
    a pending round's base keep every stage."""
    return bool(reasons) and all(reason.startswith(LAST_ROUNDS_PREFIX) for reason in reasons)


def claimed_base_reason(round_number: int) -> str:
    return f"base of round {round_number} (claimed or running)"


def normalised(uri: str) -> str:
    """A folder URI compared as the lifecycle compares them: no ``file://``, no trailing '/'."""
    return uri.removeprefix("file://").rstrip("/")


def retention_set(
    records: list[RoundRecord],
    *,
    keep_last: int,
    pins: set[int],
    claims: list[RoundClaim],
) -> dict[int, list[str]]:
    """Round -> the reasons it is kept, in round order; rounds absent are candidates."""
    ordered = sorted(records, key=lambda r: r.round)
    kept: dict[int, list[str]] = {}

    def keep(round_number: int | None, reason: str) -> None:
        if round_number is None or round_number < 1:
            return  # the base model: nothing of this campaign's to keep
        reasons = kept.setdefault(round_number, [])
        if reason not in reasons:
            reasons.append(reason)

    champion = champion_of(ordered)
    keep(champion.round if champion else None, CHAMPION)
    for record in ordered[-keep_last:] if keep_last > 0 else []:
        keep(record.round, last_rounds_reason(keep_last))
    for pinned in sorted(pins):
        keep(pinned, PINNED)
    latest = ordered[-1] if ordered else None
    for claim in pending_claims(ordered, claims):
        for base in _claimed_bases(claim, ordered, champion, latest):
            keep(base, claimed_base_reason(claim.round))
    if latest is not None:
        keep(latest.decision.next_base_round, NEXT_BASE)
    return {number: kept[number] for number in sorted(kept)}


def protected_uris(records: list[RoundRecord], claims: list[RoundClaim]) -> set[str]:
    """The output folders a pending round starts from, normalised (see `normalised`)."""
    ordered = sorted(records, key=lambda r: r.round)
    folders = {claim.base_output_uri for claim in pending_claims(ordered, claims)}
    if ordered and ordered[-1].decision.next_base:
        folders.add(ordered[-1].decision.next_base)
    return {normalised(folder) for folder in folders if folder and normalised(folder)}


def pending_claims(records: list[RoundRecord], claims: list[RoundClaim]) -> list[RoundClaim]:
    """Claims for rounds not recorded yet (the round after the latest record, or later)."""
    next_round = max((r.round for r in records), default=0) + 1
    return [claim for claim in claims if claim.round >= next_round]


def _claimed_bases(
    claim: RoundClaim,
    records: list[RoundRecord],
    champion: RoundRecord | None,
    latest: RoundRecord | None,
) -> list[int | None]:
    if claim.base_round is not None:
        return [claim.base_round]
    if claim.base_output_uri:
        # A base named only by its folder: the recorded round that wrote it, if any (a folder
        # outside the ledger is protected by `protected_uris` alone).
        wanted = normalised(claim.base_output_uri)
        return [
            record.round
            for record in records
            if any(normalised(stage.output_uri) == wanted for stage in record.stages)
        ]
    # No base named: the claim may continue from the latest round or restart from the
    # champion, so both stay.
    return [champion.round if champion else None, latest.round if latest else None]
