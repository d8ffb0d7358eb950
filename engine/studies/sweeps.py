"""Experiments: sweeps over a grid of cells that reproduce the classic inference findings.

Each experiment is data (variants, a grid, the figures to derive) plus a paragraph that says
what the chart shows and why. `run_sweep` measures every (variant, cell) through the engine in
fair mode, after one unmeasured warm-up request per cell, and derives the experiment's figures.
`start_sweep` does the same step by step: its `LiveSweep` holds the rows of the cells finished so
far, in the same shape, so that the dashboard can draw the chart while the sweep runs.
"""
from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable
from dataclasses import dataclass

from engine import events, report
from engine.outcomes import Outcome
from engine.pool import Engine, Run
from engine.presets import Preset
from engine.spec import Cell, RunSpec

PROMPT = "Attention reads every cached key and value for each new token, so memory bandwidth sets the pace. "


@dataclass(frozen=True)
class Experiment:
    """One sweep: which variants, which cells, which figures, and what it teaches."""
    name: str
    title: str
    explanation: str
    variants: tuple[str, ...]
    grid: Callable[[bool], list[tuple[dict, Cell]]]   # quick -> [(labels of the cell, cell)]
    max_new_tokens: Callable[[bool], int]
    y: tuple[str, ...]                                # the row fields the summary table shows


def _attention_grid(quick: bool):
    lengths = (64, 256) if quick else (256, 1024, 2048, 4096)
    cells = []
    for phase, new in (("prefill", 1), ("generation", 8 if quick else 64)):
        for pad in (0.0, 0.3):
            for length in lengths:
                cells.append(({"phase": phase}, Cell(prompt_tokens=length, max_new_tokens=new, batch_size=4,
                                                     pad_ratio=pad)))
    return cells


def _batch_grid(quick: bool):
    return [({}, Cell(prompt_tokens=64 if quick else 128, batch_size=b)) for b in ((1, 2, 4) if quick else (1, 2, 4, 8, 16))]


def _kv_grid(quick: bool):
    return [({}, Cell(prompt_tokens=32 if quick else 128, max_new_tokens=n))
            for n in ((8, 16, 32) if quick else (16, 32, 64, 128, 256))]


def _quant_grid(quick: bool):
    return [({}, Cell(prompt_tokens=None))]


def _lengths_grid(quick: bool):
    outputs = (4, 8, 16) if quick else (16, 32, 64, 128)
    inputs = (32, 64, 128) if quick else (128, 512, 1024, 2048)
    return ([({"axis": "output"}, Cell(prompt_tokens=inputs[0], max_new_tokens=n)) for n in outputs]
            + [({"axis": "input"}, Cell(prompt_tokens=n, max_new_tokens=outputs[0])) for n in inputs])


EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (
    Experiment(
        "attention", "FlashAttention and SDPA against eager attention, by prompt length and padding",
        "Eager attention writes the full prompt x prompt score matrix to memory and reads it back; fused "
        "kernels (SDPA, FlashAttention-2) tile it through on-chip memory instead. The work saved grows with "
        "the square of the prompt length, so the speedup over eager is small for short prompts and grows "
        "with length, and peak memory falls. Padding wastes part of the batch on pad tokens that every "
        "kernel still processes, which shrinks the gain. Prefill rows time the first token (the prompt pass); "
        "generation rows time the whole answer, where decoding, bound by memory bandwidth, dilutes the gain.",
        ("baseline", "sdpa", "sdpa-flash", "fa2"), _attention_grid, lambda quick: 8 if quick else 64,
        ("speedup_vs_baseline", "peak_memory_bytes")),
    Experiment(
        "batch", "Batching: throughput against time per token",
        "A decode step reads all the weights once, whatever the batch: with more sequences per step the same "
        "bytes serve more tokens, so throughput (tokens per second across the batch) rises almost in "
        "proportion while memory bandwidth is the limit. Each step does more arithmetic, so every user's "
        "tokens arrive a little slower (TPOT rises), until compute, not bandwidth, is the limit.",
        ("sdpa",), _batch_grid, lambda quick: 16 if quick else 64, ("tokens_per_s", "tpot_s")),
    Experiment(
        "kv-cache", "The KV cache: time per token against output length, with and without it",
        "With the cache each new token computes its own keys and values and reads the cached ones, so a step "
        "costs about the same all along. Without it every step recomputes the whole sequence so far: a step "
        "costs more with every token, and the total grows with the square of the output length.",
        ("sdpa", "no-kv-cache"), _kv_grid, lambda quick: 8 if quick else 16, ("tpot_s", "e2e_s")),
    Experiment(
        "quantization", "Quantization: memory, speed and agreement with full precision",
        "4-bit NF4 and 8-bit weights take a quarter and a half of the memory of 16-bit ones. Decoding reads "
        "every weight each step, so fewer bytes can mean faster tokens, but the kernels must dequantize on "
        "the fly, which at batch 1 often costs more than it saves. Rounding the weights changes the logits a "
        "little: greedy outputs agree with the full-precision baseline for a while, then may part ways.",
        ("baseline", "bnb-4bit", "bnb-8bit"), _quant_grid, lambda quick: 16 if quick else 64,
        ("weights_bytes", "tpot_s", "identical_token_share")),
    Experiment(
        "lengths", "Latency against output and input length",
        "End-to-end latency is the first token's wait plus one time-per-token for each further token: "
        "E2E = TTFT + TPOT x (N - 1), a straight line in the output length, predicted here from the "
        "longest answer's TTFT and TPOT. TTFT is the prompt pass: it grows with the input length, "
        "slowly while the GPU has idle capacity, then in proportion.",
        ("sdpa",), _lengths_grid, lambda quick: 4 if quick else 16,
        ("e2e_s", "predicted_e2e_s", "ttft_s")),
)}

ROW_FIELDS = ("experiment", "variant", "status", "reason", "phase", "axis", "prompt_length", "max_new_tokens",
              "batch_size", "pad_ratio", "ttft_s", "tpot_s", "e2e_s", "time_s", "speedup_vs_baseline",
              "predicted_e2e_s", "tokens_per_s", "output_tokens", "peak_memory_bytes", "weights_bytes",
              "kv_cache_bytes", "first_diff_token", "identical_token_share", "mbu", "mbu_measured", "cpu_threads",
              "host_others_cores", "host_busy")


def get(name: str) -> Experiment:
    """An experiment by name, or a ValueError that lists them."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose one of: {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]


def grid_for(experiment: Experiment, quick: bool, preset: Preset) -> tuple[list[tuple[dict, Cell]], list[str]]:
    """The cells that fit the preset's context, and a note for each cell left out."""
    fits, left_out = [], []
    new = experiment.max_new_tokens(quick)
    for labels, cell in experiment.grid(quick):
        tokens = (cell.prompt_tokens or 0) + (cell.max_new_tokens or new)
        if tokens <= preset.context_length and (cell.max_new_tokens or new) <= preset.max_new_tokens_cap:
            fits.append((labels, cell))
        else:
            left_out.append(f"{cell.prompt_tokens} prompt + {cell.max_new_tokens or new} new tokens exceed the "
                            f"context of {preset.context_length} (or the cap of {preset.max_new_tokens_cap} new "
                            f"tokens) of preset {preset.name!r}")
    return fits, left_out


def repeats_for(quick: bool) -> int:
    """Measured requests per (variant, cell): one on the quick grid, else three (rows keep the median)."""
    return 1 if quick else 3


