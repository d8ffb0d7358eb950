"""A run's report: raw worker measurements in, metrics out, shaped as `python -m engine run --json`."""
from __future__ import annotations

import dataclasses
import importlib.metadata
import platform
import time

from engine import metrics, variants, verdict
from engine.hardware import Device
from engine.presets import Preset
from engine.spec import RunSpec
from engine.variants import REFERENCE, Variant

VERSIONED = ("torch", "transformers", "accelerate", "bitsandbytes", "flash-attn", "flash-attn-4", "optimum",
             "gradio", "nvidia-ml-py")


def versions() -> dict:
    """Library versions that make a number reproducible (read without importing the libraries)."""
    found = {"python": platform.python_version()}
    for package in VERSIONED:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    return found


def measure(finished, weights_bytes: int, peak_bandwidth: float | None, use_cache: bool) -> dict:
    """Metrics of one Finished event (one repeat); `weights_bytes`: the weights a decode step reads."""
    timed = metrics.timings(finished.t_start, finished.token_times, finished.batch_size)
    n = len(timed.times)
    cache = finished.cache
    kv_mean = kv_end = 0
    if use_cache and cache:
        shape = (cache["layers"], cache["kv_heads"], cache["head_dim"])
        kv_mean = metrics.kv_cache_bytes(*shape, metrics.mean_decode_context(finished.prompt_tokens, n),
                                         finished.batch_size, cache["bytes_per_element"])
        kv_end = metrics.kv_cache_bytes(*shape, metrics.cached_positions(finished.prompt_tokens, n),
                                        finished.batch_size, cache["bytes_per_element"])
    return {
        "output_tokens": timed.output_tokens,
        "ttft_s": timed.ttft_s,
        "tpot_s": timed.tpot_s,
        "e2e_s": timed.e2e_s,
        "tokens_per_s": timed.tokens_per_s,
        "itl_p50_s": metrics.percentile(timed.itl_s, 50),
        "itl_p90_s": metrics.percentile(timed.itl_s, 90),
        "itl_p99_s": metrics.percentile(timed.itl_s, 99),
        "kv_cache_bytes": kv_end,
        "decode_bytes_per_step": weights_bytes + kv_mean,    # what one decode step must read at least
        "mbu": metrics.mbu(weights_bytes, kv_mean, timed.tpot_s, peak_bandwidth),
    }


# before the clock (not in TTFT): the orchestrator's send to the worker's read, the prompt's encoding, the
# request's setup, the prime
BEFORE_CLOCK = (("pipe_s", "sent", "received"), ("encode_s", "received", "prompt_ready"),
                ("setup_s", "prompt_ready", "prepared"), ("prime_s", "prepared", "start"))
# TTFT itself, in three: generate()'s own work before the model's first forward pass, that pass (the prefill),
# and from its end until the first token reaches the host (choosing it, the copy); the three add up to TTFT
IN_TTFT = (("before_prefill_s", "start", "prefill_began"), ("prefill_s", "prefill_began", "prefill_ended"),
           ("first_token_out_s", "prefill_ended", "first_token"))
PHASES = BEFORE_CLOCK + IN_TTFT


def phases(marks: dict) -> dict:
    """A request's steps in seconds, from its marks (Finished.phases): those before its clock (BEFORE_CLOCK)
    and those of its first token (IN_TTFT); None where not recorded (a served variant's prefill is its
    server's)."""
    return {key: marks[end] - marks[begin] if marks.get(begin) is not None and marks.get(end) is not None else None
            for key, begin, end in PHASES}


def _median_of(rows: list[dict], key: str):
    values = [row[key] for row in rows if row[key] is not None]
    return metrics.median(values) if values else None


def peak_memory(finished) -> int | None:
    """Peak memory of the worker: allocator reserved on CUDA, peak RSS on a CPU."""
    memory = finished.memory
    return memory.get("peak_reserved_bytes") or memory.get("peak_rss_bytes") or memory.get("rss_bytes")


EMPTY_METRICS = ("output_tokens", "decode_bytes_per_step", "load_s", "ttft_s", "tpot_s", "e2e_s", "tokens_per_s", "itl_p50_s",
                 "itl_p90_s", "itl_p99_s", "peak_memory_bytes", "weights_bytes", "kv_cache_bytes", "mbu",
                 "tpot_min_s", "tpot_max_s", "queue_s", "warmup_s", "cpu_threads", "host_others_cores", "host_busy")
