"""An infinite or not-a-number value is refused: YAML reads 1e999999 as infinity, and an infinite
regression tolerance would mean the gate never rolls back."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneloop.config.file import parse_campaign
from tuneloop.errors import CampaignError

DEMO = Path(__file__).resolve().parents[2] / "recipes" / "campaigns" / "demo.yaml"


@pytest.mark.parametrize("value", ["1e999999", "-1e999999", ".inf", ".nan"])
@pytest.mark.parametrize(
    ("field", "line"),
    [
        ("gate.regression_tolerance", "  regression_tolerance: 0.02"),
        ("gate.targets.exact_match", "    exact_match: 0.95"),
    ],
)
def test_a_gate_number_must_be_finite(field: str, line: str, value: str) -> None:
    text = DEMO.read_text()
    assert line in text
    key = line.split(":")[0]
    with pytest.raises(CampaignError) as error:
        parse_campaign(text.replace(line, f"{key}: {value}", 1), DEMO)
    assert f"{DEMO}:" in str(error.value) and f"{field}:" in str(error.value)
