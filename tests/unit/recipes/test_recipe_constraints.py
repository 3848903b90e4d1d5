"""Recipe constraints: every documented range, enum and cross-field rule, failing and passing.

Each base recipe below is a complete, valid recipe in the shape the service publishes. Tests
change one field (through an override, or by editing the text when the line number matters)
and check the problem's field path, its line and the allowed values it names.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import pytest

from tuneloop.errors import Problem, RecipeError
from tuneloop.recipes.catalog import EVAL_TASKS, Method, Platform, Technique
from tuneloop.recipes.render import RecipeWarning, RenderedRecipe, render_recipe
from tuneloop.recipes.rules import RecipeContext

HP = Platform.HYPERPOD
SMTJ = Platform.SMTJ

NOVA1_LITE = "amazon.nova-lite-v1:0:300k"
NOVA1_MICRO = "amazon.nova-micro-v1:0:128k"
NOVA1_PRO = "amazon.nova-pro-v1:0:300k"
NOVA2_LITE = "amazon.nova-2-lite-v1:0:256k"

SAGEMAKER_ARN = "arn:aws:lambda:us-east-1:123456789012:function:SageMaker-reward-fn"
PLAIN_ARN = "arn:aws:lambda:us-east-1:123456789012:function:my-reward-fn"
ESCROW = "s3://customer-escrow-123456789012-hp-abc123/train.jsonl"

# --- base recipes ----------------------------------------------------------------------------

NOVA1_SFT_FULL = """\
run:
  name: my-fullrank-run
  model_type: amazon.nova-lite-v1:0:300k
  model_name_or_path: nova-lite/prod
  replicas: 4
  data_s3_path: s3://my-bucket/train.jsonl
  validation_data_s3_path: s3://my-bucket/validation.jsonl
  output_s3_path: s3://my-bucket/outputs/
  mlflow_tracking_uri: ""
  mlflow_experiment_name: my-fullrank-experiment
  mlflow_run_name: my-fullrank-run
training_config:
  max_length: 32768
  global_batch_size: 16
  replicas: ${recipes.run.replicas}
  trainer:
    max_epochs: 1
  model:
    hidden_dropout: 0.0
    attention_dropout: 0.0
    ffn_dropout: 0.0
    optim:
      lr: 5e-6
      name: distributed_fused_adam
      adam_w_mode: true
      eps: 1e-06
      weight_decay: 0.0
      betas: [0.9, 0.999]
      sched:
        warmup_steps: 10
        constant_steps: 0
        min_lr: 5e-7
    peft:
      peft_scheme: null
"""

NOVA1_SFT_LORA = NOVA1_SFT_FULL.replace(
    "      peft_scheme: null\n",
    "      peft_scheme: lora\n"
    "      lora_tuning:\n"
    "        loraplus_lr_ratio: 16.0\n"
    "        alpha: 128\n"
    "        adapter_dropout: 0.01\n",
).replace("global_batch_size: 16", "global_batch_size: 64")

NOVA2_SFT_LORA = """\
run:
  name: my-lora-sft-run
  model_type: amazon.nova-2-lite-v1:0:256k
  model_name_or_path: nova-lite-2/prod
  replicas: 4
  data_s3_path: s3://my-bucket/train.jsonl
  validation_data_s3_path: ""
  validation_data_s3_path_list: {}
  output_s3_path: s3://my-bucket/outputs/
  mlflow_tracking_uri: ""
  mlflow_experiment_name: my-lora-sft-experiment
  mlflow_run_name: my-lora-sft-run
training_config:
  max_steps: 100
  save_steps: ${oc.select:training_config.max_steps}
  save_top_k: 5
  max_length: 32768
  global_batch_size: 32
  reasoning_enabled: true
  val_check_interval: 2500
  limit_val_batches: 2
  lr_scheduler:
    warmup_steps: 15
    min_lr: 1e-6
  optim_config:
    lr: 1e-5
    weight_decay: 0.0
    adam_beta1: 0.9
    adam_beta2: 0.95
  peft:
    peft_scheme: lora
    lora_tuning:
      alpha: 64
      lora_plus_lr_ratio: 64.0
  model_importance_score:
    fine_tuned_model: 1.0
"""

NOVA2_SFT_FULL = NOVA2_SFT_LORA.replace(
    "    peft_scheme: lora\n    lora_tuning:\n      alpha: 64\n      lora_plus_lr_ratio: 64.0\n",
    '    peft_scheme: "null"\n',
).replace("my-lora-sft", "my-full-rank-sft")

NOVA1_CPT = """\
run:
  name: my-cpt-run
  model_type: amazon.nova-lite-v1:0:300k
  model_name_or_path: nova-lite/prod
  replicas: 16
  data_s3_path: s3://my-bucket/cpt/train.jsonl
  validation_data_s3_path: ""
  output_s3_path: s3://my-bucket/outputs/
training_config:
  max_length: 8192
  global_batch_size: 256
  trainer:
    max_epochs: 1
  model:
    hidden_dropout: 0.0
    attention_dropout: 0.0
    ffn_dropout: 0.0
    optim:
      lr: 1e-5
      name: distributed_fused_adam
      adam_w_mode: true
      eps: 1e-06
      weight_decay: 0.0
      betas: [0.9, 0.999]
      sched:
        warmup_steps: 10
        constant_steps: 0
        min_lr: 1e-6
"""

NOVA2_CPT = """\
run:
  name: my-cpt-run
  model_type: amazon.nova-2-lite-v1:0:256k
  model_name_or_path: nova-lite-2/prod
  replicas: 8
  data_s3_path: s3://my-bucket/cpt/train.jsonl
  validation_data_s3_path: ""
  output_s3_path: s3://my-bucket/outputs/
  mlflow_tracking_uri: ""
  mlflow_experiment_name: ""
  mlflow_run_name: ""
training_config:
  task_type: cpt
  max_length: 8192
  global_batch_size: 256
  trainer:
    max_steps: 10
    val_check_interval: 10
    limit_val_batches: 2
  model:
    hidden_dropout: 0.0
    attention_dropout: 0.0
  optim:
    optimizer: adam
    lr: 1e-5
    name: distributed_fused_adam
    adam_w_mode: true
    eps: 1e-06
    weight_decay: 0.0
    adam_beta1: 0.9
    adam_beta2: 0.95
    sched:
      warmup_steps: 10
      constant_steps: 0
      min_lr: 1e-6
"""

NOVA2_RFT = f"""\
run:
  name: my-rft-run
  model_type: amazon.nova-2-lite-v1:0:256k
  model_name_or_path: nova-lite-2/prod
  data_s3_path: s3://example-bucket/train.jsonl
  output_s3_path: s3://example-bucket/outputs/
  replicas: 2
  generation_replicas: 2
  rollout_worker_replicas: 1
  reward_lambda_arn: {SAGEMAKER_ARN}
  mlflow_tracking_uri: ""
  mlflow_experiment_name: my-rft-experiment
  mlflow_run_name: my-rft-run
training_config:
  max_length: 10240
  global_batch_size: 256
  reasoning_effort: high
  data:
    shuffle: false
  rollout:
    rollout_strategy:
      type: off_policy_async
      age_tolerance: 2
    advantage_strategy:
      number_generation: 8
    generator:
      max_new_tokens: 8192
      set_random_seed: true
      temperature: 1
      top_k: 0
    rewards:
      api_endpoint:
        lambda_arn: ${{oc.select:run.reward_lambda_arn}}
        lambda_concurrency_limit: 100
  trainer:
    max_steps: 100
    save_steps: ${{oc.select:training_config.trainer.max_steps}}
    save_top_k: 5
    refit_freq: 4
    clip_ratio_high: 0.2
    ent_coeff: 0.001
    loss_scale: 1
    optim_config:
      lr: 7e-7
      weight_decay: 0.0
      adam_beta1: 0.9
      adam_beta2: 0.95
