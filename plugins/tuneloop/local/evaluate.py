"""Local evaluation: generate an answer for every eval prompt and score it, writing results in the
layout the Nova evaluation container uses.

``evaluate(recipe, spec, progress)`` runs the two bring-your-own-data tasks of an evaluation
recipe on a local model (``run.model_name_or_path``: ``tiny-chat``, a checkpoint directory or
the output folder of a local training job):

- ``gen_qa``: ``run.data_s3_path`` holds ``{"query", "response"}`` records (``system`` too).
  Each generated answer is compared with ``response``:

  - ``exact_match`` (also ``em``): the answers match after normalisation. The answer is the text
    after the last ``ANSWER:`` on its line when there is one, else the whole text; normalising
    lowercases, drops punctuation and the articles a/an/the, and collapses whitespace;
  - ``quasi_exact_match`` (also ``qem``): the whole texts match after normalisation;
  - ``f1`` (also ``f1_score``): token F1 of the normalised whole texts; ``f1_score_quasi``:
    token F1 of the normalised answers;
  - ``rouge1``, ``rouge2``, ``rougeL``: ROUGE F-measures (ROUGE-L from the longest common
    subsequence) over lowercased alphanumeric tokens;
  - ``bleu``: corpus BLEU-4 over the same tokens, with add-one smoothing of the 2- to 4-gram
    precisions (answers here are a few tokens long) and the brevity penalty, from 0 to 1.

  Every metric is the mean over the samples (BLEU is corpus-level).
- ``rft_eval``: ``run.data_s3_path`` holds RFT prompts; each generated answer is scored by the
  reward function ``rl_env.reward_lambda_arn`` (``module:function``) in the Nova reward
  contract, through ``rewards.RewardFunction``. ``lambda_reward_score`` is the mean aggregate
  reward of the scored samples, and each ``metrics_list`` entry is averaged under its own name.

Generation is batched with left padding, greedy when ``inference.temperature`` is 0 and sampled
(with ``top_k`` and ``top_p``) otherwise, up to ``inference.max_new_tokens`` tokens.

With ``run.perplexity_data_path`` (JSONL of ``{"text"}``, the CPT format), either task also
reports ``perplexity``: exp of the mean negative log-likelihood per token of the model over those
texts, tokenized as CPT training tokenizes them (the tokenizer's own special tokens, then the end
token), so it is exp of the loss a CPT job would report on the same data. A text longer than the
model's context is scored in windows that overlap by one token, so every token but a text's
first is predicted once, with up to a context of earlier tokens. At most
``PERPLEXITY_MAX_TOKENS`` tokens are scored: the texts are read in file order until then, and
the job log says when the cap cut the set short.

The output folder gets ``eval-result/results_<timestamp>.json`` (metrics under
``results.all``, which ``tuneloop.artifacts.evaluation.read_eval_metrics`` reads) and
``eval-result/inference_output.jsonl`` with one ``{"prompt", "inference", "gold", "metadata"}``
per sample (``reward`` too for rft_eval).

The metric functions need neither torch nor any download.
"""

from __future__ import annotations

import json
import math
import re
import string
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneloop import storage
from tuneloop.artifacts.evaluation import PERPLEXITY
from tuneloop.errors import ConfigError, Problem

GEN_QA, RFT_EVAL = "gen_qa", "rft_eval"
TASKS = (GEN_QA, RFT_EVAL)
BATCH_SIZE = 64
INFERENCE_OUTPUT = "inference_output.jsonl"
EVAL_LOG = "evaluation.log"
REWARD_METRIC = "lambda_reward_score"
POSITIVE_REWARDS_METRIC = "positive_reward_fraction"
PERPLEXITY_MAX_TOKENS = 200_000
"""Most tokens scored for perplexity; the rest of a larger domain set is not read."""
PERPLEXITY_BATCH_SIZE = 8
PERPLEXITY_CONTEXT = 2048
"""Window length for a model whose config names no context length."""
_CHARS_PER_TOKEN_BOUND = 32
"""A text is cut to this many characters per token still wanted before it is tokenized, so a
huge text costs no more than the cap needs (no tokenizer makes tokens that long)."""

# -- metrics ------------------------------------------------------------------------------------

_ANSWER = re.compile(r"ANSWER:[ \t]*([^\n]*)")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)
_TOKEN = re.compile(r"[a-z0-9]+")


