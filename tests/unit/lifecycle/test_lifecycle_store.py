"""The lifecycle store: write-once plans, applies, pins and finished actions, on disk and on S3."""

from __future__ import annotations

import json
import tempfile
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tuneloop import storage
from tuneloop.lifecycle import store as store_module
from tuneloop.lifecycle.records import (
    ActionResult,
    ApplyReport,
    Artifact,
    Done,
    LifecyclePlan,
    Pin,
    PlannedAction,
    RetainedRound,
)
from tuneloop.lifecycle.store import (
    LifecycleError,
    LifecycleStore,
    PlanExistsError,
    done_key,
)

ROUND_2 = "/campaigns/demo/rounds/0002/demo-r2-sft"


def plan(sequence: int, *, run_id: str = "cli-1") -> LifecyclePlan:
    artifact = Artifact(
        uri=ROUND_2, round=2, stage="sft", kind="checkpoint", owner="local", bytes=4096
    )
    return LifecyclePlan(
        campaign="demo",
        sequence=sequence,
        run_id=run_id,
        archive_storage_class="GLACIER",
        delete_intermediates=False,
        keep_last=2,
        region="us-east-1",
        prices_source="test prices, 2025-01-01",
        retained=[RetainedRound(round=3, reasons=["champion"])],
        actions=[
            PlannedAction(
                artifact=artifact,
                action="archive",
                reason="older than the last 2 rounds",
                target_class="LOCAL_ARCHIVE",
                monthly_cost_before=0.01,
            )
        ],
        monthly_cost_before=0.01,
        monthly_cost_after=0.0,
        bytes_to_archive=4096,
        first=sequence == 1,
    )


def report(sequence: int, *, run_id: str = "cli-1") -> ApplyReport:
    return ApplyReport(
        campaign="demo",
        sequence=sequence,
        run_id=run_id,
        started_at=datetime(2025, 1, 1, tzinfo=UTC),
        results=[
            ActionResult(uri=ROUND_2, action="archive", outcome="archived", bytes=4096, digest="ab")
        ],
        bytes_archived=4096,
        monthly_cost_before=0.01,
    )


def done(uri: str = ROUND_2, *, digest: str = "a" * 64) -> Done:
    return Done(
        uri=uri,
        action="archive",
        outcome="archived",
        archive_uri="/campaigns/demo/archive/rounds/0002/demo-r2-sft.tar.gz",
        digest=digest,
        bytes=4096,
        storage_class="LOCAL_ARCHIVE",
        sequence=1,
    )


@pytest.fixture
def local_store(tmp_path: Path) -> LifecycleStore:
    return LifecycleStore(str(tmp_path / "demo"))


@pytest.fixture
def s3_store(s3_server: str) -> LifecycleStore:
    bucket = f"lifecycle-{uuid.uuid4().hex[:12]}"
    storage.s3_client().create_bucket(Bucket=bucket)
    return LifecycleStore(f"s3://{bucket}/tuneloop/demo")


@pytest.fixture(params=["local", "s3"])
def lifecycle_store(request: pytest.FixtureRequest) -> LifecycleStore:
    return request.getfixturevalue(f"{request.param}_store")


# --- round trips ---------------------------------------------------------------------------


def test_a_new_store_is_empty(lifecycle_store: LifecycleStore) -> None:
    assert lifecycle_store.plans() == []
    assert lifecycle_store.latest_plan() is None
    assert lifecycle_store.next_sequence() == 1
    assert lifecycle_store.applies() == []
    assert lifecycle_store.apply_of(1) is None
    assert lifecycle_store.pins() == []
    assert lifecycle_store.pinned_rounds() == set()
    assert lifecycle_store.done(ROUND_2, "archive") is None
    assert lifecycle_store.dones() == []


def test_plans_round_trip_in_sequence_order(lifecycle_store: LifecycleStore) -> None:
    for sequence in (1, 2, 3):
        assert lifecycle_store.write_plan(plan(sequence)) == plan_at(lifecycle_store, sequence)
    assert [p.sequence for p in lifecycle_store.plans()] == [1, 2, 3]
    latest = lifecycle_store.latest_plan()
    assert latest is not None and latest.sequence == 3
    assert lifecycle_store.next_sequence() == 4
    assert lifecycle_store.plans()[0].first


def plan_at(store: LifecycleStore, sequence: int) -> LifecyclePlan:
    return next(p for p in store.plans() if p.sequence == sequence)


