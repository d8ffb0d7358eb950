#!/usr/bin/env python3
"""Check and time every variant on a CUDA machine, in one command.

    python scripts/gpu_check.py            # Llama-3.1-8B shape + OPT-350m shape, prompts 128 and 2048
    python scripts/gpu_check.py --quick    # Llama-3.1-8B shape, prompt 128, one repeat
    python scripts/gpu_check.py --device cpu   # a dry run of the same path on the tiny model
    python scripts/gpu_check.py --quick --attention   # and the attention sweep (eager, sdpa, sdpa-flash,
                                                      # fa2; prompts 256-4096, padding 0 and 0.3, batch 4)

Needs only torch 2.11+, transformers 5.17+, pyyaml, psutil and nvidia-ml-py (bitsandbytes for the
4/8-bit variants, torchao for int4, flash-attn for fa2); no internet: every model is made from its config with
random weights. Writes gpu_check.json and gpu_check-timeline.txt (each load and request as it
ended) to --out (default: $OUT, else runs/) and prints a short table last.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine import presets                                              # noqa: E402
from engine.studies.bench import run_bench, table, timeline                 # noqa: E402
from engine.studies.sweeps import run_sweep, summary as sweep_summary       # noqa: E402
from engine.studies.targets import check_targets, target_lines              # noqa: E402

ATTENTION_VARIANTS = ["baseline", "sdpa", "sdpa-flash", "fa2"]
ALL_VARIANTS = ["baseline", "sdpa", "sdpa-flash", "fa2", "bnb-4bit", "bnb-8bit", "compiled", "int4", "no-kv-cache",
                "bettertransformer", "bnb-4bit-bt"]      # the last two in the legacy-bt runtime (README: Runtimes)


def plan(args) -> list[dict]:
    """The benchmark jobs: preset, prompt lengths, new tokens, repeats."""
    if args.device == "cpu":
        return [dict(preset="tiny", prompt_lengths=[32, 128], new_tokens=8, repeats=1)]
    jobs = [dict(preset="llama-3.1-8b-random", prompt_lengths=[128] if args.quick else [128, 2048],
                 new_tokens=args.new_tokens, repeats=1 if args.quick else args.repeats)]
    if not args.quick:
        jobs.append(dict(preset="opt-350m-random", prompt_lengths=[128, 2048 - args.new_tokens],
                         new_tokens=args.new_tokens, repeats=args.repeats))
    return jobs


def flash_implementations(device: str) -> dict:
    """Which FlashAttention implementations this machine has, and whether each works."""
    found = {}
    for dist in ("flash-attn", "flash-attn-4"):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = None
    try:
        import flash_attn
        found["flash_attn import"] = getattr(flash_attn, "__version__", "imported")
    except Exception as error:  # noqa: BLE001 - any failure is the finding
        found["flash_attn import"] = f"no: {type(error).__name__}: {str(error)[:120]}"
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    try:
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        q = torch.randn(1, 8, 256, 64, device=device, dtype=dtype)
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
        found["torch sdpa flash backend"] = "works"
    except Exception as error:  # noqa: BLE001
        found["torch sdpa flash backend"] = f"no: {str(error).splitlines()[0][:120]}"
    return found


def attention(args, summary: dict, t0: float, log) -> str:
    """The attention sweep (engine/studies/experiments.py): its rows in summary["attention"], its table."""
    elapsed = time.perf_counter() - t0
    if elapsed > args.budget_s:
        summary["attention"] = {"skipped": f"time budget spent ({elapsed:.0f} s)"}
        return f"== attention sweep: skipped, the time budget ({args.budget_s:.0f} s) was spent"
    cpu = args.device == "cpu"
    preset = dataclasses.replace(presets.load("tiny" if cpu else "llama-3.1-8b-random"), device=args.device)
    print(f"== attention sweep on {preset.name}", flush=True)
    try:
        sweep = run_sweep("attention", preset, quick=cpu, variants=ATTENTION_VARIANTS,
                          progress=log)
    except Exception as error:  # noqa: BLE001 - report it beside the bench results
        summary["attention"] = {"error": f"{type(error).__name__}: {error}"}
        return f"== attention sweep: error {type(error).__name__}: {error}"
    summary["attention"] = sweep
    return f"== attention sweep on {preset.name}\n" + sweep_summary(sweep)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="8B shape, prompt 128, one repeat (about 4 minutes)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cpu: a dry run of the same path on the tiny model")
    parser.add_argument("--variants", default=",".join(ALL_VARIANTS))
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=460.0,
                        help="start no new preset after this many seconds (the rest is reported skipped)")
    parser.add_argument("--attention", action="store_true",
                        help="then the attention sweep on the 8B shape (the quick grid on --device cpu)")
    parser.add_argument("--out", default=os.environ.get("OUT") or "runs", help="folder for gpu_check.json")
    args = parser.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(ALL_VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(ALL_VARIANTS)}")
    import torch
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device is visible: run on a GPU machine, or pass --device cpu for a dry run",
              file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"command": "python scripts/gpu_check.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "torch": torch.__version__, "cuda": torch.version.cuda,
               "device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
               "flash_attention": flash_implementations("cuda:0" if args.device == "cuda" else "cpu"),
               "runs": []}
    print("FlashAttention implementations:", json.dumps(summary["flash_attention"]), flush=True)
    timeline_file = (out / "gpu_check-timeline.txt").open("w")     # the timeline, kept beside the JSON
    log = timeline(t0, timeline_file)
    tables = []
    for job in plan(args):
        elapsed = time.perf_counter() - t0
        if elapsed > args.budget_s:
            summary["runs"].append({"preset": job["preset"], "skipped": f"time budget spent ({elapsed:.0f} s)"})
            tables.append(f"== {job['preset']}: skipped, the time budget ({args.budget_s:.0f} s) was spent")
            continue
        preset = dataclasses.replace(presets.load(job["preset"]), device=args.device)
        print(f"== {preset.name}: prompts {job['prompt_lengths']}, {job['new_tokens']} new tokens, "
              f"{job['repeats']} repeat(s)", flush=True)
        try:
            report = run_bench(preset, variants, job["prompt_lengths"], job["new_tokens"], job["repeats"],
                               log=log)
        except Exception as error:  # noqa: BLE001 - report it and go on to the next preset
            import traceback
            traceback.print_exc()
            summary["runs"].append({"preset": job["preset"], "error": f"{type(error).__name__}: {error}"})
            tables.append(f"== {job['preset']}: error {type(error).__name__}: {error}")
            continue
        summary["runs"].append(report)
        (out / "gpu_check.json").write_text(json.dumps(summary, indent=1))   # kept even if a later job dies
        tables.append(f"== {preset.name} on {report['device']['name']} ({report['wall_s']:.0f} s)\n" + table(report))
    if args.attention:
        tables.append(attention(args, summary, t0, log))
        (out / "gpu_check.json").write_text(json.dumps(summary, indent=1))
    summary["wall_s"] = time.perf_counter() - t0
    summary["targets"] = check_targets(summary, args.quick)
    (out / "gpu_check.json").write_text(json.dumps(summary, indent=1))
    print("\n".join(tables + target_lines(summary["targets"], args.device == "cuda")))
    timeline_file.close()
    print(f"total {summary['wall_s']:.0f} s; wrote {out / 'gpu_check.json'} and {timeline_file.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
