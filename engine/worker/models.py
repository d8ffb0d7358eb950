"""Model and tokenizer from a preset: hub id / local path, or seeded random weights from a config.

Worker side: the loaders import torch and transformers. The orchestrator's view of a model (its
files, its config, its token counts) is engine/source.py, which imports neither.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from engine.source import cache_dir, model_location
from engine.worker.folders import made_once
from engine.worker.gguf import saved_package_model
from engine.worker.prompts import load_tokenizer

if TYPE_CHECKING:
    from engine.presets import Preset
    from engine.variants import Variant

def random_config(preset: Preset):
    """The transformers config of a random-weight preset."""
    from transformers import AutoConfig
    fields = dict(preset.config)
    model_type = fields.pop("model_type")
    return AutoConfig.for_model(model_type, **fields)


def saved_random_model(preset: Preset) -> Path:
    """A random-weight model saved once under the cache folder (made_once)."""
    digest = hashlib.sha256(json.dumps([preset.config, preset.seed, preset.dtype],
                                       sort_keys=True).encode()).hexdigest()[:12]
    return made_once(cache_dir() / f"{preset.name}-{digest}", lambda folder: _save_random_model(preset, folder),
                     f"the random-weight model of preset {preset.name!r}")


def _save_random_model(preset: Preset, folder: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM
    torch.manual_seed(preset.seed)
    model = AutoModelForCausalLM.from_config(random_config(preset), dtype=getattr(torch, preset.dtype))
    model.save_pretrained(folder)
    load_tokenizer(preset).save_pretrained(folder)


def quantization_config(variant: Variant, dtype):
    """The BitsAndBytesConfig for a bitsandbytes variant, or None (torchao's int4 quantizes after loading)."""
    if variant.quantization in (None, "int4"):
        return None
    from transformers import BitsAndBytesConfig
    if variant.quantization == "nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    return BitsAndBytesConfig(load_in_8bit=True)


def quantize_in_place(model, variant: Variant, dtype, device: str):
    """Swap every nn.Linear but the output head for its bitsandbytes twin, quantizing on `.to(device)`.

    Used for random weights made directly on the device, where there is no checkpoint for
    from_pretrained to quantize while loading; it gives the same modules as that path.
    """
    import bitsandbytes as bnb
    import torch
    skip = {"lm_head"}                       # the output head stays in full precision, as in transformers
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, torch.nn.Linear) or (parent_name == "" and name in skip):
                continue
            bias = child.bias is not None
            if variant.quantization == "nf4":
                new = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=bias, compute_dtype=dtype,
                                        quant_type="nf4", device="meta")
                new.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, quant_type="nf4")
            else:
                new = bnb.nn.Linear8bitLt(child.in_features, child.out_features, bias=bias,
                                          has_fp16_weights=False, device="meta")
                # Int8Params quantizes only on a move from the CPU (bitsandbytes 0.50): start from there
                new.weight = bnb.nn.Int8Params(child.weight.data.cpu(), requires_grad=False, has_fp16_weights=False)
            if bias:
                new.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
            new = new.to(device)
            if new.weight.dtype not in (torch.int8, torch.uint8):   # never run unquantized under a 4/8-bit label
                raise RuntimeError(f"bitsandbytes left {parent_name}.{name} unquantized ({new.weight.dtype})")
            setattr(parent, name, new)
    return model


INT4_GROUPS = (128, 64, 32)      # torchao's group sizes, largest first: one scale and zero per group


def _int4_linear(module, name: str) -> bool:
    """A layer that int4 quantizes: every nn.Linear but the output head, which stays in full precision."""
    import torch
    return isinstance(module, torch.nn.Linear) and name != "lm_head"


def int4_group_size(model) -> int:
    """The largest group size that divides the input width of every linear layer that int4 quantizes."""
    widths = {m.in_features for name, m in model.named_modules() if _int4_linear(m, name)}
    for group in INT4_GROUPS:
        if all(width % group == 0 for width in widths):
            return group
    raise ValueError(f"int4 needs linear layers whose input widths divide by 32; this model has {sorted(widths)}")


