"""Every shipped recipe template renders on its platform, and says what its path says.

Templates live in ``recipes/nova/<model>/<method>-<technique>[-smtj].yaml`` and
``recipes/local/<...>.yaml``. They leave data paths, the output path and the reward function empty
(campaigns fill them), so they validate with ``template=True``; once those are filled in through
overrides, the training templates must also pass the full checks a submitted job gets.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import yaml

from tuneloop.errors import RecipeError
from tuneloop.recipes.catalog import EVAL_TASKS, Method, Platform, Technique
from tuneloop.recipes.render import RecipeWarning, render_recipe
from tuneloop.recipes.rules import RecipeContext

REPO = Path(__file__).resolve().parents[3]
RECIPES = REPO / "recipes"
TEMPLATES = sorted([*RECIPES.glob("nova/*/*.yaml"), *RECIPES.glob("local/*.yaml")])

MODEL_TYPES = {
    "nova-micro": "amazon.nova-micro-v1:0:128k",
    "nova-lite": "amazon.nova-lite-v1:0:300k",
    "nova-pro": "amazon.nova-pro-v1:0:300k",
    "nova-2-lite": "amazon.nova-2-lite-v1:0:256k",
    "local": "local.tiny-chat-v1",
}
# File name (without -smtj) -> (method, technique); evaluation recipes have no method.
KINDS = {
    "sft-full": (Method.SFT, Technique.FULL),
    "sft-lora": (Method.SFT, Technique.LORA),
    "cpt": (Method.CPT, Technique.FULL),
    "rft-full": (Method.RFT, Technique.FULL),
    "rft-lora": (Method.RFT, Technique.LORA),
}

DATA = "s3://my-bucket/train.jsonl"
OUTPUT = "s3://my-bucket/out/"
REWARD_ARN = "arn:aws:lambda:us-east-1:123456789012:function:SageMaker-reward-fn"
LOCAL_DATA = "/tmp/tuneloop/train.jsonl"
LOCAL_OUTPUT = "/tmp/tuneloop/out/"
LOCAL_REWARD = "tuneloop.local.demo_task:reward"


def _rel(path: Path) -> str:
    return path.relative_to(RECIPES).as_posix()


def _folder(path: Path) -> str:
    return "local" if path.parent.name == "local" else path.parent.name


def _platform(path: Path) -> Platform:
    if _folder(path) == "local":
        return Platform.LOCAL
    if path.stem.endswith("-smtj"):
        return Platform.SMTJ
    return Platform.HYPERPOD


def _expected(path: Path) -> tuple[Method | None, Technique]:
    kind = path.stem.removesuffix("-smtj")
    if kind.startswith("eval-"):
        return None, Technique.FULL
    return KINDS[kind]


def _render_quietly(path: Path, overrides: dict[str, object] | None = None, *, template: bool):
    """Render with method detection; fail on any RecipeWarning as well as on errors."""
    context = RecipeContext(platform=_platform(path), template=template)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RecipeWarning)
        return render_recipe(path, overrides, context=context)


def test_templates_are_found() -> None:
    assert len(TEMPLATES) >= 30, [_rel(p) for p in TEMPLATES]
    folders = {_folder(p) for p in TEMPLATES}
    assert folders == set(MODEL_TYPES)


@pytest.mark.parametrize("path", TEMPLATES, ids=_rel)
def test_template_renders_and_matches_its_path(path: Path) -> None:
    rendered = _render_quietly(path, template=True)

    method, technique = _expected(path)
    assert rendered.method is method
    assert rendered.technique is technique
    assert rendered.model_type == MODEL_TYPES[_folder(path)]
    assert rendered.warnings == []
    # Templates ship with every path and reward function left for campaigns to fill.
    run = rendered.data["run"]
    assert run.get("data_s3_path", "") == ""
    assert run.get("output_s3_path", "") == ""
    assert run.get("reward_lambda_arn", "") == ""
    assert rendered.data.get("rl_env", {}).get("reward_lambda_arn", "") == ""
    assert run["name"], "run.name keeps a placeholder job name"


def _filled_overrides(path: Path) -> dict[str, object]:
    """What a campaign fills in: job name, data and output paths, reward function."""
    platform = _platform(path)
    method, _ = _expected(path)
    task = yaml.safe_load(path.read_text()).get("evaluation", {}).get("task")
    if platform is Platform.LOCAL:
        data, output, reward = LOCAL_DATA, LOCAL_OUTPUT, LOCAL_REWARD
    else:
        data, output, reward = DATA, OUTPUT, REWARD_ARN

    overrides: dict[str, object] = {"run.name": "test-job"}
    if task is None or EVAL_TASKS[task].bring_your_own_data:
        overrides["run.data_s3_path"] = data
    if platform is not Platform.SMTJ:
        overrides["run.output_s3_path"] = output
    if method is Method.RFT:
        overrides["run.reward_lambda_arn"] = reward
    if task == "rft_eval":
        overrides["rl_env.reward_lambda_arn"] = reward
    return overrides


@pytest.mark.parametrize("path", TEMPLATES, ids=_rel)
def test_template_validates_once_filled_in(path: Path) -> None:
    overrides = _filled_overrides(path)
    rendered = _render_quietly(path, overrides, template=False)

    assert rendered.method is _expected(path)[0]
    run = rendered.data["run"]
    for key, value in overrides.items():
        section, _, field = key.partition(".")
        assert rendered.data[section][field] == value
    if rendered.method is Method.RFT:
        # One override names the reward function everywhere the recipe needs it.
        endpoint = rendered.data["training_config"]["rollout"]["rewards"]["api_endpoint"]
        assert endpoint["lambda_arn"] == run["reward_lambda_arn"]


NOVA_TRAINING = [p for p in TEMPLATES if _folder(p) != "local" and _expected(p)[0] is not None]


def test_every_nova_training_template_is_checked_filled_in() -> None:
    # 3 Nova 1 models x (sft-full, sft-lora, cpt) + Nova 2 Lite (sft x2, cpt, rft x4).
    assert len(NOVA_TRAINING) >= 16


@pytest.mark.parametrize("path", NOVA_TRAINING, ids=_rel)
def test_nova_training_template_needs_its_paths(path: Path) -> None:
    """Unfilled, a Nova training template is not ready to submit (template=False rejects it)."""
    with pytest.raises(RecipeError):
        render_recipe(path, context=RecipeContext(platform=_platform(path), template=False))
