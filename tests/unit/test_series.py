"""Canonical training curves: raw names normalized, Nova's log lines parsed, reward bands, and
the TensorBoard events and reward samples a job leaves, read from a folder and from S3."""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tuneloop import storage
from tuneloop.artifacts import series as S
from tuneloop.artifacts.series import LogMetrics, merge, normalize, read_series, reward_bands

NAN = float("nan")

HYPERPOD_RFT_LINE = (
    "[my-lora-rft] [2026-03-08 22:40:07,102] [INFO] Training epoch 0, iteration 119/999 | "
    "lr: 7e-07 | global_batch_size: 256 | global_step: 119 | reduced_train_loss: 0.007075 | "
    "prompt_length: 7.26e+03 | completion_length: 635.2 | global_seq_length: 7.895e+03 | "
    "adv: 0.02718 | reasoning_length_size: 0 | train_rm_score: 0.6797 | kl: 0.0008378 | "
    "ent: 0.1944 | clipfrac: 0.004458 | train_step_timing in s: 1.232e+03 | "
    "consumed_samples: 30720"
)


def is_nan(value: float) -> bool:
    return math.isnan(value)


# -- normalize -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("reduced_train_loss", S.TRAIN_LOSS),
        ("train_loss", S.TRAIN_LOSS),
        ("val_loss", S.VAL_LOSS),
        ("eval/loss", S.VAL_LOSS),
        ("examples_per_s", S.EXAMPLES_PER_S),
        ("tokens_per_s", S.TOKENS_PER_S),
        ("perf/throughput", S.TOKENS_PER_S),
        ("critic/rewards/mean", S.REWARD_MEAN),
        ("train_rm_score", S.REWARD_MEAN),
        ("critic/rewards/std", S.REWARD_STD),
        ("critic/rewards/max", S.REWARD_MAX),
        ("critic/rewards/min", S.REWARD_MIN),
        ("val-score/rewards/mean@1", S.VAL_REWARD_MEAN),
        ("val-score/rewards/mean_at_1", S.VAL_REWARD_MEAN),  # verl's MLflow spelling
        ("val-score/rewards/mean_1", S.VAL_REWARD_MEAN),  # tuneloop's MLflow mirror
        ("val-score/rewards/mean@4", S.VAL_REWARD_MEAN),
        ("actor/policy_updates", S.POLICY_UPDATES),
        ("training/global_step", S.POLICY_UPDATES),
        ("critic/rewards/error_rate", S.REWARD_ERROR_RATE),
        ("reward/latency_s", S.REWARD_LATENCY_S),
        ("timing_s/reward", S.REWARD_LATENCY_S),
        *[(name, name) for name in S.CANONICAL_NAMES],
    ],
)
def test_raw_names_feed_their_canonical_series(raw: str, canonical: str) -> None:
    assert S.canonical_name(raw) == canonical
    assert normalize({raw: [(3, 0.5)]})[canonical] == [(3, 0.5)]


def test_unknown_names_stay_out_and_nan_stays_in() -> None:
    series = normalize(
        {
            "actor/pg_loss": [(1, 0.3)],
            "critic/rewards/failed": [(1, 2.0)],
            "lr": [(1, 1e-5)],
            "reduced_train_loss": [(2, 1.5), (1, 2.0), (3, NAN), (2, 1.25)],
        }
    )
    assert set(series) == {S.TRAIN_LOSS}
    (one, two, three) = series[S.TRAIN_LOSS]
    assert one == (1, 2.0) and two == (2, 1.25)  # sorted; a step given twice keeps its last
    assert three[0] == 3 and is_nan(three[1])


def test_the_first_listed_raw_name_wins_a_step_both_report() -> None:
    series = normalize(
        {"train_loss": [(1, 9.0), (2, 9.0)], "reduced_train_loss": [(1, 1.0)], "bad": [(0.5, 1)]}
    )
    assert series[S.TRAIN_LOSS] == [(1, 1.0), (2, 9.0)]


def test_normalizing_canonical_series_changes_nothing() -> None:
    series = normalize({"critic/rewards/mean": [(1, 0.2), (2, 0.4)], "val_loss": [(2, 1.0)]})
    assert normalize(series) == series


def test_derived_series_fill_only_the_steps_a_job_did_not_report() -> None:
    series = normalize(
        {
            "response/aborted_ratio": [(1, 0.25)],
            "response_length/clip_ratio": [(1, 0.5), (2, 0.125)],
            "train_step_timing in s": [(1, 2.0), (2, 0.0)],
            "global_batch_size": [(1, 64.0), (2, 64.0)],
            "examples_per_s": [(3, 10.0)],
            "critic/rewards/mean": [(1, 0.1), (2, 0.2)],
        }
    )
    assert series[S.ROLLOUT_COMPLETION] == [(1, 0.75), (2, 0.875)]  # aborted first, then clipped
    assert series[S.EXAMPLES_PER_S] == [(1, 32.0), (3, 10.0)]  # no division by a zero timing
    assert series[S.POLICY_UPDATES] == [(1, 1.0), (2, 2.0)]  # one update per RFT step
    counted = normalize({"critic/rewards/mean": [(1, 0.1)], "training/global_step": [(1, 7)]})
    assert counted[S.POLICY_UPDATES] == [(1, 7.0)]