def quantize_int4(model, device: str):
    """Every nn.Linear but the output head to torchao's int4 weights, in place: tinygemm's tile-packed
    layout on a GPU (bfloat16), torchao's packed CPU layout on a CPU. Raises when a layer stays unquantized."""
    import torch
    from torchao.quantization import Int4WeightOnlyConfig, quantize_
    group = int4_group_size(model)
    if device.startswith("cuda"):
        config = Int4WeightOnlyConfig(group_size=group, int4_packing_format="tile_packed_to_4d")
    else:
        from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig
        config = PrototypeInt4WeightOnlyConfig(group_size=group)
    quantize_(model, config, filter_fn=_int4_linear)
    plain = [name for name, m in model.named_modules()
             if _int4_linear(m, name) and type(m.weight) in (torch.nn.Parameter, torch.Tensor)]
    if plain:                            # never run unquantized under an int4 label
        raise RuntimeError(f"torchao left {len(plain)} linear layers unquantized (the first: {plain[0]})")
    return model


def load_model(preset: Preset, variant: Variant, device: str):
    """(model, tokenizer) for one variant on `device` ("cpu" or "cuda:N"), in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM
    from engine.variants import bettertransformer_supported
    dtype = getattr(torch, preset.dtype)
    # transformers 4 (a legacy runtime, engine/runtimes.py) names the dtype torch_dtype
    kwargs = {"torch_dtype" if bettertransformer_supported() else "dtype": dtype,
              "attn_implementation": variant.attn_implementation}
    quant = quantization_config(variant, dtype)
    if preset.random_weights and not preset.cache_on_disk:
        torch.manual_seed(preset.seed)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(random_config(preset), **kwargs)
        if quant is not None:
            model = quantize_in_place(model, variant, dtype, device)
        tokenizer = load_tokenizer(preset, model.config.vocab_size)
    else:
        if preset.random_weights:
            source = str(saved_random_model(preset))
        elif preset.source == "package":
            source = str(saved_package_model(preset))
        else:
            source = model_location(preset)
        if quant is not None:
            kwargs["quantization_config"] = quant
        model = AutoModelForCausalLM.from_pretrained(source, device_map={"": device}, **kwargs)
        tokenizer = load_tokenizer(preset)
    if variant.quantization == "int4":
        model = quantize_int4(model, device)
    if variant.bettertransformer and bettertransformer_supported():
        model = model.to_bettertransformer()
    model.eval()
    return model, tokenizer


def weights_bytes(model) -> int:
    """Bytes of parameters and buffers as stored (quantized weights count at their packed size). A
    torchao weight is a tensor subclass whose own size is the unquantized one: its inner tensors count."""
    total = int(model.get_memory_footprint())
    for tensor in model.parameters():
        if type(tensor).__module__.startswith("torchao"):
            names, _ = tensor.__tensor_flatten__()
            total += sum(getattr(tensor, name).nbytes for name in names) - tensor.nelement() * tensor.element_size()
    return total


def input_table_bytes(model) -> int:
    """Bytes of the input embedding table unless the output head shares it.

    A decode step gathers one row of that table per sequence; counting all of it as read would
    overstate MBU (by 7% for Llama-3.1-8B, whose 128k-token table is 1 GB of its 16 GB).
    """
    table = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    if head is not None and head.weight.data_ptr() == table.data_ptr():
        return 0                                   # tied: the head reads the whole matrix every step
    return table.numel() * table.element_size()


def kv_cache_shape(model) -> dict:
    """The facts that size the KV cache: layers, key/value heads, head dim (from the config)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return {"layers": config.num_hidden_layers,
            "kv_heads": getattr(config, "num_key_value_heads", None) or heads,
            "head_dim": head_dim}
