"""The `tuneloop lifecycle` commands: plan, apply, restore, pin, apply-policy.

Each one acts on one campaign, named as `tuneloop campaign status` names it: a campaign file, or
a campaign name in the campaigns folder (``$TUNELOOP_CAMPAIGNS_DIR``, else ``recipes/campaigns/``).
They call `tuneloop.lifecycle.service`, the same functions the lifecycle DAG runs, so what the
command line plans and applies is what the DAG would plan and apply.

The rules:

- ``plan`` records its plan in the ledger (``lifecycle/plans/<nnnn>.json``) and changes nothing
  in storage; ``apply`` plans afresh and carries that plan out. A second ``apply`` finds nothing
  left to do.
- ``apply-policy`` writes (or merges into) the output bucket's lifecycle configuration, so it
  applies to S3 output roots only; a local campaign is a user error.
- Bad input (no such campaign, a broken file, a round that is not in the ledger) exits 2 with one
  line per problem; an apply in which some line failed exits 1 after saying which.
- ``--json`` prints the plan, apply report, restore plan or rules as one JSON object.

Kept fast: no Airflow, MLflow or torch is imported; boto3 only for a campaign on S3.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from tuneloop.cli.exit_codes import EXIT_INVALID, EXIT_OK
from tuneloop.errors import ConfigError
from tuneloop.tracking.lifecycle_text import format_apply, format_plan, short_uri

if TYPE_CHECKING:
    from tuneloop.config.file import CampaignFile
    from tuneloop.lifecycle.records import (
        RestorePlan,
    )

CAMPAIGN_HELP = (
    "campaign file, or a campaign name in $TUNELOOP_CAMPAIGNS_DIR (else recipes/campaigns/)"
)


def add_lifecycle_commands(commands: Any) -> None:
    lifecycle = commands.add_parser(
        "lifecycle",
        help="plan and apply a campaign's checkpoint retention; restore and pin rounds",
        description="Retention from the ledger: the champion, the last keep_last rounds, the "
        "base of a claimed or running round, the baseline and pinned rounds stay; the rest is "
        "archived (or deleted, with delete_intermediates).",
    )
    sub = lifecycle.add_subparsers(title="lifecycle commands", metavar="COMMAND")

    plan = _with_campaign(
        sub.add_parser(
            "plan",
            help="record and print what the lifecycle would do now (changes nothing)",
        )
    )
    plan.set_defaults(handler=_plan)

    apply = _with_campaign(
        sub.add_parser(
            "apply",
            help="plan, then archive and delete what the plan says (exit 1 if a line failed)",
        )
    )
    apply.set_defaults(handler=_apply)

    restore = _with_campaign(
        sub.add_parser(
            "restore",
            help="bring an archived round back (S3: RestoreObject; local: extract its tarballs)",
        )
    )
    _round_option(restore)
    restore.set_defaults(handler=_restore)

    pin = sub.add_parser(
        "pin", help="keep a round whatever the retention rules say (recorded in the ledger)"
    )
    pin.add_argument("campaign", metavar="CAMPAIGN", help=CAMPAIGN_HELP)
    _round_option(pin)
    pin.add_argument("--reason", default="", metavar="TEXT", help="why it is kept")
    pin.set_defaults(handler=_pin)

    policy = _with_campaign(
        sub.add_parser(
            "apply-policy",
            help="write the bucket lifecycle rule that moves tagged objects to the archive "
            "class (S3 output roots)",
        )
    )
    policy.set_defaults(handler=_apply_policy)


def _with_campaign(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("campaign", metavar="CAMPAIGN", help=CAMPAIGN_HELP)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def _round_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--round", dest="round_number", type=_round_number, required=True, metavar="N"
    )


def _round_number(text: str) -> int:
    """An argparse type: a round number, 1 or more (argparse names the option)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is less than 1")
    return value


def _load(reference: str) -> CampaignFile:
    from tuneloop.cli.status import load

    return load(reference)


def _run_id() -> str:
    return f"cli-{datetime.now(UTC):%Y%m%dT%H%M%S}"


# --- the commands --------------------------------------------------------------------------------


def _plan(args: argparse.Namespace) -> int:
    from tuneloop.lifecycle.service import plan_campaign

    cf = _load(args.campaign)
    plan = plan_campaign(cf, run_id=_run_id(), record=True)
    if args.json:
        print(plan.model_dump_json(indent=2))
    else:
        sys.stdout.write(format_plan(plan, root=_root(cf)))
    return EXIT_OK


