"""The local backend's models: the tiny chat model made from a config, and checkpoints on disk.

``tiny-chat`` is a Llama-style causal LM (hidden 128, 2 layers, 4 heads, tied embeddings, 558k
parameters, a 2.2 MB checkpoint) with the byte-level tokenizer of ``tokenizer.py``. Its
embeddings start with std 0.08 rather than the usual 0.02: at this size the default gives flat
output probabilities, so sampled answers are wrong and RFT never sees a reward. It is built on
first use, with a fixed seed, in ``<cache>/models/tiny-chat-v1``, where ``<cache>`` is the folder
the caller names, else ``$TUNELOOP_HOME``, else ``~/.cache/tuneloop``.

Any other ``model_name_or_path`` must be a model directory on disk (``save_pretrained`` layout);
nothing is ever downloaded.

Checkpoints written by ``save_checkpoint`` carry ``tuneloop-model.json``, which says how they were
trained:

- full-rank: the whole model, as ``save_pretrained`` writes it;
- LoRA: a peft adapter over a frozen base. The base is kept in the checkpoint's ``base/``
  folder (hard links or a copy; the tiny model's base is 2.2 MB), so a checkpoint stays usable
  after the job that made its base is deleted. A new LoRA round loads the adapter with
  ``is_trainable=True`` and trains that same adapter: each round's adapter replaces the previous
  one and the base never changes.

LoRA and full-rank lineages never mix: asking for one technique from a checkpoint trained with
the other raises TechniqueMismatchError. A base model (``tiny-chat``, or a Hugging Face
directory with no ``tuneloop-model.json``) starts either.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneloop.errors import IncompatibleTechniqueError, ModelConfigNotFoundError
from tuneloop.local.device import DeviceChoice

TINY_CHAT = "tiny-chat"
TINY_CHAT_FOLDER = "tiny-chat-v1"
HOME_ENV = "TUNELOOP_HOME"
MODEL_INFO = "tuneloop-model.json"
ADAPTER_CONFIG = "adapter_config.json"
BASE_FOLDER = "base"
BASE_SEED = 0
"""The seed ``tiny-chat`` is built with, so every machine builds the same base."""
EMBEDDING_STD = 0.08
BASE_COPY_LIMIT = 512 << 20
"""A LoRA checkpoint keeps its own copy of a base up to this size; a larger base is referenced."""

TINY_CONFIG: dict[str, Any] = {
    "hidden_size": 128,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 512,
    "tie_word_embeddings": True,
    "rms_norm_eps": 1e-6,
    "initializer_range": 0.02,
    "attention_dropout": 0.0,
    "hidden_act": "silu",
}

FULL, LORA = "full", "lora"
TECHNIQUES = (FULL, LORA)


class TechniqueMismatchError(IncompatibleTechniqueError):
    """A LoRA checkpoint was asked for as full-rank, or a full-rank checkpoint as LoRA."""


@dataclass(frozen=True)
class LoraSettings:
    """A new adapter's shape (a continued adapter keeps the shape it was trained with)."""

    rank: int = 32
    alpha: int = 64
    dropout: float = 0.0
    target_modules: str | tuple[str, ...] = "all-linear"


@dataclass
class LoadedModel:
    """A model ready to train or evaluate, with its tokenizer and where it came from."""

    model: Any
    tokenizer: Any
    path: Path
    """The directory loaded (for ``tiny-chat``, the cached base)."""
    technique: str | None
    """``full`` or ``lora`` for a trained checkpoint or a model prepared for training; None for
    an untouched base loaded for inference."""
    base_path: Path | None = None
    """The frozen base under a LoRA adapter."""
    base_model: str = ""
    """The name or path the lineage started from (``tiny-chat`` or a model directory)."""
    info: dict[str, Any] = field(default_factory=dict)


# -- the tiny chat model ------------------------------------------------------------------------


def tuneloop_home(cache_dir: str | Path | None = None) -> Path:
    """The cache folder: ``cache_dir``, else ``$TUNELOOP_HOME``, else ``~/.cache/tuneloop``."""
    if cache_dir:
        return Path(cache_dir)
    env = os.environ.get(HOME_ENV, "").strip()
    return Path(env) if env else Path.home() / ".cache" / "tuneloop"


def tiny_config() -> Any:
    """The tiny chat model's ``LlamaConfig``."""
    from transformers import LlamaConfig

    from tuneloop.local import tokenizer as tok

    return LlamaConfig(
        vocab_size=tok.VOCAB_SIZE,
        pad_token_id=tok.PAD_ID,
        bos_token_id=tok.BOS_ID,
        eos_token_id=tok.END_ID,
        **TINY_CONFIG,
    )


