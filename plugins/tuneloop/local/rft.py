"""Local RFT: GRPO with TRL on a local model, scored by a reward function in the Nova contract.

``train_rft(recipe, spec, progress)`` maps an RFT recipe onto TRL's ``GRPOTrainer``:

| recipe | GRPO |
|---|---|
| ``training_config.global_batch_size`` | samples per step (prompts x generations) |
| ``rollout.advantage_strategy.number_generation`` | ``num_generations`` (the group size) |
| ``rollout.generator.max_new_tokens`` / ``temperature`` / ``top_k`` | sampling settings |
| ``rollout.generator.set_random_seed`` | a fixed seed, else a random one |
| ``training_config.max_length`` | caps prompt plus completion tokens |
| ``trainer.max_steps`` | optimizer steps |
| ``trainer.optim_config`` | AdamW learning rate, weight decay and betas |
| ``trainer.ent_coeff`` | ``entropy_coef`` (entropy bonus) |
| ``trainer.kl_loss_coef`` | ``beta`` (KL penalty towards the starting policy) |
| ``trainer.clip_ratio_high`` | ``epsilon_high`` |
| ``trainer.peft`` | LoRA (alpha from ``lora_tuning``; LoRA+ through peft) or full-rank |
| ``training_config.data.shuffle`` | shuffle the prompts |

Fields with no local meaning (replicas, refit frequency, loss scale, reasoning effort, save
intervals, Lambda concurrency) are ignored; only the final checkpoint is saved.

The reward function (``run.reward_lambda_arn``, a ``module:function``) is called through
``rewards.RewardFunction``: one batch per step, each generation a sample with its own id
(``<prompt id>-<k>``), the prompt with the generated assistant turn appended, and the reference
answer at the top level and under ``metadata``. A failed batch (exception, timeout, invalid
output) is counted, logged and leaves its samples unscored (no advantage); failing more often
than rewards.py allows ends the job.

With validation prompts (``run.validation_data_s3_path``, RFT JSONL), the first
``VALIDATION_PROMPTS`` of them are answered greedily and scored by the same reward function (its
own failure count: a validation never ends the job) about ``VALIDATIONS`` times in the run and
after the last step: ``val-score/rewards/mean@1``.

The job output folder gets ``checkpoint/``, ``manifest.json``, ``checkpoint.json`` (lineage: the
starting checkpoint's, plus ``rft``), ``training.log``, ``reward_samples.jsonl`` (each step's
scores, ``{"step": n, "rewards": [...]}``, from which the campaign's reward bands are counted)
and TensorBoard scalars under Nova's RFT names: ``critic/rewards/{mean,std,max,min}``,
``response_length/{mean,max,min,clip_ratio}``,
``actor/{pg_loss,entropy,kl_loss,grad_norm,pg_clipfrac,lr}``, ``perf/time_per_step``,
``val-score/rewards/mean@1``, plus ``critic/rewards/failed`` (samples left unscored),
``critic/rewards/error_rate`` (failed / samples of the step), ``reward/latency_s`` (seconds per
reward call in the step), ``actor/policy_updates`` (optimizer steps so far) and
``reward_metrics/<name>`` (the mean of each entry of the reward function's ``metrics_list``).
Every step also gets one metrics line in the job log, in Nova's HyperPod form under the same
names (``step 3/40 | global_step: 3 | critic/rewards/mean: 0.41 | ...``), which
``tuneloop.artifacts.series.LogMetrics`` reads while the job runs.
"""

from __future__ import annotations

import json
import math
import random
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneloop.artifacts.series import REWARD_SAMPLES
from tuneloop.errors import ConfigError, Problem
from tuneloop.local.rewards import make_sample
from tuneloop.recipes.catalog import Method, Technique

SEED = 42
"""The seed when ``rollout.generator.set_random_seed`` is true."""
VALIDATION_PROMPTS = 16
"""Validation prompts scored per validation: enough for a trend, cheap next to a step."""
VALIDATIONS = 5
"""About how many validations a run makes (and one after the last step)."""
VALIDATION_REWARD = "val-score/rewards/mean@1"

