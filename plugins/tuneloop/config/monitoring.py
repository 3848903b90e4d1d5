"""What a campaign watches while its jobs train, and how it checks a reward function first.

``monitoring:`` sets each detector's thresholds and its policy: what happens when the detector
fires. ``off`` ignores it, ``warn`` notes it in the round record and report, ``fail_round`` fails
the round (while the job runs, the job is stopped early and the gate treats the round as
failed), ``stop_campaign`` fails the round and ends the campaign.

``reward_probe:`` sets how the reward function of an RFT stage is tried before the RFT job:
known good answers (the reference) against corrupted ones, the output contract, errors,
latency, and the starting model's share of positive rewards.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from tuneloop.recipes.strict import StrictModel

Policy = Literal["off", "warn", "fail_round", "stop_campaign"]
"""What a detector that fires does: nothing, a warning, a failed round, or a failed round that
also ends the campaign."""

LAMBDA_TIME_LIMIT_SECONDS = 900.0
"""A Lambda runs at most 15 minutes; a reward batch that takes longer fails the job."""


class RewardBands(StrictModel):
    """Where the reward distribution's bands start: a reward at or above ``high`` is high, one
    below ``low`` is low, the rest medium."""

    high: float = 0.8
    """Rewards at or above this count as high."""
    low: float = 0.2
    """Rewards below this count as low."""

    @model_validator(mode="after")
    def _ordered(self) -> RewardBands:
        if self.low > self.high:
            raise PydanticCustomError(
                "reward_bands",
                "{text}",
                {
                    "text": f"low ({self.low}) is above high ({self.high}); fix: make low at "
                    "most high",
                    "allowed": "low <= high",
                },
            )
        return self


class Plateau(StrictModel):
    """RFT reward mean that stops rising."""

    policy: Policy = "warn"
    """What a plateau does: off, warn, fail_round or stop_campaign."""
    window: Annotated[int, Field(ge=2, le=100_000)] = 20
    """Steps compared: the mean of the last ``window`` steps against the ``window`` before."""
    min_gain: Annotated[float, Field(ge=0.0)] = 0.01
    """A smaller rise of the reward mean between the two windows is a plateau."""


class Overfitting(StrictModel):
    """Training reward (or loss) improving while validation worsens."""

    policy: Policy = "warn"
    """What overfitting does: off, warn, fail_round or stop_campaign."""
    window: Annotated[int, Field(ge=2, le=100_000)] = 10
    """Validation points compared, first against last of the window."""
    min_drop: Annotated[float, Field(ge=0.0)] = 0.02
    """Validation must worsen by at least this much while training improves."""


class Instability(StrictModel):
    """Reward variance that keeps growing."""

    policy: Policy = "warn"
    """What instability does: off, warn, fail_round or stop_campaign."""
    window: Annotated[int, Field(ge=2, le=100_000)] = 10
    """Steps per window: the reward std of the last window against the first."""
    factor: Annotated[float, Field(gt=1.0)] = 2.0
    """The std growing past this multiple of the first window's is instability."""


class RewardErrors(StrictModel):
    """A reward function that fails on too many samples (exceptions, timeouts, bad output)."""

    policy: Policy = "fail_round"
    """What too many reward-function errors do: off, warn, fail_round or stop_campaign."""
    max_rate: Annotated[float, Field(ge=0.0, le=1.0)] = 0.2
    """Share of samples the reward function failed to score."""
    for_steps: Annotated[int, Field(ge=1, le=100_000)] = 50
    """The rate must stay above max_rate this many steps in a row (fewer when the job has
    fewer steps: then every step)."""


class LossDivergence(StrictModel):
    """SFT or CPT loss that becomes NaN or jumps."""

    policy: Policy = "fail_round"
    """What a diverging loss does: off, warn, fail_round or stop_campaign."""
    spike_factor: Annotated[float, Field(gt=1.0)] = 3.0
    """A loss above this multiple of the median of the 10 losses logged before it is a spike;
    NaN or infinity always is."""
    warmup_steps: Annotated[int, Field(ge=0)] = 5
    """Steps at the start where a spike is not judged (the loss moves most there)."""


class Monitoring(StrictModel):
    """Detectors over the training curves, live while the job runs and once it ends."""

    live: bool = True
    """Read metrics while the job runs and stop it at once when a fail_round or stop_campaign
    detector fires; false: judge the curves only once the job ended."""
    reward_bands: RewardBands = RewardBands()
    """Thresholds of the reward distribution's high, medium and low bands."""
    plateau: Plateau = Plateau()
    """RFT reward mean that stops rising."""
    overfitting: Overfitting = Overfitting()
    """Training improving while validation worsens."""
    instability: Instability = Instability()
    """RFT reward variance growing."""
    reward_errors: RewardErrors = RewardErrors()
    """A reward function failing on too many samples."""
    loss_divergence: LossDivergence = LossDivergence()
    """SFT or CPT loss that becomes NaN or spikes."""


class RewardProbe(StrictModel):
    """The reward-function probe that runs before every RFT job."""

    enabled: bool = True
    """false: no probe (not advised: a broken reward function wastes the whole RFT job)."""
    sample: Annotated[int, Field(ge=1, le=10_000)] = 16
    """Records of the RFT training data tried (the first ones, in file order)."""
    batch_size: Annotated[int, Field(ge=1, le=1_000)] = 8
    """Samples per call, as the RFT job batches them."""
    min_separation: Annotated[float, Field(ge=0.0, le=1.0)] = 0.9
    """Share of (good, bad) pairs where the reference answer must score above the corrupted
    one."""
    timeout_seconds: Annotated[float, Field(gt=0.0, le=LAMBDA_TIME_LIMIT_SECONDS)] = (
        LAMBDA_TIME_LIMIT_SECONDS
    )
    """Longest a call may take (a Lambda's limit is 15 minutes)."""
    low_positive_rewards: Literal["recommend", "sft_only"] = "recommend"
    """When under 5% of the starting model's rewards are positive: recommend SFT first, or
    run only the campaign's SFT stages until that changes."""


class OutputFormat(StrictModel):
    """The shape every answer must have, for the evaluation's format-compliance rate."""

    valid_json: bool = False
    """Answers must be valid JSON (``output_format: json`` says the same)."""
    regex: str = ""
    """Answers must match this regular expression (in full)."""

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str) -> str:
        if value:
            try:
                re.compile(value)
            except re.error as exc:
                raise PydanticCustomError(
                    "regex",
                    "{text}",
                    {
                        "text": f"{value!r} is not a regular expression ({exc}); fix: escape "
                        "special characters such as ( [ { with a backslash",
                        "allowed": "a Python regular expression",
                    },
                ) from None
        return value

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        # ``output_format: json`` and ``{json: true}`` read as {valid_json: true}.
        if value == "json":
            return {"valid_json": True}
        if isinstance(value, dict) and "json" in value and "valid_json" not in value:
            return {("valid_json" if k == "json" else k): v for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _one(self) -> OutputFormat:
        if self.valid_json == bool(self.regex):
            raise PydanticCustomError(
                "output_format",
                "{text}",
                {
                    "text": "set exactly one of json and regex; fix: output_format: json, or "
                    "output_format: {regex: <pattern>}",
                    "allowed": "json, {json: true} or {regex: <pattern>}",
                },
            )
        return self