# Other processes may keep this much of a core busy beyond the cores a worker leaves spare before
# its timings count as disturbed (kernel threads and the orchestrator use a little all the time).
HOST_BUSY_MARGIN_CORES = 0.25


def host_load(finished: list, judged: bool = True) -> dict:
    """The CPU around the timed requests: the worker's threads, the most cores other processes kept
    busy on its cores in any repeat, and `host_busy` when that surely went past the cores it left
    spare (beyond the margin, less the figure's resolution: short requests are judged leniently).
    Not `judged` (None) in a race, where the other variants take the cores and "contended" says so."""
    hosts = [f.host for f in finished if f.host and f.host.get("others_cores") is not None]
    if not hosts:
        return {}

    def busy(host: dict) -> bool:
        spare = max(host["cores"] - host["threads"], 0)
        return host["others_cores"] - host["resolution_cores"] > spare + HOST_BUSY_MARGIN_CORES

    return {"cpu_threads": hosts[0]["threads"], "host_others_cores": max(h["others_cores"] for h in hosts),
            "host_busy": any(busy(h) for h in hosts) if judged else None}


def tpot_range(row: dict) -> tuple[float, float] | None:
    """The row's TPOT (min, max) over its repeats, when it has more than one."""
    if (row.get("repeats") or 0) < 2 or row.get("tpot_min_s") is None or row.get("tpot_max_s") is None:
        return None
    return row["tpot_min_s"], row["tpot_max_s"]


def tpot_spread(row: dict) -> float | None:
    """How far the slowest repeat's TPOT is above the fastest's (max / min - 1), with two or more."""
    spread = tpot_range(row)
    return None if spread is None or not spread[0] else spread[1] / spread[0] - 1


def host_note(row: dict) -> str | None:
    """Why a row's timings are slower than the device can do, when other processes took its CPU."""
    if not row.get("host_busy"):
        return None
    return (f"other processes kept {row['host_others_cores']:.1f} of its CPU cores busy while it was timed: "
            "its figures are slower than this device can do (close them, or leave a core spare)")


def result(outcome, reference_ids, peak_bandwidth: float | None, variant: Variant, asked_repeats: int = 1,
           stopped: bool = False) -> dict:
    """One row of `results`; `reference_ids`: the reference variant's tokens in the same cell; a run
    `stopped` before this variant made its `asked_repeats` leaves it cancelled, its figures those it made."""
    row = {"variant": outcome.variant, "label": variant.display_label(), "runtime": variant.runtime,
           "status": "ok", "reason": None,
           "text": "", "first_diff_token": None, "identical_token_share": None, "contended": outcome.contended,
           "placement": outcome.placement, "repeats": len(outcome.finished), "token_times_s": [],
           "token_times_repeats_s": [], "token_ids": [], "tpot_repeats_s": [], "ttft_repeats_s": [],
           "e2e_repeats_s": [], "phases_repeats_s": [],
           "tokens_per_s_repeats": [], "peak_memory_repeats_bytes": [], "preemptions_repeats": [],
           "sm_clock_mhz_repeats": [], "memory": {}, "warmup_requests": len(outcome.warmups),
           # the warm-ups are the timed request itself, run first and left out of every figure
           "warmup_e2e_s": [metrics.timings(f.t_start, f.token_times).e2e_s for f in outcome.warmups],
           "shown_repeat": None}
    row.update({key: None for key in EMPTY_METRICS})
    loaded = outcome.loaded
    if loaded is not None:
        row.update(load_s=loaded.load_s, warmup_s=loaded.warmup_s, weights_bytes=loaded.weights_bytes,
                   label=loaded.label, device=loaded.device)       # "cuda:1" on a host with several GPUs
    if outcome.unavailable:
        row.update(status="unavailable", reason=outcome.unavailable)
    elif outcome.failed is not None and not outcome.finished:
        row.update(status="failed", reason=outcome.failed.reason)
    elif not outcome.finished and loaded is None:
        row.update(status="cancelled", reason="the run was stopped before this variant had loaded")
    elif not outcome.finished:
        row.update(status="cancelled", reason="the run was stopped before this variant's turn")
    else:
        read = (row["weights_bytes"] or 0) - (loaded.input_table_bytes if loaded is not None else 0)
        _timed(row, outcome, read, peak_bandwidth, variant.use_cache, reference_ids)
        if variant.remote:
            _served(row, outcome)
        if stopped and row["status"] == "ok" and len(outcome.finished) < asked_repeats:
            row.update(status="cancelled", reason=f"stopped by the user after {len(outcome.finished)} of "
                       f"{asked_repeats} repeats: the figures cover those")
    return row