def derive(experiment: Experiment, rows: list[dict]) -> list[dict]:
    """Add the experiment's derived figures to its rows (pure; rows are the engine's result rows)."""
    for row in rows:
        row["time_s"] = row["ttft_s"] if row.get("phase") == "prefill" else row["e2e_s"]
    if experiment.name == "attention":
        baseline = {r["cell"]: r["time_s"] for r in rows if r["variant"] == "baseline" and r["time_s"]}
        for row in rows:
            reference = baseline.get(row["cell"])
            row["speedup_vs_baseline"] = reference / row["time_s"] if reference and row["time_s"] else None
    if experiment.name == "lengths":
        outputs = [r for r in rows if r.get("axis") == "output" and r["status"] == "ok"]
        for variant in {r["variant"] for r in outputs}:
            mine = [r for r in outputs if r["variant"] == variant]
            reference = max(mine, key=lambda r: r["output_tokens"] or 0)
            for row in mine:
                n = row["output_tokens"] // max(row["batch_size"], 1)
                row["predicted_e2e_s"] = reference["ttft_s"] + reference["tpot_s"] * (n - 1)
    return rows


class LiveSweep:
    """A sweep in progress: fold its run's events in with `apply`; `sweep()` gives the rows of the
    (variant, cell) pairs finished so far, and `run_sweep`'s result once the run is done.

    Every answer names its cell. A cell is finished when its timed requests have all answered or one
    failed; a failure outside any request (the worker could not load), or an unavailable variant,
    finishes all of the variant's cells.
    """

    def __init__(self, experiment: Experiment, engine: Engine, spec: RunSpec, quick: bool, grid: list,
                 left_out: list[str], t0: float):
        self.experiment, self.spec, self.quick, self.grid, self.left_out, self.t0 = \
            experiment, spec, quick, grid, left_out, t0
        self.variants, self.repeats = list(spec.variants), spec.repeats
        self.preset, self.device = engine.preset, engine.device
        self.prompt_tokens = engine.validate(spec)              # raises InputError; the engine keeps the count
        self.loaded = engine.loaded()     # workers kept loaded from an earlier run send no Loaded event
        self.stages: dict[str, str] = {}                        # variant -> its last Status stage
        self._open = {(name, cell): Outcome(name) for name in self.variants for cell in range(len(grid))}
        self.outcomes: dict[tuple[str, int], Outcome] = {}      # finished (variant, cell) pairs only
        self.revision = 0                                       # +1 whenever a pair finishes
        self.result: dict | None = None

    @property
    def total(self) -> int:
        """Measured requests of the whole sweep: variants x cells x repeats."""
        return len(self._open) * self.repeats

    @property
    def settled(self) -> int:
        """Measured requests finished so far, counting those a failure or unavailability skipped."""
        if self.result is not None:
            return self.total
        return sum(self.repeats if key in self.outcomes else len(outcome.finished)
                   for key, outcome in self._open.items())

    @property
    def done(self) -> bool:
        return self.result is not None

    def apply(self, event) -> bool:
        """Fold one engine event in; True when the rows changed (a pair finished, or the run ended)."""
        if isinstance(event, events.RunDone):
            self.result = _sweep(self.experiment, self.quick, self.grid, self.left_out, event.report, self.t0)
            self.revision += 1
            return True
        name = getattr(event, "variant", None)
        if name not in self.variants:
            return False
        every = [(name, cell) for cell in range(len(self.grid))]
        if isinstance(event, events.Status):
            self.stages[name] = event.stage
        elif isinstance(event, events.Loaded):
            self.loaded[name] = event
        elif isinstance(event, events.Unavailable):
            return self._close(every, unavailable=event.reason)
        elif isinstance(event, events.Failed):
            return self._close(every if event.cell is None else [(name, event.cell)], failed=event)
        elif isinstance(event, events.Finished) and (name, event.cell) in self._open:
            outcome = self._open[(name, event.cell)]
            outcome.finished.append(event)
            if len(outcome.finished) == self.repeats:
                return self._close([(name, event.cell)])
        return False

    def _close(self, keys: list[tuple[str, int]], failed=None, unavailable=None) -> bool:
        """Finish the (variant, cell) pairs that are still open."""
        keys = [key for key in keys if key not in self.outcomes]
        for key in keys:
            outcome = self._open[key]
            outcome.failed, outcome.unavailable, outcome.loaded = failed, unavailable, self.loaded.get(key[0])
            self.outcomes[key] = outcome
        self.revision += bool(keys)
        return bool(keys)

    def sweep(self) -> dict:
        """The rows so far, shaped like `run_sweep`'s result (which it is, once the run is done)."""
        if self.result is not None:
            return self.result
        built = report.build(self.spec, self.preset, self.device, self.prompt_tokens, self.outcomes)
        return _sweep(self.experiment, self.quick, self.grid, self.left_out, built, self.t0)


