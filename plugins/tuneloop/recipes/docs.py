"""Reference documentation generated from the recipe models: path, default, allowed, meaning."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from tuneloop.documents import allowed_text, flatten_annotation


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    for candidate in flatten_annotation(annotation):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def describe_fields(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    """One line per leaf field: ``path = default  [allowed]  meaning``."""
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        nested = _nested_model(info.annotation)
        if nested is not None:
            yield from describe_fields(nested, f"{path}.")
            continue
        default = info.default
        if default is PydanticUndefined:
            shown = "(required)"
        elif default is None:
            shown = "null"
        else:
            shown = repr(default) if isinstance(default, str) else str(default)
        allowed = allowed_text(model, (name,))
        doc = " ".join((info.description or "").split())
        text = f"{path} = {shown}"
        if allowed:
            text += f"  [{allowed}]"
        if doc:
            text += f"  {doc}"
        yield text
