"""The lifecycle's plans and applies as text a person reads: the ``tuneloop lifecycle`` commands
print them, the lifecycle DAG's tasks log them.

Sizes in binary units and costs in US dollars (`tracking.report.human_bytes`, `dollars`); URIs
inside the campaign's folder are shown from it, and a long one loses its middle (the JSON has
them whole). Plain functions of the boxes: nothing is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from tuneloop.tracking.report import dollars, human_bytes

if TYPE_CHECKING:
    from tuneloop.lifecycle.records import (
        ActionResult,
        ApplyReport,
        LifecyclePlan,
        PlannedAction,
    )

URI_WIDTH = 64
"""Longer URIs lose their middle in the plan's table (``--json`` has them whole)."""
OUTCOME_WORDS = {
    "archived": "archived",
    "deleted": "deleted",
    "retained_by_service": "retained by the service (not archivable from this account)",
    "skipped": "skipped",
    "failed": "failed",
}


def short_uri(uri: str, root: str, width: int = URI_WIDTH) -> str:
    """The URI relative to the campaign's folder when it lies inside, its middle left out when
    it is still longer than ``width``."""
    base = root.rstrip("/") + "/"
    text = uri[len(base) :] if uri.startswith(base) else uri
    if len(text) <= width:
        return text
    keep = width - 1
    head = keep // 3
    return text[:head] + "…" + text[len(text) - (keep - head) :]


def _table(rows: Sequence[Sequence[str]], right: frozenset[int] = frozenset()) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for index, row in enumerate(rows):
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  " + "  ".join(cells).rstrip())
        if index == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    return lines


def _action_rows(actions: Sequence[PlannedAction], root: str) -> list[list[str]]:
    rows = [["action", "owner", "size", "class", "reason", "uri"]]
    for line in actions:
        artifact = line.artifact
        size = human_bytes(artifact.bytes) + (" (est.)" if artifact.estimated else "")
        moved = f"{artifact.storage_class} -> {line.target_class}" if line.target_class else ""
        rows.append(
            [
                line.action,
                artifact.owner,
                size,
                moved or artifact.storage_class,
                line.reason,
                short_uri(artifact.uri, root),
            ]
        )
    return rows


def format_plan(plan: LifecyclePlan, *, root: str) -> str:
    """The plan as a person reads it: what it would archive or delete, the rounds it keeps and
    why, what is left alone, and the storage cost before and after."""
    lines = [
        f"Lifecycle plan {plan.sequence} of campaign {plan.campaign}: keep_last "
        f"{plan.keep_last}, archive to {plan.archive_storage_class}, delete_intermediates "
        f"{str(plan.delete_intermediates).lower()}, prices of {plan.region}",
        "",
    ]
    acting = plan.acting()
    if acting:
        lines.append(
            f"To do ({len(acting)}): archive {human_bytes(plan.bytes_to_archive)}, delete "
            f"{human_bytes(plan.bytes_to_delete)}"
        )
        lines += _table(_action_rows(acting, root), right=frozenset({2}))
    else:
        lines.append("To do: nothing (every artifact is kept, already archived or left alone)")
    lines.append("")
    lines.append("Rounds kept:")
    for kept in sorted(plan.retained, key=lambda r: r.round):
        label = "baseline" if kept.round == 0 else f"round {kept.round}"
        lines.append(f"  {label}: {', '.join(kept.reasons)}")
    if not plan.retained:
        lines.append("  none")
    lines += _left_alone(plan)
    lines.append("")
    lines.append(
        f"estimated storage cost: {dollars(plan.monthly_cost_before)}/month now, "
        f"{dollars(plan.monthly_cost_after)}/month after (prices: {plan.prices_source})"
    )
    if plan.first:
        lines.append(
            "This is the campaign's first plan: the lifecycle DAG only plans it; "
            "`tuneloop lifecycle apply` (or the DAG with apply) acts."
        )
    return "\n".join(lines) + "\n"


def _left_alone(plan: LifecyclePlan) -> list[str]:
    """The lines that change nothing, counted by action and reason (the JSON lists them all)."""
    counts: dict[tuple[str, str], list[int]] = {}
    for line in plan.actions:
        if line.action in ("keep", "none"):
            entry = counts.setdefault((line.action, line.reason), [0, 0])
            entry[0] += 1
            entry[1] += line.artifact.bytes
    if not counts:
        return []
    out = ["", "Left as they are:"]
    for (action, reason), (number, size) in sorted(counts.items()):
        out.append(f"  {action}: {number} artifact(s), {human_bytes(size)}: {reason}")
    return out


def format_apply(plan: LifecyclePlan, report: ApplyReport, *, root: str) -> str:
    """What an apply did: each line by outcome, the bytes moved and the cost saved."""
    lines = [f"Lifecycle apply of plan {plan.sequence} of campaign {plan.campaign}:"]
    by_outcome: dict[str, list[ActionResult]] = {}
    for result in report.results:
        by_outcome.setdefault(result.outcome, []).append(result)
    if not report.results:
        lines.append("  nothing to do (every artifact is kept, already archived or left alone)")
    for outcome, words in OUTCOME_WORDS.items():
        results = by_outcome.get(outcome, [])
        if not results:
            continue
        total = human_bytes(sum(r.bytes for r in results))
        lines.append(f"  {words}: {len(results)} ({total})")
        for result in results:
            where = f" -> {short_uri(result.archive_uri, root)}" if result.archive_uri else ""
            detail = f"  ({result.detail})" if result.detail and outcome != "archived" else ""
            lines.append(f"    {short_uri(result.uri, root)}{where}{detail}")
    lines.append(
        f"bytes archived: {human_bytes(report.bytes_archived)}, deleted: "
        f"{human_bytes(report.bytes_deleted)}"
    )
    lines.append(
        f"estimated storage cost: {dollars(report.monthly_cost_before)}/month before, "
        f"{dollars(report.monthly_cost_after)}/month after, "
        f"{dollars(report.monthly_cost_saved)}/month saved (prices: {plan.prices_source})"
    )
    return "\n".join(lines) + "\n"