def test_the_layout_is_under_lifecycle(local_store: LifecycleStore) -> None:
    local_store.write_plan(plan(1))
    local_store.write_apply(report(1))
    local_store.pin(Pin(campaign="demo", round=3))
    local_store.record_done(done())
    root = Path(local_store.root) / "lifecycle"
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*.json")) == sorted(
        [
            "plans/0001.json",
            "applies/0001.json",
            "pins/0003.json",
            f"done/{done_key(ROUND_2, 'archive')}.json",
        ]
    )
    key = done_key(ROUND_2, "archive")
    assert key.endswith("-archive") and len(key.split("-")[0]) == 32


def test_for_campaign_uses_the_campaign_root(tmp_path: Path) -> None:
    from tuneloop.config.campaign import Campaign

    campaign = Campaign.model_validate(
        {
            "name": "demo",
            "backend": {"type": "local", "output_root": str(tmp_path)},
            "model_type": "local.tiny-chat-v1",
            "technique": "full",
            "stages": [{"method": "sft", "recipe": "sft.yaml", "datasets": {"train": "t.jsonl"}}],
            "evaluation": {"recipe": "local/eval-gen-qa.yaml"},
            "gate": {"primary_metric": "exact_match"},
        }
    )
    assert LifecycleStore.for_campaign(campaign).root == f"{tmp_path}/demo"


# --- write once ----------------------------------------------------------------------------


def test_a_plan_number_is_taken_once(lifecycle_store: LifecycleStore) -> None:
    first = lifecycle_store.write_plan(plan(1, run_id="run-a"))
    with pytest.raises(PlanExistsError) as raised:
        lifecycle_store.write_plan(plan(1, run_id="run-b"))
    message = str(raised.value)
    assert "plan 1" in message and "run-a" in message and "next plan is number 2" in message
    assert lifecycle_store.plans() == [first]


def test_writing_the_same_plan_again_returns_it(lifecycle_store: LifecycleStore) -> None:
    mine = plan(1)
    assert lifecycle_store.write_plan(mine) == mine
    assert lifecycle_store.write_plan(mine) == mine
    assert lifecycle_store.plans() == [mine]


def test_an_apply_is_recorded_once_per_plan(lifecycle_store: LifecycleStore) -> None:
    first = lifecycle_store.write_apply(report(1, run_id="run-a"))
    again = lifecycle_store.write_apply(report(1, run_id="run-b"))
    assert again == first and again.run_id == "run-a"
    assert lifecycle_store.apply_of(1) == first
    assert lifecycle_store.apply_of(2) is None
    lifecycle_store.write_apply(report(2))
    assert [a.sequence for a in lifecycle_store.applies()] == [1, 2]


def test_pins_are_idempotent(lifecycle_store: LifecycleStore) -> None:
    first = lifecycle_store.pin(Pin(campaign="demo", round=3, by="ana", reason="paper"))
    again = lifecycle_store.pin(Pin(campaign="demo", round=3, by="bo", reason="other"))
    assert again == first and again.by == "ana"
    lifecycle_store.pin(Pin(campaign="demo", round=12))
    assert lifecycle_store.pinned_rounds() == {3, 12}
    assert [p.round for p in lifecycle_store.pins()] == [3, 12]


def test_dones_are_idempotent(lifecycle_store: LifecycleStore) -> None:
    first = lifecycle_store.record_done(done(digest="a" * 64))
    again = lifecycle_store.record_done(done(digest="b" * 64))
    assert again == first and again.digest == "a" * 64
    assert lifecycle_store.done(ROUND_2, "archive") == first
    assert lifecycle_store.done(ROUND_2, "delete") is None
    other = lifecycle_store.record_done(done("s3://bucket/rounds/0001/job/output/model.tar.gz"))
    assert sorted(d.uri for d in lifecycle_store.dones()) == sorted([ROUND_2, other.uri])


def test_an_unknown_action_is_refused(local_store: LifecycleStore) -> None:
    with pytest.raises(LifecycleError, match="'shred' is not a lifecycle action"):
        local_store.done(ROUND_2, "shred")


def test_concurrent_planners_get_one_number_each(lifecycle_store: LifecycleStore) -> None:
    writers = 8
    barrier = threading.Barrier(writers)
    outcomes: list[str] = []
    lock = threading.Lock()

    def write(index: int) -> None:
        barrier.wait()
        try:
            lifecycle_store.write_plan(plan(1, run_id=f"run-{index}"))
            outcome = "written"
        except PlanExistsError:
            outcome = "refused"
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["refused"] * (writers - 1) + ["written"]
    assert len(lifecycle_store.plans()) == 1


