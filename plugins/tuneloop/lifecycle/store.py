"""The lifecycle's records in the ledger: plans, applies, pins and finished actions.

Layout under the campaign root (``config.paths.campaign_root(campaign)``, a folder or an s3://
prefix), beside the round ledger::

    lifecycle/plans/0001.json          one LifecyclePlan per plan, numbered from 1
    lifecycle/applies/0001.json        the ApplyReport of plan 0001, once it was carried out
    lifecycle/pins/0003.json           a person's Pin on round 3
    lifecycle/done/<key>-<action>.json a Done per artifact and action; <key> is the first 32
                                       hex characters of the sha256 of the artifact's URI

Every file is written once, with `storage.write_once` (a hard link locally, ``If-None-Match: *``
on a store shown to honour it on S3), and never changed:

- a plan's sequence number is taken by whoever writes it first: a second planner of the same
  number gets `PlanExistsError` and plans again with the next number;
- an apply is recorded once per plan: a second apply of the plan gets the first one's report;
- a pin and a Done are idempotent: writing one that exists returns the stored one, so a retry,
  or an apply after a crash, finds what was done and does nothing twice.

Names follow the patterns above; a file whose name does not is ignored (dot files are writes in
progress), and a file whose content contradicts its name, or is not a record at all, is a
`LifecycleError` naming the file: records are never edited by hand. Files are read with a size
bound, so a stray large object cannot exhaust a worker's memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from typing import TYPE_CHECKING, TypeVar, get_args

from pydantic import BaseModel, ValidationError

from tuneloop import storage
from tuneloop.config.paths import campaign_root
from tuneloop.errors import Problem, StorageError, TuneloopError
from tuneloop.lifecycle.records import ActionName, ApplyReport, Done, LifecyclePlan, Pin

if TYPE_CHECKING:
    from tuneloop.config.campaign import Campaign

log = logging.getLogger(__name__)

LIFECYCLE = "lifecycle"
PLANS = "plans"
APPLIES = "applies"
PINS = "pins"
DONE = "done"

ACTIONS: tuple[str, ...] = get_args(ActionName)
NUMBERED_NAME = re.compile(r"^(\d{4,})\.json$")
DONE_NAME = re.compile(rf"^([0-9a-f]{{32}})-({'|'.join(ACTIONS)})\.json$")
DONE_KEY_LENGTH = 32

MAX_RECORD_BYTES = 64 * 1024 * 1024
"""The largest record read: a plan lists every object of the campaign (a few hundred bytes
each), so this holds plans of a hundred thousand objects and nothing absurd."""
MAX_PROBLEMS = 10
"""Validation problems told per file; the rest are counted."""

_FIX = (
    "lifecycle records are written once by tuneloop and never edited; restore the file from a "
    "backup or move it out of the lifecycle folder"
)
_B = TypeVar("_B", bound=BaseModel)


class LifecycleError(TuneloopError):
    """The lifecycle's records hold something unusable, or a write was refused."""


class PlanExistsError(LifecycleError):
    """Another planner recorded a plan with this sequence number first."""


def done_key(uri: str, action: str) -> str:
    """The file name (without ``.json``) of the Done of ``action`` on ``uri``."""
    digest = hashlib.sha256(uri.encode("utf-8")).hexdigest()[:DONE_KEY_LENGTH]
    return f"{digest}-{action}"


