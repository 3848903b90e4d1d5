"""Hostile recipes and --set options through `tuneloop recipe render` (in this process): exit 0
with YAML on stdout, or exit 2 with clean lines on stderr; never an exception."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from hypothesis import event, given
from hypothesis import strategies as st

from fuzz.support import (
    HOSTILE_TEXT,
    HOSTILE_YAML_VALUES,
    REPO,
    assert_clean_text,
    fuzz_settings,
    hostile_document,
    run_cli,
)

RECIPES = [
    REPO / "recipes" / "local" / "sft-full.yaml",
    REPO / "recipes" / "local" / "rft-full.yaml",
    REPO / "recipes" / "local" / "eval-gen-qa.yaml",
    REPO / "recipes" / "nova" / "nova-lite" / "sft-lora.yaml",
    REPO / "recipes" / "nova" / "nova-2-lite" / "rft-full.yaml",
    REPO / "recipes" / "nova" / "nova-2-lite" / "eval-gen-qa.yaml",
]
TEXTS = st.sampled_from([path.read_text(encoding="utf-8") for path in RECIPES])


def _dotted_paths(data: object, prefix: str = "") -> Iterator[str]:
    if isinstance(data, dict):
        for key, value in data.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            yield path
            yield from _dotted_paths(value, path)


FIELDS = sorted(
    {path for recipe in RECIPES for path in _dotted_paths(yaml.safe_load(recipe.read_text()))}
)
SET_OPTIONS = st.one_of(
    st.builds(
        "{}={}".format,
        st.one_of(st.sampled_from(FIELDS), st.text(max_size=12)),
        st.one_of(
            st.sampled_from(HOSTILE_YAML_VALUES),
            st.sampled_from(HOSTILE_TEXT),
            st.text(max_size=12),
            st.integers().map(str),
        ),
    ),
    st.text(max_size=12),
)


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("recipe-fuzz") / "recipe.yaml"


def test_the_shipped_recipes_render() -> None:
    for recipe in RECIPES:
        code, _, err = run_cli(["recipe", "render", str(recipe), "--template"])
        assert code == 0, err


@fuzz_settings()
@given(
    text=TEXTS.flatmap(hostile_document),
    sets=st.lists(SET_OPTIONS, max_size=3),
    command=st.sampled_from(["render", "validate"]),
)
def test_a_hostile_recipe_renders_or_gets_clean_lines(
    recipe_file: Path, text: str, sets: list[str], command: str
) -> None:
    recipe_file.write_text(text, encoding="utf-8")
    argv = ["recipe", command, str(recipe_file), "--template"]
    if command == "render":
        argv += [arg for value in sets for arg in ("--set", value)]
    code, out, err = run_cli(argv)
    event(f"exit {code}")
    assert code in (0, 2), (code, err)
    assert_clean_text(err)
    if code == 2 and command == "render":
        assert err.strip(), "exit 2 without a word"
    if code == 0 and command == "render":
        assert isinstance(yaml.safe_load(out), dict)
