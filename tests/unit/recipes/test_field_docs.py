"""Every recipe and campaign field is documented; `tuneloop recipe fields` shows it."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from tuneloop.config.campaign import Campaign
from tuneloop.documents import flatten_annotation
from tuneloop.recipes.docs import describe_fields, field_description
from tuneloop.recipes.render import RECIPE_MODELS


def nested_models(model: type[BaseModel], seen: set[type[BaseModel]]) -> set[type[BaseModel]]:
    if model in seen:
        return seen
    seen.add(model)
    for info in model.model_fields.values():
        for candidate in flatten_annotation(info.annotation):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                nested_models(candidate, seen)
    return seen


ROOTS = sorted({*RECIPE_MODELS.values(), Campaign}, key=lambda m: m.__name__)


@pytest.mark.parametrize("root", ROOTS, ids=lambda m: m.__name__)
def test_every_field_has_a_description(root: type[BaseModel]) -> None:
    undocumented = [
        f"{model.__name__}.{name}"
        for model in nested_models(root, set())
        for name in model.model_fields
        if not field_description(model, name)
    ]
    assert undocumented == []


@pytest.mark.parametrize(
    "root", sorted(set(RECIPE_MODELS.values()), key=lambda m: m.__name__), ids=lambda m: m.__name__
)
def test_field_reference_lists_defaults(root: type[BaseModel]) -> None:
    lines = list(describe_fields(root))
    assert lines
    assert all(" = " in line for line in lines)