# TRL log keys -> Nova's RFT monitoring names.
LOG_NAMES = {
    "loss": "actor/pg_loss",
    "entropy": "actor/entropy",
    "kl": "actor/kl_loss",
    "grad_norm": "actor/grad_norm",
    "clip_ratio/region_mean": "actor/pg_clipfrac",
    "learning_rate": "actor/lr",
    "completions/clipped_ratio": "response_length/clip_ratio",
}


# -- the reward bridge --------------------------------------------------------------------------


def _loads(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _completion_text(completion: Any) -> str:
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion:
        last = completion[-1]
        if isinstance(last, Mapping):
            content = last.get("content")
            return content if isinstance(content, str) else ""
    return ""


@dataclass
class StepRewards:
    """What one step's rollouts scored."""

    step: int
    scores: list[float]
    failed: int
    lengths: list[int]
    metrics: dict[str, float] = field(default_factory=dict)
    calls: int = 0
    """Reward function calls (batches) the step made."""
    seconds: float = 0.0
    """Seconds those calls took."""

    @property
    def error_rate(self) -> float:
        """Share of the step's samples the reward function failed to score."""
        samples = self.failed + len(self.scores)
        return self.failed / samples if samples else 0.0


class GrpoReward:
    """The reward function TRL calls: builds Nova samples, calls the reward function, keeps
    each step's numbers for TensorBoard and the result."""

    __name__ = "reward"

    def __init__(self, function: Any, log: Callable[[str], None]) -> None:
        self.function = function
        self.log = log
        self.steps: list[StepRewards] = []

    def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        completion_ids: Sequence[Sequence[int]] | None = None,
        **columns: Any,
    ) -> list[float | None]:
        ids = columns.get("id") or [f"sample-{i}" for i in range(len(prompts))]
        references = columns.get("reference_answer") or [None] * len(prompts)
        metadata = columns.get("metadata") or [None] * len(prompts)
        seen: dict[str, int] = {}
        samples = []
        for index, prompt in enumerate(prompts):
            base = str(ids[index])
            k = seen.get(base, 0)
            seen[base] = k + 1
            extra = _loads(metadata[index])
            messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
            sample = make_sample(
                f"{base}-{k}",
                messages,
                _completion_text(completions[index]),
                _loads(references[index]),
                extra if isinstance(extra, dict) else None,
            )
            samples.append(sample)
        stats = self.function.stats
        failed_before, calls_before, seconds_before = stats.failed_calls, stats.calls, stats.seconds
        results = self.function(samples)
        if self.function.stats.failed_calls > failed_before:
            self.log(
                f"reward function failed on a batch ({self.function.stats.failed_calls} failed "
                f"of {self.function.stats.calls} calls): {self.function.stats.last_error}"
            )
        scores = [r.score for r in results if r is not None]
        sums: dict[str, list[float]] = {}
        for result in results:
            for metric in result.metrics if result is not None else ():
                sums.setdefault(metric.name, []).append(metric.value)
        state = columns.get("trainer_state")
        step = (getattr(state, "global_step", 0) or 0) + 1
        self.steps.append(
            StepRewards(
                step=step,
                scores=scores,
                failed=sum(r is None for r in results),
                lengths=[len(c) for c in completion_ids or []],
                metrics={name: sum(v) / len(v) for name, v in sums.items()},
                calls=stats.calls - calls_before,
                seconds=stats.seconds - seconds_before,
            )
        )
        return [None if r is None else r.score for r in results]


# -- recipe mapping -----------------------------------------------------------------------------


@dataclass(frozen=True)
class GrpoSettings:
    """The recipe's RFT settings, checked and mapped to local terms."""

    max_steps: int
    samples_per_step: int
    generations: int
    max_new_tokens: int
    max_length: int
    temperature: float
    top_k: int
    lr: float
    weight_decay: float
    betas: tuple[float, float]
    entropy_coef: float
    beta: float
    epsilon_high: float | None
    shuffle: bool
    seed: int
    technique: Technique
    lora_alpha: int | None
    loraplus_ratio: float | None
    reward_function: str
    data: str
    model: str
    validation: str = ""
    """Validation prompts (RFT JSONL), or empty."""

    @property
    def prompts_per_step(self) -> int:
        return self.samples_per_step // self.generations


