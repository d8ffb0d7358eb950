"""Tokenizers and a request's prompt token ids, shared by the local runner and the served one.

Imports neither torch nor, for the byte tokenizer of the random-weight presets, anything of
transformers that does: a served variant's worker (engine/worker/served.py) tokenizes its prompt
here so that its server gets the very ids the local variants get, without loading torch. A hub
preset's tokenizer comes through `AutoTokenizer`, whose configuration imports torch, unless the
caller asks for `torch_free`: then the fast tokenizer is read from its own files.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from engine.source import model_location

if TYPE_CHECKING:
    from engine.events import Request
    from engine.presets import Preset

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")           # ids 0, 1, 2
SYLLABLES = ("ka", "lo", "mi", "nu", "pe", "ra", "si", "to", "vu", "ze", "ba", "do", "fe", "gi", "ho", "ju")


def filler_word(index: int) -> str:
    """The index-th pseudo-word of the byte tokenizer's vocabulary."""
    letters = []
    while True:
        index, digit = divmod(index, len(SYLLABLES))
        letters.append(SYLLABLES[digit])
        if index == 0:
            return "".join(letters)


def byte_tokenizer(vocab_size: int):
    """A byte-level tokenizer: 3 special tokens, the 256 bytes, then pseudo-words up to vocab_size.

    Every text encodes to one token per byte; the pseudo-words are never produced by encoding but
    make the output of a random-weight model read as (meaningless) words instead of byte soup.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for symbol in alphabet:
        vocab[symbol] = len(vocab)
    n = 0
    while len(vocab) < vocab_size:
        vocab.setdefault("Ġ" + filler_word(n), len(vocab))
        n += 1
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    # the beginning-of-sequence token added by the tokenizer itself, so that every transformers version
    # gives the same ids (a legacy runtime's 4.x ignores PreTrainedTokenizerFast.add_bos_token)
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                             special_tokens=[("<s>", 1)])
    return tokenizer


def load_tokenizer(preset: Preset, vocab_size: int | None = None, torch_free: bool = False):
    """The transformers tokenizer for a preset. `torch_free`: a hub preset's fast tokenizer read from its
    tokenizer.json and tokenizer_config.json by PreTrainedTokenizerFast, not AutoTokenizer (which
    imports torch); the byte tokenizer never needs torch."""
    from transformers import PreTrainedTokenizerFast
    if preset.tokenizer == "bytes":
        size = vocab_size or preset.config.get("vocab_size", 512)
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=byte_tokenizer(size), pad_token="<pad>",
                                            bos_token="<s>", eos_token="</s>")
        return tokenizer
    location = model_location(preset)
    if torch_free:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(location)
    else:
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(location)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def prompt_ids(tokenizer, preset: Preset, request: Request) -> list[int]:
    """The prompt's token ids: repeated to `prompt_tokens` for a synthetic one, else as the chat
    template (where the preset asks for it) or the tokenizer gives them. Every variant, local or
    served, sends these ids."""
    if request.prompt_tokens is not None:
        ids = tokenizer(request.prompt or "x", add_special_tokens=True)["input_ids"]
        return (ids * (request.prompt_tokens // max(len(ids), 1) + 1))[:request.prompt_tokens]
    if preset.chat_template and tokenizer.chat_template:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": request.prompt}],
                                            add_generation_prompt=True, tokenize=True)
        return ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    return tokenizer(request.prompt, add_special_tokens=True)["input_ids"]
