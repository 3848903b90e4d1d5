"""What watching a job costs the triggerer, per poll, next to hundreds of other triggers.

A waiting trigger feeds each new log line of its job to `artifacts.series.LogMetrics` and then
runs `rounds.monitoring.detect` on the curves so far (at most `pipeline.monitor` keeps:
2,000 points a curve). Measured here, in this process, on Nova's HyperPod RFT log line and the
local trainer's SFT line:

- parsing: log lines per second (target: 20,000 or more, so a poll that reads a few hundred new
  lines costs milliseconds);
- judging: one `detect` call on full curves (2,000 points of every RFT series; target: 20 ms or
  less).

Exits 1 when a target is missed.

    python benchmarks/live_monitoring.py [--lines 50000]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

from tuneloop.artifacts.series import LogMetrics
from tuneloop.config.monitoring import Monitoring
from tuneloop.recipes.catalog import Method
from tuneloop.rounds.monitoring import detect

LINES_PER_SECOND_TARGET = 20_000.0
DETECT_MS_TARGET = 20.0
POINTS = 2_000

HYPERPOD_RFT = (
    "[my-lora-rft] [2026-03-08 22:40:07,102] [INFO] Training epoch 0, iteration {i}/999 | "
    "lr: 7e-07 | global_batch_size: 256 | global_step: {i} | reduced_train_loss: 0.007075 | "
    "prompt_length: 7.26e+03 | completion_length: 635.2 | global_seq_length: 7.895e+03 | "
    "adv: 0.02718 | reasoning_length_size: 0 | train_rm_score: {r:.4f} | kl: 0.0008378 | "
    "ent: 0.1944 | clipfrac: 0.004458 | train_step_timing in s: 1.232e+03 | "
    "consumed_samples: 30720"
)
LOCAL_SFT = (
    "[tuneloop] 2026-12-05 07:49:15Z step {i}/300 | global_step: {i} | reduced_train_loss: "
    "{r:.4f} | examples_per_s: 300.6 | tokens_per_s: 18039.7 | grad_norm: 0.79"
)


def lines_per_second(template: str, count: int) -> float:
    watcher = LogMetrics()
    lines = [template.format(i=i, r=0.5 + 0.1 * math.sin(i)) for i in range(1, count + 1)]
    started = time.perf_counter()
    for line in lines:
        watcher.feed(line)
    return count / (time.perf_counter() - started)


def detect_ms(repeat: int) -> float:
    curve = [(i, 0.5 + 0.1 * math.sin(i / 7)) for i in range(1, POINTS + 1)]
    series = {
        name: curve
        for name in (
            "reward_mean",
            "reward_std",
            "val_reward_mean",
            "reward_error_rate",
            "reward_latency_s",
        )
    }
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        detect(series, Monitoring(), stage="rft", method=Method.RFT, final=False)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    missed = False
    for label, template in (("HyperPod RFT line", HYPERPOD_RFT), ("local SFT line", LOCAL_SFT)):
        rate = lines_per_second(template, args.lines)
        ok = rate >= LINES_PER_SECOND_TARGET
        missed |= not ok
        print(
            f"parse {label}: {rate:,.0f} lines/s (target {LINES_PER_SECOND_TARGET:,.0f}) "
            f"{'ok' if ok else 'MISSED'}"
        )
    ms = detect_ms(args.repeat)
    ok = ms <= DETECT_MS_TARGET
    missed |= not ok
    print(
        f"detect on {POINTS:,} points of 5 RFT curves: {ms:.2f} ms median of {args.repeat} "
        f"(target {DETECT_MS_TARGET:g} ms) {'ok' if ok else 'MISSED'}"
    )
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
