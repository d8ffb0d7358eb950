"""Does forking CPU workers from the preloaded fork server change what they time? Fresh processes in
alternating pairs, the engine against itself.

For every pair and variant, two `python -m engine bench` processes measure that variant alone at one
cell: one whose workers are forked from the fork server (the default on a CPU), one whose workers are
spawned fresh ($SIDEBYSIDE_START_METHOD=spawn, as on a GPU). Which goes first alternates from pair to
pair (ABBA), so a drift of the machine cancels out of the median. A ratio is forked / spawned of the two
processes' medians over their repeats (above 1: the forked worker times slower). Each pair also checks
that both made the same greedy tokens.

    python benchmarks/start_method.py --preset tiny --variants sdpa,baseline --pairs 10 [--repeats 5]
        [--prompt-tokens 128] [--new-tokens 64] [--threads N] [--json PATH]
"""
from __future__ import annotations

import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vs_reference import (Setup, engine_side, finish, model_dir, pair_parser, parse, ratio,  # noqa: E402
                          ratio_spread, run_pairs)

from engine import hardware, presets  # noqa: E402
from engine.process import START_METHOD_ENV  # noqa: E402
from engine.studies.bench import FILLER  # noqa: E402
from engine.views.tables import fixed, fixed_width, ms  # noqa: E402

SIDES = ("forkserver", "spawn")


def measure_pair(setup: Setup, variant: str, index: int, folder: Path) -> dict:
    """One pair: both start methods in the order of its index (even: forked first), and their ratios."""
    order = SIDES if index % 2 == 0 else SIDES[::-1]
    sides = {side: engine_side(setup, variant, folder, {START_METHOD_ENV: side}) for side in order}
    forked, spawned = sides["forkserver"], sides["spawn"]
    return {"pair": index, "first": order[0], "forkserver": forked, "spawn": spawned,
            "tpot_ratio": ratio(forked["tpot_s"], spawned["tpot_s"]),
            "ttft_ratio": ratio(forked["ttft_s"], spawned["ttft_s"]),
            "same_tokens": forked["token_ids"] == spawned["token_ids"] and forked["text"] == spawned["text"]}


def summary(pairs: list[dict]) -> dict:
    """A variant's pairs with the medians and ranges of their ratios."""
    result = {"pairs": pairs, "same_work": all(p["same_tokens"] for p in pairs), **ratio_spread(pairs)}
    for key in ("tpot_ratio", "ttft_ratio"):
        result[key + "_slower_pairs"] = sum(v > 1 for v in result[key + "s"])
    for side in SIDES:
        for figure in ("ttft_s", "tpot_s"):
            values = [p[side][figure] for p in pairs if p[side][figure] is not None]
            result[f"{side}_{figure}_median"] = statistics.median(values) if values else None
    return result


def table(variants: dict) -> str:
    """One line per pair, then each variant's medians."""
    rows = [("variant", "pair", "first", "forked TPOT ms", "spawned TPOT ms", "TPOT ratio", "forked TTFT ms",
             "spawned TTFT ms", "TTFT ratio", "tokens")]
    for name, result in variants.items():
        for p in result["pairs"]:
            f, s = p["forkserver"], p["spawn"]
            rows.append((name, str(p["pair"] + 1), p["first"], ms(f["tpot_s"], 3), ms(s["tpot_s"], 3),
                         fixed(p["tpot_ratio"], 3), ms(f["ttft_s"], 3), ms(s["ttft_s"], 3), fixed(p["ttft_ratio"], 3),
                         "same" if p["same_tokens"] else "DIFFERENT"))
    lines = fixed_width(rows).splitlines()
    for name, r in variants.items():
        n = len(r["pairs"])
        lines.append(f"{name}: forked/spawned TPOT median {fixed(r['tpot_ratio_median'], 3)} "
                     f"(range {fixed(r['tpot_ratio_min'], 3)}-{fixed(r['tpot_ratio_max'], 3)}, forked slower in "
                     f"{r['tpot_ratio_slower_pairs']} of {n} pairs); TTFT median {fixed(r['ttft_ratio_median'], 3)} "
                     f"(range {fixed(r['ttft_ratio_min'], 3)}-{fixed(r['ttft_ratio_max'], 3)}, forked slower in "
                     f"{r['ttft_ratio_slower_pairs']} of {n}); medians of the processes: TTFT "
                     f"{ms(r['forkserver_ttft_s_median'], 3)} forked, {ms(r['spawn_ttft_s_median'], 3)} spawned ms; "
                     f"TPOT {ms(r['forkserver_tpot_s_median'], 3)} forked, {ms(r['spawn_tpot_s_median'], 3)} spawned ms"
                     + ("" if r["same_work"] else "; NOT THE SAME TOKENS"))
    return "\n".join(lines)


def parser():
    return pair_parser(__doc__.splitlines()[0], "tiny", 10, "comma-separated", "the engine's")


def main(argv=None) -> int:
    args = parse(parser(), argv)
    preset = presets.load(args.preset)
    device = hardware.resolve(preset.device)
    if device.kind != "cpu":
        raise SystemExit(f"error: preset {preset.name!r} runs on {device.name}: GPU workers are always spawned, "
                         "so there is nothing to compare; choose a CPU preset")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    setup = Setup(preset.name, model_dir(preset), "cpu", preset.dtype, args.prompt_tokens, args.new_tokens,
                  args.repeats, args.threads, args.timeout)
    t0 = time.perf_counter()
    pairs = run_pairs(setup, variants, args.pairs, measure_pair)
    results = {name: summary(pairs[name]) for name in variants}
    report = {"setup": asdict(setup), "device_name": device.name, "prompt": FILLER,
              "ratio": "forkserver / spawn, of each process's median over its repeats",
              "order": "ABBA: pair 1 forks first, pair 2 spawns first, and so on",
              "wall_s": time.perf_counter() - t0, "variants": results}
    return finish(report, table(results), args.json)

if __name__ == "__main__":
    sys.exit(main())
