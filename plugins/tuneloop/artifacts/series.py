"""Training curves under one set of names, whatever wrote them.

Every backend reports a job's progress under its own metric names: Nova training jobs (verl) log
``critic/rewards/mean`` to TensorBoard and MLflow, HyperPod pods print ``train_rm_score`` in
their log lines, NeMo-based SFT logs ``reduced_train_loss``, and the local trainers copy those
names. The monitors read one set of **canonical series** instead (the constants below), each a
list of ``(step, value)`` points sorted by step, one point per step:

- `normalize` turns raw scalars (name -> points) into canonical series (`RAW_NAMES` says which
  raw name feeds which series; unknown names stay out: a caller keeps raw scalars separately);
- `LogMetrics` parses job log lines as they arrive (``key: value`` or ``key=value`` pairs split
  by ``|``, `` - ``, commas or spaces; a line without a step gives nothing);
- `read_series` reads what a job left in its output folder, local or on S3: TensorBoard events
  (decoded here, so a worker without tensorboard reads them) and the local trainer's per-step
  reward samples (``reward_samples.jsonl``), from which `reward_bands` makes the distribution
  series once the campaign's thresholds are known;
- `merge` combines series from several sources; a later part wins on the same (name, step).

Rules that hold everywhere:

- NaN and infinite values are kept: a NaN loss is what the divergence detector looks for (the
  MLflow mirror drops them; these series do not).
- A step logged twice keeps its last value (a job that restarted logs its steps again).
- Derived series only fill steps the job did not report itself: rollout completion is
  ``1 - response/aborted_ratio``, else ``1 - response_length/clip_ratio``; examples per second
  is ``global_batch_size / train_step_timing``; a reward step with no update count counts as
  that many policy updates (one optimizer update per RFT step, as Nova and the local trainer
  run). In a stage that logs HyperPod's ``train_rm_score``, ``reduced_train_loss`` is the
  policy loss and does not feed ``train_loss``.
- Only regular files inside the named folder are read (no symbolic links), one record at a
  time: memory grows with the number of points, not with the size of the files.

Standard library only (storage imports boto3 when an s3:// URI is read): DAG files import this
module at parse time.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import stat
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, BinaryIO

from tuneloop import storage
from tuneloop.errors import Problem, StorageError

Point = tuple[int, float]
"""(step, value) of one metric."""
Series = dict[str, list[Point]]
"""Canonical name -> points sorted by step, one per step."""

TRAIN_LOSS = "train_loss"
VAL_LOSS = "val_loss"
EXAMPLES_PER_S = "examples_per_s"
TOKENS_PER_S = "tokens_per_s"
REWARD_MEAN = "reward_mean"
REWARD_STD = "reward_std"
REWARD_MAX = "reward_max"
REWARD_MIN = "reward_min"
VAL_REWARD_MEAN = "val_reward_mean"
REWARD_HIGH = "reward_high"
"""Share (0..1) of a step's rewards at or above the campaign's high threshold."""
REWARD_MEDIUM = "reward_medium"
"""Share (0..1) of a step's rewards between the low and high thresholds."""
REWARD_LOW = "reward_low"
"""Share (0..1) of a step's rewards below the campaign's low threshold."""
POLICY_UPDATES = "policy_updates"
"""Optimizer updates of the policy so far (cumulative)."""
ROLLOUT_COMPLETION = "rollout_completion"
"""Share (0..1) of a step's rollouts that finished (not cut at the length limit or aborted)."""
REWARD_ERROR_RATE = "reward_error_rate"
"""Share (0..1) of a step's samples the reward function failed to score."""
REWARD_LATENCY_S = "reward_latency_s"
"""Seconds per reward call (per batch)."""

CANONICAL_NAMES: tuple[str, ...] = (
    TRAIN_LOSS,
    VAL_LOSS,
    EXAMPLES_PER_S,
    TOKENS_PER_S,
    REWARD_MEAN,
    REWARD_STD,
    REWARD_MAX,
    REWARD_MIN,
    VAL_REWARD_MEAN,
    REWARD_HIGH,
    REWARD_MEDIUM,
    REWARD_LOW,
    POLICY_UPDATES,
    ROLLOUT_COMPLETION,
    REWARD_ERROR_RATE,
    REWARD_LATENCY_S,
)

