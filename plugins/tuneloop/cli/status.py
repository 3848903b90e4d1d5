"""``tuneloop campaign status``: what a campaign's ledger holds, and what its next round would be.

Everything is read, nothing is written: the campaign file, then the ledger under the campaign's
output root (a folder or an s3:// prefix). The next round is worked out by the round DAG's own
first step, `rounds.start.start_round` (it only reads the ledger), so this command and a run
triggered now agree on the round number, the checkpoint it starts from, whether the rollback
adjustments apply, and whether the round is refused.

The rules:

- CAMPAIGN is a campaign file, or a campaign name looked up in the campaigns folder
  (``$TUNELOOP_CAMPAIGNS_DIR``, else ``recipes/campaigns/``): ``<name>.yaml``, ``<name>.yml``,
  or the file whose ``name:`` is ``<name>``.
- The state is ``new`` (no round recorded), ``running`` (a round claimed by a run and not
  recorded yet), ``finished`` (the latest decision was finish or stop: target met, max_rounds,
  plateau or budget) or ``ready`` (the next round starts on the next trigger).
- A missing or broken campaign file and an unreadable ledger are user errors: one line each,
  ``file:line: field: message; fix: ...``, never a traceback.

Kept fast: no Airflow, MLflow or torch is imported; boto3 only for a ledger on S3.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from tuneloop.config.campaign import Gate, flatten_overrides
from tuneloop.config.file import CampaignFile
from tuneloop.config.paths import campaign_root
from tuneloop.errors import CampaignError, Problem, TuneloopError
from tuneloop.rounds.gate import campaign_over
from tuneloop.rounds.ledger import Ledger, LedgerError, RoundRecord, champion_of, history_of

State = Literal["new", "running", "ready", "finished"]
FinishedBecause = Literal["target_met", "max_rounds", "plateau", "budget", "stopped"]
CAMPAIGN_SUFFIXES = (".yaml", ".yml")
OVERRIDE_PARAM = "after_finish"
"""The round DAG's Param that runs a round after the campaign is over."""
_NAME_LINE = re.compile(r"""^name:\s*["']?([a-z][a-z0-9-]*)["']?\s*(#.*)?$""", re.MULTILINE)


# --- what the command reports --------------------------------------------------------------------


class RoundDecision(BaseModel):
    action: str
    reason: str
    promoted: bool
    champion_round: int | None
    recommendation: str = ""


class RoundLine(BaseModel):
    """One recorded round, as the status shows it."""

    round: int
    run_id: str
    base: str
    """``base model`` or ``round k``, with ``(rollback of j)`` for a restart."""
    base_uri: str
    base_round: int | None
    rollback_of: int | None
    stages: list[str]
    primary: float | None
    """The gate's primary metric."""
    metrics: dict[str, float]
    """The metrics the campaign records (evaluation.metrics and the gate's)."""
    deltas: dict[str, dict[str, float]]
    """``previous``, ``champion``, ``baseline`` -> metric -> this round minus that reference."""
    decision: RoundDecision
    checkpoint: str
    """The output folder of the round's last stage (where a round continuing from it starts)."""
    gpu_hours: float
    billable_seconds: float
    cost_usd: float | None = None
    """Estimated US dollars of the round's jobs, the base model's evaluation when the round
    measured it included; None when a price is unknown."""
    cost_note: str = ""
    started_at: datetime | None
    ended_at: datetime | None
    recorded_at: datetime


class Champion(BaseModel):
    round: int
    checkpoint: str
    """The job output folder (holding manifest.json) of the champion's last stage."""
    model_uri: str
    """Where its weights are (the manifest's checkpoint URI), when recorded."""
    primary: float | None


class Claim(BaseModel):
    """A round a run has claimed and not recorded yet."""

    round: int
    attempt: int
    run_id: str
    claimed_at: datetime


class CampaignState(BaseModel):
    state: State
    why: str
    finished_because: FinishedBecause | None = None
    running: Claim | None = None


