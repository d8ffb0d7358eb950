"""Sweeps: an experiment (engine/studies/experiments.py) measured over its grid through the engine.

`run_sweep` measures every (variant, cell) in fair mode, after one unmeasured warm-up request per
cell, and derives the experiment's figures. `start_sweep` does the same step by step: its
`LiveSweep` holds the rows of the cells finished so far, in the same shape, so that the dashboard
can draw the chart while the sweep runs.
"""
from __future__ import annotations

import time
from collections.abc import Callable

from engine import events, report
from engine.outcomes import Outcome
from engine.pool import Engine, Run
from engine.presets import Preset
from engine.spec import RunSpec
from engine.studies.experiments import EXPERIMENTS, PROMPT, Experiment, derive, get, grid_for, repeats_for
from engine.views.sweep_charts import sweep_table
from engine.views.tables import csv_text, fixed_width

ROW_FIELDS = ("experiment", "variant", "status", "reason", "phase", "axis", "prompt_length", "max_new_tokens",
              "batch_size", "pad_ratio", "ttft_s", "tpot_s", "e2e_s", "time_s", "speedup_vs_baseline",
              "predicted_e2e_s", "tokens_per_s", "output_tokens", "peak_memory_bytes", "weights_bytes",
              "kv_cache_bytes", "first_diff_token", "identical_token_share", "mbu", "mbu_measured", "cpu_threads",
              "host_others_cores", "host_busy")



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
                   cells=tuple(cell for _, cell in grid), warmup_requests=1, live=False)   # progress by cell
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
    return csv_text(sweep["results"], ROW_FIELDS)


def summary(sweep: dict) -> str:
    """A fixed-width table of the rows (in the chart's units), for the command line."""
    headers, rows = sweep_table(sweep, get(sweep["experiment"]).y, reasons=False)
    lines = fixed_width([headers, *rows]).splitlines()
    reasons = {r["variant"]: r["reason"] for r in sweep["results"] if r["reason"]}
    notes = [f"  left out: {note}" for note in sweep.get("left_out", [])]
    return "\n".join(lines + [f"  {v}: {why}" for v, why in reasons.items()] + notes)


__all__ = ["EXPERIMENTS", "Experiment", "LiveSweep", "derive", "get", "repeats_for", "run_sweep", "start_sweep",
           "summary", "to_csv"]