RAW_NAMES: dict[str, str] = {
    # SFT and CPT: NeMo-based Nova jobs and the local trainer
    "reduced_train_loss": TRAIN_LOSS,
    "train_loss": TRAIN_LOSS,
    "train/loss": TRAIN_LOSS,
    "val_loss": VAL_LOSS,
    "validation_loss": VAL_LOSS,
    "eval_loss": VAL_LOSS,
    "eval/loss": VAL_LOSS,
    "examples_per_s": EXAMPLES_PER_S,
    "tokens_per_s": TOKENS_PER_S,
    "perf/throughput": TOKENS_PER_S,  # verl: tokens per second per GPU
    # RFT: verl on training jobs, HyperPod log lines, the local GRPO trainer
    "critic/rewards/mean": REWARD_MEAN,
    "train_rm_score": REWARD_MEAN,
    "critic/rewards/std": REWARD_STD,
    "critic/rewards/max": REWARD_MAX,
    "critic/rewards/min": REWARD_MIN,
    "val-score/rewards/mean@1": VAL_REWARD_MEAN,
    "actor/policy_updates": POLICY_UPDATES,
    "training/global_step": POLICY_UPDATES,
    "critic/rewards/error_rate": REWARD_ERROR_RATE,
    "reward/latency_s": REWARD_LATENCY_S,
    "timing_s/reward": REWARD_LATENCY_S,  # verl: seconds spent scoring a step's batch
}
"""Raw metric names -> the canonical series they feed. Where two raw names feed one series, the
one listed first wins on a step both report. Canonical names map to themselves."""

_VALIDATION_REWARD = re.compile(r"val-score/rewards/mean(?:@|_at_|_)\d+\Z")
"""Nova's validation reward, ``mean@N`` as logged, ``mean_at_N`` as verl sends it to MLflow
(which refuses ``@``) and ``mean_N`` as tuneloop's MLflow mirror writes it."""

ABORTED_RATIO = "response/aborted_ratio"
CLIP_RATIO = "response_length/clip_ratio"
STEP_TIMING = ("train_step_timing in s", "train_step_timing")
GLOBAL_BATCH_SIZE = "global_batch_size"
HYPERPOD_REWARD = "train_rm_score"
HYPERPOD_LOSS = "reduced_train_loss"

STEP_KEYS = ("global_step", "step", "training/global_step", "trainer/global_step")
"""Keys of a log line that name its step, the first found wins."""

REWARD_SAMPLES = "reward_samples.jsonl"
"""The local RFT trainer's per-step rewards: ``{"step": n, "rewards": [...]}`` per line."""
TENSORBOARD_PREFIX = "events.out.tfevents."

_log = logging.getLogger(__name__)
_PRIORITY = {raw: index for index, raw in enumerate(RAW_NAMES)}


# -- normalizing ---------------------------------------------------------------------------------


def canonical_name(raw: str) -> str | None:
    """The canonical series a raw metric name feeds, or None."""
    name = raw.strip()
    if name in CANONICAL_NAMES:
        return name
    if name in RAW_NAMES:
        return RAW_NAMES[name]
    if _VALIDATION_REWARD.match(name):
        return VAL_REWARD_MEAN
    return None


def normalize(scalars: Mapping[str, Iterable[tuple[int, float]]]) -> Series:
    """Raw scalars (name -> (step, value) points) as canonical series; unknown names are left
    out, NaN is kept, a step given twice keeps its last value."""
    raw = {name: _by_step(points) for name, points in scalars.items()}
    found: dict[str, dict[int, float]] = {}
    skip_loss = HYPERPOD_REWARD in raw  # HyperPod RFT: reduced_train_loss is the policy loss
    for name in sorted(raw, key=lambda n: (_PRIORITY.get(n.strip(), len(_PRIORITY)), n)):
        target = canonical_name(name)
        if target is None or (skip_loss and name.strip() == HYPERPOD_LOSS):
            continue
        into = found.setdefault(target, {})
        for step, value in raw[name].items():
            into.setdefault(step, value)
    _derive(raw, found)
    return {name: sorted(points.items()) for name, points in found.items() if points}


