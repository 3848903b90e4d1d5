"""Local RFT: recipe mapping, the reward bridge, and short real GRPO runs on the tiny model."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from tuneloop.artifacts import series as S
from tuneloop.artifacts.manifest import read_checkpoint
from tuneloop.artifacts.series import LogMetrics, read_series
from tuneloop.errors import ConfigError
from tuneloop.local import outputs
from tuneloop.local.rewards import RewardFunction
from tuneloop.local.rft import (
    GrpoReward,
    ignored_fields,
    settings_from,
)
from tuneloop.local.runner import JobSpec
from tuneloop.local.train import BaseCheckpoint, job_output_dir, resolve_base
from tuneloop.recipes.catalog import Method, Platform, Technique
from tuneloop.recipes.render import render_recipe
from tuneloop.recipes.rules import RecipeContext

REPO = Path(__file__).resolve().parents[3]
LOCAL = RecipeContext(platform=Platform.LOCAL)
SMALL = {
    "training_config.global_batch_size": 16,
    "training_config.rollout.advantage_strategy.number_generation": 4,
    "training_config.trainer.max_steps": 5,
    "run.reward_lambda_arn": "tuneloop.local.demo_task:reward",
    "run.data_s3_path": "/data/rft.jsonl",
    "run.output_s3_path": "/out",
}


def rft_recipe(technique: str = "lora", **overrides):
    name = "rft-lora.yaml" if technique == "lora" else "rft-full.yaml"
    return render_recipe(REPO / "recipes" / "local" / name, {**SMALL, **overrides}, context=LOCAL)


# -- recipe mapping -----------------------------------------------------------------------------


def test_recipe_maps_to_grpo_settings() -> None:
    settings = settings_from(
        rft_recipe(
            **{
                "training_config.trainer.ent_coeff": 0.01,
                "training_config.trainer.kl_loss_coef": 0.05,
                "training_config.trainer.clip_ratio_high": 0.28,
                "training_config.rollout.generator.top_k": 20,
                "training_config.rollout.generator.temperature": 0.8,
                "training_config.trainer.peft.lora_tuning.alpha": 64,
            }
        )
    )
    assert (settings.max_steps, settings.samples_per_step, settings.generations) == (5, 16, 4)
    assert settings.prompts_per_step == 4
    assert (settings.max_new_tokens, settings.max_length) == (16, 128)
    assert (settings.temperature, settings.top_k) == (0.8, 20)
    assert settings.lr == pytest.approx(1e-4) and settings.betas == (0.9, 0.95)
    assert (settings.entropy_coef, settings.beta, settings.epsilon_high) == (0.01, 0.05, 0.28)
    assert settings.technique is Technique.LORA and settings.lora_alpha == 64
    assert settings.reward_function == "tuneloop.local.demo_task:reward"
    assert settings.seed == 42 and settings.shuffle is False

    full = settings_from(rft_recipe("full"))
    assert full.technique is Technique.FULL and full.lora_alpha is None and full.beta == 0.0


def test_inconsistent_settings_are_reported_together() -> None:
    recipe = rft_recipe(
        **{
            "training_config.global_batch_size": 18,
            "training_config.rollout.generator.temperature": 0,
        }
    )
    # The recipe rules already refuse an empty reward function; the job checks it again.
    recipe.model.run.reward_lambda_arn = ""
    recipe.model.training_config.rollout.rewards.api_endpoint.lambda_arn = ""
    with pytest.raises(ConfigError) as caught:
        settings_from(recipe)
    text = str(caught.value)
    assert "18 samples per step is not a whole number of groups of 4" in text
    assert "temperature" in text and "no reward function" in text


def test_fields_without_local_meaning_are_listed() -> None:
    assert ignored_fields(rft_recipe().data) == []
    recipe = rft_recipe(
        **{
            "training_config.trainer.save_steps": 2,
            "training_config.trainer.refit_freq": 4,
            "training_config.reasoning_effort": "low",
        }
    )
    assert ignored_fields(recipe.data) == [
        "training_config.reasoning_effort",
        "training_config.trainer.refit_freq",
        "training_config.trainer.save_steps (only the final checkpoint is saved)",
    ]


def test_output_folder(tmp_path: Path) -> None:
    recipe = rft_recipe(**{"run.output_s3_path": str(tmp_path / "from-recipe")})
    spec = JobSpec(name="j", output=f"file://{tmp_path}/from-spec")
    assert job_output_dir(spec, recipe) == tmp_path / "from-spec"
    assert (tmp_path / "from-spec").is_dir()
    assert job_output_dir(JobSpec(name="j", output=""), recipe) == tmp_path / "from-recipe"
    with pytest.raises(ConfigError, match="writes to local folders"):
        job_output_dir(JobSpec(name="j", output="s3://bucket/out"))


# -- the reward bridge --------------------------------------------------------------------------


def test_reward_bridge_sends_nova_samples_with_one_id_per_generation() -> None:
    seen: list[list[dict]] = []

    def scorer(samples):
        seen.append(samples)
        return [
            {
                "id": s["id"],
                "aggregate_reward_score": float(len(s["messages"][-1]["content"])),
                "metrics_list": [{"name": "len", "value": 1.0, "type": "Metric"}],
            }
            for s in samples
        ]

    logged: list[str] = []
    bridge = GrpoReward(RewardFunction(scorer, timeout_s=None), logged.append)
    prompt = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]
    scores = bridge(
        prompts=[prompt] * 4,
        completions=[[{"role": "assistant", "content": c}] for c in ("a", "bb", "ccc", "dddd")],
        completion_ids=[[1], [1, 2], [1, 2, 3], [1, 2, 3, 4]],
        id=["p1", "p1", "p2", "p2"],
        reference_answer=[json.dumps({"answer": 3})] * 2 + [json.dumps("7")] * 2,
        metadata=[json.dumps({"task": "x"})] * 4,
        trainer_state=types.SimpleNamespace(global_step=6),
    )
    assert scores == [1.0, 2.0, 3.0, 4.0]
    (batch,) = seen
    assert [s["id"] for s in batch] == ["p1-0", "p1-1", "p2-0", "p2-1"]
    assert batch[0]["messages"] == [*prompt, {"role": "assistant", "content": "a"}]
    assert batch[0]["reference_answer"] == {"answer": 3}
    assert batch[0]["metadata"] == {"task": "x", "reference_answer": {"answer": 3}}
    assert batch[2]["reference_answer"] == "7"
    (step,) = bridge.steps
    assert (step.step, step.scores, step.failed, step.lengths) == (7, scores, 0, [1, 2, 3, 4])
    assert step.metrics == {"len": 1.0} and logged == []


def test_a_failed_reward_batch_leaves_its_samples_unscored() -> None:
    def broken(samples):
        raise RuntimeError("backend down")

    logged: list[str] = []
    bridge = GrpoReward(RewardFunction(broken, timeout_s=None), logged.append)
    scores = bridge(prompts=["q", "q"], completions=["a", "b"], id=["p", "p"])
    assert scores == [None, None]
    assert bridge.steps[0].failed == 2 and bridge.steps[0].scores == []
    assert "RuntimeError: backend down" in logged[0]


# -- where a job starts -------------------------------------------------------------------------


def test_resolve_base_reads_the_lineage_of_a_job_output(tmp_path: Path) -> None:
    assert resolve_base("tiny-chat") == BaseCheckpoint("tiny-chat")
    out = tmp_path / "sft-job"
    checkpoint = out / outputs.CHECKPOINT_DIR
    checkpoint.mkdir(parents=True)
    outputs.write_manifest(out, checkpoint)
    outputs.write_checkpoint_record(
        out,
        checkpoint_dir=checkpoint,
        model_type="local.tiny-chat-v1",
        technique=Technique.LORA,
        lineage=[Method.SFT],
    )
    for given in (str(out), f"file://{out}", str(checkpoint)):
        base = resolve_base(given)
        assert Path(base.name_or_path) == checkpoint.resolve()
        assert base.record is not None and base.lineage == (Method.SFT,)
    plain = tmp_path / "plain-model"
    plain.mkdir()
    assert resolve_base(str(plain)) == BaseCheckpoint(str(plain))


# -- real GRPO runs -----------------------------------------------------------------------------


def varied_reward(samples):
    """An arbitrary score that varies between generations (the untrained model never answers
    the demo task, so the demo reward would be 0 everywhere and GRPO would learn nothing)."""
    out = []
    for sample in samples:
        text = sample["messages"][-1]["content"]
        out.append(
            {
                "id": sample["id"],
                "aggregate_reward_score": (sum(map(ord, text)) % 7) / 6,
                "metrics_list": [{"name": "chars", "value": float(len(text)), "type": "Metric"}],
            }
        )
    return out


@pytest.fixture
def reward_module(monkeypatch: pytest.MonkeyPatch):
    """A module holding reward functions that record their calls."""
    module = types.ModuleType("tuneloop_rft_test_rewards")
    module.calls = []  # type: ignore[attr-defined]

    def recording(samples):
        module.calls.append(samples)
        return varied_reward(samples)

    def flaky(samples):
        module.calls.append(samples)
        if len(module.calls) == 2:
            raise RuntimeError("reward backend unavailable")
        return varied_reward(samples)

    module.recording = recording  # type: ignore[attr-defined]
    module.flaky = flaky  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return module


@pytest.fixture
def home(tiny_chat_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    pytest.importorskip("trl")
    monkeypatch.setenv("TUNELOOP_HOME", str(tiny_chat_home))
    monkeypatch.setenv("TUNELOOP_DEVICE", "cpu")
    return tiny_chat_home


def small_rft_data(demo_data: dict[str, Path], folder: Path, count: int = 12) -> Path:
    lines = demo_data["rft"].read_text(encoding="utf-8").splitlines()[:count]
    path = folder / "rft.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def curves_of(log: str) -> S.Series:
    """The canonical curves a job log's metrics lines give, read line by line."""
    metrics = LogMetrics()
    for line in log.splitlines():
        metrics.feed(line)
    return metrics.series()


