"""What an instance-hour costs: on-demand prices of the instance types Nova jobs run on.

A round's record carries an estimated cost per job: instance-seconds billed times the hourly
price of the instance type, in the region the job ran in. The table below holds the prices
that could be read from public sources, with the page and date they come from; an instance
type whose price could not be read is listed in `UNPRICED` with the reason, and its cost is
reported as unknown (None) rather than guessed. A campaign's ``backend.price_per_hour``
replaces the table for its instance types: a HyperPod cluster is billed per node-hour whether
its nodes are busy or not, and savings plans or reserved capacity change the rate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from tuneloop.recipes.catalog import INSTANCE_RESOURCES

PRICES_SOURCE = (
    "Amazon SageMaker AI pricing (https://aws.amazon.com/sagemaker/pricing/), training, "
    "on-demand, US East (N. Virginia); the page fills its table in the browser, so the "
    "figures are those several public cost tables quote from it, agreeing to the cent; "
    "read 2026-12-05"
)
"""Where `PRICES` comes from and when it was read: records carry it beside each cost."""

PRICES_READ_ON = "2026-12-05"

PRICES_DEFAULT_REGION = "us-east-1"
"""The region whose prices stand in for a region the table does not list."""

PRICES: dict[str, dict[str, float]] = {
    # US dollars per instance-hour, SageMaker training, on-demand.
    "us-east-1": {
        "ml.p4d.24xlarge": 37.688,
        "ml.g5.12xlarge": 7.09,
        "ml.g5.24xlarge": 10.18,
        "ml.g5.48xlarge": 20.36,
        "ml.g6.12xlarge": 5.752,
        "ml.g6.24xlarge": 8.344,
        "ml.g6.48xlarge": 16.688,
    },
}
"""Region -> instance type -> US dollars per instance-hour."""

UNPRICED: dict[str, str] = {
    "ml.p5.48xlarge": "the public sources disagree on its SageMaker training price (and the "
    "June 2025 P5 price cut)",
    "ml.p5e.48xlarge": "no public source quotes its SageMaker training price",
    "ml.p5en.48xlarge": "no public source quotes its SageMaker training price",
    "ml.p4de.24xlarge": "no public source quotes its SageMaker training price",
}
"""Instance types the catalog allows whose price could not be read, and why."""

LOCAL_NOTE = "local jobs run on this machine: no charge is counted"


@dataclass(frozen=True)
class Price:
    """The hourly price used for one instance type, and where it came from."""

    usd_per_hour: float | None
    """None: unknown (see ``note``)."""
    region: str
    """The region whose price was used (us-east-1 for a region the table does not list)."""
    source: str
    note: str = ""
    """Why the price is unknown, or that another region's price stands in."""


def price_per_hour(
    instance_type: str | None,
    region: str | None,
    overrides: Mapping[str, float] | None = None,
) -> Price:
    """The on-demand price of one ``instance_type`` instance-hour in ``region``.

    ``None`` as instance type is the local backend: free. ``overrides`` (the campaign's
    ``backend.price_per_hour``) win over the table. An unlisted region gets us-east-1's price
    and says so; an instance type without a known price gets None and the reason."""
    if instance_type is None:
        return Price(0.0, "local", "local backend", LOCAL_NOTE)
    if overrides and instance_type in overrides:
        return Price(float(overrides[instance_type]), region or "", "backend.price_per_hour")
    wanted = region or PRICES_DEFAULT_REGION
    table_region = wanted if wanted in PRICES else PRICES_DEFAULT_REGION
    fallback = (
        f"no prices for {wanted} in the table: {PRICES_DEFAULT_REGION}'s are used"
        if table_region != wanted
        else ""
    )
    usd = PRICES[table_region].get(instance_type)
    if usd is None:
        why = UNPRICED.get(instance_type, "it is not in tuneloop's price table")
        return Price(
            None,
            table_region,
            PRICES_SOURCE,
            f"price of {instance_type} unknown: {why}; set backend.price_per_hour",
        )
    return Price(usd, table_region, PRICES_SOURCE, fallback)


def gpus_per_instance(instance_type: str | None) -> int:
    """GPUs one instance has: 0 for the local backend (None: it runs on this machine's CPU, or
    a GPU nobody bills) and for instance types the catalog lists without GPUs; an instance type
    the catalog does not know counts 1, so GPU-hours are not silently dropped."""
    if instance_type is None:
        return 0
    resources = INSTANCE_RESOURCES.get(instance_type)
    if resources is not None:
        return resources.gpus
    return 0 if _cpu_only(instance_type) else 1


_CPU_FAMILIES = ("ml.m", "ml.c", "ml.r", "ml.t")


def _cpu_only(instance_type: str) -> bool:
    """General purpose, compute, memory and burstable families (ml.m5, ml.c5, ml.r5, ml.t3)
    have no GPU."""
    family = instance_type.split(".")[1] if instance_type.count(".") >= 2 else ""
    return bool(family) and f"ml.{family[0]}" in _CPU_FAMILIES and family[1:2].isdigit()
