"""HTML of tuneloop's pages: plain server-rendered pages, no scripts, every value escaped."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from html import escape
from typing import Any

REFRESH_SECONDS = 5

_STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#1f2328;
background:#f6f8fa}
header{background:#017cee;color:#fff;padding:.6rem 1.2rem;font-weight:600}
header a{color:#fff}
main{padding:1rem 1.2rem;max-width:1200px}
h1{font-size:1.3rem;margin:.2rem 0 .8rem;word-break:break-all}
h2{font-size:1.05rem;margin:1.4rem 0 .5rem}
table{border-collapse:collapse;background:#fff;margin:.2rem 0}
td,th{border:1px solid #d0d7de;padding:.25rem .6rem;text-align:left;vertical-align:top;
font-size:.9rem}
th{background:#eef1f4;font-weight:600}
pre{background:#0d1117;color:#e6edf3;padding:.8rem;overflow:auto;max-height:36rem;
font-size:.8rem;line-height:1.35;white-space:pre-wrap;word-break:break-all;margin:0}
.log{display:flex;flex-direction:column-reverse;overflow:auto;max-height:36rem}
.log pre{max-height:none;overflow:visible}
code{font-size:.85rem}
.state{display:inline-block;padding:.1rem .55rem;border-radius:1rem;color:#fff;
font-weight:600;font-size:.85rem}
.SUCCEEDED{background:#1a7f37}.FAILED{background:#cf222e}.STOPPED{background:#6e7781}
.RUNNING{background:#0969da}.PENDING{background:#9a6700}
.bar{width:22rem;height:.7rem;background:#d0d7de;border-radius:.35rem;overflow:hidden;
display:inline-block;vertical-align:middle}
.bar span{display:block;height:100%;background:#0969da}
.note{background:#fff8c5;border:1px solid #d4a72c;padding:.6rem .8rem;max-width:60rem}
.muted{color:#656d76}
"""


def page(title: str, body: str, *, refresh: bool = False, home: str = "") -> str:
    meta = f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">' if refresh else ""
    airflow = f' &middot; <a href="{escape(home)}">Airflow</a>' if home else ""
    return (
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
        f'<meta name="viewport" content="width=device-width">{meta}'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<header>tuneloop{airflow}</header><main>{body}</main></body></html>\n"
    )


def text(value: Any) -> str:
    return escape("" if value is None else str(value))


def link(url: str, label: Any) -> str:
    return f'<a href="{escape(url)}">{text(label)}</a>'


def table(rows: Iterable[tuple[Any, Any]], *, raw: bool = False) -> str:
    """Two columns; the values are escaped unless ``raw`` (they are HTML already)."""
    cells = "".join(
        f"<tr><th>{text(key)}</th><td>{value if raw else text(value)}</td></tr>"
        for key, value in rows
    )
    return f"<table>{cells}</table>" if cells else '<p class="muted">none</p>'


