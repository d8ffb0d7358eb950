"""Memory budget: estimate each variant's footprint before loading, and choose which stay resident.

Estimates come from the architecture (config fields), not from loading anything: weights at the
variant's precision, the KV cache for the preset's whole context, and a margin for activations.
"""
from __future__ import annotations

from dataclasses import dataclass

from engine import hardware
from engine.presets import Preset
from engine.source import architecture
from engine.variants import Variant

BYTES_PER_PARAM = {"float32": 4.0, "float16": 2.0, "bfloat16": 2.0}
# + block scales / outlier slack; int4: a bfloat16 scale and zero per group of 128
QUANTIZED_BYTES_PER_PARAM = {"nf4": 0.5 + 0.0625, "int8": 1.0 + 0.0625, "int4": 0.5 + 4 / 128}
GATED_MLP = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "olmo", "granite", "smollm3"}
ACTIVATION_MARGIN = 0.15          # share of weights + cache kept free for activations and fragmentation
CUDA_CONTEXT_BYTES = 600 * 2**20  # each CUDA process holds a context of roughly this size
HEADROOM = 0.10                   # share of free memory never planned: fragmentation, other processes,
HEADROOM_MAX_BYTES = 4 * 2**30    # at most this much: on a large card the estimates' own margins cover the rest
# the compiled variant keeps a static KV cache (and a CUDA graph) per request shape for reuse, up to
# this many whole contexts' worth at batch 1 (worker/decode.py evicts the least recently used)
STATIC_CACHE_CONTEXTS = 2


def _first(config: dict, *keys, default=None):
    for key in keys:
        if config.get(key) is not None:
            return config[key]
    return default


@dataclass(frozen=True)
class Footprint:
    """Estimated bytes of one variant on its device."""
    params: int
    weights_bytes: int
    kv_cache_bytes: int
    load_peak_bytes: int          # quantizing random weights in place first holds them at full precision
    total_bytes: int


def footprint(preset: Preset, variant: Variant, cuda: bool) -> Footprint | None:
    """Estimated footprint; None when the architecture is unknown (no config.json cached). A served
    variant holds nothing here."""
    if variant.remote:
        return Footprint(0, 0, 0, 0, 0)
    config = architecture(preset)
    if not config:
        return None
    hidden = _first(config, "hidden_size", "d_model", "n_embd")
    layers = _first(config, "num_hidden_layers", "n_layer", "num_layers")
    vocab = _first(config, "vocab_size", default=32000)
    if not hidden or not layers:
        return None
    heads = _first(config, "num_attention_heads", "n_head", default=1)
    kv_heads = _first(config, "num_key_value_heads", "num_kv_heads", default=heads)
    head_dim = _first(config, "head_dim", default=hidden // heads)
    inner = _first(config, "intermediate_size", "ffn_dim", "n_inner", default=4 * hidden)
    gated = config.get("model_type") in GATED_MLP
    attention = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim
    mlp = (3 if gated else 2) * hidden * inner
    tied = config.get("tie_word_embeddings", False)
    params = int(layers * (attention + mlp) + vocab * hidden * (1 if tied else 2))
    full = BYTES_PER_PARAM[preset.dtype]
    embeddings = vocab * hidden * (1 if tied else 2)
    if variant.quantization:
        weights = (params - embeddings) * QUANTIZED_BYTES_PER_PARAM[variant.quantization] + embeddings * full
    else:
        weights = params * full
    kv = 0 if not variant.use_cache else 2 * layers * kv_heads * head_dim * preset.context_length * full
    if variant.compile:
        kv *= STATIC_CACHE_CONTEXTS
    load_peak = params * full if (variant.quantization and preset.random_weights) else weights
    total = max(weights + kv, load_peak) * (1 + ACTIVATION_MARGIN) + (CUDA_CONTEXT_BYTES if cuda else 0)
    return Footprint(params, int(weights), int(kv), int(load_peak), int(total))


def plan(preset: Preset, variants: list[Variant], free_bytes: int, cuda: bool) -> dict[str, str]:
    """variant name -> "resident" or "swapped".

    When all fit together, all stay resident. Otherwise room for the largest variant is kept
    free, variants stay resident in order while they fit in the rest, and the others run one
    after another in that room, each unloaded before the next. A variant whose footprint is
    unknown (no cached config) counts as the largest known one.
    """
    free_bytes = int(free_bytes - min(free_bytes * HEADROOM, HEADROOM_MAX_BYTES))
    estimates = {v.name: footprint(preset, v, cuda) for v in variants}
    known = [f.total_bytes for f in estimates.values() if f is not None]
    sizes = {name: (f.total_bytes if f else max(known, default=0)) for name, f in estimates.items()}
    if sum(sizes.values()) <= free_bytes:
        return {v.name: "resident" for v in variants}
    room = free_bytes - max(sizes.values())
    placement, used = {}, 0
    for variant in variants:
        if used + sizes[variant.name] <= room:
            placement[variant.name] = "resident"
            used += sizes[variant.name]
        else:
            placement[variant.name] = "swapped"
    return placement


def assign(preset: Preset, variants: list[Variant], devices, fixed: dict[str, int] | None = None) -> dict[str, int]:
    """variant name -> the index of the GPU its worker goes to, on a host with several (`devices`: each
    with `index` and `free_bytes`). One worker per GPU while a GPU has none: the largest first, each to
    the emptiest GPU with room for it; past one each, the next goes where the most room is left. A
    variant that fits no GPU goes to the one with the most room (its plan there swaps). `fixed`: the
    variants whose workers are loaded already, on the GPU they are on. Served variants hold no GPU here."""
    fixed = dict(fixed or {})
    local = [v for v in variants if not v.remote]
    sizes = {}
    for v in local:
        estimate = footprint(preset, v, cuda=True)
        sizes[v.name] = estimate.total_bytes if estimate else 0
    room = {d.index: d.free_bytes - min(d.free_bytes * HEADROOM, HEADROOM_MAX_BYTES) for d in devices}
    count = dict.fromkeys(room, 0)
    placed = {}
    for name, index in fixed.items():
        if name in sizes and index in room:
            placed[name] = index
            count[index] += 1                  # its memory is already outside the free bytes
    for v in sorted((v for v in local if v.name not in placed), key=lambda v: -sizes[v.name]):
        fits = [i for i in room if room[i] >= sizes[v.name]]
        index = min(fits or list(room), key=lambda i: (count[i], -room[i], i))
        placed[v.name] = index
        room[index] -= sizes[v.name]
        count[index] += 1
    return {v.name: placed[v.name] for v in local}


def free_bytes(device: hardware.Device) -> int:
    """Memory free on the device now (NVML on a GPU, available RAM on a CPU)."""
    if device.kind == "cpu":
        return hardware.cpu_device().free_bytes
    gpus = hardware.cuda_devices()
    return gpus[device.index].free_bytes if device.index < len(gpus) else device.free_bytes


def held_bytes(device: hardware.Device, loaded: dict, names) -> int:
    """Device memory that the named loaded workers hold (their weights); `loaded`: name -> Loaded.
    On a CPU their memory is already outside the available RAM the plan starts from."""
    return 0 if device.kind == "cpu" else sum(event.weights_bytes for name, event in loaded.items()
                                              if name in names)