def settings_from(recipe: Any) -> GrpoSettings:
    """Read and check an RFT recipe's settings; ConfigError lists every problem."""
    model = recipe.model
    run, config = model.run, model.training_config
    rollout, trainer = config.rollout, config.trainer
    generator = rollout.generator
    generations = rollout.advantage_strategy.number_generation
    problems = []
    if config.global_batch_size % generations:
        problems.append(
            Problem(
                "training_config.global_batch_size",
                f"{config.global_batch_size} samples per step is not a whole number of groups "
                f"of {generations} generations",
                fix="make global_batch_size a multiple of "
                "rollout.advantage_strategy.number_generation",
            )
        )
    if generator.temperature <= 0:
        problems.append(
            Problem(
                "training_config.rollout.generator.temperature",
                "GRPO needs sampled generations; 0 makes every generation of a prompt the same",
                allowed="greater than 0",
            )
        )
    reward = run.reward_lambda_arn or rollout.rewards.api_endpoint.lambda_arn
    if not reward:
        problems.append(
            Problem("run.reward_lambda_arn", "no reward function", fix="name it as module:function")
        )
    if not run.data_s3_path:
        problems.append(Problem("run.data_s3_path", "no training prompts"))
    if problems:
        raise ConfigError(problems)
    peft = trainer.peft
    technique = recipe.technique
    lora = peft.lora_tuning if peft is not None else None
    ratio = None
    if lora is not None:
        ratio = lora.loraplus_lr_ratio or lora.lora_plus_lr_ratio or None
    data_settings = config.data
    return GrpoSettings(
        max_steps=trainer.max_steps,
        samples_per_step=config.global_batch_size,
        generations=generations,
        max_new_tokens=generator.max_new_tokens,
        max_length=config.max_length,
        temperature=float(generator.temperature),
        top_k=int(generator.top_k),
        lr=float(trainer.optim_config.lr),
        weight_decay=float(trainer.optim_config.weight_decay),
        betas=(float(trainer.optim_config.adam_beta1), float(trainer.optim_config.adam_beta2)),
        entropy_coef=float(trainer.ent_coeff or 0.0),
        beta=float(trainer.kl_loss_coef or 0.0),
        epsilon_high=trainer.clip_ratio_high,
        shuffle=bool(data_settings.shuffle) if data_settings is not None else False,
        seed=SEED if generator.set_random_seed else random.SystemRandom().randrange(2**31),
        technique=Technique(technique),
        lora_alpha=lora.alpha if (technique == Technique.LORA and lora is not None) else None,
        loraplus_ratio=ratio if technique == Technique.LORA else None,
        reward_function=reward,
        data=run.data_s3_path,
        model=run.model_name_or_path,
        validation=run.validation_data_s3_path or "",
    )


IGNORED_FIELDS = (
    "run.generation_replicas",
    "run.rollout_worker_replicas",
    "run.mlflow_tracking_uri",
    "training_config.reasoning_effort",
    "training_config.rollout.rollout_strategy",
    "training_config.rollout.rewards.api_endpoint.lambda_concurrency_limit",
    "training_config.trainer.save_top_k",
    "training_config.trainer.refit_freq",
    "training_config.trainer.loss_scale",
)


def ignored_fields(data: Mapping[str, Any]) -> list[str]:
    """The fields of an RFT recipe document, set to something, that the local run ignores."""
    found = []
    for dotted in IGNORED_FIELDS:
        value: Any = data
        for part in dotted.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        if value not in (None, "", {}, []):
            found.append(dotted)
    trainer = (data.get("training_config") or {}).get("trainer") or {}
    save_steps = trainer.get("save_steps")
    if save_steps not in (None, 0, trainer.get("max_steps")):
        found.append("training_config.trainer.save_steps (only the final checkpoint is saved)")
    return found


