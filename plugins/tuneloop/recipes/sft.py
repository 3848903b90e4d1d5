"""Supervised fine-tuning recipes, full-rank and LoRA (PEFT), in the Nova 1 and Nova 2 layouts.

Nova 1 (Micro, Lite, Pro) nests the optimizer under `training_config.model.optim`; Nova 2 Lite
flattens it into `training_config.optim_config` and counts steps instead of epochs. Both layouts
are modelled as the service documents them, so a recipe copied from the docs validates as is.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from tuneloop.recipes.common import (
    LearningRate,
    LrScheduler,
    NonNegativeFloat,
    NonNegativeInt,
    Nova1Sched,
    NullString,
    OptimConfig,
    PathOrS3Uri,
    PositiveInt,
    Probability,
    RunConfig,
    StrictModel,
)

LoraAlpha = Literal[32, 64, 96, 128, 160, 192]


# --- Nova 1 layout, shared with Nova 1 CPT ----------------------------------------------------


class Nova1Optim(StrictModel):
    """Optimizer (`training_config.model.optim`)."""

    lr: LearningRate = 1e-5
    """Peak learning rate. Full-rank SFT accepts 1e-6..1e-3; 1e-6..1e-4 works best."""
    name: Literal["distributed_fused_adam"] = "distributed_fused_adam"
    """Optimizer algorithm; the service supports only distributed_fused_adam."""
    adam_w_mode: bool = True
    """Decoupled weight decay (AdamW)."""
    eps: Annotated[float, Field(gt=0.0, le=1.0)] = 1e-6
    """Adam epsilon, for numerical stability."""
    weight_decay: Probability = 0.0
    """L2 regularization strength; 0.01-0.1 regularizes more."""
    betas: tuple[Probability, Probability] = (0.9, 0.999)
    """Adam betas (beta1, beta2)."""
    sched: Nova1Sched = Nova1Sched()
    """Learning-rate schedule."""
    bucket_cap_mb: PositiveInt | None = None
    """Gradient bucket size for distributed reduction (advanced)."""
    contiguous_grad_buffer: bool | None = None
    """Keep gradients in one contiguous buffer (advanced)."""
    overlap_param_sync: bool | None = None
    """Overlap parameter all-gather with compute (advanced)."""
    contiguous_param_buffer: bool | None = None
    """Keep parameters in one contiguous buffer (advanced)."""
    overlap_grad_sync: bool | None = None
    """Overlap gradient reduce-scatter with compute (advanced)."""


class ProjectorFreeze(StrictModel):
    freeze: bool = True
    """Keep this projector's weights frozen."""
    require_newline: bool | None = None
    """Insert a newline after the projected tokens."""


class LlmFreeze(StrictModel):
    freeze: bool = False
    """Keep the language model's weights frozen."""


class MultimodalConfig(StrictModel):
    """Which parts of a multimodal model train (`training_config.model.mm_cfg`)."""

    llm: LlmFreeze = LlmFreeze()
    """The language model."""
    image_projector: ProjectorFreeze = ProjectorFreeze()
    """The image projector."""
    video_projector: ProjectorFreeze = ProjectorFreeze()
    """The video projector."""


class Nova1ModelBlock(StrictModel):
    """Model settings (`training_config.model`)."""

    hidden_dropout: Probability = 0.0
    """Probability of dropping hidden-state outputs; raise by 0.0-0.2 on small datasets."""
    attention_dropout: Probability = 0.0
    """Probability of dropping attention weights."""
    ffn_dropout: Probability = 0.0
    """Probability of dropping feed-forward outputs."""
    sequence_parallel: bool | None = None
    """Shard activations along the sequence (advanced)."""
    optim: Nova1Optim = Nova1Optim()
    """Optimizer."""
    mm_cfg: MultimodalConfig | None = None
    """Multimodal freezing (Lite and Pro)."""


class Nova1LoraTuning(StrictModel):
    """LoRA settings (Nova 1)."""

    loraplus_lr_ratio: Annotated[float, Field(ge=0.0, le=100.0)] = 16.0
    """LoRA+ learning-rate ratio between the B and A matrices (8.0 suggested for multimodal)."""
    alpha: LoraAlpha = 128
    """Scaling factor of the LoRA weights (32 suggested for multimodal)."""
    adapter_dropout: Probability = 0.01
    """Dropout on the adapter, for regularization."""


