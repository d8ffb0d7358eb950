#!/usr/bin/env python3
"""How long a person waits for the page's default run: the default preset, its default variants and
token count, the page's repeats and warm-up, quality scoring on, as the dashboard's engine runs it
(one core left to the page on a CPU).

    python benchmarks/default_run.py [--warm-runs 3] [--json PATH]

The first run loads the workers (cold); the next ones find them loaded (warm), as every run after a
person's first does. Prints each run's wall time from Run to the report, and the warm runs' median.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warm-runs", type=int, default=3)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    from app import DEFAULT_PRESET
    from engine import presets
    from engine.spec import RunSpec
    from ui.compare import REPEATS_DEFAULT
    from ui.examples import QUESTION
    from ui.state import Engines
    engines = Engines()                       # the page's: one core spare on a CPU
    engine = engines.get(DEFAULT_PRESET)
    preset = presets.load(DEFAULT_PRESET)
    spec = RunSpec(QUESTION, preset.variants, preset.max_new_tokens, repeats=REPEATS_DEFAULT)
    runs = []
    try:
        for index in range(1 + args.warm_runs):
            started = time.perf_counter()
            report = list(engine.run(spec))[-1].report
            seconds = time.perf_counter() - started
            rows = {row["variant"]: row for row in report["results"]}
            runs.append({"kind": "cold" if index == 0 else "warm", "seconds": seconds,
                         "statuses": {name: row["status"] for name, row in rows.items()},
                         "tpot_s": {name: row["tpot_s"] for name, row in rows.items()},
                         "tokens": {name: row["output_tokens"] for name, row in rows.items()},
                         "quality": {name: (row["quality"] or {}).get("status") for name, row in rows.items()}})
            print(f"{runs[-1]['kind']} run: {seconds:.1f} s  ({', '.join(f'{n} {r}' for n, r in runs[-1]['statuses'].items())})")
    finally:
        engine.close()
    warm = [run["seconds"] for run in runs[1:]]
    summary = {"preset": DEFAULT_PRESET, "variants": list(preset.variants), "max_new_tokens": preset.max_new_tokens,
               "repeats": REPEATS_DEFAULT, "threads": engine.threads, "cores": engine.cores,
               "warm_median_s": statistics.median(warm) if warm else None, "runs": runs}
    if warm:
        print(f"warm runs: median {summary['warm_median_s']:.1f} s (range {min(warm):.1f}-{max(warm):.1f} s), "
              f"{preset.variants} x {preset.max_new_tokens} tokens x {REPEATS_DEFAULT} repeats + 1 warm-up, "
              f"{engine.threads} thread(s) per worker on {engine.cores} cores")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
