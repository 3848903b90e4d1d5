"""What `make demo` prints while a round runs, and its checks for an Airflow left running."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tuneloop.demo import run as demo
from tuneloop.demo.report import ProgressLine, ui_hint


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_plain_output_prints_changes_of_task_at_once_and_progress_every_few_seconds() -> None:
    out, clock = io.StringIO(), Clock()
    line = ProgressLine(out, tty=False, interval=5, clock=clock)
    line.show("round 1  plan_round", key="plan_round")
    line.show("round 1  plan_round", key="plan_round")  # unchanged: nothing
    clock.now = 1
    line.show("round 1  train_sft  step 10/300  ETA 30s", key="train_sft|sft")  # new task
    clock.now = 2
    line.show("round 1  train_sft  step 20/300  ETA 28s", key="train_sft|sft")  # too soon
    clock.now = 6.5
    line.show("round 1  train_sft  step 70/300  ETA 20s", key="train_sft|sft")
    clock.now = 7
    line.show("round 1  train_rft", key="train_rft")
    assert out.getvalue().splitlines() == [
        "round 1  plan_round",
        "round 1  train_sft  step 10/300  ETA 30s",
        "round 1  train_sft  step 70/300  ETA 20s",
        "round 1  train_rft",
    ]
    line.done()
    line.show("round 2  plan_round", key="plan_round")
    assert out.getvalue().splitlines()[-1] == "round 2  plan_round"


def test_a_terminal_gets_one_line_rewritten_in_place() -> None:
    out = io.StringIO()
    line = ProgressLine(out, tty=True, clock=Clock())
    line.show("round 1  train_sft  step 1/300", key="a")
    line.show("round 1  train_sft  step 2/300", key="a")
    line.done()
    assert "\n" not in out.getvalue()
    assert out.getvalue().count("\r") == 3 and out.getvalue().endswith("\r\x1b[K")


def test_a_progress_line_names_the_task_stage_step_and_eta() -> None:
    tis = [
        {"task_id": "train_sft", "state": "deferred"},
        {"task_id": "validate_data", "state": "success"},
    ]
    job = {"name": "demo-r2-sft-1", "stage": "sft", "state": "running", "step": 120}
    text, key = demo._describe(2, {}, tis, [{**job, "total": 300, "eta": "14s"}])
    assert text == "round 2  train_sft  step 120/300  ETA 14s"
    both = [*tis, {"task_id": "evaluate_baseline", "state": "running"}]
    base = {"name": "demo-r0-baseline-1", "stage": "baseline", "state": "pending"}
    text, key2 = demo._describe(2, {}, both, [base, {**job, "total": 300}])
    assert text == "round 2  evaluate_baseline, train_sft  baseline  (pending)  sft  step 120/300"
    assert key2 != key
    queued = demo._describe(2, {"state": "running"}, [{"task_id": "decide", "state": "queued"}], [])
    assert queued[0] == "round 2  (queued: decide)"


def test_ui_hint_names_make_airflow_and_the_password_file(tmp_path: Path) -> None:
    home = tmp_path / ".tuneloop" / "airflow"
    text = ui_hint(home, running_url=None)
    assert f"make airflow PROJECT_DIR={tmp_path}, then open http://localhost:8080" in text
    assert str(home / "simple_auth_manager_passwords.json.generated") in text
    repo_home = demo.REPO / ".tuneloop" / "airflow"
    assert ui_hint(repo_home, running_url=None).startswith(
        "Airflow UI on these runs: make airflow,"
    )


def test_an_airflow_left_running_is_found_and_stopped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / ".tuneloop" / "airflow"
    home.mkdir(parents=True)
    assert demo.main(["--check-stopped", "--project-dir", str(tmp_path)]) == 0
    sleeper = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True
    )
    try:
        import psutil

        created = psutil.Process(sleeper.pid).create_time()
        state = {"api_url": "http://127.0.0.1:1", "processes": {"scheduler": {}}}
        state["processes"]["scheduler"] = {"pid": sleeper.pid, "created": created}
        (home / demo.STATE_FILE).write_text(json.dumps(state))
        assert demo.main(["--check-stopped", "--project-dir", str(tmp_path)]) == 1
        assert "still running" in capsys.readouterr().err
        assert demo.main(["--project-dir", str(tmp_path)]) == 1  # refuses to start a second one
        assert "--stop" in capsys.readouterr().err
        assert demo.main(["--stop", "--project-dir", str(tmp_path)]) == 0
        assert sleeper.wait(timeout=30) is not None
        assert not (home / demo.STATE_FILE).exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    # A record whose processes are gone (or whose pid was reused) is stale: removed, ignored.
    state["processes"]["scheduler"]["created"] = 1.0
    (home / demo.STATE_FILE).write_text(json.dumps(state))
    assert demo.main(["--check-stopped", "--project-dir", str(tmp_path)]) == 0
    assert not (home / demo.STATE_FILE).exists()


def test_the_lifecycle_lines_name_each_archived_folder_and_the_saving(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """After the demo's rounds: the rounds kept and why, each stage folder archived (shown from
    the campaign's folder) with its tarball, and the bytes and monthly cost saved."""
    from lifecycle_ledgers import build_tree
    from tuneloop.demo.report import print_lifecycle
    from tuneloop.lifecycle.service import apply_campaign

    tree = build_tree(tmp_path, rounds=3, keep_last=2)
    plan, report = apply_campaign(tree.cf, run_id="demo")
    print_lifecycle(plan, [report], tree.root)
    out = capsys.readouterr().out
    assert "   rounds kept: round 2 (one of the last 2 rounds), round 3 (champion" in out
    for stage in ("sft", "rft"):
        folder = tree.folder(1, stage).relative_to(tree.root)
        assert f"   archived {folder} -> archive/{folder}.tar.gz (" in out, out
    assert "   lifecycle: archived 2 folder(s), " in out
    assert re.search(r"estimated storage cost saved \$[\d.]+/month", out), out


