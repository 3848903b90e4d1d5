"""What the training monitors found: one `Finding` per detector that fired on a stage's curves.

A finding carries the campaign's policy for its detector (``config.monitoring.Policy``), so the
round record says both what was seen and what it led to: a warning, a failed round, or a failed
round that ends the campaign.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict

from tuneloop.config.monitoring import Policy

FAILING_POLICIES: frozenset[str] = frozenset({"fail_round", "stop_campaign"})


class Finding(BaseModel):
    """One detector that fired."""

    model_config = ConfigDict(extra="forbid")

    detector: str
    """plateau, overfitting, instability, reward_errors or loss_divergence."""
    policy: Policy
    """What the campaign says this detector does: warn, fail_round or stop_campaign."""
    stage: str = ""
    """The stage whose curves fired it."""
    step: int | None = None
    """The training step where it fired (None: judged over the whole curve)."""
    series: str = ""
    """The series it read (reward_mean, train_loss, ...)."""
    message: str
    """One sentence a person reads: what was seen, with the numbers."""
    fix: str = ""
    """What to change, when there is something to change."""

    @property
    def fails(self) -> bool:
        return self.policy in FAILING_POLICIES


def failing(findings: Iterable[Finding]) -> list[Finding]:
    """The findings whose policy fails the round (fail_round or stop_campaign)."""
    return [f for f in findings if f.fails]


def stops_campaign(findings: Iterable[Finding]) -> bool:
    return any(f.policy == "stop_campaign" for f in findings)
