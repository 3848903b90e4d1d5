"""What ``make demo`` prints: a line per round as it ends, then the table and where to look."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

PRIMARY = "exact_match"


def print_round(record: Any, seconds: float) -> None:
    decision = record.decision
    value = record.metrics.get(PRIMARY)
    base = record.baseline.get(PRIMARY)
    stages = " -> ".join(s.name for s in record.stages) or "(no stage)"
    print(
        f"   round {record.round}: {stages}, {PRIMARY} {value:.3f}"
        + (f" (base model {base:.3f})" if base is not None else "")
        + f", {seconds:.0f} s"
    )
    print(f"   decision: {decision.action.value}. {decision.reason}")


def summarize(ledger: Any, campaign_dir: Path, seconds: float, cf: Any) -> None:
    from tuneloop.report import format_table
    from tuneloop.round_record import shown_metrics

    records = [shown_metrics(cf, r.model_dump(mode="json")) for r in ledger.records()]
    if not records:
        print("no round was recorded")
        return
    print()
    print(format_table(records, primary_metric=PRIMARY, baseline=records[-1].get("baseline")))
    report = campaign_dir / "report" / "report.md"
    store = campaign_dir / "mlflow.db"
    print(f"\n{len(records)} round(s) in {seconds / 60:.1f} min.")
    champion = ledger.champion()
    if champion is not None:
        last = champion.stages[-1] if champion.stages else None
        where = last.output_uri if last else champion.base
        value = champion.metrics.get(PRIMARY)
        print(f"Champion: round {champion.round} ({PRIMARY} {value:.3f}), {where}")
    print(f"Round report: {report} (the plot: {report.with_suffix('.png')})")
    print(f"Ledger:       {campaign_dir / 'rounds'}/")
    print(
        "MLflow UI:    .venv/bin/mlflow ui --backend-store-uri "
        + shlex.quote(f"sqlite:///{store}")
        + " --port 5000   (then open http://127.0.0.1:5000)"
    )
    print(
        "Airflow UI:   make airflow   (the tuneloop_demo DAG holds these runs; trigger more there)"
    )