class NextRound(BaseModel):
    """What a run triggered now, with an empty conf, would do."""

    round: int
    starts_from: str
    """In words: the base model, round k's checkpoint, or a checkpoint folder."""
    base_uri: str
    """The job output folder it starts from; empty: the campaign's base model."""
    base_round: int | None
    rollback: bool
    """Whether the campaign's rollback adjustments apply."""
    rollback_of: int | None
    adjustments: list[str]
    """The rollback adjustments, in words (empty when they do not apply)."""
    stages: list[str]
    reason: str
    refused: bool = False
    refusal: list[str] = []
    """Why the round DAG refuses it: one ``file: field: message; fix: ...`` line per problem."""
    how_to_go_on: list[str] = []
    waits_for: int | None = None
    """The running round a new run waits for (the DAG runs one round at a time)."""


class Totals(BaseModel):
    rounds: int
    gpu_hours: float
    """GPU-hours spent, the base model's evaluation included."""
    billable_seconds: float
    cost_usd: float | None = None
    """Estimated US dollars spent; None when a price is unknown."""
    price_sources: list[str] = []
    budget_usd: float | None = None
    budget_gpu_hours: float | None = None


class CampaignStatus(BaseModel):
    campaign: str
    file: str
    ledger: str
    primary_metric: str
    higher_is_better: bool
    targets: dict[str, str]
    max_rounds: int
    baseline: dict[str, float]
    rounds: list[RoundLine]
    champion: Champion | None
    """None: no round beat the base model yet."""
    totals: Totals
    state: CampaignState
    next_round: NextRound


# --- finding and reading the campaign ------------------------------------------------------------


def resolve_campaign(reference: str) -> Path:
    """The campaign file ``reference`` names: a path, or a campaign in the campaigns folder."""
    from tuneloop.config.file import campaigns_folder

    path = Path(reference)
    if path.is_file():
        return path
    folder = campaigns_folder()
    candidates = [folder / reference]
    if path.suffix not in CAMPAIGN_SUFFIXES:
        candidates += [folder / f"{reference}{suffix}" for suffix in CAMPAIGN_SUFFIXES]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    files = _campaign_files(folder)
    if len(path.parts) == 1 and path.suffix not in CAMPAIGN_SUFFIXES:
        for candidate in files:
            if _declared_name(candidate) == reference:
                return candidate
    names = sorted({_declared_name(f) or f.stem for f in files})
    known = f" (campaigns there: {', '.join(names)})" if names else " (it holds no campaign file)"
    raise CampaignError(
        [
            Problem(
                "",
                "no such campaign file, and no campaign of that name in the campaigns folder "
                f"{folder}{known}",
                source=reference,
                fix="give the path of a campaign file, or the name of one in that folder "
                "(TUNELOOP_CAMPAIGNS_DIR chooses the folder)",
            )
        ]
    )


def _campaign_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix in CAMPAIGN_SUFFIXES and p.is_file())


