"""Rules that depend on the model, the platform or more than one field.

The pydantic models hold each field's own range; these checks need context: which model the
recipe names (replica counts, context length, which tasks it offers), where it will run
(HyperPod, training jobs, local), and whether the recipe is a template (data paths may still be
empty) or is about to be submitted (everything must be filled in).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from pydantic import BaseModel

from tuneloop.documents import Loc, range_text
from tuneloop.errors import CompatibilityError
from tuneloop.recipes import compat, s3_uri
from tuneloop.recipes.catalog import (
    EVAL_TASKS,
    MODELS,
    PLACEHOLDER_PREFIX,
    Method,
    Modality,
    ModelSpec,
    Platform,
    Technique,
    allowed_instance_types,
    allowed_replicas,
    model_spec,
    smtj_instance_families,
)
from tuneloop.recipes.cpt import Nova1CptRecipe, Nova2CptRecipe
from tuneloop.recipes.evaluation import EvalRecipe
from tuneloop.recipes.rft import RftPeft, RftRecipe
from tuneloop.recipes.sft import Nova1Peft, Nova1SftRecipe, Nova2Peft, Nova2SftRecipe

# Nova's recommended learning-rate band for SFT and CPT; outside it training still runs.
RECOMMENDED_LR = (1e-6, 1e-4)
NOVA2_SFT_MAX_LENGTHS = (8192, 16384, 32768, 65536)
NOVA_RFT_MAX_LENGTH = (4096, 32768)
INSTANCE_TYPE: Loc = ("instance_type",)
"""Where instance-type problems are reported: the type comes from outside the recipe (the
campaign's backend or --instance-type), so callers map this to where it was set."""
"""model_name_or_path of a stage whose base is an earlier stage of the same round (plans only)."""


@dataclass(frozen=True)
class RecipeContext:
    """Where and how a recipe will be used."""

    platform: Platform = Platform.HYPERPOD
    instance_type: str | None = None
    template: bool = False
    """A template may leave data paths, output path and reward function empty."""


@dataclass
class Finding:
    loc: Loc
    message: str
    allowed: str | None = None
    fix: str | None = None


@dataclass
class Findings:
    errors: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)

    def error(self, loc: Loc, message: str, **kwargs: Any) -> None:
        self.errors.append(Finding(loc, message, **kwargs))

    def warn(self, loc: Loc, message: str, **kwargs: Any) -> None:
        self.warnings.append(Finding(loc, message, **kwargs))

    def from_compat(self, loc: Loc, check: Callable[[], None]) -> None:
        try:
            check()
        except CompatibilityError as exc:
            for problem in exc.problems:
                self.error(loc, problem.message, fix=problem.fix)


def _fmt(values: Any) -> str:
    return ", ".join(str(v) for v in values)


def technique_of(recipe: BaseModel) -> Technique:
    """LoRA when the recipe's PEFT scheme is lora; CPT and evaluation count as full-rank."""
    peft: Nova1Peft | Nova2Peft | RftPeft | None = None
    if isinstance(recipe, Nova1SftRecipe):
        peft = recipe.training_config.model.peft
    elif isinstance(recipe, Nova2SftRecipe):
        peft = recipe.training_config.peft
    elif isinstance(recipe, RftRecipe):
        peft = recipe.training_config.trainer.peft
    return Technique.LORA if peft is not None and peft.peft_scheme == "lora" else Technique.FULL


def check_recipe(recipe: BaseModel, method: Method | None, ctx: RecipeContext) -> Findings:
    """All contextual rules for a validated recipe (method None = evaluation)."""
    found = Findings()
    run = recipe.run  # type: ignore[attr-defined]
    spec = model_spec(run.model_type)
    assert spec is not None  # RunConfig already rejected unknown model types
    technique = technique_of(recipe)

    _check_platform_support(found, spec, method, technique, ctx)
    _check_model_path(found, spec, run.model_name_or_path, ctx)
    _check_replicas(found, spec, method, technique, run.replicas, ctx)
    _check_run_paths(found, run, method, ctx)
    if isinstance(recipe, Nova1SftRecipe | Nova1CptRecipe):
        _check_nova1_training(found, recipe, method, technique, spec)
    elif isinstance(recipe, Nova2SftRecipe):
        _check_nova2_sft(found, recipe, technique, spec)
    elif isinstance(recipe, Nova2CptRecipe):
        _check_nova2_cpt(found, recipe, spec)
    elif isinstance(recipe, RftRecipe):
        _check_rft(found, recipe, technique, spec, ctx)
    elif isinstance(recipe, EvalRecipe):
        _check_eval(found, recipe, spec, ctx)
    return found


