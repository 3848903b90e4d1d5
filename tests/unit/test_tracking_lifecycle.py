"""The lifecycle in MLflow (a real SQLite store) and in the round report's "Storage" section.

Plans and applies are recorded in a real `LifecycleStore` under a local campaign root, as the
lifecycle DAG records them; `mirror_lifecycle` then has to show each plan as one MLflow run,
however often it is mirrored, and the report has to tell where the bytes are now.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from lifecycle_ledgers import keep_two_text
from tuneloop.config.file import CampaignFile, load_for_rounds
from tuneloop.config.paths import campaign_root
from tuneloop.lifecycle.records import (
    LOCAL_ARCHIVE_CLASS,
    LOCAL_CLASS,
    ActionResult,
    ApplyReport,
    Artifact,
    LifecyclePlan,
    PlannedAction,
    RetainedRound,
)
from tuneloop.lifecycle.store import LifecycleStore
from tuneloop.tracking.lifecycle import (
    KIND,
    TAG_APPLIED,
    TAG_SEQUENCE,
    mirror_lifecycle,
    run_name,
    storage_records,
)
from tuneloop.tracking.report import dollars, human_bytes, render_storage, write_report

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
MIB = 1024 * 1024


@pytest.fixture
def cf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CampaignFile:
    monkeypatch.setenv("TUNELOOP_PROJECT_DIR", str(tmp_path))
    path = tmp_path / "campaigns" / "keep-two.yaml"
    path.parent.mkdir(parents=True)
    text = keep_two_text(
        str(tmp_path / "out"),
        description="a campaign whose lifecycle is mirrored",
        stages=("sft",),
    )
    path.write_text(text, encoding="utf-8")
    return load_for_rounds(path)


def folder(cf: CampaignFile, number: int) -> str:
    return f"{campaign_root(cf.campaign)}/rounds/{number:04d}/sft"


def line(uri: str, number: int, action: str, reason: str, size: int) -> PlannedAction:
    archive = action == "archive"
    return PlannedAction(
        artifact=Artifact(
            uri=uri,
            round=number,
            stage="sft",
            kind="checkpoint",
            owner="local",
            bytes=size,
            storage_class=LOCAL_CLASS,
        ),
        action=action,  # type: ignore[arg-type]
        reason=reason,
        target_class=LOCAL_ARCHIVE_CLASS if archive else None,
        monthly_cost_before=size / 1024**3 * 0.023,
        monthly_cost_after=size / 1024**3 * (0.0036 if archive else 0.023),
    )


def a_plan(cf: CampaignFile, sequence: int = 1) -> LifecyclePlan:
    actions = [
        line(folder(cf, 1), 1, "archive", "not retained: tarball under archive/", 30 * MIB),
        line(folder(cf, 2), 2, "keep", "one of the last 2 rounds", 30 * MIB),
        line(folder(cf, 3), 3, "keep", "champion; one of the last 2 rounds", 30 * MIB),
    ]
    return LifecyclePlan(
        campaign=cf.campaign.name,
        sequence=sequence,
        created_at=T0,
        run_id="cli-test",
        archive_storage_class="GLACIER",
        delete_intermediates=False,
        keep_last=2,
        region="us-east-1",
        prices_source="AWS S3 pricing page, us-east-1, read 2026-01-15",
        retained=[
            RetainedRound(round=2, reasons=["one of the last 2 rounds"]),
            RetainedRound(round=3, reasons=["champion", "one of the last 2 rounds"]),
        ],
        actions=actions,
        monthly_cost_before=round(sum(a.monthly_cost_before for a in actions), 6),
        monthly_cost_after=round(sum(a.monthly_cost_after for a in actions), 6),
        bytes_to_archive=30 * MIB,
        first=sequence == 1,
    )


def its_apply(plan: LifecyclePlan) -> ApplyReport:
    archived = plan.actions[0]
    saved = archived.monthly_cost_before - archived.monthly_cost_after
    return ApplyReport(
        campaign=plan.campaign,
        sequence=plan.sequence,
        run_id="cli-test",
        started_at=T0,
        ended_at=T0.replace(minute=5),
        results=[
            ActionResult(
                uri=archived.artifact.uri,
                action="archive",
                outcome="archived",
                bytes=archived.artifact.bytes,
                archive_uri=archived.artifact.uri.replace("/rounds/", "/archive/rounds/")
                + ".tar.gz",
                digest="0" * 64,
                monthly_cost_saved=saved,
            )
        ],
        bytes_archived=archived.artifact.bytes,
        monthly_cost_before=plan.monthly_cost_before,
        monthly_cost_after=plan.monthly_cost_after,
    )


def lifecycle_runs(cf: CampaignFile) -> list[Any]:
    from mlflow import MlflowClient

    from tuneloop.rounds.record import tracking_uri

    client = MlflowClient(tracking_uri=tracking_uri(cf))
    experiment = client.get_experiment_by_name(f"tuneloop-{cf.campaign.name}")
    assert experiment is not None
    return client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`tuneloop.kind` = '{KIND}'"
    )


def artifact_names(cf: CampaignFile, run_id: str, path: str | None = None) -> set[str]:
    from mlflow import MlflowClient

    from tuneloop.rounds.record import tracking_uri

    client = MlflowClient(tracking_uri=tracking_uri(cf))
    return {Path(f.path).name for f in client.list_artifacts(run_id, path)}


def test_a_plan_and_its_apply_are_one_mlflow_run_however_often_mirrored(
    cf: CampaignFile,
) -> None:
    store = LifecycleStore.for_campaign(cf.campaign)
    plan = store.write_plan(a_plan(cf))

    first = mirror_lifecycle(cf, plan)
    runs = lifecycle_runs(cf)
    assert [r.info.run_name for r in runs] == [run_name(1)] == ["lifecycle-0001"]
    run = runs[0]
    assert run.info.run_id == first["run_id"]
    assert run.data.tags[TAG_SEQUENCE] == "1"
    assert run.data.tags["tuneloop.campaign"] == "keep-two"
    assert run.data.tags[TAG_APPLIED] == "false"
    assert run.data.params == {
        "keep_last": "2",
        "archive_storage_class": "GLACIER",
        "archive_mode": "copy",
        "delete_intermediates": "false",
        "region": "us-east-1",
    }
    assert run.data.metrics["bytes_to_archive"] == 30 * MIB
    assert run.data.metrics["monthly_cost_saved"] == pytest.approx(
        plan.monthly_cost_before - plan.monthly_cost_after, abs=1e-6
    )
    assert "bytes_archived" not in run.data.metrics
    assert artifact_names(cf, run.info.run_id) >= {"plan.json", "report"}
    assert artifact_names(cf, run.info.run_id, "report") == {"report.md", "report.png"}

    report = store.write_apply(its_apply(plan))
    second = mirror_lifecycle(cf, plan, report)
    again = mirror_lifecycle(cf, plan, report)
    runs = lifecycle_runs(cf)
    assert len(runs) == 1
    assert second["run_id"] == again["run_id"] == first["run_id"]
    run = runs[0]
    assert run.data.tags[TAG_APPLIED] == "true"
    assert run.data.metrics["bytes_archived"] == 30 * MIB
    assert run.data.metrics["applied_monthly_cost_saved"] == pytest.approx(
        report.monthly_cost_saved
    )
    assert run.info.status == "FINISHED"
    assert {"plan.json", "apply.json"} <= artifact_names(cf, run.info.run_id)

    # A second plan is a second run; mirroring the first again does not touch it.
    later = store.write_plan(a_plan(cf, sequence=2))
    mirror_lifecycle(cf, later)
    mirror_lifecycle(cf, plan, report)
    assert sorted(r.info.run_name for r in lifecycle_runs(cf)) == [
        "lifecycle-0001",
        "lifecycle-0002",
    ]


def test_mirroring_rewrites_the_round_report_with_its_storage_section(cf: CampaignFile) -> None:
    store = LifecycleStore.for_campaign(cf.campaign)
    plan = store.write_plan(a_plan(cf))
    mirror_lifecycle(cf, plan, store.write_apply(its_apply(plan)))
    report = Path(campaign_root(cf.campaign)) / "report" / "report.md"
    text = report.read_text(encoding="utf-8")
    assert "## Storage" in text
    assert f"| {LOCAL_ARCHIVE_CLASS} | 1 | 30.0 MiB |" in text
    assert f"| {LOCAL_CLASS} | 2 | 60.0 MiB |" in text
    assert "- Last apply: plan 1 (2026-03-02 09:05:00 UTC): archived 1 (30.0 MiB)" in text
    assert "  - round 3: champion, one of the last 2 rounds" in text


def test_no_plan_no_storage_section(cf: CampaignFile, tmp_path: Path) -> None:
    assert storage_records(cf) is None
    paths = write_report(
        [], tmp_path / "r", campaign="keep-two", primary_metric="exact_match", baseline=None
    )
    assert "## Storage" not in paths.markdown.read_text(encoding="utf-8")


def test_the_storage_section_before_and_after_an_apply(cf: CampaignFile) -> None:
    plan = a_plan(cf)
    before = "\n".join(render_storage(plan.model_dump(mode="json"), None))
    assert f"| {LOCAL_CLASS} | 3 | 90.0 MiB |" in before
    assert LOCAL_ARCHIVE_CLASS not in before
    assert f"Estimated storage cost now: {dollars(plan.monthly_cost_before)}/month" in before
    assert "- Last apply: none yet" in before
    assert "planned only" in before  # the campaign's first plan

    applied = its_apply(plan)
    after = "\n".join(render_storage(plan.model_dump(mode="json"), applied.model_dump(mode="json")))
    assert f"Estimated storage cost now: {dollars(applied.monthly_cost_after)}/month" in after
    assert f"saved {dollars(applied.monthly_cost_saved)}/month" in after
    assert "planned only" not in after

    # A deleted artifact leaves the table; the same input always renders the same text.
    deleted = applied.model_copy(
        update={
            "results": [
                applied.results[0].model_copy(update={"outcome": "deleted", "action": "delete"})
            ]
        }
    )
    text = "\n".join(render_storage(plan.model_dump(mode="json"), deleted.model_dump(mode="json")))
    assert f"| {LOCAL_CLASS} | 2 | 60.0 MiB |" in text
    assert LOCAL_ARCHIVE_CLASS not in text.split("- Estimated")[0]
    assert text == "\n".join(
        render_storage(json.loads(plan.model_dump_json()), json.loads(deleted.model_dump_json()))
    )


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1536, "1.5 KiB"),
        (150 * MIB, "150 MiB"),
        (3 * 1024**4, "3.0 TiB"),
    ],
)
def test_human_bytes(count: int, text: str) -> None:
    assert human_bytes(count) == text


@pytest.mark.parametrize(
    ("amount", "text"),
    [(0.0, "$0.00"), (12.345, "$12.35"), (1234.5, "$1,234.50"), (0.000041, "$0.000041")],
)
def test_dollars(amount: float, text: str) -> None:
    assert dollars(amount) == text
