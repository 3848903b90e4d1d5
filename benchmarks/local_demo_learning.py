"""Evidence that the local backend learns: a two-round campaign on the demo task, in-process.

On the demo task (the larger of two two-digit numbers, answered as ``ANSWER: <n>``), starting
from the fresh base model (``tiny-chat``), every stage runs through tuneloop's own code: the
templates in ``recipes/local/`` are rendered for the local platform
(``tuneloop.recipes.render.render_recipe``) and run with ``tuneloop.local.train.run_recipe``,
each stage starting from the checkpoint named by the previous stage's ``manifest.json``:

    base -> CPT -> round 1: SFT (full-rank) -> RFT (full-rank)
                -> round 2: SFT -> RFT

Every model is scored on the held-out test set (``eval-gen-qa.yaml``, exact match read
back with ``tuneloop.artifacts.evaluation.read_eval_metrics``). The table shows, per stage,
the exact match, wall seconds, optimizer steps per second and the peak RSS of this process so
far (one process runs every stage, so the column never goes down).

Right after the round-1 SFT stage, its training speed is compared with a plain TRL script on
the same configuration (the CPT checkpoint, the same converted records, batch size, learning
rate, max_steps and max_length; ``trl.SFTTrainer`` with ``SFTConfig`` defaults otherwise).
On a small shared machine the ratio varies from run to run by 10% or more.

``--check`` exits with status 1 when: SFT does not lift exact match by at least 0.3 over the
base, an RFT stage lowers it by more than 0.02, an SFT stage takes 120 s or more, an RFT stage
180 s or more, or the steps/s ratio to plain TRL is below 0.9.

    python benchmarks/local_demo_learning.py                 # the full run (a few minutes)
    python benchmarks/local_demo_learning.py --check
    python benchmarks/local_demo_learning.py --quick         # a smoke run with fewer steps
"""

from __future__ import annotations

import argparse
import random
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "plugins"))

RECIPES = ROOT / "recipes" / "local"
REWARD = "tuneloop.local.demo_task:reward"
BASE = "tiny-chat"

MIN_SFT_LIFT = 0.3
MAX_RFT_DROP = 0.02
MAX_SFT_SECONDS = 120.0
MAX_RFT_SECONDS = 180.0
MIN_TRL_RATIO = 0.9

QUICK_STEPS = {"cpt": 30, "sft": 20, "rft": 5}
QUICK_SIZES = {"test": 60, "rft": 64}


@dataclass
class Row:
    stage: str
    kind: str
    exact_match: float | None
    seconds: float
    steps: int | None
    steps_per_second: float | None
    peak_rss_mb: float


def peak_rss_mb() -> float:
    """This process's peak resident set size so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Campaign:
    def __init__(self, workdir: Path, data: dict[str, Path], quick: bool) -> None:
        self.workdir = workdir
        self.data = data
        self.quick = quick
        self.rows: list[Row] = []

    def run(self, name: str, template: str, overrides: dict[str, Any]) -> tuple[Path, dict]:
        """Render ``template`` with ``overrides`` and run it as job ``name``; return the output
        folder and the trainer's result."""
        from tuneloop.local.runner import JobSpec
        from tuneloop.local.train import run_recipe
        from tuneloop.recipes.catalog import Platform
        from tuneloop.recipes.render import render_recipe
        from tuneloop.recipes.rules import RecipeContext

        output = self.workdir / "jobs" / name
        rendered = render_recipe(
            RECIPES / template,
            {"run.name": name, **overrides},
            context=RecipeContext(platform=Platform.LOCAL),
        )
        spec = JobSpec(name=name, output=str(output), recipe=rendered.data)
        result = run_recipe(spec, lambda step, total=None: None)
        return output, result

    def train(self, stage: str, kind: str, template: str, data: Path, start: str) -> str:
        """Run a training stage from ``start``; return the checkpoint its manifest names."""
        from tuneloop.artifacts.manifest import read_checkpoint_uri

        overrides: dict[str, Any] = {
            "run.data_s3_path": str(data),
            "run.model_name_or_path": start,
        }
        if kind == "rft":
            overrides["run.reward_lambda_arn"] = REWARD
        if self.quick:
            key = {
                "cpt": "training_config.trainer.max_steps",
                "sft": "training_config.max_steps",
                "rft": "training_config.trainer.max_steps",
            }[kind]
            overrides[key] = QUICK_STEPS[kind]
        started = time.monotonic()
        output, result = self.run(stage, template, overrides)
        seconds = time.monotonic() - started
        steps = result.get("steps")
        train_seconds = result.get("train_seconds") or result.get("seconds")
        rate = steps / train_seconds if steps and train_seconds else None
        self.rows.append(Row(stage, kind, None, seconds, steps, rate, peak_rss_mb()))
        return read_checkpoint_uri(str(output))

    def evaluate(self, stage: str, model: str) -> float:
        """Exact match of ``model`` on the held-out test set."""
        from tuneloop.artifacts.evaluation import read_eval_metrics

        started = time.monotonic()
        output, _ = self.run(
            f"{stage}-eval",
            "eval-gen-qa.yaml",
            {"run.data_s3_path": str(self.data["test"]), "run.model_name_or_path": model},
        )
        seconds = time.monotonic() - started
        score = read_eval_metrics(str(output))["exact_match"]
        self.rows.append(Row(f"{stage}-eval", "eval", score, seconds, None, None, peak_rss_mb()))
        return score


