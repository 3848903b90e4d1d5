"""The strict pydantic base every configuration model derives from, and pattern-checked strings.

Kept apart from the recipe models so that the campaign model (which Airflow's DAG parsing
loads) does not build every recipe model on import.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict
from pydantic_core import PydanticCustomError


class StrictModel(BaseModel):
    """Unknown keys are errors: a misspelt `warmup_step` must not fall back to a default."""

    # Field docstrings are read by recipes.docs when documentation is asked for, not by
    # pydantic's use_attribute_docstrings at class creation (it costs each DAG parse ~40 ms).
    # And no inf or nan: YAML reads 1e999999 as infinity, and an infinite tolerance or target
    # would silently switch a rule off.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def matching(pattern: str, what: str, example: str) -> Any:
    """A string type that must match ``pattern``; the error names what was expected and shows
    an example instead of the regular expression."""
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):  # not match: "$" also matches before a final newline
            raise PydanticCustomError(
                "pattern_mismatch",
                "{value} is not {what}",  # repr: a newline in the value stays on one line
                {"value": repr(value), "what": what, "allowed": f"e.g. {example}"},
            )
        return value

    return Annotated[str, AfterValidator(check)]