def _served(row: dict, outcome) -> None:
    """A served variant's row: no local memory, weights or MBU (the server's memory is its own), and
    what the server said of itself and measured, the medians over the repeats."""
    row.update(weights_bytes=None, kv_cache_bytes=None, decode_bytes_per_step=None, mbu=None, memory={},
               peak_memory_bytes=None, peak_memory_repeats_bytes=[None] * len(outcome.finished))
    reports = [f.server for f in outcome.finished]
    server = dict(reports[0])
    for key in ("ttft_s", "tpot_s", "queue_s", "e2e_s"):
        values = [r[key] for r in reports if r.get(key) is not None]
        server[key] = metrics.median(values) if values else None
        server[key + "_repeats"] = [r.get(key) for r in reports]
    server["multi_token_chunks"] = sum(r.get("multi_token_chunks") or 0 for r in reports)
    server["completion_tokens_repeats"] = [r.get("completion_tokens") for r in reports]
    row["server"] = server
    if -1 in row["token_ids"]:                # the server streamed text without its token ids
        row.update(first_diff_token=None, identical_token_share=None, token_ids=[])
        server["token_ids"] = "not returned by the server: no first difference against the baseline"


def _timed(row: dict, outcome, read_bytes: int, peak_bandwidth: float | None, use_cache: bool,
           reference_ids) -> None:
    """The figures of a variant that answered: each the median over its repeats of that figure, every
    repeat's token times beside them, so that anyone can recompute them from the JSON alone."""
    rows = [measure(f, read_bytes, peak_bandwidth, use_cache) for f in outcome.finished]
    shown = outcome.finished[-1]
    for key in rows[0]:
        row[key] = _median_of(rows, key) if key.endswith(("_s", "mbu")) else rows[-1][key]    # the shown repeat's
    tpots = [r["tpot_s"] for r in rows if r["tpot_s"] is not None]
    times = [list(metrics.timings(f.t_start, f.token_times).times) for f in outcome.finished]
    peaks = [peak_memory(f) for f in outcome.finished]
    row.update(tpot_min_s=min(tpots) if tpots else None, tpot_max_s=max(tpots) if tpots else None,
               tpot_repeats_s=[r["tpot_s"] for r in rows],     # in the order run: shows a slow first repeat
               # each figure's value per repeat: the ranges that engine/verdict.py judges differences by
               ttft_repeats_s=[r["ttft_s"] for r in rows], e2e_repeats_s=[r["e2e_s"] for r in rows],
               tokens_per_s_repeats=[r["tokens_per_s"] for r in rows],
               peak_memory_repeats_bytes=peaks,
               # beside each repeat, what could have slowed it: the serving thread taken off its core,
               # a lower GPU clock
               preemptions_repeats=[f.host.get("preemptions") for f in outcome.finished],
               # and the steps before its clock (TTFT counts none of them)
               phases_repeats_s=[phases(f.phases) for f in outcome.finished],
               sm_clock_mhz_repeats=[f.host.get("sm_clock_mhz") for f in outcome.finished],
               queue_s=outcome.finished[0].t_start - outcome.t_ready if outcome.t_ready else None,
               peak_memory_bytes=max((p for p in peaks if p), default=None), token_times_repeats_s=times,
               # the repeat shown (its text, ids, token times and memory): the last timed one, which the
               # page streamed last and its charts draw
               shown_repeat=len(outcome.finished) - 1, text=shown.text, memory=dict(shown.memory),
               prompt_tokens=shown.prompt_tokens, token_times_s=times[-1], token_ids=list(shown.token_ids))
    row.update(host_load(outcome.finished, judged=not outcome.contended))
    if reference_ids is not None and outcome.variant != REFERENCE:
        row["first_diff_token"] = metrics.first_difference(reference_ids, shown.token_ids)
        row["identical_token_share"] = metrics.identical_share(reference_ids, shown.token_ids)
    if any(f.cancelled for f in outcome.finished):
        row.update(status="cancelled", reason="stopped by the user: figures cover the tokens made until then")
    elif outcome.failed is not None:
        row.update(status="failed", reason=f"{outcome.failed.reason} (after {len(rows)} good repeat(s))")


