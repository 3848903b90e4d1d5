"""Supervised fine-tuning (full-rank and LoRA) and continued pre-training on the local backend.

Both run TRL's ``SFTTrainer``:

- SFT reads Bedrock Converse JSONL, converted to prompt/completion chat records
  (``convert.py``); the loss covers the completion only (the tiny model's chat template makes
  "prompt + generation prompt" an exact prefix of "prompt + completion").
- CPT reads ``{"text"}`` JSONL and trains a causal LM on the whole text (loss on every token,
  an end token appended to each text). CPT is always full-rank.

A job starts from ``run.model_name_or_path``: ``tiny-chat``, or the checkpoint (or output
folder) of an earlier local job. Full-rank continues the full weights. LoRA continues the
earlier job's adapter over its frozen base, or puts a new adapter on a base model
(``model.load_model``); the recipe's alpha and rank shape only a new adapter.

With validation data (``run.validation_data_s3_path``, and for SFT the labelled sets of
``run.validation_data_s3_path_list``), the loss on ``limit_val_batches`` batches of each set is
logged every ``val_check_interval`` steps and after the last step.

Everything a job writes goes to its output folder, in the layout Nova jobs use:

- ``checkpoint/``: the trained model (``model.save_checkpoint``);
- ``manifest.json`` (``checkpoint_s3_bucket``) and ``checkpoint.json`` (model type,
  technique, platform, lineage = the base's lineage + this method);
- ``tensorboard/``: scalars under the names NeMo-based Nova training jobs log (METRIC_NAMES):
  ``reduced_train_loss``, ``lr``, ``grad_norm``, ``val_loss``, ``global_step``,
  ``consumed_samples``, ``train_step_timing``, plus the throughput ``examples_per_s`` and
  ``tokens_per_s`` (measured between two logging steps, validation time left out). NaN and
  infinite values are written as they are: a diverging loss shows;
- ``training.log``: the settings, the ignored recipe fields, and one metrics line per logging
  step in Nova's HyperPod form (``step 20/20 | global_step: 20 | reduced_train_loss: 0.12 |
  ...``), under the same names as the scalars, echoed to the job log, where
  ``tuneloop.artifacts.series.LogMetrics`` reads the curves while the job runs.

Progress goes to the ``progress(step, total)`` callback after every optimizer step.
"""

from __future__ import annotations

import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneloop import storage
from tuneloop.artifacts.series import EXAMPLES_PER_S, TOKENS_PER_S
from tuneloop.errors import ConfigError, Problem
from tuneloop.local import outputs
from tuneloop.local.recipe_map import TrainerSettings, map_recipe
from tuneloop.recipes.catalog import Method

Progress = Callable[[int, int | None], None]

METRIC_NAMES: dict[str, str] = {
    "loss": "reduced_train_loss",
    "learning_rate": "lr",
    "grad_norm": "grad_norm",
    "eval_loss": "val_loss",
    "eval_validation_loss": "val_loss",
    "mean_token_accuracy": "train_token_accuracy",
    "eval_mean_token_accuracy": "val_token_accuracy",
    "eval_validation_mean_token_accuracy": "val_token_accuracy",
}
"""Hugging Face log keys -> the TensorBoard tags Nova's (NeMo-based) SFT and CPT jobs use.
Extra validation sets log ``val_loss/<label>``; other numeric keys keep their names."""
_SKIPPED_LOGS = ("epoch", "total_flos", "num_tokens", "entropy", "runtime", "per_second")
"""Log keys (or key endings) that are not written as scalars."""
_SUMMARY_KEYS = (
    "train_runtime",
    "train_samples_per_second",
    "train_steps_per_second",
    "train_loss",
)

DROPOUT_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "attention_dropout": ("attention_dropout", "attention_probs_dropout_prob", "attn_pdrop"),
    "hidden_dropout": ("hidden_dropout", "hidden_dropout_prob", "resid_pdrop"),
    "ffn_dropout": ("ffn_dropout", "activation_dropout", "mlp_dropout"),
}
"""Model config attributes each recipe dropout sets, where the model has one (Llama models,
the tiny chat model included, have only attention dropout)."""


# -- the entry points ---------------------------------------------------------------------------


def train_sft(
    recipe: Any,
    spec: Any,
    progress: Progress | None = None,
    base: Any = None,
    *,
    device: Any = None,
    settings: TrainerSettings | None = None,
) -> dict[str, Any]:
    """Supervised fine-tuning, full-rank or LoRA; returns the job's result.

    ``recipe`` is a ``RenderedRecipe``; ``spec`` the job (``name``, ``output``); ``base`` what
    to start from (a ``train.BaseCheckpoint`` or a name or path; default the recipe's
    ``run.model_name_or_path``); ``device`` a ``DeviceChoice`` (default: picked without
    touching torch's threads); ``settings`` replaces the recipe's mapped settings."""
    return _train(Method.SFT, recipe, spec, progress, base, device, settings)


