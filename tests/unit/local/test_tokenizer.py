"""The byte-level tokenizer and its chat template."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("tokenizers")
pytest.importorskip("transformers")

from tuneloop.local import tokenizer as tok

CONVERSATION = [
    {"role": "system", "content": "Reply with ANSWER: <n>."},
    {"role": "user", "content": "What is max(37, 82)?"},
]
COMPLETION = [{"role": "assistant", "content": "ANSWER: 82"}]


@pytest.fixture(scope="module")
def tokenizer():
    return tok.build_tokenizer()


def test_every_text_round_trips(tokenizer) -> None:
    for text in ["", "ANSWER: 82", "  spaces\tand\nlines ", "héllo wörld ✓ 数字 🙂", "<n> </s>"]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert ids == list(text.encode("utf-8"))  # one token per byte, id = byte
        assert tokenizer.decode(ids) == text


def test_special_tokens(tokenizer) -> None:
    assert len(tokenizer) == tok.VOCAB_SIZE == 262
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (
        tok.PAD_ID,
        tok.BOS_ID,
        tok.END_ID,
    )
    ids = tokenizer("<|user|>hi<end>", add_special_tokens=False)["input_ids"]
    assert ids == [tokenizer.convert_tokens_to_ids(tok.USER), 104, 105, tok.END_ID]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "hi"


def test_chat_template_renders_roles(tokenizer) -> None:
    text = tokenizer.apply_chat_template(CONVERSATION + COMPLETION, tokenize=False)
    assert text == (
        "<bos><|system|>Reply with ANSWER: <n>.<end><|user|>What is max(37, 82)?<end>"
        "<|assistant|>ANSWER: 82<end>"
    )
    parts = [{"role": "developer", "content": [{"type": "text", "text": "S"}]}]
    assert tokenizer.apply_chat_template(parts, tokenize=False) == "<bos><|system|>S<end>"
    with pytest.raises(Exception, match="roles"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_prompt_is_a_strict_prefix_of_prompt_and_completion(tokenizer) -> None:
    for conversation in (
        CONVERSATION,
        CONVERSATION[1:],
        [*CONVERSATION, *COMPLETION, CONVERSATION[1]],
    ):
        prompt = tokenizer.apply_chat_template(
            conversation, add_generation_prompt=True, return_dict=True
        )["input_ids"]
        full = tokenizer.apply_chat_template(conversation + COMPLETION, return_dict=True)[
            "input_ids"
        ]
        assert len(prompt) < len(full) and full[: len(prompt)] == prompt
        completion = tokenizer.decode(full[len(prompt) :])
        assert completion == "ANSWER: 82<end>"
    masked = tokenizer.apply_chat_template(
        CONVERSATION + COMPLETION, return_dict=True, return_assistant_tokens_mask=True
    )
    kept = [i for i, m in zip(masked["input_ids"], masked["assistant_masks"], strict=True) if m]
    assert tokenizer.decode(kept) == "ANSWER: 82<end>"


def test_left_padding_for_batched_generation(tokenizer) -> None:
    batch = tokenizer.apply_chat_template(
        [CONVERSATION, CONVERSATION[1:]],
        add_generation_prompt=True,
        padding=True,
        return_dict=True,
    )
    short, long = batch["input_ids"][1], batch["input_ids"][0]
    assert len(short) == len(long)
    assert short[0] == tok.PAD_ID and long[0] == tok.BOS_ID
    assert short[-1] == long[-1] == tokenizer.convert_tokens_to_ids(tok.ASSISTANT)
    assert batch["attention_mask"][1][0] == 0


def test_save_and_reload_with_auto_tokenizer(tmp_path: Path, tokenizer) -> None:
    from transformers import AutoTokenizer

    tok.build_tokenizer().save_pretrained(str(tmp_path))
    reloaded = AutoTokenizer.from_pretrained(str(tmp_path))
    assert reloaded.padding_side == "left"
    assert reloaded.model_max_length == tok.MODEL_MAX_LENGTH
    assert reloaded.get_vocab() == tokenizer.get_vocab()
    assert reloaded.apply_chat_template(
        CONVERSATION, add_generation_prompt=True, tokenize=False
    ) == tokenizer.apply_chat_template(CONVERSATION, add_generation_prompt=True, tokenize=False)
    text = "mixed ✓ text <|assistant|>x<end>"
    assert reloaded(text)["input_ids"] == tokenizer(text)["input_ids"]
