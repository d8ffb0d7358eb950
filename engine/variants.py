"""The variant catalog: name -> how to load and run the model, and why it cannot run here.

A recipe is data: the worker reads its fields; no variant name appears in worker or UI code.
`unavailable_reason` is checked in the orchestrator (no torch import) and gives the sentence
shown to the user instead of a crash.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.hardware import Device
    from engine.presets import Preset

HALF = ("float16", "bfloat16")
REFERENCE = "baseline"              # the variant every other is compared with (speedup, first diff)


def installed_version(package: str) -> str | None:
    """Version of an installed distribution, without importing it."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def bettertransformer_supported() -> bool:
    """`model.to_bettertransformer()` exists only with transformers < 5 and optimum < 2."""
    transformers, optimum = installed_version("transformers"), installed_version("optimum")
    return bool(transformers and optimum and int(transformers.split(".")[0]) < 5
                and int(optimum.split(".")[0]) < 2)


@dataclass(frozen=True)
class Variant:
    """A load recipe. Fields say what the variant changes against the baseline."""
    name: str
    label: str
    summary: str                         # one sentence: what it trades
    attn_implementation: str = "sdpa"    # passed to from_pretrained / from_config
    sdpa_backend: str | None = None      # force a torch.nn.attention.SDPBackend, e.g. "FLASH_ATTENTION"
    quantization: str | None = None      # "nf4" (4-bit) or "int8" (bitsandbytes); "int4" (torchao)
    bettertransformer: bool = False      # convert with optimum where the installed versions allow
    compile: bool = False                # static KV cache + torch.compile of the decode step
    use_cache: bool = True               # False recomputes all positions at every step
    remote: bool = False                 # a served model (engine/remote.py): nothing loads here
    launch: str | None = None            # the engine kind the dashboard starts for it (engine/launch.py)
    runtime: str | None = None           # the environment its worker runs in (engine/runtimes.py); None: the app's

    def unavailable_reason(self, preset: Preset, device: Device) -> str | None:
        """Why this variant cannot run with this preset on this device; None when it can."""
        if self.launch is not None:
            from engine.launch import reason
            return reason(self.launch, preset)
        if self.runtime is not None:
            from engine.runtimes import Runtime
            missing = Runtime(self.runtime).missing()
            if missing:
                return missing
        for check in CHECKS.get(self.name, ()):
            reason = check(preset, device)
            if reason:
                return reason
        return None

    def display_label(self) -> str:
        """The label, saying when BetterTransformer is replaced by native SDPA, and which FlashAttention
        or torchao release runs (the report keeps the label of what ran)."""
        if self.runtime is not None:           # its worker's environment, or (here) the runtime's name
            if not bettertransformer_supported():
                return f"{self.label} ({self.runtime} runtime)"
            versions = ", ".join(f"{p} {installed_version(p)}" for p in ("transformers", "optimum", "torch"))
            return f"{self.label} ({self.runtime}: {versions})"
        if self.bettertransformer and not bettertransformer_supported():
            return self.label.replace("BetterTransformer", "SDPA") + \
                " (BetterTransformer is native SDPA in transformers 5)"
        package = {"flash_attention_2": "flash-attn"}.get(self.attn_implementation) or \
            ("torchao" if self.quantization == "int4" else None)
        version = installed_version(package) if package else None
        return f"{self.label} ({package} {version})" if version else self.label


def _needs_cuda(what: str):
    def check(preset: Preset, device: Device) -> str | None:
        if device.kind != "cuda":
            return f"{what} needs an NVIDIA GPU (CUDA); this preset runs on the CPU"
        return None
    return check


def _needs_capability(major: int, minor: int, what: str):
    def check(preset: Preset, device: Device) -> str | None:
        cc = device.compute_capability
        if device.kind == "cuda" and cc is not None and tuple(cc) < (major, minor):
            return (f"{what} needs compute capability {major}.{minor} or more (Ampere or newer); "
                    f"{device.name} has {cc[0]}.{cc[1]}")
        return None
    return check


