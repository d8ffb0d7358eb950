#!/usr/bin/env python3
"""Where does the compiled decoder's time go? One process, one model, several ways to compile the step:

    python scripts/compile_probe.py [--preset llama-3.1-8b-random] [--configs fused-tuned,forward-tuned]
                                    [--prompt 128] [--long-prompt 2048] [--tokens 128]
    python scripts/compile_probe.py --device cpu --preset tiny --tokens 8 [--keep-caches]    # a dry run
    python scripts/compile_probe.py --configs fused-tuned,fusedreduce-tuned --long-prompt 2048  # attention's share

A config is STEP-INDUCTOR: STEP is `fused` (engine/worker/fused.py, attention by SDPA), `fusedreduce`
(the same step with its attention written as reductions that inductor can split over the cache,
see engine/worker/fused.py) or `forward` (transformers' forward);
INDUCTOR is `tuned` (the engine's CUDA settings: CUDA graphs + coordinate-descent tuning),
`graphs` (CUDA graphs only) or `autotune` (tuned + inductor's max-autotune: slow to compile).
For each config it prints and writes (compile_probe.json under $OUT, else runs/): the
compile time at --prompt; the first run of --long-prompt, in a later cache bucket (a compile, or
only a CUDA graph where the cache's length is dynamic); TPOT on the device's clock (median of
3 runs) at both prompts, the long one served by the first compile as in the engine (which
compiles at its warm-up's short prompt); MBU against the measured copy bandwidth; and, at both
prompts, the kernels of one decode step from the
profiler: GPU time per step by kind (GEMVs, attention, pointwise, copies), the top kernels,
and the idle time between them (TPOT minus kernel time). Inductor names its kernels after the
ops they fuse: fusedreduce's softmax kernels get a kind of their own, but its score products may
count among the reductions; compare the totals with fused's. Decode kernels are those of a run
of N+1 tokens minus those of a run of 1 token (the prefill), divided by N. Inductor's caches are
off, so the compile times are those of a fresh machine; --keep-caches uses them (a graph compiled
before, by this probe or the engine, is loaded instead: the TPOTs are the same, the compile times
are no fresh machine's, and the table says so). On a CPU every config compiles with
inductor's defaults (no CUDA graphs or Triton there): only the step differs.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.worker.step_profile import step_profile  # noqa: E402  (imports torch only when called)

INDUCTOR = {"graphs": {"triton.cudagraphs": True}, "tuned": None,     # None: the engine's default
            "autotune": {"triton.cudagraphs": True, "coordinate_descent_tuning": True, "max_autotune": True}}
STEPS = {"fused": "sdpa", "fusedreduce": "reduce", "forward": None}     # step -> the fused step's attention


def greedy_tokens(decoder, ids, new_tokens: int) -> list[int]:
    """The first sequence's tokens from one decoder.run."""
    seen = []
    decoder.run(ids, new_tokens, lambda tokens, ready: seen.append(int(tokens[0])), lambda host: False)
    return seen


@dataclasses.dataclass(frozen=True)
class Probe:
    """What every config is timed against: the loaded model, its byte counts, the two prompts."""
    preset: Any                  # engine.presets.Preset, on --device
    model: Any                   # the transformers model every config compiles
    device: str                  # --device
    device_name: str             # the GPU's name, or "cpu"
    prompt: int                  # --prompt, in tokens
    new_tokens: int              # --tokens
    weights: int                 # bytes of parameters and buffers
    gathered: int                # bytes of an untied input table: a step reads one row of it
    bandwidth: float             # measured copy bandwidth, bytes/s
    kv: float                    # mean KV-cache bytes a step reads at --prompt
    ids: Any                     # (1, prompt) token ids
    reference: list[int]         # generate()'s greedy tokens at --prompt
    longer: int                  # the long prompt, in tokens: a later cache bucket
    long_kv: float               # mean KV-cache bytes a step reads at the long prompt
    longer_ids: Any              # (1, longer) token ids
    started_s: float             # perf_counter() before the model loaded
    caches_kept: bool            # --keep-caches: inductor's on-disk caches were used

    @property
    def cuda(self) -> bool:
        """Whether the probe runs on a CUDA device."""
        return self.device.startswith("cuda")


