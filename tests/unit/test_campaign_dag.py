"""`tuneloop campaign dag`: one DAG file per campaign file, and dags/ holds one for each."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tuneloop.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_every_campaign_has_its_generated_dag_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    campaigns = sorted((REPO / "recipes" / "campaigns").glob("*.yaml"))
    assert campaigns
    here = Path.cwd()
    os.chdir(REPO)
    try:
        for path in campaigns:
            relative = str(path.relative_to(REPO))
            assert main(["campaign", "dag", relative, "--dags-folder", str(tmp_path)]) == 0
    finally:
        os.chdir(here)
    for generated in tmp_path.iterdir():
        committed = REPO / "dags" / generated.name
        assert committed.is_file(), f"dags/{generated.name} is missing (tuneloop campaign dag)"
        assert committed.read_text() == generated.read_text()


def test_an_existing_dag_file_is_kept_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    campaign = str(REPO / "recipes" / "campaigns" / "demo.yaml")
    args = ["campaign", "dag", campaign, "--dags-folder", str(tmp_path)]
    assert main(args) == 0
    assert "wrote" in capsys.readouterr().out
    text = (tmp_path / "tuneloop_demo.py").read_text()
    assert "campaign_dag('demo.yaml')" in text
    assert main(args) == 2
    assert "exists; fix: pass --force" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0


def test_a_broken_campaign_gets_no_dag_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: Broken Name\n", encoding="utf-8")
    assert main(["campaign", "dag", str(broken), "--dags-folder", str(tmp_path / "dags")]) == 2
    assert "broken.yaml" in capsys.readouterr().err
    assert not (tmp_path / "dags").exists()
