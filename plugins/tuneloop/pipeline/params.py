"""The trigger form's Params, cheap to copy.

Airflow deep-copies the DAG's params into every operator it builds, once per ``__init__`` in the
operator's class hierarchy (about fifty copies per round DAG); copying each Param whole, JSON
schema included, was three quarters of the DAG file's parse time. A form field's schema and
description never change once the DAG is built (Airflow reads them to validate a value and to
draw the form), so ``shareable`` makes the copies share them and copy only the value, which
Airflow does change (a run's conf resolves into it).

The Params stay Airflow's own class, because the DAG serializer boxes any other class as the
value of a new Param: the copy rule is set on each instance (``copy.deepcopy`` looks
``__deepcopy__`` up on the object), and the serializer reads only value, description, schema
and source.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.sdk import Param


def shareable(params: dict[str, Param]) -> dict[str, Param]:
    """``params`` with each Param copying as described above (in place; returned)."""
    for param in params.values():
        _share(param)
    return params


def _share(param: Param) -> Param:
    def deep_copy(memo: dict[int, Any] | None = None) -> Param:
        value = param.value
        clone = copy.copy(param)  # Airflow's Param.__copy__: a new Param, same schema object
        clone.value = copy.deepcopy(value, memo) if isinstance(value, list | dict) else value
        clone.source = param.source
        return _share(clone)

    # An instance attribute: copy.deepcopy finds it; the class stays airflow.sdk.Param.
    param.__deepcopy__ = deep_copy  # type: ignore[attr-defined]  # an attribute Param lacks
    return param
