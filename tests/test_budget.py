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


def test_on_a_host_with_several_gpus_workers_go_one_per_gpu_where_the_memory_plan_allows():
    from types import SimpleNamespace
    llama = presets.load("llama-3.1-8b-random")
    names = ["baseline", "sdpa", "bnb-4bit", "compiled"]
    variants = [CATALOG[n] for n in names]
    gib = 2**30
    four = [SimpleNamespace(index=i, free_bytes=80 * gib) for i in range(4)]
    assert sorted(budget.assign(llama, variants, four).values()) == [0, 1, 2, 3]     # one each
    two = [SimpleNamespace(index=0, free_bytes=80 * gib), SimpleNamespace(index=1, free_bytes=40 * gib)]
    placed = budget.assign(llama, variants, two)
    assert sorted(placed) == sorted(names) and set(placed.values()) == {0, 1}
    assert placed["compiled"] == 0                 # the largest (two contexts of cache) where the room is
    sizes = {n: budget.footprint(llama, CATALOG[n], cuda=True).total_bytes for n in names}
    for index, device in enumerate(two):            # what each GPU got fits what it has
        assert sum(sizes[n] for n, i in placed.items() if i == index) <= device.free_bytes
    # a worker loaded already keeps its GPU; a served variant takes none
    from engine.variants import served
    from engine.remote import Endpoint
    kept = budget.assign(llama, [*variants, served(Endpoint("vllm", "http://h/v1"))], four, fixed={"sdpa": 3})
    assert kept["sdpa"] == 3 and "vllm" not in kept and sorted(kept.values()) == [0, 1, 2, 3]
    tiny_gpu = [SimpleNamespace(index=0, free_bytes=1 * gib), SimpleNamespace(index=1, free_bytes=2 * gib)]
    assert budget.assign(llama, [CATALOG["baseline"]], tiny_gpu) == {"baseline": 1}   # fits none: the roomiest


def test_with_several_gpus_each_worker_is_told_its_own_gpu_and_sees_only_it(monkeypatch):
    import os
    from types import SimpleNamespace
    from engine import hardware
    from engine.events import WorkerSpec
    from engine.pool import Engine
    from engine.worker.serve import own_gpu
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1,2")
    assert [hardware.nvml_index(i) for i in range(4)] == [3, 1, 2, 3]     # NVML ignores the renumbering
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert hardware.nvml_index(2) == 2
    engine = Engine(presets.load("tiny"))             # no worker starts: only the specs it would give
    gpu = SimpleNamespace(kind="cuda", index=0)
    engine.device, engine.devices = gpu, [gpu, SimpleNamespace(kind="cuda", index=1)]
    engine._assignment = {"sdpa": 1}
    spec = engine._worker_spec("sdpa", [])
    assert (spec.device, spec.own_gpu) == ("cuda:1", 1) and engine._worker_spec("baseline", []).device == "cuda:0"
    engine.devices = [gpu]                            # one GPU: the worker sees what the app sees
    assert engine._worker_spec("sdpa", []).own_gpu is None
    inside = own_gpu(spec)                            # in the worker, before torch is imported
    assert inside.device == "cuda:0" and os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert own_gpu(WorkerSpec(spec.preset, "sdpa", "cpu")).device == "cpu"
