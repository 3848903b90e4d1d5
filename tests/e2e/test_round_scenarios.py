"""Round scenarios under the real scheduler, driven as a user drives them: the REST API, the
``airflow`` CLI, and the ledger and job folders under the campaign's output root.

- a rollback: round 2, trained on poisoned data through the data-override Param, regresses, and
  the round the rollback branch triggers starts from the champion with half the learning rate;
- a finished campaign refuses another round in plan_round, before any job, unless the conf says
  ``after_finish``;
- two runs planning the same round at once: the second is refused, naming the first;
- a backfill over three days: one round per day, in order, each with its own day's data, also
  with Airflow's default of ten active backfill runs;
- broken campaign files beside a good one in the real dag-processor: one import error each,
  naming file, line and field; the good DAG stays, its running round finishes, and it keeps
  scheduling.

Each test has its own campaign file, so its own DAG.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pytest
import yaml

from e2e.campaigns import SFT_ONLY, write_atomically
from e2e.scenarios import (
    Gates,
    backfill,
    campaign_document,
    claims,
    daily_schedule_after_now,
    learning_from_data,
    parse_time,
    plan_of,
    poisoned_copy,
    release,
    stages_of_jobs,
    task_instance,
    task_log,
    wait_run_ended,
    wait_runs,
    wait_task,
    wait_until,
    write_document,
)
from tuneloop.jobs.state import JobState

if TYPE_CHECKING:
    from e2e.conftest import Stack

ROUND_STAGES = ["eval", "rft", "sft"]
"""The jobs of a round of the demo's shape (SFT_THEN_RFT), by stage label."""
SFT_ROUND_STAGES = ["eval", "sft"]
"""The jobs of a round of an SFT_ONLY campaign: the scenarios but the rollback do not need a
second stage."""


@pytest.fixture
def gates(stack: Stack) -> Iterator[Gates]:
    held = Gates(stack)
    yield held
    held.release_all()


def sft_lr(plan: dict[str, Any]) -> float:
    """The learning rate of the planned SFT stage's rendered recipe."""
    sft = next(s for s in plan["plan"]["stages"] if s["method"] == "sft")
    return float(sft["recipe"]["training_config"]["optim_config"]["lr"])


def rft_lr(plan: dict[str, Any]) -> float:
    rft = next(s for s in plan["plan"]["stages"] if s["method"] == "rft")
    return float(rft["recipe"]["training_config"]["trainer"]["optim_config"]["lr"])


