"""The round ledger: write-once records on disk and on S3, champion and history, baselines."""

from __future__ import annotations

import json
import logging
import multiprocessing
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tuneloop.artifacts.manifest import Checkpoint
from tuneloop.config.campaign import Campaign, Gate, Stage
from tuneloop.errors import StorageError
from tuneloop.recipes.catalog import Method, Platform, Technique
from tuneloop.rounds.gate import Action, Decision, decide
from tuneloop.rounds.ledger import (
    BaselineRecord,
    DatasetRecord,
    Ledger,
    LedgerError,
    RoundAlreadyRecordedError,
    RoundClaim,
    RoundClaimedError,
    RoundNotFoundError,
    RoundRecord,
    StageRecord,
    baseline_digest,
    deltas,
    gpu_hours,
)

SFT = Stage(method="sft", recipe="sft.yaml", datasets={"train": "data/sft.jsonl"})
GATE = Gate(primary_metric="exact_match", targets={"exact_match": 0.9}, regression_tolerance=0.02)


def stage_record(root: str, n: int, *, lineage=(Method.SFT,)) -> StageRecord:
    output = f"{root}/rounds/{n:04d}/demo-r{n:04d}-sft"
    return StageRecord(
        name="sft",
        method=Method.SFT,
        technique=Technique.FULL,
        job_name=f"demo-r{n:04d}-sft",
        recipe={"training_config": {"model": {"optim": {"lr": 1e-5}}}},
        output_uri=output,
        checkpoint=Checkpoint(
            uri=f"{output}/checkpoint",
            model_type="local.tiny-chat-v1",
            technique=Technique.FULL,
            platform=Platform.LOCAL,
            lineage=lineage,
            output_uri=output,
        ),
        billable_seconds=120.0,
        training_metrics={"loss": [(1, 2.5), (2, 1.75)]},
    )


def record(
    n: int,
    metrics: dict[str, float],
    *,
    run_id: str = "",
    decision: Decision | None = None,
    root: str = "root",
    rollback_of: int | None = None,
) -> RoundRecord:
    if decision is None:
        decision = Decision(
            round=n,
            action=Action.CONTINUE,
            reason=f"Round {n} was judged.",
            promoted=True,
            champion_round=n,
            next_round=n + 1,
            next_base=f"{root}/rounds/{n:04d}/demo-r{n:04d}-sft",
            next_stages=["sft"],
            signals={"value": metrics.get("exact_match"), "plateau_count": 0},
        )
    return RoundRecord(
        campaign="demo",
        round=n,
        run_id=run_id or f"manual__round-{n}",
        base="tiny-chat",
        rollback_of=rollback_of,
        plan={"campaign": "demo", "round": n},
        datasets=[
            DatasetRecord(
                stage="sft",
                channel="train",
                uri="data/sft.jsonl",
                sha256="ab" * 32,
                records=100,
                ok=True,
                report={"records": 100, "errors": []},
            )
        ],
        stages=[stage_record(root, n)],
        evaluation={"job_name": f"demo-r{n:04d}-eval", "result_uri": "eval/results_1.json"},
        baseline={"exact_match": 0.5},
        metrics=metrics,
        deltas=deltas(metrics, baseline={"exact_match": 0.5}),
        decision=decision,
        timings={"train_sft": 12.5, "evaluate": 3.0},
        billable_seconds=150.0,
        gpu_hours=150.0 / 3600,
    )


@pytest.fixture
def local_ledger(tmp_path: Path) -> Ledger:
    return Ledger(str(tmp_path / "demo"))


@pytest.fixture
def s3_ledger(s3_server: str) -> Ledger:
    from tuneloop.storage import require_conditional_writes, s3_client

    bucket = f"ledger-{uuid.uuid4().hex[:12]}"
    s3_client().create_bucket(Bucket=bucket)
    ledger = Ledger(f"s3://{bucket}/tuneloop/demo")
    # Probed here, as the ledger's first write would, so that the answers some tests inject
    # at the client reach the record's PUT, not the probe's.
    require_conditional_writes(ledger.root)
    return ledger


@pytest.fixture(params=["local", "s3"])
def ledger(request: pytest.FixtureRequest) -> Ledger:
    return request.getfixturevalue(f"{request.param}_ledger")


# --- write once ---------------------------------------------------------------------------------