"""

NOVA2_RFT_LORA = (
    NOVA2_RFT
    + """\
    peft:
      peft_scheme: lora
      lora_tuning:
        alpha: 32
        loraplus_lr_ratio: 64.0
"""
)

EVAL_GEN_QA = """\
run:
  name: nova-lite-v2-gen-qa-eval
  model_type: amazon.nova-2-lite-v1:0:256k
  model_name_or_path: nova-lite-2/prod
  replicas: 1
  data_s3_path: s3://my-bucket/eval/gen_qa.jsonl
  output_s3_path: s3://my-bucket/eval-results/
  mlflow_tracking_uri: ""
  mlflow_experiment_name: ""
  mlflow_run_name: ""
evaluation:
  task: gen_qa
  strategy: gen_qa
  metric: all
inference:
  max_new_tokens: 8192
  top_k: -1
  top_p: 1.0
  temperature: 0
  top_logprobs: 0
  reasoning_effort: null
"""

BASES = {
    "nova1_sft_full": ("nova_lite_1_0_p5_p4d_gpu_sft.yaml", NOVA1_SFT_FULL),
    "nova1_sft_lora": ("nova_lite_1_0_p5_p4d_gpu_lora_sft.yaml", NOVA1_SFT_LORA),
    "nova2_sft_full": ("nova_lite_2_0_p5_gpu_sft.yaml", NOVA2_SFT_FULL),
    "nova2_sft_lora": ("nova_lite_2_0_p5_gpu_lora_sft.yaml", NOVA2_SFT_LORA),
    "nova1_cpt": ("nova_lite_1_0_p5x16_gpu_pretrain.yaml", NOVA1_CPT),
    "nova2_cpt": ("nova_lite_2_0_p5x8_gpu_pretrain.yaml", NOVA2_CPT),
    "nova2_rft": ("nova_lite_2_0_p5_gpu_rft.yaml", NOVA2_RFT),
    "nova2_rft_lora": ("nova_lite_2_0_p5_gpu_lora_rft.yaml", NOVA2_RFT_LORA),
    "eval_gen_qa": ("nova_lite_2_0_p5_48xl_gpu_bring_your_own_dataset_eval.yaml", EVAL_GEN_QA),
}

MICRO = {"run.model_type": NOVA1_MICRO, "run.model_name_or_path": "nova-micro/prod"}
PRO = {"run.model_type": NOVA1_PRO, "run.model_name_or_path": "nova-pro/prod"}
NOVA1_EVAL = {"run.model_type": NOVA1_LITE, "run.model_name_or_path": "nova-lite/prod"}


@pytest.fixture(scope="module")
def recipes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("recipes")
    paths = {}
    for key, (name, text) in BASES.items():
        path = folder / name
        path.write_text(text, encoding="utf-8")
        paths[key] = path
    return paths


# --- helpers ---------------------------------------------------------------------------------


def context(
    platform: Platform = HP, instance_type: str | None = None, template: bool = False
) -> RecipeContext:
    return RecipeContext(platform=platform, instance_type=instance_type, template=template)


def render(
    path: Path,
    overrides: dict[str, Any] | None = None,
    *,
    platform: Platform = HP,
    instance_type: str | None = None,
    template: bool = False,
    method: Any = "detect",
) -> RenderedRecipe:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecipeWarning)
        return render_recipe(
            path, overrides or {}, method=method, context=context(platform, instance_type, template)
        )


def problems(path: Path, overrides: dict[str, Any] | None = None, **kwargs: Any) -> list[Problem]:
    with pytest.raises(RecipeError) as info:
        render(path, overrides, **kwargs)
    assert info.value.problems
    return info.value.problems


def problem_at(
    path: Path, field: str, overrides: dict[str, Any] | None = None, **kwargs: Any
) -> Problem:
    found = problems(path, overrides, **kwargs)
    matches = [p for p in found if p.path == field]
    assert matches, f"no problem at {field}; got: {[p.format() for p in found]}"
    return matches[0]


def line_no(text: str, needle: str) -> int:
    """1-based line of the first line of ``text`` containing ``needle``."""
    for number, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in text")


def variant(tmp_path: Path, key: str, old: str, new: str) -> tuple[Path, str]:
    """The base recipe ``key`` with one line edited, written to ``tmp_path``."""
    name, text = BASES[key]
    assert text.count(old) == 1, old
    edited = text.replace(old, new)
    path = tmp_path / name
    path.write_text(edited, encoding="utf-8")
    return path, edited


# --- base recipes are valid --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "method", "technique"),
    [
        ("nova1_sft_full", Method.SFT, Technique.FULL),
        ("nova1_sft_lora", Method.SFT, Technique.LORA),
        ("nova2_sft_full", Method.SFT, Technique.FULL),
        ("nova2_sft_lora", Method.SFT, Technique.LORA),
        ("nova1_cpt", Method.CPT, Technique.FULL),
        ("nova2_cpt", Method.CPT, Technique.FULL),
        ("nova2_rft", Method.RFT, Technique.FULL),
        ("nova2_rft_lora", Method.RFT, Technique.LORA),
        ("eval_gen_qa", None, Technique.FULL),
    ],
)
def test_base_recipe_is_valid(recipes, key, method, technique):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RecipeWarning)
        rendered = render_recipe(recipes[key], context=context())
    assert rendered.method is method
    assert rendered.technique is technique
    assert rendered.warnings == []


def test_problem_format_names_file_line_field_and_allowed(tmp_path):
    path, text = variant(
        tmp_path, "nova1_sft_full", "global_batch_size: 16", "global_batch_size: 128"
    )
    problem = problem_at(path, "training_config.global_batch_size")
    line = line_no(text, "global_batch_size: 128")
    assert problem.source == str(path)
    assert problem.line == line
    assert problem.format() == (
        f"{path}:{line}: training_config.global_batch_size: 128 is not allowed "
        "(allowed: 16, 32, 64)"
    )
    assert re.fullmatch(r".+:\d+: [\w.\[\]]+: .+ \(allowed: .+\)", problem.format())


def test_error_reports_every_problem_at_once(recipes):
    found = problems(
        recipes["nova1_sft_full"],
        {
            "training_config.global_batch_size": 128,
            "training_config.model.hidden_dropout": 2.0,
            "training_config.model.optim.sched.warmup_steps": 0,
        },
    )
    assert {p.path for p in found} >= {
        "training_config.global_batch_size",
        "training_config.model.hidden_dropout",
        "training_config.model.optim.sched.warmup_steps",
    }


def test_override_problem_names_the_override(recipes):
    problem = problem_at(
        recipes["nova1_sft_full"],
        "training_config.global_batch_size",
        {"training_config.global_batch_size": 128},
    )
    assert problem.source == "--set"
    assert problem.line is None


# --- learning rate ---------------------------------------------------------------------------

OPTIM1 = "training_config.model.optim"


@pytest.mark.parametrize("lr", [1e-6, 1e-5, 1e-4, 1e-3])
def test_full_rank_sft_lr_in_range_passes(recipes, lr):
    rendered = render(
        recipes["nova1_sft_full"], {f"{OPTIM1}.lr": lr, f"{OPTIM1}.sched.min_lr": 1e-8}
    )
    assert rendered.data["training_config"]["model"]["optim"]["lr"] == lr


@pytest.mark.parametrize("lr", [1e-7, 2e-3])
def test_full_rank_sft_lr_out_of_range_fails(recipes, lr):
    problem = problem_at(
        recipes["nova1_sft_full"],
        f"{OPTIM1}.lr",
        {f"{OPTIM1}.lr": lr, f"{OPTIM1}.sched.min_lr": 1e-8},
    )
    assert "full-rank SFT" in problem.message
    assert problem.allowed == "1e-06..0.001"


def test_full_rank_sft_lr_line_points_at_lr(tmp_path):
    path, text = variant(tmp_path, "nova1_sft_full", "lr: 5e-6", "lr: 2e-3")
    problem = problem_at(path, f"{OPTIM1}.lr")
    assert problem.line == line_no(text, "lr: 2e-3")


@pytest.mark.parametrize("lr", [1e-6, 1e-3])
def test_nova2_full_rank_sft_lr_boundaries_pass(recipes, lr):
    render(
        recipes["nova2_sft_full"],
        {"training_config.optim_config.lr": lr, "training_config.lr_scheduler.min_lr": 1e-8},
    )


@pytest.mark.parametrize("lr", [1e-7, 2e-3])
def test_nova2_full_rank_sft_lr_out_of_range_fails(recipes, lr):
    problem = problem_at(
        recipes["nova2_sft_full"],
        "training_config.optim_config.lr",
        {"training_config.optim_config.lr": lr, "training_config.lr_scheduler.min_lr": 1e-8},
    )
    assert problem.allowed == "1e-06..0.001"


@pytest.mark.parametrize(
    "key,field",
    [
        ("nova2_sft_lora", "training_config.optim_config.lr"),
        ("nova1_sft_lora", f"{OPTIM1}.lr"),
    ],
)
@pytest.mark.parametrize("lr", [5e-4, 2e-3])
def test_lora_lr_outside_recommended_band_only_warns(recipes, key, field, lr):
    with pytest.warns(RecipeWarning, match="recommended"):
        rendered = render_recipe(recipes[key], {field: lr}, context=context())
    assert [w.path for w in rendered.warnings] == [field]


def test_lr_must_be_positive(recipes):
    problem = problem_at(
        recipes["nova2_sft_lora"],
        "training_config.optim_config.lr",
        {"training_config.optim_config.lr": 0},
    )
    assert "out of range" in problem.message
    assert problem.allowed == "> 0.0 and <= 1.0"


@pytest.mark.parametrize(
    "key,min_lr_field,lr_field",
    [
        ("nova1_sft_full", f"{OPTIM1}.sched.min_lr", f"{OPTIM1}.lr"),
        ("nova1_cpt", f"{OPTIM1}.sched.min_lr", f"{OPTIM1}.lr"),
        (
            "nova2_sft_lora",
            "training_config.lr_scheduler.min_lr",
            "training_config.optim_config.lr",
        ),
        ("nova2_cpt", "training_config.optim.sched.min_lr", "training_config.optim.lr"),
    ],
)
def test_min_lr_must_be_below_lr(recipes, key, min_lr_field, lr_field):
    problem = problem_at(recipes[key], min_lr_field, {lr_field: 1e-5, min_lr_field: 1e-5})
    assert "must be lower than lr" in problem.message
    assert problem.allowed == "< 1e-05"
    render(recipes[key], {lr_field: 1e-5, min_lr_field: 9e-6})


def test_min_lr_line_points_at_min_lr(tmp_path):
    path, text = variant(tmp_path, "nova2_sft_lora", "min_lr: 1e-6", "min_lr: 1e-5")
    problem = problem_at(path, "training_config.lr_scheduler.min_lr")
    assert problem.line == line_no(text, "min_lr: 1e-5")


# --- warm-up, epochs, steps --------------------------------------------------------------------


@pytest.mark.parametrize(
    "key,field",
    [
        ("nova1_sft_full", f"{OPTIM1}.sched.warmup_steps"),
        ("nova2_sft_lora", "training_config.lr_scheduler.warmup_steps"),
        ("nova1_cpt", f"{OPTIM1}.sched.warmup_steps"),
        ("nova2_cpt", "training_config.optim.sched.warmup_steps"),
    ],
)
def test_warmup_steps_range(recipes, key, field):
    for good in (1, 20):
        render(recipes[key], {field: good})
    for bad in (0, 21):
        problem = problem_at(recipes[key], field, {field: bad})
        assert problem.message == f"{bad} is out of range"
        assert problem.allowed == "1..20"


@pytest.mark.parametrize("epochs", [1, 5])
def test_max_epochs_up_to_five_passes(recipes, epochs):
    render(recipes["nova1_sft_full"], {"training_config.trainer.max_epochs": epochs})


def test_max_epochs_six_fails(tmp_path):
    path, text = variant(tmp_path, "nova1_sft_full", "max_epochs: 1", "max_epochs: 6")
    problem = problem_at(path, "training_config.trainer.max_epochs")
    assert problem.line == line_no(text, "max_epochs: 6")
    assert problem.allowed == "-1..5"


def test_max_epochs_zero_fails(recipes):
    problem = problem_at(
        recipes["nova1_sft_full"],
        "training_config.trainer.max_epochs",
        {"training_config.trainer.max_epochs": 0},
    )
    assert "trains nothing" in problem.message
    assert "1..5" in problem.allowed


def test_max_epochs_zero_fails_for_cpt(recipes):
    problem_at(
        recipes["nova1_cpt"],
        "training_config.trainer.max_epochs",
        {"training_config.trainer.max_epochs": 0},
    )


def test_max_epochs_minus_one_needs_max_steps(recipes):
    problem = problem_at(
        recipes["nova1_sft_full"],
        "training_config.trainer.max_epochs",
        {"training_config.trainer.max_epochs": -1},
    )
    assert "max_steps" in problem.message
    assert problem.fix
    render(
        recipes["nova1_sft_full"],
        {"training_config.trainer.max_epochs": -1, "training_config.trainer.max_steps": 50},
    )


def test_max_steps_and_max_epochs_together_warn(recipes):
    with pytest.warns(RecipeWarning, match="both max_epochs .* and max_steps"):
        rendered = render_recipe(
            recipes["nova1_sft_full"], {"training_config.trainer.max_steps": 50}, context=context()
        )
    assert rendered.warnings[0].path == "training_config.trainer.max_steps"


def test_nova2_sft_max_steps_minimum(recipes):
    problem = problem_at(
        recipes["nova2_sft_lora"], "training_config.max_steps", {"training_config.max_steps": 3}
    )
    assert problem.allowed == "4..100000"


# --- sequence length -------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["nova1_sft_full", "nova1_sft_lora"])
def test_nova1_sft_max_length_at_most_65536(recipes, key):
    render(recipes[key], {"training_config.max_length": 65536})
    problem = problem_at(
        recipes[key], "training_config.max_length", {"training_config.max_length": 65537}
    )
    assert problem.allowed == "1..65536"


def test_micro_sft_max_length_at_most_65536(recipes):
    render(
        recipes["nova1_sft_full"], {**MICRO, "run.replicas": 2, "training_config.max_length": 65536}
    )
    problem_at(
        recipes["nova1_sft_full"],
        "training_config.max_length",
        {**MICRO, "run.replicas": 2, "training_config.max_length": 65537},
    )


@pytest.mark.parametrize("key", ["nova1_cpt", "nova2_cpt"])
def test_cpt_max_length_at_most_8192(recipes, key):
    render(recipes[key], {"training_config.max_length": 4096})
    problem = problem_at(
        recipes[key], "training_config.max_length", {"training_config.max_length": 8193}
    )
    assert problem.allowed == "1..8192"


@pytest.mark.parametrize("key", ["nova2_sft_full", "nova2_sft_lora"])
@pytest.mark.parametrize("length", [8192, 16384, 32768, 65536])
def test_nova2_sft_max_length_allowed_values_pass(recipes, key, length):
    render(recipes[key], {"training_config.max_length": length})


@pytest.mark.parametrize("length", [4096, 10000, 40000])
def test_nova2_sft_max_length_other_values_fail(recipes, length):
    problem = problem_at(
        recipes["nova2_sft_lora"],
        "training_config.max_length",
        {"training_config.max_length": length},
    )
    assert problem.allowed == "8192, 16384, 32768, 65536"


def test_nova2_sft_max_length_above_65536_fails(recipes):
    problem = problem_at(
        recipes["nova2_sft_lora"],
        "training_config.max_length",
        {"training_config.max_length": 131072},
    )
    assert "65536" in problem.allowed


# --- dropouts and optimizer --------------------------------------------------------------------


@pytest.mark.parametrize(
    "key,field",
    [
        ("nova1_sft_full", "training_config.model.hidden_dropout"),
        ("nova1_sft_full", "training_config.model.attention_dropout"),
        ("nova1_sft_full", "training_config.model.ffn_dropout"),
        ("nova1_sft_lora", "training_config.model.peft.lora_tuning.adapter_dropout"),
        ("nova1_cpt", "training_config.model.ffn_dropout"),
        ("nova2_cpt", "training_config.model.hidden_dropout"),
        ("nova2_cpt", "training_config.model.attention_dropout"),
    ],
)
def test_dropout_between_zero_and_one(recipes, key, field):
    for good in (0.0, 0.2, 1.0):
        render(recipes[key], {field: good})
    for bad in (-0.1, 1.5):
        problem = problem_at(recipes[key], field, {field: bad})
        assert "out of range" in problem.message
        assert problem.allowed == "0.0..1.0"


def test_adapter_dropout_line(tmp_path):
    path, text = variant(
        tmp_path, "nova1_sft_lora", "adapter_dropout: 0.01", "adapter_dropout: 1.5"
    )
    problem = problem_at(path, "training_config.model.peft.lora_tuning.adapter_dropout")
    assert problem.line == line_no(text, "adapter_dropout: 1.5")
    assert problem.allowed == "0.0..1.0"


@pytest.mark.parametrize(
    "key,field",
    [
        ("nova1_sft_full", f"{OPTIM1}.name"),
        ("nova1_cpt", f"{OPTIM1}.name"),
        ("nova2_cpt", "training_config.optim.name"),
    ],
)
def test_optimizer_name_only_distributed_fused_adam(recipes, key, field):
    problem = problem_at(recipes[key], field, {field: "adamw"})
    assert problem.message == "'adamw' is not allowed"
    assert problem.allowed == "distributed_fused_adam"


# --- batch sizes -----------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["nova1_cpt", "nova2_cpt"])
def test_cpt_global_batch_size(recipes, key):
    for good in (32, 64, 128, 256):
        render(recipes[key], {"training_config.global_batch_size": good})
    for bad in (16, 100, 512):
        problem = problem_at(
            recipes[key],
            "training_config.global_batch_size",
            {"training_config.global_batch_size": bad},
        )
        assert problem.allowed == "32, 64, 128, 256"


@pytest.mark.parametrize("key", ["nova1_sft_full", "nova1_sft_lora"])
def test_nova1_sft_global_batch_size(recipes, key):
    for good in (16, 32, 64):
        render(recipes[key], {"training_config.global_batch_size": good})
    for bad in (8, 128):
        problem = problem_at(
            recipes[key],
            "training_config.global_batch_size",
            {"training_config.global_batch_size": bad},
        )
        assert problem.allowed == "16, 32, 64"


def test_nova2_sft_global_batch_size(recipes):
    problem = problem_at(
        recipes["nova2_sft_lora"],
        "training_config.global_batch_size",
        {"training_config.global_batch_size": 16},
    )
    assert problem.allowed == "32, 64, 128, 256"


# --- replicas --------------------------------------------------------------------------------

HYPERPOD_REPLICAS = [
    # (base, extra overrides, allowed, some refused counts)
    ("nova1_sft_full", MICRO, (2, 4, 8), (1, 16)),
    ("nova1_sft_lora", MICRO, (2, 4, 8), (1, 16)),
    ("nova1_sft_full", {}, (4, 8, 16, 32), (1, 2, 6, 64)),
    ("nova1_sft_lora", {}, (4, 8, 16, 32), (1, 2)),
    ("nova1_sft_full", PRO, (6, 12, 24), (4, 8, 32)),
    ("nova1_sft_lora", PRO, (6, 12, 24), (3, 8)),
    ("nova1_cpt", MICRO, (2, 4, 8, 16, 32), (1, 6)),
    ("nova1_cpt", {}, (4, 8, 16, 32), (2, 6)),
    ("nova1_cpt", PRO, (6, 12, 24), (4, 32)),
    ("nova2_sft_full", {}, (4, 8, 16, 32), (1, 2, 64)),
    ("nova2_sft_lora", {}, (1, 4, 8, 16, 32), (2, 3, 64)),
    ("nova2_cpt", {}, (4, 8, 16, 32), (2, 64)),
    ("nova2_rft", {}, (2, 4, 8, 16), (1, 6, 32)),
    ("nova2_rft_lora", {}, (2, 4, 8, 16), (1, 6, 32)),
]


@pytest.mark.parametrize(("key", "extra", "allowed", "refused"), HYPERPOD_REPLICAS)
def test_hyperpod_replicas(recipes, key, extra, allowed, refused):
    for count in allowed:
        render(recipes[key], {**extra, "run.replicas": count})
    for count in refused:
        problem = problem_at(recipes[key], "run.replicas", {**extra, "run.replicas": count})
        assert f"{count} replicas is not allowed" in problem.message
        assert problem.allowed == ", ".join(str(c) for c in allowed)


def test_replicas_line_points_at_replicas(tmp_path):
    path, text = variant(tmp_path, "nova2_sft_full", "replicas: 4", "replicas: 2")
    problem = problem_at(path, "run.replicas")
    assert problem.line == line_no(text, "replicas: 2")
    assert problem.format().startswith(f"{path}:{problem.line}: run.replicas: ")


SMTJ_REPLICAS = [
    # (base, extra, instance type, allowed, refused)
    ("nova1_sft_full", {}, "ml.p4d.24xlarge", (4, 8, 16), (2, 32)),
    ("nova1_sft_full", {}, "ml.p5.48xlarge", (2, 4, 8, 16), (1, 32)),
    ("nova1_sft_lora", {}, "ml.p5.48xlarge", (1, 4, 8, 16), (2, 32)),
    ("nova1_sft_full", MICRO, "ml.p4d.24xlarge", (2, 4, 8), (1, 16)),
    ("nova1_sft_lora", MICRO, "ml.g5.12xlarge", (1,), (2,)),
    ("nova1_sft_lora", PRO, "ml.p5.48xlarge", (3, 6, 12, 24), (4,)),
    ("nova2_sft_full", {}, "ml.p5.48xlarge", (4, 8, 16, 32), (1, 2)),
    ("nova2_sft_lora", {}, "ml.p5en.48xlarge", (1, 4, 8, 16, 32), (2,)),
    ("nova2_rft", {}, "ml.p5.48xlarge", (2, 4, 6, 8), (1, 16)),
]


@pytest.mark.parametrize(("key", "extra", "instance", "allowed", "refused"), SMTJ_REPLICAS)
def test_training_job_replicas_depend_on_instance_type(
    recipes, key, extra, instance, allowed, refused
):
    for count in allowed:
        render(
            recipes[key], {**extra, "run.replicas": count}, platform=SMTJ, instance_type=instance
        )
    for count in refused:
        problem = problem_at(
            recipes[key],
            "run.replicas",
            {**extra, "run.replicas": count},
            platform=SMTJ,
            instance_type=instance,
        )
        assert instance in problem.message
        assert problem.allowed == ", ".join(str(c) for c in allowed)


def test_training_job_replicas_for_instance_family_without_counts(recipes):
    problem = problem_at(
        recipes["nova1_sft_full"], "run.replicas", platform=SMTJ, instance_type="ml.g5.12xlarge"
    )
    assert "no instance counts" in problem.message
    assert "p4d" in problem.allowed and "p5" in problem.allowed


def test_instance_type_not_offered_fails(recipes):
    problem = problem_at(
        recipes["nova2_cpt"], "instance_type", platform=HP, instance_type="ml.p4d.24xlarge"
    )
    assert problem.allowed == "ml.p5.48xlarge"


def test_evaluation_on_hyperpod_runs_on_exactly_one_instance(recipes):
    problem = problem_at(recipes["eval_gen_qa"], "run.replicas", {"run.replicas": 2})
    assert "exactly one" in problem.message
    assert problem.allowed == "1"
    render(recipes["eval_gen_qa"], {"run.replicas": 2}, platform=SMTJ)


# --- LoRA --------------------------------------------------------------------------------------

ALPHAS = (32, 64, 96, 128, 160, 192)


@pytest.mark.parametrize(
    "key,field",
    [
        ("nova1_sft_lora", "training_config.model.peft.lora_tuning.alpha"),
        ("nova2_sft_lora", "training_config.peft.lora_tuning.alpha"),
    ],
)
def test_lora_alpha_enum(recipes, key, field):
    for good in ALPHAS:
        render(recipes[key], {field: good})
    for bad in (16, 48, 256):
        problem = problem_at(recipes[key], field, {field: bad})
        assert problem.message == f"{bad} is not allowed"
        assert problem.allowed == "32, 64, 96, 128, 160, 192"


def test_rft_lora_alpha_enum(recipes):
    field = "training_config.trainer.peft.lora_tuning.alpha"
    for good in (16, 32, 64):
        render(recipes["nova2_rft_lora"], {field: good})
    for bad in (8, 128):
        problem = problem_at(recipes["nova2_rft_lora"], field, {field: bad})
        assert problem.allowed == "16, 32, 64"


def test_lora_alpha_line(tmp_path):
    path, text = variant(tmp_path, "nova2_sft_lora", "alpha: 64", "alpha: 48")
    problem = problem_at(path, "training_config.peft.lora_tuning.alpha")
    assert problem.line == line_no(text, "alpha: 48")


@pytest.mark.parametrize(
    ("key", "field", "good", "bad", "allowed"),
    [
        (
            "nova1_sft_lora",
            "training_config.model.peft.lora_tuning.loraplus_lr_ratio",
            (0.0, 8.0, 100.0),
            (-1.0, 100.5),
            "0.0..100.0",
        ),
        (
            "nova2_sft_lora",
            "training_config.peft.lora_tuning.lora_plus_lr_ratio",
            (1.0, 16.0, 70.0),
            (0.5, 71.0),
            "1.0..70.0",
        ),
        (
            "nova2_rft_lora",
            "training_config.trainer.peft.lora_tuning.loraplus_lr_ratio",
            (0.0, 64.0, 100.0),
            (-1.0, 101.0),
            "0.0..100.0",
        ),
    ],
)
def test_loraplus_lr_ratio_ranges(recipes, key, field, good, bad, allowed):
    for value in good:
        render(recipes[key], {field: value})
    for value in bad:
        problem = problem_at(recipes[key], field, {field: value})
        assert "out of range" in problem.message
        assert problem.allowed == allowed


def test_lora_tuning_without_lora_scheme_warns(recipes):
    with pytest.warns(RecipeWarning, match="lora_tuning is ignored"):
        render_recipe(
            recipes["nova2_sft_lora"],
            {"training_config.peft.peft_scheme": "null"},
            context=context(),
        )


def test_peft_scheme_enum(recipes):
    problem = problem_at(
        recipes["nova2_sft_lora"],
        "training_config.peft.peft_scheme",
        {"training_config.peft.peft_scheme": "qlora"},
    )
    assert "lora" in problem.allowed


# --- RFT -------------------------------------------------------------------------------------

NGEN = "training_config.rollout.advantage_strategy.number_generation"
RFT_LR = "training_config.trainer.optim_config.lr"


def test_rft_number_generation_range(recipes):
    for good in (2, 16):
        render(recipes["nova2_rft"], {NGEN: good})
    for bad in (1, 17):
        problem = problem_at(recipes["nova2_rft"], NGEN, {NGEN: bad})
        assert problem.allowed == "2..16"


def test_rft_number_generation_line(tmp_path):
    path, text = variant(tmp_path, "nova2_rft", "number_generation: 8", "number_generation: 32")
    problem = problem_at(path, NGEN)
    assert problem.line == line_no(text, "number_generation: 32")


def test_rft_lr_range(recipes):
    for good in (1e-8, 1e-6, 1e-3):
        render(recipes["nova2_rft"], {RFT_LR: good})
    for bad in (1e-9, 2e-3):
        problem = problem_at(recipes["nova2_rft"], RFT_LR, {RFT_LR: bad})
        assert problem.allowed == "1e-08..0.001"


def test_rft_max_length_range(recipes):
    for good in (8193, 32768):
        render(recipes["nova2_rft"], {"training_config.max_length": good})
    for bad in (4095, 32769):
        problem = problem_at(
            recipes["nova2_rft"], "training_config.max_length", {"training_config.max_length": bad}
        )
        assert problem.allowed == "4096..32768"


def test_rft_short_max_length_warns_about_generation_room(recipes):
    with pytest.warns(RecipeWarning, match="max_new_tokens"):
        render_recipe(recipes["nova2_rft"], {"training_config.max_length": 4096}, context=context())


@pytest.mark.parametrize("field", ["generation_replicas", "rollout_worker_replicas"])
def test_hyperpod_rft_requires_generation_and_rollout_replicas(recipes, field):
    problem = problem_at(recipes["nova2_rft"], f"run.{field}", {f"run.{field}": None})
    assert "required for RFT on HyperPod" in problem.message


def test_training_job_rft_ignores_hyperpod_replicas_with_a_warning(recipes):
    with pytest.warns(RecipeWarning, match="HyperPod only"):
        render_recipe(
            recipes["nova2_rft"], {"run.replicas": 4}, context=context(SMTJ, "ml.p5.48xlarge")
        )


def test_hyperpod_reward_lambda_name_must_contain_sagemaker(recipes):
    problem = problem_at(
        recipes["nova2_rft"], "run.reward_lambda_arn", {"run.reward_lambda_arn": PLAIN_ARN}
    )
    assert "must contain 'SageMaker'" in problem.message
    assert "SageMaker-my-reward-fn" in problem.fix
    render(recipes["nova2_rft"], {"run.reward_lambda_arn": SAGEMAKER_ARN})


def test_training_job_reward_lambda_name_is_free(recipes):
    render(
        recipes["nova2_rft"],
        {
            "run.reward_lambda_arn": PLAIN_ARN,
            "run.generation_replicas": None,
            "run.rollout_worker_replicas": None,
            "run.replicas": 4,
        },
        platform=SMTJ,
    )


@pytest.mark.parametrize(
    "arn",
    [
        "my-reward-fn",
        "arn:aws:s3:::bucket/SageMaker",
        "arn:aws:lambda:us-east-1:123:function:SageMaker-x",
    ],
)
def test_reward_must_be_a_lambda_arn(recipes, arn):
    problem = problem_at(
        recipes["nova2_rft"], "run.reward_lambda_arn", {"run.reward_lambda_arn": arn}
    )
    assert "is not a Lambda function ARN" in problem.message
    assert problem.fix


def test_endpoint_lambda_must_match_run_reward(recipes):
    field = "training_config.rollout.rewards.api_endpoint.lambda_arn"
    other = SAGEMAKER_ARN.replace("reward-fn", "other-fn")
    problem = problem_at(recipes["nova2_rft"], field, {field: other})
    assert "differs from run.reward_lambda_arn" in problem.message


def test_training_job_lora_rft_batch_size_limit(recipes):
    overrides = {
        "run.replicas": 4,
        "run.generation_replicas": None,
        "run.rollout_worker_replicas": None,
    }
    problem = problem_at(
        recipes["nova2_rft_lora"], "training_config.global_batch_size", overrides, platform=SMTJ
    )
    assert problem.allowed == "16..128"
    render(
        recipes["nova2_rft_lora"],
        {**overrides, "training_config.global_batch_size": 128},
        platform=SMTJ,
    )


def test_rft_global_batch_size_range(recipes):
    problem = problem_at(
        recipes["nova2_rft"],
        "training_config.global_batch_size",
        {"training_config.global_batch_size": 8},
    )
    assert problem.allowed == "16..256"


# --- unknown keys, duplicates, YAML types ----------------------------------------------------


@pytest.mark.parametrize(
    ("key", "typo", "suggestion"),
    [
        ("nova1_sft_full", "training_config.model.optim.sched.warmup_step", "warmup_steps"),
        ("nova1_sft_full", "training_config.trainer.max_epoch", "max_epochs"),
        ("nova1_sft_lora", "training_config.model.peft.lora_tuning.alfa", "alpha"),
        ("nova2_sft_lora", "training_config.optim_config.learning_rate", None),
        (
            "nova2_sft_lora",
            "training_config.peft.lora_tuning.loraplus_lr_ratio",
            "lora_plus_lr_ratio",
        ),
        ("nova2_sft_lora", "run.replica", "replicas"),
        ("nova2_cpt", "training_config.optim.sched.min_lr_", "min_lr"),
        ("nova2_rft", "training_config.rollout.generator.temprature", "temperature"),
        ("nova2_rft_lora", "training_config.trainer.peft.lora_tuning.alpah", "alpha"),
        ("eval_gen_qa", "evaluation.metrics", "metric"),
        ("eval_gen_qa", "inference.max_new_token", "max_new_tokens"),
    ],
)
def test_unknown_field_fails_with_suggestion(recipes, key, typo, suggestion):
    problem = problem_at(recipes[key], typo, {typo: 1})
    assert problem.message.startswith("unknown field")
    if suggestion is None:
        assert "did you mean" not in problem.message
    else:
        assert f"did you mean '{suggestion}'?" in problem.message
    assert problem.allowed  # names the fields that do exist


def test_unknown_top_level_field_in_file_has_line(tmp_path):
    path, text = variant(
        tmp_path,
        "nova2_sft_lora",
        "training_config:\n",
        "trainig_config:\n  foo: 1\ntraining_config:\n",
    )
    problem = problem_at(path, "trainig_config")
    assert problem.message == "unknown field; did you mean 'training_config'?"
    assert problem.line == line_no(text, "trainig_config:")
    assert problem.allowed == "run, training_config"


def test_unknown_nested_field_in_file_has_line(tmp_path):
    path, text = variant(
        tmp_path, "nova1_sft_full", "        warmup_steps: 10\n", "        warmup_step: 10\n"
    )
    problem = problem_at(path, f"{OPTIM1}.sched.warmup_step")
    assert "did you mean 'warmup_steps'?" in problem.message
    assert problem.line == line_no(text, "warmup_step: 10")


def test_duplicate_key_fails_with_line(tmp_path):
    path, text = variant(
        tmp_path, "nova2_sft_lora", "    lr: 1e-5\n", "    lr: 1e-5\n    lr: 1e-4\n"
    )
    with pytest.raises(RecipeError) as info:
        render(path)
    [problem] = info.value.problems
    assert problem.path == "training_config.optim_config.lr"
    assert problem.line == line_no(text, "lr: 1e-4")
    assert f"first set on line {line_no(text, 'lr: 1e-5')}" in problem.message
    assert problem.source == str(path)


def test_scientific_notation_reads_as_float(recipes):
    rendered = render(recipes["nova1_sft_full"])
    optim = rendered.data["training_config"]["model"]["optim"]
    assert optim["lr"] == 5e-6 and isinstance(optim["lr"], float)
    assert optim["sched"]["min_lr"] == 5e-7 and isinstance(optim["sched"]["min_lr"], float)
    assert optim["eps"] == 1e-6


def test_wrong_type_fails(recipes):
    problem = problem_at(
        recipes["nova2_sft_lora"],
        "training_config.max_steps",
        {"training_config.max_steps": "many"},
    )
    assert "'many'" in problem.message


def test_missing_required_field(tmp_path):
    path, _ = variant(tmp_path, "nova2_sft_lora", "  model_name_or_path: nova-lite-2/prod\n", "")
    problem = problem_at(path, "run.model_name_or_path")
    assert problem.message == "required field is missing"


# --- interpolations --------------------------------------------------------------------------


def test_oc_select_interpolation_resolves(recipes):
    rendered = render(recipes["nova2_sft_lora"], {"training_config.max_steps": 250})
    assert rendered.data["training_config"]["save_steps"] == 250


def test_recipes_prefix_interpolation_resolves(recipes):
    rendered = render(recipes["nova1_sft_full"], {"run.replicas": 8})
    assert rendered.data["training_config"]["replicas"] == 8


def test_rft_interpolations_resolve(recipes):
    rendered = render(recipes["nova2_rft"])
    tc = rendered.data["training_config"]
    assert tc["rollout"]["rewards"]["api_endpoint"]["lambda_arn"] == SAGEMAKER_ARN
    assert tc["trainer"]["save_steps"] == 100


def test_oc_select_default_is_used_when_path_is_missing(tmp_path):
    path, _ = variant(
        tmp_path,
        "nova2_sft_lora",
        "save_steps: ${oc.select:training_config.max_steps}",
        "save_steps: ${oc.select:training_config.nothing_here,7}",
    )
    assert render(path).data["training_config"]["save_steps"] == 7


@pytest.mark.parametrize(
    "expr,message",
    [
        ("${oc.select:training_config.max_step}", "training_config.max_step, which is not set"),
        ("${training_config.nothing}", "which is not set"),
        ("${oc.env:HOME}", "unsupported interpolation"),
    ],
)
def test_unknown_interpolation_fails(tmp_path, expr, message):
    path, text = variant(
        tmp_path,
        "nova2_sft_lora",
        "save_steps: ${oc.select:training_config.max_steps}",
        f"save_steps: {expr}",
    )
    problem = problem_at(path, "training_config.save_steps")
    assert message in problem.message
    assert problem.line == line_no(text, "save_steps:")


# --- model type and path ---------------------------------------------------------------------


def test_unknown_model_type_lists_allowed(recipes):
    problem = problem_at(
        recipes["nova2_sft_lora"],
        "run.model_type",
        {"run.model_type": "amazon.nova-3-lite-v1:0:1m"},
    )
    assert "unknown model_type" in problem.message
    for model_type in (NOVA1_MICRO, NOVA1_LITE, NOVA1_PRO, NOVA2_LITE):
        assert model_type in problem.allowed


def test_unknown_model_type_line(tmp_path):
    path, text = variant(
        tmp_path,
        "nova1_cpt",
        "model_type: amazon.nova-lite-v1:0:300k",
        "model_type: amazon.nova-lite-v2",
    )
    problem = problem_at(path, "run.model_type")
    assert problem.line == line_no(text, "model_type:")


def test_model_path_of_another_model_fails(recipes):
    problem = problem_at(
        recipes["nova2_sft_lora"],
        "run.model_name_or_path",
        {"run.model_name_or_path": "nova-lite/prod"},
    )
    assert f"the base of {NOVA1_LITE}" in problem.message
    assert "nova-lite-2/prod" in problem.fix


def test_model_path_neither_base_nor_s3_fails(recipes):
    problem = problem_at(
        recipes["nova2_sft_lora"], "run.model_name_or_path", {"run.model_name_or_path": "my-model"}
    )
    assert "nova-lite-2/prod" in problem.allowed


def test_model_path_checkpoint_uri_passes(recipes):
    render(
        recipes["nova2_sft_lora"],
        {"run.model_name_or_path": "s3://customer-escrow-123456789012-hp-abc/job/step100"},
    )


# --- data locations --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key,field",
    [
        ("nova2_sft_lora", "run.data_s3_path"),
        ("nova2_sft_lora", "run.validation_data_s3_path"),
        ("nova1_sft_full", "run.validation_data_s3_path"),
        ("nova1_cpt", "run.data_s3_path"),
        ("nova2_rft", "run.data_s3_path"),
        ("eval_gen_qa", "run.data_s3_path"),
    ],
)
def test_escrow_bucket_as_data_fails(recipes, key, field):
    problem = problem_at(recipes[key], field, {field: ESCROW})
    assert "customer-owned bucket" in problem.message
    assert problem.fix


def test_escrow_bucket_in_validation_list_fails(recipes):
    problem = problem_at(
        recipes["nova2_sft_lora"],
        "run.validation_data_s3_path_list.extra",
        {"run.validation_data_s3_path_list": {"extra": ESCROW}},
    )
    assert "customer-owned bucket" in problem.message


def test_escrow_data_path_line(tmp_path):
    path, text = variant(
        tmp_path,
        "nova2_sft_lora",
        "data_s3_path: s3://my-bucket/train.jsonl",
        f"data_s3_path: {ESCROW}",
    )
    problem = problem_at(path, "run.data_s3_path")
    assert problem.line == line_no(text, "  data_s3_path:")


@pytest.mark.parametrize("platform", [HP, SMTJ])
@pytest.mark.parametrize(
    "value", ["/data/train.jsonl", "file:///data/train.jsonl", "gs://bucket/train.jsonl"]
)
def test_non_s3_data_path_on_nova_platform_fails(recipes, platform, value):
    problem = problem_at(
        recipes["nova2_sft_lora"],
        "run.data_s3_path",
        {"run.data_s3_path": value},
        platform=platform,
    )
    assert "is not an s3:// URI" in problem.message
    assert problem.allowed == "s3://bucket/key"


def test_non_s3_output_path_fails(recipes):
    problem_at(recipes["nova2_sft_lora"], "run.output_s3_path", {"run.output_s3_path": "/out"})


# --- method and platform support -------------------------------------------------------------


@pytest.mark.parametrize("key", ["nova1_cpt", "nova2_cpt"])
def test_cpt_on_training_jobs_fails(recipes, key):
    problem = problem_at(recipes[key], "run.model_type", platform=SMTJ)
    assert "has no CPT on smtj" in problem.message
    assert problem.allowed == "CPT runs on hyperpod"


def test_rft_on_nova1_lite_fails(recipes):
    problem = problem_at(
        recipes["nova2_rft"],
        "run.model_type",
        {"run.model_type": NOVA1_LITE, "run.model_name_or_path": "nova-lite/prod"},
    )
    assert "Nova Lite has no RFT" in problem.message


def test_explicit_method_overrides_detection(recipes):
    rendered = render(recipes["nova1_cpt"], method=Method.CPT)
    assert rendered.method is Method.CPT
    rendered = render(recipes["nova1_cpt"], method="cpt")
    assert rendered.kind == "cpt"


# --- evaluation ------------------------------------------------------------------------------

# The task, strategy and metric table of the evaluation recipes.
EVAL_PAIRS = {
    "mmlu": ("zs_cot", "accuracy"),
    "mmlu_pro": ("zs_cot", "accuracy"),
    "bbh": ("fs_cot", "accuracy"),
    "gpqa": ("zs_cot", "accuracy"),
    "math": ("zs_cot", "exact_match"),
    "strong_reject": ("zs", "deflection"),
    "ifeval": ("zs", "accuracy"),
    "mmmu": ("zs_cot", "accuracy"),
    "gen_qa": ("gen_qa", "all"),
    "llm_judge": ("judge", "all"),
    "rubric_llm_judge": ("judge", "all"),
    "rft_eval": ("rft_eval", "all"),
}
BENCHMARKS = {"mmlu", "mmlu_pro", "bbh", "gpqa", "math", "strong_reject", "ifeval", "mmmu"}


def eval_overrides(
    task: str, strategy: str | None = None, metric: str | None = None
) -> dict[str, Any]:
    good_strategy, good_metric = EVAL_PAIRS[task]
    overrides: dict[str, Any] = {
        "evaluation.task": task,
        "evaluation.strategy": strategy or good_strategy,
        "evaluation.metric": metric or good_metric,
    }
    if task in BENCHMARKS:
        overrides["run.data_s3_path"] = ""
    if task == "llm_judge":
        overrides.update(NOVA1_EVAL)
    if task == "rft_eval":
        overrides["rl_env"] = {"reward_lambda_arn": SAGEMAKER_ARN}
    return overrides


def test_eval_pair_table_covers_every_task():
    assert set(EVAL_PAIRS) == set(EVAL_TASKS)


@pytest.mark.parametrize("task", sorted(EVAL_PAIRS))
def test_eval_valid_pair_passes(recipes, task):
    rendered = render(recipes["eval_gen_qa"], eval_overrides(task))
    assert rendered.method is None
    assert rendered.data["evaluation"]["task"] == task


@pytest.mark.parametrize("task", sorted(EVAL_PAIRS))
def test_eval_wrong_strategy_fails(recipes, task):
    good_strategy, _ = EVAL_PAIRS[task]
    wrong = "fs_cot" if good_strategy != "fs_cot" else "zs_cot"
    problem = problem_at(
        recipes["eval_gen_qa"], "evaluation.strategy", eval_overrides(task, strategy=wrong)
    )
    assert f"not the strategy of {task}" in problem.message
    assert problem.allowed == good_strategy


@pytest.mark.parametrize("task", sorted(EVAL_PAIRS))
def test_eval_wrong_metric_fails(recipes, task):
    _, good_metric = EVAL_PAIRS[task]
    wrong = "accuracy" if good_metric != "accuracy" else "all"
    problem = problem_at(
        recipes["eval_gen_qa"], "evaluation.metric", eval_overrides(task, metric=wrong)
    )
    assert f"not the metric of {task}" in problem.message
    assert problem.allowed == good_metric


def test_eval_strategy_line(tmp_path):
    path, text = variant(tmp_path, "eval_gen_qa", "strategy: gen_qa", "strategy: zs_cot")
    problem = problem_at(path, "evaluation.strategy")
    assert problem.line == line_no(text, "strategy: zs_cot")


def test_eval_unknown_strategy_value_fails(recipes):
    problem = problem_at(
        recipes["eval_gen_qa"], "evaluation.strategy", {"evaluation.strategy": "few_shot"}
    )
    assert "gen_qa" in problem.allowed and "zs_cot" in problem.allowed


def test_eval_unknown_task_fails(recipes):
    problem = problem_at(recipes["eval_gen_qa"], "evaluation.task", {"evaluation.task": "mmlu2"})
    assert "mmlu_pro" in problem.allowed


@pytest.mark.parametrize(
    "task,subtask", [("mmlu", "anatomy"), ("bbh", "navigate"), ("math", "algebra"), ("mmmu", "art")]
)
def test_eval_known_subtask_passes(recipes, task, subtask):
    render(recipes["eval_gen_qa"], {**eval_overrides(task), "evaluation.subtask": subtask})


def test_eval_bad_subtask_fails(recipes):
    problem = problem_at(
        recipes["eval_gen_qa"],
        "evaluation.subtask",
        {**eval_overrides("mmlu"), "evaluation.subtask": "astrology"},
    )
    assert "'astrology' is not a subtask of mmlu" in problem.message
    assert "abstract_algebra" in problem.allowed


def test_eval_subtask_on_task_without_subtasks_fails(recipes):
    problem = problem_at(
        recipes["eval_gen_qa"],
        "evaluation.subtask",
        {**eval_overrides("gpqa"), "evaluation.subtask": "physics"},
    )
    assert "has no subtasks" in problem.message


@pytest.mark.parametrize("task", sorted(BENCHMARKS))
def test_benchmark_with_data_path_fails(recipes, task):
    overrides = {**eval_overrides(task), "run.data_s3_path": "s3://my-bucket/eval.jsonl"}
    problem = problem_at(recipes["eval_gen_qa"], "run.data_s3_path", overrides)
    assert "built-in benchmark" in problem.message
    assert problem.fix


def test_rubric_judge_on_nova1_fails(recipes):
    problem = problem_at(
        recipes["eval_gen_qa"],
        "evaluation.task",
        {**eval_overrides("rubric_llm_judge"), **NOVA1_EVAL},
    )
    assert "not offered for Nova Lite" in problem.message
    assert "llm_judge" in problem.allowed.split(", ")
    assert "rubric_llm_judge" not in problem.allowed.split(", ")


def test_llm_judge_on_nova2_fails(recipes):
    overrides = {
        **eval_overrides("llm_judge"),
        "run.model_type": NOVA2_LITE,
        "run.model_name_or_path": "nova-lite-2/prod",
    }
    problem = problem_at(recipes["eval_gen_qa"], "evaluation.task", overrides)
    assert "not offered for Nova 2 Lite" in problem.message
    assert "rubric_llm_judge" in problem.allowed.split(", ")


def test_mmmu_on_micro_fails(recipes):
    overrides = {
        **eval_overrides("mmmu"),
        "run.model_type": NOVA1_MICRO,
        "run.model_name_or_path": "nova-micro/prod",
    }
    problem = problem_at(recipes["eval_gen_qa"], "evaluation.task", overrides)
    assert "multimodal" in problem.message and "Nova Micro" in problem.message
    render(
        recipes["eval_gen_qa"],
        {**overrides, "run.model_type": NOVA1_LITE, "run.model_name_or_path": "nova-lite/prod"},
    )


def test_eval_reasoning_effort_is_nova2_only(recipes):
    problem_at(
        recipes["eval_gen_qa"],
        "inference.reasoning_effort",
        {**NOVA1_EVAL, "inference.reasoning_effort": "high"},
    )
    render(recipes["eval_gen_qa"], {"inference.reasoning_effort": "high"})


def test_eval_max_new_tokens_nova2_limit(recipes):
    problem = problem_at(
        recipes["eval_gen_qa"], "inference.max_new_tokens", {"inference.max_new_tokens": 40000}
    )
    assert problem.allowed == "0..32768"
    render(recipes["eval_gen_qa"], {**NOVA1_EVAL, "inference.max_new_tokens": 40000})


def test_rft_eval_reward_rules(recipes):
    problem = problem_at(
        recipes["eval_gen_qa"],
        "rl_env.reward_lambda_arn",
        {**eval_overrides("rft_eval"), "rl_env.reward_lambda_arn": PLAIN_ARN},
    )
    assert "SageMaker" in problem.message


def test_rl_env_only_for_rft_eval(recipes):
    problem_at(recipes["eval_gen_qa"], "rl_env", {"rl_env": {"reward_lambda_arn": SAGEMAKER_ARN}})


# --- completeness: templates may leave paths empty -------------------------------------------


@pytest.mark.parametrize(
    ("key", "field", "overrides"),
    [
        ("nova2_sft_lora", "run.data_s3_path", {"run.data_s3_path": ""}),
        ("nova1_sft_full", "run.data_s3_path", {"run.data_s3_path": ""}),
        ("nova2_cpt", "run.data_s3_path", {"run.data_s3_path": ""}),
        ("nova2_sft_lora", "run.output_s3_path", {"run.output_s3_path": ""}),
        ("nova1_cpt", "run.output_s3_path", {"run.output_s3_path": ""}),
        ("eval_gen_qa", "run.output_s3_path", {"run.output_s3_path": ""}),
        ("eval_gen_qa", "run.data_s3_path", {"run.data_s3_path": ""}),
        ("nova2_rft", "run.reward_lambda_arn", {"run.reward_lambda_arn": ""}),
        (
            "eval_gen_qa",
            "rl_env.reward_lambda_arn",
            {**eval_overrides("rft_eval"), "rl_env.reward_lambda_arn": ""},
        ),
        ("nova2_sft_lora", "run.name", {"run.name": ""}),
    ],
)
def test_empty_required_value_fails_unless_template(recipes, key, field, overrides):
    problem = problem_at(recipes[key], field, overrides, template=False)
    assert "empty" in problem.message or "needs a reward function" in problem.message
    render(recipes[key], overrides, template=True)


def test_training_jobs_need_no_data_or_output_path(recipes):
    render(
        recipes["nova2_sft_lora"], {"run.data_s3_path": "", "run.output_s3_path": ""}, platform=SMTJ
    )


def test_invalid_job_name_fails(recipes):
    problem = problem_at(recipes["nova2_sft_lora"], "run.name", {"run.name": "My_Run"})
    assert "not a valid job name" in problem.message
    assert "lowercase" in problem.allowed