def _declared_name(path: Path) -> str | None:
    """The campaign's ``name:`` as written at the top level, without parsing the file (a broken
    file must not stop the search)."""
    try:
        match = _NAME_LINE.search(path.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return None
    return match.group(1) if match else None


def load(reference: str) -> CampaignFile:
    """The campaign file, loaded as the round DAG loads it (local folders made absolute)."""
    from tuneloop.config.file import load_for_rounds

    path = resolve_campaign(reference)
    try:
        return load_for_rounds(path)
    except TuneloopError:
        raise
    except Exception as exc:  # a file the loader has no message for
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise CampaignError(
            [
                Problem(
                    "",
                    f"cannot be loaded: {type(exc).__name__}: {detail}",
                    source=str(path),
                    fix="correct the file (tuneloop campaign validate FILE checks it)",
                )
            ]
        ) from None


def _readable(ledger: Ledger, call: Any) -> Any:
    """``call()`` with a local read error (permissions, a folder where a file should be) turned
    into one LedgerError line; S3 errors already are StorageErrors."""
    try:
        return call()
    except OSError as exc:
        where = getattr(exc, "filename", None) or ledger.root
        raise LedgerError(
            [
                Problem(
                    "",
                    f"cannot read the ledger: {exc.strerror or exc}",
                    source=str(where),
                    fix="check that this user may read the campaign's output_root",
                )
            ]
        ) from None


# --- the status ----------------------------------------------------------------------------------


def campaign_status(cf: CampaignFile) -> CampaignStatus:
    """The status of a loaded campaign (see `load`)."""
    campaign = cf.campaign
    gate = campaign.gate
    ledger = Ledger(campaign_root(campaign))
    records: list[RoundRecord] = _readable(ledger, ledger.records)
    latest = records[-1] if records else None
    champion = champion_of(records)
    claim = _running_claim(ledger, records)
    over = campaign_over(gate, history_of(records), latest.decision) if latest else None
    rounds = [_round_line(cf, r) for r in records]
    return CampaignStatus(
        campaign=campaign.name,
        file=str(cf.path),
        ledger=ledger.root,
        primary_metric=gate.primary_metric,
        higher_is_better=gate.higher_is_better,
        targets={name: _bound_text(bound) for name, bound in gate.target_bounds().items()},
        max_rounds=gate.max_rounds,
        baseline=_shown(cf, latest.baseline) if latest else {},
        rounds=rounds,
        champion=_champion(champion, gate.primary_metric),
        totals=_totals(gate, records),
        state=_state(cf, latest, claim, over),
        next_round=_next_round(cf, ledger, records, claim),
    )


def _totals(gate: Gate, records: Sequence[RoundRecord]) -> Totals:
    from tuneloop.rounds.cost import total_cost

    sources = [source for r in records for source in r.price_source.split("; ") if source]
    cost = total_cost(r.spent_usd() for r in records)
    return Totals(
        rounds=len(records),
        gpu_hours=round(sum(r.spent_gpu_hours() for r in records), 6),
        billable_seconds=round(sum(r.billable_seconds for r in records), 3),
        cost_usd=None if cost is None else round(cost, 6),
        price_sources=list(dict.fromkeys(sources)),
        budget_usd=gate.usd_budget(),
        budget_gpu_hours=gate.gpu_hour_budget(),
    )


def _shown(cf: CampaignFile, metrics: dict[str, float]) -> dict[str, float]:
    from tuneloop.rounds.record import shown_metrics

    return dict(shown_metrics(cf, {"metrics": dict(metrics)})["metrics"])


def _round_line(cf: CampaignFile, record: RoundRecord) -> RoundLine:
    from tuneloop.tracking.report import _base_label

    primary = cf.campaign.gate.primary_metric
    shown = _shown(cf, record.metrics)
    decision = record.decision
    return RoundLine(
        round=record.round,
        run_id=record.run_id,
        base=_base_label({"base_round": record.base_round, "rollback_of": record.rollback_of}),
        base_uri=record.base,
        base_round=record.base_round,
        rollback_of=record.rollback_of,
        stages=[s.name for s in record.stages],
        primary=record.metrics.get(primary),
        metrics=shown,
        deltas={
            label: {k: v for k, v in values.items() if k in shown}
            for label, values in record.deltas.items()
        },
        decision=RoundDecision(
            action=decision.action.value,
            reason=decision.reason,
            promoted=decision.promoted,
            champion_round=decision.champion_round,
            recommendation=decision.recommendation,
        ),
        checkpoint=record.summary().checkpoint,
        gpu_hours=record.spent_gpu_hours(),
        billable_seconds=record.billable_seconds,
        cost_usd=record.spent_usd(),
        cost_note=record.cost_note,
        started_at=record.started_at,
        ended_at=record.ended_at,
        recorded_at=record.recorded_at,
    )


def _champion(record: RoundRecord | None, primary: str) -> Champion | None:
    if record is None:
        return None
    last = next((s for s in reversed(record.stages) if s.checkpoint is not None), None)
    return Champion(
        round=record.round,
        checkpoint=record.summary().checkpoint,
        model_uri=last.checkpoint.uri if last and last.checkpoint else "",
        primary=record.metrics.get(primary),
    )


def _bound_text(bound: Any) -> str:
    if bound.at_least is not None:
        return f">= {bound.at_least:g}"
    return f"<= {bound.at_most:g}"


def _running_claim(ledger: Ledger, records: Sequence[RoundRecord]) -> Claim | None:
    """The newest round a run claimed (``plan_round`` claims round n before anything is spent)
    that the ledger has no record of yet."""
    recorded = {r.round for r in records}
    latest = records[-1].round if records else 0
    claims = _readable(ledger, ledger.claims)
    open_claims = [c for c in claims if c.round > latest and c.round not in recorded]
    if not open_claims:
        return None
    newest = open_claims[-1]  # claims come in round and attempt order
    return Claim(
        round=newest.round,
        attempt=newest.attempt,
        run_id=newest.run_id,
        claimed_at=newest.claimed_at,
    )


def _state(
    cf: CampaignFile, latest: RoundRecord | None, claim: Claim | None, over: str | None
) -> CampaignState:
    if claim is not None:
        return CampaignState(
            state="running",
            why=f"round {claim.round} was claimed by run {claim.run_id} at "
            f"{_time(claim.claimed_at)} and is not recorded yet (the run is under way, or ended "
            "without recording it)",
            running=claim,
        )
    if latest is None:
        return CampaignState(state="new", why="no round is recorded yet")
    action = latest.decision.action.value
    decided = f"round {latest.round} decided {action}"
    if over:
        return CampaignState(
            state="finished",
            why=f"{over} ({decided})",
            finished_because=_finished_because(latest),
        )
    if action in ("finish", "stop"):
        gate = cf.campaign.gate
        return CampaignState(
            state="ready",
            why=f"{decided}, but the campaign file's gate now allows more rounds (max_rounds "
            f"{gate.max_rounds}, targets not met)",
        )
    return CampaignState(state="ready", why=decided)


def _finished_because(record: RoundRecord) -> FinishedBecause:
    """Which of the gate's end rules the latest decision applied, from the numbers it kept
    (``Decision.signals``), in the gate's own order."""
    decision = record.decision
    if decision.action.value == "finish":
        return "target_met"
    signals = decision.signals
    max_rounds = signals.get("max_rounds")
    if isinstance(max_rounds, int) and record.round >= max_rounds:
        return "max_rounds"
    plateau, needed = signals.get("plateau_count"), signals.get("plateau_rounds")
    if isinstance(plateau, int) and isinstance(needed, int) and plateau >= needed:
        return "plateau"
    if signals.get("budget_gpu_hours") is not None or signals.get("budget_usd") is not None:
        return "budget"
    return "stopped"


def _next_round(
    cf: CampaignFile, ledger: Ledger, records: Sequence[RoundRecord], claim: Claim | None
) -> NextRound:
    """What `rounds.start.start_round` decides for a run triggered now with an empty conf."""
    from tuneloop.rounds.start import CampaignOverError, RoundError, start_round

    try:
        start = _readable(ledger, lambda: start_round(cf, {}))
    except CampaignOverError as exc:
        refused = _refused(records, exc)
        refused.how_to_go_on = _how_to_go_on(cf, records[-1].round)
        try:  # where the round would start if the override Param asked for it anyway
            anyway = _readable(ledger, lambda: start_round(cf, {OVERRIDE_PARAM: True}))
        except RoundError:
            return refused
        return _from_start(cf, anyway).model_copy(
            update={k: getattr(refused, k) for k in ("refused", "refusal", "how_to_go_on")}
        )
    except RoundError as exc:
        return _refused(records, exc)
    next_round = _from_start(cf, start)
    if claim is not None:
        next_round.waits_for = claim.round
    return next_round


def _refused(records: Sequence[RoundRecord], exc: TuneloopError) -> NextRound:
    """A round the round DAG's first step refuses, with its words."""
    return NextRound(
        round=records[-1].round + 1 if records else 1,
        starts_from="",
        base_uri="",
        base_round=None,
        rollback=False,
        rollback_of=None,
        adjustments=[],
        stages=[],
        reason="",
        refused=True,
        refusal=[p.format() for p in exc.problems],
    )


def _from_start(cf: CampaignFile, start: Any) -> NextRound:
    campaign = cf.campaign
    return NextRound(
        round=start.round,
        starts_from=_starts_from(cf, start.base_output_uri, start.base_round),
        base_uri=start.base_output_uri,
        base_round=start.base_round,
        rollback=start.rollback,
        rollback_of=start.rollback_of,
        adjustments=_adjustments(cf) if start.rollback else [],
        stages=list(start.stages) or [s.name for s in campaign.stages],
        reason=start.reason,
    )


def _how_to_go_on(cf: CampaignFile, last_round: int) -> list[str]:
    gate = cf.campaign.gate
    file = cf.path
    return [
        f"raise gate.max_rounds in {file} (now {gate.max_rounds}) above {last_round}",
        f"change gate.targets in {file}, if the goal has moved",
        f'trigger the round with the Param {OVERRIDE_PARAM}: true (conf {{"{OVERRIDE_PARAM}": '
        "true}) to run one more round anyway",
    ]


def _starts_from(cf: CampaignFile, base_uri: str, base_round: int | None) -> str:
    if not base_uri:
        return f"the base model ({_base_model(cf)})"
    if base_round is not None:
        return f"round {base_round}'s checkpoint ({base_uri})"
    return f"the checkpoint in {base_uri}"


def _base_model(cf: CampaignFile) -> str:
    from tuneloop.config.campaign import BaseCheckpoint
    from tuneloop.recipes.catalog import MODELS

    base = cf.campaign.base_model
    if isinstance(base, BaseCheckpoint):
        return base.output_uri
    return base or MODELS[cf.campaign.model_type].base_model


def _adjustments(cf: CampaignFile) -> list[str]:
    rollback = cf.campaign.gate.rollback
    out = []
    if rollback.lr_scale != 1.0:
        out.append(f"learning rate x {rollback.lr_scale:g} (gate.rollback.lr_scale)")
    for stage, overrides in rollback.overrides.items():
        for key, value in flatten_overrides(overrides).items():
            out.append(f"{stage}: {key} = {value} (gate.rollback.overrides)")
    return out or ["none: gate.rollback changes nothing"]


# --- text ----------------------------------------------------------------------------------------


def _time(value: datetime | None) -> str:
    return value.isoformat(sep=" ", timespec="seconds") if value else "-"


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.4g}"


