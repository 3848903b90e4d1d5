"""YAML documents with line numbers, and validation errors as located Problems."""

from __future__ import annotations

from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tuneloop.documents import (
    Document,
    dump_yaml,
    format_loc,
    load_document,
    parse_document,
    parse_scalar,
    problems_from_validation_error,
    range_text,
    validate,
)
from tuneloop.errors import ConfigError, Problem

TEXT = """\
run:
  name: job
  replicas: 4
training_config:
  optim:
    lr: 1e-5
    betas:
      - 0.9
      - 0.999
"""


def test_parse_document_records_lines():
    doc = parse_document(TEXT, "recipe.yaml")
    assert doc.source == "recipe.yaml"
    assert doc.data["training_config"]["optim"]["lr"] == 1e-5
    assert doc.lines[("run",)] == 1
    assert doc.lines[("run", "replicas")] == 3
    assert doc.lines[("training_config", "optim", "lr")] == 6
    assert doc.lines[("training_config", "optim", "betas", 1)] == 9


def test_line_of_falls_back_to_deepest_known_parent():
    doc = parse_document(TEXT, "recipe.yaml")
    assert doc.line_of(("training_config", "optim", "lr")) == 6
    assert doc.line_of(("training_config", "optim", "missing", "deeper")) == 5
    assert doc.line_of(("nowhere",)) == 1
    assert doc.line_of(()) == 1


def test_document_problem_is_located():
    doc = parse_document(TEXT, "recipe.yaml")
    problem = doc.problem(("run", "replicas"), "bad", allowed="1, 2")
    assert problem == Problem("run.replicas", "bad", source="recipe.yaml", line=3, allowed="1, 2")
    assert problem.format() == "recipe.yaml:3: run.replicas: bad (allowed: 1, 2)"


def test_yaml_syntax_error_gives_line(write_file):
    path = write_file("broken.yaml", "run:\n  name: job\n  replicas: [4\ntraining_config: {}\n")
    with pytest.raises(ConfigError) as info:
        load_document(path)
    [problem] = info.value.problems
    assert problem.message.startswith("not valid YAML")
    assert problem.source == str(path)
    assert problem.line == 4


def test_bad_indentation_gives_line():
    with pytest.raises(ConfigError) as info:
        parse_document("run:\n  name: job\n    replicas: 4\n", "x.yaml")
    assert info.value.problems[0].line == 3


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n"])
def test_empty_file(text):
    with pytest.raises(ConfigError) as info:
        parse_document(text, "empty.yaml")
    [problem] = info.value.problems
    assert problem.message == "the file is empty"
    assert problem.format().startswith("empty.yaml:1: ")
    assert problem.format().endswith(": the file is empty")


@pytest.mark.parametrize("text,line", [("- a\n- b\n", 1), ("just text\n", 1), ("\n\n42\n", 3)])
def test_top_level_must_be_a_mapping(text, line):
    with pytest.raises(ConfigError) as info:
        parse_document(text, "list.yaml")
    [problem] = info.value.problems
    assert "top level must be a mapping" in problem.message
    assert problem.line == line


def test_duplicate_keys_are_reported_with_both_lines():
    text = "run:\n  name: a\n  replicas: 4\n  name: b\nx: 1\nx: 2\n"
    with pytest.raises(ConfigError) as info:
        parse_document(text, "dup.yaml")
    problems = info.value.problems
    assert [(p.path, p.line) for p in problems] == [("run.name", 4), ("x", 6)]
    assert "first set on line 2" in problems[0].message
    assert problems[0].fix


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_document(tmp_path / "nope.yaml")
    assert info.value.problems[0].message == "file not found"


def test_load_document_with_text_does_not_read_disk():
    doc = load_document("virtual.yaml", text="a: 1\n")
    assert doc.data == {"a": 1}
    assert doc.source == "virtual.yaml"


@pytest.mark.parametrize(
    "text,value",
    [
        ("1e-5", 1e-5),
        ("5e-7", 5e-7),
        ("1.0e-06", 1e-6),
        ("-2E3", -2000.0),
        ("3", 3),
        ("0.5", 0.5),
        ("true", True),
        ("null", None),
        ("lora", "lora"),
        (".inf", float("inf")),
    ],
)
def test_parse_scalar_reads_like_yaml(text, value):
    result = parse_scalar(text)
    assert result == value
    assert type(result) is type(value)


