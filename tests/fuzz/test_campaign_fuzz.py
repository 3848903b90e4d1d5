"""Hostile campaigns (valid ones with values mutated, keys added or removed, YAML syntax and
random text spliced in) get a CampaignError of clean lines, or a plan; never anything else."""

from __future__ import annotations

from datetime import date

from hypothesis import given
from hypothesis import strategies as st

from fuzz.support import REPO, fuzz_settings, hostile_document, only_typed_errors
from tuneloop.config.file import parse_campaign
from tuneloop.config.templating import sample_template_context
from tuneloop.rounds.plan import validate_campaign

CAMPAIGNS = [
    REPO / "recipes" / "campaigns" / "demo.yaml",
    REPO / "recipes" / "campaigns" / "examples" / "claims-smtj.yaml",
    REPO / "recipes" / "campaigns" / "examples" / "support-bot-hyperpod.yaml",
]
# Where the fuzzed text claims to come from: beside the shipped campaigns, so that recipe names
# resolve as theirs do. Nothing is written there.
SOURCE = REPO / "recipes" / "campaigns" / "fuzzed.yaml"
TEXTS = st.sampled_from([path.read_text(encoding="utf-8") for path in CAMPAIGNS])


def test_the_shipped_campaigns_plan() -> None:
    for path in CAMPAIGNS:
        campaign = parse_campaign(path.read_text(encoding="utf-8"), SOURCE)
        validate_campaign(campaign, template_context=sample_template_context(), offline=True)


@fuzz_settings()
@given(
    text=TEXTS.flatmap(hostile_document),
    round_number=st.integers(1, 4),
    day=st.dates(min_value=date(1, 1, 2), max_value=date(9999, 12, 30)),
)
def test_a_hostile_campaign_gets_a_plan_or_clean_lines(
    text: str, round_number: int, day: date
) -> None:
    def plan() -> None:
        campaign = parse_campaign(text, SOURCE)
        validate_campaign(
            campaign,
            round_number=round_number,
            template_context=sample_template_context(day),
            offline=True,
        )

    only_typed_errors(plan)
