"""Reinforcement fine-tuning recipes (GRPO-style, reward from a Lambda), full-rank and LoRA.

RFT is offered for Nova 2 Lite, on HyperPod (which adds generation and rollout workloads) and on
SageMaker training jobs. The two published layouts differ only in a few optional fields, so one
model covers both and `rules.py` checks the platform-specific ones.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from tuneloop.recipes.common import (
    NonNegativeFloat,
    NonNegativeInt,
    NullString,
    PositiveInt,
    Probability,
    RunConfig,
    StrictModel,
)


class RftRunConfig(RunConfig):
    replicas: PositiveInt = 2
    """Training nodes: 2, 4, 8 or 16 on HyperPod; 2, 4, 6 or 8 on training jobs."""
    generation_replicas: PositiveInt | None = None
    """vLLM generation replicas (HyperPod only)."""
    rollout_worker_replicas: PositiveInt | None = None
    """Rollout workers (HyperPod only). The reward Lambda must absorb 64 requests per worker."""
    reward_lambda_arn: str = ""
    """ARN of the reward Lambda. On HyperPod the function name must contain 'SageMaker'."""


class RolloutStrategy(StrictModel):
    type: Literal["off_policy_async"] = "off_policy_async"
    """Rollout scheduling."""
    age_tolerance: NonNegativeInt = 2
    """How many policy versions old a rollout may be."""


class AdvantageStrategy(StrictModel):
    number_generation: Annotated[int, Field(ge=2, le=16)] = 8
    """Responses sampled per prompt (the GRPO group size)."""


class Generator(StrictModel):
    max_new_tokens: PositiveInt = 8192
    """Longest response generated per rollout."""
    set_random_seed: bool = True
    """Seed generation for reproducibility."""
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0
    """Sampling temperature."""
    top_k: NonNegativeInt = 0
    """Top-k sampling; 0 disables it."""


class ApiEndpoint(StrictModel):
    lambda_arn: str = ""
    """Reward Lambda ARN (normally `${oc.select:run.reward_lambda_arn}`)."""
    lambda_concurrency_limit: PositiveInt = 100
    """Concurrent reward calls: 100 on HyperPod, 12 on training jobs by default."""


class Rewards(StrictModel):
    api_endpoint: ApiEndpoint = ApiEndpoint()
    """The reward function."""


class Rollout(StrictModel):
    rollout_strategy: RolloutStrategy | None = None
    """Rollout scheduling (HyperPod)."""
    advantage_strategy: AdvantageStrategy = AdvantageStrategy()
    """Group sampling."""
    generator: Generator = Generator()
    """Sampling settings."""
    rewards: Rewards = Rewards()
    """Reward function."""


class RftOptimConfig(StrictModel):
    lr: Annotated[float, Field(ge=1e-8, le=1e-3)] = 7e-7
    """Peak learning rate (1e-7 recommended)."""
    weight_decay: Probability = 0.0
    """L2 regularization; raise it to fight overfitting."""
    adam_beta1: Probability = 0.9
    """Adam beta1."""
    adam_beta2: Probability = 0.95
    """Adam beta2."""


class RftLoraTuning(StrictModel):
    alpha: Literal[16, 32, 64] = 32
    """Scaling factor of the LoRA weights (32 recommended)."""
    loraplus_lr_ratio: Annotated[float, Field(ge=0.0, le=100.0)] | None = None
    """LoRA+ learning-rate ratio (HyperPod recipes spell it this way)."""
    lora_plus_lr_ratio: Annotated[float, Field(ge=0.0, le=100.0)] | None = None
    """LoRA+ learning-rate ratio (training-job recipes spell it this way)."""


class RftPeft(StrictModel):
    peft_scheme: Annotated[Literal["lora"] | None, NullString] = None
    """`lora` for LoRA adapters; null for full-rank."""
    lora_tuning: RftLoraTuning | None = None
    """LoRA settings, used when peft_scheme is `lora`."""


class RftTrainer(StrictModel):
    max_steps: Annotated[int, Field(ge=5, le=100_000)] = 100
    """Policy-update steps (at least 5)."""
    save_steps: Annotated[int, Field(ge=0, le=100_000)] | None = None
    """Checkpoint interval in steps; defaults to max_steps."""
    save_top_k: PositiveInt | None = None
    """Checkpoints kept."""
    refit_freq: PositiveInt | None = None
    """Steps between weight syncs to the generation replicas (HyperPod)."""
    clip_ratio_high: NonNegativeFloat | None = None
    """Upper clip of the policy ratio."""
    ent_coeff: NonNegativeFloat = 0.001
    """Entropy bonus; raise it to keep exploring, lower it if rewards are unstable."""
    kl_loss_coef: NonNegativeFloat | None = None
    """KL penalty towards the starting policy."""
    loss_scale: Annotated[float, Field(gt=0)] | None = None
    """Loss scaling factor."""
    optim_config: RftOptimConfig = RftOptimConfig()
    """Optimizer."""
    peft: RftPeft | None = None
    """Full-rank (absent or null) or LoRA."""


class RftData(StrictModel):
    shuffle: bool = False
    """Shuffle prompts between epochs."""


class RftTrainingConfig(StrictModel):
    max_length: PositiveInt = 10240
    """Prompt plus response length in tokens: 4096..32768 for Nova 2 Lite."""
    global_batch_size: Annotated[int, Field(ge=16, le=256)] = 256
    """Samples per policy update (256 recommended)."""
    reasoning_effort: Literal["high", "low"] | None = "high"
    """Reasoning budget while generating rollouts; null disables reasoning."""
    data: RftData | None = None
    """Data loading."""
    rollout: Rollout = Rollout()
    """Rollouts and rewards."""
    trainer: RftTrainer = RftTrainer()
    """Policy optimization."""


class RftRecipe(StrictModel):
    """RFT recipe for Nova 2 Lite (HyperPod or training jobs) and the local backend."""

    run: RftRunConfig
    """What to train and where."""
    training_config: RftTrainingConfig = RftTrainingConfig()
    """How to train."""
