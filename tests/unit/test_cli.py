"""The command line: exit codes, one line per problem, never a traceback for a user mistake."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tuneloop.cli.main import main

REPO = Path(__file__).resolve().parents[2]
SFT_LORA = REPO / "recipes" / "nova" / "nova-2-lite" / "sft-lora.yaml"
EXAMPLE = REPO / "recipes" / "campaigns" / "examples" / "support-bot-hyperpod.yaml"
PROBLEM_LINE = re.compile(r"^(?P<file>[^:]+)(:(?P<line>\d+))?: (?P<path>[\w.\[\]-]+): .+$")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_recipe_render_applies_overrides_and_resolves(capsys) -> None:
    code, out, err = run(
        capsys,
        "recipe",
        "render",
        str(SFT_LORA),
        "--template",
        "--set",
        "training_config.max_steps=250",
        "--set",
        "run.replicas=8",
    )
    assert code == 0, err
    rendered = yaml.safe_load(out)
    assert rendered["training_config"]["max_steps"] == 250
    assert rendered["training_config"]["save_steps"] == 250
    assert rendered["run"]["replicas"] == 8
    assert isinstance(rendered["training_config"]["optim_config"]["lr"], float)


def test_recipe_render_reports_every_problem_on_its_own_line(capsys) -> None:
    code, out, err = run(
        capsys,
        "recipe",
        "render",
        str(SFT_LORA),
        "--template",
        "--set",
        "training_config.lr_scheduler.warmup_step=3",
        "--set",
        "training_config.max_length=70000",
    )
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 2
    for line in lines:
        assert PROBLEM_LINE.match(line), line
    assert (
        "--set: training_config.lr_scheduler.warmup_step: unknown field; did you mean "
        "'warmup_steps'?"
    ) in err
    assert "(allowed: 1..65536)" in err


def test_recipe_render_names_the_file_line_for_template_errors(capsys, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(SFT_LORA.read_text().replace("warmup_steps: 15", "warmup_steps: 25"))
    code, _, err = run(capsys, "recipe", "render", str(broken), "--template")
    assert code == 2
    line = next(
        n for n, text in enumerate(broken.read_text().splitlines(), 1) if "warmup_steps: 25" in text
    )
    assert err.startswith(
        f"{broken}:{line}: training_config.lr_scheduler.warmup_steps: "
        "25 is out of range (allowed: 1..20)"
    )


def test_recipe_validate_many_files(capsys, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(SFT_LORA.read_text().replace("alpha: 64", "alpha: 65"))
    code, out, err = run(capsys, "recipe", "validate", "--template", str(SFT_LORA), str(bad))
    assert code == 2
    assert f"{SFT_LORA}: ok (sft lora, amazon.nova-2-lite-v1:0:256k)" in out
    assert (
        "training_config.peft.lora_tuning.alpha: 65 is not allowed (allowed: 32, 64, 96, "
        "128, 160, 192)" in err
    )


def test_recipe_validate_without_template_flag_requires_paths(capsys) -> None:
    code, _, err = run(capsys, "recipe", "validate", str(SFT_LORA))
    assert code == 2
    assert "run.data_s3_path: training data path is empty" in err


def test_recipe_validate_platform_and_instance_type(capsys) -> None:
    code, _, err = run(
        capsys,
        "recipe",
        "validate",
        "--template",
        "--platform",
        "smtj",
        "--instance-type",
        "ml.p4d.24xlarge",
        str(REPO / "recipes" / "nova" / "nova-lite" / "sft-full.yaml"),
    )
    assert code == 0, err
    code, _, err = run(
        capsys,
        "recipe",
        "validate",
        "--template",
        "--platform",
        "smtj",
        str(REPO / "recipes" / "nova" / "nova-lite" / "cpt.yaml"),
    )
    assert code == 2
    assert "has no CPT on smtj" in err


def test_missing_file_and_bad_set_syntax(capsys) -> None:
    code, _, err = run(capsys, "recipe", "validate", "nope.yaml")
    assert (code, err.strip()) == (2, "nope.yaml: file not found")
    code, _, err = run(capsys, "recipe", "render", str(SFT_LORA), "--set", "oops")
    assert code == 2
    assert err.strip() == (
        "--set: cannot read 'oops' (allowed: key.path=value, e.g. training_config.max_steps=200)"
    )


def test_usage_errors_exit_2(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["recipe", "render"])
    assert info.value.code == 2
    assert main([]) == 2


def test_warnings_go_to_stderr_and_do_not_fail(capsys, tmp_path: Path) -> None:
    recipe = tmp_path / "lite.yaml"
    text = (REPO / "recipes" / "nova" / "nova-lite" / "sft-full.yaml").read_text()
    recipe.write_text(text.replace("max_epochs: 1", "max_epochs: 1\n    max_steps: 50"))
    code, _, err = run(capsys, "recipe", "validate", "--template", str(recipe))
    assert code == 0
    assert "warning:" in err and "both max_epochs (1) and max_steps (50)" in err


def test_recipe_fields_lists_defaults_and_ranges(capsys) -> None:
    code, out, _ = run(capsys, "recipe", "fields", "rft")
    assert code == 0
    assert re.search(
        r"^training_config\.rollout\.advantage_strategy\.number_generation = 8 "
        r" \[2\.\.16\]  \S",
        out,
        re.M,
    )
    code, _, err = run(capsys, "recipe", "fields", "rft", "--model", "amazon.nova-pro-v1:0:300k")
    assert code == 2 and "has no rft recipe" in err


def test_campaign_validate_prints_the_plan(capsys) -> None:
    code, out, err = run(capsys, "campaign", "validate", str(EXAMPLE), "--ds", "2026-11-23")
    assert code == 0, err
    assert "stage 1: sft (SFT, lora) job support-bot-r0001-sft" in out
    assert "train: s3://acme-ml-data/support/2026-11-23/sft-train.jsonl" in out
    assert "rendered recipe:" in out
    assert "the checkpoint of stage sft" in out
    assert "target: exact_match >= 0.85" in out


def test_campaign_validate_json(capsys) -> None:
    code, out, _ = run(capsys, "campaign", "validate", str(EXAMPLE), "--json", "--round", "2")
    assert code == 0
    plan = json.loads(out)
    assert plan["round"] == 2
    assert [s["name"] for s in plan["stages"]] == ["sft", "rft"]


def test_campaign_validate_errors(capsys, tmp_path: Path) -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["technique"] = "full"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    (tmp_path / "nova").symlink_to(REPO / "recipes" / "nova")
    code, out, err = run(capsys, "campaign", "validate", str(path))
    assert code == 2 and out == ""
    assert "Incompatible model training technique detected" in err
    for line in err.strip().splitlines():
        assert PROBLEM_LINE.match(line), line


def test_console_script_never_shows_a_traceback(tmp_path: Path) -> None:
    """Through a real process: bad YAML gives one located line and exit 2."""
    broken = tmp_path / "broken.yaml"
    broken.write_text("run:\n  name: [unclosed\n")
    result = subprocess.run(
        [sys.executable, "-m", "tuneloop.cli", "recipe", "validate", str(broken)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO / "plugins"), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"{broken}:3: not valid YAML")
