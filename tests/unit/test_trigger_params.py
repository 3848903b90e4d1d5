"""The trigger form's Params copy cheaply and behave exactly like Airflow's own."""

from __future__ import annotations

import copy

import pytest
from airflow.sdk import Param
from airflow.sdk.definitions.param import ParamsDict
from airflow.sdk.exceptions import ParamValidationError
from airflow.serialization.serialized_objects import DagSerialization

from tuneloop.pipeline.params import shareable


def form() -> dict[str, Param]:
    return {
        "stages": Param(None, type=["null", "array"], items={"type": "string", "enum": ["sft"]}),
        "dry_run": Param(False, type="boolean", title="Dry run"),
    }


def test_copies_share_the_schema_and_own_their_value() -> None:
    params = ParamsDict(shareable(form()))
    copied = copy.deepcopy(params)
    again = copy.deepcopy(copied)  # a copy of a copy copies the same way
    for name in ("stages", "dry_run"):
        assert type(copied.get_param(name)) is Param
        assert copied.get_param(name).schema is params.get_param(name).schema
        assert again.get_param(name).schema is params.get_param(name).schema
    copied["stages"] = ["sft"]
    assert copied["stages"] == ["sft"] and params["stages"] is None and again["stages"] is None


def test_a_value_still_validates_against_the_shared_schema() -> None:
    params = copy.deepcopy(ParamsDict(shareable(form())))
    with pytest.raises(ParamValidationError, match="rft"):
        params["stages"] = ["rft"]


def test_the_dag_serializes_as_with_plain_params() -> None:
    from airflow.sdk import DAG

    plain = DagSerialization.to_dict(DAG("plain", params=form(), schedule=None))
    shared = DagSerialization.to_dict(DAG("plain", params=shareable(form()), schedule=None))
    assert shared["dag"]["params"] == plain["dag"]["params"]
