"""Evaluation recipes: text benchmarks, bring-your-own data (`gen_qa`), LLM judges, RFT eval.

Each task has exactly one valid strategy and metric (see `catalog.EVAL_TASKS`); `rules.py`
checks the pair, the subtask and which tasks a model family offers.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from tuneloop.recipes import s3_uri
from tuneloop.recipes.catalog import MODELS
from tuneloop.recipes.common import (
    NonNegativeInt,
    PathOrS3Uri,
    PositiveInt,
    RunConfig,
    StrictModel,
)

EvalTaskName = Literal[
    "mmlu",
    "mmlu_pro",
    "bbh",
    "gpqa",
    "math",
    "strong_reject",
    "ifeval",
    "mmmu",
    "gen_qa",
    "llm_judge",
    "rubric_llm_judge",
    "rft_eval",
]


class EvalRunConfig(RunConfig):
    replicas: PositiveInt = 1
    """Instances; fixed at 1 on HyperPod, adjustable on training jobs."""
    data_s3_path: PathOrS3Uri = ""
    """Your evaluation data (gen_qa, judge and rft_eval tasks); must be empty for benchmarks."""
    perplexity_data_path: PathOrS3Uri = ""
    """Local models only: domain text (JSONL of {"text": ...}, the CPT format) on which the
    evaluation also reports `perplexity`; campaigns fill it from evaluation.perplexity_dataset."""

    @field_validator("perplexity_data_path")
    @classmethod
    def _local_only(cls, value: str, info: ValidationInfo) -> str:
        # Nova's evaluation container has no such field: only the local backend measures it.
        spec = MODELS.get(info.data.get("model_type", ""))
        if value and spec is not None and spec.is_nova:
            raise PydanticCustomError(
                "local_only",
                "{text}",
                {
                    "text": "perplexity is measured by the local backend only; fix: leave "
                    "run.perplexity_data_path empty for Nova models",
                    "allowed": "''",
                },
            )
        if value and s3_uri.looks_like_s3(value):
            raise PydanticCustomError(
                "local_file",
                "{text}",
                {
                    "text": f"{s3_uri.shown(value)} is on S3; the local backend reads local files",
                    "allowed": "a path or file:// URI",
                },
            )
        return value


class EvaluationBlock(StrictModel):
    task: EvalTaskName
    """What to evaluate: a benchmark, `gen_qa` on your data, a judge, or `rft_eval`."""
    strategy: Literal["zs_cot", "fs_cot", "zs", "gen_qa", "judge", "rft_eval"]
    """Prompting strategy; each task has exactly one."""
    metric: Literal["accuracy", "exact_match", "deflection", "all"]
    """Reported metric; each task has exactly one."""
    subtask: str = ""
    """Optional subset of a benchmark (e.g. an MMLU subject)."""


class Inference(StrictModel):
    max_new_tokens: Annotated[int, Field(ge=0, le=100_000)] = 8192
    """Longest response: at most 100,000 for Nova 1 and 32,768 for Nova 2."""
    top_k: Annotated[int, Field(ge=-1)] = -1
    """Top-k sampling; -1 disables it."""
    top_p: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    """Nucleus sampling threshold."""
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 0.0
    """Sampling temperature; 0 is greedy."""
    top_logprobs: NonNegativeInt = 0
    """Log-probabilities returned per token."""
    reasoning_effort: Literal["high", "low"] | None = None
    """Reasoning budget (Nova 2 only); null disables reasoning."""


class Toggle(StrictModel):
    enabled: bool = False
    """Whether the step runs."""


class Processor(StrictModel):
    """Custom scoring of `gen_qa` outputs."""

    preset_reward_function: Literal["", "prime_math", "prime_code"] = ""
    """A built-in scorer (Nova 2 only)."""
    lambda_arn: str = ""
    """A Lambda that scores each response."""
    lambda_type: Literal["rft", "custom_metrics"] = "custom_metrics"
    """The Lambda's contract: the RFT reward contract or custom metrics."""
    preprocessing: Toggle = Toggle()
    """Run the Lambda's preprocessing step."""
    postprocessing: Toggle = Toggle(enabled=True)
    """Run the Lambda's postprocessing step."""
    aggregation: Literal["average"] = "average"
    """How per-sample scores combine."""


class RlEnv(StrictModel):
    reward_lambda_arn: str = ""
    """Reward Lambda that scores each response (rft_eval)."""


class EvalRecipe(StrictModel):
    """Evaluation recipe for every model in the catalog."""

    run: EvalRunConfig
    """What to evaluate and where results go."""
    evaluation: EvaluationBlock
    """Task, strategy and metric."""
    inference: Inference = Inference()
    """Generation settings."""
    processor: Processor | None = None
    """Custom scoring (gen_qa)."""
    rl_env: RlEnv | None = None
    """Reward function (rft_eval)."""