def train_cpt(
    recipe: Any,
    spec: Any,
    progress: Progress | None = None,
    base: Any = None,
    *,
    device: Any = None,
    settings: TrainerSettings | None = None,
) -> dict[str, Any]:
    """Continued pre-training (full-rank causal LM on text); arguments as ``train_sft``."""
    return _train(Method.CPT, recipe, spec, progress, base, device, settings)


# -- data ---------------------------------------------------------------------------------------


def _records(uri: str, fmt: str, what: str, limit: int | None = None) -> list[dict[str, Any]]:
    from tuneloop.local.convert import load_records

    if storage.is_s3(uri):
        raise ConfigError([Problem(what, f"{uri} is on S3; the local backend reads local files")])
    records = load_records(uri, fmt, limit=limit)
    if not records:
        raise ConfigError([Problem(what, f"{uri} holds no records")])
    return records


def _datasets(
    recipe: Any, method: Method, settings: TrainerSettings
) -> tuple[Any, dict[str, Any], int]:
    """The training dataset, the validation datasets by label and the number of training
    records in the file."""
    from datasets import Dataset

    run = recipe.model.run
    fmt = "sft" if method is Method.SFT else "cpt"
    if not run.data_s3_path:
        raise ConfigError([Problem("run.data_s3_path", "training data path is empty")])
    records = _records(run.data_s3_path, fmt, "run.data_s3_path")
    available = len(records)
    needed = (settings.max_steps or 0) * settings.global_batch_size
    if settings.epochs is None and 0 < needed < len(records):
        # A run bounded by max_steps sees max_steps x global batch samples of one shuffled
        # pass; a seeded random subset of that size is the same draw, tokenized faster.
        records = random.Random(settings.seed).sample(records, needed)
    train = Dataset.from_list(records)
    validation: dict[str, Any] = {}
    if settings.limit_val_batches == 0:
        return train, validation, available
    limit = (
        settings.limit_val_batches * settings.per_device_batch_size
        if settings.limit_val_batches
        else None
    )
    sets = {"validation": run.validation_data_s3_path} if run.validation_data_s3_path else {}
    for label, uri in (getattr(run, "validation_data_s3_path_list", None) or {}).items():
        sets[str(label)] = uri
    for label, uri in sets.items():
        where = (
            "run.validation_data_s3_path"
            if label == "validation"
            else f"run.validation_data_s3_path_list.{label}"
        )
        validation[label] = Dataset.from_list(_records(uri, fmt, where, limit))
    return train, validation, available


# -- the model ----------------------------------------------------------------------------------


def apply_dropouts(model: Any, dropouts: dict[str, float]) -> tuple[dict[str, Any], list[str]]:
    """Set the recipe's dropouts on the model's config and on the modules that copied them.

    Returns the previous config values (to restore before saving) and the dropouts set to a
    non-zero value that this model has no place for."""
    config = getattr(model, "config", None)
    previous: dict[str, Any] = {}
    missing: list[str] = []
    for name, value in dropouts.items():
        attributes = [a for a in DROPOUT_ATTRIBUTES.get(name, (name,)) if hasattr(config, a)]
        if not attributes:
            if value:
                missing.append(name)
            continue
        for attribute in attributes:
            previous[attribute] = getattr(config, attribute)
            _set_dropout(model, attribute, value)
    return previous, missing


def _set_dropout(model: Any, attribute: str, value: float) -> None:
    import torch

    setattr(model.config, attribute, value)
    for module in model.modules():
        current = getattr(module, attribute, None)
        if isinstance(current, float):
            setattr(module, attribute, float(value))
        elif isinstance(current, torch.nn.Dropout):
            current.p = float(value)


def _restore_dropouts(model: Any, previous: dict[str, Any]) -> None:
    for attribute, value in previous.items():
        _set_dropout(model, attribute, value)


def _optimizer(model: Any, settings: TrainerSettings) -> Any:
    """The LoRA+ optimizer (AdamW, B matrices at ``ratio`` times the rate), or None."""
    if settings.lora is None or not settings.lora.plus_ratio:
        return None
    import torch
    from peft.optimizers import create_loraplus_optimizer

    return create_loraplus_optimizer(
        model,
        torch.optim.AdamW,
        lr=settings.learning_rate,
        loraplus_lr_ratio=settings.lora.plus_ratio,
        loraplus_weight_decay=settings.weight_decay,
        betas=(settings.adam_beta1, settings.adam_beta2),
        eps=settings.adam_epsilon,
    )


