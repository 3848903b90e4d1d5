"""Recipes to local trainer settings: Nova 1 and Nova 2 layouts, SFT and CPT, ignored fields."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tuneloop.local.recipe_map import (
    LoraPlan,
    ignored_fields,
    lora_rank,
    map_recipe,
    split_batch,
)
from tuneloop.recipes.catalog import Method, Platform, Technique
from tuneloop.recipes.render import RecipeWarning, RenderedRecipe, render_recipe
from tuneloop.recipes.rules import RecipeContext
from tuneloop.recipes.sft import Nova2SftRecipe

RECIPES = Path(__file__).resolve().parents[3] / "recipes"
LOCAL = RecipeContext(platform=Platform.LOCAL, template=True)
HYPERPOD = RecipeContext(platform=Platform.HYPERPOD, template=True)


def render(name: str, overrides: dict[str, Any] | None = None, **kwargs: Any) -> RenderedRecipe:
    context = kwargs.pop("context", LOCAL)
    return render_recipe(RECIPES / name, overrides, context=context, **kwargs)


# -- Nova 2 layout ----------------------------------------------------------------------------


def test_local_full_rank_sft_recipe() -> None:
    settings = map_recipe(render("local/sft-full.yaml"))
    assert (settings.method, settings.technique, settings.layout) == (
        Method.SFT,
        Technique.FULL,
        "nova-2",
    )
    assert (settings.learning_rate, settings.min_lr, settings.warmup_steps) == (1e-3, 1e-4, 10)
    assert (settings.max_steps, settings.epochs, settings.constant_steps) == (150, None, 0)
    assert (settings.global_batch_size, settings.per_device_batch_size) == (32, 32)
    assert settings.gradient_accumulation_steps == 1
    assert (settings.max_length, settings.weight_decay) == (128, 0.0)
    assert (settings.adam_beta1, settings.adam_beta2, settings.adam_epsilon) == (0.9, 0.95, 1e-8)
    assert settings.max_grad_norm == 1.0 and settings.lora is None and settings.dropouts == {}
    assert (settings.val_check_interval, settings.limit_val_batches) == (50, 2)
    assert settings.seed == 0
    assert settings.ignored == (
        "run.replicas",
        "run.mlflow_experiment_name",
        "run.mlflow_run_name",
        "training_config.save_steps",
        "training_config.reasoning_enabled",
        "training_config.model_importance_score.fine_tuned_model",
    )
    assert settings.total_steps(6000) == 150
    assert settings.eval_interval(6000) == 50
    assert settings.scheduler(150) == ("cosine_with_min_lr", {"min_lr_rate": pytest.approx(0.1)})


def test_local_lora_sft_recipe_rank_from_alpha_and_lora_plus() -> None:
    settings = map_recipe(render("local/sft-lora.yaml"))
    assert settings.technique is Technique.LORA
    assert settings.lora == LoraPlan(alpha=64, rank=32, dropout=0.0, plus_ratio=16.0)
    assert any("LoRA+ ratio 16" in line for line in settings.describe())


def test_nova2_lora_without_ratio_one_is_plain_lora() -> None:
    recipe = render(
        "local/sft-lora.yaml",
        {"training_config.peft.lora_tuning.lora_plus_lr_ratio": 1.0},
    )
    assert map_recipe(recipe).lora == LoraPlan(alpha=64, rank=32, dropout=0.0, plus_ratio=None)


def test_local_cpt_recipe() -> None:
    settings = map_recipe(
        render(
            "local/cpt.yaml",
            {
                "training_config.model.attention_dropout": 0.1,
                "training_config.optim.sched.constant_steps": 20,
                "training_config.global_batch_size": 128,
            },
        )
    )
    assert (settings.method, settings.technique) == (Method.CPT, Technique.FULL)
    assert (settings.max_steps, settings.learning_rate, settings.adam_epsilon) == (300, 1e-3, 1e-6)
    assert (settings.per_device_batch_size, settings.gradient_accumulation_steps) == (32, 4)
    assert settings.dropouts == {"hidden_dropout": 0.0, "attention_dropout": 0.1}
    assert (settings.val_check_interval, settings.limit_val_batches) == (100, 2)
    assert settings.constant_steps == 20
    # Warm-up 10, 20 steps at the peak, cosine decay to min_lr over the 270 left.
    assert settings.scheduler(300) == (
        "warmup_stable_decay",
        {"num_decay_steps": 270, "min_lr_ratio": pytest.approx(0.1), "decay_type": "cosine"},
    )
    assert settings.ignored == (
        "run.replicas",
        "run.mlflow_experiment_name",
        "run.mlflow_run_name",
        "training_config.optim.optimizer",
        "training_config.optim.name",
        "training_config.optim.adam_w_mode",
    )


def test_nova2_lite_service_template_maps_too() -> None:
    recipe = render("nova/nova-2-lite/sft-lora.yaml", context=HYPERPOD)
    settings = map_recipe(recipe)
    tc = recipe.model.training_config
    assert settings.technique is Technique.LORA and settings.max_steps == tc.max_steps
    assert settings.max_length == tc.max_length
    assert settings.lora is not None and settings.lora.alpha == tc.peft.lora_tuning.alpha
    assert settings.per_device_batch_size * settings.gradient_accumulation_steps == (
        tc.global_batch_size
    )
    assert "run.replicas" in settings.ignored


def test_gpu_takes_larger_device_batches() -> None:
    recipe = render("local/sft-full.yaml", {"training_config.global_batch_size": 128})
    assert map_recipe(recipe).per_device_batch_size == 32
    on_gpu = map_recipe(recipe, device_type="cuda")
    assert (on_gpu.per_device_batch_size, on_gpu.gradient_accumulation_steps) == (64, 2)


# -- Nova 1 layout ----------------------------------------------------------------------------


def test_nova1_lora_sft_recipe() -> None:
    settings = map_recipe(render("nova/nova-lite/sft-lora.yaml", context=HYPERPOD))
    assert (settings.method, settings.technique, settings.layout) == (
        Method.SFT,
        Technique.LORA,
        "nova-1",
    )
    assert (settings.epochs, settings.max_steps) == (2, None)
    assert (settings.learning_rate, settings.min_lr, settings.warmup_steps) == (1e-5, 1e-6, 10)
    assert (settings.adam_beta1, settings.adam_beta2, settings.adam_epsilon) == (0.9, 0.999, 1e-6)
    assert (settings.per_device_batch_size, settings.gradient_accumulation_steps) == (32, 2)
    assert settings.lora == LoraPlan(alpha=128, rank=64, dropout=0.01, plus_ratio=16.0)
    assert settings.dropouts == {
        "hidden_dropout": 0.0,
        "attention_dropout": 0.0,
        "ffn_dropout": 0.0,
    }
    # Two passes over 1000 samples: 32 batches of 32, 2 accumulated per step = 16 steps each.
    assert settings.steps_per_epoch(1000) == 16
    assert settings.total_steps(1000) == 32
    assert settings.val_check_interval is None and settings.eval_interval(1000) is None
    assert settings.ignored == (
        "run.replicas",
        "run.mlflow_experiment_name",
        "run.mlflow_run_name",
        "training_config.model.optim.name",
        "training_config.model.optim.adam_w_mode",
    )


def test_nova1_trainer_fields_steps_epochs_micro_batch_clipping() -> None:
    with pytest.warns(RecipeWarning, match="whichever comes first"):
        recipe = render(
            "nova/nova-micro/sft-full.yaml",
            {
                "training_config.trainer.max_steps": 40,
                "training_config.trainer.max_epochs": 1,
                "training_config.trainer.log_every_n_steps": 5,
                "training_config.trainer.gradient_clip_val": 0.5,
                "training_config.trainer.val_check_interval": 0.5,
                "training_config.trainer.num_nodes": 2,
                "training_config.micro_batch_size": 8,
                "training_config.global_batch_size": 64,
                "training_config.exp_manager.create_tensorboard_logger": True,
            },
            context=HYPERPOD,
        )
    settings = map_recipe(recipe)
    assert settings.technique is Technique.FULL and settings.lora is None
    assert (settings.per_device_batch_size, settings.gradient_accumulation_steps) == (8, 8)
    assert (settings.logging_steps, settings.max_grad_norm) == (5, 0.5)
    # Whichever ends first: one epoch of 1280 samples is 20 steps, before max_steps (40).
    assert settings.total_steps(1280) == 20
    assert settings.total_steps(64_000) == 40
    # A val_check_interval up to 1.0 is a fraction of an epoch.
    assert settings.eval_interval(1280) == 10
    assert "training_config.trainer.num_nodes" in settings.ignored
    assert "training_config.exp_manager.create_tensorboard_logger" in settings.ignored
    assert "training_config.micro_batch_size" not in settings.ignored


def test_nova1_cpt_recipe() -> None:
    settings = map_recipe(render("nova/nova-micro/cpt.yaml", context=HYPERPOD))
    assert (settings.method, settings.technique, settings.layout) == (
        Method.CPT,
        Technique.FULL,
        "nova-1",
    )
    assert (settings.epochs, settings.max_length, settings.global_batch_size) == (1, 8192, 256)
    assert (settings.per_device_batch_size, settings.gradient_accumulation_steps) == (32, 8)
    assert set(settings.dropouts) == {"hidden_dropout", "attention_dropout", "ffn_dropout"}


# -- rules and edges --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("alpha", "rank"), [(16, 8), (32, 16), (64, 32), (128, 64), (192, 64), (4, 4)]
)
def test_lora_rank_is_half_alpha_clamped(alpha: int, rank: int) -> None:
    assert lora_rank(alpha) == rank


@pytest.mark.parametrize(
    ("global_batch", "cap", "micro", "expected"),
    [
        (32, 32, None, (32, 1)),
        (256, 32, None, (32, 8)),
        (16, 32, None, (16, 1)),
        (48, 32, None, (24, 2)),
        (64, 32, 16, (16, 4)),
        (64, 32, 48, (32, 2)),  # 48 does not divide 64: the cap decides
    ],
)
def test_split_batch(global_batch: int, cap: int, micro: int | None, expected: tuple) -> None:
    assert split_batch(global_batch, cap, micro) == expected


def test_ignored_fields_skip_empty_values_and_cover_nested_used_fields() -> None:
    recipe = render(
        "local/sft-full.yaml",
        {
            "run.validation_data_s3_path_list": {"holdout": "/data/holdout.jsonl"},
            "run.mlflow_tracking_uri": "",
        },
    )
    found = ignored_fields(recipe.model, recipe.data)
    assert "run.mlflow_tracking_uri" not in found  # empty
    assert not any(path.startswith("run.validation_data_s3_path_list") for path in found)


def test_a_bare_recipe_model_reports_the_fields_set_on_it() -> None:
    model = Nova2SftRecipe.model_validate(
        {
            "run": {"model_type": "local.tiny-chat-v1", "model_name_or_path": "tiny-chat"},
            "training_config": {"save_top_k": 3, "max_steps": 20},
        }
    )
    settings = map_recipe(model)
    assert settings.ignored == ("training_config.save_top_k",)
    assert settings.max_steps == 20


def test_rft_and_eval_recipes_are_not_for_this_trainer() -> None:
    with pytest.raises(ValueError, match="not an SFT or CPT recipe"):
        map_recipe(render("local/rft-full.yaml"))
    with pytest.raises(TypeError):
        map_recipe({"run": {}})


def test_job_recipes_load_from_paths_uris_and_mappings(tmp_path: Path) -> None:
    import yaml

    from tuneloop.errors import ConfigError, RecipeError
    from tuneloop.local.train import load_recipe

    template = RECIPES / "local" / "cpt.yaml"
    with pytest.raises(RecipeError, match="training data path is empty"):
        load_recipe(str(template))  # a job's recipe must be complete
    data = yaml.safe_load(template.read_text())
    data["run"].update(name="cpt", data_s3_path="/data/cpt.jsonl")
    path = tmp_path / "job-recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    for recipe in (str(path), f"file://{path}", path):
        rendered = load_recipe(recipe)
        assert rendered.method is Method.CPT and rendered.source.endswith("job-recipe.yaml")
    assert load_recipe(data, "cpt").kind == "cpt"
    assert load_recipe(data).kind == "cpt"
    with pytest.raises(ConfigError, match="no recipe"):
        load_recipe(None)
