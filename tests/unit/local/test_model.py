"""The tiny chat model: build, save, reload; LoRA and full-rank checkpoints."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from tuneloop.errors import ModelConfigNotFoundError  # noqa: E402
from tuneloop.local import model as M  # noqa: E402
from tuneloop.local.tokenizer import VOCAB_SIZE  # noqa: E402

INPUT = torch.tensor([[257, 260, 109, 97, 120, 258, 261], [256, 256, 257, 260, 49, 258, 261]])


def logits(model) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=INPUT).logits


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_create_save_reload_gives_identical_logits(tmp_path: Path) -> None:
    model, _ = M.build_tiny_model(seed=3)
    path = M.create_tiny_model(tmp_path / "tiny", seed=3)
    loaded = M.load_model(path, "cpu")
    assert torch.equal(logits(model), logits(loaded.model))
    assert loaded.technique is None and not loaded.model.training
    config = loaded.model.config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (128, 2, 4)
    assert config.tie_word_embeddings and config.vocab_size == VOCAB_SIZE
    assert config.max_position_embeddings == 512
    assert sum(p.numel() for p in loaded.model.parameters()) == 558_464
    size = sum(p.stat().st_size for p in path.iterdir())
    assert 1.5e6 < size < 3e6
    assert loaded.tokenizer.padding_side == "left"


def test_seeded_build_is_reproducible_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    a, _ = M.build_tiny_model(seed=1)
    assert torch.equal(torch.rand(1), expected)
    b, _ = M.build_tiny_model(seed=1)
    c, _ = M.build_tiny_model(seed=2)
    assert torch.equal(logits(a), logits(b))
    assert not torch.equal(logits(a), logits(c))
    embeddings = a.get_input_embeddings().weight
    assert 0.07 < embeddings.std().item() < 0.09  # not the default 0.02


def test_tiny_chat_is_built_once_in_the_cache(
    tiny_chat_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = M.ensure_tiny_chat(tiny_chat_home)
    assert path == tiny_chat_home / "models" / M.TINY_CHAT_FOLDER
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    monkeypatch.setenv(M.HOME_ENV, str(tiny_chat_home))
    loaded = M.load_model(M.TINY_CHAT, "cpu")
    assert loaded.path == path and loaded.base_model == M.TINY_CHAT
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no scratch left


def test_unknown_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelConfigNotFoundError, match="neither 'tiny-chat' nor a model dir"):
        M.load_model("meta-llama/Llama-3-8B", "cpu")
    with pytest.raises(ModelConfigNotFoundError, match=r"no config\.json"):
        M.load_model(tmp_path, "cpu")
    with pytest.raises(ValueError, match="technique"):
        M.load_model("tiny-chat", "cpu", technique="qlora", cache_dir=tmp_path)


def test_full_rank_checkpoint_round_trip_and_refuses_lora(
    tiny_chat_home: Path, tmp_path: Path
) -> None:
    loaded = M.load_model(
        "tiny-chat", "cpu", technique="full", trainable=True, cache_dir=tiny_chat_home
    )
    assert loaded.technique == "full" and loaded.model.training
    with torch.no_grad():
        loaded.model.model.layers[0].mlp.up_proj.weight.add_(0.01)
    expected = logits(loaded.model)
    checkpoint = M.save_checkpoint(loaded, tmp_path / "full", method="sft")
    assert json.loads((checkpoint / M.MODEL_INFO).read_text())["technique"] == "full"
    again = M.load_model(checkpoint, "cpu", technique="full", trainable=True)
    assert torch.equal(expected, logits(again.model))
    with pytest.raises(
        M.TechniqueMismatchError, match="trained full-rank and this job trains LoRA"
    ):
        M.load_model(checkpoint, "cpu", technique="lora", trainable=True)


def test_lora_rounds_continue_one_adapter_over_a_frozen_base(
    tiny_chat_home: Path, tmp_path: Path
) -> None:
    from peft import PeftModel

    base_file = M.ensure_tiny_chat(tiny_chat_home) / "model.safetensors"
    base_digest = digest(base_file)
    first = M.load_model(
        "tiny-chat",
        "cpu",
        technique="lora",
        trainable=True,
        lora=M.LoraSettings(rank=4, alpha=8),
        cache_dir=tiny_chat_home,
    )
    assert isinstance(first.model, PeftModel) and first.technique == "lora"
    with torch.no_grad():
        for name, param in first.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    round1 = M.save_checkpoint(first, tmp_path / "round1")
    expected = logits(first.model)

    second = M.load_model(round1, "cpu", technique="lora", trainable=True)
    assert list(second.model.peft_config) == ["default"]  # the same adapter, not a second one
    assert second.model.peft_config["default"].r == 4
    trainable = {n for n, p in second.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert torch.equal(expected, logits(second.model))
    with torch.no_grad():
        for name, param in second.model.named_parameters():
            if "lora_A" in name:
                param.add_(0.01)
    round2 = M.save_checkpoint(second, tmp_path / "round2")
    assert digest(round2 / "base" / "model.safetensors") == base_digest  # the base never changes
    assert digest(base_file) == base_digest

    # The checkpoint keeps its base: it loads with the cache gone.
    moved = tmp_path / "moved-round2"
    shutil.copytree(round2, moved)
    inference = M.load_model(moved, "cpu")
    assert inference.technique == "lora" and inference.base_path == moved / "base"
    assert not any(p.requires_grad for p in inference.model.parameters())
    assert not torch.equal(expected, logits(inference.model))

    with pytest.raises(
        M.TechniqueMismatchError, match="trained LoRA and this job trains full-rank"
    ):
        M.load_model(round2, "cpu", technique="full", trainable=True)
