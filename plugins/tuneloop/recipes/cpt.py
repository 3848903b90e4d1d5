"""Continued pre-training recipes (causal LM on `{"text": ...}` records), Nova 1 and Nova 2 layouts.

CPT is always full-rank, runs on HyperPod only, and accepts sequences of at most 8,192 tokens.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from tuneloop.recipes.common import (
    LearningRate,
    Nova1Sched,
    PositiveInt,
    Probability,
    RunConfig,
    StrictModel,
)
from tuneloop.recipes.sft import Nova1ModelBlock

CptMaxLength = Annotated[int, Field(ge=1, le=8192)]
CptBatchSize = Literal[32, 64, 128, 256]


class Nova1CptTrainer(StrictModel):
    """Trainer settings (`training_config.trainer`)."""

    max_epochs: Annotated[int, Field(ge=-1, le=100)] = 1
    """Passes over the training data; -1 lets `max_steps` decide."""
    max_steps: PositiveInt | None = None
    """Stop after this many optimizer steps. Set one of max_epochs and max_steps, not both."""


class Nova1CptTrainingConfig(StrictModel):
    """`training_config` of a Nova 1 CPT recipe."""

    max_length: CptMaxLength = 8192
    """Maximum sequence length in tokens (at most 8,192 for CPT)."""
    global_batch_size: CptBatchSize = 256
    """Samples per optimizer step across all devices."""
    task_type: Literal["cpt"] | None = None
    """Training task; `cpt` for this recipe."""
    trainer: Nova1CptTrainer = Nova1CptTrainer()
    """Trainer."""
    model: Nova1ModelBlock = Nova1ModelBlock()
    """Model and optimizer."""


class Nova1CptRecipe(StrictModel):
    """CPT recipe for Nova Micro, Lite and Pro."""

    run: RunConfig
    """What to train and where."""
    training_config: Nova1CptTrainingConfig = Nova1CptTrainingConfig()
    """How to train."""


class Nova2CptTrainer(StrictModel):
    """Trainer settings (`training_config.trainer`)."""

    max_steps: Annotated[int, Field(ge=10, le=100_000)] = 10
    """Optimizer steps to train (at least 10)."""
    val_check_interval: Annotated[int, Field(ge=1)] | None = None
    """Validation interval in steps."""
    limit_val_batches: Annotated[int, Field(ge=0)] | None = None
    """Validation batches per check."""


class Nova2CptModel(StrictModel):
    hidden_dropout: Probability = 0.0
    """Probability of dropping hidden-state outputs."""
    attention_dropout: Probability = 0.0
    """Probability of dropping attention weights."""


class Nova2CptOptim(StrictModel):
    """Optimizer (`training_config.optim`)."""

    optimizer: Literal["adam"] = "adam"
    """Optimizer family."""
    lr: LearningRate = 1e-5
    """Peak learning rate; 1e-6..1e-4 works best."""
    name: Literal["distributed_fused_adam"] = "distributed_fused_adam"
    """Optimizer implementation; the service supports only distributed_fused_adam."""
    adam_w_mode: bool = True
    """Decoupled weight decay (AdamW)."""
    eps: Annotated[float, Field(gt=0.0, le=1.0)] = 1e-6
    """Adam epsilon."""
    weight_decay: Probability = 0.0
    """L2 regularization strength."""
    adam_beta1: Probability = 0.9
    """Adam beta1."""
    adam_beta2: Probability = 0.95
    """Adam beta2."""
    sched: Nova1Sched = Nova1Sched()
    """Learning-rate schedule."""


class Nova2CptTrainingConfig(StrictModel):
    """`training_config` of a Nova 2 CPT recipe."""

    task_type: Literal["cpt"] = "cpt"
    """Training task."""
    max_length: CptMaxLength = 8192
    """Maximum sequence length in tokens (at most 8,192 for CPT)."""
    global_batch_size: CptBatchSize = 256
    """Samples per optimizer step across all devices."""
    trainer: Nova2CptTrainer = Nova2CptTrainer()
    """Trainer."""
    model: Nova2CptModel = Nova2CptModel()
    """Dropouts."""
    optim: Nova2CptOptim = Nova2CptOptim()
    """Optimizer."""


class Nova2CptRecipe(StrictModel):
    """CPT recipe for Nova 2 Lite and the local backend."""

    run: RunConfig
    """What to train and where."""
    training_config: Nova2CptTrainingConfig = Nova2CptTrainingConfig()
    """How to train."""
