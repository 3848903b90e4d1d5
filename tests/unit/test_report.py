"""The round report: Markdown table, PNG plot and terminal table from ledger records."""

from __future__ import annotations

import random
import struct
from pathlib import Path
from typing import Any

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
