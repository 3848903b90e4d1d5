"""A campaign's ``recipe:`` reads templates only inside the recipe roots.

The roots are the repository's recipes/ ($TUNELOOP_RECIPES_DIR), the campaigns folder and the
folders in $TUNELOOP_RECIPE_ROOTS. A path outside them (absolute, ``..``, a symlink out) is
refused with one line at the campaign's field, without being read; nothing that is not a
recipe has its content shown.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tuneloop.cli.main import main
from tuneloop.config.file import (
    CAMPAIGNS_ENV,
    RECIPE_ROOTS_ENV,
    RECIPES_DIR_ENV,
    find_template,
    load_campaign,
    locate_recipe,
    recipe_roots,
)
from tuneloop.errors import CampaignError, Problem, RecipeError
from tuneloop.recipes.render import render_recipe
from tuneloop.rounds.plan import plan_round

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes"
EXAMPLE = RECIPES / "campaigns" / "examples" / "support-bot-hyperpod.yaml"
SFT_LORA = RECIPES / "nova" / "nova-2-lite" / "sft-lora.yaml"
SECRET = "hunter2-do-not-show"


@pytest.fixture(autouse=True)
def default_roots(monkeypatch: pytest.MonkeyPatch) -> None:
    """The roots as a plain checkout has them, whatever the surrounding environment sets."""
    for name in (RECIPE_ROOTS_ENV, RECIPES_DIR_ENV, CAMPAIGNS_ENV):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    """A YAML file outside every root whose keys and values must never be shown."""
    path = tmp_path / "outside" / "credentials.yaml"
    path.parent.mkdir()
    path.write_text(f"aws_secret_access_key: {SECRET}\n{SECRET}_key: 1\n")
    return path


def write_campaign(folder: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    """The HyperPod example, edited, written to ``folder/campaign.yaml``."""
    data = yaml.safe_load(EXAMPLE.read_text())
    edit(data)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "campaign.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def stage_recipe(reference: str) -> Callable[[dict[str, Any]], None]:
    return lambda data: data["stages"][0].update(recipe=reference)


def plan_problems(path: Path) -> list[Problem]:
    with pytest.raises(CampaignError) as info:
        plan_round(load_campaign(path))
    return info.value.problems


def recipe_line(path: Path, field: str = "recipe:") -> int:
    """The 1-based line of the first ``field`` in ``path``."""
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if field in line)


def assert_refused_outside(problem: Problem, campaign: Path, field: str) -> None:
    assert problem.source == str(campaign)
    assert problem.path == field
    assert "outside the recipe roots" in problem.message
    assert str(RECIPES) in (problem.allowed or "")
    assert RECIPE_ROOTS_ENV in (problem.fix or "")
    assert SECRET not in problem.format()


# --- what is refused ---------------------------------------------------------------------------


def test_an_absolute_path_outside_the_roots_is_refused_at_its_line(
    tmp_path: Path, secret_file: Path
) -> None:
    campaign = write_campaign(tmp_path / "c", stage_recipe(str(secret_file)))
    [problem] = plan_problems(campaign)
    assert_refused_outside(problem, campaign, "stages[0].recipe")
    assert problem.line == recipe_line(campaign)


def test_an_absolute_path_outside_is_refused_before_asking_whether_it_exists(
    tmp_path: Path,
) -> None:
    """The answer is the same for a file that exists and one that does not: a campaign cannot
    probe the machine's files through it."""
    missing = tmp_path / "nowhere" / "shadow"
    campaign = write_campaign(tmp_path / "c", stage_recipe(str(missing)))
    [problem] = plan_problems(campaign)
    assert_refused_outside(problem, campaign, "stages[0].recipe")


