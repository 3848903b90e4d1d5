"""The lifecycle as the DAG, the command line and the demo call it: plan, apply, pin, restore.

The rules:

- Everything is derived from the ledger when it is asked for: records, claims and pins are
  read afresh, never cached between calls, so a plan is what the ledger says now.
- `plan_campaign` records its plan (write-once, numbered); the campaign's first plan is marked
  ``first`` (a lifecycle run only plans it; ``apply`` acts). Two planners that pick the same
  number: the second plans again with the next one.
- `apply_campaign` plans afresh (and records that plan) unless it is given one, then carries
  it out; before each destructive step the retention set is read from the ledger again
  (`protection_now`), so a round claimed, or a round pinned, while the apply runs keeps its
  base.
- `pin_round` pins a recorded round only; `restore_round` brings back round N's final stage
  output (and its checkpoint, when it lies elsewhere).
- A local campaign's relative output root is made absolute (`config.file.for_jobs`), as a
  round's tasks see it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from tuneloop.config.campaign import Campaign
from tuneloop.config.file import CampaignFile, for_jobs
from tuneloop.errors import Problem
from tuneloop.lifecycle.apply import apply_plan
from tuneloop.lifecycle.inventory import inventory
from tuneloop.lifecycle.planning import plan_lifecycle
from tuneloop.lifecycle.records import ApplyReport, LifecyclePlan, Pin, RestorePlan
from tuneloop.lifecycle.restore import restore_plan, start_restore
from tuneloop.lifecycle.retention import kept_only_as_recent, protected_uris, retention_set
from tuneloop.lifecycle.store import LifecycleError, LifecycleStore, PlanExistsError
from tuneloop.rounds.ledger import Ledger, RoundRecord

log = logging.getLogger(__name__)

PLAN_ATTEMPTS = 5
"""How many sequence numbers a planner tries when other planners keep taking them first."""


def plan_campaign(cf: CampaignFile, *, run_id: str = "", record: bool = True) -> LifecyclePlan:
    """The campaign's lifecycle plan now; recorded in the ledger unless ``record`` is False."""
    campaign = _campaign(cf)
    store = LifecycleStore.for_campaign(campaign)
    now = _Retention.read(campaign, store)
    records, retained, protected = now.records, now.retained, now.protected
    artifacts = inventory(campaign, records)
    for attempt in range(1, PLAN_ATTEMPTS + 1):
        sequence = store.next_sequence()
        plan = plan_lifecycle(
            campaign,
            records,
            artifacts,
            retained=retained,
            protected=protected,
            sequence=sequence,
            first=sequence == 1,
            run_id=run_id,
            tagged=_tagged(store),
        )
        if not record:
            return plan
        try:
            return store.write_plan(plan)
        except PlanExistsError:
            if attempt == PLAN_ATTEMPTS:
                raise
            log.info("plan %d was recorded by another planner; planning again", sequence)
    raise AssertionError("unreachable")  # the loop returns or raises


def apply_campaign(
    cf: CampaignFile, *, run_id: str = "", plan: LifecyclePlan | None = None
) -> tuple[LifecyclePlan, ApplyReport]:
    """Carry out ``plan`` (by default a fresh plan, recorded first); returns it and the
    recorded apply report."""
    campaign = _campaign(cf)
    if plan is None:
        plan = plan_campaign(cf, run_id=run_id, record=True)
    store = LifecycleStore.for_campaign(campaign)
    report = apply_plan(
        campaign,
        plan,
        store=store,
        still_protected=lambda: protection_now(campaign, store),
        run_id=run_id,
    )
    return plan, report


def protection_now(campaign: Campaign, store: LifecycleStore) -> tuple[set[int], set[str]]:
    """What no destructive step may touch, read from the ledger now: the rounds kept for a
    reason other than being among the last ``keep_last`` (the champion, pinned rounds, the
    base of a claimed, running or next round: every stage of those stays), and the output
    folders a pending round starts from."""
    now = _Retention.read(campaign, store)
    whole = {n for n, reasons in now.retained.items() if not kept_only_as_recent(reasons)}
    return whole, now.protected


@dataclass(frozen=True)
class _Retention:
    """The ledger's records and what the retention rules keep of them, read now."""

    records: list[RoundRecord]
    retained: dict[int, list[str]]
    protected: set[str]

    @classmethod
    def read(cls, campaign: Campaign, store: LifecycleStore) -> _Retention:
        ledger = Ledger.for_campaign(campaign)
        records = ledger.records()
        claims = ledger.claims()
        retained = retention_set(
            records,
            keep_last=campaign.retention.keep_last,
            pins=store.pinned_rounds(),
            claims=claims,
        )
        return cls(records, retained, protected_uris(records, claims))


def pin_round(cf: CampaignFile, round_number: int, *, by: str = "", reason: str = "") -> Pin:
    """Keep round ``round_number`` whatever the retention rules say. LifecycleError naming the
    round and the recorded range when it was never recorded."""
    campaign = _campaign(cf)
    records = Ledger.for_campaign(campaign).records()
    if round_number not in {record.round for record in records}:
        raise LifecycleError([_not_recorded(cf, round_number, records, "pin")])
    store = LifecycleStore.for_campaign(campaign)
    return store.pin(Pin(campaign=campaign.name, round=round_number, by=by, reason=reason))


def restore_round(cf: CampaignFile, round_number: int) -> tuple[RestorePlan | None, list[str]]:
    """Bring back what round ``round_number``'s final stage left archived: local tarballs are
    extracted now, S3 restores are requested. Returns the restore plan (None: nothing was
    archived) and the S3 URIs still being restored."""
    campaign = _campaign(cf)
    records = Ledger.for_campaign(campaign).records()
    record = next((r for r in records if r.round == round_number), None)
    if record is None:
        raise LifecycleError([_not_recorded(cf, round_number, records, "restore")])
    if not record.stages:
        return None, []
    last = record.stages[-1]
    checkpoint_uri = last.checkpoint.uri if last.checkpoint is not None else None
    plan = restore_plan(campaign, last.output_uri, round_number, checkpoint_uri)
    if plan is None:
        return None, []
    return plan, start_restore(plan)


def _campaign(cf: CampaignFile) -> Campaign:
    return for_jobs(cf).campaign


def _not_recorded(
    cf: CampaignFile, round_number: int, records: list[RoundRecord], verb: str
) -> Problem:
    numbers = sorted(record.round for record in records)
    if not numbers:
        recorded = "no round is recorded yet"
    elif numbers == list(range(numbers[0], numbers[-1] + 1)):
        recorded = f"recorded: rounds {numbers[0]}-{numbers[-1]}"
    else:
        recorded = "recorded: rounds " + ", ".join(map(str, numbers))
    return Problem(
        "round",
        f"round {round_number} was never recorded in campaign {cf.campaign.name!r} "
        f"({recorded}); there is nothing to {verb}",
        source=str(cf.path),
        allowed=f"{numbers[0]}-{numbers[-1]}" if numbers else None,
        fix="name a recorded round (tuneloop campaign status lists them)",
    )


def _tagged(store: LifecycleStore) -> frozenset[str]:
    """S3 objects an apply tagged for the bucket's lifecycle rule (an archive done with no
    tarball): they stay STANDARD until the rule moves them, and are not tagged again."""
    return frozenset(
        done.uri
        for done in store.dones()
        if done.action == "archive" and done.outcome == "archived" and done.archive_uri is None
    )