def _needs_half(what: str):
    def check(preset: Preset, device: Device) -> str | None:
        if preset.dtype not in HALF:
            return (f"{what} runs in float16 or bfloat16 only; preset {preset.name!r} uses {preset.dtype}: "
                    "choose a bf16/fp16 preset")
        return None
    return check


def _needs_package(package: str, hint: str):
    def check(preset: Preset, device: Device) -> str | None:
        if importlib.util.find_spec(package) is None:
            return f"the {package} package is not installed: {hint}"
        return None
    return check


def _needs_half_on_cuda(what: str):
    def check(preset: Preset, device: Device) -> str | None:
        if device.kind == "cuda":
            return _needs_half(what)(preset, device)
        return None
    return check


BNB_HINT = "pip install bitsandbytes"
TORCHAO_HINT = "pip install torchao (0.18)"
FA_HINT = "install a flash-attn wheel built for this torch and CUDA (see README: FlashAttention-2)"


def _int4_kernel(preset: Preset, device: Device) -> str | None:
    """torchao's int4 kernels: on a GPU tinygemm's, which takes bfloat16 on Ampere or newer; on a CPU
    its own packed layout, in any float precision."""
    if device.kind == "cuda" and preset.dtype != "bfloat16":
        return (f"torchao's int4 GPU kernel (tinygemm) takes bfloat16 activations; this preset is "
                f"{preset.dtype}: use a bfloat16 preset")
    return None


BETTERTRANSFORMER_TYPES = ("opt", "bloom", "gpt_neo", "gptj", "codegen")     # what it converts (optimum 1.27)


def _converts():
    def check(preset: Preset, device: Device) -> str | None:
        model_type = (preset.config or {}).get("model_type") if preset.random_weights else _model_type(preset)
        if model_type and model_type not in BETTERTRANSFORMER_TYPES:
            return (f"BetterTransformer converts {', '.join(BETTERTRANSFORMER_TYPES)} decoders; this preset's model "
                    f"is {model_type} (optimum: natively supported or not convertible): choose an OPT preset")
        return None
    return check


def _model_type(preset: Preset) -> str | None:
    from engine.source import architecture
    return (architecture(preset) or {}).get("model_type")


def _runtime_has(package: str, runtime: str):
    def check(preset: Preset, device: Device) -> str | None:
        from engine.runtimes import Runtime
        found = Runtime(runtime)
        if found.made and found.package_version(package) is None:
            return f"the {runtime} runtime has no {package}: {found.python} -m pip install {package}"
        return None
    return check