def parse_args() -> tuple[argparse.Namespace, list[str]]:
    """The command line, and its configs checked against STEPS and INDUCTOR."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="llama-3.1-8b-random")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--configs", default="fused-tuned,forward-tuned")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--long-prompt", type=int, default=None,
                        help="the prompt of the runs in a later cache bucket, served by the same compile as "
                             "the engine does (default: one token past the first bucket)")
    parser.add_argument("--keep-caches", action="store_true",
                        help="use inductor's on-disk caches: what was compiled before loads instead of "
                             "compiling again (the compile times are then not a fresh machine's)")
    parser.add_argument("--out", default=os.environ.get("OUT") or "runs")
    args = parser.parse_args()
    configs = [c for c in args.configs.split(",") if c]
    for config in configs:
        step, _, inductor = config.partition("-")
        if step not in STEPS or inductor not in INDUCTOR:
            parser.error(f"unknown config {config!r}: use STEP-INDUCTOR with STEP {' or '.join(STEPS)} and "
                         f"INDUCTOR {' or '.join(INDUCTOR)}")
    return args, configs


def kv_bytes(model, prompt: int, new_tokens: int) -> float:
    """Mean KV-cache bytes one decode step reads, batch 1, over new_tokens after prompt."""
    from engine import metrics
    from engine.worker import models
    shape = models.kv_cache_shape(model)
    return metrics.kv_cache_bytes(shape["layers"], shape["kv_heads"], shape["head_dim"],
                                  metrics.mean_decode_context(prompt, new_tokens), 1,
                                  model.get_input_embeddings().weight.element_size())


def load(args: argparse.Namespace) -> Probe:
    """Load the model, count its bytes, measure the copy bandwidth, draw both prompts, run generate()."""
    import torch
    import torch._inductor.config

    from engine import presets
    from engine.worker import models
    from engine.worker.decode import bucket
    from engine.worker.probes import measure_copy_bandwidth
    from engine.variants import CATALOG
    cuda = args.device.startswith("cuda")
    torch._inductor.config.force_disable_caches = not args.keep_caches     # off: as on a fresh machine
    preset = dataclasses.replace(presets.load(args.preset), device=args.device)
    started_s = time.perf_counter()
    model, _ = models.load_model(preset, CATALOG["compiled"], args.device)
    if cuda:
        torch.cuda.empty_cache()
    weights = models.weights_bytes(model)
    gathered = models.input_table_bytes(model)
    print(f"loaded {weights / 1e9:.2f} GB in {time.perf_counter() - started_s:.1f} s", flush=True)
    device_name = torch.cuda.get_device_name() if cuda else "cpu"
    bandwidth = measure_copy_bandwidth(device_name, args.device, use_cache=False)
    ids = torch.randint(3, 200, (1, args.prompt), device=args.device)
    with torch.inference_mode():
        reference = model.generate(input_ids=ids, max_new_tokens=args.tokens, do_sample=False,
                                   min_new_tokens=args.tokens)[0, args.prompt:].tolist()
    longer = args.long_prompt or bucket(args.prompt + args.tokens, preset.context_length) + 1
    longer = min(longer, preset.context_length - args.tokens)
    longer_ids = torch.randint(3, 200, (1, longer), device=args.device)
    return Probe(preset=preset, model=model, device=args.device, device_name=device_name, prompt=args.prompt,
                 new_tokens=args.tokens, weights=weights, gathered=gathered,
                 bandwidth=bandwidth, kv=kv_bytes(model, args.prompt, args.tokens), ids=ids,
                 reference=reference, longer=longer, long_kv=kv_bytes(model, longer, args.tokens),
                 longer_ids=longer_ids, started_s=started_s, caches_kept=args.keep_caches)


def tpots_s(decoder, ids, new_tokens: int, cuda: bool) -> list[float]:
    """TPOT in seconds of 3 decoder.runs, on the device's clock."""
    from engine.worker.decode import TokenClock
    tpots = []
    for _ in range(3):
        clock = TokenClock(cuda)
        decoder.run(ids, new_tokens, clock, lambda host: False)
        tpots.append(clock.tpot_s())
    return tpots