def test_rollback_restarts_from_the_champion_with_half_the_learning_rate(stack: Stack) -> None:
    """Round 1, on the campaign's data, improves; round 2, triggered with its SFT data replaced
    by a poisoned copy (the data_overrides Param), regresses; decide rolls back, and the run
    the rollback branch triggers is round 3, starting from round 1's checkpoint with half the
    learning rate, recorded as the rollback of round 2.

    The fake trainer's skill moves 60% of the way to its data's quality per stage: round 1
    reaches 0.84, round 2 (poisoned SFT data) falls to 0.73, round 3 (from round 1) reaches
    0.97, the target the first two rounds cannot reach, so the campaign ends there."""
    document = learning_from_data(
        campaign_document(
            stack,
            "e2e-rollback",
            gate={"targets": {"exact_match": 0.97}, "regression_tolerance": 0.02, "max_rounds": 4},
        )
    )
    # A daily schedule that began a week ago: the scheduler starts round 1 itself (one run for
    # the latest interval), and a scheduled round leaves the next round to the next interval,
    # so round 2 is the round this test triggers with its own conf.
    document["schedule"] = "@daily"
    document["start_date"] = (datetime.now(UTC).date() - timedelta(days=7)).isoformat()
    campaign = write_document(stack, document)
    dag_id = campaign.dag_id
    stack.wait_for_dag(dag_id)

    first = wait_runs(stack, dag_id, 1)[0]
    assert first["run_type"] == "scheduled" and not first["conf"], first
    stack.wait_for_run(dag_id, first["dag_run_id"])
    one = campaign.record(1)
    assert one.decision.action == "continue", one.decision.reason
    assert one.metrics["exact_match"] > 0.5
    states = stack.task_states(dag_id, first["dag_run_id"])
    assert states["next_round"] == "skipped"  # a scheduled round does not chain the next one
    plan_one = plan_of(stack, dag_id, first["dag_run_id"])
    assert plan_one["start"]["round"] == 1 and plan_one["start"]["rollback"] is False

    poisoned = poisoned_copy(
        stack.data_dir / "sft-train.jsonl", stack.project_dir / "poisoned" / "sft-train.jsonl"
    )
    second = stack.client.trigger(dag_id, {"data_overrides": {"sft": {"train": str(poisoned)}}})
    second_id = second["dag_run_id"]
    stack.wait_for_run(dag_id, second_id)
    plan_two = plan_of(stack, dag_id, second_id)
    assert plan_two["start"]["round"] == 2
    sft_two = next(s for s in plan_two["plan"]["stages"] if s["method"] == "sft")
    assert sft_two["datasets"]["train"] == str(poisoned)

    two = campaign.record(2)
    assert two.metrics["exact_match"] < one.metrics["exact_match"] - 0.02, (
        one.metrics,
        two.metrics,
    )
    assert two.decision.action == "rollback", two.decision.reason
    assert two.decision.next_base_round == 1 and two.decision.rollback is True
    states = stack.task_states(dag_id, second_id)
    assert states["decide"] == "success" and states["rollback"] == "success"
    assert states["next_round"] == "skipped" and states["finish"] == "skipped"

    # The run the rollback branch triggered.
    third_id = stack.client.xcom(dag_id, second_id, "decide", key="next_run_id")
    third = stack.client.dag_run(dag_id, third_id)
    assert third["conf"]["rollback"] is True
    stack.wait_for_run(dag_id, third_id)
    plan_three = plan_of(stack, dag_id, third_id)
    start = plan_three["start"]
    assert start["round"] == 3
    assert start["base_round"] == 1 and start["rollback"] is True and start["rollback_of"] == 2
    assert start["base_output_uri"] == one.stages[-1].output_uri
    assert sft_lr(plan_three) == pytest.approx(sft_lr(plan_one) / 2)
    assert rft_lr(plan_three) == pytest.approx(rft_lr(plan_one) / 2)

    three = campaign.record(3)
    assert three.rollback_of == 2 and three.base_round == 1
    assert three.base == one.stages[-1].output_uri
    assert three.metrics["exact_match"] > one.metrics["exact_match"]
    for number in (1, 2, 3):
        assert stages_of_jobs(campaign, number) == ROUND_STAGES
    # Round 3, from the champion, met the target the first two rounds could not reach.
    assert three.decision.action == "finish", three.decision.reason
    assert len(stack.client.dag_runs(dag_id)) == 3