def format_status(status: CampaignStatus) -> str:
    """The status as text for a terminal."""
    from tuneloop.tracking.report import format_table

    primary = status.primary_metric
    lines = [f"Campaign {status.campaign}  ({status.file})", f"Ledger:   {status.ledger}"]
    targets = ", ".join(f"{k} {v}" for k, v in status.targets.items()) or "none"
    better = "higher" if status.higher_is_better else "lower"
    lines.append(
        f"Gate:     {primary} ({better} is better), targets {targets}, "
        f"at most {status.max_rounds} rounds"
    )
    lines.append("")
    if status.rounds:
        records = [
            {
                "round": r.round,
                "base_round": r.base_round,
                "rollback_of": r.rollback_of,
                "stages": [{"name": s} for s in r.stages],
                "metrics": r.metrics,
                "deltas": r.deltas,
                "decision": {
                    "action": r.decision.action,
                    "reason": r.decision.reason,
                    "champion_round": r.decision.champion_round,
                },
            }
            for r in status.rounds
        ]
        lines.append(
            format_table(records, primary_metric=primary, baseline=status.baseline).rstrip("\n")
        )
        lines.append("")
        for r in status.rounds:
            lines.extend(_round_text(r, primary))
    else:
        lines.append("No round recorded yet.")
        lines.append("")
    lines.append(_champion_text(status))
    totals = status.totals
    lines.append(
        f"Cost:     {totals.gpu_hours:.4g} GPU-hours, {_usd(totals.cost_usd)}, "
        f"{totals.billable_seconds:.0f} billable seconds over {totals.rounds} "
        f"round{'s' if totals.rounds != 1 else ''}"
    )
    limits = [
        f"{_usd(totals.budget_usd)}" if totals.budget_usd is not None else "",
        f"{totals.budget_gpu_hours:.4g} GPU-hours" if totals.budget_gpu_hours is not None else "",
    ]
    if any(limits):
        lines.append(f"Budget:   {' and '.join(x for x in limits if x)}")
    for source in totals.price_sources:
        lines.append(f"Prices:   {source}")
    state = status.state
    because = f" ({state.finished_because.replace('_', ' ')})" if state.finished_because else ""
    lines.append(f"State:    {state.state}{because}: {state.why}")
    lines.extend(_next_text(status.next_round))
    return "\n".join(lines) + "\n"