def _check_platform_support(
    found: Findings,
    spec: ModelSpec,
    method: Method | None,
    technique: Technique,
    ctx: RecipeContext,
) -> None:
    if method is not None and method not in spec.methods_on(ctx.platform):
        where = [p.value for p, methods in spec.supports.items() if method in methods]
        found.error(
            ("run", "model_type"),
            f"{spec.display_name} has no {method.value.upper()} on {ctx.platform.value}",
            allowed=f"{method.value.upper()} runs on {', '.join(where)}"
            if where
            else f"methods on {ctx.platform.value}: "
            f"{_fmt(m.value for m in sorted(spec.methods_on(ctx.platform)))}",
        )
    if method is None and spec.is_nova and ctx.platform is Platform.LOCAL:
        found.error(
            ("run", "model_type"),
            "Nova models cannot be evaluated on the local backend",
            fix="use a local.* model_type with the local backend",
        )
    if not spec.is_nova and ctx.platform is not Platform.LOCAL:
        found.error(
            ("run", "model_type"),
            f"{spec.model_type} runs only on the local backend, not {ctx.platform.value}",
        )
    if ctx.instance_type and spec.is_nova and ctx.platform is not Platform.LOCAL:
        allowed = allowed_instance_types(spec.model_type, method)
        if allowed and ctx.instance_type not in allowed:
            found.error(
                INSTANCE_TYPE,
                f"{ctx.instance_type} cannot run {spec.display_name} "
                f"{method.value.upper() if method else 'evaluation'} jobs",
                allowed=_fmt(allowed),
            )


def _check_model_path(found: Findings, spec: ModelSpec, value: str, ctx: RecipeContext) -> None:
    loc = ("run", "model_name_or_path")
    if value.startswith(PLACEHOLDER_PREFIX):
        return
    if spec.is_nova:
        if s3_uri.looks_like_s3(value):
            _check_s3_uri(found, loc, value)
            return
        bases = {m.base_model: m for m in _nova_models()}
        if value in bases and value != spec.base_model:
            found.error(
                loc,
                f"{value} is the base of {bases[value].model_type}, not of {spec.model_type}",
                fix=f"use {spec.base_model}, or set model_type to {bases[value].model_type}",
            )
        elif value != spec.base_model:
            found.error(
                loc,
                f"{value!r} is neither {spec.model_type}'s base model nor an s3:// checkpoint URI",
                allowed=f"{spec.base_model}, or the checkpoint_s3_bucket of an earlier "
                "job's manifest.json",
            )
        return
    if not value and not ctx.template:
        found.error(
            loc,
            "model_name_or_path is empty",
            fix="name a model directory on disk, or use tiny-chat",
        )


def _nova_models() -> list[ModelSpec]:
    return [m for m in MODELS.values() if m.is_nova]


def _check_replicas(
    found: Findings,
    spec: ModelSpec,
    method: Method | None,
    technique: Technique,
    replicas: int,
    ctx: RecipeContext,
) -> None:
    loc = ("run", "replicas")
    if ctx.platform is Platform.LOCAL or not spec.is_nova:
        return
    if method is None:
        if ctx.platform is Platform.HYPERPOD and replicas != 1:
            found.error(
                loc,
                f"{replicas} is not allowed: evaluation on HyperPod runs on exactly one instance",
                allowed="1",
            )
        return
    allowed = allowed_replicas(spec.model_type, method, technique, ctx.platform, ctx.instance_type)
    if allowed is None:
        if ctx.platform is Platform.SMTJ and ctx.instance_type:
            families = smtj_instance_families(spec.model_type, method, technique)
            found.error(
                loc,
                f"{spec.display_name} {method.value.upper()} "
                f"({technique.value}) has no instance counts for {ctx.instance_type} on "
                "training jobs",
                allowed=f"instance families {_fmt(families)}",
            )
        return
    if replicas not in allowed:
        where = f" on {ctx.instance_type}" if ctx.instance_type else ""
        found.error(
            loc,
            f"{replicas} replicas is not allowed for {spec.display_name} "
            f"{method.value.upper()} ({technique.value}) on {ctx.platform.value}{where}",
            allowed=_fmt(allowed),
        )