def normalize_text(text: str) -> str:
    """Lowercase, drop punctuation and the articles a/an/the, collapse whitespace."""
    text = (text or "").lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def extract_answer(text: str) -> str:
    """The text after the last ``ANSWER:`` (to the end of its line), else the whole text."""
    found = _ANSWER.findall(text or "")
    return found[-1] if found else text or ""


def normalize_answer(text: str) -> str:
    return normalize_text(extract_answer(text))


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the normalised answers are equal."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def quasi_exact_match(prediction: str, reference: str) -> float:
    """1.0 when the normalised whole texts are equal."""
    return float(normalize_text(prediction) == normalize_text(reference))


def token_f1(prediction: str, reference: str) -> float:
    """F1 of the bags of normalised tokens (1.0 when both are empty)."""
    predicted, expected = normalize_text(prediction).split(), normalize_text(reference).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def answer_f1(prediction: str, reference: str) -> float:
    """Token F1 of the extracted answers."""
    return token_f1(extract_answer(prediction), extract_answer(reference))


def rouge_tokens(text: str) -> list[str]:
    """Lowercased alphanumeric runs, as ROUGE's default tokenizer splits text."""
    return _TOKEN.findall((text or "").lower())


def _f_measure(overlap: int, predicted: int, expected: int) -> float:
    if overlap == 0 or predicted == 0 or expected == 0:
        return 0.0
    precision, recall = overlap / predicted, overlap / expected
    return 2 * precision * recall / (precision + recall)