def _apply(args: argparse.Namespace) -> int:
    from tuneloop.lifecycle.service import apply_campaign

    cf = _load(args.campaign)
    plan, report = apply_campaign(cf, run_id=_run_id())
    if args.json:
        out = {
            "plan": plan.model_dump(mode="json"),
            "report": report.model_dump(mode="json"),
            "monthly_cost_saved": report.monthly_cost_saved,
        }
        print(json.dumps(out, indent=2))
    else:
        sys.stdout.write(format_apply(plan, report, root=_root(cf)))
    failed = any(result.outcome == "failed" for result in report.results)
    return EXIT_INVALID if failed else EXIT_OK


def _restore(args: argparse.Namespace) -> int:
    from tuneloop.lifecycle.service import restore_round

    cf = _load(args.campaign)
    plan, pending = restore_round(cf, args.round_number)
    if args.json:
        out = {"plan": None if plan is None else plan.model_dump(mode="json"), "pending": pending}
        print(json.dumps(out, indent=2))
    else:
        sys.stdout.write(format_restore(args.round_number, plan, pending, root=_root(cf)))
    return EXIT_OK


def _pin(args: argparse.Namespace) -> int:
    from tuneloop.lifecycle.service import pin_round

    cf = _load(args.campaign)
    pin = pin_round(cf, args.round_number, by=_user(), reason=args.reason)
    why = f" ({pin.reason})" if pin.reason else ""
    print(
        f"round {pin.round} of campaign {pin.campaign} is pinned{why}: the lifecycle keeps it "
        "whatever the retention rules say"
    )
    return EXIT_OK


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name (a container without a passwd entry)
        return ""


def _apply_policy(args: argparse.Namespace) -> int:
    from tuneloop import storage
    from tuneloop.config.paths import campaign_root

    cf = _load(args.campaign)
    root = campaign_root(cf.campaign)
    if not storage.is_s3(root):
        raise ConfigError(
            [
                cf.problem(
                    ("backend", "output_root"),
                    "bucket lifecycle rules apply to S3 output roots; this campaign's output "
                    f"root is a local folder ({cf.campaign.backend.output_root})",
                    fix="use `tuneloop lifecycle apply` for a local campaign (it archives to "
                    "tarballs under the campaign's archive/ folder)",
                )
            ]
        )
    from tuneloop.lifecycle.objects import ARCHIVE_TAG, apply_policy, archive_rule_id

    bucket, key = storage.split_s3(root)
    prefix = key.rstrip("/") + "/" if key else ""
    retention = cf.campaign.retention
    archive_class = retention.archive_storage_class
    rules = apply_policy(bucket, prefix, archive_class)
    rule_id = archive_rule_id(prefix, archive_class)
    if args.json:
        out = {"bucket": bucket, "prefix": prefix, "rule_id": rule_id, "rules": rules}
        print(json.dumps(out, indent=2))
        return EXIT_OK
    print(
        f"s3://{bucket}: lifecycle rule {rule_id} written: objects under s3://{bucket}/{prefix} "
        f"tagged {ARCHIVE_TAG}={archive_class} move to {archive_class}; the bucket has "
        f"{len(rules)} rule(s), every other one kept as it was"
    )
    if retention.archive_mode != "tags":
        print(
            "note: retention.archive_mode is copy, so `apply` moves objects itself; the rule "
            "acts on objects that archive_mode: tags marks"
        )
    return EXIT_OK


# --- text ----------------------------------------------------------------------------------------


def _root(cf: CampaignFile) -> str:
    from tuneloop.config.paths import campaign_root

    return campaign_root(cf.campaign)


def format_restore(
    round_number: int, plan: RestorePlan | None, pending: Sequence[str], *, root: str
) -> str:
    if plan is None:
        return f"round {round_number} has nothing archived: nothing to restore\n"
    lines = [
        f"Restore of round {plan.base_round} ({plan.base_output_uri}): {len(plan.items)} "
        f"archived item(s), tier {plan.tier}, restored copies kept {plan.days} day(s)"
    ]
    waiting = set(pending)
    for item in plan.items:
        if item.owner == "local":
            state = "extracted from " + short_uri(item.archive_uri or "", root)
        elif item.uri in waiting:
            state = f"restore requested ({item.storage_class}), not finished yet"
        else:
            state = f"readable ({item.storage_class})"
        lines.append(f"  {short_uri(item.uri, root)}: {state}")
    if pending:
        lines.append(
            f"{len(pending)} object(s) still being restored by S3; run this command again to "
            "see whether they are back (a round whose base they are waits in restore_base)"
        )
    else:
        lines.append(f"round {plan.base_round} is readable again")
    return "\n".join(lines) + "\n"