def test_the_end_of_the_demo_shows_the_probe_verdicts_and_the_curves(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The probes the rounds ran (a failed one with its problem and fix), the last round's
    curves in one line with what the monitors found, and where the training plot is."""
    from tuneloop.demo.report import print_curves, print_probes
    from tuneloop.tracking.report import write_report

    probe = {
        "function": "tuneloop.local.demo_task:reward",
        "ok": True,
        "pairs": 8,
        "separation": 1.0,
        "good_mean": 1.0,
        "bad_mean": 0.0,
        "latency_p50_s": 0.002,
        "latency_max_s": 0.01,
        "positive_fraction": 0.5,
    }
    failed = {
        **probe,
        "ok": False,
        "separation": 0.5,
        "problems": [{"check": "separation", "message": "good above bad on 50% of pairs",
                      "fix": "score the reference answer higher"}],
    }  # fmt: skip
    sft = {"name": "sft", "method": "sft", "series": {"train_loss": [[1, 2.1], [300, 0.4]]}}
    rft = {
        "name": "rft",
        "method": "rft",
        "series": {"reward_mean": [[1, 0.31], [40, 0.58]]},
        "findings": [
            {"detector": "plateau", "policy": "warn", "step": 40, "series": "reward_mean",
             "message": "reward_mean rose by 0.001", "fix": ""}
        ],
    }  # fmt: skip
    records = [
        {"round": 1, "stages": [sft, rft], "probes": [failed], "metrics": {}},
        {"round": 2, "stages": [sft, rft], "probes": [probe], "metrics": {}},
        {"round": 3, "stages": [], "metrics": {}},  # no curves: the round before it shows
    ]
    report = write_report(records, tmp_path, campaign="demo", primary_metric="exact_match",
                          baseline=None)  # fmt: skip
    print_probes(records)
    print_curves(records, tmp_path)
    assert capsys.readouterr().out.splitlines() == [
        "Reward probe: round 1 (tuneloop.local.demo_task:reward): FAILED: separation 50% of 8 "
        "pairs, good mean 1.0000 vs bad mean 0.0000, latency p50 0.002 s / max 0.01 s, positive "
        "share 50%",
        "                separation: good above bad on 50% of pairs. Fix: score the reference "
        "answer higher.",
        "              round 2 (tuneloop.local.demo_task:reward): passed: separation 100% of 8 "
        "pairs, good mean 1.0000 vs bad mean 0.0000, latency p50 0.002 s / max 0.01 s, positive "
        "share 50%",
        "Curves:       round 2: sft: loss 2.1 -> 0.4 over 300 steps; rft: reward mean 0.31 -> "
        "0.58 over 40 steps",
        "                rft: warn plateau at step 40 (reward_mean): reward_mean rose by 0.001.",
        f"Curves plot:  {report.training}",
    ]
    print_probes([{"round": 1, "stages": []}])
    print_curves([{"round": 1, "stages": [{"name": "sft"}]}], tmp_path / "none")
    assert capsys.readouterr().out == ""
