"""Airflow templates in campaign values render like Airflow would, and fail loudly."""

from __future__ import annotations

from datetime import date

import pytest

from tuneloop.config.templating import render_template, sample_template_context

CONTEXT = sample_template_context(date(2026, 3, 9))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("s3://b/{{ ds }}/x.jsonl", "s3://b/2026-03-09/x.jsonl"),
        ("s3://b/{{ ds_nodash }}/x.jsonl", "s3://b/20260309/x.jsonl"),
        ("s3://b/{{ data_interval_start.strftime('%Y/%m') }}/", "s3://b/2026/03/"),
        ("s3://b/{{ prev_ds }}..{{ next_ds }}", "s3://b/2026-03-08..2026-03-10"),
        ("s3://b/no-template.jsonl", "s3://b/no-template.jsonl"),
    ],
)
def test_renders_airflow_variables(text: str, expected: str) -> None:
    assert render_template(text, CONTEXT) == expected


def test_undefined_variable_names_the_available_ones() -> None:
    with pytest.raises(ValueError, match=r"'day' is undefined .*\(template variables: .*ds_nodash"):
        render_template("s3://b/{{ day }}/", CONTEXT)


def test_syntax_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="cannot render"):
        render_template("s3://b/{{ ds }/", CONTEXT)


def test_sandbox_refuses_attribute_escapes() -> None:
    with pytest.raises(ValueError):
        render_template("{{ ds.__class__.__mro__ }}", CONTEXT)
