"""Preset validation and every unavailability reason a CPU can show."""
import textwrap
from dataclasses import replace

import pytest

from engine import budget, presets
from engine.hardware import Device, cpu_device, datasheet_bandwidth
from engine.variants import CATALOG

GPU_H100 = Device("cuda", 0, "NVIDIA H100 80GB HBM3", 80 * 2**30, 79 * 2**30, (9, 0), "580", 3350e9)
GPU_T4 = Device("cuda", 0, "Tesla T4", 16 * 2**30, 15 * 2**30, (7, 5), "580", 320e9)


def write(tmp_path, text):
    path = tmp_path / "custom.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_every_shipped_preset_loads():
    names = presets.available()
    for required in ("tiny", "small", "opt-350m", "falcon-7b", "llama-3.1-8b-random", "qwen2.5-0.5b-instruct"):
        assert required in names
    for name in names:
        preset = presets.load(name)
        assert preset.name == name
        assert set(preset.variants) <= set(CATALOG)
        assert 1 <= preset.max_new_tokens <= preset.max_new_tokens_cap


def test_unknown_field_names_file_field_and_allowed(tmp_path):
    path = write(tmp_path, """
        name: custom
        title: x
        source: random
        config: {model_type: llama}
        colour: red
    """)
    with pytest.raises(presets.PresetError) as error:
        presets.load(path)
    message = str(error.value)
    assert path in message and "'colour'" in message and "allowed fields" in message and "dtype" in message


def test_wrong_type_and_unknown_variant_are_refused(tmp_path):
    path = write(tmp_path, """
        name: custom
        title: x
        source: random
        config: {model_type: llama}
        max_new_tokens: lots
    """)
    with pytest.raises(presets.PresetError, match=r"custom.yaml: field 'max_new_tokens' must be an integer"):
        presets.load(path)
    path = write(tmp_path, """
        name: custom
        title: x
        source: random
        config: {model_type: llama}
        variants: [baseline, warp-drive]
    """)
    with pytest.raises(presets.PresetError, match=r"unknown variant 'warp-drive'; allowed: baseline, sdpa"):
        presets.load(path)


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(presets.PresetError, match=r"unknown preset 'nope'; available: .*tiny"):
        presets.load("nope")


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


def test_datasheet_bandwidth_table():
    assert datasheet_bandwidth("NVIDIA H200") == 4800e9
    assert datasheet_bandwidth("NVIDIA H100 PCIe") == 2000e9
    assert datasheet_bandwidth("NVIDIA H100 80GB HBM3") == 3350e9
    assert datasheet_bandwidth("NVIDIA A100-SXM4-80GB") == 2039e9
    assert datasheet_bandwidth("NVIDIA A100-PCIE-40GB") == 1555e9
    assert datasheet_bandwidth("NVIDIA A10G") == 600e9
    assert datasheet_bandwidth("NVIDIA L4") == 300e9
    assert datasheet_bandwidth("Tesla T4") == 320e9
    assert datasheet_bandwidth("Some Future GPU") is None


def test_memory_budget_keeps_what_fits_and_swaps_the_rest():
    llama = presets.load("llama-3.1-8b-random")
    names = ["baseline", "sdpa", "sdpa-flash", "fa2", "bnb-4bit", "bnb-8bit", "compiled", "no-kv-cache"]
    variants = [CATALOG[n] for n in names]
    bf16 = budget.footprint(llama, CATALOG["baseline"], cuda=True)
    assert 8.0e9 < bf16.params < 8.1e9                       # Llama-3.1-8B has 8.03B parameters
    assert bf16.weights_bytes == bf16.params * 2
    nf4 = budget.footprint(llama, CATALOG["bnb-4bit"], cuda=True)
    assert nf4.weights_bytes < bf16.weights_bytes / 2
    assert nf4.load_peak_bytes == bf16.weights_bytes        # random weights are quantized in place
    placement = budget.plan(llama, variants, 80 * 10**9, cuda=True)
    resident = [n for n in names if placement[n] == "resident"]
    assert 1 <= len(resident) < len(names)                    # eight 8B variants do not fit on 80 GB
    assert placement["baseline"] == "resident"
    assert budget.plan(llama, variants, 10**13, cuda=True) == {n: "resident" for n in names}
    # an H200 (149.5 GB free when the GPU check started) holds the seven that run without flash-attn:
    # its headroom is capped, the estimates keep their own margins (they planned 19-20 GB a variant
    # where the variants reserved 5.5-17.3 GiB at their peak)
    runnable = [v for v in variants if v.name != "fa2"]
    assert set(budget.plan(llama, runnable, 149_553_283_072, cuda=True).values()) == {"resident"}
    assert sum(budget.footprint(llama, v, cuda=True).total_bytes for v in runnable) > 149_553_283_072 * 0.9
    tiny = presets.load("tiny")
    assert set(budget.plan(tiny, variants, 10**9, cuda=False).values()) == {"resident"}


def test_copy_bandwidth_on_a_cpu_is_the_best_copy_and_never_cached(tmp_path, monkeypatch):
    from engine.worker.probes import measure_copy_bandwidth
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    (tmp_path / "sidebyside").mkdir()
    value = measure_copy_bandwidth("cpu", "cpu", size_bytes=1 << 24, repeats=3)
    assert 1e8 < value < 1e13                                    # bytes/s of a real copy of 16 MiB
    assert not list((tmp_path / "sidebyside").glob("*"))          # other programs share a CPU's memory
