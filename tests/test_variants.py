"""Every reason a variant cannot run here, as the page and the command line show it."""
from dataclasses import replace

from engine import presets
from engine.hardware import Device, cpu_device
from engine.variants import CATALOG

GPU_H100 = Device("cuda", 0, "NVIDIA H100 80GB HBM3", 80 * 2**30, 79 * 2**30, (9, 0), "580", 3350e9)
GPU_T4 = Device("cuda", 0, "Tesla T4", 16 * 2**30, 15 * 2**30, (7, 5), "580", 320e9)


def test_fa2_reasons_on_a_cpu_and_with_float32():
    tiny = presets.load("tiny")
    assert "needs an NVIDIA GPU" in CATALOG["fa2"].unavailable_reason(tiny, cpu_device())
    # float32 on a capable GPU: the dtype is the reason, not an error
    assert "float16 or bfloat16" in CATALOG["fa2"].unavailable_reason(tiny, GPU_H100)
    bf16 = replace(tiny, dtype="bfloat16")
    assert "compute capability 8.0" in CATALOG["fa2"].unavailable_reason(bf16, GPU_T4)
    reason = CATALOG["fa2"].unavailable_reason(bf16, GPU_H100)
    try:
        import flash_attn  # noqa: F401
        assert reason is None
    except ImportError:
        assert "flash-attn" in reason or "flash_attn" in reason


def test_sdpa_flash_on_gpus():
    tiny = presets.load("tiny")
    assert CATALOG["sdpa-flash"].unavailable_reason(tiny, cpu_device()) is None
    assert "float16 or bfloat16" in CATALOG["sdpa-flash"].unavailable_reason(tiny, GPU_H100)
    assert CATALOG["sdpa-flash"].unavailable_reason(replace(tiny, dtype="float16"), GPU_H100) is None
    assert "compute capability" in CATALOG["sdpa-flash"].unavailable_reason(replace(tiny, dtype="float16"), GPU_T4)


def test_missing_bitsandbytes_is_a_reason(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    reason = CATALOG["bnb-4bit"].unavailable_reason(presets.load("tiny"), cpu_device())
    assert reason == "the bitsandbytes package is not installed: pip install bitsandbytes"


def test_bettertransformer_label_says_it_is_native_sdpa_in_transformers_5():
    label = CATALOG["bnb-4bit"].display_label()
    assert "4-bit NF4 + SDPA" in label and "BetterTransformer is native SDPA in transformers 5" in label


def test_a_label_names_the_flashattention_or_torchao_release_that_runs(monkeypatch):
    from engine import variants
    versions = {"flash-attn": "2.8.3.post2", "torchao": "0.18.0"}
    monkeypatch.setattr(variants, "installed_version", versions.get)
    assert CATALOG["fa2"].display_label() == "FlashAttention-2 (flash-attn 2.8.3.post2)"
    assert CATALOG["int4"].display_label() == "int4 weights + static cache + torch.compile (torchao 0.18.0)"
    assert CATALOG["sdpa"].display_label() == "PyTorch SDPA"
    monkeypatch.setattr(variants, "installed_version", lambda package: None)
    assert CATALOG["fa2"].display_label() == "FlashAttention-2"             # not installed: unavailable anyway