def test_parse_scalar_keeps_unparsable_text():
    assert parse_scalar("[unclosed") == "[unclosed"


def test_scientific_notation_in_documents_is_float():
    doc = parse_document("lr: 1e-5\nmin_lr: 1E-7\neps: 1e-06\nsteps: 10\n", "x.yaml")
    assert doc.data == {"lr": 1e-5, "min_lr": 1e-7, "eps": 1e-6, "steps": 10}
    assert all(isinstance(doc.data[k], float) for k in ("lr", "min_lr", "eps"))


def test_dump_yaml_keeps_key_order():
    assert dump_yaml({"b": 1, "a": [1, 2]}) == "b: 1\na:\n- 1\n- 2\n"


@pytest.mark.parametrize(
    "loc,text",
    [
        ((), ""),
        (("run",), "run"),
        (("run", "replicas"), "run.replicas"),
        (("stages", 0, "name"), "stages[0].name"),
        (("betas", 1), "betas[1]"),
        (("a", 0, 2, "b"), "a[0][2].b"),
        ((0, "x"), "[0].x"),
    ],
)
def test_format_loc(loc, text):
    assert format_loc(loc) == text


def test_range_text():
    assert range_text((1e-6, False), (1e-3, False)) == "1e-06..0.001"
    assert range_text((0, True), (1, False)) == "> 0 and <= 1"
    assert range_text(None, (5, False)) == "<= 5"
    assert range_text((0, False), None) == ">= 0"
    assert range_text(None, (5, True)) == "< 5"


# --- validation errors -----------------------------------------------------------------------


class Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alpha: Literal[16, 32, 64] = 32
    ratio: Annotated[float, Field(ge=0.0, le=100.0)] | None = None
    dropout: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0


class Outer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    steps: Annotated[int, Field(ge=1, le=5)] = 1
    inner: Inner | None = None
    items: list[Inner] = []


def _problems(data, document=None):
    with pytest.raises(ValidationError) as info:
        Outer.model_validate(data)
    return problems_from_validation_error(info.value, Outer, document)


def test_range_error_names_range():
    [problem] = _problems({"steps": 9})
    assert (problem.path, problem.message, problem.allowed) == (
        "steps",
        "9 is out of range",
        "1..5",
    )


def test_literal_error_inside_optional_block_names_values():
    [problem] = _problems({"inner": {"alpha": 48}})
    assert problem.path == "inner.alpha"
    assert problem.message == "48 is not allowed"
    assert problem.allowed == "16, 32, 64"


def test_range_error_on_optional_field_names_range():
    [problem] = _problems({"inner": {"ratio": 101}})
    assert problem.allowed == "0.0..100.0"


def test_error_inside_list_item():
    [problem] = _problems({"items": [{}, {"dropout": 2}]})
    assert problem.path == "items[1].dropout"
    assert problem.allowed == "0.0..1.0"


def test_unknown_field_suggests_close_name():
    [problem] = _problems({"inner": {"alpah": 32}})
    assert problem.path == "inner.alpah"
    assert problem.message == "unknown field; did you mean 'alpha'?"
    assert problem.allowed == "alpha, ratio, dropout"


def test_unknown_field_without_close_name():
    [problem] = _problems({"zzz": 1})
    assert problem.message == "unknown field"
    assert problem.allowed == "steps, inner, items"


def test_type_error_shows_value():
    [problem] = _problems({"steps": "many"})
    assert "'many'" in problem.message


def test_validate_locates_problems_in_document():
    doc = parse_document("steps: 2\ninner:\n  alpha: 48\n", "cfg.yaml")
    with pytest.raises(ConfigError) as info:
        validate(Outer, doc)
    [problem] = info.value.problems
    assert problem.format() == "cfg.yaml:3: inner.alpha: 48 is not allowed (allowed: 16, 32, 64)"
    assert validate(Outer, Document({"steps": 3}, "ok.yaml")).steps == 3


def test_a_control_character_is_one_located_problem() -> None:
    with pytest.raises(ConfigError) as refused:
        parse_document("name: demo\ndescription: a\x1fb\n", "c.yaml")
    assert str(refused.value) == (
        "c.yaml:2: not valid YAML: character '\\x1f' is not allowed in YAML (special characters "
        "are not allowed)"
    )