# -- callbacks ----------------------------------------------------------------------------------


def _callback(
    progress: Progress,
    writer: Any,
    log: outputs.JobLog,
    settings: TrainerSettings,
    history: list[tuple[int, float]],
    validate: bool,
) -> Any:
    from transformers import TrainerCallback

    class JobCallback(TrainerCallback):
        """Progress after every optimizer step; Nova-named scalars and a metrics line per log."""

        def __init__(self) -> None:
            self.throughput = _Throughput(settings.global_batch_size)

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.throughput.start(state.global_step)
            progress(state.global_step, state.max_steps)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            progress(state.global_step, state.max_steps)
            if state.global_step >= state.max_steps:
                # The final loss and validation, whatever the intervals.
                control.should_log = True
                control.should_evaluate = validate
            return control

        def on_log(
            self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any
        ) -> None:
            step = state.global_step
            logs = dict(logs or {})
            if any(key in logs for key in _SUMMARY_KEYS):
                summary = ", ".join(f"{k} {logs[k]:.4g}" for k in _SUMMARY_KEYS if k in logs)
                log(f"finished: {summary}")
                return
            scalars = _scalars(logs)
            if "loss" in logs:
                history.append((step, float(logs["loss"])))
                scalars["global_step"] = float(step)
                scalars["consumed_samples"] = float(step * settings.global_batch_size)
                scalars.update(self.throughput.measure(step, logs.get("num_tokens")))
            else:  # a validation: its time is no training time
                self.throughput.pause(step)
            for name, value in scalars.items():
                writer.add_scalar(name, value, step)
            writer.flush()
            log(outputs.metrics_line(step, state.max_steps, scalars))

    return JobCallback()


def _scalars(logs: dict[str, Any]) -> dict[str, float]:
    """The numeric values of a Hugging Face log, under Nova's names; NaN and infinities are
    kept (a diverging loss must show)."""
    scalars: dict[str, float] = {}
    for key, value in logs.items():
        if key.endswith(_SKIPPED_LOGS) or isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            scalars[_metric_name(key)] = float(value)
    return scalars