def time_config(probe: Probe, config: str) -> dict:
    """Compile one config at --prompt, time it there, then at the long prompt (a later cache bucket)."""
    import torch

    from engine.worker.decode import CompiledDecoder
    step, _, inductor = config.partition("-")
    torch._dynamo.reset()
    options = INDUCTOR[inductor] if probe.cuda else {}           # CUDA graphs and Triton exist on a GPU only
    decoder = CompiledDecoder(probe.model, probe.preset.context_length, probe.device, inductor=options,
                              fused=STEPS[step] is not None, fused_attention=STEPS[step] or "sdpa")
    with torch.inference_mode():
        t1 = time.perf_counter()
        tokens = greedy_tokens(decoder, probe.ids, probe.new_tokens)   # compiles; checked against generate()
        compile_s = time.perf_counter() - t1
        tpots = tpots_s(decoder, probe.ids, probe.new_tokens, probe.cuda)
        profile = step_profile(decoder, probe.ids) if probe.cuda else {}
        t2 = time.perf_counter()                    # a longer prompt, in a later cache bucket
        greedy_tokens(decoder, probe.longer_ids, probe.new_tokens)
        new_bucket_s = time.perf_counter() - t2
        # served by the first compile, as in the engine
        long_tpots = tpots_s(decoder, probe.longer_ids, probe.new_tokens, probe.cuda)
        long_profile = step_profile(decoder, probe.longer_ids) if probe.cuda else {}
    timed = {"step": decoder.step_kind, "inductor": decoder.inductor, "tokens": tokens, "compile_s": compile_s,
             "tpots": tpots, "profile": profile, "new_bucket_s": new_bucket_s, "long_tpots": long_tpots,
             "long_profile": long_profile}
    del decoder
    if probe.cuda:
        torch.cuda.empty_cache()
    return timed


def config_result(probe: Probe, config: str, timed: dict) -> dict:
    """One config's row of compile_probe.json, from time_config's measurements."""
    from engine import metrics
    tpots, long_tpots = timed["tpots"], timed["long_tpots"]
    profile, long_profile = timed["profile"], timed["long_profile"]
    tpot, long_tpot = statistics.median(tpots), statistics.median(long_tpots)
    weights, bandwidth = probe.weights, probe.bandwidth
    read = weights - probe.gathered                  # the bytes a step reads, as the engine counts them
    result = {"config": config, "step": timed["step"], "inductor": timed["inductor"],
              "compile_and_first_run_s": timed["compile_s"], "tpot_ms": tpot * 1000,
              "next_bucket_first_run_s": timed["new_bucket_s"],
              "tpot_runs_ms": [t * 1000 for t in tpots],
              "mbu_vs_copy": metrics.mbu(read, probe.kv, tpot, bandwidth),
              "mbu_vs_copy_counting_input_table": metrics.mbu(weights, probe.kv, tpot, bandwidth),
              "first_token_unlike_generate": metrics.first_difference(probe.reference, timed["tokens"]),
              "long_tpot_ms": long_tpot * 1000, "long_tpot_runs_ms": [t * 1000 for t in long_tpots],
              "long_mbu_vs_copy": metrics.mbu(read, probe.long_kv, long_tpot, bandwidth),
              **{f"long_{key}": long_profile[key] for key in ("kernel_us_per_step", "us_per_step_by_kind")
                 if key in long_profile}, **profile}
    if profile:
        result["idle_us_per_step"] = tpot * 1e6 - profile["kernel_us_per_step"]
        if not profile["kernels_per_step"]:
            print(f"warning: {config}: the profiler saw no kernel in the decode steps (this CUDA/CUPTI may "
                  "not report kernels inside CUDA graphs): busy and idle times are unknown", file=sys.stderr)
    return result


