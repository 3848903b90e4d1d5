"""``restore_base``: bring an archived base checkpoint back before a round trains from it.

The round's base may have been archived by the campaign's lifecycle: a local stage folder that
lives on as a tarball under ``archive/``, or S3 objects moved to GLACIER or DEEP_ARCHIVE.
``plan_round`` plans the round from the checkpoint the ledger recorded and pushes what must come
back (a `RestorePlan`, XCom key ``restore``); this task brings it back:

- **Nothing archived**: the task succeeds at once, without deferring.
- **It asks again at run time**: the lifecycle may have archived the base after the round was
  planned, or a person may have restored it meanwhile; the plan in XCom is only what planning
  saw.
- **Local items** are extracted here, in the worker (verified, atomic).
- **S3 items** get a RestoreObject request (the campaign's tier and days; never Expedited for
  DEEP_ARCHIVE) and the task defers to `RestoreTrigger`, which polls each object's restore
  status (HEAD, ``x-amz-restore``) in the triggerer, holding no worker slot. A Standard restore
  takes hours; the task's deadline is its ``execution_timeout``.
- ``execute_complete`` succeeds once every object is readable, or fails with what is still
  archived and what to do.

This module is imported when DAG files are parsed: boto3 only inside the trigger's thread.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException
from airflow.triggers.base import BaseTrigger, TriggerEvent

from tuneloop.pipeline.triggers import DEADLINE, FAILURE, SUCCESS, backoff

if TYPE_CHECKING:
    from airflow.sdk import Context

    from tuneloop.lifecycle.records import RestorePlan

POLL_SECONDS: dict[str, float] = {"Expedited": 30.0, "Standard": 300.0, "Bulk": 900.0}
"""Seconds between two looks at the objects, by restore tier: Expedited restores take 1-5
minutes, Standard 3-5 hours (about 12 from DEEP_ARCHIVE), Bulk longer."""
TIER_TAKES: dict[str, str] = {
    "Expedited": "1-5 minutes",
    "Standard": "3-5 hours (about 12 from DEEP_ARCHIVE)",
    "Bulk": "5-12 hours (up to 48 from DEEP_ARCHIVE)",
}
DEADLINE_GRACE = 60.0
"""Seconds Airflow's defer timeout is given beyond the trigger's own deadline (a backstop)."""
MAX_BACKOFF = 300.0
SHOWN_URIS = 3
"""How many still-archived URIs a failure message names."""


class RestoreTrigger(BaseTrigger):
    """Wait until every object of ``uris`` is restored, without holding a worker slot.

    :param uris: the S3 objects whose restore was requested.
    :param aws_conn_id: the Airflow connection the campaign's S3 calls use.
    :param poll_interval: seconds between two looks.
    :param deadline: epoch seconds after which a deadline event ends the wait (None: no limit).
    :param error_backoff: first wait after a transient error; it doubles up to ``MAX_BACKOFF``.

    It ends with one event: ``{"outcome": success | failure | deadline, "pending": [...],
    "message": ..., "polls": n}``. ``polls`` counts the looks that completed (`polled` waits on
    it).
    """

    def __init__(
        self,
        uris: list[str],
        aws_conn_id: str | None = None,
        poll_interval: float = 300.0,
        deadline: float | None = None,
        error_backoff: float = 5.0,
    ) -> None:
        super().__init__()
        self.uris = list(uris)
        self.aws_conn_id = aws_conn_id
        self.poll_interval = float(poll_interval)
        self.deadline = deadline
        self.error_backoff = float(error_backoff)
        self.polls = 0
        self._polled: asyncio.Condition | None = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "uris": self.uris,
                "aws_conn_id": self.aws_conn_id,
                "poll_interval": self.poll_interval,
                "deadline": self.deadline,
                "error_backoff": self.error_backoff,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        pending = list(self.uris)
        failures = 0
        while True:
            try:
                pending = await asyncio.to_thread(pending_restores, pending, self.aws_conn_id)
            except _LookAgain as exc:  # throttling, a lost connection: look again
                await self._count_poll()
                failures += 1
                wait = self._capped(backoff(failures, self.error_backoff, MAX_BACKOFF))
                self.log.warning(
                    "Looking at the restore of %d object(s) failed (%s); again in %.0fs",
                    len(pending),
                    exc,
                    wait,
                )
                if wait <= 0:
                    yield TriggerEvent(self._deadline_event(pending))
                    return
                await asyncio.sleep(wait)
                continue
            except Exception as exc:  # gone, forbidden, or a fault waiting cannot mend
                await self._count_poll()
                message = str(exc) if isinstance(exc, _Unrestorable) else repr(exc)
                yield TriggerEvent(restore_event(FAILURE, pending, message, self.polls))
                return
            failures = 0
            await self._count_poll()
            if not pending:
                message = f"{len(self.uris)} object(s) restored"
                yield TriggerEvent(restore_event(SUCCESS, [], message, self.polls))
                return
            self.log.info("%d of %d object(s) still being restored", len(pending), len(self.uris))
            wait = self._capped(self.poll_interval * random.uniform(0.9, 1.1))
            if wait <= 0:
                yield TriggerEvent(self._deadline_event(pending))
                return
            await asyncio.sleep(wait)

    async def polled(self, count: int) -> None:
        """Return once ``count`` looks have completed (what a test waits on)."""
        condition = self._condition()
        async with condition:
            await condition.wait_for(lambda: self.polls >= count)

    async def _count_poll(self) -> None:
        condition = self._condition()
        async with condition:
            self.polls += 1
            condition.notify_all()

    def _condition(self) -> asyncio.Condition:
        if self._polled is None:
            self._polled = asyncio.Condition()
        return self._polled

    def _capped(self, wait: float) -> float:
        """``wait``, shortened to end at the deadline; 0 when the deadline has passed."""
        if self.deadline is None:
            return wait
        return max(0.0, min(wait, self.deadline - time.time()))

    def _deadline_event(self, pending: list[str]) -> dict[str, Any]:
        message = f"{len(pending)} object(s) were still being restored at the task's deadline"
        return restore_event(DEADLINE, pending, message, self.polls)


def restore_event(outcome: str, pending: list[str], message: str, polls: int) -> dict[str, Any]:
    """The payload ``execute_complete`` receives (plain JSON)."""
    return {"outcome": outcome, "pending": list(pending), "message": message, "polls": polls}


class _Unrestorable(Exception):
    """An object cannot be restored by waiting: it is gone, or this account may not read it."""


class _LookAgain(Exception):
    """Looking at an object failed in a way that looking again later may not (throttling, a
    server error, a lost connection)."""


TRANSIENT_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError", "503"}
)


def pending_restores(uris: list[str], aws_conn_id: str | None) -> list[str]:
    """The URIs whose restore has not finished (blocking; the trigger runs it in a thread).

    The connection is named on each call rather than set for the process: the triggerer runs
    the triggers of every campaign side by side."""
    from botocore.exceptions import BotoCoreError, ClientError

    from tuneloop import aws, storage
    from tuneloop.lifecycle.objects import ObjectInfo, restore_state

    client = aws.client("s3", conn_id=aws_conn_id)
    pending: list[str] = []
    for uri in uris:
        bucket, key = storage.split_s3(uri)
        try:
            head = client.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            raise _client_error(uri, exc) from None
        except (BotoCoreError, OSError) as exc:
            raise _LookAgain(f"{uri}: {type(exc).__name__}: {exc}") from None
        info = ObjectInfo(
            uri=uri,
            bytes=int(head.get("ContentLength", 0)),
            storage_class=str(head.get("StorageClass") or "STANDARD"),
            etag=str(head.get("ETag", "")).strip('"'),
            checksum=None,
            restore=head.get("Restore"),
        )
        if restore_state(info) in ("not_requested", "in_progress"):
            pending.append(uri)
    return pending


def _client_error(uri: str, exc: Any) -> Exception:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    if code in TRANSIENT_CODES or status >= 500:
        return _LookAgain(f"{uri}: {code or status}")
    if code in ("404", "NoSuchKey", "NotFound"):
        return _Unrestorable(f"{uri} no longer exists")
    if code in ("403", "AccessDenied", "Forbidden"):
        return _Unrestorable(f"{uri}: this account may not read the object ({code})")
    return _Unrestorable(f"{uri}: {code or status}: {exc}")


class RestoreBaseOperator(BaseOperator):
    """Bring back what the lifecycle archived of the round's base (see the module docstring).
    Returns ``{"base_round", "restored": [uris], "waited_for": [S3 uris]}``.

    :param planned: the round's `PlannedRound` (templated; an XComArg in the DAG).
    :param restore: what planning found archived, a `RestorePlan` or None (templated): logged
        beside what this task finds now.
    :param poll_interval: seconds between two looks at the objects; None: by restore tier.
    :param error_backoff: first wait after a transient error while waiting.
    """

    template_fields: Sequence[str] = ("planned", "restore")
    template_fields_renderers: ClassVar[dict[str, str]] = {"planned": "json", "restore": "json"}
    ui_color = "#fef7e0"

    def __init__(
        self,
        *,
        planned: dict[str, Any] | Any,
        restore: dict[str, Any] | Any = None,
        poll_interval: float | None = None,
        error_backoff: float = 5.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.planned = planned
        self.restore = restore
        self.poll_interval = poll_interval
        self.error_backoff = error_backoff

    def execute(self, context: Context) -> dict[str, Any]:
        from tuneloop.lifecycle.restore import start_restore
        from tuneloop.pipeline.tasks import restore_base_plan, user_errors

        with user_errors():
            conn_id, plan = restore_base_plan(self.planned)
        self._compare_with_planning(plan)
        if plan is None:
            self.log.info("Nothing to restore: the round's base is not archived")
            return {"base_round": None, "restored": [], "waited_for": []}
        self.log.info(
            "Restoring round %s's checkpoint %s: %d item(s), tier %s for %d day(s)",
            plan.base_round,
            plan.base_output_uri,
            len(plan.items),
            plan.tier,
            plan.days,
        )
        with user_errors():
            pending = start_restore(plan)
        result = {
            "base_round": plan.base_round,
            "restored": [item.uri for item in plan.items],
            "waited_for": list(pending),
        }
        if not pending:
            self.log.info("Round %s's checkpoint is back", plan.base_round)
            return result
        deadline = self._deadline()
        self.log.info(
            "Waiting for %d S3 restore(s), tier %s (usually %s), without a worker slot",
            len(pending),
            plan.tier,
            TIER_TAKES.get(plan.tier, "hours"),
        )
        self.defer(
            trigger=RestoreTrigger(
                uris=pending,
                aws_conn_id=conn_id,
                poll_interval=self.poll_interval or POLL_SECONDS.get(plan.tier, 300.0),
                deadline=deadline,
                error_backoff=self.error_backoff,
            ),
            method_name="execute_complete",
            kwargs={"result": result, "tier": plan.tier},
            timeout=_defer_timeout(deadline),
        )
        raise AssertionError("unreachable: defer raises")

    def execute_complete(
        self,
        context: Context,
        event: dict[str, Any],
        result: dict[str, Any] | None = None,
        tier: str = "",
    ) -> dict[str, Any]:
        """Back from `RestoreTrigger`: every object restored, or why not."""
        result = dict(result or {})
        if event.get("outcome") == SUCCESS:
            self.log.info(
                "Round %s's checkpoint is back: %s", result.get("base_round"), event.get("message")
            )
            return result
        raise AirflowFailException(failure_message(event, result.get("base_round"), tier))

    def _compare_with_planning(self, plan: RestorePlan | None) -> None:
        planned = bool(self.restore) and bool(dict(self.restore).get("items"))
        if planned and plan is None:
            self.log.info("Planning found the base archived; it has been restored since")
        elif plan is not None and not planned:
            self.log.warning("The base was archived after the round was planned; restoring it now")

    def _deadline(self) -> float | None:
        timeout = self.execution_timeout
        return time.time() + timeout.total_seconds() if timeout else None


def failure_message(event: dict[str, Any], base_round: Any, tier: str) -> str:
    """What a failed or timed-out restore says: what is still archived and what to do."""
    pending = [str(uri) for uri in event.get("pending") or []]
    shown = ", ".join(pending[:SHOWN_URIS]) + (
        f" and {len(pending) - SHOWN_URIS} more" if len(pending) > SHOWN_URIS else ""
    )
    what = f"restore of round {base_round}'s checkpoint"
    if event.get("outcome") == DEADLINE:
        return (
            f"{what} had not finished by the task's deadline: {event.get('message')}"
            f"{f' ({shown})' if shown else ''}. S3 goes on restoring (tier {tier or '?'} "
            f"usually takes {TIER_TAKES.get(tier, 'hours')}); clear restore_base to wait again, "
            "or raise its execution_timeout"
        )
    return (
        f"{what} failed: {event.get('message') or 'no reason given'}. The round cannot start "
        "from that checkpoint; trigger it from another base (conf base_checkpoint or "
        "start_from_round)"
    )


def _defer_timeout(deadline: float | None) -> timedelta | None:
    if deadline is None:
        return None
    return timedelta(seconds=max(1.0, deadline - time.time()) + DEADLINE_GRACE)