@settings(max_examples=40, deadline=None)
@given(uri=st.text(min_size=1, max_size=300), action=st.sampled_from(store_module.ACTIONS))
def test_any_uri_finds_its_own_done(uri: str, action: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        lifecycle_store = LifecycleStore(folder)
        recorded = lifecycle_store.record_done(
            Done(uri=uri, action=action, outcome="skipped")  # type: ignore[arg-type]
        )
        assert lifecycle_store.done(uri, action) == recorded
        assert lifecycle_store.dones() == [recorded]
        assert lifecycle_store.done(uri + "/", action) is None


# --- what the store refuses to read --------------------------------------------------------


def put(store: LifecycleStore, relative: str, text: str) -> str:
    uri = storage.join(store.folder, relative)
    storage.write_once(uri, text.encode("utf-8"))
    return uri


def test_a_corrupted_plan_is_a_clear_error(lifecycle_store: LifecycleStore) -> None:
    uri = put(lifecycle_store, "plans/0001.json", '{"campaign": "demo",')
    with pytest.raises(LifecycleError) as raised:
        lifecycle_store.plans()
    (problem,) = raised.value.problems
    assert problem.source == uri
    assert "not valid JSON" in problem.message
    assert "never edited" in (problem.fix or "")


def test_a_record_of_the_wrong_shape_names_its_fields(lifecycle_store: LifecycleStore) -> None:
    put(lifecycle_store, "pins/0004.json", json.dumps({"campaign": "demo", "round": "four"}))
    with pytest.raises(LifecycleError) as raised:
        lifecycle_store.pins()
    assert [p.path for p in raised.value.problems] == ["round"]
    assert "not a Pin" in raised.value.problems[0].message


def test_validation_problems_are_bounded(local_store: LifecycleStore) -> None:
    many = {f"field_{i}": i for i in range(50)}
    put(local_store, "pins/0004.json", json.dumps({"campaign": "demo", "round": 4, **many}))
    with pytest.raises(LifecycleError) as raised:
        local_store.pins()
    problems = raised.value.problems
    assert len(problems) == store_module.MAX_PROBLEMS + 1
    assert problems[-1].message == "and 40 more problems"


def test_a_record_larger_than_the_bound_is_refused(
    lifecycle_store: LifecycleStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    lifecycle_store.write_plan(plan(1))
    monkeypatch.setattr(store_module, "MAX_RECORD_BYTES", 100)
    with pytest.raises(LifecycleError, match="is larger than 100 bytes"):
        lifecycle_store.latest_plan()


def test_a_plan_under_another_number_is_refused(lifecycle_store: LifecycleStore) -> None:
    put(lifecycle_store, "plans/0002.json", plan(1).model_dump_json())
    with pytest.raises(LifecycleError, match="holds sequence 1, but its name says 2"):
        lifecycle_store.latest_plan()


def test_a_done_under_another_name_is_refused(lifecycle_store: LifecycleStore) -> None:
    elsewhere = done("/somewhere/else")
    put(lifecycle_store, f"done/{done_key(ROUND_2, 'archive')}.json", elsewhere.model_dump_json())
    with pytest.raises(LifecycleError, match="not what its name was made from"):
        lifecycle_store.done(ROUND_2, "archive")
    with pytest.raises(LifecycleError, match="not what its name was made from"):
        lifecycle_store.dones()


def test_writes_in_progress_and_strangers_are_ignored(
    local_store: LifecycleStore, caplog: pytest.LogCaptureFixture
) -> None:
    local_store.write_plan(plan(1))
    put(local_store, "plans/.0002.json.tmp", "half a plan")
    put(local_store, "plans/notes.txt", "hello")
    put(local_store, "done/README", "hello")
    assert [p.sequence for p in local_store.plans()] == [1]
    assert local_store.next_sequence() == 2
    assert local_store.dones() == []
    ignored = [r.getMessage() for r in caplog.records if "ignoring" in r.getMessage()]
    assert any("notes.txt" in m for m in ignored) and any("README" in m for m in ignored)
    assert not any(".0002" in m for m in ignored)


def test_s3_records_are_written_with_a_condition(s3_store: LifecycleStore) -> None:
    """The store's S3 writes go through write_once, which probes the store's conditional
    writes first: the probe leaves nothing behind, and a second write of a name is refused."""
    s3_store.write_plan(plan(1))
    bucket, prefix = storage.split_s3(s3_store.folder)
    keys = [
        item["Key"]
        for item in storage.s3_client()
        .list_objects_v2(Bucket=bucket, Prefix=prefix)
        .get("Contents", [])
    ]
    assert keys == [f"{prefix}/plans/0001.json"]
    with pytest.raises(storage.ObjectExistsError):
        storage.write_once(s3_store.plan_uri(1), b"{}")
