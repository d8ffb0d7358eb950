"""The compiled static-cache decoder (worker side), and the clocks that time bare decode loops.

The compiled decoder follows gpt-fast: a KV cache of fixed size so every decode step has the
same shapes, and one `torch.compile`d step, captured as a CUDA graph on a GPU
("reduce-overhead"), so a step costs one graph launch instead of hundreds of kernel launches
from Python. Prefill runs uncompiled (its length varies).

Each decode step attends over the whole static cache (masked past the current position), so a
cache of the preset's full context makes short requests read and score thousands of empty
positions per layer. The cache is sized in power-of-two buckets of the request instead
(prompt + new tokens, at least MIN_BUCKET): one cache and one CUDA graph per bucket, and the
cache's length is a dynamic dimension of the compiled step, so a new bucket does not compile
again (the batch stays static: inductor turns one-row matmuls into tuned GEMVs only for batch 1).
The caches kept for reuse hold at most STATIC_CACHE_CONTEXTS whole contexts at batch 1 (what the
memory budget counts for this variant): past that the least recently used are let go, so a long
session of sweeps over lengths and batch sizes does not grow the worker's memory without bound.

The step is the engine's fused step for Llama-family models (engine/worker/fused.py), else the
model's own forward. The loop queues the next step before it waits for the current token, so
the host's work per token overlaps the device's.
"""
from __future__ import annotations

import inspect
import time
from collections import OrderedDict
from collections.abc import Callable

import torch

from engine.budget import STATIC_CACHE_CONTEXTS
from engine.worker.fused import FusedLlamaStep, unsupported_reason, visible_positions
from engine.worker.models import kv_cache_shape


