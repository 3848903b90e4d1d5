"""Reference documentation generated from the recipe models: path, default, allowed, meaning."""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Iterator
from functools import cache
from itertools import pairwise
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from tuneloop.documents import allowed_text, flatten_annotation


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    for candidate in flatten_annotation(annotation):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


@cache
def _attribute_docstrings(model: type[BaseModel]) -> dict[str, str]:
    """The string under each annotated field in the class bodies of ``model`` and its bases.

    Read here, when documentation is asked for, rather than by pydantic's
    ``use_attribute_docstrings`` when every model class is built: that reads the source of every
    model at import, and the campaign model is imported by each DAG parse."""
    docs: dict[str, str] = {}
    for cls in reversed(model.__mro__):
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or cls is BaseModel:
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, after in pairwise(body):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def field_description(model: type[BaseModel], name: str) -> str:
    """What field ``name`` of ``model`` means: its ``Field(description=...)`` or its docstring."""
    info = model.model_fields[name]
    return " ".join((info.description or _attribute_docstrings(model).get(name, "")).split())


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
        doc = field_description(model, name)
        text = f"{path} = {shown}"
        if allowed:
            text += f"  [{allowed}]"
        if doc:
            text += f"  {doc}"
        yield text