def test_dot_dot_out_of_the_repository_is_refused(
    tmp_path: Path, secret_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``../`` from a campaign inside the recipes folder resolves before the check."""
    root = tmp_path / "recipes"
    (root / "campaigns").mkdir(parents=True)
    monkeypatch.setenv(RECIPES_DIR_ENV, str(root))
    campaign = write_campaign(root / "campaigns", stage_recipe("../../outside/credentials.yaml"))
    # (this root has none of the example's other templates: those are "not found")
    [problem] = [p for p in plan_problems(campaign) if p.path == "stages[0].recipe"]
    assert problem.source == str(campaign) and problem.path == "stages[0].recipe"
    assert "outside the recipe roots" in problem.message and str(root) in (problem.allowed or "")


def test_a_symlink_out_of_a_root_is_refused(
    tmp_path: Path, secret_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "sft.yaml").symlink_to(secret_file)
    monkeypatch.setenv(RECIPE_ROOTS_ENV, str(mine))
    campaign = write_campaign(mine, stage_recipe("sft.yaml"))
    [problem] = plan_problems(campaign)
    assert_refused_outside(problem, campaign, "stages[0].recipe")


def test_the_evaluation_recipe_is_confined_too(tmp_path: Path, secret_file: Path) -> None:
    campaign = write_campaign(
        tmp_path / "c", lambda data: data["evaluation"].update(recipe=str(secret_file))
    )
    [problem] = plan_problems(campaign)
    assert_refused_outside(problem, campaign, "evaluation.recipe")
    assert problem.line == recipe_line(campaign, "recipe: " + str(secret_file))


def test_the_command_line_gives_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, secret_file: Path
) -> None:
    campaign = write_campaign(tmp_path / "c", stage_recipe(str(secret_file)))
    code = main(["campaign", "validate", str(campaign)])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    [line] = err.strip().splitlines()
    assert line.startswith(f"{campaign}:{recipe_line(campaign)}: stages[0].recipe: ")
    assert "outside the recipe roots" in line and SECRET not in line


def test_a_fifo_in_a_root_is_refused_without_being_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opening a FIFO for reading blocks until a writer comes: the check must only stat it."""
    mine = tmp_path / "mine"
    mine.mkdir()
    fifo = mine / "sft.yaml"
    os.mkfifo(fifo)
    monkeypatch.setenv(RECIPE_ROOTS_ENV, str(mine))
    campaign = write_campaign(mine, stage_recipe("sft.yaml"))
    found: list[Any] = []
    worker = threading.Thread(target=lambda: found.append(_problems_or_plan(campaign)))
    worker.start()
    worker.join(timeout=60)  # ~0.1 s when correct; only a regression waits this long
    if worker.is_alive():  # it opened the FIFO: release it with a writer, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join()
        pytest.fail("the recipe FIFO was opened")
    [problems] = found
    [problem] = problems
    assert problem.path == "stages[0].recipe"
    assert "not a regular file" in problem.message


def _problems_or_plan(campaign: Path) -> list[Problem]:
    try:
        plan_round(load_campaign(campaign))
    except CampaignError as exc:
        return exc.problems
    return []


def test_a_folder_is_not_a_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mine = tmp_path / "mine"
    (mine / "sft.yaml").mkdir(parents=True)
    monkeypatch.setenv(RECIPE_ROOTS_ENV, str(mine))
    campaign = write_campaign(mine, stage_recipe("sft.yaml"))
    [problem] = plan_problems(campaign)
    assert "not a regular file" in problem.message


def test_a_missing_template_names_where_it_was_looked_for(tmp_path: Path) -> None:
    campaign = write_campaign(tmp_path / "c", stage_recipe("nova/nova-2-lite/nope.yaml"))
    [problem] = plan_problems(campaign)
    assert problem.path == "stages[0].recipe"
    assert "not found" in problem.message
    assert str(campaign.parent) in (problem.fix or "") and str(RECIPES) in (problem.fix or "")


def test_find_template_answers_none_for_a_refused_path(tmp_path: Path, secret_file: Path) -> None:
    """The campaign checks (the evaluation task) use `find_template`: no path, no read."""
    cf = load_campaign(write_campaign(tmp_path / "c", stage_recipe("x.yaml")))
    assert find_template(cf, str(secret_file)) is None
    assert find_template(cf, "../outside/credentials.yaml") is None
    assert find_template(cf, "nul\x00byte.yaml") is None
    assert find_template(cf, "x" * 5000 + ".yaml") is None


# --- what keeps working ------------------------------------------------------------------------


def test_shipped_campaigns_name_their_recipes_inside_the_roots() -> None:
    for path in sorted((RECIPES / "campaigns").rglob("*.yaml")):
        cf = load_campaign(path)
        references = [stage.recipe for stage in cf.campaign.stages]
        for reference in [*references, cf.campaign.evaluation.recipe]:
            template = locate_recipe(cf, reference, ("recipe",))
            assert template.is_relative_to(RECIPES.resolve()), (path, reference)


def test_a_symlink_into_the_recipes_folder_still_resolves(tmp_path: Path) -> None:
    """A campaign kept elsewhere may link the repository's templates beside it."""
    (tmp_path / "nova").symlink_to(RECIPES / "nova")
    campaign = write_campaign(tmp_path, stage_recipe("nova/nova-2-lite/sft-lora.yaml"))
    cf = load_campaign(campaign)
    template = locate_recipe(cf, "nova/nova-2-lite/sft-lora.yaml", ("stages", 0))
    assert template == SFT_LORA.resolve()
    assert plan_round(cf).stages


def test_a_folder_named_in_the_environment_is_a_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "my-sft.yaml").write_text(SFT_LORA.read_text())
    campaign = write_campaign(tmp_path / "c", stage_recipe(str(mine / "my-sft.yaml")))
    [problem] = plan_problems(campaign)
    assert "outside the recipe roots" in problem.message

    monkeypatch.setenv(RECIPE_ROOTS_ENV, os.pathsep.join(["", str(tmp_path / "other"), str(mine)]))
    assert mine.resolve() in recipe_roots()
    assert plan_round(load_campaign(campaign)).stages