def cache_keyword(model) -> str:
    """transformers renamed `past_key_values` to `cache` in forward() (5.2x); accept both."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _decode_step(model, token: torch.Tensor, position_ids: torch.Tensor, cache_position: torch.Tensor,
                 attention_mask: torch.Tensor, cache, keyword: str, mask_kind: str | None = None) -> torch.Tensor:
    """One token for every sequence: token (batch, 1) at cache_position (1,) -> the next (batch, 1).

    `attention_mask` (batch, cache length) is 0 at the prompt's pad positions and 1 elsewhere: its
    shape never changes, so the step compiles once (without it, some models build a mask from the
    cache's fill level, a data-dependent shape that cannot be compiled).

    `mask_kind` ("bool" for SDPA, "additive" for eager attention; see `mask_kind`) makes the step
    build the attention's own 4D mask, pads and positions past the current one hidden, which
    transformers passes through as it is. transformers' mask code reads the cache's length as a
    Python number, so given the 2D mask the step compiles again for every cache bucket; given the
    4D one, one compile serves them all. None: the 2D mask, for transformers to build the rest.
    """
    if mask_kind is not None:
        visible = visible_positions(attention_mask, cache_position)[:, None, None, :]      # (batch, 1, 1, cache)
        if mask_kind == "bool":
            attention_mask = visible
        else:
            dtype = model.get_input_embeddings().weight.dtype
            attention_mask = torch.zeros(visible.shape, dtype=dtype, device=token.device).masked_fill(
                ~visible, torch.finfo(dtype).min)
    logits = model(input_ids=token, position_ids=position_ids, cache_position=cache_position,
                   attention_mask=attention_mask, use_cache=True, **{keyword: cache}).logits
    return logits[:, -1].argmax(-1, keepdim=True)


def mask_kind(model) -> str | None:
    """The 4D mask the forward step can build itself for this model, or None to leave masks to transformers.

    Only where every layer attends causally to every earlier position (no sliding window, no
    chunks, no layers of another type) and the attention is SDPA (a boolean mask) or eager (an
    additive one); any other model keeps transformers' own masks, and a compile per bucket.
    """
    config = model.config
    if getattr(config, "sliding_window", None) or getattr(config, "attention_chunk_size", None):
        return None
    if any(kind != "full_attention" for kind in getattr(config, "layer_types", None) or ()):
        return None
    return {"sdpa": "bool", "eager": "additive"}.get(getattr(config, "_attn_implementation", None))


MIN_BUCKET = 256

# On a GPU: capture the step as a CUDA graph ("reduce-overhead"), and gpt-fast's setting,
# coordinate-descent tuning, under which inductor turns every one-row matmul of a decode step
# (a GEMV) into a Triton reduction whose block sizes it tunes, instead of calling cuBLAS.
CUDA_INDUCTOR = {"triton.cudagraphs": True, "coordinate_descent_tuning": True}


def bucket(tokens: int, context_length: int) -> int:
    """The static cache length for a request of `tokens` positions: a power of two, within the context."""
    size = MIN_BUCKET
    while size < tokens:
        size *= 2
    return min(size, context_length)


def _fused_step(fused, token, position_ids, cache_position, attention_mask, cache, keyword,
                mask_kind=None) -> torch.Tensor:
    """_decode_step's signature over the fused step (which builds its own mask from the 2D one)."""
    return fused(token, position_ids, cache_position, attention_mask, cache)


class CompiledDecoder:
    """Greedy decoding with a static KV cache and a compiled one-token step."""

    def __init__(self, model, context_length: int, device: str, inductor: dict | None = None,
                 fused: bool | None = None, fused_attention: str = "sdpa"):
        """`inductor`: inductor's options for the step (default: CUDA_INDUCTOR on a GPU, none on a CPU).
        `fused`: the engine's fused step for Llama-family models (engine/worker/fused.py) instead of the
        model's forward; None uses it where the model qualifies. `fused_attention`: its formulation
        of attention, "sdpa" or "reduce" (see engine/worker/fused.py)."""
        self.model, self.context_length, self.device = model, context_length, device
        self.keyword = cache_keyword(model)
        # (batch, bucket) -> StaticCache, least recently used first; graphs keep its addresses
        self.caches: OrderedDict[tuple[int, int], object] = OrderedDict()
        shape = kv_cache_shape(model)
        self.position_bytes = 2 * shape["layers"] * shape["kv_heads"] * shape["head_dim"] * model.dtype.itemsize
        self.cache_budget_bytes = STATIC_CACHE_CONTEXTS * context_length * self.position_bytes
        self.cuda = device.startswith("cuda")
        # one compile per batch size (and per bucket where the step fixes the cache's length): past
        # dynamo's default of 8 it would run the step uncompiled, unannounced; allow more, and fail
        # loudly rather than fall back (this process serves one variant: the settings are its own)
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        torch._dynamo.config.fail_on_recompile_limit_hit = True
        self.inductor = dict(CUDA_INDUCTOR if self.cuda else {}) if inductor is None else dict(inductor)
        if fused is None:
            fused = unsupported_reason(model) is None
        self.fused = FusedLlamaStep(model, fused_attention) if fused else None   # refuses a model it cannot do
        self.stepper = self.fused if self.fused is not None else model     # what the compiled step calls
        self.mask_kind = None if self.fused is not None else mask_kind(model)
        self.step = torch.compile(_fused_step if self.fused is not None else _decode_step,
                                  options=self.inductor or None, fullgraph=True, dynamic=False)

    @property
    def step_kind(self) -> str:
        if self.fused is None:
            return "transformers forward"
        attention = "" if self.fused.attention == "sdpa" else f", {self.fused.attention} attention"
        return "fused Llama step" + attention

    def key(self, input_ids: torch.Tensor, max_new_tokens: int) -> tuple[int, int]:
        batch, length = input_ids.shape
        return batch, bucket(length + max_new_tokens, self.context_length)

    def is_ready_for(self, input_ids: torch.Tensor, max_new_tokens: int) -> bool:
        """False when this request's shape needs a new cache and CUDA graph (or a compile): make them in a
        warm-up, not in a measurement."""
        return self.key(input_ids, max_new_tokens) in self.caches

    def cache_bytes(self, key: tuple[int, int]) -> int:
        """What the static cache of shape `key` (batch, length) holds."""
        return key[0] * key[1] * self.position_bytes

    @property
    def held_bytes(self) -> int:
        return sum(self.cache_bytes(key) for key in self.caches)

    def _cache(self, key: tuple[int, int]):
        from transformers import StaticCache
        if key not in self.caches:
            # let the least recently used go until this one fits the budget (alone, it always may)
            evicted = False
            while self.caches and self.held_bytes + self.cache_bytes(key) > self.cache_budget_bytes:
                self.caches.popitem(last=False)
                evicted = True
            if evicted and self.cuda:
                torch.cuda.empty_cache()         # what they held goes back to the device, not to this process
            self.caches[key] = StaticCache(config=self.model.config, max_cache_len=key[1])
        self.caches.move_to_end(key)
        cache = self.caches[key]
        cache.reset()
        return cache

    def run(self, input_ids: torch.Tensor, max_new_tokens: int, on_token: Callable[[torch.Tensor, object], None],
            should_stop: Callable[[torch.Tensor], bool], attention_mask: torch.Tensor | None = None) -> None:
        """Prefill, then decode up to max_new_tokens greedily.

        `on_token(tokens, ready)` gets each new (batch,) token on the host, with `ready`, a CUDA
        event recorded when the device had it (None on a CPU). `attention_mask` (batch, prompt)
        marks left padding with 0, as for generate(): padded rows then get the same positions and
        see the same tokens as they would alone.

        On a GPU the host never leaves the device idle: step n+1 is queued before the host waits
        for token n, so streaming a token, checking for the end and launching the next graph all
        overlap the step that is running; a stop is seen one step late and that step's token is
        dropped, never streamed. On a CPU, where a step runs to its end before the call returns,
        each token is streamed before the next step starts (waiting would delay every token by a
        step).
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
        # the cache's length may vary between compiled steps (the prefill has just made its tensors):
        # one compile serves every bucket, each bucket costs only its CUDA graph. A step that fixes
        # the length (transformers' mask code, where mask_kind left it the masks) compiles once per bucket.
        for layer in cache.layers:
            torch._dynamo.maybe_mark_dynamic(layer.keys, 2)
            torch._dynamo.maybe_mark_dynamic(layer.values, 2)
        torch._dynamo.maybe_mark_dynamic(mask, 1)
        token = logits[:, -1].argmax(-1, keepdim=True)
        position = positions[:, -1:] + 1
        cache_position = torch.tensor([length], device=input_ids.device)
        lag = 1 if self.cuda else 0                # steps queued ahead of the token being streamed
        pending = [self._to_host(token)]
        for _ in range(max_new_tokens - 1):
            if len(pending) > lag and self._stream(pending.pop(0), on_token, should_stop):
                return
            if self.cuda:
                torch.compiler.cudagraph_mark_step_begin()
            token = self.step(self.stepper, token, position, cache_position, mask, cache, self.keyword,
                              self.mask_kind).clone()
            position += 1                          # (.clone(): a CUDA graph reuses its output buffer)
            cache_position += 1
            pending.append(self._to_host(token))   # queued behind the step
        while pending:
            if self._stream(pending.pop(0), on_token, should_stop):
                return

    @staticmethod
    def _stream(copied: tuple[torch.Tensor, object], on_token, should_stop) -> bool:
        """Wait for a token's copy to the host, hand it on; True when the loop must stop."""
        host, ready = copied
        if ready is not None:
            ready.synchronize()
        on_token(host[:, 0], ready)
        return should_stop(host)

    def _to_host(self, token: torch.Tensor) -> tuple[torch.Tensor, object]:
        """Start copying a token to the host; (host tensor, CUDA event to wait on, or None on a CPU)."""
        if not self.cuda:
            return token, None
        host = token.to("cpu", non_blocking=True)                     # into pinned memory, asynchronously
        ready = torch.cuda.Event(enable_timing=True)
        ready.record()
        return host, ready


class TokenClock:
    """Times tokens after the first: on the device's timeline on a GPU, perf_counter on a CPU.

    Called as `clock(tokens, ready)`: `ready` is the CUDA event of the token (None on a CPU).
    """

    def __init__(self, cuda: bool):
        self.cuda, self.count, self.first, self.last = cuda, 0, None, None

    def __call__(self, token, ready=None) -> None:
        self.count += 1
        if self.cuda:
            mark = ready
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
