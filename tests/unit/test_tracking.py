"""MLflow mirror of the ledger, against real MLflow: a SQLite store in a folder, and a server."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from mlflow_server import MlflowServer, free_port
from tuneloop.artifacts.training_metrics import flatten, read_tensorboard_scalars
from tuneloop.tracking.mirror import CHAMPION_ALIAS, Tracker, TrackingError, resolve_store
from tuneloop.tracking.report import write_report

CAMPAIGN = "support-bot"
MODEL = f"tuneloop-{CAMPAIGN}"


def write_events(folder: Path, tag: str, points: list[tuple[int, float]]) -> None:
    """A TensorBoard events file as the local backend's SummaryWriter writes it (simple_value)."""
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    writer = EventFileWriter(str(folder))
    for step, value in points:
        summary = summary_pb2.Summary(
            value=[summary_pb2.Summary.Value(tag=tag, simple_value=value)]
        )
        writer.add_event(
            event_pb2.Event(wall_time=1_700_000_000 + step, step=step, summary=summary)
        )
    writer.close()


@contextmanager
def captured_output() -> Iterator[list[str]]:
    """What the process writes to its stdout and stderr file descriptors meanwhile."""
    text: list[str] = []
    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryFile() as sink:
        saved = [os.dup(1), os.dup(2)]
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield text
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            text.append(sink.read().decode(errors="replace"))


def recipe(lr: float) -> dict[str, Any]:
    return {
        "run": {"name": "job", "model_type": "amazon.nova-2-lite-v1:0:256k", "replicas": 4},
        "training_config": {
            "max_steps": 100,
            "global_batch_size": 32,
            "optim_config": {"lr": lr, "weight_decay": 0.0},
            "peft": {"peft_scheme": "lora", "lora_tuning": {"alpha": 64}},
        },
    }


def make_record(
    number: int,
    *,
    action: str,
    promoted: bool,
    champion: int | None,
    exact_match: float,
    checkpoint_root: str,
    lr: float = 1e-5,
    base_round: int | None = None,
    rollback_of: int | None = None,
    sft_output: str | None = None,
) -> dict[str, Any]:
    day = f"2026-03-0{number}"
    stages = []
    for name, method in (("sft", "sft"), ("rft", "rft")):
        output = (
            sft_output if (name == "sft" and sft_output) else f"{checkpoint_root}/r{number}/{name}"
        )
        stages.append(
            {
                "name": name,
                "method": method,
                "technique": "lora",
                "job_name": f"tl-{CAMPAIGN}-r{number}-{name}-abc123",
                "recipe": recipe(lr if method == "sft" else lr / 10),
                "output_uri": output,
                "checkpoint": {
                    "uri": f"{checkpoint_root}/r{number}/{name}/checkpoint",
                    "model_type": "amazon.nova-2-lite-v1:0:256k",
                    "technique": "lora",
                    "platform": "hyperpod",
                    "lineage": ["sft"] if name == "sft" else ["sft", "rft"],
                    "output_uri": output,
                },
                "started_at": f"{day}T01:00:00Z",
                "ended_at": f"{day}T02:00:00Z",
                "billable_seconds": 3600 * number,
                "training_metrics": {
                    "reduced_train_loss": [[1, 2.0], [2, 1.5], [3, 1.2]],
                    "lr": [[1, lr], [2, lr], [3, lr]],
                },
                **(SFT_CURVES if method == "sft" else RFT_CURVES),
            }
        )
    metrics = {"exact_match": exact_match, "f1_score": exact_match + 0.05}
    return {
        "campaign": CAMPAIGN,
        "round": number,
        "run_id": f"round_{number:04d}",
        "started_at": f"{day}T00:00:00Z",
        "ended_at": f"{day}T03:00:00Z",
        "base": "nova-lite-2/prod",
        "base_round": base_round,
        "rollback_of": rollback_of,
        "plan": {
            "evaluation": {"recipe": {"run": {"name": "eval"}, "evaluation": {"task": "gen_qa"}}}
        },
        "datasets": [
            {
                "stage": "sft",
                "channel": "train",
                "uri": "s3://bucket/data/train.jsonl",
                "sha256": f"{number:064x}",
                "records": 1000,
                "ok": True,
                "errors": [],
                "report": {"records": 1000, "invalid_records": 0},
            }
        ],
        "stages": stages,
        "evaluation": {
            "job_name": f"tl-{CAMPAIGN}-r{number}-eval",
            "result_uri": f"{checkpoint_root}/r{number}/eval/results.json",
            "metrics": metrics,
        },
        "baseline": {"exact_match": 0.30, "f1_score": 0.35},
        "metrics": metrics,
        "deltas": {
            "previous": {"exact_match": 0.1},
            "baseline": {"exact_match": exact_match - 0.3},
        },
        "decision": {
            "action": action,
            "reason": f"round {number}: {action} because exact_match is {exact_match}",
            "promoted": promoted,
            "champion_round": champion,
            "next_round": number + 1,
            "next_base": None,
            "rollback": None,
            "next_stages": [],
            "recommendation": "",
            "signals": {"plateau": 0, "gpu_hours_left": 100.0, "why": "text is no metric"},
        },
        "timings": {"train_sft": 3600.0, "evaluate": 120.0},
        "probes": [PROBE],
        "recorded_at": f"{day}T03:00:01Z",
        "gpu_hours": 16.0 * number,
        "billable_seconds": 7200.0 * number,
        "an_unknown_key": "ignored",
    }


