"""The storage price table, monthly costs with per-object overheads, checkpoint estimates."""

from __future__ import annotations

import pytest

from tuneloop.recipes.catalog import (
    ESCROW_CHECKPOINT_BYTES,
    GB,
    MIN_STORAGE_DAYS,
    NOVA_MODEL_TYPES,
    STORAGE_PRICES,
    STORAGE_PRICES_SOURCE,
    estimated_checkpoint_bytes,
    storage_monthly_cost,
)

CLASSES = ("STANDARD", "GLACIER_IR", "GLACIER", "DEEP_ARCHIVE")


def test_every_region_lists_every_class_cheaper_as_it_gets_colder() -> None:
    assert "us-east-1" in STORAGE_PRICES
    for region, prices in STORAGE_PRICES.items():
        assert set(prices) == set(CLASSES), region
        values = [prices[c] for c in CLASSES]
        assert values == sorted(values, reverse=True), region
        assert all(0 < v < 1 for v in values)


def test_source_names_page_and_date() -> None:
    assert "aws.amazon.com/s3/pricing" in STORAGE_PRICES_SOURCE
    assert "2026-12-05" in STORAGE_PRICES_SOURCE
    assert "us-east-1" in STORAGE_PRICES_SOURCE


def test_standard_costs_its_price_per_gb() -> None:
    assert storage_monthly_cost(10 * GB, "STANDARD", "us-east-1") == pytest.approx(0.23)


def test_local_unknown_class_and_unknown_region_fall_back() -> None:
    standard = storage_monthly_cost(GB, "STANDARD", "us-east-1")
    assert storage_monthly_cost(GB, "LOCAL", "us-east-1") == standard
    assert storage_monthly_cost(GB, "STANDARD_IA", "us-east-1") == standard
    assert storage_monthly_cost(GB, "STANDARD", "mars-north-1") == standard


def test_archive_classes_bill_their_per_object_overhead() -> None:
    prices = STORAGE_PRICES["us-east-1"]
    empty = storage_monthly_cost(0, "GLACIER", "us-east-1")
    assert empty == pytest.approx(
        (32 * 1024 * prices["GLACIER"] + 8 * 1024 * prices["STANDARD"]) / GB
    )
    # A 1 KB object costs more in GLACIER than in STANDARD: why small objects stay.
    assert storage_monthly_cost(1024, "GLACIER", "us-east-1") > storage_monthly_cost(
        1024, "STANDARD", "us-east-1"
    )
    assert storage_monthly_cost(1, "GLACIER_IR", "us-east-1") == storage_monthly_cost(
        128 * 1024, "GLACIER_IR", "us-east-1"
    )
    assert MIN_STORAGE_DAYS == {"GLACIER_IR": 90, "GLACIER": 90, "DEEP_ARCHIVE": 180}


def test_checkpoint_estimates_cover_every_nova_model() -> None:
    assert set(ESCROW_CHECKPOINT_BYTES) == set(NOVA_MODEL_TYPES)
    for model_type in NOVA_MODEL_TYPES:
        full = estimated_checkpoint_bytes(model_type, "full")
        lora = estimated_checkpoint_bytes(model_type, "lora")
        assert full >= GB
        assert 0 < lora < full / 10
    assert estimated_checkpoint_bytes("local.tiny-chat-v1", "full") == 0
