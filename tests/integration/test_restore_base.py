"""restore_base with Airflow's dag.test(): a round whose base the lifecycle archived brings it
back before it trains.

Two rounds, keep_last 1, the lifecycle applied: round 1's stage folders live on only as
tarballs. A manual rollback to round 1 (conf start_from_round) is planned from the ledger's
checkpoint of round 1, restore_base extracts the tarball, and the round trains and records.
(Round 2, from round 1 before it was archived, shows restore_base with nothing to do:
`test_lifecycle_dag.two_rounds`.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_lifecycle_dag import two_rounds
from test_rounds import CAMPAIGNS, _own_campaign_files, data  # noqa: F401  (fixtures)

pytestmark = pytest.mark.slow


def test_a_rollback_to_an_archived_round_restores_it_first(
    airflow_db: Path,
    tmp_path: Path,
    data: Path,  # noqa: F811  (the fixture imported above)
) -> None:
    from tuneloop.config.file import load_campaign
    from tuneloop.lifecycle.service import apply_campaign

    campaign = two_rounds("restoring", tmp_path, data)
    cf = load_campaign(CAMPAIGNS / "restoring.yaml")
    _, report = apply_campaign(cf, run_id="test")
    one = campaign.ledger().read(1)
    base = Path(one.stages[-1].output_uri)
    assert not base.exists(), report
    archived = [r for r in report.results if r.uri.rstrip("/") == str(base)]
    assert [r.outcome for r in archived] == ["archived"]

    third = campaign.run({"start_from_round": 1})
    assert third.state == "success"
    states = campaign.task_states(third)
    assert states["restore_base"] == "success" and states["train_sft"] == "success"
    planned = campaign.xcom(third, "plan_round", key="restore")
    assert planned["base_round"] == 1
    assert [item["uri"].rstrip("/") for item in planned["items"]] == [str(base)]
    assert planned["items"][0]["owner"] == "local"
    restored = campaign.xcom(third, "restore_base")
    assert restored["base_round"] == 1 and restored["waited_for"] == []
    assert base.is_dir() and (base / "manifest.json").is_file()

    three = campaign.ledger().read(3)
    assert three.base_round == 1 and three.base.rstrip("/") == str(base)
    assert three.stages[0].checkpoint is not None
