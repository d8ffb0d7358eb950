"""The benchmark: every (variant, prompt length) cell in fair mode after a warm-up, plus the
device's measured bandwidth and the engine's overhead against a bare decode loop, timed in
back-to-back pairs."""
from __future__ import annotations

import sys
import time

from engine import events, metrics
from engine.pool import Engine
from engine.presets import Preset
from engine.spec import RunSpec, lengths
from engine.views.tables import fixed, fixed_width, general, ms, ms_range, percent, size
from engine.report import host_note

FILLER = "The quick brown fox jumps over the lazy dog while the attention kernel streams its weights. "


def timeline(t0: float, copy=None):
    """A log of where a long GPU run spends its minutes: each line on stderr (and in `copy`, a text
    file, if given) with the seconds since `t0`."""
    def log(line: str) -> None:
        stamped = f"[{time.perf_counter() - t0:5.0f} s] {line}"
        for out in (sys.stderr, copy):
            if out is not None:
                print(stamped, file=out, flush=True)
    return log


def run_bench(preset: Preset, variants: list[str], prompt_lengths: list[int], new_tokens: int, repeats: int,
              batch_size: int = 1, log=None, request_timeout_s: float = 900.0, threads: int | None = None,
              spare_cores: int = 0) -> dict:
    """Measure every cell; returns the run report with `overhead_ratio` and the bandwidths added (`threads`,
    `spare_cores`: the Engine's)."""
    t0 = time.perf_counter()
    log = log or timeline(t0)
    with Engine(preset, request_timeout_s=request_timeout_s, threads=threads, spare_cores=spare_cores) as engine:
        reasons = {name: reason for name, _, reason in engine.variant_choices()}
        first = next((v for v in variants if v in reasons and reasons[v] is None), None)
        run = engine.start(RunSpec(FILLER, variants, new_tokens, repeats=repeats, ignore_eos=True,
                                   batch_size=batch_size, cells=lengths(prompt_lengths), warmup_requests=1,
                                   live=False))
        found = {}

        def handle(event) -> None:
            if isinstance(event, events.Loaded):
                log(f"  {event.variant}: loaded in {event.load_s:.1f} s, warmed up in {event.warmup_s:.1f} s "
                    f"({event.label})")
            elif isinstance(event, (events.Failed, events.Unavailable)):
                log(f"  {event.variant}: {event.reason}")
            elif isinstance(event, events.Finished) and len(event.token_times) > 1:
                timed = metrics.timings(event.t_start, event.token_times)
                log(f"  {event.variant}, prompt {event.prompt_tokens}: {len(timed.times)} tokens, TTFT "
                    f"{ms(timed.ttft_s)} ms, TPOT {ms(timed.tpot_s, 2)} ms")
            elif isinstance(event, events.RunDone):
                found["report"] = event.report

        run.follow(handle, lambda: engine.cancel(run.id))     # Ctrl-C: stop, keep the cells measured so far
        report = found["report"]
        reference = next((r for r in report["results"] if r["variant"] == first and r["status"] == "ok"), None)
        overhead = None
        if reference is not None and not report["cancelled"]:
            try:
                overhead = engine.probe(first, "overhead", prompt_tokens=reference["prompt_length"],
                                        new_tokens=new_tokens)
            except RuntimeError as error:
                log(f"probe failed: {error}")
        device = engine.device
    bandwidth = report.get("peak_bandwidth_bytes_per_s", {}).get("measured")   # measured by the engine
    if bandwidth:
        log(f"measured copy bandwidth: {bandwidth / 1e9:.0f} GB/s ({device.name})")
    report["overhead_ratio"] = overhead["ratio"] if overhead else None
    report["overhead_reference"] = {
        "variant": first, "prompt_length": reference["prompt_length"] if reference else None,
        "run_tpot_s": reference["tpot_s"] if reference else None,      # the cell's median in the run, for scale
        **{key: overhead[key] if overhead else None
           for key in ("worker_tpot_s", "bare_tpot_s", "worker_runs_s", "bare_runs_s", "pair_ratios")},
        "clock": "cuda events" if device.kind == "cuda" else "perf_counter",
        "method": "the median over pairs of (engine TPOT / bare-loop TPOT), the pair's two runs back to back "
                  "in the same worker (order alternating), after one warm-up pair",
        "bare_loop": "the same decode path without the engine's streamer, events and memory sampler: "
                     "generate() timed as (T(N) - T(1)) / (N - 1), or the compiled step loop"}
    report["new_tokens"] = new_tokens
    report["prompt_lengths"] = prompt_lengths
    report["wall_s"] = time.perf_counter() - t0
    return report


def overhead_line(report: dict) -> str | None:
    """The overhead ratio and the pairs it is the median of: each pair's worker and bare-loop TPOT and
    their ratio, in the order run (the stated ratio is the middle one, or the mean of the two middle ones)."""
    ratio, ref = report.get("overhead_ratio"), report.get("overhead_reference") or {}
    if ratio is None:
        return None
    pairs = ", ".join(f"{ms(worker, 3)}/{ms(bare, 3)} ms = {pair:.3f}"
                      for worker, bare, pair in zip(ref["worker_runs_s"], ref["bare_runs_s"], ref["pair_ratios"]))
    return (f"overhead: worker TPOT / bare-loop TPOT = {ratio:.3f}, the median of the ratios of "
            f"{len(ref['pair_ratios'])} back-to-back pairs ({ref['variant']}, prompt {ref['prompt_length']}, "
            f"{ref['clock']}): {pairs}")


def table(report: dict) -> str:
    """One line per cell."""
    rows = [("variant", "prompt", "status", "TTFT ms", "TPOT ms", "min-max ms", "tok/s", "MBU sheet", "MBU copy",
             "peak memory")]
    for r in report["results"]:
        rows.append((r["variant"], general(r.get("prompt_length")), r["status"], ms(r["ttft_s"], 2),
                     ms(r["tpot_s"], 2), ms_range(r["tpot_min_s"], r["tpot_max_s"]), fixed(r["tokens_per_s"]),
                     percent(r["mbu"]), percent(r.get("mbu_measured")), size(r["peak_memory_bytes"])))
    lines = fixed_width(rows).splitlines()
    seen = set()
    for r in report["results"]:
        if r["reason"] and r["variant"] not in seen:
            seen.add(r["variant"])
            lines.append(f"  {r['variant']}: {r['reason']}")
    for r in report["results"]:
        note = host_note(r)
        if note:
            lines.append(f"  {r['variant']}, prompt {r.get('prompt_length', '-')}: {note}")
    overhead = overhead_line(report)
    if overhead:
        lines.append(overhead)
    bw = report.get("peak_bandwidth_bytes_per_s", {})
    lines.append("bandwidth: measured " + ("-" if not bw.get("measured") else f"{bw['measured'] / 1e9:.0f} GB/s")
                 + ", datasheet " + ("-" if not bw.get("datasheet") else f"{bw['datasheet'] / 1e9:.0f} GB/s"))
    return "\n".join(lines)
