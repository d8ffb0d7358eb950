#!/usr/bin/env python3
"""transformers' variants against the engines people run instead, on one model and one clock.

The built-in real model (`smollm2-135m`), a 128-token prompt and 64 new tokens (ignore_eos: equal work),
one thread per engine, fair mode (one generates at a time), 5 timed requests after one warm-up, and each
variant's answers scored against the baseline's (engine/quality.py). Beside the local variants:

- llama.cpp's native server on the preset's own Q4_1 file, and on two files llama-quantize makes from it
  once (`--allow-requantize`): Q8_0, and F16 (the very weights the local variants run, in 16 bits);
- vLLM's CPU build on the local variants' own float32 folder.

Then, per variant, the bytes a decode step must read (the weights it reads per token plus the mean KV
cache; for a GGUF file the sum of its tensors, which this model reads whole since its output head is its
token embedding) and the share of this machine's copy bandwidth that reading them in one time per token
would take. Last, where the time of a transformers decode step goes: torch's profiler over 16 decode steps
of the sdpa model in this process (after the timed run, so it disturbs none of it), by operator.

    python benchmarks/engines.py [--json PATH] [--repeats 5] [--profile-only]

Needs llama.cpp's server and quantizer (/opt/llama-cpp/bin, as .ci/run builds them) and vLLM's environment
(/opt/vllm-venv); an engine that is missing is left out, with a line saying so.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

LOCAL = ("baseline", "sdpa", "compiled", "int4", "bnb-4bit", "bnb-8bit")
FILE_TYPES = ("Q8_0", "F16")          # made from the preset's Q4_1 file
PROMPT_TOKENS, NEW_TOKENS = 128, 64
PROFILED_STEPS = 16


def quantizer() -> Path | None:
    from engine.launch import program
    server = program("llama.cpp")
    found = server.with_name("llama-quantize") if server else None
    return found if found and found.is_file() else None


def requantized(source: Path, file_type: str) -> Path:
    """The preset's GGUF file in another type, made once by llama-quantize into the model cache."""
    from engine.source import cache_dir
    target = cache_dir() / "gguf" / f"{source.stem}.{file_type}.gguf"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        subprocess.run([str(quantizer()), "--allow-requantize", str(source), str(partial), file_type, "1"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        partial.rename(target)
    return target


def tensor_bytes(path: Path) -> int:
    """The bytes of a GGUF file's tensors (what one decode step reads of it)."""
    from gguf import GGUFReader
    return sum(int(tensor.n_bytes) for tensor in GGUFReader(path).tensors)


def engines(preset) -> tuple[list, dict[str, int], list[str]]:
    """The engines to start (remote entries), the bytes each reads per token where a file says, what is missing."""
    from engine import launch, remote
    found, read, missing = [], {}, []
    if launch.program("llama.cpp") is None:
        missing.append(launch.reason("llama.cpp", preset))
    else:
        original = launch.model_file(preset, "llama.cpp")
        files = {"llama.cpp": original}
        if quantizer() is None:
            missing.append("llama-quantize is not next to llama-server: only the Q4_1 file is compared")
        else:
            files.update({f"llama.cpp-{t.lower()}": requantized(original, t) for t in FILE_TYPES})
        for name, path in files.items():
            args = [] if path == original else ["--model", str(path)]
            found.append(remote.engine_entry({"name": name, "kind": "llama.cpp", "args": args}, "benchmark"))
            read[name] = tensor_bytes(path)
    if launch.program("vllm") is None:
        missing.append(launch.reason("vllm", preset))
    else:
        found.append(remote.engine_entry({"name": "vllm", "kind": "vllm"}, "benchmark"))
    return found, read, missing


def copy_bandwidth(threads: int) -> float:
    """This machine's copy bandwidth on `threads` threads, bytes/s (read + written), as the engine measures
    a device's."""
    import torch

    from engine.worker.probes import measure_copy_bandwidth
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return measure_copy_bandwidth("cpu", "cpu", use_cache=False)
    finally:
        torch.set_num_threads(before)


def profile_decode(preset) -> dict:
    """Where a transformers decode step's time goes, by operator kind, one thread: torch's profiler over
    PROFILED_STEPS steps after a PROMPT_TOKENS prefill, self times per step."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers import AutoModelForCausalLM, DynamicCache

    from engine.source import model_location
    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(model_location(preset), dtype=torch.float32,
                                                 attn_implementation="sdpa").eval()
    ids = torch.randint(100, 1000, (1, PROMPT_TOKENS), generator=torch.Generator().manual_seed(0))

    def steps(prof=None) -> float:
        """PROFILED_STEPS decode steps after a prefill (not timed, not profiled): their wall time."""
        cache = DynamicCache(config=model.config)
        with torch.inference_mode():
            out = model(ids, cache=cache, use_cache=True)
            token = out.logits[:, -1:].argmax(-1)
            if prof is not None:
                prof.start()
            started = time.perf_counter()
            for _ in range(PROFILED_STEPS):
                out = model(token, cache=cache, use_cache=True)
                token = out.logits[:, -1:].argmax(-1)
            seconds = time.perf_counter() - started
            if prof is not None:
                prof.stop()
            return seconds

    steps()                                                   # warm
    plain = min(steps() for _ in range(3))
    prof = profile(activities=[ProfilerActivity.CPU])
    profiled = steps(prof)
    # without the profiler: the step's matrix products alone, every Linear of the model on one token's
    # activations in a tight loop (the same weights, the same GEMV kernels, no model code around them)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    rows = {m.in_features: torch.randn(1, 1, m.in_features) for m in linears}
    with torch.inference_mode():
        def products() -> float:
            started = time.perf_counter()
            for _ in range(PROFILED_STEPS):
                for m in linears:
                    m(rows[m.in_features])
            return (time.perf_counter() - started) / PROFILED_STEPS
        products()
        linear_s = min(products() for _ in range(3))
    kinds: dict[str, float] = {}
    for entry in prof.key_averages():
        name = entry.key
        kind = ("matrix products" if name in ("aten::mm", "aten::addmm", "aten::bmm") else
                "attention" if "scaled_dot_product" in name or "flash_attention" in name else
                "other operators")
        if name.startswith("aten::") or name.startswith("mkldnn"):
            kinds[kind] = kinds.get(kind, 0.0) + entry.self_cpu_time_total / 1e6
    in_ops = sum(kinds.values())
    per_step = {kind: seconds / PROFILED_STEPS for kind, seconds in kinds.items()}
    per_step["outside operators (Python, transformers)"] = max(profiled - in_ops, 0.0) / PROFILED_STEPS
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"step_s": plain / PROFILED_STEPS, "profiled_step_s": profiled / PROFILED_STEPS, "by_kind_s": per_step,
            "linear_layers_alone_s": linear_s, "weights_bytes": weights}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="write the rows, the bandwidth and the profile here")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--profile-only", action="store_true", help="only the decode step's profile")
    args = parser.parse_args(argv)
    from engine import presets
    from engine.pool import Engine
    from engine.spec import Cell, RunSpec
    from ui.examples import QUESTION
    preset = presets.load("smollm2-135m")
    rows, bandwidth, machine, missing, read = [], None, None, [], {}
    if not args.profile_only:
        started, read, missing = engines(preset)
        for line in missing:
            print(f"left out: {line}", file=sys.stderr)
        preset = dataclasses.replace(preset, remote=preset.remote + tuple(started))
        names = LOCAL + tuple(e.name for e in started)
        spec = RunSpec(QUESTION, names, NEW_TOKENS, repeats=args.repeats, ignore_eos=True, warmup_requests=1,
                       live=False, cells=(Cell(prompt_tokens=PROMPT_TOKENS),))
        with Engine(preset, request_timeout_s=900, threads=1) as engine:
            report = list(engine.run(spec))[-1].report
        # the share is of what one thread can copy, as each engine computes on one; the machine's, for scale
        bandwidth, machine = copy_bandwidth(1), copy_bandwidth(len(os.sched_getaffinity(0)))
        rows = [summarize(row, read, bandwidth, report) for row in report["results"]]
    profile = profile_decode(presets.load("smollm2-135m"))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "machine": platform.processor() or platform.machine(), "cpu": cpu_name(), "threads": 1,
            "prompt_tokens": PROMPT_TOKENS, "new_tokens": NEW_TOKENS, "repeats": args.repeats,
            "copy_bandwidth_bytes_per_s": {"one_thread": bandwidth, "every_core": machine}, "left_out": missing, "rows": rows, "profile": profile},
            indent=1))
    print_profile(profile, bandwidth)
    if rows:
        print(table(rows, bandwidth, machine))
    return 0


def cpu_name() -> str:
    from engine.hardware import _cpu_name
    return _cpu_name()


def summarize(row: dict, read: dict[str, int], bandwidth: float, report: dict) -> dict:
    """A report row's figures for the table: times, memory, bytes per token, bandwidth share, quality."""
    tpots = [t for t in row.get("tpot_repeats_s") or [] if t]
    per_token = row.get("decode_bytes_per_step")
    if row["variant"] in read:
        per_token = read[row["variant"]]
    elif row["variant"] == "vllm":                 # the local variants' own float32 weights
        baseline = next(r for r in report["results"] if r["variant"] == "baseline")
        per_token = baseline.get("decode_bytes_per_step")
    quality = row.get("quality") or {}
    server = row.get("server") or {}
    return {"variant": row["variant"], "status": row["status"], "reason": row.get("reason"),
            "host_busy": row.get("host_busy"), "ttft_s": row.get("ttft_s"), "tpot_s": row.get("tpot_s"),
            "tpot_min_s": min(tpots) if tpots else None, "tpot_max_s": max(tpots) if tpots else None,
            "server_tpot_s": server.get("tpot_s"), "peak_memory_bytes": row.get("peak_memory_bytes"),
            "bytes_per_token": per_token,
            "bandwidth_share": (per_token / row["tpot_s"] / bandwidth) if per_token and row.get("tpot_s") else None,
            "same_top": quality.get("top_token_agreement"), "kld_mean": quality.get("kld_mean"),
            "kld_max": quality.get("kld_max"), "perplexity": quality.get("perplexity"),
            "quality_status": quality.get("status")}


def table(rows: list[dict], bandwidth: float, machine: float) -> str:
    def ms(value):
        return f"{value * 1e3:.1f}" if value else "-"

    def mib(value):
        return f"{value / 2**20:.0f}" if value else "-"
    lines = [f"copy bandwidth {bandwidth / 1e9:.1f} GB/s on one thread ({machine / 1e9:.1f} GB/s on every core); "
             f"prompt {PROMPT_TOKENS} tokens, {NEW_TOKENS} new, 1 thread each; 'of bw': MB/token / TPOT of one thread's",
             f"{'variant':15} {'TTFT ms':>8} {'TPOT ms (range)':>22} {'peak MiB':>9} {'MB/token':>9} {'of bw':>6} "
             f"{'same top':>9} {'mean KLD':>9} {'KLD max':>8} {'PPL':>6} busy"]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"{r['variant']:15} {r['status']}: {r['reason']}")
            continue
        span = f"{ms(r['tpot_s'])} ({ms(r['tpot_min_s'])}-{ms(r['tpot_max_s'])})"
        share = f"{r['bandwidth_share']:.0%}" if r["bandwidth_share"] else "-"
        same = f"{r['same_top']:.0%}" if r["same_top"] is not None else r["quality_status"] or "-"
        kld = f"{r['kld_mean']:.3g}" if r["kld_mean"] is not None else "-"
        top = f"{r['kld_max']:.3g}" if r["kld_max"] is not None else "-"
        ppl = f"{r['perplexity']:.3f}" if r["perplexity"] else "-"
        lines.append(f"{r['variant']:15} {ms(r['ttft_s']):>8} {span:>22} {mib(r['peak_memory_bytes']):>9} "
                     f"{(r['bytes_per_token'] or 0) / 1e6:>9.1f} {share:>6} {same:>9} {kld:>9} {top:>8} {ppl:>6} "
                     f"{'yes' if r['host_busy'] else 'no'}")
    return "\n".join(lines)


def print_profile(profile: dict, bandwidth: float | None) -> None:
    step = profile["step_s"]
    print(f"transformers sdpa decode step, 1 thread: {step * 1e3:.1f} ms unprofiled "
          f"({profile['profiled_step_s'] * 1e3:.1f} ms profiled); weights {profile['weights_bytes'] / 1e6:.0f} MB")
    for kind, seconds in sorted(profile["by_kind_s"].items(), key=lambda item: -item[1]):
        print(f"  {kind:42} {seconds * 1e3:6.1f} ms  {seconds / profile['profiled_step_s']:.0%}")
    alone = profile["linear_layers_alone_s"]
    print(f"  unprofiled: the model's Linear layers alone, on one token, {alone * 1e3:.1f} ms "
          f"({alone / step:.0%} of the step); the rest {(step - alone) * 1e3:.1f} ms")
    if bandwidth:
        floor = profile["weights_bytes"] / bandwidth
        print(f"  reading the weights once at one thread's copy bandwidth takes {floor * 1e3:.1f} ms")


if __name__ == "__main__":
    sys.exit(main())