def _round_text(r: RoundLine, primary: str) -> list[str]:
    when = f"{_time(r.started_at)} -> {_time(r.ended_at)}"
    if r.started_at and r.ended_at:
        when += f" ({_duration((r.ended_at - r.started_at).total_seconds())})"
    deltas = ", ".join(
        f"vs {label} {_signed(values.get(primary))}"
        for label, values in r.deltas.items()
        if primary in values
    )
    others = ", ".join(f"{k} {_num(v)}" for k, v in r.metrics.items() if k != primary)
    base = f"{r.base}: {r.base_uri}" if r.base_round is not None else f"{r.base} ({r.base_uri})"
    out = [
        f"Round {r.round}  run {r.run_id}  {when}",
        f"  from {base}; stages {' -> '.join(r.stages) or '(none)'}",
        f"  {primary} {_num(r.primary)}"
        + (f" ({deltas})" if deltas else "")
        + (f"; {others}" if others else ""),
        f"  decision: {r.decision.action}"
        + (" (promoted)" if r.decision.promoted else "")
        + f". {r.decision.reason}",
        f"  cost: {r.gpu_hours:.4g} GPU-hours, {_usd(r.cost_usd)}, {r.billable_seconds:.0f} "
        f"billable seconds; checkpoint {r.checkpoint}",
    ]
    if r.rollback_of is not None:
        out.insert(2, f"  rollback of round {r.rollback_of}")
    return [*out, ""]


