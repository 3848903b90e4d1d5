"""Where a round starts: the run's conf checked, then the ledger and the conf decide.

Reads the ledger only; nothing is written (``plan_round`` claims the round after planning).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from tuneloop.config.campaign import Campaign, Gate
from tuneloop.config.file import CampaignFile
from tuneloop.config.paths import absolute, campaign_root
from tuneloop.errors import Problem, TuneloopError
from tuneloop.rounds.boxes import RoundConf, RoundStart

if TYPE_CHECKING:
    from tuneloop.rounds.ledger import Ledger, RoundRecord


class RoundError(TuneloopError):
    """A round cannot go on: bad conf, a missing checkpoint, a ledger conflict."""


CONF_ACCEPTS = {
    "base_checkpoint": "null or a string: a job output folder holding manifest.json",
    "start_from_round": "null or an integer >= 1: a recorded round",
    "rollback": "null, true or false",
    "stages": "null or a list of stage names",
    "data_overrides": 'null or an object {stage: {"train"|"validation": uri}}',
    "dry_run": "true or false",
    "reason": "null or a string",
    "after_finish": "true or false",
}
"""What each Param accepts, in the words the refusal uses."""


def parse_conf(conf: Mapping[str, Any] | None) -> RoundConf:
    """The run's conf as a `RoundConf`; every unknown key and wrong value is one problem."""
    try:
        return RoundConf.model_validate(dict(conf or {}))
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else ""
            where = ".".join(str(part) for part in error["loc"])
            if error["type"] == "extra_forbidden":
                problems.append(
                    Problem(
                        f"conf.{where}",
                        "is not a parameter of this DAG",
                        allowed=", ".join(RoundConf.model_fields),
                        fix="remove it, or check its spelling",
                    )
                )
            else:
                problems.append(
                    Problem(
                        f"conf.{where}",
                        f"{error['input']!r} is not accepted ({error['msg'].lower()})",
                        allowed=CONF_ACCEPTS.get(name),
                    )
                )
        raise RoundError(problems) from None


def start_round(cf: CampaignFile, conf: RoundConf | Mapping[str, Any] | None = None) -> RoundStart:
    """Round number and starting point: the ledger decides, the run's conf may override.

    Without conf (a schedule, an Asset, a plain UI trigger) the round continues from what the
    latest recorded decision said: its next base, or the champion after a finish or stop, and
    the rollback adjustments when the latest round was rolled back. A manual trigger may name a
    base checkpoint folder or a round to restart from (a manual rollback). A campaign that is
    over (see `gate.campaign_over`) refuses the round unless the conf says ``after_finish``.
    Reads the ledger only; nothing is written.
    """
    from tuneloop.rounds.ledger import Ledger

    conf = conf if isinstance(conf, RoundConf) else parse_conf(conf)
    campaign = cf.campaign
    if not conf.dry_run and campaign.gate.usd_budget() is not None:
        _check_priced(cf)
    ledger = Ledger(campaign_root(campaign))
    records = ledger.records()  # read once: number, latest decision, champion, known outputs
    start = RoundStart(
        campaign=campaign.name,
        round=records[-1].round + 1 if records else 1,
        dry_run=conf.dry_run,
        stages=list(conf.stages or []),
        data_overrides=dict(conf.data_overrides or {}),
        reason=conf.reason or "",
    )
    _check_stage_names(campaign, start)
    if records:
        start = _as_the_ledger_says(cf, conf, start, records)
    start = _as_the_conf_says(conf, start, records, ledger)
    if not start.dry_run:
        _check_budget(cf, start, records)
    return start


class BudgetExceededError(RoundError):
    """The campaign's spend (with the next round's projection) passes its budget: the round is
    refused before any job is submitted."""


def _check_budget(cf: CampaignFile, start: RoundStart, records: list[RoundRecord]) -> None:
    """Refuse the round before its first job when the budget is spent, or would be with the
    round's projected cost (a dry run submits nothing and is let through)."""
    from tuneloop.rounds.gate import budget_refusal
    from tuneloop.rounds.ledger import history_of

    campaign = cf.campaign
    gate = campaign.gate
    if gate.gpu_hour_budget() is None and gate.usd_budget() is None:
        return
    why = budget_refusal(
        gate,
        history_of(records),
        start.stages,
        stages=campaign.stages,
        technique=campaign.technique,
    )
    if not why:
        return
    loc = _budget_field(gate, why)
    raise BudgetExceededError(
        [
            cf.problem(
                loc,
                f"round {start.round} of campaign {campaign.name!r} is refused before any job "
                f"is submitted: {why}",
                fix="raise the budget in the campaign file (gate.budget: {usd: ..., "
                "gpu_hours: ...}) if the campaign should go on; `tuneloop status` shows what "
                "was spent",
            )
        ]
    )


def _check_priced(cf: CampaignFile) -> None:
    """No round starts, and no job is submitted, under a dollar budget nobody can check."""
    from tuneloop.config.checks import unpriced_budget

    unpriced = unpriced_budget(cf)
    if unpriced is not None:
        raise BudgetExceededError([unpriced])


