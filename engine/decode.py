"""The compiled static-cache decoder (worker side), and the clocks that time bare decode loops.

The compiled decoder follows gpt-fast: a KV cache of fixed size so every decode step has the
same shapes, and one `torch.compile`d step, captured as a CUDA graph on a GPU
("reduce-overhead"), so a step costs one graph launch instead of hundreds of kernel launches
from Python. Prefill runs uncompiled (its length varies).

Each decode step attends over the whole static cache (masked past the current position), so a
cache of the preset's full context makes short requests read and score thousands of empty
positions per layer. The cache is sized in power-of-two buckets of the request instead
(prompt + new tokens, at least MIN_BUCKET): one cache and one compiled graph per bucket.
"""
from __future__ import annotations

import inspect
import time
from collections.abc import Callable

import torch


def cache_keyword(model) -> str:
    """transformers renamed `past_key_values` to `cache` in forward() (5.2x); accept both."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _decode_step(model, token: torch.Tensor, position_ids: torch.Tensor, cache_position: torch.Tensor,
                 attention_mask: torch.Tensor, cache, keyword: str) -> torch.Tensor:
    """One token for every sequence: token (batch, 1) at cache_position (1,) -> the next (batch, 1).

    `attention_mask` (batch, cache length) is 0 at the prompt's pad positions and 1 elsewhere: its
    shape never changes, so the step compiles once (without it, some models build a mask from the
    cache's fill level, a data-dependent shape that cannot be compiled), and positions past the
    current one are hidden by the causal mask.
    """
    logits = model(input_ids=token, position_ids=position_ids, cache_position=cache_position,
                   attention_mask=attention_mask, use_cache=True, **{keyword: cache}).logits
    return logits[:, -1].argmax(-1, keepdim=True)


MIN_BUCKET = 256


def bucket(tokens: int, context_length: int) -> int:
    """The static cache length for a request of `tokens` positions: a power of two, within the context."""
    size = MIN_BUCKET
    while size < tokens:
        size *= 2
    return min(size, context_length)


class CompiledDecoder:
    """Greedy decoding with a static KV cache and a compiled one-token step."""

    def __init__(self, model, context_length: int, device: str):
        self.model, self.context_length, self.device = model, context_length, device
        self.keyword = cache_keyword(model)
        self.caches: dict[tuple[int, int], object] = {}   # (batch, bucket) -> StaticCache; graphs keep its addresses
        mode = "reduce-overhead" if device.startswith("cuda") else "default"
        self.step = torch.compile(_decode_step, mode=mode, fullgraph=True, dynamic=False)

    def key(self, input_ids: torch.Tensor, max_new_tokens: int) -> tuple[int, int]:
        batch, length = input_ids.shape
        return batch, bucket(length + max_new_tokens, self.context_length)

    def is_compiled_for(self, input_ids: torch.Tensor, max_new_tokens: int) -> bool:
        """False when this request's shape needs a new graph (compile it in a warm-up, not in a measurement)."""
        return self.key(input_ids, max_new_tokens) in self.caches

    def _cache(self, key: tuple[int, int]):
        from transformers import StaticCache
        if key not in self.caches:
            self.caches[key] = StaticCache(config=self.model.config, max_cache_len=key[1])
        cache = self.caches[key]
        cache.reset()
        return cache

    def run(self, input_ids: torch.Tensor, max_new_tokens: int, on_token: Callable[[torch.Tensor], None],
            should_stop: Callable[[torch.Tensor], bool], attention_mask: torch.Tensor | None = None) -> None:
        """Prefill, then decode up to max_new_tokens; `on_token` gets each new (batch,) token on the host.

        `attention_mask` (batch, prompt) marks left padding with 0, as for generate(): padded rows
        then get the same positions and see the same tokens as they would alone.
        """
        batch, length = input_ids.shape
        key = self.key(input_ids, max_new_tokens)
        cache = self._cache(key)
        prompt_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(input_ids.dtype)
        mask = torch.ones(batch, key[1], dtype=input_ids.dtype, device=input_ids.device)
        mask[:, :length] = prompt_mask
        positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)         # as generate() numbers left-padded rows
        cache_positions = torch.arange(length, device=input_ids.device)
        logits = self.model(input_ids=input_ids, position_ids=positions, cache_position=cache_positions,
                            attention_mask=mask[:, :length], use_cache=True, **{self.keyword: cache}).logits
        token = logits[:, -1].argmax(-1, keepdim=True)
        host = token.cpu()
        on_token(host[:, 0])
        position = positions[:, -1:] + 1
        cache_position = torch.tensor([length], device=input_ids.device)
        for _ in range(max_new_tokens - 1):
            if should_stop(host):
                return
            token = self.step(self.model, token, position, cache_position, mask, cache, self.keyword).clone()
            host = token.cpu()                     # a loop must see each token (end of sequence): one sync a step
            on_token(host[:, 0])                   # (.clone() above: a CUDA graph reuses its output buffer)
            position += 1
            cache_position += 1


class TokenClock:
    """Times tokens after the first: CUDA events on a GPU (device timeline), perf_counter on a CPU."""

    def __init__(self, cuda: bool):
        self.cuda, self.count, self.first, self.last = cuda, 0, None, None

    def __call__(self, token) -> None:
        self.count += 1
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            mark = event
        else:
            mark = time.perf_counter()
        if self.count == 1:
            self.first = mark
        self.last = mark

    def tpot_s(self) -> float | None:
        if self.count < 2:
            return None
        if self.cuda:
            self.last.synchronize()
            seconds = self.first.elapsed_time(self.last) / 1000
        else:
            seconds = self.last - self.first
        return seconds / (self.count - 1)


class SpanClock:
    """Times one call: CUDA events around it on a GPU (device timeline), perf_counter on a CPU."""

    def __init__(self, cuda: bool):
        self.cuda = cuda

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            self.start = torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            end.synchronize()
            self.seconds = self.start.elapsed_time(end) / 1000
        else:
            self.seconds = time.perf_counter() - self.start
