"""A decode step for Llama-family models written the gpt-fast way, over the model's own weights.

transformers' forward, compiled, spends a decode step in many small matrix-vector products and
the kernels between them. This step does the same arithmetic with fewer, larger reads:

- q, k and v are one matrix (and gate and up another): one GEMV reads each instead of three (two).
  The model keeps working unchanged: its q/k/v and gate/up weights become views into the fused
  matrices, so no weight is stored twice.
- grouped-query attention without copying keys and values per query head: with one query
  position, the query heads that share a key/value head become rows of one query
  (batch, kv heads, group, head dim), so the kernel reads each cached key and value once.

Attention comes in two formulations of the same maths. "sdpa" calls scaled_dot_product_attention
with a boolean mask. A masked SDPA kernel parallelises over batch x heads x query blocks (8 blocks
for the Llama-3.1-8B shape at batch 1), so a few SMs read the whole cache: on a GPU a long cache
slows the step far more than its share of the bytes read (BENCHMARKS.md, the H200's second run,
`compiled` at prompts 128 and 2048). "reduce" writes the scores, softmax and weighted sum as
float32 products and sums, which inductor turns into reductions that it splits over the cache's
length when their output is small and the reduction long (the parallelism of flash-decoding).
Which one is the default is for a measurement on a GPU to decide (scripts/compile_probe.py
--long-prompt 2048: fused against fusedreduce).

Prefill stays transformers' own forward: it fills the same StaticCache this step reads and writes.
`unsupported_reason(model)` says why a model does not qualify (None when it does); the step refuses those.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

FAMILY = ("llama", "mistral", "qwen2")       # RMSNorm, rotary positions, grouped-query attention, SwiGLU
ATTENTION = ("sdpa", "reduce")


def unsupported_reason(model) -> str | None:
    """None when the fused step computes what this model's forward computes; else why not."""
    config = model.config
    if config.model_type not in FAMILY:
        return f"model type {config.model_type!r} is not one of {', '.join(FAMILY)}"
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return "sliding-window attention"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act!r}"
    if getattr(config, "mlp_bias", False) or getattr(config, "pretraining_tp", 1) != 1:
        return "MLP bias or tensor-parallel slicing"
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        for module in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj,
                       mlp.down_proj):
            if type(module) is not nn.Linear:          # a subclass (bitsandbytes) stores other weights
                return f"{type(module).__name__} layers, not plain Linear ones (quantized weights, for one)"
            if type(module.weight) is not nn.Parameter:   # a tensor subclass (torchao's int4) cannot be fused
                return f"{type(module.weight).__name__} weights (quantized), not plain ones"
    return None