def test_merge_keeps_the_later_part_on_the_same_step() -> None:
    merged = merge(
        {S.REWARD_MEAN: [(2, 0.2), (1, 0.1)], S.VAL_LOSS: [(1, 3.0)]},
        {S.REWARD_MEAN: [(2, 0.25), (3, 0.3)]},
        {},
    )
    assert merged == {S.REWARD_MEAN: [(1, 0.1), (2, 0.25), (3, 0.3)], S.VAL_LOSS: [(1, 3.0)]}


# -- log lines -----------------------------------------------------------------------------------


def test_a_hyperpod_rft_line() -> None:
    found = LogMetrics().feed(HYPERPOD_RFT_LINE)
    assert found[S.REWARD_MEAN] == [(119, 0.6797)]
    assert found[S.EXAMPLES_PER_S] == [(119, pytest.approx(256 / 1232))]
    assert found[S.POLICY_UPDATES] == [(119, 119.0)]
    # In an RFT line, reduced_train_loss is the policy loss, not an SFT training loss.
    assert S.TRAIN_LOSS not in found


def test_a_hyperpod_sft_line() -> None:
    line = (
        "[my-sft] [2026-03-08 10:00:00,001] [INFO] Training epoch 0, iteration 5/100 | "
        "lr: 1e-05 | global_batch_size: 64 | global_step: 5 | reduced_train_loss: 1.2e-01 | "
        "train_step_timing in s: 2 | consumed_samples: 320"
    )
    assert LogMetrics().feed(line) == {S.TRAIN_LOSS: [(5, 0.12)], S.EXAMPLES_PER_S: [(5, 32.0)]}


@pytest.mark.parametrize(
    "line",
    [
        "step:12 - critic/rewards/mean:0.41 - critic/rewards/max:1.0 - critic/rewards/min:-3",
        "(TaskRunner pid=77) step:12 - critic/rewards/mean:0.41 - critic/rewards/max:1 - "
        "critic/rewards/min:-3.0 - actor/pg_loss:-0.02",
        "global_step=12 critic/rewards/mean=0.41 critic/rewards/max=1 critic/rewards/min=-3",
        "global_step=12, critic/rewards/mean=4.1e-01, critic/rewards/max=1.0, "
        "critic/rewards/min=-3",
        "{'global_step': 12, 'critic/rewards/mean': 0.41, 'critic/rewards/max': 1.0, "
        "'critic/rewards/min': -3}",
    ],
)
def test_training_job_lines(line: str) -> None:
    found = LogMetrics().feed(line)
    assert found[S.REWARD_MEAN] == [(12, 0.41)]
    assert found[S.REWARD_MAX] == [(12, 1.0)] and found[S.REWARD_MIN] == [(12, -3.0)]


def test_nan_values_are_kept_and_lines_without_a_step_give_nothing() -> None:
    metrics = LogMetrics()
    found = metrics.feed("step:3 - reduced_train_loss:nan - val_loss:NaN - examples_per_s:inf")
    assert is_nan(found[S.TRAIN_LOSS][0][1]) and is_nan(found[S.VAL_LOSS][0][1])
    assert found[S.EXAMPLES_PER_S] == [(3, math.inf)]
    for line in (
        "critic/rewards/mean: 0.5 | reduced_train_loss: 0.1",  # no step
        "step: 2.5 | critic/rewards/mean: 0.5",  # no whole step
        "Training epoch 0, iteration 119/999",
        "",
        "2026-03-08 22:40:07,102 global_step: nan | val_loss: 1",
    ):
        assert metrics.feed(line) == {}, line
    assert set(metrics.series()) == {S.TRAIN_LOSS, S.VAL_LOSS, S.EXAMPLES_PER_S}


def test_words_around_pairs_are_not_read_as_names() -> None:
    found = LogMetrics().feed(
        "[tuneloop] 2026-01-01 10:00:00Z step 3/5 | global_step: 3 | info: reward/latency_s:"
        " 0.25 | val_loss: 1.5s | noval_loss: 2 | val_loss2: 3 | train_loss in s: 4"
    )
    # ``1.5s`` is no number; ``noval_loss`` and ``val_loss2`` are other names; a unit suffix
    # only names NeMo's timing.
    assert found == {S.REWARD_LATENCY_S: [(3, 0.25)]}


