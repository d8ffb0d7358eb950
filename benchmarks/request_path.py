#!/usr/bin/env python3
"""Does the worker's request path add to what it times? The engine's Runner against a plain generate()
on the very same model object, in one process, alternated call by call.

    python benchmarks/request_path.py [--preset tiny] [--variant sdpa] [--calls 30] [--threads N]
        [--prompt-tokens 128] [--new-tokens 64] [--idle-ms 5] [--json PATH]

A variant's worker answers a request with `Runner.generate` (engine/worker/runner.py): it encodes the
prompt, resets the peak counters, starts the request's monitor, primes the model, starts its clock and
calls generate() with its streamer and stopping criterion. This loads that Runner once, then alternates
(ABBA) its `generate` with a bare `model.generate(...)` on the same model, the same prompt ids and the
same greedy settings, each token stamped by a minimal streamer. Both sides meet the same process, the
same weights in the same memory and the same moment of the machine, so what differs is the request
path alone; a comparison of fresh processes (vs_reference.py) also carries each process's own speed.
`--idle-ms` sleeps that long before every call, as a worker waits on its pipe between requests (0: back
to back). Prints the medians and ranges of TTFT and TPOT per side and their ratios (engine / plain).
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--variant", default="sdpa", help="a variant whose decode is generate(): baseline, sdpa, ...")
    parser.add_argument("--calls", type=int, default=30, help="timed calls per side")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--idle-ms", type=float, default=5.0, help="sleep before every call, as between requests")
    parser.add_argument("--json", help="write every call's figures here")
    args = parser.parse_args(argv)
    import torch

    from engine import metrics, presets, report
    from engine.events import Request, WorkerSpec
    from engine.views.tables import fixed, ms
    from engine.worker.instruments import FirstForward, TimingStreamer
    from engine.worker.runner import Runner
    if args.threads:
        torch.set_num_threads(args.threads)
    runner = Runner(WorkerSpec(presets.load(args.preset), args.variant, "cpu"), lambda event: None)
    if runner.decoder is not None:
        parser.error(f"{args.variant} decodes with its own compiled loop, not generate(): choose another variant")
    cancel = threading.Event()
    runner.warm_up(cancel)
    request = Request(1, "Why is decoding bound by memory bandwidth?", args.new_tokens, ignore_eos=True,
                      prompt_tokens=args.prompt_tokens, live=False)
    ids, mask = runner.encode(request)

    def plain() -> tuple[metrics.Timings, dict]:
        streamer = TimingStreamer()
        with torch.inference_mode(), runner.attention_context():
            prefill = FirstForward(runner.model)
            t_start = time.perf_counter()
            runner.model.generate(input_ids=ids, attention_mask=mask, streamer=streamer,
                                  **runner.generation_kwargs(request))
        marks = {"start": t_start, "prefill_began": prefill.began, "prefill_ended": prefill.ended,
                 "first_token": streamer.times[0]}
        return metrics.timings(t_start, streamer.times), report.phases(marks)

    def engine() -> tuple[metrics.Timings, dict]:
        finished = runner.generate(request, cancel)
        return metrics.timings(finished.t_start, finished.token_times), report.phases(finished.phases)

    sides = {"engine": engine, "plain": plain}
    for side in sides.values():             # one untimed call each at these lengths
        side()
    gc.collect()
    gc.freeze()                              # as a worker does once loaded
    found: dict[str, list[tuple[metrics.Timings, dict]]] = {name: [] for name in sides}
    for call in range(args.calls):
        order = ("engine", "plain") if call % 2 == 0 else ("plain", "engine")
        for name in order:
            time.sleep(args.idle_ms / 1000)
            found[name].append(sides[name]())
    figures = {}
    for name, runs in found.items():
        for key in ("ttft_s", "tpot_s"):
            values = [getattr(run, key) for run, _ in runs]
            figures[f"{name}_{key}"] = {"median": statistics.median(values), "min": min(values), "max": max(values),
                                        "values": values}
        figures[f"{name}_ttft_parts_s"] = {key: statistics.median(steps[key] for _, steps in runs)
                                           for key, _, _ in report.IN_TTFT}
    print(f"{args.preset}, {args.variant}, {torch.get_num_threads()} threads, prompt {args.prompt_tokens}, "
          f"{args.new_tokens} new tokens, {args.calls} calls per side alternated, {args.idle_ms:g} ms idle before each")
    for key, label in (("ttft_s", "TTFT"), ("tpot_s", "TPOT")):
        engine_side, plain_side = figures[f"engine_{key}"], figures[f"plain_{key}"]
        print(f"{label}: engine {ms(engine_side['median'], 3)} ms ({ms(engine_side['min'], 3)}-{ms(engine_side['max'], 3)}), "
              f"plain {ms(plain_side['median'], 3)} ms ({ms(plain_side['min'], 3)}-{ms(plain_side['max'], 3)}), "
              f"engine / plain {fixed(engine_side['median'] / plain_side['median'], 3)}")
    print("TTFT in three, engine / plain (medians): " + ", ".join(
        f"{key.removesuffix('_s').replace('_', ' ')} {ms(figures['engine_ttft_parts_s'][key], 3)} / "
        f"{ms(figures['plain_ttft_parts_s'][key], 3)} ms" for key, _, _ in report.IN_TTFT))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "threads": torch.get_num_threads(),
                                               "torch": torch.__version__, **figures}, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