def check_curves(output: Path, log: str, calls: list[list[dict]]) -> None:
    """The job log, the TensorBoard events and reward_samples.jsonl of a five-step run agree
    with what the reward function returned."""
    steps = [1, 2, 3, 4, 5]
    rewards = [[r["aggregate_reward_score"] for r in varied_reward(batch)] for batch in calls]
    with (output / "reward_samples.jsonl").open() as handle:
        lines = [json.loads(line) for line in handle]
    assert [line["step"] for line in lines] == steps
    assert [line["rewards"] for line in lines] == rewards

    live = curves_of(log)
    finished = read_series(str(output), bands=(0.8, 0.2))
    for name in (S.REWARD_MEAN, S.REWARD_STD, S.REWARD_MAX, S.REWARD_MIN, S.ROLLOUT_COMPLETION):
        assert [step for step, _ in live[name]] == steps, name
        for (_, shown), (_, written) in zip(live[name], finished[name], strict=True):
            assert shown == pytest.approx(written, rel=1e-4, abs=1e-6), name
    for step, batch in zip(steps, rewards, strict=True):
        mean = sum(batch) / len(batch)
        assert dict(live[S.REWARD_MEAN])[step] == pytest.approx(mean, rel=1e-4)
        assert dict(live[S.REWARD_MAX])[step] == pytest.approx(max(batch), rel=1e-4)
        high = sum(r >= 0.8 for r in batch) / len(batch)
        low = sum(r < 0.2 for r in batch) / len(batch)
        assert dict(finished[S.REWARD_HIGH])[step] == pytest.approx(high)
        assert dict(finished[S.REWARD_LOW])[step] == pytest.approx(low)
        assert dict(finished[S.REWARD_MEDIUM])[step] == pytest.approx(1 - high - low)
    assert live[S.POLICY_UPDATES] == [(step, float(step)) for step in steps]
    assert live[S.REWARD_ERROR_RATE] == [(step, 0.0) for step in steps]
    assert all(seconds > 0 for _, seconds in live[S.REWARD_LATENCY_S])
    assert all(0.0 <= share <= 1.0 for _, share in live[S.ROLLOUT_COMPLETION])