def _sweep(experiment: Experiment, quick: bool, grid: list, left_out: list[str], built: dict, t0: float) -> dict:
    """A sweep's result from the engine's report: its rows labelled with their cell and derived."""
    rows = []
    for row in built["results"]:
        row.update(grid[row["cell"]][0], experiment=experiment.name,
                   max_new_tokens=grid[row["cell"]][1].max_new_tokens or experiment.max_new_tokens(quick))
        rows.append(row)
    return {"experiment": experiment.name, "title": experiment.title, "explanation": experiment.explanation,
            "quick": quick, "preset": built["preset"], "device": built["device"], "versions": built["versions"],
            "cancelled": built["cancelled"], "wall_s": time.perf_counter() - t0, "left_out": left_out,
            "results": derive(experiment, rows)}


def start_sweep(name: str, engine: Engine, quick: bool = False, variants: list[str] | None = None,
                t0: float | None = None) -> tuple[Run, LiveSweep]:
    """Start an experiment on `engine`; returns its run (to iterate, drain or cancel) and its live rows.

    Raises ValueError for an unknown experiment and InputError for input the engine refuses.
    """
    experiment = get(name)
    chosen = list(variants or experiment.variants)
    repeats = repeats_for(quick)
    t0 = time.perf_counter() if t0 is None else t0
    grid, left_out = grid_for(experiment, quick, engine.preset)
    spec = RunSpec(PROMPT, chosen, experiment.max_new_tokens(quick), repeats=repeats, ignore_eos=True,
                   cells=tuple(cell for _, cell in grid), warmup_requests=1)
    live = LiveSweep(experiment, engine, spec, quick, grid, left_out, t0)
    return engine.start(spec), live


def run_sweep(name: str, preset: Preset, quick: bool = False, variants: list[str] | None = None,
              on_event: Callable[[object], None] | None = None, engine: Engine | None = None,
              threads: int | None = None) -> dict:
    """Measure every (variant, cell) of an experiment; returns {experiment, preset, device, versions, results}.

    Pass an `engine` to reuse loaded workers (the dashboard does); `on_event` sees every engine event.
    """
    get(name)
    t0 = time.perf_counter()
    own = engine is None
    engine = engine or Engine(preset, threads=threads)
    try:
        run, live = start_sweep(name, engine, quick, variants, t0)
        for event in run:
            if on_event:
                on_event(event)
            live.apply(event)
    finally:
        if own:
            engine.close()
    return live.sweep()


def to_csv(sweep: dict) -> str:
    """The rows as CSV, one column per field of ROW_FIELDS."""
    from engine.views.tables import csv_text
    return csv_text(sweep["results"], ROW_FIELDS)


def summary(sweep: dict) -> str:
    """A fixed-width table of the rows (in the chart's units), for the command line."""
    from engine.views.sweep_charts import sweep_table
    from engine.views.tables import fixed_width
    headers, rows = sweep_table(sweep, get(sweep["experiment"]).y, reasons=False)
    lines = fixed_width([headers, *rows]).splitlines()
    reasons = {r["variant"]: r["reason"] for r in sweep["results"] if r["reason"]}
    notes = [f"  left out: {note}" for note in sweep.get("left_out", [])]
    return "\n".join(lines + [f"  {v}: {why}" for v, why in reasons.items()] + notes)


__all__ = ["EXPERIMENTS", "Experiment", "LiveSweep", "derive", "get", "repeats_for", "run_sweep", "start_sweep",
           "summary", "to_csv"]
