"""The training plot of the round report: a panel per kind of curve, NaN marked, findings drawn."""

from __future__ import annotations

import math
import random
import struct
from pathlib import Path
from typing import Any

import pytest

from tuneloop.tracking.plots import (
    FAIL_COLOUR,
    FINDING_GID,
    MAX_ROUNDS,
    NOT_FINITE_GID,
    WARN_COLOUR,
    colour_of,
    panels_for,
    points_of,
    render_training,
    stage_curves,
    training_figure,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def finding(
    detector: str, policy: str, step: int | None, series: str, stage: str
) -> dict[str, Any]:
    return {
        "detector": detector,
        "policy": policy,
        "stage": stage,
        "step": step,
        "series": series,
        "message": f"{detector} fired",
        "fix": "",
    }


def rft(steps: int = 20, *, nan_at: int | None = None, **extra: Any) -> dict[str, Any]:
    mean = [[s, 0.2 + 0.02 * s] for s in range(1, steps + 1)]
    if nan_at is not None:
        mean[nan_at - 1][1] = None  # how JSON carries NaN
    high = [[s, 0.02 * s] for s in range(1, steps + 1)]
    low = [[s, 0.5 - 0.02 * s] for s in range(1, steps + 1)]
    series = {
        "reward_mean": mean,
        "reward_std": [[s, 0.1] for s in range(1, steps + 1)],
        "reward_high": high,
        "reward_low": low,
        "reward_medium": [[s, 1 - h - lo] for (s, h), (_, lo) in zip(high, low, strict=True)],
        "val_reward_mean": [[s, 0.3] for s in range(5, steps + 1, 5)],
        "reward_error_rate": [[s, 0.0] for s in range(1, steps + 1)],
    }
    return {"name": "rft", "method": "rft", "series": series, **extra}


def sft(steps: int = 20, *, nan_from: int | None = None, **extra: Any) -> dict[str, Any]:
    loss: list[list[Any]] = [[s, 2.0 / s] for s in range(1, steps + 1)]
    for point in loss[(nan_from or steps + 1) - 1 :]:
        point[1] = float("nan")
    series = {"train_loss": loss, "val_loss": [[s, 0.5] for s in range(5, steps + 1, 5)]}
    return {"name": "sft", "method": "sft", "series": series, **extra}


def record(number: int, *stages: dict[str, Any]) -> dict[str, Any]:
    return {"campaign": "c", "round": number, "stages": list(stages), "metrics": {}}


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    return struct.unpack(">II", data[16:24])


def axes_by_title(figure: Any) -> dict[str, Any]:
    return {axes.get_title(): axes for axes in figure.axes}


def test_records_without_curves_draw_nothing(tmp_path: Path) -> None:
    bare = [record(1, {"name": "sft", "method": "sft"}), record(2)]
    assert render_training(bare, tmp_path / "training.png", "c") is None
    assert not (tmp_path / "training.png").exists()
    assert render_training([], tmp_path / "training.png", "c") is None


def test_a_panel_per_kind_of_curve_and_a_valid_png(tmp_path: Path) -> None:
    records = [record(1, sft(), rft()), record(2, sft(), rft())]
    figure = training_figure(records, "c")
    assert list(axes_by_title(figure)) == [
        "RFT reward mean ± std per step",
        "reward distribution, round 2 rft",
        "training vs validation reward, round 2 rft",
        "training vs validation loss, round 2 sft",
        "SFT/CPT training loss per step",
        "reward-function error rate per step",
    ]
    path = render_training(records, tmp_path / "training.png", "c")
    assert path == tmp_path / "training.png"
    assert png_size(path) == (1300, 3 * 340 + 50)  # two columns, three rows of panels

    only_loss = render_training([record(1, sft())], tmp_path / "loss.png", "c")
    assert only_loss is not None
    assert png_size(only_loss) == (1300, 390)  # the loss and its validation: one row


def test_one_line_per_round_the_latest_emphasised_with_a_std_band() -> None:
    figure = training_figure([record(1, rft()), record(2, rft()), record(3, sft())], "c")
    reward = axes_by_title(figure)["RFT reward mean ± std per step"]
    lines = {line.get_label(): line for line in reward.get_lines()}
    assert set(lines) == {"round 1 rft", "round 2 rft"}
    assert lines["round 2 rft"].get_linewidth() > lines["round 1 rft"].get_linewidth()
    assert lines["round 1 rft"].get_color() == colour_of(1)
    bands = reward.collections
    assert len(bands) == 2  # one ±std area per round
    heights = bands[0].get_paths()[0].vertices[:, 1]
    assert heights.min() == pytest.approx(0.2 + 0.02 * 1 - 0.1)
    assert heights.max() == pytest.approx(0.2 + 0.02 * 20 + 0.1)


def test_not_finite_values_are_gaps_marked_by_crosses() -> None:
    records = [record(1, sft(nan_from=15), rft(nan_at=4))]
    figure = training_figure(records, "c")
    panels = axes_by_title(figure)
    loss = panels["SFT/CPT training loss per step"]
    (crosses,) = [line for line in loss.get_lines() if line.get_gid() == NOT_FINITE_GID]
    assert list(crosses.get_xdata()) == [15, 16, 17, 18, 19, 20]
    (curve,) = [line for line in loss.get_lines() if line.get_label() == "round 1 sft"]
    assert all(math.isnan(v) for v in curve.get_ydata()[14:])
    assert "not a finite number" in [t.get_text() for t in loss.get_legend().get_texts()]
    reward = panels["RFT reward mean ± std per step"]
    (crosses,) = [line for line in reward.get_lines() if line.get_gid() == NOT_FINITE_GID]
    assert list(crosses.get_xdata()) == [4]
    # A NaN value has no place on the axis: the limits come from the finite ones.
    assert math.isfinite(loss.get_ylim()[1]) and loss.get_ylim()[1] < 3


def test_findings_are_lines_at_their_step_red_when_they_fail_the_round() -> None:
    records = [
        record(
            1,
            sft(
                nan_from=12,
                findings=[finding("loss_divergence", "fail_round", 12, "train_loss", "sft")],
            ),
            rft(
                findings=[
                    finding("plateau", "warn", 16, "reward_mean", "rft"),
                    finding("reward_errors", "stop_campaign", 9, "reward_error_rate", "rft"),
                    finding("overfitting", "warn", None, "reward_mean", "rft"),
                ]
            ),
        )
    ]
    panels = axes_by_title(training_figure(records, "c"))

    def marks(title: str) -> dict[str, tuple[float, str]]:
        return {
            line.get_gid().removeprefix(FINDING_GID): (line.get_xdata()[0], line.get_color())
            for line in panels[title].get_lines()
            if str(line.get_gid()).startswith(FINDING_GID)
        }

    assert marks("SFT/CPT training loss per step") == {"loss_divergence": (12, FAIL_COLOUR)}
    assert marks("training vs validation loss, round 1 sft") == {
        "loss_divergence": (12, FAIL_COLOUR)
    }
    assert marks("RFT reward mean ± std per step") == {"plateau": (16, WARN_COLOUR)}
    assert marks("reward-function error rate per step") == {"reward_errors": (9, FAIL_COLOUR)}
    texts = [t.get_text() for t in panels["RFT reward mean ± std per step"].texts]
    assert " plateau" in texts
    # Judged on the whole curve (no step): written in the panel's corner.
    assert "overfitting: warn" in texts


def test_several_rounds_name_the_round_of_a_finding() -> None:
    records = [
        record(1, rft(findings=[finding("plateau", "warn", 10, "reward_mean", "rft")])),
        record(2, rft()),
    ]
    reward = axes_by_title(training_figure(records, "c"))["RFT reward mean ± std per step"]
    assert " plateau (r1)" in [t.get_text() for t in reward.texts]


def test_only_the_latest_rounds_are_drawn() -> None:
    records = [record(n, sft()) for n in range(1, MAX_ROUNDS + 4)]
    (panel,) = [p for p in panels_for(stage_curves(records)) if p.kind == "loss"]
    assert [s.round for s in panel.stages] == list(range(4, MAX_ROUNDS + 4))


def test_same_records_same_bytes_whatever_their_order(tmp_path: Path) -> None:
    records = [record(n, sft(nan_from=18 if n == 3 else None), rft(nan_at=2)) for n in range(1, 5)]
    shuffled = records[:]
    random.Random(3).shuffle(shuffled)
    one = render_training(records, tmp_path / "a.png", "c")
    two = render_training(shuffled, tmp_path / "b.png", "c")
    assert one is not None and two is not None
    assert one.read_bytes() == two.read_bytes()
    data = one.read_bytes()
    assert b"Software" not in data and b"matplotlib" not in data


def test_points_are_read_whatever_the_json_holds() -> None:
    raw = [[3, 1.5], [1, "NaN"], [2, None], ["x", 1.0], [4], "no point", [2, 0.5], [5, "inf"]]
    points = points_of(raw)
    assert [step for step, _ in points] == [1, 2, 3, 5]
    assert math.isnan(points[0][1]) and points[1][1] == 0.5 and math.isinf(points[3][1])
