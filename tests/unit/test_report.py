"""The round report: Markdown table, PNG plot and terminal table from ledger records."""

from __future__ import annotations

import random
import struct
from pathlib import Path
from typing import Any

from tuneloop.tracking.plots import TRAINING_PNG_NAME
from tuneloop.tracking.report import (
    MARKDOWN_NAME,
    PNG_NAME,
    build_rows,
    checkpoint_link,
    format_table,
    write_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BASELINE = {"exact_match": 0.30, "f1_score": 0.35}


def record(
    number: int,
    action: str,
    exact_match: float,
    *,
    promoted: bool,
    champion: int | None,
    root: str = "s3://bucket/campaign",
    base_round: int | None = None,
    rollback_of: int | None = None,
    reason: str | None = None,
    with_deltas: bool = False,
) -> dict[str, Any]:
    metrics = {"exact_match": exact_match, "f1_score": round(exact_match + 0.05, 4)}
    return {
        "campaign": "support-bot",
        "round": number,
        "base_round": base_round,
        "rollback_of": rollback_of,
        "stages": [
            {
                "name": name,
                "method": name,
                "checkpoint": {"uri": f"{root}/r{number}/{name}/checkpoint"},
            }
            for name in ("sft", "rft")
        ],
        "baseline": BASELINE,
        "metrics": metrics,
        "deltas": {"previous": {"exact_match": 0.123}} if with_deltas else {},
        "decision": {
            "action": action,
            "reason": reason or f"{action} after round {number}",
            "promoted": promoted,
            "champion_round": champion,
        },
        "unknown": {"ignored": True},
    }


def campaign(root: str = "s3://bucket/campaign") -> list[dict[str, Any]]:
    return [
        record(1, "continue", 0.5, promoted=True, champion=1, root=root),
        record(
            2,
            "rollback",
            0.4,
            promoted=False,
            champion=1,
            root=root,
            base_round=1,
            reason="exact_match fell by 0.1 | more than the 0.02 tolerance",
        ),
        record(3, "finish", 0.7, promoted=True, champion=3, root=root, base_round=1, rollback_of=2),
    ]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_markdown_report_has_the_table_champion_baseline_and_links(tmp_path: Path) -> None:
    paths = write_report(
        campaign(), tmp_path, campaign="support-bot", primary_metric="exact_match", baseline=None
    )
    assert paths.markdown == tmp_path / MARKDOWN_NAME
    text = paths.markdown.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert lines[0] == "# Round report: support-bot"
    assert "- Champion: round 3 (exact_match 0.7000)" in lines
    assert "- Last decision: finish: finish after round 3" in lines
    header = next(line for line in lines if line.startswith("| Round"))
    assert header == (
        "| Round | Base | Stages | **exact_match** | f1_score | Δ exact_match vs previous "
        "| Decision | Reason | Checkpoints |"
    )
    rows = [line for line in lines if line.startswith("| ") and line != header]
    assert rows[0].startswith("| baseline | base model | — | **0.3000** | 0.3500 | — |")
    assert rows[1].startswith("| 1 | base model | sft → rft | **0.5000** | 0.5500 | +0.2000 |")
    # The delta is computed from the row above when the record has none; a "|" in a reason is
    # escaped so the table keeps its columns.
    assert (
        "| **0.4000** | 0.4500 | -0.1000 | rollback | exact_match fell by 0.1 \\| more" in rows[2]
    )
    assert rows[3].startswith("| 3 ★ | round 1 (rollback of 2) | sft → rft | **0.7000** |")
    assert (
        "[rft](https://s3.console.aws.amazon.com/s3/buckets/bucket?prefix=campaign/r3/rft/"
        in (rows[3])
    )
    assert all(row.count(" | ") == header.count(" | ") for row in rows)
    assert f"![support-bot: metrics per round]({PNG_NAME})" in lines


def test_png_is_a_valid_image(tmp_path: Path) -> None:
    paths = write_report(
        campaign(), tmp_path, campaign="support-bot", primary_metric="exact_match", baseline=None
    )
    assert paths.png == tmp_path / PNG_NAME
    assert paths.png.stat().st_size > 1000
    assert png_size(paths.png) == (800, 450)


def test_same_records_give_the_same_bytes_whatever_their_order(tmp_path: Path) -> None:
    records = campaign()
    shuffled = records[:]
    random.Random(7).shuffle(shuffled)
    assert shuffled != records
    one = write_report(
        records, tmp_path / "a", campaign="c", primary_metric="exact_match", baseline=BASELINE
    )
    two = write_report(
        shuffled, tmp_path / "b", campaign="c", primary_metric="exact_match", baseline=BASELINE
    )
    assert one.markdown.read_bytes() == two.markdown.read_bytes()
    assert one.png.read_bytes() == two.png.read_bytes()
    assert format_table(records, primary_metric="exact_match") == format_table(
        shuffled, primary_metric="exact_match"
    )


def test_terminal_table_is_fixed_width(tmp_path: Path) -> None:
    text = format_table(campaign(), primary_metric="exact_match", reason_width=20)
    lines = text.splitlines()
    assert lines[0].split() == [
        "round", "base", "stages", "exact_match", "f1_score", "Δ", "prev", "decision", "reason",
    ]  # fmt: skip
    assert set(lines[1]) == {"-", " "}
    assert lines[-1] == "* champion"
    # Every column starts where the header's does.
    starts = [i for i, c in enumerate(lines[1]) if c == "-" and (i == 0 or lines[1][i - 1] == " ")]
    for line in lines[2:-1]:
        for start in starts[1:]:
            assert line[start - 2 : start] == "  ", line
    baseline, first, second, third = lines[2:6]
    assert baseline.startswith("baseline  base model")
    assert "0.3000" in baseline
    assert third.startswith("3 *  ")
    assert "exact_match fell by…" in second  # cut to 20 characters
    assert "+0.2000" in first and "sft>rft" in first


def test_the_records_own_delta_wins(tmp_path: Path) -> None:
    records = [record(1, "continue", 0.5, promoted=True, champion=1, with_deltas=True)]
    rows = build_rows(records, primary_metric="exact_match", baseline=BASELINE)
    assert rows[1].delta == 0.123


def test_no_rounds_yet_still_renders(tmp_path: Path) -> None:
    paths = write_report([], tmp_path, campaign="new", primary_metric="exact_match", baseline=None)
    text = paths.markdown.read_text(encoding="utf-8")
    assert "- Rounds: 0" in text
    assert "- Champion: none yet" in text
    assert png_size(paths.png) == (800, 450)
    with_baseline = write_report(
        [], tmp_path / "b", campaign="new", primary_metric="exact_match", baseline=BASELINE
    )
    assert "| baseline | base model |" in with_baseline.markdown.read_text(encoding="utf-8")


def test_local_checkpoints_link_as_file_uris(tmp_path: Path) -> None:
    records = campaign(root=str(tmp_path / "jobs"))
    paths = write_report(
        records, tmp_path / "r", campaign="c", primary_metric="exact_match", baseline=None
    )
    link = checkpoint_link(str(tmp_path / "jobs" / "r1" / "sft" / "checkpoint"))
    assert link == (tmp_path / "jobs" / "r1" / "sft" / "checkpoint").as_uri()
    assert f"[sft]({link})" in paths.markdown.read_text(encoding="utf-8")


# --- training curves, findings, reward probes, failed rounds --------------------------------------

PROBE = {
    "function": "arn:aws:lambda:us-east-1:123456789012:function:SageMaker-reward",
    "ok": False,
    "problems": [
        {
            "check": "constant_scores",
            "message": "every sample scored 0.0",
            "fix": "return a higher score for answers that match the reference",
        }
    ],
    "warnings": ["calls take 500 s, more than half of the 900 s limit"],
    "records": 8,
    "calls": 3,
    "pairs": 16,
    "separated": 0,
    "separation": 0.0,
    "good_mean": 0.0,
    "bad_mean": 0.0,
    "latency_p50_s": 1.25,
    "latency_max_s": 2.5,
    "positive_fraction": 0.03,
}


def monitored(**extra: Any) -> list[dict[str, Any]]:
    """Round 1 with curves and a warning; round 2 failed: its SFT loss went NaN and monitoring
    stopped the job; its probe failed too."""
    one = record(1, "continue", 0.5, promoted=True, champion=1)
    one["stages"][0]["series"] = {
        "train_loss": [[1, 2.0], [2, 1.2], [30, 0.4]],
        "val_loss": [[10, 0.9], [30, 0.6]],
    }
    one["stages"][1]["series"] = {
        "reward_mean": [[1, 0.31], [40, 0.58]],
        "reward_std": [[1, 0.2], [40, 0.15]],
        "reward_error_rate": [[1, 0.0], [40, 0.0]],
    }
    one["stages"][1]["findings"] = [
        {
            "detector": "plateau",
            "policy": "warn",
            "stage": "rft",
            "step": 40,
            "series": "reward_mean",
            "message": "reward_mean rose by 0.001 over the last 10 steps",
            "fix": "switch technique",
        }
    ]
    two = record(2, "continue", 0.0, promoted=False, champion=1, base_round=1)
    two["metrics"] = {}
    two["failed"] = "monitoring stopped the sft job at step 12: train_loss is NaN"
    two["decision"]["reason"] = "round 2 failed; the next round starts from round 1 again"
    two["stages"] = [
        {
            "name": "sft",
            "method": "sft",
            "series": {"train_loss": [[1, 2.1], [12, None]]},
            "stopped_early": "train_loss is NaN at step 12",
            "findings": [
                {
                    "detector": "loss_divergence",
                    "policy": "fail_round",
                    "stage": "sft",
                    "step": 12,
                    "series": "train_loss",
                    "message": "train_loss is NaN at step 12",
                    "fix": "lower the learning rate",
                }
            ],
        }
    ]
    two["probes"] = [PROBE]
    return [one, {**two, **extra}]


def test_the_training_section_has_the_plot_the_last_values_and_the_findings(
    tmp_path: Path,
) -> None:
    paths = write_report(
        monitored(), tmp_path, campaign="c", primary_metric="exact_match", baseline=None
    )
    text = paths.markdown.read_text(encoding="utf-8")
    section = text[text.index("## Training") : text.index("## Reward probe")]
    assert section.splitlines()[:8] == [
        "## Training",
        "",
        f"![c: training curves]({TRAINING_PNG_NAME})",
        "",
        "- Round 1, `sft`: train_loss 2 → 0.4 over 30 steps; val_loss 0.6",
        "- Round 1, `rft`: reward_mean 0.31 → 0.58 over 40 steps; reward_std 0.15; "
        "reward_error_rate 0",
        "  - warn plateau at step 40 (reward_mean): reward_mean rose by 0.001 over the last 10 "
        "steps. Fix: switch technique.",
        "- Round 2, `sft`: train_loss 2.1 → NaN over 12 steps",
    ]
    assert "  - stopped early: train_loss is NaN at step 12" in section
    assert (
        "  - **fail_round** loss_divergence at step 12 (train_loss): train_loss is NaN at step "
        "12. Fix: lower the learning rate." in section
    )


def test_the_reward_probe_section_names_the_function_its_numbers_and_the_fix(
    tmp_path: Path,
) -> None:
    paths = write_report(
        monitored(), tmp_path, campaign="c", primary_metric="exact_match", baseline=None
    )
    text = paths.markdown.read_text(encoding="utf-8")
    section = text[text.index("## Reward probe") :].splitlines()
    assert section[2] == (
        f"- Round 2, `{PROBE['function']}`: FAILED: separation 0% of 16 pairs, good mean 0.0000 "
        "vs bad mean 0.0000, latency p50 1.25 s / max 2.5 s, positive share 3%"
    )
    assert section[3] == (
        "  - problem: constant_scores: every sample scored 0.0. Fix: return a higher score for "
        "answers that match the reference."
    )
    assert section[4] == "  - warning: calls take 500 s, more than half of the 900 s limit"


def test_a_failed_round_shows_as_failed_with_its_reason(tmp_path: Path) -> None:
    paths = write_report(
        monitored(), tmp_path, campaign="c", primary_metric="exact_match", baseline=None
    )
    lines = paths.markdown.read_text(encoding="utf-8").splitlines()
    (row,) = [line for line in lines if line.startswith("| 2 |")]
    assert (
        "| **—** | — | — | failed (continue) | monitoring stopped the sft job at step 12: "
        "train_loss is NaN; round 2 failed; the next round starts from round 1 again |" in row
    )
    assert "- Last decision: failed (continue): monitoring stopped the sft job" in "\n".join(lines)
    table = format_table(monitored(), primary_metric="exact_match", reason_width=200)
    assert "failed (continue)  monitoring stopped the sft job at step 12" in table
    # A decision whose reason already says why the round failed is not repeated.
    said = monitored()
    said[1]["decision"]["reason"] = f"the round failed: {said[1]['failed']}"
    rows = build_rows(said, primary_metric="exact_match")
    assert rows[-1].reason_text == said[1]["decision"]["reason"]


def test_the_training_plot_is_written_beside_the_report_and_goes_with_its_curves(
    tmp_path: Path,
) -> None:
    records = monitored()
    paths = write_report(
        records, tmp_path, campaign="c", primary_metric="exact_match", baseline=None
    )
    assert paths.training == tmp_path / TRAINING_PNG_NAME
    assert paths.training.read_bytes()[:8] == PNG_SIGNATURE
    assert list(paths) == [paths.markdown, paths.png, paths.training]
    again = write_report(
        records[::-1], tmp_path / "again", campaign="c", primary_metric="exact_match", baseline=None
    )
    assert again.training is not None
    assert again.training.read_bytes() == paths.training.read_bytes()
    assert again.markdown.read_bytes() == paths.markdown.read_bytes()
    # Records without curves: no training plot, no section; an old plot is removed.
    plain = write_report(
        campaign(), tmp_path, campaign="c", primary_metric="exact_match", baseline=None
    )
    assert plain.training is None and not (tmp_path / TRAINING_PNG_NAME).exists()
    assert list(plain) == [plain.markdown, plain.png]
    text = plain.markdown.read_text(encoding="utf-8")
    assert "## Training" not in text and "## Reward probe" not in text
    assert text.endswith("](report.png)\n")
