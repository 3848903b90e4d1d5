"""From a validated SFT or CPT recipe to the local trainer's settings.

The local backend reads the same recipes Nova jobs take (Nova 1 and Nova 2 layouts) and gives
every field that has a meaning on one machine the same effect it has on the service:

| recipe | local trainer |
|---|---|
| ``lr`` | peak learning rate of AdamW |
| ``warmup_steps``, ``min_lr`` | linear warm-up, then cosine decay to ``min_lr`` (a floor, not 0) |
| ``constant_steps`` (Nova 1, Nova 2 CPT) | steps held at the peak after warm-up, then cosine |
| ``max_steps``, ``max_epochs`` | optimizer steps; with both, whichever ends first |
| ``global_batch_size`` | samples per optimizer step: per-device batch x gradient accumulation |
| ``micro_batch_size`` (Nova 1) | the per-device batch, when it divides the global batch |
| ``max_length`` | tokens per sample (longer samples are truncated) |
| ``weight_decay``, ``adam_beta1/2`` or ``betas``, ``eps`` | AdamW's settings |
| ``gradient_clip_val`` (Nova 1) | gradient-norm clipping (1.0 when unset) |
| ``log_every_n_steps`` (Nova 1) | logging interval |
| ``*_dropout`` (hidden, attention, ffn) | the model's dropouts, where it has them |
| ``val_check_interval``, ``limit_val_batches`` | validation interval and batches per check |
| ``peft_scheme: lora`` | a LoRA adapter over the frozen base |
| ``alpha`` | LoRA alpha; the rank is ``alpha / 2`` clamped to 4..64 (Nova recipes expose none) |
| ``adapter_dropout`` (Nova 1) | LoRA dropout of a new adapter |
| ``lora_plus_lr_ratio``, ``loraplus_lr_ratio`` | LoRA+: B matrices learn ``ratio`` times faster |

Fields with no meaning on one machine (replicas, MLflow settings, checkpoint retention,
reasoning, merge weights, distributed-optimizer switches, ...) are accepted and listed in
``TrainerSettings.ignored``, which the job log prints. Only fields the recipe actually sets are
listed, and empty values (``""``, ``null``, ``{}``) are left out.

No heavy library is imported here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from tuneloop.recipes.catalog import Method, Technique
from tuneloop.recipes.cpt import Nova1CptRecipe, Nova2CptRecipe
from tuneloop.recipes.rules import technique_of
from tuneloop.recipes.sft import Nova1SftRecipe, Nova2SftRecipe

DEFAULT_SEED = 0
"""Recipes carry no seed; every local run uses this one, so a run repeats exactly."""
CPU_MAX_DEVICE_BATCH = 32
"""Largest per-device batch on the CPU; a larger global batch accumulates gradients."""
GPU_MAX_DEVICE_BATCH = 64
LORA_RANK_RANGE = (4, 64)
DEFAULT_GRAD_CLIP = 1.0
DEFAULT_EPS = 1e-8
"""AdamW epsilon where the layout has no ``eps`` field (Nova 2 SFT)."""
DEFAULT_LOGGING_STEPS = 10

# Fields that change what the local trainer does, per recipe model ('*' matches one key).
_RUN_USED = (
    "run.name",
    "run.model_type",
    "run.model_name_or_path",
    "run.data_s3_path",
    "run.validation_data_s3_path",
    "run.validation_data_s3_path_list",
    "run.output_s3_path",
)
_NOVA1_MODEL_USED = (
    "training_config.model.hidden_dropout",
    "training_config.model.attention_dropout",
    "training_config.model.ffn_dropout",
    "training_config.model.optim.lr",
    "training_config.model.optim.eps",
    "training_config.model.optim.weight_decay",
    "training_config.model.optim.betas",
    "training_config.model.optim.sched.warmup_steps",
    "training_config.model.optim.sched.constant_steps",
    "training_config.model.optim.sched.min_lr",
)
USED_FIELDS: dict[type[BaseModel], tuple[str, ...]] = {
    Nova2SftRecipe: (
        *_RUN_USED,
        "training_config.max_steps",
        "training_config.max_length",
        "training_config.global_batch_size",
        "training_config.val_check_interval",
        "training_config.limit_val_batches",
        "training_config.lr_scheduler.warmup_steps",
        "training_config.lr_scheduler.min_lr",
        "training_config.optim_config.lr",
        "training_config.optim_config.weight_decay",
        "training_config.optim_config.adam_beta1",
        "training_config.optim_config.adam_beta2",
        "training_config.peft.peft_scheme",
        "training_config.peft.lora_tuning.alpha",
        "training_config.peft.lora_tuning.lora_plus_lr_ratio",
    ),
    Nova2CptRecipe: (
        *_RUN_USED,
        "training_config.task_type",
        "training_config.max_length",
        "training_config.global_batch_size",
        "training_config.trainer.max_steps",
        "training_config.trainer.val_check_interval",
        "training_config.trainer.limit_val_batches",
        "training_config.model.hidden_dropout",
        "training_config.model.attention_dropout",
        "training_config.optim.lr",
        "training_config.optim.eps",
        "training_config.optim.weight_decay",
        "training_config.optim.adam_beta1",
        "training_config.optim.adam_beta2",
        "training_config.optim.sched.warmup_steps",
        "training_config.optim.sched.constant_steps",
        "training_config.optim.sched.min_lr",
    ),
    Nova1SftRecipe: (
        *_RUN_USED,
        "training_config.task_type",
        "training_config.max_length",
        "training_config.global_batch_size",
        "training_config.micro_batch_size",
        "training_config.trainer.max_epochs",
        "training_config.trainer.max_steps",
        "training_config.trainer.log_every_n_steps",
        "training_config.trainer.val_check_interval",
        "training_config.trainer.gradient_clip_val",
        *_NOVA1_MODEL_USED,
        "training_config.model.peft.peft_scheme",
        "training_config.model.peft.lora_tuning.alpha",
        "training_config.model.peft.lora_tuning.loraplus_lr_ratio",
        "training_config.model.peft.lora_tuning.adapter_dropout",
    ),
    Nova1CptRecipe: (
        *_RUN_USED,
        "training_config.task_type",
        "training_config.max_length",
        "training_config.global_batch_size",
        "training_config.trainer.max_epochs",
        "training_config.trainer.max_steps",
        *_NOVA1_MODEL_USED,
    ),
}


@dataclass(frozen=True)
class LoraPlan:
    """The LoRA adapter a job trains (a continued adapter keeps its own rank and dropout)."""

    alpha: int
    rank: int
    dropout: float = 0.0
    plus_ratio: float | None = None
    """LoRA+ learning-rate ratio of the B matrices to the A matrices; None for plain LoRA."""


@dataclass(frozen=True)
class TrainerSettings:
    """What a recipe asks of the local trainer."""

    method: Method
    technique: Technique
    layout: str
    """``nova-1`` or ``nova-2``."""
    learning_rate: float
    min_lr: float
    warmup_steps: int
    constant_steps: int
    max_steps: int | None
    """Optimizer steps; None when epochs decide."""
    epochs: int | None
    """Passes over the data; None when max_steps decides."""
    global_batch_size: int
    per_device_batch_size: int
    gradient_accumulation_steps: int
    max_length: int
    weight_decay: float
    adam_beta1: float
    adam_beta2: float
    adam_epsilon: float
    max_grad_norm: float
    dropouts: dict[str, float] = field(default_factory=dict)
    """``attention_dropout``, ``hidden_dropout``, ``ffn_dropout``: applied where the model has
    such a dropout."""
    lora: LoraPlan | None = None
    val_check_interval: float | None = None
    """Validation every N steps (Nova 1: a value up to 1.0 is a fraction of an epoch)."""
    limit_val_batches: int | None = None
    """Validation batches per check; None for the whole set, 0 disables validation."""
    logging_steps: int = DEFAULT_LOGGING_STEPS
    seed: int = DEFAULT_SEED
    ignored: tuple[str, ...] = ()
    """Recipe fields set to a value that has no effect on the local backend."""

    def steps_per_epoch(self, num_samples: int) -> int:
        """Optimizer steps in one pass over ``num_samples`` samples (a short last batch counts)."""
        batches = math.ceil(max(num_samples, 1) / self.per_device_batch_size)
        return max(1, math.ceil(batches / self.gradient_accumulation_steps))

    def total_steps(self, num_samples: int) -> int:
        """Optimizer steps the job runs on ``num_samples`` training samples."""
        by_epochs = self.epochs * self.steps_per_epoch(num_samples) if self.epochs else None
        candidates = [s for s in (self.max_steps, by_epochs) if s]
        return min(candidates) if candidates else self.steps_per_epoch(num_samples)

    def eval_interval(self, num_samples: int) -> int | None:
        """Steps between validations, or None for no validation."""
        if self.val_check_interval is None or self.limit_val_batches == 0:
            return None
        interval = self.val_check_interval
        if self.layout == "nova-1" and interval <= 1.0:
            return max(1, round(interval * self.steps_per_epoch(num_samples)))
        return max(1, int(interval))

    def scheduler(self, total_steps: int) -> tuple[str, dict[str, Any]]:
        """``lr_scheduler_type`` and ``lr_scheduler_kwargs`` for transformers' Trainer:
        warm-up, ``constant_steps`` at the peak, then cosine decay to ``min_lr``."""
        warmup = min(self.warmup_steps, max(total_steps - 1, 0))
        min_ratio = min(self.min_lr / self.learning_rate, 1.0)
        if self.constant_steps > 0:
            stable = min(self.constant_steps, max(total_steps - warmup - 1, 0))
            # The stable phase is what is left between warm-up and decay.
            return "warmup_stable_decay", {
                "num_decay_steps": max(total_steps - warmup - stable, 1),
                "min_lr_ratio": min_ratio,
                "decay_type": "cosine",
            }
        return "cosine_with_min_lr", {"min_lr_rate": min_ratio}

    def describe(self) -> list[str]:
        """The settings as log lines."""
        steps = f"{self.max_steps} steps" if self.max_steps else ""
        if self.epochs:
            steps = f"{steps} or {self.epochs} epochs" if steps else f"{self.epochs} epochs"
        lines = [
            f"{self.method.value} {self.technique.value} ({self.layout} layout): {steps}, "
            f"global batch {self.global_batch_size} = {self.per_device_batch_size} x "
            f"{self.gradient_accumulation_steps} accumulation, max_length {self.max_length}",
            f"AdamW lr {self.learning_rate:g} (warm-up {self.warmup_steps}, "
            f"constant {self.constant_steps}, cosine to {self.min_lr:g}), weight decay "
            f"{self.weight_decay:g}, betas ({self.adam_beta1:g}, {self.adam_beta2:g}), eps "
            f"{self.adam_epsilon:g}, grad clip {self.max_grad_norm:g}, seed {self.seed}",
        ]
        if self.lora is not None:
            plus = f", LoRA+ ratio {self.lora.plus_ratio:g}" if self.lora.plus_ratio else ""
            lines.append(
                f"LoRA alpha {self.lora.alpha}, rank {self.lora.rank} (new adapters), dropout "
                f"{self.lora.dropout:g}{plus}"
            )
        if any(self.dropouts.values()):
            lines.append(
                "dropouts: " + ", ".join(f"{k} {v:g}" for k, v in self.dropouts.items() if v)
            )
        return lines


def lora_rank(alpha: int) -> int:
    """The rank of a new adapter: ``alpha / 2`` (LoRA's usual scale of 2), clamped to 4..64.

    Nova recipes set only alpha. The tiny model's best measured adapter is rank 32 at alpha 64."""
    low, high = LORA_RANK_RANGE
    return max(low, min(high, alpha // 2))


def split_batch(global_batch: int, cap: int, micro: int | None = None) -> tuple[int, int]:
    """(per-device batch, gradient accumulation steps) whose product is ``global_batch``.

    ``micro`` is used when it divides the global batch; otherwise the largest divisor of the
    global batch up to ``cap``."""
    if micro and micro <= global_batch and global_batch % micro == 0:
        return micro, global_batch // micro
    per_device = max(d for d in range(1, min(cap, global_batch) + 1) if global_batch % d == 0)
    return per_device, global_batch // per_device


def _model_of(recipe: Any) -> BaseModel:
    model = getattr(recipe, "model", recipe)
    if not isinstance(model, BaseModel):
        raise TypeError(f"expected a rendered recipe or a recipe model, not {type(recipe)!r}")
    return model


def map_recipe(
    recipe: Any,
    *,
    device_type: str = "cpu",
    seed: int = DEFAULT_SEED,
    max_device_batch: int | None = None,
) -> TrainerSettings:
    """The trainer settings of an SFT or CPT recipe (a ``RenderedRecipe`` or its model).

    ``ignored`` lists the fields the recipe sets that have no local effect: with a
    ``RenderedRecipe``, only the fields its document writes; with a bare model, every field
    set on it."""
    model = _model_of(recipe)
    if max_device_batch is None:
        max_device_batch = GPU_MAX_DEVICE_BATCH if device_type == "cuda" else CPU_MAX_DEVICE_BATCH
    data = getattr(recipe, "data", None)
    if not isinstance(data, Mapping):
        data = model.model_dump(mode="json", exclude_unset=True)
    ignored = tuple(ignored_fields(model, data))
    common: dict[str, Any] = {"seed": seed, "ignored": ignored}
    if isinstance(model, Nova2SftRecipe):
        return _nova2_sft(model, max_device_batch, common)
    if isinstance(model, Nova2CptRecipe):
        return _nova2_cpt(model, max_device_batch, common)
    if isinstance(model, Nova1SftRecipe | Nova1CptRecipe):
        return _nova1(model, max_device_batch, common)
    raise ValueError(
        f"{type(model).__name__} is not an SFT or CPT recipe; the local SFT/CPT trainer "
        "cannot run it"
    )


def _nova2_sft(model: Nova2SftRecipe, cap: int, common: dict[str, Any]) -> TrainerSettings:
    tc = model.training_config
    per_device, accumulation = split_batch(tc.global_batch_size, cap)
    lora = None
    if technique_of(model) is Technique.LORA:
        tuning = tc.peft.lora_tuning
        alpha = tuning.alpha if tuning else 64
        ratio = tuning.lora_plus_lr_ratio if tuning else None
        lora = LoraPlan(alpha=alpha, rank=lora_rank(alpha), plus_ratio=_plus(ratio))
    return TrainerSettings(
        method=Method.SFT,
        technique=technique_of(model),
        layout="nova-2",
        learning_rate=tc.optim_config.lr,
        min_lr=tc.lr_scheduler.min_lr,
        warmup_steps=tc.lr_scheduler.warmup_steps,
        constant_steps=0,
        max_steps=tc.max_steps,
        epochs=None,
        global_batch_size=tc.global_batch_size,
        per_device_batch_size=per_device,
        gradient_accumulation_steps=accumulation,
        max_length=tc.max_length,
        weight_decay=tc.optim_config.weight_decay,
        adam_beta1=tc.optim_config.adam_beta1,
        adam_beta2=tc.optim_config.adam_beta2,
        adam_epsilon=DEFAULT_EPS,
        max_grad_norm=DEFAULT_GRAD_CLIP,
        lora=lora,
        val_check_interval=tc.val_check_interval,
        limit_val_batches=tc.limit_val_batches,
        **common,
    )


def _nova2_cpt(model: Nova2CptRecipe, cap: int, common: dict[str, Any]) -> TrainerSettings:
    tc = model.training_config
    per_device, accumulation = split_batch(tc.global_batch_size, cap)
    optim = tc.optim
    return TrainerSettings(
        method=Method.CPT,
        technique=Technique.FULL,
        layout="nova-2",
        learning_rate=optim.lr,
        min_lr=optim.sched.min_lr,
        warmup_steps=optim.sched.warmup_steps,
        constant_steps=optim.sched.constant_steps,
        max_steps=tc.trainer.max_steps,
        epochs=None,
        global_batch_size=tc.global_batch_size,
        per_device_batch_size=per_device,
        gradient_accumulation_steps=accumulation,
        max_length=tc.max_length,
        weight_decay=optim.weight_decay,
        adam_beta1=optim.adam_beta1,
        adam_beta2=optim.adam_beta2,
        adam_epsilon=optim.eps,
        max_grad_norm=DEFAULT_GRAD_CLIP,
        dropouts={
            "hidden_dropout": tc.model.hidden_dropout,
            "attention_dropout": tc.model.attention_dropout,
        },
        val_check_interval=tc.trainer.val_check_interval,
        limit_val_batches=tc.trainer.limit_val_batches,
        **common,
    )


def _nova1(
    model: Nova1SftRecipe | Nova1CptRecipe, cap: int, common: dict[str, Any]
) -> TrainerSettings:
    tc = model.training_config
    trainer = tc.trainer
    block = tc.model
    optim = block.optim
    sft = isinstance(model, Nova1SftRecipe)
    micro = model.training_config.micro_batch_size if isinstance(model, Nova1SftRecipe) else None
    per_device, accumulation = split_batch(tc.global_batch_size, cap, micro)
    lora = None
    if isinstance(model, Nova1SftRecipe) and technique_of(model) is Technique.LORA:
        tuning = model.training_config.model.peft.lora_tuning
        alpha = tuning.alpha if tuning else 128
        lora = LoraPlan(
            alpha=alpha,
            rank=lora_rank(alpha),
            dropout=tuning.adapter_dropout if tuning else 0.01,
            plus_ratio=_plus(tuning.loraplus_lr_ratio if tuning else 16.0),
        )
    grad_clip = getattr(trainer, "gradient_clip_val", None)
    log_every = getattr(trainer, "log_every_n_steps", None)
    return TrainerSettings(
        method=Method.SFT if sft else Method.CPT,
        technique=technique_of(model),
        layout="nova-1",
        learning_rate=optim.lr,
        min_lr=optim.sched.min_lr,
        warmup_steps=optim.sched.warmup_steps,
        constant_steps=optim.sched.constant_steps,
        max_steps=trainer.max_steps,
        epochs=trainer.max_epochs if trainer.max_epochs > 0 else None,
        global_batch_size=tc.global_batch_size,
        per_device_batch_size=per_device,
        gradient_accumulation_steps=accumulation,
        max_length=tc.max_length,
        weight_decay=optim.weight_decay,
        adam_beta1=optim.betas[0],
        adam_beta2=optim.betas[1],
        adam_epsilon=optim.eps,
        max_grad_norm=DEFAULT_GRAD_CLIP if grad_clip is None else grad_clip,
        dropouts={
            "hidden_dropout": block.hidden_dropout,
            "attention_dropout": block.attention_dropout,
            "ffn_dropout": block.ffn_dropout,
        },
        lora=lora,
        val_check_interval=getattr(trainer, "val_check_interval", None),
        limit_val_batches=None,
        logging_steps=log_every or DEFAULT_LOGGING_STEPS,
        **common,
    )


def _plus(ratio: float | None) -> float | None:
    """LoRA+ applies for a ratio other than 1 (a ratio of 0 would freeze B: plain LoRA)."""
    return ratio if ratio and ratio != 1.0 else None


# -- ignored fields ------------------------------------------------------------------------------


def _leaves(data: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(data, Mapping) and data:
        for key, value in data.items():
            yield from _leaves(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, data


def _matcher(patterns: tuple[str, ...]) -> re.Pattern[str]:
    parts = [re.escape(p).replace(r"\*", r"[^.]+") for p in patterns]
    # A used field covers everything under it (a mapping such as validation_data_s3_path_list).
    return re.compile(r"^(?:" + "|".join(parts) + r")(?:\..+)?$")


def ignored_fields(model: BaseModel, data: Mapping[str, Any]) -> list[str]:
    """Dotted paths of the fields ``data`` sets to a non-empty value that the local trainer
    does not use, in document order."""
    used = _matcher(USED_FIELDS.get(type(model), _RUN_USED))
    return [
        path
        for path, value in _leaves(data)
        if path and value not in (None, "", {}, []) and not used.match(path)
    ]