SFT_CURVES: dict[str, Any] = {
    # A NaN loss (null in JSON) stays out of MLflow, which refuses it.
    "series": {"train_loss": [[1, 2.0], [2, None], [3, 1.25]], "val_loss": [[3, 0.75]]},
    "findings": [
        {
            "detector": "loss_divergence",
            "policy": "fail_round",
            "stage": "sft",
            "step": 2,
            "series": "train_loss",
            "message": "train_loss is NaN at step 2",
            "fix": "lower the learning rate",
        }
    ],
    "stopped_early": "train_loss is NaN at step 2",
}
RFT_CURVES: dict[str, Any] = {
    "series": {"reward_mean": [[1, 0.25], [2, 0.5]], "reward_std": [[1, 0.125], [2, 0.25]]},
    "findings": [
        {
            "detector": "overfitting",
            "policy": "warn",
            "stage": "rft",
            "step": None,
            "series": "reward_mean",
            "message": "the evaluation fell while the training reward rose",
            "fix": "",
        }
    ],
}
PROBE: dict[str, Any] = {
    "function": "tuneloop.local.demo_task:reward",
    "ok": True,
    "problems": [],
    "warnings": [],
    "pairs": 16,
    "separation": 0.9375,
    "good_mean": 0.875,
    "bad_mean": 0.0625,
    "latency_p50_s": 0.5,
    "latency_max_s": None,
    "positive_fraction": 0.25,
}


