"""A round's tasks point storage at the campaign backend's AWS connection."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tuneloop import aws
from tuneloop.config.backend import aws_connection
from tuneloop.pipeline import tasks
from tuneloop.rounds.boxes import CampaignSnapshot, DatasetItem

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "recipes" / "campaigns" / "examples" / "support-bot-hyperpod.yaml"


@pytest.fixture(autouse=True)
def default_connection() -> Iterator[None]:
    yield
    aws.use_connection(aws.DEFAULT_CONN_ID)


def campaign_file(tmp_path: Path, connection: str | None) -> Path:
    text = EXAMPLE.read_text()
    if connection:
        text = text.replace(
            "  region: us-east-1\n", f"  region: us-east-1\n  aws_conn_id: {connection}\n", 1
        )
    path = tmp_path / EXAMPLE.name
    path.write_text(text)
    return path


def test_a_task_loading_the_campaign_uses_its_connection(tmp_path: Path) -> None:
    snapshot = CampaignSnapshot.read(campaign_file(tmp_path, "tenant_a"))
    tasks._campaign(snapshot)
    assert aws.connection_id() == "tenant_a"


def test_a_campaign_naming_no_connection_uses_aws_default(tmp_path: Path) -> None:
    aws.use_connection("left_over")
    tasks._campaign(CampaignSnapshot.read(campaign_file(tmp_path, None)))
    assert aws.connection_id() == aws.DEFAULT_CONN_ID


def test_a_dataset_check_reads_with_the_connection_its_item_names() -> None:
    data = REPO / "tests" / "data" / "corpus" / "file" / "valid_unicode.jsonl"
    item = DatasetItem(
        stage="sft",
        channel="train",
        uri=str(data),
        format="sft",
        model_type="amazon.nova-2-lite-v1:0:256k",
        aws_conn_id="tenant_b",
    )
    check = tasks.validate_task(item.model_dump(mode="json"))
    assert check["records"] > 0
    assert aws.connection_id() == "tenant_b"


def test_the_backend_names_the_connection(tmp_path: Path) -> None:
    cf = CampaignSnapshot.read(campaign_file(tmp_path, "tenant_a")).load()
    assert aws_connection(cf.campaign) == "tenant_a"
    demo = CampaignSnapshot.read(REPO / "recipes" / "campaigns" / "demo.yaml").load()
    assert aws_connection(demo.campaign) is None
