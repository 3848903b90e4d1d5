"""Real, short SFT (full-rank and LoRA) and CPT runs of the tiny chat model on the demo data."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("trl")

from tuneloop.artifacts import series as S  # noqa: E402
from tuneloop.artifacts.manifest import read_checkpoint  # noqa: E402
from tuneloop.artifacts.series import LogMetrics, read_series  # noqa: E402
from tuneloop.errors import ConfigError  # noqa: E402
from tuneloop.local import model as M  # noqa: E402
from tuneloop.local.device import THREADS_ENV  # noqa: E402
from tuneloop.local.outputs import metrics_line  # noqa: E402
from tuneloop.local.recipe_map import map_recipe  # noqa: E402
from tuneloop.local.runner import JobSpec, JobState, LocalRunner  # noqa: E402
from tuneloop.local.sft import _scalars, apply_dropouts, train_cpt, train_sft  # noqa: E402
from tuneloop.local.train import load_recipe, resolve_base, run_recipe  # noqa: E402
from tuneloop.recipes.catalog import Method, Platform, Technique  # noqa: E402

RECIPES = Path(__file__).resolve().parents[3] / "recipes" / "local"
STEPS = 20


@pytest.fixture(scope="module", autouse=True)
def home(tiny_chat_home: Path) -> Iterator[Path]:
    """``tiny-chat`` loads from the test run's cache; torch computes on one thread.

    One thread costs the tiny model little, and keeps the runs fast where the cores are shared
    (two threads on two busy cores were measured 40 times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(M.HOME_ENV, str(tiny_chat_home))
        patch.setenv(THREADS_ENV, "1")
        yield tiny_chat_home
    torch.set_num_threads(threads)


def recipe_data(name: str, **fields: Any) -> dict[str, Any]:
    """A local recipe as a mapping, with dotted ``fields`` set (``run__name`` = ``run.name``)."""
    data = yaml.safe_load((RECIPES / name).read_text(encoding="utf-8"))
    for dotted, value in fields.items():
        target = data
        *parents, last = dotted.split("__")
        for part in parents:
            target = target.setdefault(part, {})
        target[last] = value
    return data


def sft_recipe(data: dict[str, Path], name: str, output: Path, base: str, **fields: Any) -> Any:
    fields = {
        "run__name": name,
        "run__model_name_or_path": base,
        "run__data_s3_path": str(data["train"]),
        "run__validation_data_s3_path": str(data["validation"]),
        "run__output_s3_path": str(output),
        "training_config__max_steps": STEPS,
        "training_config__val_check_interval": STEPS,
        "training_config__limit_val_batches": 1,
        "training_config__lr_scheduler__warmup_steps": 5,
        **fields,
    }
    return recipe_data(name if name.endswith(".yaml") else "sft-full.yaml", **fields)


def run(trainer: Any, recipe: dict[str, Any], output: Path, kind: str) -> dict[str, Any]:
    calls: list[tuple[int, int | None]] = []
    rendered = load_recipe(recipe, kind)
    spec = JobSpec(name=recipe["run"]["name"], output=str(output))
    result = trainer(rendered, spec, lambda step, total=None: calls.append((step, total)))
    steps = [step for step, _ in calls]
    assert calls[0] == (0, result["steps"]) and calls[-1] == (result["steps"], result["steps"])
    assert steps == sorted(steps)
    return result


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sequence_loss(model: Any, tokenizer: Any, path: Path, count: int = 16) -> float:
    """Mean loss of ``model`` on the first ``count`` conversations of an SFT file."""
    from tuneloop.local.convert import load_records

    losses = []
    model.eval()
    for record in load_records(str(path), "sft", limit=count):
        ids = tokenizer.apply_chat_template(
            record["prompt"] + record["completion"], tokenize=True, return_dict=False
        )
        ids = torch.tensor([ids])
        with torch.no_grad():
            losses.append(model(input_ids=ids, labels=ids).loss.item())
    return sum(losses) / len(losses)


def finished_raw_timing(output: Path) -> list[tuple[int, float]]:
    """The ``train_step_timing`` scalars of a job's TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(output / "tensorboard"))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars("train_step_timing")]


def scalar_tags(output: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(output / "tensorboard"))
    events.Reload()
    return set(events.Tags()["scalars"])


@pytest.fixture(scope="module")
def lora_round_one(demo_data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    output = tmp_path_factory.mktemp("lora-r1")
    recipe = sft_recipe(demo_data, "sft-lora.yaml", output, M.TINY_CHAT, run__name="lora-r1")
    return run(train_sft, recipe, output, "sft")


@pytest.fixture(scope="module")
def cpt_output(demo_data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("cpt")
    recipe = recipe_data(
        "cpt.yaml",
        run__name="cpt",
        run__data_s3_path=str(demo_data["cpt"]),
        run__output_s3_path=str(output),
        training_config__trainer__max_steps=STEPS,
        training_config__optim__sched__warmup_steps=5,
    )
    result = run(train_cpt, recipe, output, "cpt")
    (output / "result.json").write_text(json.dumps(result))
    return output


# -- SFT ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_full_rank_sft_learns_and_writes_a_nova_layout_output(
    demo_data: dict[str, Path], tmp_path: Path
) -> None:
    output = tmp_path / "sft-full"
    recipe = sft_recipe(
        demo_data,
        "sft-full",
        output,
        M.TINY_CHAT,
        run__validation_data_s3_path_list={"again": f"file://{demo_data['validation']}"},
    )
    result = run(train_sft, recipe, output, "sft")

    assert result["steps"] == STEPS and result["kind"] == "sft"
    assert result["final_loss"] < result["first_loss"] / 4, result
    assert result["train_records"] == STEPS * 32 and result["available_records"] == 6000
    checkpoint = read_checkpoint(str(output))
    assert checkpoint is not None and checkpoint.uri == result["checkpoint"]
    assert Path(checkpoint.uri) == (output / "checkpoint").resolve()
    assert (checkpoint.technique, checkpoint.platform) == (Technique.FULL, Platform.LOCAL)
    assert (checkpoint.lineage, checkpoint.model_type) == ((Method.SFT,), "local.tiny-chat-v1")
    assert result["lineage"] == ["sft"] and "run.replicas" in result["ignored"]

    reloaded = M.load_model(checkpoint.uri, "cpu")
    assert reloaded.technique == M.FULL and M.read_model_info(checkpoint.uri)["method"] == "sft"
    base = M.load_model(M.TINY_CHAT, "cpu")
    trained_loss = sequence_loss(reloaded.model, reloaded.tokenizer, demo_data["validation"])
    base_loss = sequence_loss(base.model, base.tokenizer, demo_data["validation"])
    assert trained_loss < base_loss / 2

    tags = scalar_tags(output)
    assert {"reduced_train_loss", "lr", "grad_norm", "global_step", "consumed_samples"} <= tags
    assert {"val_loss", "val_loss/again", "examples_per_s", "tokens_per_s"} <= tags
    log = (output / "training.log").read_text()
    assert "ignored (no local meaning): run.replicas" in log
    assert f"step {STEPS}/{STEPS} | global_step: {STEPS} | reduced_train_loss: " in log

    # The job log's metrics lines and the TensorBoard events give the same canonical curves.
    from_log = LogMetrics()
    for line in log.splitlines():
        from_log.feed(line)
    live, finished = from_log.series(), read_series(str(output))
    logged_steps = [1, 10, 20]  # the first step, every logging_steps (10), the last
    for name in (S.TRAIN_LOSS, S.EXAMPLES_PER_S, S.TOKENS_PER_S):
        assert [step for step, _ in live[name]] == logged_steps, name
        assert [step for step, _ in finished[name]] == logged_steps, name
        for (_, shown), (_, written) in zip(live[name], finished[name], strict=True):
            assert shown == pytest.approx(written, rel=1e-4)  # 6 digits in the log, float32 in TB
    assert [step for step, _ in live[S.VAL_LOSS]] == [STEPS] == [s for s, _ in finished[S.VAL_LOSS]]
    assert live[S.TRAIN_LOSS][-1][1] == pytest.approx(result["final_loss"], rel=1e-4)
    # Examples per second: 32 per step over the step's seconds; every example has many tokens.
    speeds = dict(finished[S.EXAMPLES_PER_S])
    timings = dict(finished_raw_timing(output))
    for step in logged_steps:
        assert speeds[step] == pytest.approx(32 / timings[step], rel=1e-3)
    assert all(tokens > speeds[step] for step, tokens in finished[S.TOKENS_PER_S])
    assert not [p.name for p in output.iterdir() if p.name.startswith(".")]  # scratch removed


@pytest.mark.slow
def test_lora_sft_trains_an_adapter_over_the_untouched_base(
    lora_round_one: dict, home: Path
) -> None:
    output = Path(lora_round_one["output"])
    assert lora_round_one["final_loss"] < lora_round_one["first_loss"] / 4, lora_round_one
    checkpoint = read_checkpoint(str(output))
    assert checkpoint is not None
    assert (checkpoint.technique, checkpoint.lineage) == (Technique.LORA, (Method.SFT,))
    folder = Path(checkpoint.uri)
    adapter = json.loads((folder / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"]) == (32, 64)  # rank = alpha / 2
    base_weights = M.ensure_tiny_chat(home) / "model.safetensors"
    assert digest(folder / "base" / "model.safetensors") == digest(base_weights)
    reloaded = M.load_model(folder, "cpu")
    assert reloaded.technique == M.LORA and reloaded.base_path == folder / "base"


@pytest.mark.slow
def test_a_second_lora_round_continues_the_adapter(
    lora_round_one: dict, demo_data: dict[str, Path], tmp_path: Path, home: Path
) -> None:
    first = Path(lora_round_one["checkpoint"])
    before = {p.name: digest(p) for p in first.rglob("*") if p.is_file()}
    output = tmp_path / "lora-r2"
    recipe = sft_recipe(
        demo_data,
        "sft-lora.yaml",
        output,
        str(first),  # the manifest's checkpoint_s3_bucket, as campaigns pass it
        run__name="lora-r2",
        training_config__max_steps=6,
        training_config__val_check_interval=6,
    )
    result = run(train_sft, recipe, output, "sft")

    # It starts where round one ended, not from a fresh adapter's loss.
    assert result["first_loss"] < lora_round_one["first_loss"] / 4, (result, lora_round_one)
    second = Path(result["checkpoint"])
    assert result["lineage"] == ["sft", "sft"] and result["technique"] == "lora"
    assert {p.name: digest(p) for p in first.rglob("*") if p.is_file()} == before
    assert digest(second / "adapter_model.safetensors") != before["adapter_model.safetensors"]
    base_weights = M.ensure_tiny_chat(home) / "model.safetensors"
    assert digest(second / "base" / "model.safetensors") == digest(base_weights)
    assert json.loads((second / "adapter_config.json").read_text())["r"] == 32


def test_full_rank_sft_from_a_lora_checkpoint_is_refused(
    lora_round_one: dict, demo_data: dict[str, Path], tmp_path: Path
) -> None:
    output = tmp_path / "mixed"
    recipe = sft_recipe(demo_data, "sft-full", output, lora_round_one["checkpoint"])
    with pytest.raises(M.TechniqueMismatchError, match="trained LoRA and this job trains full"):
        train_sft(load_recipe(recipe), JobSpec(name="mixed", output=str(output)))
    assert not (output / "manifest.json").exists()


# -- CPT ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cpt_lowers_the_loss(cpt_output: Path) -> None:
    result = json.loads((cpt_output / "result.json").read_text())
    assert result["kind"] == "cpt" and result["steps"] == STEPS
    assert result["final_loss"] < result["first_loss"] / 4, result
    checkpoint = read_checkpoint(str(cpt_output))
    assert checkpoint is not None
    assert (checkpoint.technique, checkpoint.lineage) == (Technique.FULL, (Method.CPT,))
    assert "reduced_train_loss" in scalar_tags(cpt_output)
    assert "ignored (no local meaning): run.replicas" in (cpt_output / "training.log").read_text()


# -- the runner's entry point --------------------------------------------------------------------


@pytest.mark.slow
def test_run_recipe_through_the_runner_continues_a_cpt_lineage(
    cpt_output: Path, demo_data: dict[str, Path], tmp_path: Path, home: Path
) -> None:
    output = tmp_path / "sft-after-cpt"
    recipe = sft_recipe(
        demo_data,
        "sft-full",
        output,
        str(cpt_output),  # a job's output folder names the checkpoint in its manifest
        run__name="sft-after-cpt",
        training_config__max_steps=6,
        training_config__val_check_interval=3,
    )
    runner = LocalRunner(tmp_path / "jobs", env={M.HOME_ENV: str(home), THREADS_ENV: "1"})
    runner.submit(JobSpec(name="sft-after-cpt", output=str(output), recipe=recipe, kind="sft"))
    status = runner.wait("sft-after-cpt", timeout=240, poll=0.2)
    log = (runner.directory("sft-after-cpt") / "job.log").read_text()
    assert status.state is JobState.SUCCEEDED, f"{status.message}\n{log[-3000:]}"

    result = status.result
    assert result["lineage"] == ["cpt", "sft"] and result["steps"] == 6
    assert result["checkpoint"] == str((output / "checkpoint").resolve())
    assert result["seconds"] > 0 and result["final_loss"] < result["first_loss"]
    assert status.progress is not None and (status.progress.step, status.progress.total) == (6, 6)
    checkpoint = read_checkpoint(str(output))
    assert checkpoint is not None and checkpoint.lineage == (Method.CPT, Method.SFT)
    assert "ignored on the local backend (no local meaning): run.replicas" in log
    assert "device: cpu" in log
    assert "val_loss" in scalar_tags(output)


def test_run_recipe_dispatches_on_the_method(
    monkeypatch: pytest.MonkeyPatch, demo_data: dict[str, Path], tmp_path: Path
) -> None:
    seen: dict[str, Any] = {}

    def fake(recipe: Any, spec: Any, progress: Any) -> dict[str, Any]:
        seen.update(kind=recipe.kind, name=spec.name)
        progress(1, 1)
        return {"ok": True}

    import tuneloop.local.train as train_module

    monkeypatch.setattr(
        train_module, "_resolve", lambda target: seen.setdefault("to", target) and fake
    )
    monkeypatch.setattr("tuneloop.local.device.configure_torch", lambda threads=None: 1)
    recipe = recipe_data(
        "rft-full.yaml",
        run__name="rft",
        run__data_s3_path=str(demo_data["rft"]),
        run__output_s3_path=str(tmp_path),
        run__reward_lambda_arn="tuneloop.local.demo_task:reward",
    )
    result = run_recipe(JobSpec(name="rft", output=str(tmp_path), recipe=recipe), lambda *a: None)
    assert result["ok"] and seen == {
        "to": "tuneloop.local.rft:train_rft",
        "kind": "rft",
        "name": "rft",
    }
    assert "seconds" in result


# -- pieces -------------------------------------------------------------------------------------


def test_a_nan_loss_is_logged_not_dropped() -> None:
    nan = float("nan")
    scalars = _scalars({"loss": nan, "eval_loss": float("inf"), "epoch": 0.5, "num_tokens": 9})
    assert set(scalars) == {"reduced_train_loss", "val_loss"}
    line = metrics_line(7, 20, scalars)
    assert line == "step 7/20 | global_step: 7 | reduced_train_loss: nan | val_loss: inf"
    found = LogMetrics().feed(f"[tuneloop] 2026-01-01 00:00:00Z {line}")
    (point,) = found[S.TRAIN_LOSS]
    assert point[0] == 7 and point[1] != point[1]  # NaN
    assert found[S.VAL_LOSS] == [(7, float("inf"))]


def test_base_resolution_reads_lineage_from_job_outputs(cpt_output: Path, tmp_path: Path) -> None:
    by_folder = resolve_base(str(cpt_output), model_type="local.tiny-chat-v1")
    by_checkpoint = resolve_base(f"file://{cpt_output / 'checkpoint'}")
    for base in (by_folder, by_checkpoint):
        assert base.lineage == (Method.CPT,)
        assert Path(base.name_or_path) == (cpt_output / "checkpoint").resolve()
    assert resolve_base(M.TINY_CHAT).lineage == ()
    with pytest.raises(ConfigError, match="does not match model_type"):
        resolve_base(str(cpt_output), model_type="local.hf-causal-lm")


def test_s3_output_is_refused(demo_data: dict[str, Path]) -> None:
    recipe = sft_recipe(demo_data, "sft-full", Path("/unused"), M.TINY_CHAT)
    with pytest.raises(ConfigError, match="on S3"):
        train_sft(load_recipe(recipe), JobSpec(name="s3", output="s3://bucket/out"))


def test_dropouts_reach_the_model_where_it_has_them() -> None:
    model, _ = M.build_tiny_model()
    previous, missing = apply_dropouts(
        model, {"attention_dropout": 0.25, "hidden_dropout": 0.1, "ffn_dropout": 0.0}
    )
    assert previous == {"attention_dropout": 0.0} and missing == ["hidden_dropout"]
    assert model.config.attention_dropout == 0.25
    assert all(layer.self_attn.attention_dropout == 0.25 for layer in model.model.layers)


@pytest.mark.parametrize(
    "overrides",
    [{}, {"training_config.optim.sched.constant_steps": 20}],
    ids=["cosine", "warmup-stable-decay"],
)
def test_schedules_warm_up_and_end_at_min_lr(overrides: dict[str, Any]) -> None:
    from transformers import get_scheduler

    from tuneloop.recipes.render import render_recipe
    from tuneloop.recipes.rules import RecipeContext

    recipe = render_recipe(
        RECIPES / "cpt.yaml", overrides, context=RecipeContext(Platform.LOCAL, template=True)
    )
    settings = map_recipe(recipe)
    name, kwargs = settings.scheduler(300)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=settings.learning_rate)
    schedule = get_scheduler(
        name,
        optimizer,
        num_warmup_steps=settings.warmup_steps,
        num_training_steps=300,
        scheduler_specific_kwargs=kwargs,
    )
    rates = []
    for _ in range(300):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates[0] < rates[5] < rates[10] == pytest.approx(settings.learning_rate)
    assert rates[-1] == pytest.approx(settings.min_lr, rel=0.05)
    assert min(rates[10:]) >= settings.min_lr * 0.999
    held = sum(1 for r in rates if r == pytest.approx(settings.learning_rate))
    assert held >= (21 if overrides else 1)
