"""Local evaluation: the metrics on strings, and real gen_qa / rft_eval runs on the tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tuneloop.artifacts.evaluation import PERPLEXITY, read_eval_metrics
from tuneloop.errors import ConfigError
from tuneloop.local import evaluate as E
from tuneloop.local.runner import JobSpec
from tuneloop.recipes.catalog import EVAL_METRICS, Platform
from tuneloop.recipes.render import render_recipe
from tuneloop.recipes.rules import RecipeContext

REPO = Path(__file__).resolve().parents[3]
LOCAL = RecipeContext(platform=Platform.LOCAL)

# -- metrics on strings -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("ANSWER: 82", "ANSWER: 82", 1.0),
        ("  ANSWER:82.", "ANSWER: 82", 1.0),
        ("I think so.\nANSWER: 82\n", "82", 1.0),
        ("ANSWER: 1\nANSWER: 82", "ANSWER: 82", 1.0),  # the last answer counts
        ("ANSWER: 28", "ANSWER: 82", 0.0),
        ("82", "ANSWER: 82", 1.0),
        ("The Eiffel Tower!", "eiffel tower", 1.0),
        ("", "ANSWER: 82", 0.0),
    ],
)
def test_exact_match_compares_normalised_answers(prediction, reference, expected) -> None:
    assert E.exact_match(prediction, reference) == expected


def test_quasi_exact_match_compares_whole_texts() -> None:
    assert E.quasi_exact_match("The answer: 82.", "answer 82") == 1.0
    assert E.quasi_exact_match("I think ANSWER: 82", "ANSWER: 82") == 0.0


def test_token_f1() -> None:
    assert E.token_f1("ANSWER: 82", "ANSWER: 82") == 1.0
    assert E.token_f1("ANSWER: 28", "ANSWER: 82") == pytest.approx(0.5)
    # precision 1/3, recall 1/2
    assert E.token_f1("red green blue", "red yellow") == pytest.approx(0.4)
    assert E.token_f1("", "") == 1.0
    assert E.token_f1("x", "") == 0.0
    assert E.token_f1("a cat", "the cat") == 1.0  # articles are dropped
    assert E.answer_f1("so ANSWER: 82 ok", "ANSWER: 82") == pytest.approx(2 / 3)


def test_lcs_and_rouge_l() -> None:
    assert E.lcs_length(list("ABCBDAB"), list("BDCABA")) == 4
    assert E.lcs_length([], ["a"]) == 0
    # "the cat sat on the mat" vs "the cat on the mat": LCS 5, P 5/6, R 5/5
    assert E.rouge_l("the cat sat on the mat", "the cat on the mat") == pytest.approx(
        2 * (5 / 6) * 1 / (5 / 6 + 1)
    )
    assert E.rouge_l("ANSWER: 82", "answer 82") == 1.0
    assert E.rouge_l("82 answer", "answer 82") == pytest.approx(0.5)  # order matters
    assert E.rouge_l("", "answer") == 0.0


def test_rouge_n_and_bleu() -> None:
    assert E.rouge_n("a b c", "a b d", 1) == pytest.approx(2 / 3)
    assert E.rouge_n("a b c", "a b d", 2) == pytest.approx(0.5)
    assert E.corpus_bleu(["ANSWER: 82"], ["ANSWER: 82"]) == pytest.approx(1.0)
    assert E.corpus_bleu(["nothing"], ["ANSWER: 82"]) == 0.0
    assert 0.0 < E.corpus_bleu(["ANSWER: 28"], ["ANSWER: 82"]) < 1.0


def test_gen_qa_metrics_cover_the_catalog_names() -> None:
    metrics = E.gen_qa_metrics(["ANSWER: 82", "ANSWER: 10", ""], ["ANSWER: 82"] * 3)
    assert set(metrics) == set(EVAL_METRICS["gen_qa"])
    assert metrics["exact_match"] == metrics["em"] == pytest.approx(1 / 3)
    assert metrics["f1"] == metrics["f1_score"] == pytest.approx(0.5)
    assert metrics["rougeL"] == pytest.approx(0.5)
    assert E.gen_qa_metrics([], []) == {**dict.fromkeys(metrics, 0.0)}
    with pytest.raises(ValueError):
        E.gen_qa_metrics(["a"], [])


# -- recipes ------------------------------------------------------------------------------------


def eval_recipe(name: str, overrides: dict):
    return render_recipe(REPO / "recipes" / "local" / name, overrides, context=LOCAL)


def small_file(source: Path, target: Path, count: int) -> Path:
    lines = source.read_text(encoding="utf-8").splitlines()[:count]
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return target


def test_unsupported_task_and_missing_reward_are_config_errors(tmp_path: Path) -> None:
    recipe = eval_recipe(
        "eval-rft.yaml",
        {
            "run.data_s3_path": "/data.jsonl",
            "run.output_s3_path": str(tmp_path),
            "rl_env.reward_lambda_arn": "tuneloop.local.demo_task:reward",
        },
    )
    # The recipe rules already refuse these; the job checks them again.
    assert recipe.model.rl_env is not None
    recipe.model.rl_env.reward_lambda_arn = ""
    with pytest.raises(ConfigError, match="rft_eval needs a reward function"):
        E.evaluate(recipe, JobSpec(name="e", output=str(tmp_path)), lambda *_: None)
    recipe.model.evaluation.task = "mmlu"
    with pytest.raises(ConfigError, match="does not run 'mmlu'"):
        E.evaluate(recipe, JobSpec(name="e", output=str(tmp_path)), lambda *_: None)


# -- real runs on the tiny model ----------------------------------------------------------------


@pytest.fixture
def home(tiny_chat_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    pytest.importorskip("torch")
    monkeypatch.setenv("TUNELOOP_HOME", str(tiny_chat_home))
    monkeypatch.setenv("TUNELOOP_DEVICE", "cpu")
    return tiny_chat_home


def test_batched_generation_matches_one_at_a_time(home: Path) -> None:
    from tuneloop.local.model import load_model

    loaded = load_model("tiny-chat", "cpu")
    prompts = [
        [{"role": "user", "content": "What is max(12, 97)?"}],
        [
            {"role": "system", "content": "Reply with ANSWER: <n>."},
            {"role": "user", "content": "Hi"},
        ],
        [{"role": "user", "content": "max?"}],
    ]
    batched = E.generate(loaded.model, loaded.tokenizer, prompts, max_new_tokens=8)
    single = [E.generate(loaded.model, loaded.tokenizer, [p], max_new_tokens=8)[0] for p in prompts]
    assert batched == single
    assert loaded.tokenizer.padding_side == "left"


@pytest.mark.slow
def test_gen_qa_evaluation_writes_results_the_reader_parses(
    home: Path, demo_data: dict[str, Path], tmp_path: Path
) -> None:
    data = small_file(demo_data["eval"], tmp_path / "eval.jsonl", 12)
    out = tmp_path / "job-output"
    recipe = eval_recipe(
        "eval-gen-qa.yaml", {"run.data_s3_path": str(data), "run.output_s3_path": str(out)}
    )
    calls: list[tuple[int, int]] = []
    result = E.evaluate(recipe, JobSpec(name="eval", output=str(out)), lambda *a: calls.append(a))

    metrics = read_eval_metrics(str(out))
    assert metrics == result["metrics"]
    assert set(metrics) == set(EVAL_METRICS["gen_qa"])
    assert all(0.0 <= value <= 1.0 for value in metrics.values())
    written = json.loads(Path(result["results"]).read_text(encoding="utf-8"))
    assert written["results"]["custom|gen_qa_gen_qa|0"] == written["results"]["all"]
    rows = [
        json.loads(line)
        for line in (out / "eval-result" / "inference_output.jsonl").read_text().splitlines()
    ]
    assert len(rows) == 12 and result["samples"] == 12
    assert rows[0]["prompt"].startswith("What is max(") and rows[0]["gold"].startswith("ANSWER: ")
    assert all(isinstance(row["inference"], str) for row in rows)
    # The metrics are the rows' metrics.
    expected = E.gen_qa_metrics([r["inference"] for r in rows], [r["gold"] for r in rows])
    assert metrics == pytest.approx(expected)
    assert calls[0] == (0, 12) and calls[-1] == (12, 12)
    assert "samples in" in (out / "evaluation.log").read_text()


@pytest.mark.slow
def test_rft_eval_scores_with_the_reward_function(
    home: Path, demo_data: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys
    import types

    from tuneloop.local.demo_task import reward

    module = types.ModuleType("tuneloop_eval_test_rewards")
    seen: list[list[dict]] = []

    def recording(samples):
        seen.append(samples)
        return reward(samples)

    module.reward = recording  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    data = small_file(demo_data["rft"], tmp_path / "rft.jsonl", 8)
    out = tmp_path / "job-output"
    recipe = eval_recipe(
        "eval-rft.yaml",
        {
            "run.data_s3_path": f"file://{data}",
            "run.output_s3_path": str(out),
            "rl_env.reward_lambda_arn": f"{module.__name__}:reward",
        },
    )
    result = E.evaluate(recipe, JobSpec(name="eval", output=f"file://{out}"), lambda *a: None)
    metrics = read_eval_metrics(f"file://{out}")
    assert metrics["lambda_reward_score"] == result["metrics"]["lambda_reward_score"]
    assert {"correct", "format", "answer_found", "reference_found"} <= set(metrics)
    assert metrics["reference_found"] == 1.0
    # One call with every sample in the Nova contract.
    (batch,) = seen
    assert [s["id"] for s in batch] == [f"max-{i:05d}" for i in range(1, 9)]
    first = batch[0]
    assert first["messages"][-1]["role"] == "assistant"
    assert first["messages"][-2] == {"role": "user", "content": first["messages"][-2]["content"]}
    assert first["reference_answer"] == first["metadata"]["reference_answer"]
    rows = (out / "eval-result" / "inference_output.jsonl").read_text().splitlines()
    assert len(rows) == 8 and "reward" in json.loads(rows[0])
    rewards = [json.loads(row)["reward"] for row in rows]
    assert metrics["positive_reward_fraction"] == sum(r > 0 for r in rewards) / len(rewards)


# -- perplexity on domain texts -------------------------------------------------------------------


def test_text_windows_predict_every_token_once() -> None:
    assert E.text_windows([], 4) == []
    assert E.text_windows([7], 4) == []
    assert E.text_windows(list(range(10)), 4) == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    assert E.text_windows(list(range(5)), 4) == [[0, 1, 2, 3], [3, 4]]
    for length in range(2, 30):
        for context in (2, 3, 7, 64):
            windows = E.text_windows(list(range(length)), context)
            assert all(len(w) <= context for w in windows)
            assert [t for w in windows for t in w[1:]] == list(range(1, length))


def _causal_lm_loss(loaded, text: str) -> tuple[float, int]:
    """(mean loss, tokens scored) of one text, from the model's own loss (labels = inputs)."""
    import torch

    ids = [*loaded.tokenizer(text)["input_ids"], loaded.tokenizer.eos_token_id]
    with torch.no_grad():
        tensor = torch.tensor([ids])
        loss = loaded.model(input_ids=tensor, labels=tensor).loss
    return float(loss), len(ids) - 1