class _Throughput:
    """Seconds per step, examples and tokens per second between two training logs."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.last: tuple[float, int, float | None] | None = None
        """(clock, step, tokens seen) at the previous training log."""

    def start(self, step: int) -> None:
        self.last = (time.monotonic(), step, 0.0)

    def pause(self, step: int) -> None:
        """Restart the clock after a validation run at the step of the last training log."""
        if self.last is not None and self.last[1] == step:
            self.last = (time.monotonic(), step, self.last[2])

    def measure(self, step: int, tokens: Any) -> dict[str, float]:
        now = time.monotonic()
        seen = float(tokens) if isinstance(tokens, int | float) else None
        measured: dict[str, float] = {}
        if self.last is not None and step > self.last[1] and now > self.last[0]:
            seconds, steps = now - self.last[0], step - self.last[1]
            measured["train_step_timing"] = seconds / steps
            measured[EXAMPLES_PER_S] = steps * self.batch_size / seconds
            if seen is not None and self.last[2] is not None:
                measured[TOKENS_PER_S] = (seen - self.last[2]) / seconds
        self.last = (now, step, seen)
        return measured


def _metric_name(key: str) -> str:
    if key in METRIC_NAMES:
        return METRIC_NAMES[key]
    if key.startswith("eval_") and key.endswith("_loss"):
        return f"val_loss/{key.removeprefix('eval_').removesuffix('_loss')}"
    if key.startswith("eval_"):
        return f"val_{key.removeprefix('eval_')}"
    return key


# -- the run ------------------------------------------------------------------------------------


def _base(recipe: Any, base: Any) -> Any:
    from tuneloop.local.train import BaseCheckpoint, resolve_base

    if isinstance(base, BaseCheckpoint):
        return base
    name = str(base) if base else recipe.model.run.model_name_or_path
    return resolve_base(name, model_type=recipe.model_type)


def _train(
    method: Method,
    recipe: Any,
    spec: Any,
    progress: Progress | None,
    base: Any,
    device: Any,
    settings: TrainerSettings | None,
) -> dict[str, Any]:
    from tuneloop.local.device import choose_device
    from tuneloop.local.train import job_output_dir, no_progress, write_training_outputs

    started = time.monotonic()
    if recipe.method is not method:
        raise ValueError(f"a {recipe.kind} recipe cannot run as {method.value}")
    progress = progress or no_progress
    device = device or choose_device(configure=False)
    settings = settings or map_recipe(recipe, device_type=device.type)
    output_dir = job_output_dir(spec, recipe)
    checkpoint_dir = output_dir / outputs.CHECKPOINT_DIR
    log = outputs.JobLog(output_dir / outputs.TRAINING_LOG)
    scratch = Path(tempfile.mkdtemp(prefix=".trainer-", dir=output_dir))
    writer = None
    try:
        base_checkpoint = _base(recipe, base)
        _log_start(log, spec, method, base_checkpoint, device, settings)
        _refuse_overwriting_base(base_checkpoint, checkpoint_dir)
        writer = outputs.tensorboard_writer(output_dir)
        job = _FitJob(
            method=method,
            recipe=recipe,
            progress=progress,
            base=base_checkpoint,
            device=device,
            settings=settings,
            log=log,
            writer=writer,
            scratch=scratch,
            checkpoint_dir=checkpoint_dir,
        )
        result = _fit(job)
        record = write_training_outputs(output_dir, checkpoint_dir, recipe, base_checkpoint)
        result.update(
            checkpoint=record.uri,
            output=str(output_dir),
            technique=record.technique.value,
            lineage=[m.value for m in record.lineage],
            ignored=list(settings.ignored),
            seconds=round(time.monotonic() - started, 2),
        )
        log(
            f"checkpoint {record.uri} ({record.technique.value}, lineage "
            f"{' -> '.join(result['lineage'])}); {result['steps']} steps in "
            f"{result['train_seconds']:.1f}s ({result['steps_per_second']:.2f} steps/s), "
            f"loss {result['first_loss']:.4f} -> {result['final_loss']:.4f}"
        )
        return result
    except Exception as exc:
        log(f"failed: {type(exc).__name__}: {exc}")
        raise
    finally:
        if writer is not None:
            writer.close()
        shutil.rmtree(scratch, ignore_errors=True)


def _log_start(
    log: outputs.JobLog,
    spec: Any,
    method: Method,
    base: Any,
    device: Any,
    settings: TrainerSettings,
) -> None:
    log(
        f"job {getattr(spec, 'name', '')}: {method.value.upper()} from "
        f"{base.name_or_path} on {device.describe()}"
    )
    for line in settings.describe():
        log(line)
    if settings.ignored:
        # run_recipe has printed them in the job log already.
        log("ignored (no local meaning): " + ", ".join(settings.ignored), echo=False)


def _refuse_overwriting_base(base: Any, checkpoint_dir: Path) -> None:
    base_path = storage.local_path(base.name_or_path)
    if base_path.exists() and base_path.resolve().is_relative_to(checkpoint_dir.resolve()):
        raise ConfigError(
            [
                Problem(
                    "run.output_s3_path",
                    "the job would overwrite the checkpoint it starts from",
                    fix="give the job its own output folder",
                )
            ]
        )


@dataclass(frozen=True)
class _FitJob:
    """One training run's inputs: what to train, from where, on what, and where it reports."""

    method: Method
    recipe: Any
    progress: Progress
    base: Any
    device: Any
    settings: TrainerSettings
    log: outputs.JobLog
    writer: Any
    scratch: Path
    checkpoint_dir: Path


@dataclass(frozen=True)
class _Schedule:
    """How long the run is: optimizer steps, the validation interval (None: no validation) and
    the token length of a training sample."""

    total: int
    interval: int | None
    max_length: int


def _fit(job: _FitJob) -> dict[str, Any]:
    from transformers import PrinterCallback, ProgressCallback
    from trl import SFTTrainer

    loaded, previous = _load(job)
    train, validation, available = _datasets(job.recipe, job.method, job.settings)
    schedule = _schedule(job.settings, loaded.model, len(train), bool(validation))
    job.log(
        f"data: {len(train)} of {available} training records"
        + "".join(f", {len(d)} {label} records" for label, d in validation.items())
        + f"; {schedule.total} steps"
        + (f", validation every {schedule.interval} steps" if schedule.interval else "")
    )
    args = _sft_config(job, schedule)
    eval_dataset: Any = validation or None
    if list(validation) == ["validation"]:
        eval_dataset = validation["validation"]
    history: list[tuple[int, float]] = []
    optimizer = _optimizer(loaded.model, job.settings)
    callback = _callback(job.progress, job.writer, job.log, job.settings, history, bool(validation))
    trainer = SFTTrainer(
        model=loaded.model,
        args=args,
        train_dataset=train,
        eval_dataset=eval_dataset,
        processing_class=loaded.tokenizer,
        optimizers=(optimizer, None),
        callbacks=[callback],
    )
    for unwanted in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(unwanted)
    fit_started = time.monotonic()
    output = trainer.train()
    train_seconds = time.monotonic() - fit_started
    steps = int(trainer.state.global_step)
    job.progress(steps, schedule.total)
    _save(job, loaded, trainer.model, previous)
    losses = [loss for _, loss in history]
    final = losses[-1] if losses else float(output.training_loss)
    return {
        "kind": job.method.value,
        "steps": steps,
        "train_seconds": round(train_seconds, 2),
        "steps_per_second": round(steps / train_seconds, 3) if train_seconds > 0 else None,
        "first_loss": losses[0] if losses else final,
        "final_loss": final,
        "mean_loss": float(output.training_loss),
        "train_records": len(train),
        "available_records": available,
    }


