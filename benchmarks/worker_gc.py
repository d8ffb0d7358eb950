"""Benchmark: what a full garbage collection costs a loaded worker, before and after gc.freeze().

Loads a variant in this process as a worker does (engine.worker.serve.load: load, warm-up), then
times full collections (gc.collect()) with every object still tracked, and again once the
long-lived ones are frozen, as the worker freezes them before it serves. A collection that runs
mid-request stalls the token it lands on by that much.

    python benchmarks/worker_gc.py [--preset tiny] [--variant sdpa] [--repeats 5]
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")     # as in a worker

from engine import presets  # noqa: E402
from engine.events import WorkerSpec  # noqa: E402
from engine.worker.runner import Runner  # noqa: E402


def collection_ms(repeats: int) -> list[float]:
    """The wall time of `repeats` full collections, ms each."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        gc.collect()
        times.append((time.perf_counter() - t0) * 1000)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--variant", default="sdpa")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    runner = Runner(WorkerSpec(presets.load(args.preset), args.variant, "cpu"), lambda event: None)
    runner.warm_up(threading.Event())
    tracked = len(gc.get_objects())
    before = collection_ms(args.repeats)
    gc.freeze()
    after = collection_ms(args.repeats)
    print(f"{args.preset}/{args.variant}: {tracked} objects tracked after load and warm-up")
    print(f"full collection, all tracked: median {statistics.median(before):.2f} ms "
          f"({', '.join(f'{t:.2f}' for t in before)})")
    print(f"full collection, after gc.freeze(): median {statistics.median(after):.2f} ms "
          f"({', '.join(f'{t:.2f}' for t in after)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
