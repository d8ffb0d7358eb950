"""The memory budget: which variants stay resident and which are swapped."""
from engine import budget, presets
from engine.variants import CATALOG


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
    compiled = budget.footprint(llama, CATALOG["compiled"], cuda=True)     # its caches kept for reuse count
    assert compiled.kv_cache_bytes == budget.STATIC_CACHE_CONTEXTS * bf16.kv_cache_bytes > 0
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