def snapshot(tracker: Tracker) -> dict[str, Any]:
    """Everything the campaign put into MLflow, comparable across calls."""
    client = tracker.client
    runs = client.search_runs([tracker.experiment_id], max_results=1000)
    state: dict[str, Any] = {}
    for run in runs:
        run_id = run.info.run_id
        histories = {
            key: sorted(
                (m.step, m.timestamp, m.value) for m in client.get_metric_history(run_id, key)
            )
            for key in run.data.metrics
        }
        artifacts = sorted(
            f.path
            for top in client.list_artifacts(run_id)
            for f in ([top] if not top.is_dir else client.list_artifacts(run_id, top.path))
        )
        state[run_id] = {
            "info": (run.info.run_name, run.info.status, run.info.start_time, run.info.end_time),
            "params": dict(run.data.params),
            "tags": dict(run.data.tags),
            "histories": histories,
            "artifacts": artifacts,
        }
    versions = client.search_model_versions(f"name = '{tracker.model_name}'")
    state["versions"] = sorted(
        (v.version, v.source, v.run_id, tuple(sorted(v.tags.items()))) for v in versions
    )
    state["alias"] = tracker.champion()
    return state


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Three rounds (continue, rollback, finish) logged into a local folder store."""
    root = tmp_path_factory.mktemp("tracking")
    store = root / "mlflow"
    sft_output = root / "jobs" / "r1-sft"
    write_events(sft_output / "tensorboard", "val_loss", [(1, 0.9), (2, 0.7)])
    records = [
        make_record(
            1,
            action="continue",
            promoted=True,
            champion=1,
            exact_match=0.5,
            checkpoint_root=str(root / "jobs"),
            sft_output=str(sft_output),
        ),
        make_record(
            2,
            action="rollback",
            promoted=False,
            champion=1,
            exact_match=0.4,
            checkpoint_root=str(root / "jobs"),
            base_round=1,
        ),
        make_record(
            3,
            action="finish",
            promoted=True,
            champion=3,
            exact_match=0.7,
            checkpoint_root="s3://bucket/tuneloop",
            lr=5e-6,
            base_round=1,
            rollback_of=2,
        ),
    ]
    tracker = Tracker(str(store), CAMPAIGN)
    results, champions = [], []
    with captured_output() as output:  # a new database: MLflow's migrations run here
        for index, record in enumerate(records):
            report = write_report(
                records[: index + 1],
                root / f"report-{index + 1}",
                campaign=CAMPAIGN,
                primary_metric="exact_match",
                baseline=None,
            )
            results.append(tracker.log_round(record, report_files=report))
            champions.append(tracker.champion())
    return {
        "root": root,
        "store": store,
        "tracker": tracker,
        "records": records,
        "results": results,
        "champions": champions,
        "output": output[0],
    }


def test_local_folder_store_holds_database_and_artifacts(campaign: dict[str, Any]) -> None:
    store = campaign["store"]
    assert (store / "mlflow.db").is_file()
    assert any((store / "artifacts").rglob("round.json"))
    result = campaign["results"][0]
    assert result["open_with"] == f"mlflow ui --backend-store-uri sqlite:///{store / 'mlflow.db'}"
    assert result["round_url"].startswith("http://127.0.0.1:5000/#/experiments/")
    assert result["round_url"].endswith(f"/runs/{result['round_run_id']}")


def test_one_campaign_run_with_a_child_run_per_round_and_nested_stage_runs(
    campaign: dict[str, Any],
) -> None:
    tracker: Tracker = campaign["tracker"]
    runs = tracker.client.search_runs([tracker.experiment_id], max_results=1000)
    kinds = [run.data.tags["tuneloop.kind"] for run in runs]
    assert kinds.count("campaign") == 1
    assert kinds.count("round") == 3
    assert kinds.count("stage") == 6
    assert kinds.count("evaluation") == 3
    parent = next(run for run in runs if run.data.tags["tuneloop.kind"] == "campaign")
    assert {r["campaign_run_id"] for r in campaign["results"]} == {parent.info.run_id}
    rounds = {
        run.data.tags["tuneloop.round"]: run
        for run in runs
        if run.data.tags["tuneloop.kind"] == "round"
    }
    assert sorted(rounds) == ["1", "2", "3"]
    for number, run in rounds.items():
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.run_name == f"round-{number}"
        assert run.info.status == "FINISHED"
        children = sorted(
            child.data.tags["tuneloop.stage"]
            for child in runs
            if child.data.tags.get("mlflow.parentRunId") == run.info.run_id
        )
        assert children == ["evaluation", "rft", "sft"]
    # The campaign finished with round 3.
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["tuneloop.decision.action"] == "finish"
    assert parent.data.tags["tuneloop.champion_round"] == "3"


def _run(tracker: Tracker, **tags: str) -> Any:
    runs = tracker.client.search_runs([tracker.experiment_id], max_results=1000)
    matches = [
        r for r in runs if all(r.data.tags.get(f"tuneloop.{k}") == v for k, v in tags.items())
    ]
    assert len(matches) == 1, tags
    return matches[0]


def test_params_metrics_tags_and_artifacts(campaign: dict[str, Any]) -> None:
    tracker: Tracker = campaign["tracker"]
    client = tracker.client
    round3 = _run(tracker, kind="round", round="3")
    params = round3.data.params
    assert params["sft.optim_config.lr"] == "5e-06"
    assert float(params["rft.optim_config.lr"]) == pytest.approx(5e-7)
    assert params["sft.peft.lora_tuning.alpha"] == "64"
    assert params["data.sft.train.sha256"] == f"{3:064x}"
    assert params["checkpoint.rft"] == "s3://bucket/tuneloop/r3/rft/checkpoint"
    assert params["job.sft"] == f"tl-{CAMPAIGN}-r3-sft-abc123"
    assert params["job.evaluation"] == f"tl-{CAMPAIGN}-r3-eval"
    assert params["rollback_of"] == "2"
    metrics = round3.data.metrics
    assert metrics["exact_match"] == pytest.approx(0.7)
    assert metrics["baseline.exact_match"] == pytest.approx(0.3)
    assert metrics["delta.baseline.exact_match"] == pytest.approx(0.4)
    assert metrics["seconds.train_sft"] == 3600.0
    assert metrics["billable_seconds"] == 21600.0
    assert metrics["gpu_hours"] == 48.0
    assert metrics["signal.gpu_hours_left"] == 100.0
    assert "signal.why" not in metrics
    tags = round3.data.tags
    assert tags["tuneloop.decision.action"] == "finish"
    assert tags["tuneloop.decision.reason"] == "round 3: finish because exact_match is 0.7"
    assert tags["tuneloop.promoted"] == "true"
    assert "finish" in tags["mlflow.note.content"]
    round_artifacts = {f.path for f in client.list_artifacts(round3.info.run_id)}
    assert {"round.json", "data", "checkpoint", "report"} <= round_artifacts
    assert {f.path for f in client.list_artifacts(round3.info.run_id, "report")} == {
        "report/report.md",
        "report/report.png",
        "report/training.png",
    }
    data_report = json.loads(
        Path(
            client.download_artifacts(
                round3.info.run_id, "data/sft-train.json", str(campaign["root"])
            )
        ).read_text()
    )
    assert data_report["sha256"] == f"{3:064x}"

    sft1 = _run(tracker, kind="stage", round="1", stage="sft")
    assert sft1.data.params["training_config.optim_config.lr"] == "1e-05"
    assert sft1.data.params["run.replicas"] == "4"
    assert sft1.data.params["checkpoint.lineage"] == '["sft"]'
    loss = client.get_metric_history(sft1.info.run_id, "reduced_train_loss")
    assert [(m.step, m.value) for m in loss] == [(1, 2.0), (2, 1.5), (3, 1.2)]
    # Read from the stage output folder's TensorBoard events, which the record did not carry.
    val = client.get_metric_history(sft1.info.run_id, "val_loss")
    assert sorted((m.step, round(m.value, 3)) for m in val) == [(1, 0.9), (2, 0.7)]
    recipe_file = client.download_artifacts(sft1.info.run_id, "recipe.yaml", str(campaign["root"]))
    assert "lr: 1.0e-05" in Path(recipe_file).read_text()
    assert sft1.info.start_time == 1772326800000  # 2026-03-01T01:00:00Z, from the record

    # The normalized series, per step, finite points only, stamped with the stage's start.
    series = client.get_metric_history(sft1.info.run_id, "series/train_loss")
    assert [(m.step, m.value, m.timestamp) for m in series] == [
        (1, 2.0, 1772326800000),
        (3, 1.25, 1772326800000),
    ]
    assert sft1.data.metrics["series/val_loss"] == 0.75
    assert sft1.data.tags["tuneloop.findings"] == "loss_divergence fail_round@2 train_loss"
    assert sft1.data.tags["tuneloop.stopped_early"] == "train_loss is NaN at step 2"
    rft3 = _run(tracker, kind="stage", round="3", stage="rft")
    reward = client.get_metric_history(rft3.info.run_id, "series/reward_mean")
    assert [(m.step, m.value) for m in reward] == [(1, 0.25), (2, 0.5)]
    assert rft3.data.tags["tuneloop.findings"] == "overfitting warn reward_mean"
    assert "tuneloop.stopped_early" not in rft3.data.tags
    # The reward probe: its function and verdict as params, its numbers as metrics.
    assert params["probe.1.function"] == "tuneloop.local.demo_task:reward"
    assert params["probe.1.ok"] == "true"
    assert metrics["probe.1.separation"] == 0.9375
    assert metrics["probe.1.good_mean"] == 0.875
    assert metrics["probe.1.positive_fraction"] == 0.25
    assert metrics["probe.1.problems"] == 0.0
    assert "probe.1.latency_max_s" not in metrics

    evaluation = _run(tracker, kind="evaluation", round="2")
    assert evaluation.data.metrics["exact_match"] == pytest.approx(0.4)
    assert evaluation.data.params["evaluation.task"] == "gen_qa"

    parent = _run(tracker, kind="campaign")
    curve = client.get_metric_history(parent.info.run_id, "exact_match")
    assert sorted((m.step, m.value) for m in curve) == [(0, 0.3), (1, 0.5), (2, 0.4), (3, 0.7)]
    assert parent.data.tags["mlflow.note.content"].startswith(f"# Round report: {CAMPAIGN}")


def test_a_model_version_per_promoted_round_and_the_champion_alias(
    campaign: dict[str, Any],
) -> None:
    tracker: Tracker = campaign["tracker"]
    client = tracker.client
    versions = sorted(
        client.search_model_versions(f"name = '{MODEL}'"), key=lambda v: int(v.version)
    )
    local_version, remote_version = (str(v.version) for v in versions)
    assert [v.tags["tuneloop.round"] for v in versions] == ["1", "3"]
    local, remote = versions
    round1 = campaign["results"][0]["round_run_id"]
    # A local checkpoint: the version points at the small pointer artifact of the round run.
    assert local.source == f"runs:/{round1}/checkpoint"
    assert local.run_id == round1
    assert local.tags["tuneloop.checkpoint_uri"].endswith("/r1/rft/checkpoint")
    pointer = client.download_artifacts(round1, "checkpoint/checkpoint.json", str(campaign["root"]))
    assert json.loads(Path(pointer).read_text())["uri"] == local.tags["tuneloop.checkpoint_uri"]
    # A remote checkpoint is the source itself.
    assert remote.source == "s3://bucket/tuneloop/r3/rft/checkpoint"
    # continue (promoted) -> 1; rollback -> stays on 1; finish (promoted) -> 3.
    assert campaign["champions"] == [(1, local_version), (1, local_version), (3, remote_version)]
    assert [r["model_version"] for r in campaign["results"]] == [local_version, "", remote_version]
    assert [r["champion_version"] for r in campaign["results"]] == [
        local_version,
        local_version,
        remote_version,
    ]
    assert str(client.get_model_version_by_alias(MODEL, CHAMPION_ALIAS).version) == remote_version


def test_logging_rounds_again_changes_nothing(campaign: dict[str, Any]) -> None:
    tracker: Tracker = campaign["tracker"]
    before = snapshot(tracker)
    again = Tracker(str(campaign["store"]), CAMPAIGN)  # a new process would build a new one
    # Rebuilt on a task retry: only the time it was written differs.
    rebuilt = [{**record, "recorded_at": "2026-04-01T00:00:00Z"} for record in campaign["records"]]
    results = [again.log_round(record) for record in rebuilt]
    # An older round logged again does not pull the alias back from the newest champion.
    assert snapshot(tracker) == before
    assert [r["round_run_id"] for r in results] == [r["round_run_id"] for r in campaign["results"]]


def test_a_partly_logged_round_is_completed_without_duplicates(
    campaign: dict[str, Any], tmp_path: Path
) -> None:
    """A crash after some of a round was logged: the next attempt fills in, duplicating nothing."""
    tracker = Tracker(str(campaign["store"]), "partial")
    record = make_record(
        1,
        action="continue",
        promoted=True,
        champion=1,
        exact_match=0.5,
        checkpoint_root="s3://bucket/p",
    )
    record["campaign"] = "partial"
    first = tracker.log_round(record)
    client = tracker.client
    client.delete_tag(first["round_run_id"], "tuneloop.record_sha256")  # as if interrupted
    sft = _run(tracker, kind="stage", round="1", stage="sft", campaign="partial")
    history = client.get_metric_history(sft.info.run_id, "reduced_train_loss")
    second = tracker.log_round(record)
    assert second["round_run_id"] == first["round_run_id"]
    assert client.get_metric_history(sft.info.run_id, "reduced_train_loss") == history
    runs = client.search_runs([tracker.experiment_id], "tags.`tuneloop.campaign` = 'partial'")
    assert len(runs) == 1 + 1 + 3
    assert len(client.search_model_versions("name = 'tuneloop-partial'")) == 1


def test_a_rewritten_ledger_is_reported_not_merged(campaign: dict[str, Any]) -> None:
    tracker = Tracker(str(campaign["store"]), "rewritten")
    record = make_record(
        1,
        action="continue",
        promoted=False,
        champion=None,
        exact_match=0.5,
        checkpoint_root="s3://bucket/x",
    )
    record["campaign"] = "rewritten"
    tracker.log_round(record)
    changed = make_record(
        1,
        action="continue",
        promoted=False,
        champion=None,
        exact_match=0.5,
        checkpoint_root="s3://bucket/x",
        lr=2e-5,
    )
    changed["campaign"] = "rewritten"
    with pytest.raises(
        TrackingError, match=r"params\.(rft|sft)\.optim_config\.lr: already logged.*rewritten"
    ):
        tracker.log_round(changed)


def test_a_record_of_another_campaign_is_refused(campaign: dict[str, Any]) -> None:
    tracker = Tracker(str(campaign["store"]), "other")
    with pytest.raises(TrackingError, match="campaign 'support-bot' given to the tracker"):
        tracker.log_round(campaign["records"][0])


def test_mlflow_chatter_stays_out_of_the_output(campaign: dict[str, Any]) -> None:
    """Creating the database, logging and registering printed nothing (no INFO, no run links)."""
    assert "mlflow" not in campaign["output"].lower(), campaign["output"]


def test_tensorboard_scalars_keep_the_last_value_of_a_repeated_step(tmp_path: Path) -> None:
    write_events(tmp_path / "a", "reduced_train_loss", [(1, 3.0), (2, 2.0)])
    write_events(tmp_path / "b", "reduced_train_loss", [(2, 1.5), (3, 1.0)])
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "events.out.tfevents.0.broken").write_bytes(b"\x00not a record" * 10)
    scalars = read_tensorboard_scalars(tmp_path)
    assert [(s, round(v, 3)) for s, v, _ in scalars["reduced_train_loss"]] == [
        (1, 3.0),
        (2, 1.5),
        (3, 1.0),
    ]


def test_flatten_recipe_fields() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": "x"}, "e": None, "f": [1, 2], "g": {}}}) == {
        "a.b": "1",
        "a.c.d": "x",
        "a.f": "[1, 2]",
        "a.g": "{}",
    }


def test_store_kinds(tmp_path: Path) -> None:
    folder = resolve_store(str(tmp_path / "t"))
    assert folder.uri == f"sqlite:///{tmp_path / 't' / 'mlflow.db'}"
    assert folder.artifact_location == str(tmp_path / "t" / "artifacts")
    database = resolve_store(f"sqlite:///{tmp_path}/x/m.db")
    assert database.kind == "local" and database.artifact_location == str(
        tmp_path / "x" / "artifacts"
    )
    assert resolve_store("http://mlflow:5000/").uri == "http://mlflow:5000"
    assert resolve_store("postgresql://u:p@db/mlflow").kind == "database"
    with pytest.raises(TrackingError, match=r"backend\.mlflow_uri.*absolute"):
        resolve_store("sqlite:///relative.db")
    with pytest.raises(TrackingError, match="is empty"):
        resolve_store(" ")
    with pytest.raises(TrackingError, match="not a SageMaker managed MLflow ARN"):
        resolve_store("arn:aws:sagemaker:us-east-1:123456789012:endpoint/x")


def test_an_unreachable_server_raises_a_tracking_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    uri = f"http://user:secret@127.0.0.1:{free_port()}"
    tracker = Tracker(uri, CAMPAIGN)
    record = make_record(
        1,
        action="continue",
        promoted=False,
        champion=None,
        exact_match=0.5,
        checkpoint_root="s3://bucket/u",
    )
    import mlflow  # noqa: F401  (its first import, slow on a busy machine, is not what is timed)

    started = time.monotonic()
    with pytest.raises(TrackingError, match=r"could not .*127\.0\.0\.1") as raised:
        tracker.log_round(record)
    # One try, no retries: MLflow's default seven retries back off for about four minutes.
    assert time.monotonic() - started < 120
    assert str(raised.value).startswith("MLflow: could not log round 1 of campaign 'support-bot'")
    assert "secret" not in str(raised.value)
    assert "safe in the ledger" in str(raised.value)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` in lean mode on a free port; its process group stopped after."""
    # Answer to localhost only, so that another host name shows how a refusal reads.
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"), allowed_hosts="localhost:*")
    try:
        server.start()
        yield f"http://localhost:{server.port}"
    finally:
        server.stop()