def test_records_round_trip(ledger: Ledger) -> None:
    written = record(1, {"exact_match": 0.7, "f1": 0.75}, root=ledger.root)
    assert ledger.write(written) == written
    assert ledger.read(1) == written
    assert ledger.records() == [written]
    assert ledger.round_uri(1) == f"{ledger.root}/rounds/0001.json"
    stored = ledger.read(1)
    assert stored.stages[0].training_metrics == {"loss": [(1, 2.5), (2, 1.75)]}
    assert stored.stages[0].checkpoint is not None
    assert stored.stages[0].checkpoint.lineage == (Method.SFT,)


def test_local_record_is_plain_json_with_no_temporary_file_left(local_ledger: Ledger) -> None:
    local_ledger.write(record(1, {"exact_match": 0.7}))
    folder = Path(local_ledger.root) / "rounds"
    assert [p.name for p in folder.iterdir()] == ["0001.json"]
    assert json.loads((folder / "0001.json").read_text())["round"] == 1


def test_a_second_run_cannot_record_the_same_round(ledger: Ledger) -> None:
    first = record(1, {"exact_match": 0.7}, run_id="scheduled__2026-01-01")
    ledger.write(first)
    with pytest.raises(RoundAlreadyRecordedError) as info:
        ledger.write(record(1, {"exact_match": 0.9}, run_id="manual__2026-01-02"))
    message = str(info.value)
    assert message.startswith(f"{ledger.round_uri(1)}: round 1: already recorded by run")
    assert "by run 'scheduled__2026-01-01'" in message
    assert "run 'manual__2026-01-02' cannot record it again" in message
    assert "the next round to run is 2" in message
    assert ledger.read(1) == first


def test_a_retry_of_the_recording_run_gets_the_stored_record(ledger: Ledger) -> None:
    first = record(1, {"exact_match": 0.7}, run_id="manual__a")
    ledger.write(first)
    again = record(1, {"exact_match": 0.7}, run_id="manual__a")
    assert again.recorded_at != first.recorded_at
    assert ledger.write(again) == first


def race(ledger: Ledger, writers: int) -> list[str]:
    """``writers`` threads record round 1 at the same moment; returns each one's outcome."""
    barrier = threading.Barrier(writers)
    outcomes: list[str] = [""] * writers

    def write(index: int) -> None:
        candidate = record(1, {"exact_match": 0.1 * index}, run_id=f"run-{index}")
        barrier.wait()
        try:
            ledger.write(candidate)
            outcomes[index] = "won"
        except RoundAlreadyRecordedError:
            outcomes[index] = "refused"

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def test_concurrent_writers_exactly_one_wins(local_ledger: Ledger) -> None:
    # On S3 the race runs in tests/integration/test_ledger_conditional_writes.py, through a proxy
    # that passes conditional PUTs on one at a time: moto checks the condition and stores the
    # object without a lock, so a race on moto alone can (rarely) have two winners.
    ledger = local_ledger
    outcomes = race(ledger, 6)
    assert sorted(outcomes) == ["refused"] * 5 + ["won"]
    winner = outcomes.index("won")
    assert ledger.read(1).run_id == f"run-{winner}"


def _write_in_process(root: str, index: int, start: multiprocessing.Event, out) -> None:
    start.wait()
    try:
        Ledger(root).write(record(1, {"exact_match": 0.5}, run_id=f"process-{index}"))
        out.put((index, "won"))
    except RoundAlreadyRecordedError:
        out.put((index, "refused"))


def test_concurrent_processes_exactly_one_wins(local_ledger: Ledger) -> None:
    context = multiprocessing.get_context("spawn")
    start, out = context.Event(), context.Queue()
    processes = [
        context.Process(target=_write_in_process, args=(local_ledger.root, i, start, out))
        for i in range(2)
    ]
    for process in processes:
        process.start()
    start.set()
    results = dict(out.get(timeout=60) for _ in processes)
    for process in processes:
        process.join(timeout=60)
    assert sorted(results.values()) == ["refused", "won"]
    winner = next(i for i, outcome in results.items() if outcome == "won")
    assert local_ledger.read(1).run_id == f"process-{winner}"


def test_s3_refuses_a_conditional_put_on_an_existing_key(s3_ledger: Ledger) -> None:
    # What the ledger relies on: the S3 API (here moto's) honours If-None-Match: *.
    from botocore.exceptions import ClientError

    from tuneloop.storage import s3_client, split_s3

    bucket, key = split_s3(s3_ledger.round_uri(7))
    client = s3_client()
    client.put_object(Bucket=bucket, Key=key, Body=b"{}", IfNoneMatch="*")
    with pytest.raises(ClientError) as info:
        client.put_object(Bucket=bucket, Key=key, Body=b"[]", IfNoneMatch="*")
    assert info.value.response["Error"]["Code"] == "PreconditionFailed"
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == b"{}"