def summarize(probe: Probe, results: list[dict]) -> dict:
    """compile_probe.json: the command, the machine, the byte counts and each config's row."""
    import torch
    return {"command": "python scripts/compile_probe.py " + " ".join(sys.argv[1:]), "preset": probe.preset.name,
            "device": probe.device_name, "torch": torch.__version__,
            "transformers": __import__("transformers").__version__, "prompt_tokens": probe.prompt,
            "new_tokens": probe.new_tokens, "next_bucket_prompt_tokens": probe.longer,
            "weights_bytes": probe.weights, "input_table_bytes": probe.gathered,
            "kv_bytes_mean": probe.kv, "copy_bandwidth_bytes_per_s": probe.bandwidth,
            "inductor_caches": "kept" if probe.caches_kept else "off", "results": results,
            "wall_s": time.perf_counter() - probe.started_s}


def cell(value, spec: str) -> str:
    """A table cell: the value formatted by spec, or a dash where it is unknown."""
    return "-".rjust(8) if value is None else format(value, spec)


def print_table(summary: dict) -> None:
    """Print one row per config, then each config's GPU time per step by kind at both prompts."""
    results, longer = summary["results"], summary["next_bucket_prompt_tokens"]
    print(f"\n{summary['preset']} on {summary['device']}: weights {summary['weights_bytes'] / 1e9:.2f} GB, "
          f"copy bandwidth {summary['copy_bandwidth_bytes_per_s'] / 1e9:.0f} GB/s, prompt "
          f"{summary['prompt_tokens']}, {summary['new_tokens']} new tokens; long: prompt {longer}")
    if summary["inductor_caches"] == "kept":
        print("inductor's caches kept (--keep-caches): a compile time is no fresh machine's where a graph was cached")
    width = max(16, *(len(r["config"]) for r in results))
    print(f"{'config':{width}} {'compile s':>9} {'bucket 2 s':>10} {'TPOT ms':>8} {'MBU':>5} {'busy us':>8} "
          f"{'idle us':>8} {'kernels':>8} {'long TPOT':>9} {'long MBU':>8}  same tokens as generate")
    for r in results:
        same = r["first_token_unlike_generate"]
        print(f"{r['config']:{width}} {r['compile_and_first_run_s']:9.1f} {r['next_bucket_first_run_s']:10.2f} "
              f"{r['tpot_ms']:8.2f} {r['mbu_vs_copy']:5.0%} {cell(r.get('kernel_us_per_step'), '8.0f')} "
              f"{cell(r.get('idle_us_per_step'), '8.0f')} {cell(r.get('kernels_per_step'), '8.0f')} "
              f"{r['long_tpot_ms']:9.2f} {r['long_mbu_vs_copy']:8.0%}  "
              f"{'all' if same is None else f'from token {same}'}")
    for r in results:
        if r.get("us_per_step_by_kind"):
            kinds = ", ".join(f"{kind} {us:.0f}" for kind, us in r["us_per_step_by_kind"].items())
            print(f"{r['config']}: us per step by kind: {kinds}")
        if r.get("long_us_per_step_by_kind"):
            kinds = ", ".join(f"{kind} {us:.0f}" for kind, us in r["long_us_per_step_by_kind"].items())
            print(f"{r['config']}, prompt {longer}: us per step by kind: {kinds}")


def main() -> int:
    """Time each config of the command line, write compile_probe.json and print the table."""
    args, configs = parse_args()
    import torch
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: no CUDA device is visible: run on a GPU machine, or pass --device cpu", file=sys.stderr)
        return 2
    probe = load(args)
    results = []
    for config in configs:
        result = config_result(probe, config, time_config(probe, config))
        results.append(result)
        print(json.dumps(result), flush=True)
    summary = summarize(probe, results)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compile_probe.json").write_text(json.dumps(summary, indent=1))
    print_table(summary)
    print(f"wrote {out / 'compile_probe.json'} ({summary['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