def scalars(output: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(output / outputs.TENSORBOARD_DIR))
    events.Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.mark.slow
def test_grpo_lora_runs_continues_and_survives_reward_failures(
    home: Path, demo_data: dict[str, Path], reward_module, tmp_path: Path
) -> None:
    from tuneloop.local.model import load_model
    from tuneloop.local.rft import train_rft

    data = small_rft_data(demo_data, tmp_path)
    first = tmp_path / "rft-1"
    recipe = rft_recipe(
        **{
            "run.data_s3_path": str(data),
            "run.output_s3_path": str(first),
            "run.reward_lambda_arn": "tuneloop_rft_test_rewards:recording",
        }
    )
    progress: list[tuple[int, int]] = []
    result = train_rft(
        recipe, JobSpec(name="rft-1", output=str(first)), lambda *a: progress.append(a)
    )

    # The reward function: one call per step, 4 prompts x 4 generations in the Nova contract.
    calls = reward_module.calls
    assert len(calls) == 5 and all(len(batch) == 16 for batch in calls)
    sample = calls[0][0]
    assert set(sample) == {"id", "messages", "reference_answer", "metadata"}
    assert [m["role"] for m in sample["messages"]] == ["system", "user", "assistant"]
    assert isinstance(sample["messages"][-1]["content"], str)
    assert sample["metadata"]["reference_answer"] == sample["reference_answer"]
    assert "operands" in sample["metadata"]
    for batch in calls:
        ids = [s["id"] for s in batch]
        assert len(set(ids)) == 16
        prompts = {s["id"].rsplit("-", 1)[0] for s in batch}
        assert len(prompts) == 4
        assert sorted(s["id"].rsplit("-", 1)[1] for s in batch) == sorted("0123" * 4)

    assert result["steps"] == 5 and result["technique"] == "lora"
    assert (
        result["reward_function"]["calls"] == 5 and result["reward_function"]["failed_calls"] == 0
    )
    assert result["lineage"] == ["rft"]
    assert 0.0 <= result["reward_mean"] <= 1.0
    assert progress[0] == (0, 5) and progress[-1] == (5, 5)

    record = read_checkpoint(str(first))
    assert record is not None
    assert record.lineage == (Method.RFT,) and record.technique is Technique.LORA
    assert record.model_type == "local.tiny-chat-v1" and record.platform is Platform.LOCAL
    checkpoint = Path(record.uri)
    assert checkpoint == (first / "checkpoint").resolve()
    assert (checkpoint / "adapter_config.json").is_file() and not (checkpoint / "ref").exists()
    tags = scalars(first)
    for tag in ("critic/rewards/mean", "critic/rewards/max", "critic/rewards/min"):
        assert len(tags[tag]) == 5
    assert len(tags["response_length/mean"]) == 5 and "actor/pg_loss" in tags
    assert "reward_metrics/chars" in tags and "perf/time_per_step" in tags
    assert tags["critic/rewards/failed"] == [0.0] * 5
    assert tags["critic/rewards/error_rate"] == [0.0] * 5
    assert tags["actor/policy_updates"] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert len(tags["critic/rewards/std"]) == 5 and len(tags["response_length/clip_ratio"]) == 5
    assert len(tags["reward/latency_s"]) == 5 and all(s > 0 for s in tags["reward/latency_s"])
    log = (first / "training.log").read_text()
    assert "reward mean" in log
    check_curves(first, log, calls)

    # A second round from the first job's output: the same adapter keeps training; the reward
    # function fails once, which is counted and logged but does not stop the job.
    reward_module.calls.clear()
    second = tmp_path / "rft-2"
    recipe = rft_recipe(
        **{
            "run.data_s3_path": f"file://{data}",
            "run.output_s3_path": str(second),
            "run.model_name_or_path": str(first),
            "run.reward_lambda_arn": "tuneloop_rft_test_rewards:flaky",
        }
    )
    result = train_rft(recipe, JobSpec(name="rft-2", output=f"file://{second}"), lambda *a: None)
    stats = result["reward_function"]
    assert (stats["calls"], stats["failed_calls"], stats["exceptions"]) == (5, 1, 1)
    assert "reward backend unavailable" in stats["last_error"]
    assert result["steps"] == 5 and result["lineage"] == ["rft", "rft"]
    log = (second / "training.log").read_text()
    assert "RuntimeError: reward backend unavailable" in log and "1 failed" in log
    assert scalars(second)["critic/rewards/failed"] == [0.0, 16.0, 0.0, 0.0, 0.0]
    live = curves_of(log)
    assert live[S.REWARD_ERROR_RATE] == [(1, 0.0), (2, 1.0), (3, 0.0), (4, 0.0), (5, 0.0)]
    assert [step for step, _ in live[S.REWARD_MEAN]] == [1, 3, 4, 5]  # step 2 scored nothing
    record = read_checkpoint(str(second))
    assert record is not None and record.lineage == (Method.RFT, Method.RFT)

    # Both rounds trained one adapter over the same frozen base.
    one, two = load_model(first / "checkpoint", "cpu"), load_model(second / "checkpoint", "cpu")
    assert (one.base_path / "model.safetensors").read_bytes() == (
        two.base_path / "model.safetensors"
    ).read_bytes()
    weights_one = dict(one.model.named_parameters())
    changed = [
        name
        for name, value in two.model.named_parameters()
        if "lora_" in name and not bool((value == weights_one[name]).all())
    ]
    assert changed  # the second round moved the adapter it started from