def test_finished_campaign_refuses_another_round_before_any_job(stack: Stack) -> None:
    """Round 1 meets the target and the campaign finishes. A further run with an empty conf
    fails in plan_round, saying the campaign is over, why, and how to go on; no job, claim or
    record exists for that round. With the after_finish Param the round runs."""
    campaign = stack.write_campaign("e2e-finished", stages=SFT_ONLY)
    stack.fake_jobs.metrics(campaign.name, base=0.1, rounds={1: 0.95, 2: 0.97})
    dag_id = campaign.dag_id
    stack.wait_for_dag(dag_id)

    first = stack.client.trigger(dag_id, {})["dag_run_id"]
    stack.wait_for_run(dag_id, first)
    assert campaign.record(1).decision.action == "finish"
    states = stack.task_states(dag_id, first)
    assert states["finish"] == "success" and states["next_round"] == "skipped"

    refused = stack.client.trigger(dag_id, {})["dag_run_id"]
    stack.wait_for_run(dag_id, refused, state="failed")
    plan = task_instance(stack, dag_id, refused, "plan_round")
    assert plan["state"] == "failed" and plan["try_number"] == 1  # no retry of a refusal
    states = stack.task_states(dag_id, refused)
    for task in ("restore_base", "train_sft", "evaluate", "evaluate_baseline", "decide"):
        assert states[task] in ("upstream_failed", "None", "skipped"), (task, states)

    log = task_log(stack, dag_id, refused, "plan_round", 1)
    assert f"campaign '{campaign.name}' is over" in log, log
    assert "round 1 met every target (exact_match 0.95)" in log, log  # why
    assert "round 2 is not planned and no job is started" in log, log
    assert "raise gate.max_rounds (now 5)" in log and "gate.targets" in log, log  # how to go on
    assert '{"after_finish": true}' in log, log
    assert str(campaign.path) in log, log

    assert campaign.jobs(round="2") == []
    assert claims(campaign, 2) == []
    assert not campaign.record_path(2).exists()

    after = stack.client.trigger(dag_id, {"after_finish": True})["dag_run_id"]
    stack.wait_for_run(dag_id, after)
    plan_after = plan_of(stack, dag_id, after)
    assert plan_after["start"]["round"] == 2
    assert "after the campaign finished" in plan_after["start"]["reason"]
    two = campaign.record(2)
    assert two.run_id == after and two.base_round == 1
    assert stages_of_jobs(campaign, 2) == SFT_ROUND_STAGES
    assert [c["run_id"] for c in claims(campaign, 2)] == [after]


def test_second_run_planning_the_same_round_is_refused(stack: Stack, gates: Gates) -> None:
    """A scheduled round and a backfilled interval before it overlap (a backfill's runs do not
    count against the DAG's max_active_runs). The backfill run waits in wait_for_earlier_rounds
    while the scheduled run holds its claim; an operator who marks that wait done anyway gets a
    plan_round that fails at once, naming the run that claimed the round, and only the
    scheduled run's jobs exist."""
    document = campaign_document(stack, "e2e-claimed", stages=SFT_ONLY)
    document["schedule"] = "@daily"
    document["start_date"] = (datetime.now(UTC).date() - timedelta(days=7)).isoformat()
    campaign = write_document(stack, document)
    stack.fake_jobs.metrics(campaign.name, base=0.1, rounds={1: 0.5})
    gate = gates.hold(campaign, round=1, stage="sft")
    dag_id = campaign.dag_id
    stack.wait_for_dag(dag_id)

    scheduled = wait_runs(stack, dag_id, 1)[0]
    assert scheduled["run_type"] == "scheduled"
    scheduled_id = scheduled["dag_run_id"]
    wait_task(stack, dag_id, scheduled_id, "train_sft", {"deferred"})
    held = claims(campaign, 1)
    assert [(c["file"], c["run_id"]) for c in held] == [("0001-1.json", scheduled_id)]

    yesterday = (parse_time(scheduled["logical_date"]) - timedelta(days=1)).date().isoformat()
    backfill(stack, dag_id, "--from-date", yesterday, "--to-date", yesterday)
    backfilled = wait_until(
        lambda: [r for r in stack.client.dag_runs(dag_id) if r["run_type"] == "backfill"],
        timeout=60,
        what="the backfill's run",
    )
    assert len(backfilled) == 1
    refused_id = backfilled[0]["dag_run_id"]
    # It waits for the round in progress instead of planning it a second time.
    wait_task(stack, dag_id, refused_id, "wait_for_earlier_rounds", {"up_for_reschedule"})
    waited = task_log(stack, dag_id, refused_id, "wait_for_earlier_rounds", 1)
    assert f"Waiting for run {scheduled_id} to record the round it claimed" in waited, waited
    assert stack.task_states(dag_id, refused_id)["plan_round"] in ("None", "none")

    # An impatient operator marks the wait done: plan_round refuses the round all the same.
    stack.client.request(
        "PATCH",
        f"/api/v2/dags/{dag_id}/dagRuns/{refused_id}/taskInstances/wait_for_earlier_rounds",
        json={"new_state": "success"},
    )
    planned = wait_task(stack, dag_id, refused_id, "plan_round", {"success", "failed"})
    log = task_log(stack, dag_id, refused_id, "plan_round", 1)
    assert planned["state"] == "failed", (claims(campaign, 1), log)
    assert wait_run_ended(stack, dag_id, refused_id)["state"] == "failed"
    assert f"round 1: is being run by run '{scheduled_id}'" in log, log
    assert f"run '{refused_id}' stops here, before any job" in log, log
    # The scheduled run still holds the round, and it is still running.
    assert stack.client.dag_run(dag_id, scheduled_id)["state"] == "running"
    assert [c["run_id"] for c in claims(campaign, 1)] == [scheduled_id]

    release(gate)
    stack.wait_for_run(dag_id, scheduled_id)
    assert campaign.record(1).run_id == scheduled_id
    assert stages_of_jobs(campaign, 1) == SFT_ROUND_STAGES
    assert len(campaign.jobs(round="0")) == 1  # the base model's evaluation
    assert len(campaign.jobs()) == 3  # nothing for the refused run
    assert all(j.state == JobState.SUCCEEDED for j in campaign.jobs())
    assert [c["file"] for c in claims(campaign)] == ["0001-1.json"]