def _check_run_paths(found: Findings, run: Any, method: Method | None, ctx: RecipeContext) -> None:
    local = ctx.platform is Platform.LOCAL
    data_fields = ["data_s3_path", "validation_data_s3_path"]
    for name in data_fields:
        value = getattr(run, name, "")
        if value:
            _check_uri_scheme(found, ("run", name), value, local)
            found.from_compat(("run", name), partial(compat.check_data_location, value, path=name))
    for label, value in (getattr(run, "validation_data_s3_path_list", None) or {}).items():
        _check_uri_scheme(found, ("run", "validation_data_s3_path_list", label), value, local)
        found.from_compat(
            ("run", "validation_data_s3_path_list", label),
            partial(compat.check_data_location, value, path="validation"),
        )
    if run.output_s3_path:
        _check_uri_scheme(found, ("run", "output_s3_path"), run.output_s3_path, local)
    if ctx.template:
        return
    if method is not None and not run.data_s3_path and ctx.platform is not Platform.SMTJ:
        found.error(
            ("run", "data_s3_path"),
            "training data path is empty",
            fix="set it to your training JSONL (campaigns fill it from the stage's datasets)",
        )
    if ctx.platform is Platform.HYPERPOD and not run.output_s3_path:
        found.error(
            ("run", "output_s3_path"),
            "output path is empty; HyperPod jobs write manifest.json there",
            fix="set it to an s3:// folder you own",
        )
    if not run.name:
        found.error(("run", "name"), "job name is empty")


def _check_uri_scheme(found: Findings, loc: Loc, value: str, local: bool) -> None:
    """A local backend reads local files; the others read whole, valid S3 URIs."""
    if local:
        if s3_uri.looks_like_s3(value):
            found.error(
                loc,
                f"{s3_uri.shown(value)} is on S3; the local backend reads local files",
                allowed="a path or file:// URI",
            )
    elif not s3_uri.looks_like_s3(value):
        found.error(loc, f"{s3_uri.shown(value)} is not an s3:// URI", allowed="s3://bucket/key")
    else:
        _check_s3_uri(found, loc, value)


def _check_s3_uri(found: Findings, loc: Loc, value: str) -> None:
    """The whole URI, not only its prefix: no user info, port or query, a real bucket name.
    A value holding an Airflow template is left alone: it is checked once rendered, and when
    it fails to render the template's own error already names the line."""
    if "{{" in value or "{%" in value:
        return
    defect = s3_uri.s3_uri_defect(value)
    if defect is not None:
        found.error(
            loc,
            f"{s3_uri.shown(value)} is not a valid S3 URI: {defect.reason}",
            allowed=s3_uri.ALLOWED,
            fix=defect.fix,
        )


def _check_lr(
    found: Findings,
    loc: Loc,
    lr: float,
    min_lr_loc: Loc,
    min_lr: float,
    method: Method,
    technique: Technique,
    spec: ModelSpec,
) -> None:
    if method is Method.SFT and technique is Technique.FULL and not 1e-6 <= lr <= 1e-3:
        found.error(
            loc,
            f"{lr} is out of range for full-rank SFT",
            allowed=range_text((1e-6, False), (1e-3, False)),
        )
    elif spec.is_nova and not RECOMMENDED_LR[0] <= lr <= RECOMMENDED_LR[1]:
        found.warn(loc, f"{lr} is outside the recommended 1e-06..0.0001 for {method.value.upper()}")
    if min_lr >= lr:
        found.error(
            min_lr_loc, f"min_lr ({min_lr}) must be lower than lr ({lr})", allowed=f"< {lr}"
        )