class Nova1Peft(StrictModel):
    """Parameter-efficient fine-tuning. `peft_scheme: null` is full-rank."""

    peft_scheme: Annotated[Literal["lora"] | None, NullString] = None
    """`lora` for LoRA adapters; null for full-rank training."""
    lora_tuning: Nova1LoraTuning | None = None
    """LoRA settings, used when peft_scheme is `lora`."""


class Nova1SftModelBlock(Nova1ModelBlock):
    peft: Nova1Peft = Nova1Peft()
    """Full-rank (null) or LoRA."""


class Nova1SftTrainer(StrictModel):
    """Trainer settings (`training_config.trainer`)."""

    max_epochs: Annotated[int, Field(ge=-1, le=5)] = 1
    """Passes over the training data, at most 5; -1 lets `max_steps` decide. Set one of
    max_epochs and max_steps, not both."""
    max_steps: PositiveInt | None = None
    """Stop after this many optimizer steps."""
    log_every_n_steps: PositiveInt | None = None
    """Logging interval in steps."""
    val_check_interval: Annotated[float, Field(gt=0)] | None = None
    """Validation interval in steps (or a fraction of an epoch)."""
    limit_test_batches: NonNegativeInt | None = None
    """Test batches per evaluation."""
    gradient_clip_val: NonNegativeFloat | None = None
    """Gradient-norm clipping threshold."""
    num_nodes: PositiveInt | None = None
    """Nodes used (normally the run's replicas)."""


class CheckpointCallback(StrictModel):
    monitor: str = "step"
    """Quantity that ranks checkpoints."""
    save_top_k: PositiveInt = 10
    """Checkpoints kept."""
    mode: Literal["min", "max"] = "max"
    """Whether lower or higher `monitor` is better."""
    every_n_train_steps: PositiveInt | None = None
    """Checkpoint interval in steps."""
    save_last: bool = True
    """Always keep the last checkpoint."""


class EarlyStopping(StrictModel):
    min_delta: NonNegativeFloat = 0.001
    """Smallest change that counts as an improvement."""
    mode: Literal["min", "max"] = "min"
    """Whether lower or higher `monitor` is better."""
    monitor: str = "val_loss"
    """Quantity watched."""
    patience: PositiveInt = 2
    """Checks without improvement before stopping."""


class ExpManager(StrictModel):
    """Experiment logging and checkpointing (`training_config.exp_manager`)."""

    exp_dir: str | None = None
    """Experiment directory inside the container."""
    create_wandb_logger: bool = False
    """Weights & Biases logging (not supported by the service)."""
    create_tensorboard_logger: bool = True
    """Write TensorBoard events to output_s3_path."""
    project: str | None = None
    """Logger project name."""
    name: str | None = None
    """Logger run name."""
    checkpoint_callback_params: CheckpointCallback | None = None
    """Checkpointing."""
    create_early_stopping_callback: bool = False
    """Stop when the monitored quantity stops improving."""
    early_stopping_callback_params: EarlyStopping | None = None
    """Early stopping."""


class LoaderArgs(StrictModel):
    data_loader_workers: PositiveInt = 1
    """Data-loader worker processes."""
    prefetch_factor: PositiveInt = 2
    """Batches prefetched per worker."""


class CollatorArgs(StrictModel):
    force_image_at_turn_beginning: bool = False
    """Move images to the start of each turn."""


class LoaderBlock(StrictModel):
    args: LoaderArgs = LoaderArgs()
    """Loader arguments."""


class CollatorBlock(StrictModel):
    args: CollatorArgs = CollatorArgs()
    """Collator arguments."""


class TrainingValidation(StrictModel):
    """Data loading during training (`training_config.training_validation`)."""

    loader: LoaderBlock = LoaderBlock()
    """Data loader."""
    collator: CollatorBlock = CollatorBlock()
    """Batch collator."""