def build(spec: RunSpec, preset: Preset, device: Device, outcomes: dict, cancelled: bool = False,
          stop_reason: str | None = None, measured_bandwidth: float | None = None,
          quality: dict | None = None) -> dict:
    """The whole report of a run of `spec`; `outcomes` maps (variant, cell index) to what it produced.

    The run's settings are its RunSpec, written whole; `prompt_tokens` is the prompt as the workers
    tokenized it (after any chat template). With a grid (spec.cells) each row also says which cell it
    measures. `stop_reason`: why the run was stopped when not by its owner (a page's time limit), the
    reason of every row it left cancelled; `measured_bandwidth`: the device's measured copy bandwidth,
    against which each row's MBU is given beside the datasheet's; `quality`: each variant's entry
    (engine/quality.py), measured on the run's first cell, whose rows carry it (the other cells' None).
    """
    peak = device.datasheet_bandwidth_bytes_per_s
    results = []
    for index, cell in enumerate(spec.grid):        # a Cell, or None for the plain run
        reference = outcomes.get((REFERENCE, index))
        reference_ids = reference.finished[-1].token_ids if reference and reference.finished else None
        for name in spec.variants:
            if (name, index) in outcomes:
                row = result(outcomes[(name, index)], reference_ids, peak, variants.lookup(name, preset),
                             spec.repeats, cancelled)
                if stop_reason and row["status"] == "cancelled":
                    row["reason"] = stop_reason            # not the user's Stop: the page's limit
                read = row.get("decode_bytes_per_step")
                row["mbu_measured"] = metrics.mbu(read, 0, row.get("tpot_s"), measured_bandwidth) if read else None
                row["quality"] = (quality or {}).get(name) if index == 0 else None
                if cell is not None:
                    row.update(cell=index, max_new_tokens=cell.max_new_tokens, pad_ratio=cell.pad_ratio,
                               batch_size=cell.batch_size or spec.batch_size)
                results.append(row)
    # the prompt as given (not a cell's synthetic length), as the workers tokenized it
    tokenized = prompt_tokens([row for row in results if "cell" not in row or not spec.grid[row["cell"]].prompt_tokens])
    for row in results:
        if "cell" in row:
            row["prompt_length"] = spec.grid[row["cell"]].prompt_tokens or row.get("prompt_tokens") or tokenized
    report = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": {**device.as_dict(), "peak_bandwidth_bytes_per_s": peak},
        "peak_bandwidth_bytes_per_s": {"measured": measured_bandwidth, "datasheet": peak},
        "versions": versions(),
        "preset": {"name": preset.name, "title": preset.title, "source": preset.source,
                   "model_id": preset.model_id, "package": preset.package, "dtype": preset.dtype, "random_weights": preset.random_weights,
                   "seed": preset.seed, "context_length": preset.context_length},
        **dataclasses.asdict(spec),
        "prompt_tokens": tokenized,
        "decoding": "greedy",
        "cancelled": cancelled,
        "stop_reason": stop_reason,
        "results": results,
    }
    if not spec.cells:                  # one cell: the variants against the reference, and the verdict
        report["comparison"] = verdict.judge(results)
    return report


def prompt_tokens(results: list[dict]) -> int | None:
    """The prompt's length as the workers tokenized it, from rows that ran it: the reference's count,
    else the first that counted it (a served variant without the tokenizer sends text and counts 0);
    None when no worker ran it."""
    counts = [row for row in results if row.get("prompt_tokens")]
    reference = [row["prompt_tokens"] for row in counts if row["variant"] == REFERENCE]
    return (reference or [row["prompt_tokens"] for row in counts] or [None])[0]