def _check_epochs(found: Findings, loc: Loc, max_epochs: int, max_steps: int | None) -> None:
    if max_epochs == 0:
        found.error(
            (*loc, "max_epochs"), "0 epochs trains nothing", allowed="1..5, or -1 with max_steps"
        )
    elif max_epochs == -1 and max_steps is None:
        found.error(
            (*loc, "max_epochs"),
            "-1 means 'let max_steps decide', but max_steps is not set",
            fix="set max_steps or a positive max_epochs",
        )
    elif max_epochs > 0 and max_steps is not None:
        found.warn(
            (*loc, "max_steps"),
            f"both max_epochs ({max_epochs}) and max_steps "
            f"({max_steps}) are set; training stops at whichever comes first",
            fix="set one of them (max_epochs: -1 to train by steps)",
        )


def _check_lora_block(found: Findings, loc: Loc, peft: Any) -> None:
    if peft is not None and peft.peft_scheme is None and peft.lora_tuning is not None:
        found.warn(
            (*loc, "lora_tuning"),
            "lora_tuning is ignored because peft_scheme is null (full-rank)",
            fix="set peft_scheme: lora, or remove lora_tuning",
        )


def _check_context(found: Findings, loc: Loc, max_length: int, spec: ModelSpec) -> None:
    if max_length > spec.context_length:
        found.error(
            loc,
            f"{max_length} exceeds {spec.display_name}'s context of {spec.context_length} tokens",
            allowed=f"<= {spec.context_length}",
        )


def _check_nova1_training(
    found: Findings,
    recipe: Nova1SftRecipe | Nova1CptRecipe,
    method: Method | None,
    technique: Technique,
    spec: ModelSpec,
) -> None:
    tc = recipe.training_config
    optim = tc.model.optim
    base: Loc = ("training_config", "model", "optim")
    _check_lr(
        found,
        (*base, "lr"),
        optim.lr,
        (*base, "sched", "min_lr"),
        optim.sched.min_lr,
        method or Method.SFT,
        technique,
        spec,
    )
    _check_epochs(
        found, ("training_config", "trainer"), tc.trainer.max_epochs, tc.trainer.max_steps
    )
    _check_context(found, ("training_config", "max_length"), tc.max_length, spec)
    if isinstance(recipe, Nova1SftRecipe):
        _check_lora_block(
            found, ("training_config", "model", "peft"), recipe.training_config.model.peft
        )
        if tc.model.mm_cfg is not None and Modality.IMAGE not in spec.modalities:
            found.error(
                ("training_config", "model", "mm_cfg"),
                f"{spec.display_name} is text-only; mm_cfg does not apply",
                fix="remove the mm_cfg block",
            )


def _check_nova2_sft(
    found: Findings, recipe: Nova2SftRecipe, technique: Technique, spec: ModelSpec
) -> None:
    tc = recipe.training_config
    _check_lr(
        found,
        ("training_config", "optim_config", "lr"),
        tc.optim_config.lr,
        ("training_config", "lr_scheduler", "min_lr"),
        tc.lr_scheduler.min_lr,
        Method.SFT,
        technique,
        spec,
    )
    _check_context(found, ("training_config", "max_length"), tc.max_length, spec)
    if spec.is_nova and tc.max_length not in NOVA2_SFT_MAX_LENGTHS:
        found.error(
            ("training_config", "max_length"),
            f"{tc.max_length} is not allowed for {spec.display_name} SFT",
            allowed=_fmt(NOVA2_SFT_MAX_LENGTHS),
        )
    _check_lora_block(found, ("training_config", "peft"), tc.peft)
    if tc.save_steps is not None and tc.save_steps > tc.max_steps:
        found.warn(
            ("training_config", "save_steps"),
            f"save_steps ({tc.save_steps}) is beyond "
            f"max_steps ({tc.max_steps}); only the final checkpoint is saved",
        )