DOMAIN_TEXTS = [
    "The largest of two numbers is the one that is not smaller.",
    "max(12, 97) is 97.",
    "Zürich – 名前 🙂, a text in more than one script.",
]


def test_perplexity_is_exp_of_the_causal_lm_loss(home: Path) -> None:
    from tuneloop.local.model import load_model

    loaded = load_model("tiny-chat", "cpu")
    loss, tokens = _causal_lm_loss(loaded, DOMAIN_TEXTS[0])
    one = E.perplexity(loaded.model, loaded.tokenizer, DOMAIN_TEXTS[:1])
    assert (one.tokens, one.texts, one.capped) == (tokens, 1, False)
    assert one.value == pytest.approx(math.exp(loss), rel=1e-4)
    assert one.value > 1.0

    # Several texts, batched with padding: exp of the token-weighted mean of their losses.
    losses = [_causal_lm_loss(loaded, text) for text in DOMAIN_TEXTS]
    total = sum(n for _, n in losses)
    expected = math.exp(sum(loss * n for loss, n in losses) / total)
    batched = E.perplexity(loaded.model, loaded.tokenizer, DOMAIN_TEXTS, batch_size=2)
    assert (batched.tokens, batched.texts) == (total, 3)
    assert batched.value == pytest.approx(expected, rel=1e-4)
    assert loaded.model.training is False

    # A context shorter than a text: windows, every token still scored once.
    windowed = E.perplexity(loaded.model, loaded.tokenizer, DOMAIN_TEXTS[:1], context=16)
    assert windowed.tokens == tokens
    assert math.isfinite(windowed.value) and windowed.value != one.value


