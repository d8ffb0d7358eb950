#!/usr/bin/env python3
"""What work done right before a request's clock starts costs its time to first token.

    python benchmarks/request_setup.py [--preset tiny] [--runs 40]

Plain greedy generate() on a preset's model in this process, TTFT timed by a minimal streamer, the
setups alternated: nothing before the call; a thread started (and parked) just before it, as a
per-request monitor thread would be; 5 ms asleep just before it, as a worker waits for its next
request; 5 ms asleep, then the short untimed forward pass a worker makes just before its clock
starts (engine/worker/runner.py, Runner.prime); each alone and while another thread, started once,
waits all along. The engine keeps one monitor thread per worker, and primes each request, because
of what this prints.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--runs", type=int, default=40, help="timed calls per setup and round")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    args = parser.parse_args()
    import torch

    from engine import presets
    from engine.variants import CATALOG
    from engine.worker import models
    from engine.worker.instruments import TimingStreamer
    from engine.worker.runner import PRIME_TOKENS
    model, tokenizer = models.load_model(presets.load(args.preset), CATALOG["sdpa"], "cpu")
    ids = torch.randint(3, 200, (1, args.prompt_tokens))

    def ttft_s() -> float:
        streamer = TimingStreamer()
        with torch.inference_mode():
            t0 = time.perf_counter()
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), streamer=streamer, do_sample=False,
                           max_new_tokens=2, min_new_tokens=2, pad_token_id=tokenizer.pad_token_id)
        return streamer.times[0] - t0

    def after_a_new_thread() -> float:
        release, parked = threading.Event(), threading.Event()
        thread = threading.Thread(target=lambda: (parked.set(), release.wait()))
        thread.start()
        parked.wait()
        seconds = ttft_s()
        release.set()
        thread.join()
        return seconds

    def after_idling() -> float:
        time.sleep(0.005)                      # as a worker waits on its pipe for the next request
        return ttft_s()

    def after_idling_then_a_prime() -> float:
        time.sleep(0.005)
        with torch.inference_mode():           # what the worker does just before its clock (Runner.prime)
            model(input_ids=ids[:, -PRIME_TOKENS:], attention_mask=torch.ones_like(ids[:, -PRIME_TOKENS:]),
                  use_cache=False)
        return ttft_s()

    setups = {"nothing": ttft_s, "a thread started just before": after_a_new_thread, "5 ms idle just before": after_idling,
              f"5 ms idle, then a forward of {PRIME_TOKENS} tokens": after_idling_then_a_prime}
    results: dict[str, list[float]] = {name: [] for name in setups}
    for round_ in range(2):
        if round_ == 1:                        # from now on a thread started once waits beside every call
            threading.Thread(target=threading.Event().wait, daemon=True).start()
        for name, setup in setups.items():
            for _ in range(3):
                setup()
            results[name].append(statistics.median(setup() for _ in range(args.runs)))
    print(f"{args.preset}, prompt {args.prompt_tokens}, torch threads {torch.get_num_threads()}: median TTFT ms")
    print(f"{'setup':40} {'alone':>8} {'beside a waiting thread':>24}")
    for name, (alone, beside) in results.items():
        print(f"{name:40} {alone * 1000:8.3f} {beside * 1000:24.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