def build_tiny_model(seed: int = BASE_SEED) -> tuple[Any, Any]:
    """A freshly initialised tiny chat model and its tokenizer (in memory, fp32, on the CPU).

    The global random state is left as it was."""
    import torch
    from transformers import LlamaForCausalLM

    from tuneloop.local.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    config = tiny_config()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        with torch.no_grad():
            embeddings = model.get_input_embeddings().weight
            assert isinstance(embeddings, torch.Tensor)
            embeddings.normal_(mean=0.0, std=EMBEDDING_STD)
            embeddings[config.pad_token_id].zero_()
    model.generation_config.pad_token_id = config.pad_token_id
    model.generation_config.bos_token_id = config.bos_token_id
    model.generation_config.eos_token_id = config.eos_token_id
    model.eval()
    return model, tokenizer


def create_tiny_model(path: str | Path, seed: int = BASE_SEED) -> Path:
    """Build the tiny chat model and save it with its tokenizer in ``path``; return the path."""
    path = Path(path)
    model, tokenizer = build_tiny_model(seed)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    _write_info(path, {"technique": None, "base_model": TINY_CHAT, "seed": seed})
    return path


def ensure_tiny_chat(cache_dir: str | Path | None = None) -> Path:
    """The ``tiny-chat`` base in the cache, built there first if it is missing.

    Built in a temporary folder and renamed into place, so a process that finds the folder
    finds it complete, and two processes building at once both end with the same model.
    """
    target = tuneloop_home(cache_dir) / "models" / TINY_CHAT_FOLDER
    if _complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = target.parent / f".{TINY_CHAT_FOLDER}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    create_tiny_model(scratch, BASE_SEED)
    try:
        if target.exists() and not _complete(target):
            shutil.rmtree(target, ignore_errors=True)
        os.rename(scratch, target)
    except OSError:
        if not _complete(target):
            raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _complete(path: Path) -> bool:
    return (path / MODEL_INFO).is_file() and (path / "config.json").is_file()


# -- checkpoints --------------------------------------------------------------------------------


def read_model_info(path: str | Path) -> dict[str, Any]:
    """The ``tuneloop-model.json`` of a model directory; {} for a directory without one."""
    try:
        return json.loads((Path(path) / MODEL_INFO).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}