def _check_nova2_cpt(found: Findings, recipe: Nova2CptRecipe, spec: ModelSpec) -> None:
    tc = recipe.training_config
    _check_lr(
        found,
        ("training_config", "optim", "lr"),
        tc.optim.lr,
        ("training_config", "optim", "sched", "min_lr"),
        tc.optim.sched.min_lr,
        Method.CPT,
        Technique.FULL,
        spec,
    )
    _check_context(found, ("training_config", "max_length"), tc.max_length, spec)


def _check_rft(
    found: Findings,
    recipe: RftRecipe,
    technique: Technique,
    spec: ModelSpec,
    ctx: RecipeContext,
) -> None:
    run, tc = recipe.run, recipe.training_config
    if spec.is_nova and not NOVA_RFT_MAX_LENGTH[0] <= tc.max_length <= NOVA_RFT_MAX_LENGTH[1]:
        found.error(
            ("training_config", "max_length"),
            f"{tc.max_length} is out of range for {spec.display_name} RFT",
            allowed=range_text((NOVA_RFT_MAX_LENGTH[0], False), (NOVA_RFT_MAX_LENGTH[1], False)),
        )
    _check_context(found, ("training_config", "max_length"), tc.max_length, spec)
    generator = tc.rollout.generator
    if generator.max_new_tokens >= tc.max_length:
        found.warn(
            ("training_config", "rollout", "generator", "max_new_tokens"),
            f"max_new_tokens ({generator.max_new_tokens}) leaves no room for the prompt "
            f"within max_length ({tc.max_length})",
        )
    if ctx.platform is Platform.SMTJ and technique is Technique.LORA and tc.global_batch_size > 128:
        found.error(
            ("training_config", "global_batch_size"),
            f"{tc.global_batch_size} is too large for LoRA RFT on training jobs",
            allowed="16..128",
        )
    peft = tc.trainer.peft
    _check_lora_block(found, ("training_config", "trainer", "peft"), peft)
    if peft is not None and peft.lora_tuning is not None:
        tuning = peft.lora_tuning
        if tuning.loraplus_lr_ratio is not None and tuning.lora_plus_lr_ratio is not None:
            found.error(
                ("training_config", "trainer", "peft", "lora_tuning"),
                "set loraplus_lr_ratio or lora_plus_lr_ratio, not both",
            )
    if ctx.platform is Platform.HYPERPOD and spec.is_nova:
        for name in ("generation_replicas", "rollout_worker_replicas"):
            if getattr(run, name) is None:
                found.error(
                    ("run", name),
                    f"{name} is required for RFT on HyperPod",
                    fix="set it (the HyperPod RFT templates use 2 generation replicas and 1 "
                    "rollout worker), or check the recipe for training jobs (--platform smtj)",
                )
    elif ctx.platform is Platform.SMTJ:
        for name in ("generation_replicas", "rollout_worker_replicas"):
            if getattr(run, name) is not None:
                found.warn(
                    ("run", name),
                    f"{name} applies to HyperPod only and is ignored by training jobs",
                )
    endpoint = tc.rollout.rewards.api_endpoint
    if (
        endpoint.lambda_arn
        and run.reward_lambda_arn
        and endpoint.lambda_arn != run.reward_lambda_arn
    ):
        found.error(
            ("training_config", "rollout", "rewards", "api_endpoint", "lambda_arn"),
            f"{endpoint.lambda_arn} differs from run.reward_lambda_arn ({run.reward_lambda_arn})",
            fix="use ${oc.select:run.reward_lambda_arn} so both name one function",
        )
    arn = run.reward_lambda_arn or endpoint.lambda_arn
    if arn:
        found.from_compat(
            ("run", "reward_lambda_arn"),
            lambda: compat.check_reward_function(arn, ctx.platform, path="reward_lambda_arn"),
        )
    elif not ctx.template:
        found.error(
            ("run", "reward_lambda_arn"),
            "RFT needs a reward function",
            fix="set run.reward_lambda_arn to your reward Lambda's ARN",
        )


def _check_eval(found: Findings, recipe: EvalRecipe, spec: ModelSpec, ctx: RecipeContext) -> None:
    _check_eval_task(found, recipe, spec, ctx)
    _check_eval_inference(found, recipe, spec)
    _check_eval_scoring(found, recipe, spec, ctx)