def _by_step(points: Iterable[tuple[int, float]]) -> dict[int, float]:
    out: dict[int, float] = {}
    for point in points:
        step, value = _point(point)
        if step is not None:
            out[step] = value
    return out


def _point(point: Sequence[Any]) -> tuple[int | None, float]:
    """(step, value) of a point; step None when it is no whole number."""
    try:
        step, value = float(point[0]), float(point[1])
    except (TypeError, ValueError, IndexError):
        return None, math.nan
    if not math.isfinite(step) or step != int(step):
        return None, math.nan
    return int(step), value


def _derive(raw: Mapping[str, dict[int, float]], found: dict[str, dict[int, float]]) -> None:
    """Fill, on the steps a job did not report them, the series its other scalars imply."""
    completion = found.setdefault(ROLLOUT_COMPLETION, {})
    for source in (ABORTED_RATIO, CLIP_RATIO):
        for step, ratio in raw.get(source, {}).items():
            completion.setdefault(step, 1.0 - ratio)
    batch = raw.get(GLOBAL_BATCH_SIZE, {})
    throughput = found.setdefault(EXAMPLES_PER_S, {})
    for timing_name in STEP_TIMING:
        for step, seconds in raw.get(timing_name, {}).items():
            if step in batch and seconds > 0:
                throughput.setdefault(step, batch[step] / seconds)
    if REWARD_MEAN in found and not found.get(POLICY_UPDATES):
        found[POLICY_UPDATES] = {step: float(step) for step in found[REWARD_MEAN]}


def merge(*parts: Mapping[str, Iterable[Point]]) -> Series:
    """One series per name from several sources; a later part wins on the same (name, step)."""
    combined: dict[str, dict[int, float]] = {}
    for part in parts:
        for name, points in part.items():
            combined.setdefault(name, {}).update(_by_step(points))
    return {name: sorted(points.items()) for name, points in combined.items() if points}


def reward_bands(samples: Iterable[tuple[int, Sequence[float]]], high: float, low: float) -> Series:
    """Per step, the shares of rewards at or above ``high`` (``reward_high``), below ``low``
    (``reward_low``) and between (``reward_medium``). NaN rewards are not counted; a step with
    no reward gives no point."""
    if low > high:
        raise ValueError(f"the low band ({low}) is above the high band ({high}); make low <= high")
    counts: dict[int, list[int]] = {}  # step -> [high, medium, low]
    for step, rewards in samples:
        tally = counts.setdefault(int(step), [0, 0, 0])
        for reward in rewards:
            value = float(reward)
            if math.isnan(value):
                continue
            tally[0 if value >= high else 2 if value < low else 1] += 1
    series: Series = {REWARD_HIGH: [], REWARD_MEDIUM: [], REWARD_LOW: []}
    for step, (high_count, medium_count, low_count) in sorted(counts.items()):
        total = high_count + medium_count + low_count
        if total:
            series[REWARD_HIGH].append((step, high_count / total))
            series[REWARD_MEDIUM].append((step, medium_count / total))
            series[REWARD_LOW].append((step, low_count / total))
    return {name: points for name, points in series.items() if points}


# -- log lines -------------------------------------------------------------------------------------

_NUMBER = r"[-+]?(?:(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?|nan|inf(?:inity)?)"
_PAIR = re.compile(
    r"(?<![\w/@.\-'\"])(?P<quote>['\"]?)"
    r"(?P<key>[a-z_][\w/@.\-]*(?: in [a-z]+)?)(?P=quote)"
    rf"\s*[:=]\s*(?P<value>{_NUMBER})(?![\w.])",
    re.IGNORECASE,
)
"""``key: value`` or ``key=value``: a key starts with a letter and may end in `` in <unit>``
(NeMo's ``train_step_timing in s``); a value is a number (``1.2e-05``, ``-3``, ``nan``)."""