def plain_trl_steps_per_second(
    checkpoint: str, data: Path, sft_recipe: Path, overrides: dict[str, Any], workdir: Path
) -> float:
    """Steps/s of a plain TRL SFT run on the SFT stage's configuration."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from tuneloop.local import convert
    from tuneloop.local.recipe_map import map_recipe
    from tuneloop.recipes.catalog import Platform
    from tuneloop.recipes.render import render_recipe
    from tuneloop.recipes.rules import RecipeContext

    recipe = render_recipe(sft_recipe, overrides, context=RecipeContext(platform=Platform.LOCAL))
    settings = map_recipe(recipe, device_type="cpu")
    records = convert.load_records(str(data), "sft")
    needed = settings.max_steps * settings.global_batch_size
    if needed < len(records):
        records = random.Random(settings.seed).sample(records, needed)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    args = SFTConfig(
        output_dir=str(workdir / "plain-trl"),
        max_steps=settings.max_steps,
        per_device_train_batch_size=settings.per_device_batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        learning_rate=settings.learning_rate,
        max_length=settings.max_length,
        gradient_checkpointing=False,
        bf16=False,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_steps=10,
        disable_tqdm=True,
        seed=settings.seed,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(records),
        processing_class=tokenizer,
    )
    started = time.monotonic()
    trainer.train()
    seconds = time.monotonic() - started
    return trainer.state.global_step / seconds


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(rows: list[Row]) -> None:
    print()
    print(
        f"{'stage':<14} {'exact match':>11} {'wall s':>8} {'steps':>6} {'steps/s':>8} "
        f"{'peak RSS MB':>12}"
    )
    for row in rows:
        print(
            f"{row.stage:<14} {_fmt(row.exact_match, '.3f'):>11} {row.seconds:>8.1f} "
            f"{_fmt(row.steps, 'd'):>6} {_fmt(row.steps_per_second, '.2f'):>8} "
            f"{row.peak_rss_mb:>12.0f}"
        )
    print("(peak RSS is this process's peak so far: every stage runs in one process)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="demo data seed (default 0)")
    parser.add_argument("--workdir", type=Path, help="where to write (default: a temp folder)")
    parser.add_argument("--quick", action="store_true", help="fewer steps: a smoke run")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)

    total_started = time.monotonic()
    from tuneloop.local.demo_task import write_demo_data
    from tuneloop.local.device import configure_torch

    threads = configure_torch()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tuneloop-demo-"))
    workdir = workdir.expanduser().absolute()
    if (workdir / "jobs").exists():
        shutil.rmtree(workdir / "jobs")
    data = write_demo_data(workdir / "data", args.seed, QUICK_SIZES if args.quick else None)
    print(f"workdir {workdir}, {threads} torch threads{', quick' if args.quick else ''}")

    c = Campaign(workdir, data, args.quick)
    scores: dict[str, float] = {"base": c.evaluate("base", BASE)}
    cpt = c.train("cpt", "cpt", "cpt.yaml", data["cpt"], BASE)
    scores["cpt"] = c.evaluate("cpt", cpt)
    sft_overrides = {"run.data_s3_path": str(data["train"]), "run.model_name_or_path": cpt}
    if args.quick:
        sft_overrides["training_config.max_steps"] = QUICK_STEPS["sft"]
    start = cpt
    for n in (1, 2):
        sft = c.train(f"r{n}-sft", "sft", "sft-full.yaml", data["train"], start)
        if n == 1:
            # Right after our SFT stage, so that both runs see the same machine load.
            ours_rate = c.rows[-1].steps_per_second or 0.0
            trl_rate = plain_trl_steps_per_second(
                cpt, data["train"], RECIPES / "sft-full.yaml", sft_overrides, workdir
            )
        scores[f"r{n}-sft"] = c.evaluate(f"r{n}-sft", sft)
        rft = c.train(f"r{n}-rft", "rft", "rft-full.yaml", data["rft"], sft)
        scores[f"r{n}-rft"] = c.evaluate(f"r{n}-rft", rft)
        start = rft

    print_table(c.rows)

    ratio = ours_rate / trl_rate if trl_rate else 0.0
    print(
        f"\nSFT steps/s: tuneloop {ours_rate:.2f}, plain TRL {trl_rate:.2f}: "
        f"ratio {ratio:.2f}x (target >= {MIN_TRL_RATIO}x)"
    )
    print(f"whole run: {time.monotonic() - total_started:.0f} s")

    failures = []
    for n in (1, 2):
        lift = scores[f"r{n}-sft"] - scores["base"]
        if lift < MIN_SFT_LIFT:
            failures.append(f"r{n}-sft lifts exact match by {lift:+.3f} over the base")
        drop = scores[f"r{n}-sft"] - scores[f"r{n}-rft"]
        if drop > MAX_RFT_DROP:
            failures.append(f"r{n}-rft lowers exact match by {drop:.3f}")
    for row in c.rows:
        if row.kind == "sft" and row.seconds >= MAX_SFT_SECONDS:
            failures.append(f"{row.stage} took {row.seconds:.0f} s (>= {MAX_SFT_SECONDS:.0f})")
        if row.kind == "rft" and row.seconds >= MAX_RFT_SECONDS:
            failures.append(f"{row.stage} took {row.seconds:.0f} s (>= {MAX_RFT_SECONDS:.0f})")
    if ratio < MIN_TRL_RATIO:
        failures.append(f"steps/s ratio to plain TRL {ratio:.2f} < {MIN_TRL_RATIO}")
    for failure in failures:
        print(f"MISSED: {failure}")
    if not failures:
        print("all targets met")
    return 1 if args.check and failures else 0


if __name__ == "__main__":
    sys.exit(main())
