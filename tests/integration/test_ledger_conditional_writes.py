"""The S3 ledger writes only to a store that honours conditional writes.

A round is recorded exactly once because S3 refuses a PUT with ``If-None-Match: *`` of a key
that exists. Some S3-compatible stores accept the header and ignore it; there every writer would
be told "recorded". The ledger probes the store before its first write to a bucket and refuses
one that ignores the condition.

The stores are real: the tests' moto server, reached directly or through a real HTTP proxy
(``fakes.s3_header_proxy``) that strips ``If-None-Match`` (a store that ignores it) or forwards
conditional PUTs one at a time (moto as atomic as S3 in a race).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from fakes.s3_header_proxy import S3HeaderProxy
from tuneloop import aws, storage
from tuneloop.rounds.decision import Action, Decision
from tuneloop.rounds.ledger import (
    BaselineRecord,
    Ledger,
    RoundAlreadyRecordedError,
    RoundClaim,
    RoundRecord,
)

WRITERS = 20


def record(number: int, run_id: str) -> RoundRecord:
    decision = Decision(
        round=number,
        action=Action.CONTINUE,
        reason=f"Round {number} was judged.",
        promoted=True,
        champion_round=number,
    )
    return RoundRecord(
        campaign="demo",
        round=number,
        run_id=run_id,
        base="tiny-chat",
        metrics={"exact_match": 0.5},
        decision=decision,
    )


@pytest.fixture
def bucket(s3_server: str) -> str:
    """A new bucket on the moto server (made directly, not through any proxy)."""
    name = f"conditional-{uuid.uuid4().hex[:12]}"
    aws.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return name


def keys(s3_server: str, bucket: str) -> list[str]:
    """Every key in ``bucket``, asked of the moto server itself (whatever the process's endpoint
    is at the moment)."""
    listing = aws.client("s3", endpoint_url=s3_server).list_objects_v2(Bucket=bucket)
    return sorted(item["Key"] for item in listing.get("Contents", []))


@pytest.fixture
def ignoring_store(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3HeaderProxy]:
    """The process's S3 client talks to moto through a proxy that drops If-None-Match."""
    with S3HeaderProxy(s3_server, strip=("If-None-Match",)) as proxy:
        monkeypatch.setenv(aws.S3_ENDPOINT_ENV, proxy.endpoint)
        yield proxy


@pytest.fixture
def atomic_store(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3HeaderProxy]:
    """The process's S3 client talks to moto through a proxy that passes conditional PUTs on
    one at a time, as S3 decides them (moto alone checks, then stores, without a lock)."""
    with S3HeaderProxy(s3_server, atomic_conditional_puts=True) as proxy:
        monkeypatch.setenv(aws.S3_ENDPOINT_ENV, proxy.endpoint)
        yield proxy


def test_an_honest_store_is_probed_once_per_bucket_and_left_clean(
    bucket: str, s3_server: str
) -> None:
    calls: list[str] = []

    def count(event_name: str, **_: Any) -> None:
        calls.append(event_name.rsplit(".", 1)[-1])

    root = f"s3://{bucket}/tuneloop/demo"
    events = storage.s3_client().meta.events
    events.register("before-call.s3", count)
    try:
        first = record(1, "run-first")
        assert Ledger(root).write(first) == first
        probe_calls = calls[:3]
        calls.clear()
        # Another ledger of the same process and bucket trusts the verdict.
        second = record(2, "run-second")
        assert Ledger(root).write(second) == second
    finally:
        events.unregister("before-call.s3", count)
    assert probe_calls == ["PutObject", "PutObject", "DeleteObject"]
    assert calls == ["PutObject"]
    assert keys(s3_server, bucket) == [
        "tuneloop/demo/rounds/0001.json",
        "tuneloop/demo/rounds/0002.json",
    ]


def test_the_ledger_refuses_a_store_that_ignores_if_none_match(
    bucket: str, s3_server: str, ignoring_store: S3HeaderProxy
) -> None:
    ledger = Ledger(f"s3://{bucket}/tuneloop/demo")
    with pytest.raises(storage.ConditionalWritesUnsupportedError) as info:
        ledger.write(record(1, "run-a"))
    message = str(info.value)
    assert "\n" not in message
    assert message == (
        f"s3://{bucket}/tuneloop/demo: the S3 store at {ignoring_store.endpoint} does not honour "
        f"conditional writes (PUT with If-None-Match: *) in bucket {bucket}, and records written "
        "exactly once need them: without them two runs could both record the same round; "
        "nothing was written; fix: use Amazon S3 or an S3-compatible store that supports "
        "conditional writes, or set output_root to a local or shared filesystem folder"
    )
    # The probe's two PUTs went through the proxy without the header, and the probe is gone.
    assert ignoring_store.stripped == 2
    assert keys(s3_server, bucket) == []
    # Every write of the ledger is refused, without probing again.
    with pytest.raises(storage.ConditionalWritesUnsupportedError):
        ledger.claim(RoundClaim(campaign="demo", round=1, run_id="run-a"), is_active=bool)
    baseline = BaselineRecord(
        campaign="demo", digest="0123abcd", model="tiny-chat", run_id="run-a", metrics={}
    )
    with pytest.raises(storage.ConditionalWritesUnsupportedError):
        ledger.write_baseline(baseline)
    assert ignoring_store.stripped == 2
    assert keys(s3_server, bucket) == []


def race(root: str) -> list[str]:
    """``WRITERS`` runs record round 1 of the ledger at ``root`` at once: what each was told."""
    start = threading.Barrier(WRITERS)
    outcomes: list[str] = [""] * WRITERS

    def write(index: int) -> None:
        start.wait()
        try:
            Ledger(root).write(record(1, f"run-{index}"))
            outcomes[index] = "recorded"
        except RoundAlreadyRecordedError:
            outcomes[index] = "already recorded"
        except storage.ConditionalWritesUnsupportedError:
            outcomes[index] = "refused: no conditional writes"

    threads = [threading.Thread(target=write, args=(i,)) for i in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def test_writers_racing_on_an_honest_store_exactly_one_records(
    bucket: str, atomic_store: S3HeaderProxy
) -> None:
    root = f"s3://{bucket}/tuneloop/demo"
    outcomes = race(root)
    assert sorted(outcomes) == ["already recorded"] * (WRITERS - 1) + ["recorded"]
    assert Ledger(root).read(1).run_id == f"run-{outcomes.index('recorded')}"
    # The store was probed once (two conditional PUTs), then every writer put once.
    assert atomic_store.conditional_puts == 2 + WRITERS


def test_writers_racing_on_a_store_that_ignores_the_condition_are_all_refused(
    bucket: str, s3_server: str, ignoring_store: S3HeaderProxy
) -> None:
    # Before the probe, some of them were told "recorded" on such a store.
    outcomes = race(f"s3://{bucket}/tuneloop/demo")
    assert outcomes == ["refused: no conditional writes"] * WRITERS
    assert keys(s3_server, bucket) == []
