"""What the gate reads and what it says: a round as the gate sees it, and the decision.

The gate's own boxes, apart from its rules so that the ledger (which stores decisions and
rebuilds summaries from its records) and the round's tasks share them without importing the
gate. Only pydantic and the recipe catalog's enums: the gate stays pure.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from tuneloop.recipes.catalog import Method


class Action(StrEnum):
    """What the campaign does after a round."""

    CONTINUE = "continue"
    """Run the next round from this round's checkpoint (or the switched stages)."""
    ROLLBACK = "rollback"
    """This round regressed or failed: the next round restarts from the champion."""
    FINISH = "finish"
    """Every target is met: the campaign is done."""
    STOP = "stop"
    """No further round: max_rounds, budget, a plateau with no technique left to try, or a
    failed round whose monitor stops the campaign."""


class RoundSummary(BaseModel):
    """What the gate needs to know about one evaluated round."""

    model_config = ConfigDict(extra="forbid")

    round: int = Field(ge=1)
    metrics: dict[str, float]
    """The evaluation's metrics for the round's final checkpoint."""
    checkpoint: str
    """The output folder of the round's last stage: where a round continuing from it starts."""
    stages: list[str] = []
    """Names of the stages that ran, in order (empty: every stage of the campaign)."""
    methods: list[Method] = []
    """Their methods, in the same order."""
    lineage: list[Method] = []
    """Methods applied since the base model, as the final checkpoint records them (empty when
    unknown: the round's own methods stand in)."""
    promoted: bool = False
    """Whether the round is the champion or was until a later one beat it (False for a round
    that was rolled back, even by hand)."""
    action: Action | None = None
    """What was decided after it; None for a round not decided yet."""
    gpu_hours: float = Field(default=0.0, ge=0.0)
    """GPU-hours its jobs were billed (training and evaluation)."""
    cost_usd: float | None = 0.0
    """US dollars its jobs cost (estimated); None when a price is unknown."""
    baseline_gpu_hours: float = Field(default=0.0, ge=0.0)
    """GPU-hours of the base model's evaluation when this round measured it: spent by the
    campaign, but not part of what a next round is expected to cost."""
    baseline_cost_usd: float | None = 0.0
    """US dollars of that evaluation."""
    failed: bool = False
    """Monitoring stopped its training, so it was never evaluated (no metrics): the gate skips
    it when it compares rounds, counts plateaus or estimates the next round's cost."""


class Decision(BaseModel):
    """What the gate decided after one round. Round-trips through JSON (XCom, the ledger)."""

    model_config = ConfigDict(extra="forbid")

    round: int
    """The round that was judged."""
    action: Action
    reason: str
    """One sentence, with the numbers, for the Airflow UI and the ledger."""
    promoted: bool
    """The judged round becomes the champion."""
    champion_round: int | None
    """The champion after this decision; None while the base model is still the best."""
    next_round: int | None = None
    """CONTINUE and ROLLBACK only."""
    next_base: str | None = None
    """Checkpoint (a stage output folder) the next round starts from; None: the campaign's
    base model. CONTINUE and ROLLBACK only."""
    next_base_round: int | None = None
    """The round that produced ``next_base``; None for the base model."""
    rollback: bool = False
    """The next round applies the gate's rollback adjustments (``plan_round(rollback=True)``)."""
    next_stages: list[str] | None = None
    """Stage names the next round runs; None when there is no next round."""
    recommendation: str = ""
    """Advice the gate does not act on itself (e.g. run SFT before RFT)."""
    signals: dict[str, float | int | str | None] = {}
    """The numbers behind the decision: deltas, plateau count, GPU-hours, limits."""