@contextmanager
def injected(event: str, handler: Callable[..., Any]) -> Iterator[None]:
    """``handler`` runs first on ``event`` of the process's S3 client (which the ledger uses),
    and only inside the ``with``: the client is shared by every test that follows."""
    from tuneloop.storage import s3_client

    events = s3_client().meta.events
    events.register_first(event, handler)
    try:
        yield
    finally:
        events.unregister(event, handler)


def test_s3_conditional_put_refuses_a_writer_that_got_there_first(
    s3_ledger: Ledger, s3_server: str
) -> None:
    # Another run records round 1 just before this ledger's put: only the If-None-Match
    # condition stands between them.
    import boto3

    from tuneloop.storage import split_s3

    bucket, key = split_s3(s3_ledger.round_uri(1))
    other = record(1, {"exact_match": 0.9}, run_id="run-other")
    # The other run's own client: the process's one would run this handler again.
    elsewhere = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")

    def other_run_writes_first(**_: object) -> None:
        elsewhere.put_object(Bucket=bucket, Key=key, Body=other.model_dump_json().encode())

    with (
        injected("before-call.s3.PutObject", other_run_writes_first),
        pytest.raises(RoundAlreadyRecordedError, match="by run 'run-other'"),
    ):
        s3_ledger.write(record(1, {"exact_match": 0.5}, run_id="run-mine"))
    assert s3_ledger.read(1) == other


def test_s3_write_in_flight_elsewhere_is_refused(s3_ledger: Ledger) -> None:
    # S3 answers 409 ConditionalRequestConflict while another conditional write to the key is
    # in progress; moto does not produce it, so the answer is injected at the client.
    from botocore.awsrequest import AWSResponse

    def conflict(**_: object) -> tuple[AWSResponse, dict]:
        error = {"Code": "ConditionalRequestConflict", "Message": "A conflicting operation"}
        response = AWSResponse(url="", status_code=409, headers={}, raw=None)
        return response, {"Error": error, "ResponseMetadata": {"HTTPStatusCode": 409}}

    with (
        injected("before-call.s3.PutObject", conflict),
        pytest.raises(RoundAlreadyRecordedError, match="by another run writing it at this"),
    ):
        s3_ledger.write(record(1, {"exact_match": 0.5}))