@pytest.mark.slow
def test_rounds_logged_to_a_tracking_server(
    mlflow_server: str, tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    tracker = Tracker(mlflow_server, CAMPAIGN)
    jobs = str(tmp_path / "jobs")  # local checkpoints: a server refuses them as a direct source
    records = [
        make_record(
            1, action="continue", promoted=True, champion=1, exact_match=0.5, checkpoint_root=jobs
        ),
        make_record(
            2,
            action="rollback",
            promoted=False,
            champion=1,
            exact_match=0.4,
            checkpoint_root=jobs,
            base_round=1,
        ),
    ]
    results = [tracker.log_round(record) for record in records]
    assert tracker.log_round(records[1]) == results[1]
    out, err = capfd.readouterr()
    assert "View run" not in out and "mlflow" not in (out + err).lower(), out + err

    first = results[0]
    assert first["round_url"] == (
        f"{mlflow_server}/#/experiments/{tracker.experiment_id}/runs/{first['round_run_id']}"
    )
    assert first["open_with"] == ""
    assert tracker.champion() == (1, first["model_version"])
    version = tracker.client.get_model_version(MODEL, first["model_version"])
    assert first["model_version"] == "1" and results[1]["model_version"] == ""
    assert version.source == f"runs:/{first['round_run_id']}/checkpoint"
    runs = tracker.client.search_runs([tracker.experiment_id], max_results=100)
    assert len(runs) == 1 + 2 * 4
    with urllib.request.urlopen(
        f"{mlflow_server}/api/2.0/mlflow/runs/get?run_id={results[1]['round_run_id']}", timeout=60
    ) as response:
        run = json.load(response)["run"]
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["tuneloop.decision.action"] == "rollback"
    assert tags["tuneloop.champion_round"] == "1"
    # The stage run's series, per step, through the server's REST API.
    stage = next(
        r
        for r in runs
        if r.data.tags.get("tuneloop.stage") == "rft"
        and r.data.tags.get("mlflow.parentRunId") == results[1]["round_run_id"]
    )
    query = f"run_id={stage.info.run_id}&metric_key=series/reward_mean"
    with urllib.request.urlopen(
        f"{mlflow_server}/api/2.0/mlflow/metrics/get-history?{query}", timeout=60
    ) as response:
        history = json.load(response)["metrics"]
    assert sorted((int(m.get("step", 0)), m["value"]) for m in history) == [(1, 0.25), (2, 0.5)]


@pytest.mark.slow
def test_a_server_refusing_the_host_name_says_how_to_allow_it(mlflow_server: str) -> None:
    other_name = mlflow_server.replace("localhost", "127.0.0.1")
    tracker = Tracker(other_name, CAMPAIGN)
    record = make_record(
        1, action="continue", promoted=False, champion=None, exact_match=0.5,
        checkpoint_root="s3://bucket/h",
    )  # fmt: skip
    host = other_name.removeprefix("http://")
    with pytest.raises(TrackingError, match=f"--allowed-hosts '{host},localhost:\\*"):
        tracker.log_round(record)


def test_a_minimal_record_is_logged(campaign: dict[str, Any]) -> None:
    """Optional fields missing: a round run with nothing but its decision-less self."""
    tracker = Tracker(str(campaign["store"]), "minimal")
    result = tracker.log_round({"campaign": "minimal", "round": 1})
    run = tracker.client.get_run(result["round_run_id"])
    assert run.data.tags["tuneloop.round"] == "1"
    assert result["model_version"] == "" and result["champion_version"] == ""
    assert tracker.champion() is None


def test_a_failed_round_says_why_and_has_no_evaluation_run(campaign: dict[str, Any]) -> None:
    tracker = Tracker(str(campaign["store"]), "failing")
    record = make_record(
        1, action="continue", promoted=False, champion=None, exact_match=0.5,
        checkpoint_root="s3://bucket/f",
    )  # fmt: skip
    record.update(
        campaign="failing",
        evaluation={},
        metrics={},
        failed="monitoring stopped the sft job at step 2: train_loss is NaN",
    )
    result = tracker.log_round(record)
    run = tracker.client.get_run(result["round_run_id"])
    assert run.data.tags["tuneloop.failed"] == record["failed"]
    children = tracker.client.search_runs(
        [tracker.experiment_id], f"tags.`mlflow.parentRunId` = '{result['round_run_id']}'"
    )
    assert sorted(c.data.tags["tuneloop.kind"] for c in children) == ["stage", "stage"]


def test_rounds_mlflow_missed_are_caught_up_from_the_ledger(campaign: dict[str, Any]) -> None:
    """Rounds 1 and 2 decided while the tracking server was down: round 3's mirror logs them
    first, oldest first, then itself; catching up again logs nothing."""
    tracker = Tracker(str(campaign["store"]), "outage")
    records = [{**record, "campaign": "outage"} for record in campaign["records"]]
    assert tracker.catch_up(records[:2]) == [1, 2]
    tracker.log_round(records[2])
    runs = tracker.client.search_runs([tracker.experiment_id], max_results=1000)
    rounds = sorted(
        int(run.data.tags["tuneloop.round"])
        for run in runs
        if run.data.tags["tuneloop.kind"] == "round"
    )
    assert rounds == [1, 2, 3]
    assert tracker.catch_up(records) == []
    assert tracker.champion() == campaign["champions"][-1]


def test_a_champion_mlflow_missed_gets_the_alias_once_it_is_caught_up(
    campaign: dict[str, Any],
) -> None:
    """Round 2 (promoted) was missed; round 3 (a rollback to round 2) was logged while round 2
    had no model version, so the alias stayed on round 1. Catching round 2 up registers its
    version and moves the alias where the ledger says; catching up again changes nothing."""
    tracker = Tracker(str(campaign["store"]), "late-champion")
    jobs = str(campaign["root"] / "late-jobs")
    common = {"checkpoint_root": jobs}
    records = [
        make_record(1, action="continue", promoted=True, champion=1, exact_match=0.5, **common),
        make_record(2, action="continue", promoted=True, champion=2, exact_match=0.6, **common),
        make_record(
            3, action="rollback", promoted=False, champion=2, exact_match=0.4, base_round=2,
            **common,
        ),
    ]  # fmt: skip
    for record in records:
        record["campaign"] = "late-champion"
    tracker.log_round(records[0])
    tracker.log_round(records[2])
    assert tracker.champion() is not None and tracker.champion()[0] == 1  # stale, not removed

    assert tracker.catch_up(records) == [2]
    version = tracker.client.get_model_version_by_alias("tuneloop-late-champion", CHAMPION_ALIAS)
    assert version.tags["tuneloop.round"] == "2"
    assert tracker.champion() == (2, str(version.version))
    before = snapshot(tracker)
    assert tracker.catch_up(records) == []
    assert snapshot(tracker) == before