def test_perplexity_reads_texts_only_up_to_the_token_cap(home: Path) -> None:
    from tuneloop.local.model import load_model

    loaded = load_model("tiny-chat", "cpu")
    pulled: list[int] = []

    def endless():
        while True:
            pulled.append(1)
            yield "x" * 29  # 29 bytes + the end token: 29 tokens scored per text

    capped = E.perplexity(loaded.model, loaded.tokenizer, endless(), max_tokens=50)
    assert (capped.tokens, capped.texts, capped.capped) == (50, 2, True)
    assert len(pulled) == 3  # the third text is where reading stops
    exact = E.perplexity(loaded.model, loaded.tokenizer, ["x" * 29, "y" * 29], max_tokens=58)
    assert (exact.tokens, exact.capped) == (58, False)
    # A huge text costs only what the cap needs.
    huge = E.perplexity(loaded.model, loaded.tokenizer, ["z" * 50_000_000], max_tokens=40)
    assert (huge.tokens, huge.texts, huge.capped) == (40, 1, True)
    with pytest.raises(ValueError, match="no text with at least two tokens"):
        E.perplexity(loaded.model, loaded.tokenizer, ["", ""])


def write_domain(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path


def test_evaluation_reports_perplexity_in_the_results_file(
    home: Path, demo_data: dict[str, Path], tmp_path: Path
) -> None:
    from tuneloop.local.model import load_model

    data = small_file(demo_data["eval"], tmp_path / "eval.jsonl", 4)
    domain = write_domain(tmp_path / "domain.jsonl", DOMAIN_TEXTS)
    out = tmp_path / "job-output"
    recipe = eval_recipe(
        "eval-gen-qa.yaml",
        {
            "run.data_s3_path": str(data),
            "run.output_s3_path": str(out),
            "run.perplexity_data_path": str(domain),
        },
    )
    result = E.evaluate(recipe, JobSpec(name="eval", output=str(out)), lambda *a: None)

    metrics = read_eval_metrics(str(out))
    assert set(metrics) == {*EVAL_METRICS["gen_qa"], PERPLEXITY}
    loaded = load_model("tiny-chat", "cpu")
    direct = E.perplexity(loaded.model, loaded.tokenizer, DOMAIN_TEXTS)
    assert metrics[PERPLEXITY] == pytest.approx(direct.value, rel=1e-5)
    assert result["metrics"][PERPLEXITY] == metrics[PERPLEXITY]
    assert result["perplexity"] == {
        "data": str(domain),
        "tokens": direct.tokens,
        "texts": 3,
        "capped": False,
    }
    log = (out / "evaluation.log").read_text()
    assert f"perplexity {metrics[PERPLEXITY]:.4f} on {direct.tokens} tokens of 3 texts" in log


def test_perplexity_data_problems_are_config_errors(
    home: Path, demo_data: dict[str, Path], tmp_path: Path
) -> None:
    data = small_file(demo_data["eval"], tmp_path / "eval.jsonl", 2)
    out = tmp_path / "job-output"
    recipe = eval_recipe(
        "eval-gen-qa.yaml", {"run.data_s3_path": str(data), "run.output_s3_path": str(out)}
    )
    spec = JobSpec(name="eval", output=str(out))
    # The recipe rules refuse an S3 URI already; the job checks again.
    recipe.model.run.perplexity_data_path = "s3://bucket/domain.jsonl"
    with pytest.raises(ConfigError, match="is on S3; the local backend reads local files"):
        E.evaluate(recipe, spec, lambda *a: None)
    recipe.model.run.perplexity_data_path = str(tmp_path / "missing.jsonl")
    with pytest.raises(ConfigError) as info:
        E.evaluate(recipe, spec, lambda *a: None)
    assert info.value.problems[0].format() == (
        f"<input>: run.perplexity_data_path: {tmp_path}/missing.jsonl is not a file; fix: name "
        'the JSONL file of domain texts ({"text": ...} per line)'
    )
    recipe.model.run.perplexity_data_path = str(write_domain(tmp_path / "blank.jsonl", ["", ""]))
    with pytest.raises(ConfigError, match="no text with at least two tokens to score"):
        E.evaluate(recipe, spec, lambda *a: None)


def test_perplexity_data_path_is_a_local_file_for_local_models_only(tmp_path: Path) -> None:
    from tuneloop.errors import RecipeError

    nova = REPO / "recipes" / "nova" / "nova-2-lite" / "eval-gen-qa.yaml"
    with pytest.raises(RecipeError) as info:
        render_recipe(
            nova,
            {
                "run.data_s3_path": "s3://acme/eval.jsonl",
                "run.output_s3_path": "s3://acme/out/",
                "run.perplexity_data_path": "/data/domain.jsonl",
            },
            context=RecipeContext(platform=Platform.HYPERPOD),
        )
    [problem] = info.value.problems
    assert problem.path == "run.perplexity_data_path"
    assert "perplexity is measured by the local backend only" in problem.message
    with pytest.raises(RecipeError) as info:
        eval_recipe(
            "eval-gen-qa.yaml",
            {"run.data_s3_path": "/eval.jsonl", "run.perplexity_data_path": "s3://acme/d.jsonl"},
        )
    [problem] = info.value.problems
    assert problem.path == "run.perplexity_data_path"
    assert "is on S3; the local backend reads local files" in problem.message
    local = eval_recipe(
        "eval-gen-qa.yaml",
        {"run.data_s3_path": "/eval.jsonl", "run.perplexity_data_path": "/domain.jsonl"},
    )
    assert local.model.run.perplexity_data_path == "/domain.jsonl"
