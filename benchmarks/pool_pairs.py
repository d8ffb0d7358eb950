"""Pairs of several runs of vs_reference.py (or start_method.py) pooled: per variant, the median of every
pair's ratio and how far that median can be trusted.

One run's median over 8 or 16 fresh-process pairs moves by several percent from run to run on a noisy
machine, as single pairs scatter over ±10-20%. Pooling the runs made with the same setup gives more pairs,
and a bootstrap says what the pooled median is worth: the pairs resampled with replacement, `--resamples`
times with a fixed seed (so the command prints the same interval every time), the 2.5th and 97.5th
percentiles of the resampled medians.

    python benchmarks/pool_pairs.py RUN.json [RUN.json ...] [--resamples 4000] [--json PATH]

Runs whose setups differ (preset, lengths, repeats, threads, device, dtype) are refused: their ratios are
not the same measure.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path

KEYS = ("ttft_ratio", "tpot_ratio")
SEED = 20261207


def setup_of(run: dict) -> dict:
    """What makes two runs' ratios one measure: the setup without its timeout and model folder."""
    return {key: value for key, value in run["setup"].items() if key not in ("timeout_s", "model_dir")}


def interval(values: list[float], resamples: int, rng: random.Random) -> tuple[float, float]:
    """A 95% bootstrap interval of the median of `values`."""
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    return medians[int(0.025 * resamples)], medians[min(int(0.975 * resamples), resamples - 1)]


def pool(runs: list[dict], resamples: int) -> dict:
    """Per variant and ratio: every pair's value, their count, median, range and bootstrap interval."""
    setups = [setup_of(run) for run in runs]
    if any(setup != setups[0] for setup in setups[1:]):
        raise SystemExit("error: the runs have different setups, so their ratios are not one measure: "
                         + "; ".join(json.dumps(s, sort_keys=True) for s in setups))
    rng = random.Random(SEED)
    pooled = {}
    for name in dict.fromkeys(name for run in runs for name in run["variants"]):
        pairs = [p for run in runs for p in run["variants"].get(name, {}).get("pairs", [])]
        pooled[name] = {"pairs": len(pairs), "runs": sum(name in run["variants"] for run in runs)}
        for key in KEYS:
            values = [p[key] for p in pairs if p.get(key) is not None]
            low, high = interval(values, resamples, rng) if values else (None, None)
            pooled[name][key] = {"values": values, "median": statistics.median(values) if values else None,
                                 "min": min(values, default=None), "max": max(values, default=None),
                                 "interval_95": [low, high],
                                 "above_1": sum(v > 1 for v in values)}
    return {"setup": setups[0], "resamples": resamples, "seed": SEED, "variants": pooled}


def text(result: dict) -> str:
    lines = []
    for name, found in result["variants"].items():
        parts = []
        for key in KEYS:
            r = found[key]
            if r["median"] is None:
                continue
            parts.append(f"{key.replace('_', ' ').upper().replace(' RATIO', '')} median {r['median']:.3f} "
                         f"(95% interval {r['interval_95'][0]:.3f}-{r['interval_95'][1]:.3f}, range "
                         f"{r['min']:.3f}-{r['max']:.3f}, above 1 in {r['above_1']} of {len(r['values'])})")
        lines.append(f"{name}: {found['pairs']} pairs from {found['runs']} runs; " + "; ".join(parts))
    return "\n".join(lines)


def main(argv=None) -> int:
    top = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    top.add_argument("runs", nargs="+", help="the JSON files the runs wrote (--json)")
    top.add_argument("--resamples", type=int, default=4000, help="bootstrap resamples (default 4000)")
    top.add_argument("--json", help="write the pooled figures here")
    args = top.parse_args(argv)
    if args.resamples < 100:
        raise SystemExit("error: --resamples must be at least 100")
    runs = []
    for path in args.runs:
        try:
            runs.append(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as error:
            raise SystemExit(f"error: cannot read {path}: {error}") from None
    result = pool(runs, args.resamples)
    print(text(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
