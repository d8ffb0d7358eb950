#!/usr/bin/env python3
"""Where does the compiled decoder's time go? One process, one model, the compiled step loop:

    python scripts/compile_probe.py [--preset llama-3.1-8b-random] [--tokens 64] [--tuned]

Prints TPOT (CUDA events), the bytes a step must read, MBU against the measured copy
bandwidth, and a profile of one decode step: how many CUDA graph launches and kernel launches
it makes (a step captured as a CUDA graph shows one graph launch and no kernel launches).
--tuned adds gpt-fast's inductor settings (coordinate-descent tuning) before compiling.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="llama-3.1-8b-random")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--tuned", action="store_true")
    args = parser.parse_args()
    import torch

    from engine import models, presets
    from engine.decode import CompiledDecoder, TokenClock
    from engine.hardware import measure_copy_bandwidth
    from engine.variants import CATALOG
    if args.tuned:
        import torch._inductor.config as inductor
        inductor.coordinate_descent_tuning = True
        inductor.triton.unique_kernel_names = True
    preset = dataclasses.replace(presets.load(args.preset), device=args.device)
    cuda = args.device.startswith("cuda")
    t0 = time.perf_counter()
    model, _ = models.load_model(preset, CATALOG["compiled"], args.device)
    if cuda:
        torch.cuda.empty_cache()
    weights = models.weights_bytes(model)
    print(f"loaded {weights / 1e9:.2f} GB in {time.perf_counter() - t0:.1f} s", flush=True)
    decoder = CompiledDecoder(model, preset.context_length, args.device)
    ids = torch.randint(3, 200, (1, args.prompt), device=args.device)
    t1 = time.perf_counter()
    tpots = []
    with torch.inference_mode():
        for i in range(4):
            clock = TokenClock(cuda)
            decoder.run(ids, args.tokens, clock, lambda host: False)
            tpots.append(clock.tpot_s())
            if i == 0:
                print(f"first run (compiles) {time.perf_counter() - t1:.1f} s", flush=True)
        from torch.profiler import ProfilerActivity, profile
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=activities) as prof:
            decoder.run(ids, 4, lambda *token: None, lambda host: False)
    names = {}
    for event in prof.events():
        if event.name in ("cudaGraphLaunch", "cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx",
                          "cudaLaunchKernelExC", "cudaMemcpyAsync", "cudaStreamSynchronize"):
            names[event.name] = names.get(event.name, 0) + 1
    shape = models.kv_cache_shape(model)
    kv = 2 * shape["layers"] * shape["kv_heads"] * shape["head_dim"] * (args.prompt + args.tokens / 2) * 2
    bandwidth = measure_copy_bandwidth(torch.cuda.get_device_name() if cuda else "cpu", args.device, use_cache=False)
    tpot = sorted(tpots[1:])[1]
    result = {"preset": preset.name, "tuned": args.tuned, "tpot_ms": tpot * 1000, "runs_ms": [t * 1000 for t in tpots],
              "bytes_per_step_gb": (weights + kv) / 1e9, "copy_bandwidth_gbs": bandwidth / 1e9,
              "mbu_vs_copy": (weights + kv) / tpot / bandwidth,
              "launches_in_3_decode_steps": names, "torch": torch.__version__}
    print(json.dumps(result))
    out = os.environ.get("OUT")
    if out:
        Path(out, f"compile_probe{'_tuned' if args.tuned else ''}.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