def _write_daily_data(stack: Stack, days: list[str]) -> Path:
    """One SFT training file per day under ``<data>/daily/<ds>/`` (the demo data)."""
    source = (stack.data_dir / "sft-train.jsonl").read_text(encoding="utf-8")
    for day in days:
        folder = stack.data_dir / "daily" / day
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "sft-train.jsonl").write_text(source, encoding="utf-8")
    return stack.data_dir / "daily" / "{{ ds }}" / "sft-train.jsonl"


def _check_backfilled_rounds(
    stack: Stack, campaign: Any, runs: list[dict[str, Any]], first_round: int
) -> None:
    """Each run planned and recorded the next round, in logical-date order, with its own day's
    data, after the run before it had ended; one claim attempt per round."""
    dag_id = campaign.dag_id
    previous_end = None
    for offset, run in enumerate(sorted(runs, key=lambda r: r["logical_date"])):
        number = first_round + offset
        run_id = run["dag_run_id"]
        day = parse_time(run["logical_date"]).date().isoformat()
        plan = plan_of(stack, dag_id, run_id)
        assert plan["start"]["round"] == number, (run_id, plan["start"])
        sft = next(s for s in plan["plan"]["stages"] if s["method"] == "sft")
        assert f"/daily/{day}/sft-train.jsonl" in sft["datasets"]["train"], sft["datasets"]
        record = campaign.record(number)
        assert record.run_id == run_id
        assert [(c["file"], c["run_id"]) for c in claims(campaign, number)] == [
            (f"{number:04d}-1.json", run_id)
        ]
        planned_at = parse_time(task_instance(stack, dag_id, run_id, "plan_round")["start_date"])
        if previous_end is not None:
            assert planned_at > previous_end, (run_id, planned_at, previous_end)
        previous_end = parse_time(stack.client.dag_run(dag_id, run_id)["end_date"])
        assert stages_of_jobs(campaign, number) == SFT_ROUND_STAGES