def _budget_field(gate: Gate, why: str) -> tuple[str, ...]:
    """The campaign file's field of the budget the refusal is about."""
    dollars, hours = "$" in why, "GPU-hour" in why
    if dollars and not hours:
        return ("gate", "budget", "usd")
    if hours and not dollars:
        if gate.budget is None or gate.budget.gpu_hours is None:
            return ("gate", "budget_gpu_hours")
        return ("gate", "budget", "gpu_hours")
    return ("gate", "budget")


def _as_the_ledger_says(
    cf: CampaignFile, conf: RoundConf, start: RoundStart, records: list[RoundRecord]
) -> RoundStart:
    """What the latest decision said (the conf the decide task triggered with says the same);
    refused when the campaign is over and the conf does not say ``after_finish``."""
    from tuneloop.rounds.gate import campaign_over
    from tuneloop.rounds.ledger import champion_of, history_of

    latest = records[-1]
    over = campaign_over(cf.campaign.gate, history_of(records), latest.decision)
    if over and not conf.after_finish:
        raise CampaignOverError(_over_problems(cf, start.round, over))
    decision = latest.decision
    champion = champion_of(records)
    update: dict[str, object] = {
        "rollback": bool(decision.rollback),
        "rollback_of": latest.round if decision.action.value == "rollback" else None,
        "reason": start.reason
        or (f"after the campaign finished ({over})" if over else decision.reason),
    }
    if decision.action.value in ("continue", "rollback"):
        update |= {
            "base_output_uri": decision.next_base or "",
            "base_round": decision.next_base_round,
        }
    elif champion is not None:
        update |= {"base_output_uri": _round_checkpoint(champion), "base_round": champion.round}
    if decision.next_stages and not start.stages:
        update["stages"] = list(decision.next_stages)
    return start.model_copy(update=update)


def _as_the_conf_says(
    conf: RoundConf, start: RoundStart, records: list[RoundRecord], ledger: Ledger
) -> RoundStart:
    """A manual trigger's base checkpoint, round to restart from, or rollback flag."""
    base_checkpoint = absolute(conf.base_checkpoint or "")
    if conf.start_from_round is not None:
        record = ledger.read(conf.start_from_round)
        return start.model_copy(
            update={
                "base_output_uri": _round_checkpoint(record),
                "base_round": record.round,
                "rollback": True if conf.rollback is None else conf.rollback,
                "rollback_of": None,
                "reason": conf.reason or f"manual restart from round {record.round}",
            }
        )
    if base_checkpoint and base_checkpoint != start.base_output_uri:
        return start.model_copy(
            update={
                "base_output_uri": base_checkpoint,
                "base_round": _round_of_output(records, base_checkpoint),
                "rollback": bool(conf.rollback),
                "rollback_of": None,
            }
        )
    if conf.rollback is not None:
        return start.model_copy(update={"rollback": conf.rollback})
    return start


class CampaignOverError(RoundError):
    """The campaign finished; a further round runs only when asked for explicitly."""


def _over_problems(cf: CampaignFile, number: int, why: str) -> list[Problem]:
    gate = cf.campaign.gate
    return [
        Problem(
            "",
            f"campaign {cf.campaign.name!r} is over: {why}; round {number} is not planned and "
            "no job is started",
            source=str(cf.path),
            fix=f"to go on, raise gate.max_rounds (now {gate.max_rounds}) or change "
            "gate.targets in the campaign file, or trigger the round with the Param "
            'after_finish: true (conf {"after_finish": true})',
        )
    ]


def _check_stage_names(campaign: Campaign, start: RoundStart) -> None:
    """The stages and datasets the conf names must be the campaign's; every one that is not is
    a problem."""
    names = [s.name for s in campaign.stages]
    datasets = ["train", "validation"]
    named = [
        ("conf.stages", "stage", start.stages, names),
        ("conf.data_overrides", "stage", list(start.data_overrides), names),
        *(
            (f"conf.data_overrides.{stage}", "dataset", list(channels), datasets)
            for stage, channels in start.data_overrides.items()
        ),
    ]
    problems = [
        Problem(path, f"unknown {what} {', '.join(map(repr, wrong))}", allowed=", ".join(known))
        for path, what, given, known in named
        if (wrong := [g for g in given if g not in known])
    ]
    if problems:
        raise RoundError(problems)


def _round_of_output(records: list[RoundRecord], output_uri: str) -> int | None:
    """The recorded round whose checkpoint lives in ``output_uri``, if any."""
    for record in records:
        if any(s.output_uri.rstrip("/") == output_uri.rstrip("/") for s in record.stages):
            return record.round
    return None


def _round_checkpoint(record: RoundRecord) -> str:
    for stage in reversed(record.stages):
        if stage.checkpoint is not None:
            return stage.checkpoint.output_uri or stage.output_uri
    raise RoundError(
        [Problem(f"round {record.round}", "recorded no checkpoint", fix="pick another round")]
    )