def _ngrams(tokens: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def rouge_n(prediction: str, reference: str, n: int) -> float:
    """ROUGE-N F-measure."""
    predicted, expected = _ngrams(rouge_tokens(prediction), n), _ngrams(rouge_tokens(reference), n)
    overlap = sum((predicted & expected).values())
    return _f_measure(overlap, sum(predicted.values()), sum(expected.values()))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (O(len(a) * len(b)) time, O(len(b)) memory)."""
    if not a or not b:
        return 0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, 1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure: precision and recall of the longest common subsequence of tokens."""
    predicted, expected = rouge_tokens(prediction), rouge_tokens(reference)
    return _f_measure(lcs_length(predicted, expected), len(predicted), len(expected))


def corpus_bleu(predictions: Sequence[str], references: Sequence[str], max_n: int = 4) -> float:
    """Corpus BLEU from 0 to 1: geometric mean of the clipped n-gram precisions (add-one
    smoothed for n > 1) times the brevity penalty."""
    matches, totals = [0] * max_n, [0] * max_n
    predicted_length = expected_length = 0
    for prediction, reference in zip(predictions, references, strict=True):
        predicted, expected = rouge_tokens(prediction), rouge_tokens(reference)
        predicted_length += len(predicted)
        expected_length += len(expected)
        for n in range(1, max_n + 1):
            found, wanted = _ngrams(predicted, n), _ngrams(expected, n)
            matches[n - 1] += sum((found & wanted).values())
            totals[n - 1] += sum(found.values())
    if predicted_length == 0 or matches[0] == 0:
        return 0.0
    log_precision = math.log(matches[0] / totals[0])
    for n in range(1, max_n):
        log_precision += math.log((matches[n] + 1) / (totals[n] + 1))
    penalty = (
        1.0
        if predicted_length > expected_length
        else math.exp(1 - expected_length / predicted_length)
    )
    return penalty * math.exp(log_precision / max_n)


def gen_qa_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """The gen_qa metrics of a set of answers (the mean over samples; BLEU corpus-level)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    scorers: dict[str, Callable[[str, str], float]] = {
        "exact_match": exact_match,
        "quasi_exact_match": quasi_exact_match,
        "f1": token_f1,
        "f1_score_quasi": answer_f1,
        "rouge1": lambda p, r: rouge_n(p, r, 1),
        "rouge2": lambda p, r: rouge_n(p, r, 2),
        "rougeL": rouge_l,
    }
    count = len(predictions) or 1
    metrics = {
        name: sum(score(p, r) for p, r in zip(predictions, references, strict=True)) / count
        for name, score in scorers.items()
    }
    metrics["bleu"] = corpus_bleu(predictions, references)
    metrics["em"] = metrics["exact_match"]
    metrics["qem"] = metrics["quasi_exact_match"]
    metrics["f1_score"] = metrics["f1"]
    return metrics


# -- generation ---------------------------------------------------------------------------------


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[Mapping[str, Any]]],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int = -1,
    top_p: float = 1.0,
    batch_size: int = BATCH_SIZE,
    progress: Callable[[int, int], None] | None = None,
    seed: int = 0,
) -> list[str]:
    """The model's answer to each chat prompt, generated in batches with left padding (prompts
    of similar length batched together); greedy when ``temperature`` is 0."""
    import torch
    from transformers import GenerationConfig

    texts = [
        tokenizer.apply_chat_template(list(p), add_generation_prompt=True, tokenize=False)
        for p in prompts
    ]
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
    sampling = temperature > 0
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=sampling,
        temperature=temperature if sampling else None,
        top_k=(top_k if top_k > 0 else 0) if sampling else None,
        top_p=top_p if sampling else None,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    device = next(model.parameters()).device
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    answers: list[str] = [""] * len(texts)
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]), torch.inference_mode():
            torch.manual_seed(seed)
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                batch = tokenizer.pad(
                    {"input_ids": [encoded[i] for i in chunk]}, return_tensors="pt"
                ).to(device)
                out = model.generate(**batch, generation_config=config)
                decoded = tokenizer.batch_decode(
                    out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True
                )
                for index, text in zip(chunk, decoded, strict=True):
                    answers[index] = text
                if progress is not None:
                    progress(min(start + batch_size, len(order)), len(order))
    finally:
        tokenizer.padding_side = padding_side
        model.train(was_training)
    return answers


# -- perplexity ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Perplexity:
    """Perplexity of a model over a set of texts, and how much of the set it covers."""

    value: float
    """exp(mean negative log-likelihood per scored token)."""
    tokens: int
    """Tokens scored (every token of a text but its first, up to the cap)."""
    texts: int
    """Texts read (the last one possibly cut by the cap)."""
    capped: bool
    """Whether the token cap stopped the reading before the end of the set."""


def text_windows(ids: Sequence[int], context: int) -> list[list[int]]:
    """``ids`` in windows of at most ``context`` tokens that overlap by one, so each token but
    the first is predicted exactly once (from the window's earlier tokens)."""
    if len(ids) < 2:
        return []
    step = max(context - 1, 1)
    return [list(ids[start : start + context]) for start in range(0, len(ids) - 1, step)]


def _tokens_of(tokenizer: Any, text: str) -> list[int]:
    """A text's tokens as CPT training makes them: the tokenizer's special tokens (a
    beginning-of-sequence token, for one that adds it), then the end token."""
    ids = list(tokenizer(text)["input_ids"])
    end = tokenizer.eos_token_id
    if end is not None and (not ids or ids[-1] != end):
        ids.append(end)
    return ids


def _context_length(model: Any) -> int:
    config = getattr(model, "config", None)
    value = getattr(config, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and value > 1 else PERPLEXITY_CONTEXT


def perplexity(
    model: Any,
    tokenizer: Any,
    texts: Iterable[str],
    *,
    max_tokens: int = PERPLEXITY_MAX_TOKENS,
    batch_size: int = PERPLEXITY_BATCH_SIZE,
    context: int | None = None,
) -> Perplexity:
    """The model's perplexity over ``texts`` (read lazily, until ``max_tokens`` are scored).

    ValueError when no text has a token to score."""
    import torch

    context = context or _context_length(model)
    windows: list[list[int]] = []
    scored = read = 0
    capped = False
    for text in texts:
        remaining = max_tokens - scored
        if remaining <= 0:
            capped = True
            break
        read += 1
        limit = (remaining + 1) * _CHARS_PER_TOKEN_BOUND
        ids = _tokens_of(tokenizer, text[:limit])
        if len(text) > limit or len(ids) > remaining + 1:
            capped = True
            ids = ids[: remaining + 1]  # the first token is context only
        for window in text_windows(ids, context):
            windows.append(window)
            scored += len(window) - 1
    if scored == 0:
        raise ValueError("no text with at least two tokens to score")
    device = next(model.parameters()).device
    total = 0.0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(windows), batch_size):
                total += _batch_nll(model, windows[start : start + batch_size], device)
    finally:
        model.train(was_training)
    return Perplexity(math.exp(total / scored), scored, read, capped)


def _batch_nll(model: Any, windows: Sequence[Sequence[int]], device: Any) -> float:
    """Summed negative log-likelihood of every token but the first of each window."""
    import torch
    import torch.nn.functional as F

    width = max(len(w) for w in windows)
    ids = torch.zeros((len(windows), width), dtype=torch.long)
    mask = torch.zeros((len(windows), width), dtype=torch.long)
    for row, window in enumerate(windows):  # right padding: positions stay 0..n-1
        ids[row, : len(window)] = torch.tensor(window, dtype=torch.long)
        mask[row, : len(window)] = 1
    ids, mask = ids.to(device), mask.to(device)
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    loss = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=-100,
        reduction="sum",
    )
    return float(loss)