def _check_eval_task(
    found: Findings, recipe: EvalRecipe, spec: ModelSpec, ctx: RecipeContext
) -> None:
    """The task offered for the model, with its own strategy, metric, subtasks and data."""
    ev, run = recipe.evaluation, recipe.run
    task = EVAL_TASKS[ev.task]
    loc: Loc = ("evaluation",)
    if spec.family not in task.families:
        offered = sorted(name for name, t in EVAL_TASKS.items() if spec.family in t.families)
        found.error(
            (*loc, "task"),
            f"{ev.task} is not offered for {spec.display_name}",
            allowed=_fmt(offered),
        )
    if ev.strategy != task.strategy:
        found.error(
            (*loc, "strategy"),
            f"{ev.strategy} is not the strategy of {ev.task}",
            allowed=task.strategy,
        )
    if ev.metric != task.metric:
        found.error(
            (*loc, "metric"), f"{ev.metric} is not the metric of {ev.task}", allowed=task.metric
        )
    if ev.subtask:
        if not task.subtasks:
            found.error((*loc, "subtask"), f"{ev.task} has no subtasks", allowed="''")
        elif ev.subtask not in task.subtasks:
            found.error(
                (*loc, "subtask"),
                f"{ev.subtask!r} is not a subtask of {ev.task}",
                allowed=_fmt(task.subtasks),
            )
    if task.multimodal and Modality.IMAGE not in spec.modalities:
        found.error((*loc, "task"), f"{ev.task} is multimodal and {spec.display_name} is text-only")
    if not task.bring_your_own_data and run.data_s3_path:
        found.error(
            ("run", "data_s3_path"),
            f"{ev.task} is a built-in benchmark; its data cannot be replaced",
            fix="leave data_s3_path empty, or use task gen_qa for your own data",
        )
    if task.bring_your_own_data and not run.data_s3_path and not ctx.template:
        found.error(
            ("run", "data_s3_path"), f"{ev.task} evaluates your data, and data_s3_path is empty"
        )


def _check_eval_inference(found: Findings, recipe: EvalRecipe, spec: ModelSpec) -> None:
    inference = recipe.inference
    if spec.family == "nova-1" and inference.reasoning_effort is not None:
        found.error(
            ("inference", "reasoning_effort"), "reasoning_effort is Nova 2 only", allowed="null"
        )
    if spec.family == "nova-2" and inference.max_new_tokens > 32768:
        found.error(
            ("inference", "max_new_tokens"),
            f"{inference.max_new_tokens} is out of range for {spec.display_name}",
            allowed="0..32768",
        )


def _check_eval_scoring(
    found: Findings, recipe: EvalRecipe, spec: ModelSpec, ctx: RecipeContext
) -> None:
    """Custom scoring (processor) for gen_qa, and the reward function of rft_eval."""
    ev = recipe.evaluation
    if recipe.processor is not None:
        if ev.task != "gen_qa":
            found.error(("processor",), f"custom scoring applies to gen_qa, not {ev.task}")
        if recipe.processor.preset_reward_function and spec.family != "nova-2":
            found.error(
                ("processor", "preset_reward_function"),
                "preset reward functions are Nova 2 only",
                allowed="''",
            )
        if recipe.processor.lambda_arn:
            found.from_compat(
                ("processor", "lambda_arn"),
                partial(
                    compat.check_reward_function,
                    recipe.processor.lambda_arn,
                    ctx.platform,
                    path="lambda_arn",
                ),
            )
    if ev.task == "rft_eval":
        arn = recipe.rl_env.reward_lambda_arn if recipe.rl_env else ""
        if arn:
            found.from_compat(
                ("rl_env", "reward_lambda_arn"),
                lambda: compat.check_reward_function(arn, ctx.platform, path="reward_lambda_arn"),
            )
        elif not ctx.template:
            found.error(("rl_env", "reward_lambda_arn"), "rft_eval needs a reward function")
    elif recipe.rl_env is not None:
        found.error(("rl_env",), f"rl_env applies to rft_eval, not {ev.task}")