def test_backfill_runs_one_round_per_interval_in_order(stack: Stack) -> None:
    """``airflow backfill create`` over three days, without --max-active-runs (Airflow then
    starts up to ten runs at once): three runs, rounds 1, 2 and 3 in logical-date order, each
    planned from its own day's data after the previous run ended, one claim each."""
    schedule, start_date = daily_schedule_after_now()
    days = [(start_date - timedelta(days=n)).isoformat() for n in (4, 3, 2)]
    document = campaign_document(stack, "e2e-backfill", stages=SFT_ONLY)
    document["schedule"] = schedule
    document["start_date"] = start_date.isoformat()
    document["stages"][0]["datasets"]["train"] = str(_write_daily_data(stack, days))
    campaign = write_document(stack, document)
    stack.fake_jobs.metrics(campaign.name, base=0.1, rounds={1: 0.3, 2: 0.4, 3: 0.5})
    dag_id = campaign.dag_id
    stack.wait_for_dag(dag_id)
    hour = schedule.split()[1]

    backfill(stack, dag_id, "--from-date", days[0], "--to-date", f"{days[2]}T{int(hour):02d}:00:00")
    first = wait_until(
        lambda: [r for r in stack.client.dag_runs(dag_id) if r["run_type"] == "backfill"],
        timeout=60,
        what="the backfill's runs",
    )
    assert len(first) == 3, first
    assert sorted(parse_time(r["logical_date"]).date().isoformat() for r in first) == days[:3]
    for run in first:
        wait_run_ended(stack, dag_id, run["dag_run_id"], timeout=420)
    for run in first:
        assert stack.client.dag_run(dag_id, run["dag_run_id"])["state"] == "success", (
            stack.run_report(dag_id, run["dag_run_id"])
        )
    _check_backfilled_rounds(stack, campaign, first, first_round=1)
    # The later intervals were running while an earlier one ran: wait_for_earlier_rounds held
    # them, not Airflow's limit on active runs.
    later = sorted(first, key=lambda r: r["logical_date"])[1:]
    waited = [sensor_log(stack, dag_id, r["dag_run_id"]) for r in later]
    assert any(
        "to finish: rounds run one at a time, in order" in log
        or "to record the round it claimed" in log
        for log in waited
    ), waited

    # Backfilled rounds do not chain: the backfill's runs are all the DAG's runs.
    assert len(stack.client.dag_runs(dag_id)) == 3
    assert [c["file"] for c in claims(campaign)] == [f"{n:04d}-1.json" for n in (1, 2, 3)]


def sensor_log(stack: Stack, dag_id: str, run_id: str) -> str:
    """Every try's log of the run's wait_for_earlier_rounds (a rescheduled sensor's pokes may
    count as tries; a try whose log Airflow did not keep is left out)."""
    from tuneloop.demo.embedded_airflow import AirflowApiError

    task = "wait_for_earlier_rounds"
    ti = stack.client.request(
        "GET", f"dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task}"
    )
    logs = []
    for number in range(1, int(ti.get("try_number") or 1) + 1):
        try:
            logs.append(task_log(stack, dag_id, run_id, task, number))
        except AirflowApiError as exc:
            if exc.status != 404:
                raise
    return "\n".join(logs)


# -- broken campaign files ------------------------------------------------------------------------


def _broken_files(stack: Stack, marker: Path) -> dict[str, tuple[str, str]]:
    """Campaign file name -> (its text, what its import error must name: ``file:line: field``).

    Each is a good campaign document (block YAML) with one thing wrong, placed on its last
    line."""

    def text(name: str, extra: str = "", **changes: Any) -> str:
        document = campaign_document(stack, name)
        document.update(changes)
        return yaml.safe_dump(document, sort_keys=False) + extra

    files: dict[str, tuple[str, str]] = {}
    misspelt = text("e2e-broken-field").replace("\ndescription:", "\ndescripton:", 1)
    files["e2e-broken-field.yaml"] = (misspelt, "descripton")
    files["e2e-broken-date.yaml"] = (
        text("e2e-broken-date", "start_date: 2026-13-45\n"),
        "start_date",
    )
    files["e2e-broken-alias.yaml"] = (text("e2e-broken-alias", "tags: &t [a, *t]\n"), "tags")
    files["e2e-broken-python.yaml"] = (
        text("e2e-broken-python", f"tags: !!python/object/apply:os.system ['touch {marker}']\n"),
        "tags",
    )
    files["e2e-broken-int.yaml"] = (text("e2e-broken-int", "int: 3\n"), "int")
    return files


def _line_of(text: str, field: str) -> int:
    """The line (1-based) where ``field:`` is set at the top level of a block YAML document."""
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith(f"{field}:"):
            return number
    raise AssertionError(f"no line sets {field}")


