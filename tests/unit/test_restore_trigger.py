"""RestoreTrigger against a moto S3 server: it waits while an archived object is not restored,
and fires once S3 says the restore finished. Tests wait on the trigger's poll count, never on
the clock."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest

from tuneloop.pipeline.restore import (
    RestoreTrigger,
    failure_message,
    pending_restores,
    restore_event,
)
from tuneloop.pipeline.triggers import DEADLINE, FAILURE, SUCCESS

BUCKET = "restore-trigger"
BOUND = 30.0
"""A backstop only: each wait ends on an event long before."""


@pytest.fixture
def glacier_object(s3_server: str) -> tuple[Any, str]:
    from tuneloop import storage

    client = storage.s3_client()
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=BUCKET)
    key = f"round-1/model-{time.monotonic_ns()}.bin"
    client.put_object(Bucket=BUCKET, Key=key, Body=b"weights", StorageClass="GLACIER")
    return client, f"s3://{BUCKET}/{key}"


def _first_event(trigger: RestoreTrigger) -> asyncio.Future[Any]:
    return asyncio.ensure_future(trigger.run().__anext__())


def test_waits_until_the_restore_is_requested_and_done(glacier_object: tuple[Any, str]) -> None:
    client, uri = glacier_object
    bucket, key = uri.removeprefix("s3://").split("/", 1)

    async def scenario() -> Any:
        trigger = RestoreTrigger([uri], aws_conn_id=None, poll_interval=0.01)
        fired = _first_event(trigger)
        await asyncio.wait_for(trigger.polled(1), BOUND)
        assert not fired.done(), "fired although no restore was asked for"
        await asyncio.wait_for(trigger.polled(2), BOUND)
        assert not fired.done()
        await asyncio.to_thread(
            client.restore_object,
            Bucket=bucket,
            Key=key,
            RestoreRequest={"Days": 1, "GlacierJobParameters": {"Tier": "Standard"}},
        )
        return await asyncio.wait_for(fired, BOUND)

    event = asyncio.run(scenario())
    assert event.payload["outcome"] == SUCCESS
    assert event.payload["pending"] == []


def test_an_object_not_archived_waits_for_nothing(s3_server: str) -> None:
    from tuneloop import storage

    client = storage.s3_client()
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=BUCKET)
    client.put_object(Bucket=BUCKET, Key="standard.bin", Body=b"x")
    assert pending_restores([f"s3://{BUCKET}/standard.bin"], None) == []


def test_a_missing_object_fails_with_its_uri(s3_server: str) -> None:
    from tuneloop import storage

    client = storage.s3_client()
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=BUCKET)
    uri = f"s3://{BUCKET}/gone/model.bin"

    async def scenario() -> Any:
        return await asyncio.wait_for(
            _first_event(RestoreTrigger([uri], poll_interval=0.01)), BOUND
        )

    event = asyncio.run(scenario())
    assert event.payload["outcome"] == FAILURE
    assert event.payload["message"] == f"{uri} no longer exists"
    message = failure_message(event.payload, 1, "Standard")
    assert message.startswith("restore of round 1's checkpoint failed: ")
    assert "start_from_round" in message


def test_the_deadline_ends_the_wait(glacier_object: tuple[Any, str]) -> None:
    _, uri = glacier_object

    async def scenario() -> Any:
        trigger = RestoreTrigger([uri], poll_interval=60.0, deadline=time.time() - 1)
        return await asyncio.wait_for(_first_event(trigger), BOUND)

    event = asyncio.run(scenario())
    assert event.payload["outcome"] == DEADLINE and event.payload["pending"] == [uri]
    message = failure_message(event.payload, 2, "Bulk")
    assert "had not finished by the task's deadline" in message and uri in message
    assert "clear restore_base to wait again" in message


def test_serializes_everything_it_needs() -> None:
    trigger = RestoreTrigger(
        ["s3://b/k"], aws_conn_id="aws_campaign", poll_interval=12.0, deadline=5.0
    )
    path, kwargs = trigger.serialize()
    assert path == "tuneloop.pipeline.restore.RestoreTrigger"
    again = RestoreTrigger(**kwargs)
    assert again.serialize() == (path, kwargs)
    assert kwargs == {
        "uris": ["s3://b/k"],
        "aws_conn_id": "aws_campaign",
        "poll_interval": 12.0,
        "deadline": 5.0,
        "error_backoff": 5.0,
    }


def test_failure_message_names_at_most_three_uris() -> None:
    uris = [f"s3://b/{n}" for n in range(5)]
    event = restore_event(DEADLINE, uris, "5 object(s) were still being restored", 3)
    message = failure_message(event, 4, "Standard")
    assert "s3://b/2 and 2 more" in message and "s3://b/3" not in message