class LifecycleStore:
    """The lifecycle records of one campaign root."""

    def __init__(self, root: str) -> None:
        self.root = root.rstrip("/")
        self.folder = storage.join(self.root, LIFECYCLE)

    @classmethod
    def for_campaign(cls, campaign: Campaign) -> LifecycleStore:
        """The store of a `Campaign`, in its folder under the output root (as its ledger)."""
        return cls(campaign_root(campaign))

    def plan_uri(self, sequence: int) -> str:
        return storage.join(self.folder, PLANS, f"{sequence:04d}.json")

    def apply_uri(self, sequence: int) -> str:
        return storage.join(self.folder, APPLIES, f"{sequence:04d}.json")

    def pin_uri(self, round_number: int) -> str:
        return storage.join(self.folder, PINS, f"{round_number:04d}.json")

    def done_uri(self, uri: str, action: str) -> str:
        if action not in ACTIONS:
            raise LifecycleError(
                [
                    Problem(
                        "action",
                        f"{action!r} is not a lifecycle action",
                        allowed=", ".join(ACTIONS),
                    )
                ]
            )
        return storage.join(self.folder, DONE, f"{done_key(uri, action)}.json")

    # --- plans ------------------------------------------------------------------------------

    def plans(self) -> list[LifecyclePlan]:
        """Every recorded plan, in sequence order."""
        return [self._read_plan(uri) for _, uri in self._numbered(PLANS)]

    def latest_plan(self) -> LifecyclePlan | None:
        files = self._numbered(PLANS)
        return self._read_plan(files[-1][1]) if files else None

    def next_sequence(self) -> int:
        """1 + the highest plan's sequence (1 for a campaign never planned)."""
        files = self._numbered(PLANS)
        return files[-1][0] + 1 if files else 1

    def write_plan(self, plan: LifecyclePlan) -> LifecyclePlan:
        """Record ``plan`` once under its sequence number. Returns it.

        PlanExistsError when a plan with that number is recorded already (another planner was
        first), unless it is this very plan (a retry after a write whose answer was lost).
        """
        uri = self.plan_uri(plan.sequence)
        if _publish_once(uri, plan):
            return plan
        existing = self._read_plan_if_exists(uri)
        if existing == plan:
            return existing
        by = f" by run {existing.run_id!r}" if existing is not None and existing.run_id else ""
        raise PlanExistsError(
            [
                Problem(
                    f"plan {plan.sequence}",
                    f"already recorded{by}; a plan is written once",
                    source=uri,
                    fix=f"plan again: the next plan is number {self.next_sequence()}",
                )
            ]
        )

    def _read_plan(self, uri: str) -> LifecyclePlan:
        plan = self._read_plan_if_exists(uri)
        if plan is None:
            raise _vanished(uri)
        return plan

    def _read_plan_if_exists(self, uri: str) -> LifecyclePlan | None:
        plan = _read(LifecyclePlan, uri)
        if plan is not None:
            _check_number(uri, "sequence", plan.sequence)
        return plan

    # --- applies ----------------------------------------------------------------------------

    def applies(self) -> list[ApplyReport]:
        """Every recorded apply, in plan order."""
        return [self._read_apply(uri) for _, uri in self._numbered(APPLIES)]

    def apply_of(self, sequence: int) -> ApplyReport | None:
        """The apply of plan ``sequence``, if it was carried out."""
        uri = self.apply_uri(sequence)
        report = _read(ApplyReport, uri)
        if report is not None:
            _check_number(uri, "sequence", report.sequence)
        return report

    def write_apply(self, report: ApplyReport) -> ApplyReport:
        """Record the apply of plan ``report.sequence`` once; returns the stored report (the
        first one, when the plan was applied already)."""
        uri = self.apply_uri(report.sequence)
        if _publish_once(uri, report):
            return report
        return self._read_apply(uri)

    def _read_apply(self, uri: str) -> ApplyReport:
        report = _read(ApplyReport, uri)
        if report is None:
            raise _vanished(uri)
        _check_number(uri, "sequence", report.sequence)
        return report

    # --- pins -------------------------------------------------------------------------------

    def pin(self, pin: Pin) -> Pin:
        """Pin ``pin.round``; returns the stored pin (the first one, when it was pinned)."""
        uri = self.pin_uri(pin.round)
        if _publish_once(uri, pin):
            return pin
        return self._read_pin(uri)

    def pins(self) -> list[Pin]:
        """Every pin, in round order."""
        return [self._read_pin(uri) for _, uri in self._numbered(PINS)]

    def pinned_rounds(self) -> set[int]:
        return {number for number, _ in self._numbered(PINS)}

    def _read_pin(self, uri: str) -> Pin:
        pin = _read(Pin, uri)
        if pin is None:
            raise _vanished(uri)
        _check_number(uri, "round", pin.round)
        return pin

    # --- finished actions -------------------------------------------------------------------

    def done(self, uri: str, action: str) -> Done | None:
        """The Done of ``action`` on ``uri``, or None when it was never recorded."""
        location = self.done_uri(uri, action)
        done = _read(Done, location)
        if done is not None:
            _check_done(location, done)
            if done.uri != uri:
                raise LifecycleError(
                    [
                        Problem(
                            "uri",
                            f"holds {done.uri!r}, not {uri!r} that its name was made from",
                            source=location,
                            fix=_FIX,
                        )
                    ]
                )
        return done

    def record_done(self, done: Done) -> Done:
        """Record ``done`` once; returns the stored one (the first, when it exists)."""
        location = self.done_uri(done.uri, done.action)
        if _publish_once(location, done):
            return done
        stored = self.done(done.uri, done.action)
        if stored is None:
            raise _vanished(location)
        return stored

    def dones(self) -> list[Done]:
        """Every recorded Done, in name order."""
        folder = storage.join(self.folder, DONE)
        found = []
        for name in sorted(storage.list_names(folder)):
            if DONE_NAME.match(name):
                location = storage.join(folder, name)
                done = _read(Done, location)
                if done is None:
                    raise _vanished(location)
                _check_done(location, done)
                found.append(done)
            else:
                _ignored(name, "done/<key>-<action>.json")
        return found

    # --- listing ----------------------------------------------------------------------------

    def _numbered(self, kind: str) -> list[tuple[int, str]]:
        """(number, uri) of every NNNN.json file in ``lifecycle/<kind>/``, in number order."""
        folder = storage.join(self.folder, kind)
        found = []
        for name in storage.list_names(folder):
            match = NUMBERED_NAME.match(name)
            if match:
                found.append((int(match.group(1)), storage.join(folder, name)))
            else:
                _ignored(name, f"{kind}/NNNN.json")
        return sorted(found)