def test_the_campaigns_folder_is_a_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Campaigns in $TUNELOOP_CAMPAIGNS_DIR may keep their templates beside them."""
    folder = tmp_path / "campaigns"
    folder.mkdir()
    (folder / "my-sft.yaml").write_text(SFT_LORA.read_text())
    monkeypatch.setenv(CAMPAIGNS_ENV, str(folder))
    campaign = write_campaign(folder, stage_recipe("my-sft.yaml"))
    assert plan_round(load_campaign(campaign)).stages


def test_nested_roots_are_listed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(RECIPE_ROOTS_ENV, str(RECIPES / "nova"))
    assert recipe_roots() == [RECIPES.resolve()]


# --- no content of a non-recipe is shown -------------------------------------------------------


def test_a_yaml_file_that_is_no_recipe_gives_one_line_without_its_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.yaml").write_text("".join(f"{SECRET}_{n}: {SECRET}\n" for n in range(20)))
    monkeypatch.setenv(RECIPE_ROOTS_ENV, str(mine))
    campaign = write_campaign(mine, stage_recipe("notes.yaml"))
    [problem] = plan_problems(campaign)
    assert "not a recipe" in problem.message
    assert problem.source == str(mine / "notes.yaml") and problem.line == 1
    assert SECRET not in problem.format()


def test_recipe_render_of_a_non_recipe_shows_none_of_it(tmp_path: Path) -> None:
    path = tmp_path / "credentials.yaml"
    path.write_text(f"aws_access_key_id: AKIA{SECRET}\naws_secret_access_key: {SECRET}\n")
    with pytest.raises(RecipeError) as info:
        render_recipe(path)
    [problem] = info.value.problems
    assert "not a recipe" in problem.message and SECRET not in problem.format()