def parse_pairs(line: str) -> dict[str, float]:
    """The numeric ``key: value`` / ``key=value`` pairs of one log line (the last of a repeated
    key wins)."""
    return {match["key"]: float(match["value"]) for match in _PAIR.finditer(line)}


def line_step(pairs: Mapping[str, float]) -> int | None:
    """The step a line's pairs name (``global_step``, else ``step``...), or None."""
    for key in STEP_KEYS:
        value = pairs.get(key)
        if value is not None and math.isfinite(value) and value >= 0 and value == int(value):
            return int(value)
    return None


class LogMetrics:
    """Canonical points from job log lines, fed one line at a time as the log grows.

    Reads Nova's HyperPod lines (``... | global_step: 119 | reduced_train_loss: 0.007 |
    train_rm_score: 0.68 | ...``), training-job (verl) lines (``step:12 - critic/rewards/mean:
    0.41 - ...``, ``global_step=1 critic/rewards/mean=0.123``) and the local trainers' metrics
    lines, which use the HyperPod form."""

    def __init__(self) -> None:
        self._points: dict[str, dict[int, float]] = {}

    def feed(self, line: str) -> Series:
        """The canonical points found in this one line (none without a step)."""
        pairs = parse_pairs(line)
        step = line_step(pairs)
        if step is None:
            return {}
        found = normalize({key: [(step, value)] for key, value in pairs.items()})
        for name, points in found.items():
            self._points.setdefault(name, {}).update(points)
        return found

    def feed_text(self, text: str) -> Series:
        """The canonical points of every line of ``text`` (a chunk of a log)."""
        found = [self.feed(line) for line in text.splitlines()]
        return merge(*found)

    def series(self) -> Series:
        """Everything fed so far."""
        return {name: sorted(points.items()) for name, points in self._points.items()}


# -- TensorBoard events, without tensorboard -------------------------------------------------------

MAX_RECORD_BYTES = 64 * 1024 * 1024
"""A record longer than this is a corrupt length (scalar events are a few dozen bytes)."""

# TensorFlow DataType numbers of the numeric tensors a scalar summary may hold.
_DT_FLOAT, _DT_DOUBLE, _DT_INT32, _DT_INT64, _DT_BFLOAT16, _DT_HALF = 1, 2, 3, 9, 14, 19


class _Corrupt(ValueError):
    """A record or message that is not what an events file holds."""


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C = _crc32c_table()


def _masked_crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    chunks, left = [], size
    while left > 0:
        chunk = stream.read(left)
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def tfrecords(stream: BinaryIO) -> Iterator[bytes]:
    """The records of a TFRecord stream, one at a time. A truncated last record (a file still
    being written) ends the stream; a length whose checksum fails is `_Corrupt`."""
    while True:
        header = _read_exactly(stream, 12)
        if len(header) < 12:
            return
        length, length_crc = struct.unpack("<QI", header)
        if _masked_crc32c(header[:8]) != length_crc or length > MAX_RECORD_BYTES:
            raise _Corrupt("a record length fails its checksum")
        data = _read_exactly(stream, length)
        footer = _read_exactly(stream, 4)
        if len(data) < length or len(footer) < 4:
            return
        yield data


