"""A tracking outage: the MLflow server is down for two rounds. The rounds still finish (the
ledger holds them); once the server is back, the next round's ``decide`` mirrors every round
MLflow lacks, once, and the champion alias ends where the ledger says.

Rounds run with dag.test() on the local backend with the instant fake jobs (as in
test_rounds.py), against a real ``mlflow server`` that is stopped and started again on the same
database and port.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_rounds import Campaign, _own_campaign_files, campaign_text, data  # noqa: F401  (fixtures)

from mlflow_server import MlflowServer

pytestmark = pytest.mark.slow

GATE = """  targets: {exact_match: 0.9}
  regression_tolerance: 0.02
  max_rounds: 6
"""
# Rounds 1-3 improve (each promoted, round 3 the champion); round 4 regresses and rolls back
# to round 3, so the alias must end on a round that was mirrored only by the catch-up.
METRICS = {1: 0.5, 2: 0.6, 3: 0.7, 4: 0.4}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[MlflowServer]:
    tracking = MlflowServer(tmp_path / "mlflow-server")
    tracking.start()
    try:
        yield tracking
    finally:
        tracking.stop()


def run_round(campaign: Campaign, number: int, conf: dict[str, Any]) -> dict[str, Any]:
    """Run round ``number`` from ``conf``; the conf of the round it triggered ({} for none)."""
    run = campaign.run(conf)
    assert run.state == "success", campaign.task_states(run)
    assert campaign.task_states(run)["decide"] == "success"
    assert campaign.ledger().read(number).round == number
    previous = f"{number:04d}"
    return campaign.triggered(f"round_{number + 1:04d}__after_{previous}") or {}


def mlflow_rounds(url: str, name: str) -> tuple[Counter[str], list[Any], Any]:
    """How many runs of each (kind, round) MLflow holds, its model versions, and the champion."""
    from tuneloop.tracking.mirror import Tracker

    tracker = Tracker(url, name)
    runs = tracker.client.search_runs([tracker.experiment_id], max_results=1000)
    kinds = Counter(
        f"{run.data.tags['tuneloop.kind']} {run.data.tags.get('tuneloop.round', '')}".strip()
        for run in runs
    )
    versions = tracker.client.search_model_versions(f"name = '{tracker.model_name}'")
    return kinds, versions, tracker.champion()


@pytest.mark.timeout(900)  # four rounds and two server starts, on a machine that may be busy
def test_rounds_decided_during_an_outage_reach_mlflow_once_it_is_back(
    airflow_db: Path,
    tmp_path: Path,
    data: Path,  # noqa: F811  (the fixture imported above)
    server: MlflowServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A refused connection fails at once instead of backing off through MLflow's retries.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    url = f"http://127.0.0.1:{server.port}"
    extra_backend = f"  mlflow_uri: {url}\n"
    text = campaign_text("outage", tmp_path, data, GATE).replace(
        f"  output_root: {tmp_path}\n", f"  output_root: {tmp_path}\n{extra_backend}"
    )
    assert extra_backend in text
    campaign = Campaign("outage", tmp_path, text, dict(METRICS))

    conf = run_round(campaign, 1, {})
    kinds, _, champion = mlflow_rounds(url, "outage")
    assert kinds["round 1"] == 1 and champion is not None and champion[0] == 1

    server.stop()  # the outage: rounds 2 and 3 decide while nothing answers
    caplog.clear()
    conf = run_round(campaign, 2, conf)
    conf = run_round(campaign, 3, conf)
    failed = [r.getMessage() for r in caplog.records if "MLflow tracking failed" in r.msg]
    assert [m.split(":")[0] for m in failed] == [
        "MLflow tracking failed for round 2",
        "MLflow tracking failed for round 3",
    ], caplog.text[-6000:]

    server.start()  # the same database and port
    kinds, _, _ = mlflow_rounds(url, "outage")
    assert not [key for key in kinds if key.endswith((" 2", " 3"))], kinds

    caplog.clear()
    run_round(campaign, 4, conf)
    assert "MLflow lacked rounds [2, 3]; mirrored them from the ledger" in caplog.text
    assert "MLflow tracking failed" not in caplog.text, caplog.text[-6000:]

    ledger = campaign.ledger()
    assert [r.decision.action.value for r in ledger.records()] == [
        "continue",
        "continue",
        "continue",
        "rollback",
    ]
    assert ledger.champion().round == 3
    kinds, versions, champion = mlflow_rounds(url, "outage")
    expected = {"campaign": 1}
    for number in METRICS:
        expected |= {f"round {number}": 1, f"stage {number}": 2, f"evaluation {number}": 1}
    assert dict(kinds) == expected
    # A version per promoted round, each once; the alias on the ledger's champion.
    assert sorted(v.tags["tuneloop.round"] for v in versions) == ["1", "2", "3"]
    round3 = next(v for v in versions if v.tags["tuneloop.round"] == "3")
    assert champion == (3, str(round3.version))

    # Catching up again logs nothing: MLflow holds every round complete.
    from tuneloop.tracking.mirror import Tracker

    records = [r.model_dump(mode="json") for r in ledger.records()]
    assert Tracker(url, "outage").catch_up(records) == []
    again, versions_again, champion_again = mlflow_rounds(url, "outage")
    assert again == kinds and champion_again == champion
    assert sorted(v.version for v in versions_again) == sorted(v.version for v in versions)