CATALOG: dict[str, Variant] = {v.name: v for v in (
    Variant(REFERENCE, "Eager attention", "Plain PyTorch attention: materialises the full attention "
            "matrix; the reference every other variant is compared with.", attn_implementation="eager"),
    Variant("sdpa", "PyTorch SDPA", "torch.nn.functional.scaled_dot_product_attention picks a fused "
            "kernel (flash, memory-efficient, cuDNN or math) for each call: from torch 2.11, cuDNN on "
            "Hopper and Blackwell GPUs, which builds a plan the first time it meets a sequence length."),
    Variant("sdpa-flash", "SDPA, flash backend forced", "PyTorch's built-in FlashAttention-2 kernel, "
            "forced: fails instead of silently falling back.", sdpa_backend="FLASH_ATTENTION"),
    Variant("fa2", "FlashAttention-2", "The flash-attn package's kernels: tiled attention that never "
            "writes the attention matrix to memory.", attn_implementation="flash_attention_2"),
    Variant("bnb-4bit", "4-bit NF4 + BetterTransformer", "bitsandbytes NF4 weights: about a quarter of "
            "the memory of 16-bit weights, dequantised on the fly.", quantization="nf4",
            bettertransformer=True),
    Variant("bnb-8bit", "8-bit LLM.int8()", "bitsandbytes 8-bit weights: half the memory of 16-bit, "
            "outliers kept in 16 bits.", quantization="int8"),
    Variant("compiled", "Static cache + torch.compile", "A fixed-size KV cache lets torch.compile "
            "capture the decode step as one CUDA graph (for Llama-family models, a step with fused "
            "q/k/v and gate/up weights); compile time counts as warm-up.", compile=True),
    Variant("int4", "int4 weights + static cache + torch.compile", "torchao's int4 weight-only "
            "quantization, a quarter of the bytes of 16-bit weights, read by a kernel that unpacks them "
            "inside the matrix product (tinygemm on a GPU, a packed CPU layout here), compiled with a static "
            "cache like compiled: fewer bytes per token where bitsandbytes at batch 1 is slower than 16-bit.",
            quantization="int4", compile=True),
    Variant("no-kv-cache", "No KV cache", "Recomputes keys and values of every position at every step: "
            "what the KV cache saves.", use_cache=False),
    Variant("bettertransformer", "Eager + BetterTransformer", "optimum's BetterTransformer: the eager model's "
            "attention swapped for PyTorch's fused kernels by model.to_bettertransformer(), in the legacy-bt "
            "runtime (transformers 4.48, optimum 1.27: removed since) for OPT, BLOOM, GPT-Neo, GPT-J and CodeGen.",
            attn_implementation="eager", bettertransformer=True, runtime="legacy-bt"),
    Variant("bnb-4bit-bt", "4-bit NF4 + BetterTransformer + flash SDPA", "The original recipe: a bitsandbytes "
            "NF4 load, converted by to_bettertransformer() and run with the flash SDPA backend, in the legacy-bt "
            "runtime.", attn_implementation="eager", quantization="nf4", bettertransformer=True,
            sdpa_backend="FLASH_ATTENTION", runtime="legacy-bt"),
)}

CHECKS = {
    "fa2": (_needs_cuda("FlashAttention-2"), _needs_capability(8, 0, "FlashAttention-2"),
            _needs_half("FlashAttention-2"), _needs_package("flash_attn", FA_HINT)),
    "sdpa-flash": (_needs_capability(8, 0, "The SDPA flash backend"),
                   _needs_half_on_cuda("The SDPA flash backend on a GPU")),
    "bnb-4bit": (_needs_package("bitsandbytes", BNB_HINT),),
    "bnb-8bit": (_needs_package("bitsandbytes", BNB_HINT),),
    "bettertransformer": (_converts(),),
    "bnb-4bit-bt": (_needs_cuda("transformers 4.48's bitsandbytes 4-bit"), _runtime_has("bitsandbytes", "legacy-bt"),
                    _converts()),
    "int4": (_needs_package("torchao", TORCHAO_HINT), _needs_capability(8, 0, "torchao's int4 GPU kernel"),
             _int4_kernel),
}


def served(endpoint) -> Variant:
    """The variant of a preset's served endpoint (engine/remote.py): its label says where it is served;
    the worker's Loaded event says by what, once it has asked the server. An engine the dashboard starts
    (engine/launch.py) says which."""
    if endpoint.launch is not None:
        return Variant(endpoint.name, f"{endpoint.launch.kind} (started here)",
                       f"{endpoint.launch.kind}'s server, started by the dashboard on this machine with the "
                       "preset's model and as many threads as a local worker, streamed and timed like the "
                       "local variants.", remote=True, launch=endpoint.launch.kind)
    return Variant(endpoint.name, f"served at {endpoint.host}", f"The model served at {endpoint.base_url} "
                   "(an OpenAI-compatible server), streamed and timed like the local variants.", remote=True)


def lookup(name: str, preset: Preset) -> Variant | None:
    """A catalog variant, or one of the preset's served endpoints, by name; None when neither."""
    if name in CATALOG:
        return CATALOG[name]
    found = preset.endpoint(name)
    return served(found) if found is not None else None


def names(preset: Preset) -> list[str]:
    """Every variant a run of this preset may name: the catalog's, then its served endpoints'."""
    return [*CATALOG, *(e.name for e in preset.remote)]
