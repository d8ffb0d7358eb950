"""What one compiled decode step spends on the device, by kernel: counted with torch's profiler.

A step's kernels are those of a run of N+1 tokens minus those of a run of 1 token (the prefill),
divided by N; each kernel gets a kind from its name (cuBLAS, inductor's Triton kernels, attention
libraries, copies). Used by scripts/compile_probe.py; needs CUDA.
"""
from __future__ import annotations

PROFILED_STEPS = 8


def kind_of(kernel: str) -> str:
    """A kernel's kind, from its name (cuBLAS, Triton from inductor, attention libraries, copies)."""
    name = kernel.lower()
    if "memcpy" in name or "memset" in name:
        return "copies"
    if any(key in name for key in ("flash", "fmha", "attention", "cudnn", "sdpa")):
        return "attention"
    if name.startswith("triton") and ("softmax" in name or "amax" in name):
        return "triton softmax (reduce attention)"
    if name.startswith(("triton_red", "triton_per")):
        return "triton reductions (GEMVs, norms)"
    if name.startswith("triton_poi"):
        return "triton pointwise"
    if any(key in name for key in ("gemm", "gemv", "nvjet", "cutlass", "xmma", "sm90")):
        return "cuBLAS matmuls"
    return "other"


def kernel_times(decoder, ids, new_tokens: int) -> dict[str, list[float]]:
    """Kernel name -> [calls, microseconds] on the device during one decoder.run."""
    import torch
    from torch.profiler import ProfilerActivity, profile     # torch only when profiling: the script imports this
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        decoder.run(ids, new_tokens, lambda *token: None, lambda host: False)
        torch.cuda.synchronize()
    totals: dict[str, list[float]] = {}
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            entry = totals.setdefault(event.name, [0, 0.0])
            entry[0] += 1
            entry[1] += event.time_range.elapsed_us()
    return totals


def step_profile(decoder, ids) -> dict:
    """The kernels of one decode step: (run of N+1 tokens) - (run of 1 token), over N."""
    longer, prefill = kernel_times(decoder, ids, PROFILED_STEPS + 1), kernel_times(decoder, ids, 1)
    per_step = {}
    for name, (calls, us) in longer.items():
        base_calls, base_us = prefill.get(name, (0, 0.0))
        if calls - base_calls > 0:
            per_step[name] = ((calls - base_calls) / PROFILED_STEPS, max(us - base_us, 0.0) / PROFILED_STEPS)
    kinds: dict[str, float] = {}
    for name, (_, us) in per_step.items():
        kinds[kind_of(name)] = kinds.get(kind_of(name), 0.0) + us
    top = sorted(per_step.items(), key=lambda item: -item[1][1])[:12]
    return {"kernel_us_per_step": sum(us for _, us in per_step.values()),
            "kernels_per_step": sum(calls for calls, _ in per_step.values()),
            "us_per_step_by_kind": dict(sorted(kinds.items(), key=lambda item: -item[1])),
            "top_kernels": [{"name": name[:120], "calls_per_step": calls, "us_per_step": us}
                            for name, (calls, us) in top]}
