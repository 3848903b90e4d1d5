"""Dataset formats by name, and which models accept each."""

from __future__ import annotations

from importlib import import_module

from tuneloop.data.formats import DatasetFormat
from tuneloop.recipes.catalog import ModelSpec

# name -> (module, class); imported on first use so a CLI run loads one format only.
FORMATS: dict[str, tuple[str, str]] = {
    "sft": ("tuneloop.data.converse", "ConverseFormat"),
}

# Model families that accept each format (others are refused before reading the file).
FAMILIES: dict[str, frozenset[str]] = {
    "sft": frozenset({"nova-1", "nova-2", "local"}),
}


def get_format(name: str) -> DatasetFormat:
    module, cls = FORMATS[name]
    return getattr(import_module(module), cls)()


def supports(name: str, spec: ModelSpec) -> bool:
    return spec.family in FAMILIES.get(name, frozenset())