def grid(headers: list[str], rows: Iterable[list[str]]) -> str:
    """A table whose cells are HTML already."""
    head = "".join(f"<th>{text(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>" if body else '<p class="muted">none</p>'


def state(value: str) -> str:
    return f'<span class="state {escape(value)}">{escape(value)}</span>'


def number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return text(value)


def millis(value: Any) -> str:
    """An MLflow timestamp (ms since the epoch) as UTC time."""
    if not isinstance(value, int | float) or value <= 0:
        return ""
    return datetime.fromtimestamp(value / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return ""
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


def json_block(value: Any) -> str:
    return f"<pre>{text(json.dumps(value, indent=2, sort_keys=False, default=str))}</pre>"


# -- the job page -------------------------------------------------------------------------------


def job_page(view: Mapping[str, Any], *, refresh_url: str, home: str) -> str:
    name = view["name"]
    parts = [f"<h1>Job {text(name)} {state(view['state'])}</h1>"]
    progress = view.get("progress")
    progress_html = ""
    if progress:
        total = progress.get("total")
        fraction = progress.get("fraction")
        progress_html = f"step {text(progress['step'])}" + (f" of {text(total)}" if total else "")
        if fraction is not None:
            width = f"{fraction * 100:.1f}%"
            progress_html = (
                f'<span class="bar"><span style="width:{width}"></span></span> '
                f"{progress_html} ({fraction:.0%})"
            )
        if progress.get("eta_text"):
            progress_html += f", about {text(progress['eta_text'])} left"
    labels = ", ".join(f"{k}={v}" for k, v in sorted(view["labels"].items()))
    rows = [
        ("state", str(view["summary"]).removeprefix(f"{name}: ")),
        ("kind", view["kind"]),
        ("labels", labels),
        ("created", view["created_at"]),
        ("started", view["started_at"]),
        ("ended", view["ended_at"]),
        ("duration", duration(view["duration_seconds"])),
        ("message", view["message"]),
        ("failure reason", view["reason"]),
        ("entry point", view["entrypoint"]),
        ("job folder", f"{view['root']}/{name}"),
    ]
    shown = [(k, text(v)) for k, v in rows if v not in (None, "")]
    if progress_html:
        shown.insert(1, ("progress", progress_html))
    parts.append(table(shown, raw=True))

    log = view["log"]
    refresh = (
        f"refreshed every {REFRESH_SECONDS} s while the job runs; " if not view["final"] else ""
    )
    parts.append(
        f"<h2>Log</h2><p class=muted>The last {len(log['lines'])} lines of job.log "
        f"({text(log['size'])} bytes; {refresh}{link(refresh_url, 'refresh')})</p>"
    )
    if log["lines"]:  # the newest line in view: the box is scrolled from its bottom
        parts.append(f"<div class=log><pre>{text(chr(10).join(log['lines']))}</pre></div>")

    outputs = view["outputs"]
    parts.append(f"<h2>Outputs</h2><p>Folder: <code>{text(outputs['uri'])}</code></p>")
    if not outputs["shown"]:
        parts.append(f'<p class="muted">Not shown: {text(outputs["why"])}.</p>')
    else:
        for result in outputs["evaluation"]:
            rows = [(k, number(v)) for k, v in result["metrics"].items()]
            parts.append(f"<h2>Evaluation: {text(result['file'])}</h2>{table(rows, raw=True)}")
        if outputs["manifest"] is not None:
            parts.append(f"<h2>manifest.json</h2>{json_block(outputs['manifest'])}")
        if outputs["checkpoint"] is not None:
            parts.append(f"<h2>checkpoint.json</h2>{json_block(outputs['checkpoint'])}")
        files = [
            [
                text(f["name"] + ("/" if f["dir"] else "")),
                text(f["size"]) if f["size"] is not None else "",
            ]
            for f in outputs["files"]
        ]
        parts.append(f"<h2>Files</h2>{grid(['name', 'bytes'], files)}")
    if view.get("recipe") is not None:
        parts.append(f"<details><summary>Recipe</summary>{json_block(view['recipe'])}</details>")
    return page(f"Job {name}", "".join(parts), refresh=not view["final"], home=home)


# -- MLflow ------------------------------------------------------------------------------------


def run_body(run: Mapping[str, Any], *, run_url: Any) -> str:
    """A run: what it is, its tuneloop tags, params, latest metrics and nested runs."""
    title = f"MLflow run {run['name'] or run['run_id']}"
    parts = [f"<h1>{text(title)}</h1>"]
    rows = [
        ("run id", text(run["run_id"])),
        ("kind", text(run["kind"])),
        ("round", text(run["round"])),
        ("stage", text(run["stage"])),
        ("status", text(run["status"])),
        ("started", millis(run["start_time"])),
        ("ended", millis(run["end_time"])),
    ]
    if run.get("parent_id"):
        rows.append(("parent run", link(run_url(run["parent_id"]), run["parent_id"])))
    parts.append(table([(k, v) for k, v in rows if v], raw=True))
    if run["metrics"]:
        metrics = [(k, number(v)) for k, v in run["metrics"].items()]
        parts.append(f"<h2>Metrics (latest)</h2>{table(metrics, raw=True)}")
    if run["params"]:
        parts.append(f"<h2>Parameters</h2>{table(run['params'].items())}")
    if run["tags"]:
        parts.append(f"<h2>Tags</h2>{table(run['tags'].items())}")
    if run["children"]:
        rows_html = [
            [
                link(run_url(child["run_id"]), child["name"] or child["run_id"]),
                text(child["kind"]),
                text(child["stage"] or ""),
            ]
            for child in run["children"]
        ]
        parts.append(f"<h2>Nested runs</h2>{grid(['run', 'kind', 'stage'], rows_html)}")
    if run.get("note"):
        parts.append(f"<h2>Description</h2><pre>{text(run['note'])}</pre>")
    return "".join(parts)


def message_body(title: str, message: str, links: Iterable[tuple[str, str]] = ()) -> str:
    items = "".join(f"<li>{link(url, label)}</li>" for url, label in links if url)
    return f"<h1>{text(title)}</h1><p class=note>{text(message)}</p>" + (
        f"<ul>{items}</ul>" if items else ""
    )


def experiment_body(view: Mapping[str, Any], *, run_url: Any, dag_run_url: Any) -> str:
    parts = [
        f"<h1>MLflow experiment {text(view['experiment'])}</h1>",
        f"<p class=muted>Campaign {text(view['campaign'])}, store {text(view['store'])}</p>",
    ]
    if view.get("server_url"):
        parts.append(f"<p>{link(view['server_url'], 'Open it in the MLflow UI')}</p>")
    rows = [
        [
            link(run_url(r["run_id"]), r["name"] or r["run_id"]),
            text(r["decision"]),
            text(r["reason"]),
            link(dag_run_url(r["airflow_run_id"]), r["airflow_run_id"])
            if r["airflow_run_id"]
            else "",
            ", ".join(f"{text(k)}={number(v)}" for k, v in r["metrics"].items()),
        ]
        for r in view["rounds"]
    ]
    if rows:
        parts.append(grid(["round", "decision", "reason", "DAG run", "metrics"], rows))
    else:
        parts.append("<p class=note>No round of this campaign has been decided yet.</p>")
    return "".join(parts)