def _varint(data: bytes, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if position >= len(data) or shift > 63:
            raise _Corrupt("a varint runs past its message")
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7


def _fields(data: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of a protobuf message: an int for varints, bytes for
    fixed-width and length-delimited fields."""
    position = 0
    while position < len(data):
        key, position = _varint(data, position)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, position = _varint(data, position)
            yield number, wire, value
            continue
        if wire == 2:
            size, position = _varint(data, position)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
        else:
            raise _Corrupt(f"wire type {wire} has no place in an event")
        if position + size > len(data):
            raise _Corrupt("a field runs past its message")
        yield number, wire, data[position : position + size]
        position += size


def event_scalars(record: bytes) -> tuple[int, list[tuple[str, float]]]:
    """(step, [(tag, value)]) of one serialized Event: simple values and scalar numeric
    tensors; images, histograms, text and the rest are skipped."""
    step, values = 0, []
    for number, wire, value in _fields(record):
        if number == 2 and wire == 0 and isinstance(value, int):
            step = value - (1 << 64) if value >= 1 << 63 else value
        elif number == 5 and wire == 2 and isinstance(value, bytes):  # summary
            for inner, inner_wire, entry in _fields(value):
                if inner == 1 and inner_wire == 2 and isinstance(entry, bytes):
                    scalar = _summary_value(entry)
                    if scalar is not None:
                        values.append(scalar)
    return step, values


def _summary_value(data: bytes) -> tuple[str, float] | None:
    tag, number = "", None
    for field, wire, value in _fields(data):
        if field == 1 and wire == 2 and isinstance(value, bytes):
            tag = value.decode("utf-8", "replace")
        elif field == 2 and wire == 5 and isinstance(value, bytes):
            number = struct.unpack("<f", value)[0]
        elif field == 8 and wire == 2 and isinstance(value, bytes):
            number = _scalar_tensor(value)
    return (tag, number) if tag and number is not None else None


def _scalar_tensor(data: bytes) -> float | None:
    """The value of a TensorProto holding one number and no dimensions, else None."""
    dtype, values, content, has_dims = 0, [], b"", False
    for field, wire, value in _fields(data):
        if field == 1 and isinstance(value, int):
            dtype = value
        elif field == 2 and isinstance(value, bytes):
            has_dims = any(f == 2 for f, _, _ in _fields(value))
        elif field == 4 and isinstance(value, bytes):
            content = value
        elif field in (5, 6, 7, 10, 13):
            values.extend(_numbers(field, wire, value))
    if has_dims or dtype not in (
        _DT_FLOAT,
        _DT_DOUBLE,
        _DT_INT32,
        _DT_INT64,
        _DT_HALF,
        _DT_BFLOAT16,
    ):
        return None
    if content:
        formats = {_DT_FLOAT: "<f", _DT_DOUBLE: "<d", _DT_INT32: "<i", _DT_INT64: "<q"}
        form = formats.get(dtype, "<e" if dtype == _DT_HALF else "")
        if not form or len(content) != struct.calcsize(form):
            return None
        return float(struct.unpack(form, content)[0])
    if len(values) != 1:
        return None
    if dtype in (_DT_HALF, _DT_BFLOAT16):
        bits = int(values[0]) & 0xFFFF
        if dtype == _DT_HALF:
            return float(struct.unpack("<e", struct.pack("<H", bits))[0])
        return float(struct.unpack("<f", struct.pack("<I", bits << 16))[0])
    return float(values[0])


def _numbers(field: int, wire: int, value: int | bytes) -> list[float]:
    """The numbers of one (packed or single) repeated numeric TensorProto field."""
    if isinstance(value, int):  # a single varint: int_val, int64_val, half_val
        signed = value - (1 << 64) if value >= 1 << 63 else value
        return [float(signed)]
    if wire == 5:
        return [struct.unpack("<f", value)[0]]
    if wire == 1:
        return [struct.unpack("<d", value)[0]]
    if field == 5:
        return [v for (v,) in struct.iter_unpack("<f", value[: len(value) // 4 * 4])]
    if field == 6:
        return [v for (v,) in struct.iter_unpack("<d", value[: len(value) // 8 * 8])]
    numbers, position = [], 0
    while position < len(value):
        item, position = _varint(value, position)
        numbers.append(float(item - (1 << 64) if item >= 1 << 63 else item))
    return numbers


def read_events(stream: BinaryIO, into: dict[str, dict[int, float]], where: str = "") -> None:
    """Add the scalars of one TensorBoard events stream to ``into`` (tag -> step -> value, a
    later value of a step replacing an earlier one). A record that cannot be decoded is skipped;
    a damaged length ends the file (what came before it is kept); both with a warning."""
    skipped = 0
    try:
        for record in tfrecords(stream):
            try:
                step, values = event_scalars(record)
            except _Corrupt:
                skipped += 1
                continue
            for tag, value in values:
                into.setdefault(tag, {})[step] = value
    except _Corrupt as error:
        _log.warning("Stopped reading TensorBoard events %s: %s", where, error)
    if skipped:
        _log.warning("Skipped %d undecodable records of TensorBoard events %s", skipped, where)


# -- output folders ------------------------------------------------------------------------------


def read_series(folder_or_uri: str, *, bands: tuple[float, float] | None = None) -> Series:
    """The canonical series a finished job left in its output folder (a path, ``file://`` or
    ``s3://``): its TensorBoard events anywhere below the folder and, given ``bands`` (high,
    low), the reward distribution of ``reward_samples.jsonl`` at its top. Empty when the
    folder holds neither (or does not exist)."""
    scalars: dict[str, dict[int, float]] = {}
    samples: list[tuple[int, list[float]]] = []
    for relative, opener in _files(folder_or_uri):
        name = relative.rsplit("/", 1)[-1]
        if name.startswith(TENSORBOARD_PREFIX):
            with opener() as stream:
                read_events(stream, scalars, storage.join(folder_or_uri, relative))
        elif relative == REWARD_SAMPLES and bands is not None:
            with opener() as stream:
                samples.extend(read_reward_samples(stream))
    series = normalize({tag: points.items() for tag, points in scalars.items()})
    if bands is not None and samples:
        series = merge(series, reward_bands(samples, high=bands[0], low=bands[1]))
    return series


def read_reward_samples(stream: BinaryIO) -> Iterator[tuple[int, list[float]]]:
    """(step, rewards) of each line of a ``reward_samples.jsonl`` stream; lines that are not
    ``{"step": n, "rewards": [numbers]}`` are skipped."""
    for line in io.TextIOWrapper(stream, encoding="utf-8", errors="replace"):
        try:
            entry = json.loads(line)
            step, rewards = int(entry["step"]), [float(r) for r in entry["rewards"]]
        except (ValueError, TypeError, KeyError):
            continue
        yield step, rewards


def _files(folder_or_uri: str) -> Iterator[tuple[str, _Open]]:
    """(path relative to the folder, opener) of every regular file below it."""
    if storage.is_s3(folder_or_uri):
        yield from _s3_files(folder_or_uri)
        return
    root = storage.local_path(folder_or_uri)
    if not root.is_dir():
        return
    for directory, subfolders, names in os.walk(root, followlinks=False):
        subfolders.sort()
        for name in sorted(names):
            path = Path(directory) / name
            try:
                if not stat.S_ISREG(path.lstat().st_mode):
                    continue  # a symbolic link could name a file outside the folder
            except OSError:
                continue
            yield path.relative_to(root).as_posix(), _Open(str(path))


class _Open:
    """Opens one file by URI as a stream (storage.open_binary) when called."""

    def __init__(self, uri: str) -> None:
        self.uri = uri

    def __call__(self) -> AbstractContextManager[BinaryIO]:
        return storage.open_binary(self.uri)


def _s3_files(folder: str) -> Iterator[tuple[str, _Open]]:
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = storage.split_s3(folder)
    prefix = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
    keys: list[str] = []
    try:
        pages = storage.s3_client().get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=bucket, Prefix=prefix):
            keys.extend(item["Key"] for item in page.get("Contents", []))
    except (ClientError, BotoCoreError) as error:
        code = storage.error_code(error) or type(error).__name__
        raise StorageError(
            [
                Problem(
                    "",
                    f"cannot list {folder} ({code})",
                    fix="check that the job's output folder exists and that this environment's "
                    "AWS credentials may list and read it",
                )
            ]
        ) from None
    for key in sorted(keys):
        relative = key[len(prefix) :]
        if relative and not relative.endswith("/"):
            yield relative, _Open(f"s3://{bucket}/{key}")