def test_the_log_accumulates_and_a_later_line_wins() -> None:
    metrics = LogMetrics()
    metrics.feed("global_step: 1 | reduced_train_loss: 2.0")
    metrics.feed("global_step: 2 | reduced_train_loss: 1.5")
    metrics.feed("global_step: 2 | val_loss: 1.75")
    found = metrics.feed_text(
        "noise\nglobal_step: 2 | reduced_train_loss: 1.25\nglobal_step: 3 | reduced_train_loss: 1"
    )
    assert found == {S.TRAIN_LOSS: [(2, 1.25), (3, 1.0)]}
    assert metrics.series() == {
        S.TRAIN_LOSS: [(1, 2.0), (2, 1.25), (3, 1.0)],
        S.VAL_LOSS: [(2, 1.75)],
    }


# -- reward bands --------------------------------------------------------------------------------


def test_reward_bands_share_each_step() -> None:
    bands = reward_bands(
        [(2, [0.9, 0.8, 0.5, 0.2, 0.1, NAN]), (1, [1.0, 0.0]), (3, []), (1, [0.5, 0.5])],
        high=0.8,
        low=0.2,
    )
    # step 2: 0.9 and 0.8 (at the threshold) high; 0.5 and 0.2 (at the low one) medium; 0.1 low.
    assert bands[S.REWARD_HIGH] == [(1, 0.25), (2, 0.4)]
    assert bands[S.REWARD_MEDIUM] == [(1, 0.5), (2, 0.4)]
    assert bands[S.REWARD_LOW] == [(1, 0.25), (2, pytest.approx(0.2))]
    assert reward_bands([], high=0.5, low=0.5) == {}
    with pytest.raises(ValueError, match="make low <= high"):
        reward_bands([(1, [0.5])], high=0.2, low=0.8)


# -- output folders ------------------------------------------------------------------------------


def write_job_output(folder: Path) -> None:
    """What a job leaves: TensorBoard events by torch's SummaryWriter (one a restart wrote),
    another writer's tensor scalars, and per-step reward samples."""
    from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2
    from tensorboard.compat.proto import types_pb2 as dt
    from tensorboard.summary.writer.event_file_writer import EventFileWriter
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(folder / "tensorboard"), filename_suffix=".1")
    for step in (1, 2, 3):
        writer.add_scalar("critic/rewards/mean", step / 10, step)
        writer.add_scalar("reduced_train_loss", NAN if step == 2 else 1.0 / step, step)
        writer.add_scalar("actor/pg_loss", 0.5, step)
    writer.add_text("notes", "not a number", 1)
    writer.close()
    restarted = SummaryWriter(str(folder / "tensorboard" / "restart"), filename_suffix=".2")
    restarted.add_scalar("critic/rewards/mean", 0.75, 3)
    restarted.close()

    def tensor(dtype: int, **values: object) -> tensor_pb2.TensorProto:
        return tensor_pb2.TensorProto(
            dtype=dtype, tensor_shape=tensor_shape_pb2.TensorShapeProto(), **values
        )

    half = struct.unpack("<H", struct.pack("<e", 1.5))[0]
    values = [
        tensor(dt.DT_FLOAT, float_val=[0.5]),
        tensor(dt.DT_DOUBLE, double_val=[0.25]),
        tensor(dt.DT_FLOAT, tensor_content=struct.pack("<f", 0.125)),
        tensor(dt.DT_INT64, int64_val=[-7]),
        tensor(dt.DT_HALF, half_val=[half]),
    ]
    events = EventFileWriter(str(folder / "validation"))
    for step, value in enumerate(values, start=1):
        tag = "val-score/rewards/mean@1"
        summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, tensor=value)])
        events.add_event(event_pb2.Event(step=step, wall_time=1.0, summary=summary))
    vector = tensor_pb2.TensorProto(
        dtype=dt.DT_FLOAT,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=2)]
        ),
        float_val=[1.0, 2.0],
    )
    summary = summary_pb2.Summary(
        value=[summary_pb2.Summary.Value(tag="val-score/rewards/mean@1", tensor=vector)]
    )
    events.add_event(event_pb2.Event(step=9, summary=summary))  # no scalar: skipped
    events.close()
    samples = [{"step": 1, "rewards": [1.0, 0.0]}, {"step": 2, "rewards": [0.5, 0.9, 0.1, 0.95]}]
    lines = [json.dumps(s) for s in samples] + ["not json", '{"step": 3}']
    (folder / S.REWARD_SAMPLES).write_text("\n".join(lines) + "\n", encoding="utf-8")