def _prompt_lengths(tokenizer: Any, records: Sequence[Mapping[str, Any]]) -> int:
    longest = 0
    for record in records:
        ids = tokenizer.apply_chat_template(
            record["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False
        )
        if isinstance(ids, Mapping):
            ids = ids["input_ids"]
        longest = max(longest, len(ids))
    return longest


# -- TensorBoard, metrics lines and progress ---------------------------------------------------


def _stats(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    mean = sum(values) / len(values)
    return {"mean": mean, "max": max(values), "min": min(values)}


def _std(values: Sequence[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def step_scalars(entry: StepRewards) -> dict[str, float]:
    """One step's reward scalars under Nova's names (and tuneloop's local extras)."""
    scalars = {f"critic/rewards/{name}": value for name, value in _stats(entry.scores).items()}
    if entry.scores:
        scalars["critic/rewards/std"] = _std(entry.scores)
    lengths = _stats([float(n) for n in entry.lengths])
    scalars.update({f"response_length/{name}": value for name, value in lengths.items()})
    scalars["critic/rewards/failed"] = float(entry.failed)
    scalars["critic/rewards/error_rate"] = entry.error_rate
    if entry.calls:
        scalars["reward/latency_s"] = entry.seconds / entry.calls
    scalars.update({f"reward_metrics/{name}": value for name, value in entry.metrics.items()})
    return scalars


@dataclass
class _Validation:
    """The validation prompts, answered greedily and scored by the reward function."""

    records: list[dict[str, Any]]
    reward_function: Any
    tokenizer: Any
    max_new_tokens: int
    interval: int
    total: int

    def due(self, step: int) -> bool:
        return step % self.interval == 0 or step == self.total

    def score(self, model: Any) -> tuple[float | None, int]:
        """The mean reward of the model's answers, or None when none was scored; and the
        number of prompts."""
        from tuneloop.local.evaluate import generate

        answers = generate(
            model,
            self.tokenizer,
            [r["prompt"] for r in self.records],
            max_new_tokens=self.max_new_tokens,
        )
        samples = [
            make_sample(
                f"validation-{index}",
                r["prompt"],
                answer,
                r.get("reference_answer"),
                r.get("metadata") if isinstance(r.get("metadata"), dict) else None,
            )
            for index, (r, answer) in enumerate(zip(self.records, answers, strict=True))
        ]
        scores = [r.score for r in self.reward_function(samples) if r is not None]
        return (sum(scores) / len(scores) if scores else None), len(samples)


@dataclass(frozen=True)
class _Reporting:
    """Where one run's metrics go: TensorBoard, the job log, the reward samples file."""

    writer: Any
    output: Path
    progress: Callable[[int, int], None]
    total: int
    log: Callable[[str], None]
    validation: _Validation | None = None


def _callback(reward: GrpoReward, reporting: _Reporting) -> Any:
    from transformers import TrainerCallback

    from tuneloop.local import outputs

    writer, log, total = reporting.writer, reporting.log, reporting.total

    class NovaMetrics(TrainerCallback):
        """Per step: Nova-named scalars, the step's rewards, validation when due; the metrics
        line once TRL's own log of the step (losses, clip ratio) is in."""

        def __init__(self) -> None:
            self.written = 0
            self.step_started = time.perf_counter()
            self.pending: tuple[int, dict[str, float]] | None = None

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.step_started = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            elapsed = time.perf_counter() - self.step_started
            self.flush()
            step = state.global_step
            line = {"perf/time_per_step": elapsed, "actor/policy_updates": float(step)}
            fresh = reward.steps[self.written :]
            self.written = len(reward.steps)
            for entry in fresh:
                scalars = step_scalars(entry)
                for name, value in scalars.items():
                    writer.add_scalar(name, value, entry.step)
                outputs.append_reward_samples(reporting.output, entry.step, entry.scores)
                if entry.step == step:
                    line.update(scalars)
            line.update(self.validate(step, kwargs.get("model")))
            for name in ("perf/time_per_step", "actor/policy_updates", VALIDATION_REWARD):
                if name in line:
                    writer.add_scalar(name, line[name], step)
            writer.flush()
            self.pending = (step, line)
            if fresh and (step == 1 or step % 10 == 0 or step == total):
                scores = [s for entry in fresh for s in entry.scores]
                mean = sum(scores) / len(scores) if scores else float("nan")
                log(f"step {step}/{total}: reward mean {mean:.3f}, {elapsed:.2f} s/step")
            reporting.progress(step, total)

        def validate(self, step: int, model: Any) -> dict[str, float]:
            validation = reporting.validation
            if validation is None or model is None or not validation.due(step):
                return {}
            mean, prompts = validation.score(model)
            if mean is None:
                log(
                    f"validation at step {step}: the reward function scored none of {prompts} "
                    f"answers ({validation.reward_function.stats.last_error})"
                )
                return {}
            return {VALIDATION_REWARD: mean}

        def on_log(
            self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any
        ) -> None:
            mapped = {}
            for key, value in (logs or {}).items():
                name = LOG_NAMES.get(key)
                if name and isinstance(value, int | float) and not isinstance(value, bool):
                    mapped[name] = float(value)
                    if math.isfinite(value):
                        writer.add_scalar(name, value, state.global_step)
            if self.pending is not None and self.pending[0] == state.global_step:
                self.pending[1].update(mapped)
                self.flush()

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.flush()

        def flush(self) -> None:
            """Write the pending step's metrics line to the job log."""
            if self.pending is not None:
                step, scalars = self.pending
                self.pending = None
                log(outputs.metrics_line(step, total, scalars))

    return NovaMetrics()


# -- the job ------------------------------------------------------------------------------------


def train_rft(recipe: Any, spec: Any, progress: Callable[[int, int], None]) -> dict[str, Any]:
    """Run an RFT recipe locally (GRPO); return a summary of the run."""
    from tuneloop.local import outputs
    from tuneloop.local.device import choose_device
    from tuneloop.local.model import LoraSettings, load_model, save_checkpoint
    from tuneloop.local.rewards import RewardFunction
    from tuneloop.local.train import job_output_dir, resolve_base, write_training_outputs

    settings = settings_from(recipe)
    output = job_output_dir(spec, recipe)
    log = outputs.JobLog(output / outputs.TRAINING_LOG)
    ignored = ignored_fields(recipe.data)
    if ignored:
        log("ignored on the local backend (no local meaning): " + ", ".join(ignored))
    reward_function = RewardFunction(settings.reward_function)
    base = resolve_base(settings.model, model_type=recipe.model_type)
    start = base.name_or_path
    records = _prompts(settings, log)
    choice = choose_device(configure=False)  # threads are the job process's (run_recipe)
    log(f"RFT (GRPO, {settings.technique.value}) of {start} on {choice.describe()}")
    lora = LoraSettings(alpha=settings.lora_alpha) if settings.lora_alpha else LoraSettings()
    loaded = load_model(
        start, choice, technique=settings.technique.value, trainable=True, lora=lora
    )
    longest, max_completion = _completion_room(settings, loaded.tokenizer, records)
    log(
        f"{len(records)} prompts (longest {longest} tokens); {settings.max_steps} steps of "
        f"{settings.prompts_per_step} prompts x {settings.generations} generations, "
        f"completions up to {max_completion} tokens, lr {settings.lr:g}; reward function "
        f"{reward_function.name}"
    )
    validation = _validation(settings, loaded.tokenizer, max_completion, log)
    bridge = GrpoReward(reward_function, log)
    trainer, seconds = _run_grpo(
        settings,
        loaded,
        records,
        bridge,
        _GrpoRun(output, choice, max_completion, progress, log, validation),
    )
    steps = trainer.state.global_step

    model = trainer.model
    peft_config = getattr(model, "peft_config", None)
    if isinstance(peft_config, dict) and "ref" in peft_config:
        model.delete_adapter("ref")  # TRL's frozen copy for the KL term
    checkpoint_dir = output / outputs.CHECKPOINT_DIR
    save_checkpoint(loaded, checkpoint_dir, model=model, method=Method.RFT.value)
    record = write_training_outputs(output, checkpoint_dir, recipe, base)
    result = _summary(settings, bridge, steps, seconds)
    result.update(
        checkpoint=record.uri,
        lineage=[m.value for m in record.lineage],
        device=choice.describe(),
    )
    log(reward_function.summary())
    log(
        f"done: {steps} steps in {seconds:.1f} s ({result['steps_per_second']} steps/s), "
        f"reward {_fmt(result['reward_first_step'])} -> {_fmt(result['reward_last_step'])}; "
        f"checkpoint {checkpoint_dir}"
    )
    return result


def _prompts(settings: GrpoSettings, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """The training prompts, at least one step's worth, without their tools (the local models
    do not call tools)."""
    from tuneloop.local import convert

    records = convert.load_records(settings.data, "rft", json_fields=True)
    if len(records) < settings.prompts_per_step:
        raise ConfigError(
            [
                Problem(
                    "run.data_s3_path",
                    f"{settings.data} holds {len(records)} prompts; one step takes "
                    f"{settings.prompts_per_step} (global_batch_size / number_generation)",
                    fix="add prompts or lower training_config.global_batch_size",
                )
            ]
        )
    dropped_tools = sum("tools" in r for r in records)
    records = [{k: v for k, v in r.items() if k != "tools"} for r in records]
    if dropped_tools:
        log(f"{dropped_tools} prompts list tools; the local models do not call tools")
    return records


def _completion_room(
    settings: GrpoSettings, tokenizer: Any, records: Sequence[Mapping[str, Any]]
) -> tuple[int, int]:
    """The longest prompt in tokens and the completion length that fits after it."""
    longest = _prompt_lengths(tokenizer, records)
    room = settings.max_length - longest
    if room < 1:
        raise ConfigError(
            [
                Problem(
                    "training_config.max_length",
                    f"{settings.max_length} tokens leaves no room for a response after the "
                    f"longest prompt ({longest} tokens)",
                )
            ]
        )
    return longest, min(settings.max_new_tokens, room)


@dataclass(frozen=True)
class _GrpoRun:
    """Where and how one GRPO run goes: its output folder, device, completion length, and the
    progress and log callbacks."""

    output: Path
    choice: Any
    max_completion: int
    progress: Callable[[int, int], None]
    log: Callable[[str], None]
    validation: _Validation | None = None


def _validation(
    settings: GrpoSettings, tokenizer: Any, max_completion: int, log: Callable[[str], None]
) -> _Validation | None:
    """The first validation prompts and how often they are scored, or None without a set."""
    if not settings.validation:
        return None
    from tuneloop.local import convert
    from tuneloop.local.rewards import RewardFunction

    where = "run.validation_data_s3_path"
    loaded = convert.load_records(settings.validation, "rft", limit=VALIDATION_PROMPTS)
    if not loaded:
        raise ConfigError(
            [Problem(where, f"{settings.validation} holds no prompts", fix="add RFT prompts")]
        )
    records = [{k: v for k, v in r.items() if k != "tools"} for r in loaded]
    room = min(max_completion, settings.max_length - _prompt_lengths(tokenizer, records))
    if room < 1:
        raise ConfigError(
            [
                Problem(
                    "training_config.max_length",
                    f"{settings.max_length} tokens leaves no room for a response after the "
                    f"longest validation prompt of {settings.validation}",
                    fix="raise max_length or shorten the validation prompts",
                )
            ]
        )
    interval = max(1, math.ceil(settings.max_steps / VALIDATIONS))
    # Its own failure count: a validation that fails is reported, it never ends the job.
    function = RewardFunction(settings.reward_function, max_failure_rate=1.0)
    every = "every step" if interval == 1 else f"every {interval} steps and after the last"
    log(
        f"validation: {len(records)} prompts of {settings.validation}, answered greedily and "
        f"scored {every}"
    )
    return _Validation(records, function, tokenizer, room, interval, settings.max_steps)


def _grpo_config(settings: GrpoSettings, run: _GrpoRun, scratch: str) -> Any:
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=scratch,
        max_steps=settings.max_steps,
        per_device_train_batch_size=settings.samples_per_step,
        gradient_accumulation_steps=1,
        num_generations=settings.generations,
        max_completion_length=run.max_completion,
        temperature=settings.temperature,
        top_k=settings.top_k,
        learning_rate=settings.lr,
        weight_decay=settings.weight_decay,
        adam_beta1=settings.betas[0],
        adam_beta2=settings.betas[1],
        beta=settings.beta,
        entropy_coef=settings.entropy_coef,
        epsilon_high=settings.epsilon_high,
        shuffle_dataset=settings.shuffle,
        seed=settings.seed,
        data_seed=settings.seed,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        activation_checkpointing=False,  # (TRL defaults to on; it only slows a small model)
        bf16=run.choice.bf16,
        fp16=False,
        use_cpu=run.choice.type == "cpu",
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )


def _optimizers(settings: GrpoSettings, model: Any) -> tuple[Any, Any]:
    """The LoRA+ optimizer when the recipe asks for it, else TRL's own (None)."""
    if not settings.loraplus_ratio:
        return (None, None)
    import torch
    from peft.optimizers import create_loraplus_optimizer

    optimizer = create_loraplus_optimizer(
        model,
        optimizer_cls=torch.optim.AdamW,
        lr=settings.lr,
        loraplus_lr_ratio=settings.loraplus_ratio,
        betas=settings.betas,
        weight_decay=settings.weight_decay,
    )
    return (optimizer, None)


def _run_grpo(
    settings: GrpoSettings,
    loaded: Any,
    records: list[dict[str, Any]],
    bridge: GrpoReward,
    run: _GrpoRun,
) -> tuple[Any, float]:
    """Train with GRPO; returns the trainer and the seconds it trained."""
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback
    from trl import GRPOTrainer

    from tuneloop.local import outputs

    scratch = tempfile.TemporaryDirectory(prefix="tuneloop-grpo-")
    config = _grpo_config(settings, run, scratch.name)
    optimizers = _optimizers(settings, loaded.model)
    (run.output / REWARD_SAMPLES).unlink(missing_ok=True)  # a retried job starts it again
    writer = outputs.tensorboard_writer(run.output)
    reporting = _Reporting(
        writer, run.output, run.progress, settings.max_steps, run.log, run.validation
    )
    run.progress(0, settings.max_steps)
    started = time.perf_counter()
    try:
        trainer = GRPOTrainer(
            model=loaded.model,
            reward_funcs=bridge,
            args=config,
            train_dataset=Dataset.from_list(records),
            processing_class=loaded.tokenizer,
            callbacks=[_callback(bridge, reporting)],
            optimizers=optimizers,
        )
        trainer.remove_callback(PrinterCallback)  # every step's raw log line; we log our own
        trainer.train()
    finally:
        writer.flush()
        writer.close()
        scratch.cleanup()
    return trainer, time.perf_counter() - started


def _summary(
    settings: GrpoSettings, bridge: GrpoReward, steps: int, seconds: float
) -> dict[str, Any]:
    """The run's numbers: steps, speed, and the rewards of the first and last steps."""
    reward_function = bridge.function
    first = _stats(bridge.steps[0].scores).get("mean") if bridge.steps else None
    last = _stats(bridge.steps[-1].scores).get("mean") if bridge.steps else None
    scored = [s for entry in bridge.steps for s in entry.scores]
    return {
        "method": Method.RFT.value,
        "technique": settings.technique.value,
        "steps": steps,
        "seconds": round(seconds, 3),
        "steps_per_second": round(steps / seconds, 3) if seconds > 0 else None,
        "reward_first_step": first,
        "reward_last_step": last,
        "reward_mean": sum(scored) / len(scored) if scored else None,
        "reward_function": {"name": reward_function.name, **reward_function.stats.as_dict()},
    }


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