def _fuse(linears: list[nn.Linear]) -> tuple[nn.Parameter, nn.Parameter | None]:
    """One weight (and bias) for several Linear layers of the same input; they become views of it."""
    weight = torch.cat([linear.weight.data for linear in linears])
    bias = None
    if linears[0].bias is not None:
        bias = torch.cat([linear.bias.data for linear in linears])
    start = 0
    for linear in linears:
        rows = linear.out_features
        linear.weight.data = weight[start:start + rows]          # the unfused tensor is freed here
        if bias is not None:
            linear.bias.data = bias[start:start + rows]
        start += rows
    return nn.Parameter(weight, requires_grad=False), None if bias is None else nn.Parameter(bias, requires_grad=False)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Exactly LlamaRMSNorm: in float32, then back to the input's dtype before the weight."""
    hidden = x.float()
    hidden = hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + eps)
    return weight * hidden.to(x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def visible_positions(attention_mask: torch.Tensor, cache_position: torch.Tensor) -> torch.Tensor:
    """(batch, cache length) True where a decode step at `cache_position` may attend: the prompt's
    pads (0 in the 2D `attention_mask`) and the positions past the current one are hidden."""
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    return attention_mask.bool() & (positions <= cache_position)


def reduce_attention(group: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, visible: torch.Tensor,
                     scale: float) -> torch.Tensor:
    """SDPA's result for group (batch, kv heads, group, d) over keys and values (batch, kv heads, cache, d).

    Products and sums, not matmuls: inductor keeps them as reductions (a batched matmul would go to
    cuBLAS, with no split over the cache) and fuses the broadcasts, so (group, cache, d) is never
    stored when compiled; eager, which only tests use, does store it.
    """
    scores = (group.float()[..., None, :] * keys.float()[:, :, None]).sum(-1) * scale     # (b, kv, group, cache)
    scores = scores.masked_fill(~visible[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return (probs[..., None] * values.float()[:, :, None]).sum(-2).to(group.dtype)


class _Layer(nn.Module):
    def __init__(self, layer):
        super().__init__()
        attn, mlp = layer.self_attn, layer.mlp
        self.qkv, self.qkv_bias = _fuse([attn.q_proj, attn.k_proj, attn.v_proj])
        self.gate_up, _ = _fuse([mlp.gate_proj, mlp.up_proj])
        self.o, self.o_bias = attn.o_proj.weight, attn.o_proj.bias
        self.down = mlp.down_proj.weight
        self.norm_in, self.norm_post = layer.input_layernorm.weight, layer.post_attention_layernorm.weight
        self.eps = layer.input_layernorm.variance_epsilon
        self.q_size, self.kv_size = attn.q_proj.out_features, attn.k_proj.out_features
        self.head_dim, self.scaling = attn.head_dim, attn.scaling


class FusedLlamaStep(nn.Module):
    """`step(token, position_ids, cache_position, attention_mask, cache)` -> the next greedy token.

    `attention`: "sdpa" or "reduce", the formulation of attention (see the module's docstring)."""

    def __init__(self, model, attention: str = "sdpa"):
        super().__init__()
        if attention not in ATTENTION:
            raise ValueError(f"unknown attention {attention!r} for the fused decode step: use "
                             f"{' or '.join(map(repr, ATTENTION))}")
        reason = unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"the fused decode step does not support this model: {reason}")
        self.attention = attention
        self.embed = model.model.embed_tokens.weight
        self.rotary = model.model.rotary_emb
        self.layers = nn.ModuleList(_Layer(layer) for layer in model.model.layers)
        self.norm, self.eps = model.model.norm.weight, model.model.norm.variance_epsilon
        self.head = model.lm_head.weight

    def forward(self, token: torch.Tensor, position_ids: torch.Tensor, cache_position: torch.Tensor,
                attention_mask: torch.Tensor, cache) -> torch.Tensor:
        batch = token.shape[0]
        x = F.embedding(token, self.embed)                                   # (batch, 1, hidden)
        cos, sin = self.rotary(x, position_ids)                              # (batch, 1, head_dim)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        visible = visible_positions(attention_mask, cache_position)
        for layer, kv in zip(self.layers, cache.layers):
            heads, kv_heads = layer.q_size // layer.head_dim, layer.kv_size // layer.head_dim
            qkv = F.linear(_rms_norm(x, layer.norm_in, layer.eps), layer.qkv, layer.qkv_bias)
            q, k, v = qkv.split((layer.q_size, layer.kv_size, layer.kv_size), dim=-1)
            q = q.view(batch, heads, 1, layer.head_dim)                      # one position: (b, heads, 1, d)
            k = k.view(batch, kv_heads, 1, layer.head_dim)
            v = v.view(batch, kv_heads, 1, layer.head_dim)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            kv.keys.index_copy_(2, cache_position, k)
            kv.values.index_copy_(2, cache_position, v)
            # the heads of a group share one key/value head: make them the rows of one query
            group = q.view(batch, kv_heads, heads // kv_heads, layer.head_dim)
            if self.attention == "sdpa":
                out = F.scaled_dot_product_attention(group, kv.keys, kv.values, attn_mask=visible[:, None, None, :],
                                                     scale=layer.scaling)
            else:
                out = reduce_attention(group, kv.keys, kv.values, visible, layer.scaling)
            x = x + F.linear(out.reshape(batch, 1, layer.q_size), layer.o, layer.o_bias)
            gate, up = F.linear(_rms_norm(x, layer.norm_post, layer.eps), layer.gate_up).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, layer.down)
        logits = F.linear(_rms_norm(x[:, -1], self.norm, self.eps), self.head)
        return logits.argmax(-1, keepdim=True)
