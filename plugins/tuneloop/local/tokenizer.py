"""The tiny chat model's tokenizer: one token per byte, built on the spot (nothing is downloaded).

Token ids 0-255 are the bytes themselves; ids 256-261 are the special tokens. Every text encodes
(any UTF-8, any language) and decodes back exactly.

The chat template renders a conversation as::

    <bos><|system|>...<end><|user|>...<end><|assistant|>...<end>

and the generation prompt is ``<|assistant|>``. A role's text is never changed by what follows,
and special tokens are split off before the bytes, so "prompt + generation prompt" is a strict
prefix of "prompt + completion", in text and in tokens: completion-only loss masks exactly the
completion. Padding is on the left, for batched generation.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

PAD = "<pad>"
BOS = "<bos>"
END = "<end>"
"""Ends every turn; it is the end-of-sequence token generation stops at."""
SYSTEM = "<|system|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
SPECIAL_TOKENS = (PAD, BOS, END, SYSTEM, USER, ASSISTANT)
VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)
PAD_ID, BOS_ID, END_ID = 256, 257, 258
MODEL_MAX_LENGTH = 512

# `developer` is OpenAI's newer name for `system`. Content is a string or a list of text parts.
# The assistant's text is wrapped in {% generation %} so `return_assistant_tokens_mask` works too.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages %}"
    "{%- set role = 'system' if message['role'] == 'developer' else message['role'] %}"
    "{%- if role not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('the tiny chat model knows the roles system, user and assistant, "
    "not ' ~ message['role']) }}"
    "{%- endif %}"
    "{%- if message['content'] is string %}"
    "{%- set text = message['content'] %}"
    "{%- else %}"
    "{%- set text = message['content'] | map(attribute='text') | join('\n') %}"
    "{%- endif %}"
    "{%- if role == 'assistant' %}"
    "{{ '<|assistant|>' }}{% generation %}{{ text }}{{ '<end>' }}{% endgeneration %}"
    "{%- else %}"
    "{{ '<|' ~ role ~ '|>' }}{{ text }}{{ '<end>' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


@cache
def byte_to_unicode() -> dict[int, str]:
    """The byte-level alphabet: each byte as a printable character (GPT-2's mapping)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def build_tokenizer() -> Any:
    """A fresh byte-level ``PreTrainedTokenizerFast`` with the chat template and left padding."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = byte_to_unicode()
    # BPE without merges over the 256-character byte alphabet: one token per byte, id = byte.
    backend = Tokenizer(models.BPE(vocab={alphabet[b]: b for b in range(256)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(
        [AddedToken(token, special=True, normalized=False) for token in SPECIAL_TOKENS]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=END,
        pad_token=PAD,
        extra_special_tokens=[SYSTEM, USER, ASSISTANT],
        padding_side="left",
        truncation_side="left",
        model_max_length=MODEL_MAX_LENGTH,
        chat_template=CHAT_TEMPLATE,
    )
    ids = tokenizer.convert_tokens_to_ids([PAD, BOS, END])
    if ids != [PAD_ID, BOS_ID, END_ID] or len(tokenizer) != VOCAB_SIZE:
        raise RuntimeError(f"unexpected special token ids {ids} or vocabulary {len(tokenizer)}")
    return tokenizer


def load_tokenizer(path: str | Path) -> Any:
    """A tokenizer saved in a model directory, loaded from disk only."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