def _perplexity_texts(uri: str) -> Iterator[str]:
    from tuneloop.local import convert

    for record in convert.iter_records(uri, "cpt"):
        yield str(record["text"])


# -- the job ------------------------------------------------------------------------------------


def _prompt_text(prompt: Sequence[Mapping[str, Any]]) -> str:
    users = [m.get("content", "") for m in prompt if m.get("role") == "user"]
    return str(users[-1]) if users else ""


def _unique_ids(ids: Iterable[Any]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for value in ids:
        base = str(value)
        k = seen.get(base, 0)
        seen[base] = k + 1
        out.append(base if k == 0 else f"{base}-{k}")
    return out


def _write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(path.name + ".tmp")
    with scratch.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    scratch.replace(path)


def _check(recipe: Any) -> tuple[str, str]:
    model = recipe.model
    task = model.evaluation.task
    problems = []
    if task not in TASKS:
        problems.append(
            Problem(
                "evaluation.task",
                f"the local backend does not run {task!r}",
                allowed=", ".join(TASKS),
            )
        )
    if not model.run.data_s3_path:
        problems.append(Problem("run.data_s3_path", "no evaluation data"))
    reward = model.rl_env.reward_lambda_arn if model.rl_env is not None else ""
    if task == RFT_EVAL and not reward:
        problems.append(
            Problem(
                "rl_env.reward_lambda_arn",
                "rft_eval needs a reward function",
                fix="name it as module:function",
            )
        )
    if model.inference.max_new_tokens < 1:
        problems.append(
            Problem("inference.max_new_tokens", "0 generates nothing", allowed="at least 1")
        )
    domain = getattr(model.run, "perplexity_data_path", "")
    if domain and storage.is_s3(domain):
        problems.append(
            Problem(
                "run.perplexity_data_path",
                f"{domain} is on S3; the local backend reads local files",
                allowed="a path or file:// URI",
            )
        )
    elif domain and not storage.local_path(domain).is_file():
        problems.append(
            Problem(
                "run.perplexity_data_path",
                f"{domain} is not a file",
                fix='name the JSONL file of domain texts ({"text": ...} per line)',
            )
        )
    if problems:
        raise ConfigError(problems)
    return task, reward


def evaluate(recipe: Any, spec: Any, progress: Callable[[int, int], None]) -> dict[str, Any]:
    """Run a gen_qa or rft_eval recipe locally; return the metrics and where they were written."""
    from tuneloop.local import convert, outputs
    from tuneloop.local.device import choose_device
    from tuneloop.local.model import load_model
    from tuneloop.local.train import job_output_dir, resolve_base

    task, reward_name = _check(recipe)
    model_recipe = recipe.model
    output = job_output_dir(spec, recipe)
    log = outputs.JobLog(output / EVAL_LOG)
    reward_function = None
    if task == RFT_EVAL:
        from tuneloop.local.rewards import RewardFunction

        reward_function = RewardFunction(reward_name)
    data = model_recipe.run.data_s3_path
    records = convert.load_records(data, "rft" if task == RFT_EVAL else GEN_QA)
    if not records:
        raise ConfigError([Problem("run.data_s3_path", f"{data} holds no records")])
    if model_recipe.processor is not None and model_recipe.processor.lambda_arn:
        log("processor.lambda_arn is not used by the local backend; built-in metrics only")

    start = resolve_base(model_recipe.run.model_name_or_path).name_or_path
    choice = choose_device(configure=False)  # threads are the job process's (run_recipe)
    loaded = load_model(start, choice, dtype=choice.dtype)
    log(f"{task} of {start} on {len(records)} samples, {choice.describe()}")
    started = time.perf_counter()
    progress(0, len(records))
    answers = _answers(loaded, records, model_recipe.inference, progress)
    seconds = time.perf_counter() - started

    result: dict[str, Any] = {}
    if reward_function is None:
        metrics, rows = _score_gen_qa(records, answers)
    else:
        metrics, rows = _score_rft_eval(records, answers, reward_function)
        log(reward_function.summary())
        result["reward_function"] = {
            "name": reward_function.name,
            **reward_function.stats.as_dict(),
        }

    domain = getattr(model_recipe.run, "perplexity_data_path", "")
    if domain:
        measured = _domain_perplexity(loaded, domain, log)
        metrics[PERPLEXITY] = measured.value
        result["perplexity"] = {
            "data": domain,
            "tokens": measured.tokens,
            "texts": measured.texts,
            "capped": measured.capped,
        }

    strategy = model_recipe.evaluation.strategy
    results_path = outputs.write_eval_results(output, f"{task}_{strategy}", metrics)
    _write_jsonl(output / outputs.EVAL_DIR / INFERENCE_OUTPUT, rows)
    shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
    log(f"{len(records)} samples in {seconds:.1f} s: {shown}")
    log(f"results in {results_path}")
    return {
        "task": task,
        "samples": len(records),
        "seconds": round(seconds, 3),
        "metrics": metrics,
        "results": str(results_path),
        "device": choice.describe(),
        **result,
    }


def _domain_perplexity(loaded: Any, uri: str, log: Callable[[str], None]) -> Perplexity:
    """The perplexity on the domain texts at ``uri``; ConfigError when they hold none."""
    started = time.perf_counter()
    try:
        measured = perplexity(loaded.model, loaded.tokenizer, _perplexity_texts(uri))
    except ValueError as exc:
        raise ConfigError(
            [Problem("run.perplexity_data_path", f"{uri}: {exc}", fix="name CPT text data")]
        ) from None
    cap = f" (capped at {PERPLEXITY_MAX_TOKENS} tokens)" if measured.capped else ""
    log(
        f"{PERPLEXITY} {measured.value:.4f} on {measured.tokens} tokens of {measured.texts} "
        f"texts{cap} in {time.perf_counter() - started:.1f} s"
    )
    return measured


def _answers(
    loaded: Any,
    records: Sequence[Mapping[str, Any]],
    inference: Any,
    progress: Callable[[int, int], None],
) -> list[str]:
    """The model's answer to every record's prompt, with the recipe's inference settings."""
    return generate(
        loaded.model,
        loaded.tokenizer,
        [r["prompt"] for r in records],
        max_new_tokens=inference.max_new_tokens,
        temperature=float(inference.temperature),
        top_k=int(inference.top_k),
        top_p=float(inference.top_p),
        progress=progress,
    )


def _score_gen_qa(
    records: Sequence[Mapping[str, Any]], answers: Sequence[str]
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """gen_qa: the metrics against each record's ``response``, and one output row per sample."""
    references = [str(r["response"]) for r in records]
    metrics = gen_qa_metrics(answers, references)
    rows = [
        {
            "prompt": _prompt_text(record["prompt"]),
            "inference": answer,
            "gold": record["response"],
            "metadata": record.get("metadata"),
        }
        for record, answer in zip(records, answers, strict=True)
    ]
    return metrics, rows


def _score_rft_eval(
    records: Sequence[Mapping[str, Any]], answers: Sequence[str], reward_function: Any
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """rft_eval: the reward function's mean score (and its own metrics), and one output row per
    sample with its reward; ConfigError when the function scored no sample at all."""
    from tuneloop.local.rewards import make_sample

    ids = _unique_ids(r["id"] for r in records)
    samples = [
        make_sample(sample_id, r["prompt"], answer, r.get("reference_answer"), r["metadata"])
        for sample_id, r, answer in zip(ids, records, answers, strict=True)
    ]
    scored = reward_function(samples)
    values = [s.score for s in scored if s is not None]
    if not values:
        raise ConfigError(
            [
                Problem(
                    "rl_env.reward_lambda_arn",
                    f"{reward_function.name} scored none of the {len(samples)} samples "
                    f"({reward_function.stats.last_error})",
                )
            ]
        )
    per_metric: dict[str, list[float]] = {}
    for entry in scored:
        for metric in entry.metrics if entry is not None else ():
            per_metric.setdefault(metric.name, []).append(metric.value)
    metrics = {
        REWARD_METRIC: sum(values) / len(values),
        # The gate reads this off the base model's evaluation: RFT learns little from a
        # model that almost never earns a positive reward (SFT first).
        POSITIVE_REWARDS_METRIC: sum(v > 0 for v in values) / len(values),
    }
    for name, found in per_metric.items():
        metrics.setdefault(name, sum(found) / len(found))
    rows = [
        {
            "prompt": _prompt_text(record["prompt"]),
            "inference": answer,
            "gold": record.get("reference_answer"),
            "metadata": record.get("metadata"),
            "reward": None if entry is None else entry.score,
        }
        for record, answer, entry in zip(records, answers, scored, strict=True)
    ]
    return metrics, rows