@pytest.mark.slow
def test_full_rank_rft_cannot_continue_a_lora_checkpoint(
    home: Path, demo_data: dict[str, Path], tmp_path: Path
) -> None:
    from tuneloop.local.model import (
        LoraSettings,
        TechniqueMismatchError,
        load_model,
        save_checkpoint,
    )
    from tuneloop.local.rft import train_rft

    lora = load_model(
        "tiny-chat", "cpu", technique="lora", trainable=True, lora=LoraSettings(rank=4)
    )
    save_checkpoint(lora, tmp_path / "adapter", method="sft")
    recipe = rft_recipe(
        "full",
        **{
            "run.data_s3_path": str(small_rft_data(demo_data, tmp_path)),
            "run.model_name_or_path": str(tmp_path / "adapter"),
        },
    )
    with pytest.raises(TechniqueMismatchError):
        train_rft(recipe, JobSpec(name="r", output=str(tmp_path / "out")), lambda *a: None)
    assert not (tmp_path / "out" / "manifest.json").exists()


@pytest.mark.slow
def test_grpo_full_rank_moves_the_whole_model(
    home: Path, demo_data: dict[str, Path], reward_module, tmp_path: Path
) -> None:
    import torch

    from tuneloop.local.model import load_model
    from tuneloop.local.rft import train_rft

    out = tmp_path / "rft-full"
    validation = tmp_path / "validation.jsonl"
    lines = demo_data["rft"].read_text(encoding="utf-8").splitlines()
    validation.write_text("\n".join(lines[100:140]) + "\n", encoding="utf-8")
    recipe = rft_recipe(
        "full",
        **{
            "run.data_s3_path": str(small_rft_data(demo_data, tmp_path)),
            "run.validation_data_s3_path": str(validation),
            "run.output_s3_path": str(out),
            "run.reward_lambda_arn": "tuneloop_rft_test_rewards:recording",
            "training_config.trainer.kl_loss_coef": 0.01,
        },
    )
    result = train_rft(recipe, JobSpec(name="rft-full", output=str(out)), lambda *a: None)

    # Validation: the first 16 validation prompts, answered greedily, scored after every step
    # (5 steps: one validation per step) by the same reward function.
    checked = [b for b in reward_module.calls if b[0]["id"].startswith("validation-")]
    assert len(checked) == 5 and all(len(batch) == 16 for batch in checked)
    assert [s["messages"][1] for s in checked[0]] == [
        json.loads(line)["messages"][1] for line in lines[100:116]
    ]
    expected = [
        sum(r["aggregate_reward_score"] for r in varied_reward(batch)) / 16 for batch in checked
    ]
    assert scalars(out)["val-score/rewards/mean@1"] == pytest.approx(expected, rel=1e-6)
    live = curves_of((out / "training.log").read_text())
    assert [step for step, _ in live[S.VAL_REWARD_MEAN]] == [1, 2, 3, 4, 5]
    assert [v for _, v in live[S.VAL_REWARD_MEAN]] == pytest.approx(expected, rel=1e-4)
    assert result["technique"] == "full" and result["steps"] == 5
    record = read_checkpoint(str(out))
    assert record is not None and record.technique is Technique.FULL
    assert record.lineage == (Method.RFT,)
    trained, base = load_model(record.uri, "cpu"), load_model("tiny-chat", "cpu")
    assert trained.technique == "full"
    before = dict(base.model.named_parameters())
    assert any(
        not torch.equal(value, before[name]) for name, value in trained.model.named_parameters()
    )
    assert "actor/kl_loss" in scalars(out)