def _write_info(path: Path, info: dict[str, Any]) -> None:
    (path / MODEL_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def is_adapter(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def checkpoint_technique(path: str | Path) -> str | None:
    """``lora`` for an adapter, ``full`` for a full-rank checkpoint, None for a base model."""
    if is_adapter(path):
        return LORA
    technique = read_model_info(path).get("technique")
    return technique if technique in TECHNIQUES else None


def resolve_model_path(name_or_path: str | Path, cache_dir: str | Path | None = None) -> Path:
    """The directory a ``model_name_or_path`` names: ``tiny-chat`` (built on first use) or a
    model directory on disk (a ``file://`` URI too)."""
    name = str(name_or_path)
    if name == TINY_CHAT:
        return ensure_tiny_chat(cache_dir)
    path = Path(name.removeprefix("file://"))
    if path.is_dir() and ((path / "config.json").is_file() or is_adapter(path)):
        return path
    detail = (
        f"{name!r} is neither {TINY_CHAT!r} nor a model directory"
        if not path.exists()
        else f"{name!r} holds no config.json or {ADAPTER_CONFIG}"
    )
    raise ModelConfigNotFoundError(
        "model_name_or_path",
        detail,
        f"use {TINY_CHAT!r}, a local job's checkpoint directory, or a Hugging Face model "
        "directory saved with save_pretrained (nothing is downloaded)",
    )


def _mismatch(path: Path, found: str, wanted: str) -> TechniqueMismatchError:
    label = {FULL: "full-rank", LORA: "LoRA"}
    return TechniqueMismatchError(
        "technique",
        f"checkpoint {path} was trained {label[found]} and this job trains {label[wanted]}; "
        "LoRA and full-rank checkpoints cannot be mixed",
        f"use technique: {found} for every stage that continues from it, or start a new "
        "lineage from the base model",
    )


def _device(device: DeviceChoice | str | Any | None) -> Any:
    import torch

    if device is None:
        from tuneloop.local.device import choose_device

        return choose_device(configure=False).device
    if isinstance(device, DeviceChoice):
        return device.device
    return torch.device(device)


def _load_full(path: Path, dtype: Any) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        str(path), dtype=dtype or torch.float32, local_files_only=True
    )


def _tokenizer_for(*paths: Path | None) -> Any:
    from tuneloop.local.tokenizer import load_tokenizer

    for path in paths:
        if path is not None and any(
            (path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")
        ):
            tokenizer = load_tokenizer(path)
            break
    else:
        raise ModelConfigNotFoundError(
            "model_name_or_path",
            f"no tokenizer in {', '.join(str(p) for p in paths if p)}",
            "save the tokenizer with the model (tokenizer.save_pretrained)",
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def _adapter_base(path: Path, info: dict[str, Any], cache_dir: str | Path | None) -> Path:
    """Where the frozen base of the adapter in ``path`` lives."""
    candidates: list[Path] = []
    base = info.get("base")
    if base:
        candidates.append(path / base if not Path(base).is_absolute() else Path(base))
    try:
        config = json.loads((path / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        config = {}
    if config.get("base_model_name_or_path"):
        candidates.append(Path(config["base_model_name_or_path"]))
    for candidate in candidates:
        if (candidate / "config.json").is_file():
            return candidate
    if info.get("base_model") == TINY_CHAT or config.get("base_model_name_or_path") == TINY_CHAT:
        return ensure_tiny_chat(cache_dir)
    raise ModelConfigNotFoundError(
        "model_name_or_path",
        f"the base model of the LoRA checkpoint {path} is not on disk (looked in "
        f"{', '.join(str(c) for c in candidates) or 'nothing recorded'})",
        "restore the base model directory the adapter was trained on",
    )


def load_model(
    path_or_name: str | Path,
    device: DeviceChoice | str | Any | None = None,
    *,
    technique: str | None = None,
    trainable: bool = False,
    lora: LoraSettings | None = None,
    cache_dir: str | Path | None = None,
    dtype: Any = None,
) -> LoadedModel:
    """Load ``tiny-chat``, a local job's checkpoint or a Hugging Face model directory.

    ``technique`` is the technique the job trains with (``full`` or ``lora``), or None to load
    any checkpoint for inference. With ``trainable``:

    - ``full``: the whole model trains; a LoRA checkpoint raises TechniqueMismatchError;
    - ``lora``: a LoRA checkpoint's adapter continues training over its frozen base; a base
      model gets a new adapter shaped by ``lora``; a full-rank checkpoint raises
      TechniqueMismatchError.

    ``device`` defaults to ``choose_device(configure=False)`` (threads are the caller's to
    set); ``dtype`` to fp32 (training keeps fp32 weights even where it computes in bf16).
    """
    if technique is not None and technique not in TECHNIQUES:
        raise ValueError(f"technique {technique!r} is not one of {', '.join(TECHNIQUES)}")
    path = resolve_model_path(path_or_name, cache_dir)
    info = read_model_info(path)
    found = checkpoint_technique(path)
    if technique is not None and found is not None and found != technique:
        raise _mismatch(path, found, technique)
    target = _device(device)
    base_model = str(info.get("base_model") or path_or_name)

    if found == LORA:
        from peft import PeftModel

        base_path = _adapter_base(path, info, cache_dir)
        base = _load_full(base_path, dtype)
        model = PeftModel.from_pretrained(
            base, str(path), is_trainable=trainable, local_files_only=True
        )
        loaded = LoadedModel(
            model, _tokenizer_for(path, base_path), path, LORA, base_path, base_model, info
        )
    else:
        model = _load_full(path, dtype)
        loaded = LoadedModel(model, _tokenizer_for(path), path, found, None, base_model, info)
        if trainable and technique == LORA:
            loaded.model = new_adapter(model, lora or LoraSettings())
            loaded.technique, loaded.base_path = LORA, path
        elif trainable and technique == FULL:
            loaded.technique = FULL
    loaded.model.to(target)
    loaded.model.train(trainable)
    return loaded


def new_adapter(model: Any, settings: LoraSettings) -> Any:
    """Wrap a base model in a new, trainable LoRA adapter (the base is frozen)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=(
            settings.target_modules
            if isinstance(settings.target_modules, str)
            else list(settings.target_modules)
        ),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def save_checkpoint(
    loaded: LoadedModel, path: str | Path, *, model: Any = None, method: str | None = None
) -> Path:
    """Save a trained model (``model``, default ``loaded.model``) as a checkpoint in ``path``.

    A LoRA model saves its adapter and keeps its frozen base in ``path/base``; a full-rank
    model saves every weight. Both save the tokenizer and ``tuneloop-model.json``.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model = model if model is not None else loaded.model
    info: dict[str, Any] = {"base_model": loaded.base_model}
    if method:
        info["method"] = method
    if _is_peft(model):
        base_path = loaded.base_path
        if base_path is None:
            raise ValueError("a LoRA model needs the path of its base (LoadedModel.base_path)")
        model.save_pretrained(str(path))
        info.update(technique=LORA, base=_keep_base(base_path, path / BASE_FOLDER))
    else:
        model.save_pretrained(str(path))
        info.update(technique=FULL)
    loaded.tokenizer.save_pretrained(str(path))
    _write_info(path, info)
    return path


def _is_peft(model: Any) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def _keep_base(base: Path, target: Path) -> str:
    """Hard-link (or copy) the base's files into ``target``; return what to record as the
    base: ``base`` (relative to the checkpoint), or the base's absolute path when it is
    larger than BASE_COPY_LIMIT."""
    files = [p for p in base.iterdir() if p.is_file()]
    if sum(p.stat().st_size for p in files) > BASE_COPY_LIMIT:
        return str(base.resolve())
    if target.resolve() == base.resolve():
        return BASE_FOLDER
    target.mkdir(parents=True, exist_ok=True)
    for source in files:
        destination = target / source.name
        destination.unlink(missing_ok=True)
        try:
            os.link(source, destination)
        except OSError:
            shutil.copy2(source, destination)
    return BASE_FOLDER
