"""Dataset formats by name, and which models accept each."""

from __future__ import annotations

from importlib import import_module

from tuneloop.data.formats import DatasetFormat
from tuneloop.recipes.catalog import ModelSpec

# name -> (module, class); imported on first use so a CLI run loads one format only.
FORMATS: dict[str, tuple[str, str]] = {
    "sft": ("tuneloop.data.converse", "ConverseFormat"),
    "cpt": ("tuneloop.data.cpt", "CptFormat"),
    "rft": ("tuneloop.data.rft", "RftFormat"),
    "gen_qa": ("tuneloop.data.evaluation", "GenQaFormat"),
    "llm_judge": ("tuneloop.data.evaluation", "LlmJudgeFormat"),
    "dpo": ("tuneloop.data.dpo", "DpoFormat"),
}

# Model families that accept each format (others are refused before reading the file).
FAMILIES: dict[str, frozenset[str]] = {
    "sft": frozenset({"nova-1", "nova-2", "local"}),
    "cpt": frozenset({"nova-1", "nova-2", "local"}),
    "rft": frozenset({"nova-2", "local"}),
    "gen_qa": frozenset({"nova-1", "nova-2", "local"}),
    "llm_judge": frozenset({"nova-1", "nova-2"}),
    "dpo": frozenset({"nova-1"}),
}


def get_format(name: str) -> DatasetFormat:
    module, cls = FORMATS[name]
    fmt: DatasetFormat = getattr(import_module(module), cls)()
    return fmt


def supports(name: str, spec: ModelSpec) -> bool:
    return spec.family in FAMILIES.get(name, frozenset())