def test_local_write_without_hard_links_still_writes_once(
    local_ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Some filesystems (certain network and FUSE mounts) refuse hard links.
    import errno
    import os

    def no_links(*_: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    first = record(1, {"exact_match": 0.5}, run_id="run-a")
    assert local_ledger.write(first) == first
    with pytest.raises(RoundAlreadyRecordedError):
        local_ledger.write(record(1, {"exact_match": 0.6}, run_id="run-b"))
    assert local_ledger.read(1) == first
    assert [p.name for p in (Path(local_ledger.root) / "rounds").iterdir()] == ["0001.json"]


def test_s3_errors_name_the_uri(s3_server: str) -> None:
    ledger = Ledger("s3://no-such-bucket-for-the-ledger/demo")
    with pytest.raises(StorageError) as info:
        ledger.write(record(1, {"exact_match": 0.5}))
    # The first write to a bucket is the probe of its conditional writes, under the ledger root.
    assert str(info.value).startswith(
        "s3://no-such-bucket-for-the-ledger/demo: cannot write under it (NoSuchBucket"
    )
    with pytest.raises(StorageError) as info:
        ledger.records()
    assert str(info.value).startswith(
        "s3://no-such-bucket-for-the-ledger/demo/rounds: cannot list it (NoSuchBucket"
    )


# --- numbering ----------------------------------------------------------------------------------


def test_next_round_comes_from_the_records(ledger: Ledger) -> None:
    assert ledger.next_round() == 1 and ledger.latest() is None and ledger.records() == []
    ledger.write(record(1, {"exact_match": 0.6}))
    assert ledger.next_round() == 2
    ledger.write(record(3, {"exact_match": 0.7}))
    assert ledger.next_round() == 4
    latest = ledger.latest()
    assert latest is not None and latest.round == 3
    assert [r.round for r in ledger.records()] == [1, 3]


def test_reading_a_round_never_recorded(ledger: Ledger) -> None:
    with pytest.raises(RoundNotFoundError) as info:
        ledger.read(4)
    assert str(info.value).startswith(f"{ledger.round_uri(4)}: no round record here")


def test_for_campaign_uses_the_campaign_root(tmp_path: Path) -> None:
    campaign = Campaign.model_validate(
        {
            "name": "demo",
            "backend": {"type": "local", "output_root": str(tmp_path / "out")},
            "model_type": "local.tiny-chat-v1",
            "technique": "full",
            "stages": [SFT.model_dump()],
            "evaluation": {"recipe": "local/eval-gen-qa.yaml"},
            "gate": GATE.model_dump(),
        }
    )
    ledger = Ledger.for_campaign(campaign)
    assert ledger.root == str(tmp_path / "out" / "demo")


# --- corrupt and foreign files ------------------------------------------------------------------


def put_raw(ledger: Ledger, name: str, text: str) -> None:
    path = Path(ledger.root) / "rounds" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_corrupt_record_names_the_file(local_ledger: Ledger) -> None:
    put_raw(local_ledger, "0001.json", '{"round": 1,')
    with pytest.raises(LedgerError) as info:
        local_ledger.records()
    assert str(info.value).startswith(f"{local_ledger.round_uri(1)}: not valid JSON")


def test_record_of_the_wrong_shape_names_file_and_field(local_ledger: Ledger) -> None:
    data = json.loads(record(1, {"exact_match": 0.5}).model_dump_json())
    del data["decision"]
    data["metrics"] = {"exact_match": "high"}
    put_raw(local_ledger, "0001.json", json.dumps(data))
    with pytest.raises(LedgerError) as info:
        local_ledger.read(1)
    paths = {p.path for p in info.value.problems}
    assert paths == {"metrics.exact_match", "decision"}
    assert all(p.source == local_ledger.round_uri(1) for p in info.value.problems)


def test_record_under_another_rounds_name_is_refused(local_ledger: Ledger) -> None:
    put_raw(local_ledger, "0002.json", record(1, {"exact_match": 0.5}).model_dump_json())
    with pytest.raises(LedgerError, match="holds round 1, but its name says round 2"):
        local_ledger.records()


def test_foreign_files_are_skipped_with_a_warning(
    local_ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    local_ledger.write(record(1, {"exact_match": 0.5}))
    put_raw(local_ledger, "notes.txt", "hello")
    put_raw(local_ledger, ".0002.json.x1.tmp", "half a rec")
    with caplog.at_level(logging.WARNING, logger="tuneloop.rounds.ledger"):
        assert [r.round for r in local_ledger.records()] == [1]
    assert [r.getMessage() for r in caplog.records] == [
        "ignoring notes.txt: not a round record (rounds/NNNN.json)"
    ]


def test_decision_must_be_about_the_records_round() -> None:
    decision = record(2, {"exact_match": 0.5}).decision
    with pytest.raises(ValueError, match="the decision is about round 2, the record is round 1"):
        record(1, {"exact_match": 0.5}, decision=decision)


# --- champion and history -----------------------------------------------------------------------


def run_campaign(ledger: Ledger, scores: list[float], gate: Gate = GATE) -> list[Decision]:
    """Record one round per score the way the round DAG does: history from the ledger, the
    gate's decision, the record written; the next round starts where the decision says."""
    decisions = []
    base_round = None
    rollback_of = None
    for score in scores:
        n = ledger.next_round()
        summary = record(n, {"exact_match": score}, root=ledger.root).summary()
        history = ledger.history()
        champion = ledger.champion()
        decision = decide(
            gate,
            summary,
            history,
            stages=[SFT],
            technique=Technique.FULL,
            baseline={"exact_match": 0.5},
        )
        previous = history[-1].metrics if history else None
        entry = record(n, {"exact_match": score}, decision=decision, root=ledger.root)
        entry = entry.model_copy(
            update={
                "base_round": base_round,
                "rollback_of": rollback_of,
                "deltas": deltas(
                    entry.metrics,
                    previous=previous,
                    champion=champion.metrics if champion else None,
                    baseline=entry.baseline,
                ),
            }
        )
        ledger.write(entry)
        decisions.append(decision)
        if decision.action not in (Action.CONTINUE, Action.ROLLBACK):
            break
        base_round = decision.next_base_round
        rollback_of = n if decision.action is Action.ROLLBACK else None
    return decisions


def test_champion_and_history_across_continue_rollback_and_finish(ledger: Ledger) -> None:
    decisions = run_campaign(ledger, [0.6, 0.7, 0.6, 0.72, 0.91])
    assert [d.action for d in decisions] == [
        Action.CONTINUE,
        Action.CONTINUE,
        Action.ROLLBACK,
        Action.CONTINUE,
        Action.FINISH,
    ]
    records = ledger.records()
    assert records[2].decision.next_base == records[1].stages[-1].output_uri
    assert records[3].rollback_of == 3 and records[3].base_round == 2
    assert records[3].deltas["champion"]["exact_match"] == 0.02
    assert records[3].deltas["previous"]["exact_match"] == 0.12
    champion = ledger.champion()
    assert champion is not None and champion.round == 5
    history = ledger.history()
    assert [h.round for h in history] == [1, 2, 3, 4, 5]
    assert [h.promoted for h in history] == [True, True, False, True, True]
    assert history[2].action is Action.ROLLBACK
    assert history[0].checkpoint == records[0].stages[-1].output_uri
    assert history[0].lineage == [Method.SFT] and history[0].methods == [Method.SFT]


def test_champion_while_rounds_regress(local_ledger: Ledger) -> None:
    run_campaign(local_ledger, [0.7, 0.6])
    champion = local_ledger.champion()
    assert champion is not None and champion.round == 1
    assert local_ledger.read(2).decision.action is Action.ROLLBACK


def test_no_champion_until_a_round_beats_the_base_model(local_ledger: Ledger) -> None:
    decisions = run_campaign(local_ledger, [0.49])
    assert decisions[0].champion_round is None
    assert local_ledger.champion() is None


def test_a_round_rolled_back_by_hand_loses_the_title(local_ledger: Ledger) -> None:
    run_campaign(local_ledger, [0.6, 0.7])
    # A person decided round 2 was bad and restarted round 3 from round 1.
    local_ledger.write(
        record(3, {"exact_match": 0.65}, rollback_of=2).model_copy(update={"base_round": 1})
    )
    champion = local_ledger.champion()
    assert champion is not None and champion.round == 3
    assert [h.promoted for h in local_ledger.history()] == [True, False, True]


def test_summary_of_a_round_without_stages_points_at_its_base() -> None:
    bare = record(1, {"exact_match": 0.5}).model_copy(update={"stages": [], "base": "tiny-chat"})
    summary = bare.summary()
    assert summary.checkpoint == "tiny-chat" and summary.stages == [] and summary.lineage == []
    assert summary.gpu_hours == pytest.approx(150 / 3600)


# --- baselines ----------------------------------------------------------------------------------


def baseline(digest: str, run_id: str, value: float) -> BaselineRecord:
    return BaselineRecord(
        campaign="demo",
        digest=digest,
        model="tiny-chat",
        run_id=run_id,
        evaluation={"job_name": "demo-baseline-eval"},
        metrics={"exact_match": value},
        positive_reward_fraction=0.02,
    )


def test_baseline_is_written_once_and_reused(ledger: Ledger) -> None:
    digest = baseline_digest({"evaluation": {"task": "gen_qa"}}, model="tiny-chat")
    assert ledger.read_baseline(digest) is None
    first = baseline(digest, "run-a", 0.5)
    assert ledger.write_baseline(first) == first
    assert ledger.write_baseline(baseline(digest, "run-b", 0.6)) == first
    assert ledger.read_baseline(digest) == first
    assert ledger.baseline_uri(digest) == f"{ledger.root}/baselines/{digest}.json"


def test_baseline_digest_ignores_run_names_and_paths_only() -> None:
    recipe = {
        "run": {
            "name": "demo-r0001-eval",
            "model_type": "local.tiny-chat-v1",
            "output_s3_path": "out/r1/",
            "model_name_or_path": "out/r1/sft",
        },
        "evaluation": {"task": "gen_qa", "metric": "all"},
    }
    digest = baseline_digest(recipe, model="tiny-chat", data_sha256="aa")
    renamed = {**recipe, "run": {**recipe["run"], "name": "x", "output_s3_path": "elsewhere/"}}
    assert baseline_digest(renamed, model="tiny-chat", data_sha256="aa") == digest
    assert baseline_digest(recipe, model="tiny-chat", data_sha256="bb") != digest
    assert baseline_digest(recipe, model="other", data_sha256="aa") != digest
    other_task = {**recipe, "evaluation": {"task": "mmlu"}}
    assert baseline_digest(other_task, model="tiny-chat", data_sha256="aa") != digest


def test_baseline_digest_must_be_hex(local_ledger: Ledger) -> None:
    with pytest.raises(LedgerError, match="is not a baseline digest"):
        local_ledger.read_baseline("../rounds/0001")


# --- helpers ------------------------------------------------------------------------------------


def test_deltas_per_reference() -> None:
    metrics = {"exact_match": 0.81, "f1": 0.9}
    result = deltas(metrics, previous={"exact_match": 0.87}, champion=None, baseline={"f1": 0.5})
    assert result == {"previous": {"exact_match": -0.06}, "baseline": {"f1": 0.4}}


@pytest.mark.parametrize(
    ("seconds", "instance", "expected"),
    [
        (3600, "ml.p5.48xlarge", 8.0),
        (1800, "ml.g5.12xlarge", 2.0),
        (7200, "ml.p9.unknown", 2.0),
        (7200, None, 0.0),
        (7200, "ml.m5.xlarge", 0.0),
        (None, None, 0.0),
    ],
)
def test_gpu_hours(seconds: float | None, instance: str | None, expected: float) -> None:
    assert gpu_hours(seconds, instance) == expected


# --- claims: a round is claimed write-once before anything is spent on it ---------------------


def claim(n: int, run_id: str) -> RoundClaim:
    return RoundClaim(campaign="demo", round=n, run_id=run_id, dag_id="tuneloop_demo")


def always(active: bool):
    return lambda run_id: active


def test_the_first_run_claims_the_round_and_a_retry_gets_its_claim_back(ledger: Ledger) -> None:
    first = ledger.claim(claim(1, "manual__a"), is_active=always(True))
    assert (first.round, first.attempt, first.run_id) == (1, 1, "manual__a")
    again = ledger.claim(claim(1, "manual__a"), is_active=always(True))
    assert again == first
    assert ledger.claims() == [first]


def test_a_second_run_is_refused_naming_the_first_while_it_is_active(ledger: Ledger) -> None:
    ledger.claim(claim(1, "manual__a"), is_active=always(True))
    asked: list[str] = []

    def active(run_id: str) -> bool:
        asked.append(run_id)
        return True

    with pytest.raises(RoundClaimedError) as refused:
        ledger.claim(claim(1, "backfill__b"), is_active=active)
    text = str(refused.value)
    assert "round 1: is being run by run 'manual__a'" in text
    assert "run 'backfill__b' stops here, before any job" in text
    assert "claims/0001-1.json" in text
    assert asked == ["manual__a"]
    assert [c.run_id for c in ledger.claims(1)] == ["manual__a"]


def test_a_claim_whose_run_ended_is_taken_over_with_the_next_attempt(ledger: Ledger) -> None:
    ledger.claim(claim(1, "manual__failed"), is_active=always(True))
    taken = ledger.claim(claim(1, "manual__b"), is_active=always(False))
    assert (taken.attempt, taken.run_id) == (2, "manual__b")
    assert [(c.attempt, c.run_id) for c in ledger.claims(1)] == [
        (1, "manual__failed"),
        (2, "manual__b"),
    ]
    # Claims of other rounds are their own.
    assert ledger.claim(claim(2, "manual__c"), is_active=always(True)).attempt == 1
    assert [c.round for c in ledger.claims()] == [1, 1, 2]


def test_a_recorded_round_cannot_be_claimed(ledger: Ledger) -> None:
    ledger.write(record(1, {"exact_match": 0.5}, run_id="manual__a"))
    with pytest.raises(RoundAlreadyRecordedError, match="already recorded by run 'manual__a'"):
        ledger.claim(claim(1, "manual__b"), is_active=always(False))


def test_concurrent_claims_exactly_one_wins(ledger: Ledger) -> None:
    runs = 6
    barrier = threading.Barrier(runs)
    outcomes = [""] * runs

    def take(index: int) -> None:
        barrier.wait()
        try:
            ledger.claim(claim(3, f"run-{index}"), is_active=always(True))
            outcomes[index] = "won"
        except RoundClaimedError:
            outcomes[index] = "refused"

    threads = [threading.Thread(target=take, args=(i,)) for i in range(runs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["refused"] * (runs - 1) + ["won"]
    (held,) = ledger.claims(3)
    assert held.run_id == f"run-{outcomes.index('won')}"
