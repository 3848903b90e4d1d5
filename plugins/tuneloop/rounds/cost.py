"""What one job cost: instance-hours, GPU-hours and an estimate in US dollars.

Every backend reports instance-seconds as ``JobStatus.billable_seconds``: SageMaker's
BillableTimeInSeconds times the instance count, HyperPod's wall time times the nodes its pods
asked for, the local backend's wall time (one process on this machine). The instance type is
the campaign's (``backend.instance_type``: every job of a campaign runs on it), the instance
count the recipe's ``run.replicas``. GPU-hours count the instance type's GPUs
(`recipes.prices.gpus_per_instance`), so CPU-only instance types and the local backend count
none; their instance-hours are still recorded. The dollar estimate is the instance-hours times
`recipes.prices.price_per_hour`; the local backend costs nothing, and an instance type
without a known price gives None with the reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from tuneloop.recipes.prices import gpus_per_instance, price_per_hour


def backend_instance_type(backend: Any) -> str | None:
    """The instance type a campaign's jobs run on; None on the local backend."""
    if getattr(backend, "type", "local") == "local":
        return None
    return str(getattr(backend, "instance_type", "") or "") or None


def recipe_instance_count(recipe: Mapping[str, Any] | None) -> int:
    """Instances a job asks for: the recipe's ``run.replicas`` (1 when it names none)."""
    run = (recipe or {}).get("run") or {}
    replicas = run.get("replicas", 1) if isinstance(run, Mapping) else 1
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        return 1
    return replicas


def job_cost(
    billable_seconds: float | None,
    backend: Any,
    recipe: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The cost fields of one job's record (`rounds.ledger.JobCost`), as keyword arguments."""
    instance_type = backend_instance_type(backend)
    region = getattr(backend, "region", None)
    overrides = getattr(backend, "price_per_hour", None) or {}
    price = price_per_hour(instance_type, region, overrides)
    seconds = max(billable_seconds or 0.0, 0.0)
    hours = seconds / 3600.0
    note = price.note
    if billable_seconds is None:
        note = "the backend reported no billable time" + (f"; {note}" if note else "")
    return {
        "billable_seconds": billable_seconds,
        "instance_type": instance_type or "local",
        "instance_count": recipe_instance_count(recipe),
        "instance_hours": hours,
        "gpu_hours": hours * gpus_per_instance(instance_type),
        "price_per_hour": price.usd_per_hour,
        "estimated_cost_usd": None if price.usd_per_hour is None else hours * price.usd_per_hour,
        "price_region": price.region,
        "price_source": price.source,
        "cost_note": note,
    }


def total_cost(costs: Iterable[float | None]) -> float | None:
    """The sum of known costs; None when any one is unknown (a partial sum would read as the
    whole)."""
    total = 0.0
    for cost in costs:
        if cost is None:
            return None
        total += cost
    return total
