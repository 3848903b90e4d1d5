"""Airflow templates in campaign values (``s3://bucket/{{ ds }}/train.jsonl``).

A round's data URIs are rendered with that run's Airflow context, so a schedule or a backfill
feeds each round its own data. Outside Airflow (`tuneloop campaign validate`), a sample context
for a chosen logical date stands in.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any


def sample_template_context(logical_date: date | None = None) -> dict[str, Any]:
    """The Airflow template variables a data URI may use, for a run on ``logical_date``."""
    day = logical_date or datetime.now(UTC).date()
    start = datetime.combine(day, time.min, tzinfo=UTC)
    return {
        "ds": day.isoformat(),
        "ds_nodash": day.strftime("%Y%m%d"),
        "ts": start.isoformat(),
        "ts_nodash": start.strftime("%Y%m%dT%H%M%S"),
        "logical_date": start,
        "data_interval_start": start,
        "data_interval_end": start + timedelta(days=1),
        "prev_ds": (day - timedelta(days=1)).isoformat(),
        "next_ds": (day + timedelta(days=1)).isoformat(),
        "run_id": f"manual__{start.isoformat()}",
        "params": {},
        "var": {"value": {}, "json": {}},
    }


def render_template(text: str, context: dict[str, Any]) -> str:
    """Render ``{{ ... }}`` in a campaign value; undefined names are errors, not empty strings."""
    if "{{" not in text and "{%" not in text:
        return text
    import jinja2
    from jinja2.sandbox import SandboxedEnvironment

    env = SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False)
    try:
        return env.from_string(text).render(**context)
    except jinja2.UndefinedError as exc:
        names = ", ".join(sorted(k for k in context if not k.startswith("_")))
        raise ValueError(f"{exc.message} in {text!r} (template variables: {names})") from None
    except jinja2.TemplateError as exc:
        raise ValueError(f"cannot render {text!r}: {exc}") from None