class Nova1SftTrainingConfig(StrictModel):
    """`training_config` of a Nova 1 SFT recipe."""

    max_length: Annotated[int, Field(ge=1, le=65536)] = 32768
    """Maximum sequence length in tokens (at most 65,536). Match it to your data."""
    global_batch_size: Literal[16, 32, 64] = 64
    """Samples per optimizer step across all devices."""
    trainer: Nova1SftTrainer = Nova1SftTrainer()
    """Trainer."""
    model: Nova1SftModelBlock = Nova1SftModelBlock()
    """Model, optimizer and PEFT."""
    save_steps: PositiveInt | None = None
    """Checkpoint interval in steps (only the last checkpoint is kept)."""
    replicas: PositiveInt | None = None
    """Nodes (normally `${recipes.run.replicas}`)."""
    micro_batch_size: PositiveInt | None = None
    """Samples per device per step."""
    task_type: Literal["sft"] | None = None
    """Training task; `sft` for this recipe."""
    weights_only: bool | None = None
    """Save weights without optimizer state."""
    allow_percentage_invalid_samples: Annotated[float, Field(ge=0, le=100)] | None = None
    """Percentage of training samples that may fail to parse before the job fails."""
    exp_manager: ExpManager | None = None
    """Logging and checkpointing."""
    training_validation: TrainingValidation | None = None
    """Data loading."""


class Nova1SftRecipe(StrictModel):
    """SFT recipe for Nova Micro, Lite and Pro (full-rank, or LoRA when peft_scheme is lora)."""

    run: RunConfig
    """What to train and where."""
    training_config: Nova1SftTrainingConfig = Nova1SftTrainingConfig()
    """How to train."""


# --- Nova 2 layout ---------------------------------------------------------------------------


class Nova2LoraTuning(StrictModel):
    """LoRA settings (Nova 2)."""

    alpha: LoraAlpha = 64
    """Scaling factor of the LoRA weights."""
    lora_plus_lr_ratio: Annotated[float, Field(ge=1.0, le=70.0)] = 64.0
    """LoRA+ learning-rate ratio between the B and A matrices."""


class Nova2Peft(StrictModel):
    """Parameter-efficient fine-tuning. `peft_scheme: "null"` is full-rank."""

    peft_scheme: Annotated[Literal["lora"] | None, NullString] = None
    """`lora` for LoRA adapters; null (or "null") for full-rank training."""
    lora_tuning: Nova2LoraTuning | None = None
    """LoRA settings, used when peft_scheme is `lora`."""


class ModelImportanceScore(StrictModel):
    fine_tuned_model: Probability = 1.0
    """Weight of the fine-tuned model when merged with the base; 1.0 disables merging."""


class Nova2SftRunConfig(RunConfig):
    validation_data_s3_path_list: dict[str, PathOrS3Uri] = {}
    """Extra validation sets, as {label: s3 path}."""


class Nova2SftTrainingConfig(StrictModel):
    """`training_config` of a Nova 2 SFT recipe."""

    max_steps: Annotated[int, Field(ge=4, le=100_000)] = 100
    """Optimizer steps to train (at least 4)."""
    save_steps: Annotated[int, Field(ge=1, le=100_000)] | None = None
    """Checkpoint interval in steps; defaults to max_steps."""
    save_top_k: PositiveInt | None = None
    """Checkpoints kept (HyperPod only)."""
    max_length: Annotated[int, Field(ge=1, le=65536)] = 32768
    """Maximum sequence length: 8192, 16384, 32768 or 65536 for Nova 2 Lite."""
    global_batch_size: Literal[32, 64, 128, 256] = 32
    """Samples per optimizer step across all devices."""
    reasoning_enabled: bool = True
    """Train on `reasoningContent` blocks."""
    val_check_interval: Annotated[int, Field(ge=1, le=100_000)] = 2500
    """Validation interval in steps."""
    limit_val_batches: Annotated[int, Field(ge=0, le=100_000)] = 2
    """Validation batches per check."""
    lr_scheduler: LrScheduler = LrScheduler()
    """Learning-rate schedule."""
    optim_config: OptimConfig = OptimConfig()
    """Optimizer."""
    peft: Nova2Peft = Nova2Peft()
    """Full-rank or LoRA."""
    model_importance_score: ModelImportanceScore | None = None
    """Merge weight of the fine-tuned model."""


class Nova2SftRecipe(StrictModel):
    """SFT recipe for Nova 2 Lite and the local backend (full-rank, or LoRA)."""

    run: Nova2SftRunConfig
    """What to train and where."""
    training_config: Nova2SftTrainingConfig = Nova2SftTrainingConfig()
    """How to train."""