def check_job_series(series: S.Series) -> None:
    assert series[S.REWARD_MEAN] == [
        (1, pytest.approx(0.1)),
        (2, pytest.approx(0.2)),
        (3, 0.75),  # the restart's value
    ]
    losses = series[S.TRAIN_LOSS]
    assert [step for step, _ in losses] == [1, 2, 3] and is_nan(losses[1][1])
    assert losses[2][1] == pytest.approx(1 / 3)
    assert series[S.VAL_REWARD_MEAN] == [(1, 0.5), (2, 0.25), (3, 0.125), (4, -7.0), (5, 1.5)]
    assert series[S.POLICY_UPDATES] == [(1, 1.0), (2, 2.0), (3, 3.0)]
    assert series[S.REWARD_HIGH] == [(1, 0.5), (2, 0.5)]
    assert series[S.REWARD_MEDIUM] == [(1, 0.0), (2, 0.25)]
    assert series[S.REWARD_LOW] == [(1, 0.5), (2, 0.25)]


def test_read_series_of_a_local_output_folder(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    write_job_output(tmp_path / "job")
    check_job_series(read_series(str(tmp_path / "job"), bands=(0.9, 0.2)))
    check_job_series(read_series(f"file://{tmp_path / 'job'}", bands=(0.9, 0.2)))
    without_bands = read_series(str(tmp_path / "job"))
    assert S.REWARD_HIGH not in without_bands and S.REWARD_MEAN in without_bands
    assert read_series(str(tmp_path / "nothing-here")) == {}


def test_only_regular_files_inside_the_folder_are_read(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    write_job_output(tmp_path / "elsewhere")
    job = tmp_path / "job"
    job.mkdir()
    (job / "tensorboard").symlink_to(tmp_path / "elsewhere" / "tensorboard")
    events = next((tmp_path / "elsewhere" / "tensorboard").glob("events.out.tfevents.*"))
    (job / events.name).symlink_to(events)
    (job / S.REWARD_SAMPLES).symlink_to(tmp_path / "elsewhere" / S.REWARD_SAMPLES)
    assert read_series(str(job), bands=(0.9, 0.2)) == {}


def test_a_damaged_events_file_keeps_what_came_before_the_damage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("torch")
    write_job_output(tmp_path / "job")
    (events,) = (tmp_path / "job" / "validation").glob("events.out.tfevents.*")
    whole = events.read_bytes()
    with events.open("rb") as stream:
        records = list(S.tfrecords(stream))
    last = len(records[-1]) + 16

    events.write_bytes(whole[: len(whole) - last + 20])  # cut inside the last record
    assert read_series(str(tmp_path / "job"))[S.VAL_REWARD_MEAN][-1] == (5, 1.5)

    cut = len(whole) - last - (len(records[-2]) + 16)  # the fifth value's record starts here

    # An undecodable record (its length intact) is skipped; the records after it are read.
    def framed(data: bytes) -> bytes:
        length = struct.pack("<Q", len(data))
        return length + struct.pack("<I", S._masked_crc32c(length)) + data + b"\0" * 4

    events.write_bytes(whole[:cut] + framed(b"\x0f\xff") + framed(records[-2]))
    assert read_series(str(tmp_path / "job"))[S.VAL_REWARD_MEAN][-1] == (5, 1.5)
    assert "Skipped 1 undecodable records" in caplog.text

    events.write_bytes(whole[:cut] + b"\xff" * 12 + whole[cut + 12 :])  # a corrupt length
    series = read_series(str(tmp_path / "job"))
    assert [step for step, _ in series[S.VAL_REWARD_MEAN]] == [1, 2, 3, 4]
    assert "fails its checksum" in caplog.text


def test_read_series_of_an_s3_output_folder(s3_server: str, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    bucket = f"series-{uuid.uuid4().hex[:12]}"
    client = storage.s3_client()
    client.create_bucket(Bucket=bucket)
    write_job_output(tmp_path / "job")
    for path in (tmp_path / "job").rglob("*"):
        if path.is_file():
            key = f"out/job/{path.relative_to(tmp_path / 'job').as_posix()}"
            client.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
    # A sibling folder whose name starts the same is not part of the job.
    client.put_object(Bucket=bucket, Key="out/job-2/events.out.tfevents.1.x", Body=b"\x00" * 40)
    client.put_object(Bucket=bucket, Key="out/job/folder/", Body=b"")

    check_job_series(read_series(f"s3://{bucket}/out/job", bands=(0.9, 0.2)))
    check_job_series(read_series(f"s3://{bucket}/out/job/", bands=(0.9, 0.2)))
    assert read_series(f"s3://{bucket}/out/none") == {}
    with pytest.raises(storage.StorageError, match="cannot list s3://no-such-"):
        read_series(f"s3://no-such-{bucket}/out/job")


def test_the_module_imports_nothing_heavy() -> None:
    code = (
        "import sys; import tuneloop.artifacts.series; "
        "heavy = {'boto3', 'botocore', 'mlflow', 'torch', 'tensorboard'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    plugins = Path(__file__).resolve().parents[2] / "plugins"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=plugins)