def test_broken_campaign_files_cost_only_their_own_dags(stack: Stack, gates: Gates) -> None:
    """While a round of a good campaign runs, five broken campaign files appear beside it (a
    misspelt field, an impossible date, a recursive alias, a !!python tag, a key named int).
    The real dag-processor files one import error per broken file, naming file, line and field;
    the good DAG stays active, its running round finishes, and a run triggered afterwards is
    scheduled and runs. Removing the files removes their errors."""
    good = stack.write_campaign("e2e-good", stages=SFT_ONLY)
    stack.fake_jobs.metrics(good.name, base=0.1, rounds={1: 0.95})
    gate = gates.hold(good, round=1, stage="sft")
    dag_id = good.dag_id
    stack.wait_for_dag(dag_id)
    stack.wait_for_dag(f"{dag_id}_lifecycle")
    first = stack.client.trigger(dag_id, {})["dag_run_id"]
    wait_task(stack, dag_id, first, "train_sft", {"deferred"})

    marker = stack.project_dir / "python-tag-ran"
    broken = _broken_files(stack, marker)
    paths = {name: stack.campaigns_dir / name for name in broken}
    for name, (text, _) in broken.items():
        write_atomically(paths[name], text)  # no parse sees half a file
    wanted = {str(p) for p in paths.values()}

    def errors_by_file() -> dict[str, list[dict[str, Any]]] | None:
        found: dict[str, list[dict[str, Any]]] = {}
        for error in stack.client.import_errors():
            found.setdefault(str(error.get("filename")), []).append(error)
        return found if wanted <= set(found) else None

    found = stack.wait_for_parse(
        errors_by_file, timeout=180, what="an import error for every broken campaign file"
    )
    # Nothing else is in error: not the DAG file, not the good campaign.
    assert set(found) == wanted, sorted(found)
    assert not marker.exists(), "the !!python tag was executed"
    unclear = []  # each import error must say file:line: field
    for name, (text, field) in broken.items():
        errors = found[str(paths[name])]
        assert len(errors) == 1, errors
        trace = str(errors[0]["stack_trace"])
        line = _line_of(text, field)
        located = rf"{re.escape(str(paths[name]))}:{line}: {re.escape(field)}\b"
        if not re.search(located, trace):
            unclear.append(f"{name}: no '{paths[name]}:{line}: {field}' in:\n{trace}")

    # The good DAG is still there, active, and its round is still running.
    dag = stack.client.dag(dag_id)
    assert dag is not None and dag["is_stale"] is False, dag
    # The pattern also matches the campaign's lifecycle DAG (dags/tuneloop_lifecycle.py).
    listed = stack.client.request("GET", "dags", params={"dag_id_pattern": dag_id})
    assert sorted(d["dag_id"] for d in listed["dags"]) == [dag_id, f"{dag_id}_lifecycle"]
    assert stack.client.dag_run(dag_id, first)["state"] == "running"
    assert task_instance(stack, dag_id, first, "train_sft")["state"] == "deferred"

    release(gate)
    stack.wait_for_run(dag_id, first)
    assert good.record(1).run_id == first
    assert stages_of_jobs(good, 1) == SFT_ROUND_STAGES
    # A new run is triggered and scheduled (a dry run: it plans and validates the next round;
    # the campaign met its target, so the run says it runs after the finish).
    again = stack.client.trigger(dag_id, {"dry_run": True, "after_finish": True})["dag_run_id"]
    stack.wait_for_run(dag_id, again)
    assert plan_of(stack, dag_id, again)["start"]["round"] == 2
    assert stack.client.dag(dag_id)["is_stale"] is False

    for path in paths.values():
        path.unlink()

    def cleared() -> bool:
        remaining = {str(e.get("filename")) for e in stack.client.import_errors()}
        return not remaining & wanted

    stack.wait_for_parse(cleared, timeout=180, what="the import errors of the removed files gone")
    assert stack.client.dag(dag_id)["is_stale"] is False
    assert not unclear, "\n".join(unclear)
