"""A name or value with a trailing newline is refused: Python's "$" also matches just before a
final newline, so every validating pattern ends in "\\Z" (or is matched whole)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneloop.config.file import parse_campaign
from tuneloop.errors import CampaignError, TuneloopError
from tuneloop.jobs.base import validate_job_name
from tuneloop.local.runner import validate_name

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "recipes" / "campaigns" / "demo.yaml"
HYPERPOD = REPO / "recipes" / "campaigns" / "examples" / "support-bot-hyperpod.yaml"


def test_job_names() -> None:
    assert validate_job_name("job-1") == "job-1"
    with pytest.raises(TuneloopError):
        validate_job_name("job-1\n")
    assert validate_name("job-1") == "job-1"
    with pytest.raises((TuneloopError, ValueError)):
        validate_name("job-1\n")


@pytest.mark.parametrize(
    ("source", "line", "edited"),
    [
        (DEMO, "name: demo\n", 'name: "demo\\n"\n'),
        (DEMO, "  - method: sft\n", '  - method: sft\n    name: "sft\\n"\n'),
        (HYPERPOD, "  region: us-east-1\n", '  region: "us-east-1\\n"\n'),
        (HYPERPOD, "  namespace: kubeflow\n", '  namespace: "kubeflow\\n"\n'),
    ],
    ids=["campaign name", "stage name", "region", "namespace"],
)
def test_campaign_values(source: Path, line: str, edited: str) -> None:
    text = source.read_text()
    assert line in text
    parse_campaign(text, source)  # as shipped: valid
    with pytest.raises(CampaignError) as error:
        parse_campaign(text.replace(line, edited, 1), source)
    message = str(error.value)
    assert message.startswith(f"{source}:") and "\\n'" in message
    assert "\n" not in message  # one line, the newline shown escaped