def _load(job: _FitJob) -> tuple[Any, dict[str, Any]]:
    """Seed, load the base model ready to train and set the recipe's dropouts; returns the
    loaded model and the dropouts to restore before saving."""
    from transformers import set_seed

    from tuneloop.local.model import LoraSettings, load_model

    _quiet_progress_bars()
    set_seed(job.settings.seed)
    lora = job.settings.lora
    loaded = load_model(
        job.base.name_or_path,
        job.device,
        technique=job.settings.technique.value,
        trainable=True,
        lora=LoraSettings(rank=lora.rank, alpha=lora.alpha, dropout=lora.dropout) if lora else None,
    )
    if lora is not None and loaded.path != loaded.base_path:
        job.log(
            f"continuing the LoRA adapter of {loaded.path} (its rank and alpha are kept) over "
            f"the frozen base {loaded.base_path}"
        )
    previous, missing = apply_dropouts(loaded.model, job.settings.dropouts)
    if missing:
        job.log(f"no such dropout in this model, not applied: {', '.join(missing)}")
    return loaded, previous


def _schedule(settings: TrainerSettings, model: Any, records: int, validate: bool) -> _Schedule:
    total = settings.total_steps(records)
    # Validation every val_check_interval steps and after the last step.
    interval = (settings.eval_interval(records) or total) if validate else None
    interval = min(interval, total) if interval else None
    context = getattr(model.config, "max_position_embeddings", None)
    max_length = min(settings.max_length, context) if context else settings.max_length
    return _Schedule(total=total, interval=interval, max_length=max_length)


def _sft_config(job: _FitJob, schedule: _Schedule) -> Any:
    from trl import SFTConfig

    settings, device, total = job.settings, job.device, schedule.total
    scheduler, scheduler_kwargs = settings.scheduler(total)
    return SFTConfig(
        output_dir=str(job.scratch),
        max_steps=total,
        per_device_train_batch_size=settings.per_device_batch_size,
        per_device_eval_batch_size=settings.per_device_batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        learning_rate=settings.learning_rate,
        lr_scheduler_type=scheduler,
        lr_scheduler_kwargs=scheduler_kwargs,
        warmup_steps=min(settings.warmup_steps, max(total - 1, 0)),
        weight_decay=settings.weight_decay,
        adam_beta1=settings.adam_beta1,
        adam_beta2=settings.adam_beta2,
        adam_epsilon=settings.adam_epsilon,
        max_grad_norm=settings.max_grad_norm,
        optim="adamw_torch",
        max_length=schedule.max_length,
        completion_only_loss=True if job.method is Method.SFT else None,
        packing=False,
        logging_steps=settings.logging_steps,
        logging_first_step=True,
        eval_strategy="steps" if schedule.interval else "no",
        eval_steps=schedule.interval,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=settings.seed,
        data_seed=settings.seed,
        use_cpu=device.type == "cpu",
        bf16=bool(device.bf16),
        fp16=False,
        activation_checkpointing=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=device.type == "cuda",
    )


def _save(job: _FitJob, loaded: Any, model: Any, previous: dict[str, Any]) -> None:
    """Write the trained model as the job's checkpoint, its dropouts as the base had them."""
    from tuneloop.local.model import save_checkpoint

    model.eval()
    _restore_dropouts(model, previous)
    if job.checkpoint_dir.exists():
        shutil.rmtree(job.checkpoint_dir)
    save_checkpoint(loaded, job.checkpoint_dir, model=model, method=job.method.value)


def _quiet_progress_bars() -> None:
    """No tqdm bars from datasets and transformers: the job log gets one line per log step."""
    import datasets
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
