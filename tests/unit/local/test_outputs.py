"""Local job outputs use the Nova layout, and tuneloop's own readers read them back."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from tuneloop.artifacts.manifest import read_checkpoint, read_checkpoint_uri
from tuneloop.local import outputs
from tuneloop.recipes.catalog import Method, Platform, Technique


def test_manifest_and_checkpoint_record_read_back(tmp_path: Path) -> None:
    job = tmp_path / "demo-r0001-sft"
    checkpoint = job / outputs.CHECKPOINT_DIR
    checkpoint.mkdir(parents=True)
    outputs.write_manifest(job, checkpoint)
    written = outputs.write_checkpoint_record(
        job,
        checkpoint_dir=checkpoint,
        model_type="local.tiny-chat-v1",
        technique=Technique.LORA,
        lineage=[Method.SFT],
    )
    assert json.loads((job / "manifest.json").read_text()) == {
        "checkpoint_s3_bucket": str(checkpoint.resolve())
    }
    assert read_checkpoint_uri(str(job)) == str(checkpoint.resolve())
    again = read_checkpoint(str(job))
    assert again == written
    assert (again.platform, again.origin) == (Platform.LOCAL, Method.SFT)


def test_eval_results_layout(tmp_path: Path) -> None:
    when = datetime(2026, 11, 23, 17, 0, 5, tzinfo=UTC)
    path = outputs.write_eval_results(tmp_path, "gen_qa", {"exact_match": 0.5, "f1": 1}, when)
    assert path == tmp_path / "eval-result" / "results_2026-11-23T17-00-05.json"
    data = json.loads(path.read_text())
    assert data["results"]["all"] == {"exact_match": 0.5, "f1": 1.0}
    assert data["results"]["custom|gen_qa|0"] == data["results"]["all"]