# --- writing and reading --------------------------------------------------------------------


def _publish_once(uri: str, record: BaseModel) -> bool:
    """Create ``uri`` with ``record`` unless it exists. True when this call created it.

    On S3, `storage.write_once` first makes sure the store honours conditional writes
    (ConditionalWritesUnsupportedError before anything is written when it does not)."""
    try:
        storage.write_once(uri, record.model_dump_json(indent=2).encode("utf-8"))
    except storage.ObjectExistsError:
        return False
    return True


def _read(model: type[_B], uri: str) -> _B | None:
    """The record at ``uri``, or None when nothing is there; LifecycleError when it is too
    large, not JSON or not a ``model``."""
    try:
        text = storage.read_text(uri, limit=MAX_RECORD_BYTES)
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise LifecycleError([Problem("", "is not UTF-8 text", source=uri, fix=_FIX)]) from None
    except StorageError as exc:
        raise LifecycleError([p.located(uri, None) for p in exc.problems]) from None
    return _parse(model, uri, text)


def _parse(model: type[_B], uri: str, text: str) -> _B:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LifecycleError(
            [Problem("", f"not valid JSON ({exc.msg}, line {exc.lineno})", source=uri, fix=_FIX)]
        ) from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        problems = [
            Problem(
                ".".join(str(part) for part in error["loc"]),
                f"not a {model.__name__}: {error['msg']}",
                source=uri,
                fix=_FIX,
            )
            for error in errors[:MAX_PROBLEMS]
        ]
        if len(errors) > MAX_PROBLEMS:
            problems.append(
                Problem("", f"and {len(errors) - MAX_PROBLEMS} more problems", source=uri)
            )
        raise LifecycleError(problems) from None


def _check_number(uri: str, field: str, value: int) -> None:
    """A NNNN.json record must hold the number its name says."""
    match = NUMBERED_NAME.match(uri.rsplit("/", 1)[-1])
    if match and int(match.group(1)) != value:
        raise LifecycleError(
            [
                Problem(
                    field,
                    f"holds {field} {value}, but its name says {int(match.group(1))}",
                    source=uri,
                    fix="records are never renamed or copied by hand; move the file out of "
                    "the lifecycle folder",
                )
            ]
        )


def _check_done(uri: str, done: Done) -> None:
    """A Done's name must be made from its own URI and action."""
    name = uri.rsplit("/", 1)[-1].removesuffix(".json")
    if name != done_key(done.uri, done.action):
        raise LifecycleError(
            [
                Problem(
                    "uri",
                    f"records {done.action!r} on {done.uri!r}, which is not what its name was "
                    "made from",
                    source=uri,
                    fix="records are never renamed or copied by hand; move the file out of "
                    "lifecycle/done/",
                )
            ]
        )


def _vanished(uri: str) -> LifecycleError:
    return LifecycleError(
        [
            Problem(
                "",
                "disappeared while it was read (records are never removed)",
                source=uri,
                fix="find what removed it; restore it from a backup",
            )
        ]
    )


def _ignored(name: str, pattern: str) -> None:
    if not name.startswith("."):  # dot files are writes in progress
        log.warning("ignoring %s: not a lifecycle record (%s)", name, pattern)