def _usd(amount: float | None) -> str:
    from tuneloop.tracking.report import dollars

    return "price unknown" if amount is None else dollars(amount)


def _champion_text(status: CampaignStatus) -> str:
    champion = status.champion
    if champion is None:
        return "Champion: none yet (the base model is still the best)"
    where = champion.checkpoint + (f" (weights {champion.model_uri})" if champion.model_uri else "")
    return (
        f"Champion: round {champion.round} ({status.primary_metric} {_num(champion.primary)}), "
        f"checkpoint {where}"
    )


def _next_text(next_round: NextRound) -> list[str]:
    n = next_round
    if n.refused:
        out = [f"Next:     round {n.round} is refused:"]
        out += [f"  {line}" for line in n.refusal]
        if n.starts_from:
            out.append(f"  (run anyway, it would start from {n.starts_from})")
        if n.how_to_go_on:
            out.append("  To go on:")
            out += [f"  - {way}" for way in n.how_to_go_on]
        return out
    out = [f"Next:     round {n.round} from {n.starts_from}; stages {', '.join(n.stages)}"]
    if n.waits_for is not None:
        out.append(
            f"  round {n.waits_for} is claimed by a run: a new run waits for it, and takes the "
            "round over only if that run ended without recording it"
        )
    if n.rollback:
        of = f" (round {n.rollback_of} regressed)" if n.rollback_of is not None else ""
        out.append(f"  rollback adjustments{of}: {'; '.join(n.adjustments)}")
    else:
        out.append("  no rollback adjustments")
    if n.reason:
        out.append(f"  why: {n.reason}")
    return out
