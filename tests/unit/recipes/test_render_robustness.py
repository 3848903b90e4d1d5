"""Whatever a user writes in a recipe or passes with --set, rendering never raises a traceback.

Hypothesis overwrites real recipe paths (and made-up ones) with values of every YAML type. The
renderer must either succeed or raise RecipeError whose problems all name a field.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tuneloop.documents import parse_document
from tuneloop.errors import RecipeError
from tuneloop.recipes.catalog import Platform
from tuneloop.recipes.render import render_recipe
from tuneloop.recipes.rules import RecipeContext

REPO = Path(__file__).resolve().parents[3]
TEMPLATES = [
    REPO / "recipes" / "nova" / "nova-2-lite" / "sft-lora.yaml",
    REPO / "recipes" / "nova" / "nova-2-lite" / "rft-full.yaml",
    REPO / "recipes" / "nova" / "nova-lite" / "sft-full.yaml",
    REPO / "recipes" / "nova" / "nova-micro" / "cpt.yaml",
    REPO / "recipes" / "nova" / "nova-pro" / "eval-gen-qa.yaml",
]


def leaf_paths(data: object, prefix: str = "") -> list[str]:
    if isinstance(data, dict):
        paths = [prefix] if prefix else []
        for key, value in data.items():
            paths += leaf_paths(value, f"{prefix}.{key}" if prefix else str(key))
        return paths
    return [prefix]


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(
        [
            "null",
            "lora",
            "${oc.select:run.nope}",
            "${run.replicas}",
            "s3://b/k",
            "s3://customer-escrow-1-hp-x/k",
            "nova-lite/prod",
            "1e-5",
            "${a:b}",
        ]
    ),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


@pytest.mark.filterwarnings("ignore::tuneloop.recipes.render.RecipeWarning")
@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: f"{p.parent.name}/{p.name}")
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_overrides_never_crash(template: Path, data: st.DataObject) -> None:
    document = yaml.safe_load(template.read_text())
    paths = [*leaf_paths(document), "run", "training_config.nope", "evaluation", "x.y.z"]
    overrides = data.draw(st.dictionaries(st.sampled_from(paths), values, min_size=1, max_size=3))
    platform = data.draw(st.sampled_from(list(Platform)))
    try:
        render_recipe(template, overrides, context=RecipeContext(platform=platform, template=True))
    except RecipeError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert problem.message
            assert problem.path or problem.source.startswith("--set")


@settings(max_examples=150, deadline=None)
@given(text=st.text(max_size=200))
def test_arbitrary_text_never_crashes(text: str) -> None:
    try:
        document = parse_document(text, "fuzz.yaml")
        render_recipe(document, context=RecipeContext(template=True))
    except RecipeError as exc:
        assert exc.problems
    except Exception as exc:  # parse_document raises ConfigError, RecipeError's parent
        from tuneloop.errors import ConfigError

        assert isinstance(exc, ConfigError), repr(exc)
