"""Sweeps: an experiment (engine/studies/experiments.py) measured over its grid through the engine.

`run_sweep` measures every (variant, cell) in fair mode, after one unmeasured warm-up request per
cell, derives the experiment's figures and checks its paragraph's claims on the rows (`trends`).
`start_sweep` does the same step by step: its `LiveSweep` holds the rows of the cells finished so
far, in the same shape, so that the dashboard can draw the chart while the sweep runs, and the
command line can print a line per (variant, cell) as it is measured.
"""
from __future__ import annotations

import time
from collections.abc import Callable

from engine import events, quality, quality_table, report
from engine.outcomes import Outcome
from engine.pool import Engine, Run
from engine.presets import Preset
from engine.spec import RunSpec
from engine.studies.experiments import EXPERIMENTS, PROMPT, Experiment, derive, get, grid_for, repeats_for, spread
from engine.studies.trends import trends
from engine.views.sweep_charts import cell_text, figure_text, sweep_table
from engine.views.tables import csv_text, fixed_width

ROW_FIELDS = ("experiment", "variant", "status", "reason", "phase", "axis", "prompt_length", "max_new_tokens",
              "batch_size", "pad_ratio", "ttft_s", "tpot_s", "e2e_s", "time_s", "speedup_vs_baseline",
              "predicted_e2e_s", "tokens_per_s", "output_tokens", "peak_memory_bytes", "weights_bytes",
              "kv_cache_bytes", "first_diff_token", "identical_token_share", "mbu", "mbu_measured", "cpu_threads",
              "host_others_cores", "host_busy", *quality.flat(None))   # the quality columns: empty where not scored
CELL_WORDS = {"prompt_tokens": lambda n: f"{n} prompt tokens", "pad_ratio": lambda r: f"{r:.0%} padding",
              "batch_size": lambda n: f"batch {n}", "max_new_tokens": lambda n: f"{n} new token{'s' * (n != 1)}"}


def cell_words(grid: list, index: int) -> str:
    """A cell as words: its labels, then the settings that differ between the grid's cells."""
    labels, cell = grid[index]
    varying = [name for name in CELL_WORDS if len({getattr(c, name) for _, c in grid}) > 1]
    return ", ".join([*map(str, labels.values()), *(CELL_WORDS[name](getattr(cell, name)) for name in varying)])


def host_busy_note(rows: list[dict], advice: str = "close them, or leave a core spare") -> str | None:
    """One line on the timed rows that other processes slowed (CPU busy), as `run` says it per variant."""
    timed = [row for row in rows if row.get("host_busy") is not None]
    busy = [row for row in timed if row["host_busy"]]
    if not busy:
        return None
    were = "was" if len(busy) == 1 else "were"
    return (f"{len(busy)} of {len(timed)} timed rows {were} slowed by other processes on the CPU (up to "
            f"{max(row['host_others_cores'] for row in busy):.1f} cores taken): their figures are slower than this "
            f"device can do ({advice})")


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
        self.validated = engine.validate(spec)                  # raises InputError; start() takes it as it is
        self.stages: dict[str, str] = {}                        # variant -> its last Status stage
        self._answered = {(name, cell): 0 for name in self.variants for cell in range(len(grid))}   # timed answers
        self.outcomes: dict[tuple[str, int], Outcome] = {}      # finished (variant, cell) pairs only
        self.quality: dict[str, dict] = {}                      # variant -> its quality entry, once scored
        self.revision = 0                                       # +1 whenever a pair finishes or a variant is scored
        self.result: dict | None = None
        self.closed: list[tuple[str, int]] = []                 # the finished pairs, in the order they finished
        self._told = 0                                          # of them, those `progress` has told of
        self._said: set[tuple[str, str]] = set()                # (variant, reason) told of already

    @property
    def total(self) -> int:
        """Measured requests of the whole sweep: variants x cells x repeats."""
        return len(self._answered) * self.repeats

    @property
    def settled(self) -> int:
        """Measured requests finished so far, counting those a failure or unavailability skipped."""
        if self.result is not None:
            return self.total
        return sum(self.repeats if key in self.outcomes else answered for key, answered in self._answered.items())

    @property
    def done(self) -> bool:
        return self.result is not None

    def apply(self, event) -> bool:
        """Fold one engine event in; True when the rows changed (a pair finished, a variant was scored, or
        the run ended).
        The engine says which pairs are finished (CellDone, with what each produced): nothing is
        decided here but the progress count."""
        if isinstance(event, events.RunDone):
            self.result = _sweep(self.experiment, self.quick, self.grid, self.left_out, event.report, self.t0)
            self.revision += 1
            return True
        name = getattr(event, "variant", None)
        if name not in self.variants:
            return False
        if isinstance(event, events.Status):
            self.stages[name] = event.stage
        elif isinstance(event, events.Finished) and (name, event.cell) in self._answered:
            self._answered[(name, event.cell)] += 1
        elif isinstance(event, events.CellDone) and (name, event.cell) not in self.outcomes:
            self.outcomes[(name, event.cell)] = event.outcome
            self.closed.append((name, event.cell))
            self.revision += 1
            return True
        elif isinstance(event, events.Scored):                 # off the clock, after the variant's timed requests
            self.quality[name] = event.quality
            self.revision += 1
            return True
        return False

    def plan(self) -> str:
        """What the sweep measures, in one line."""
        return (f"{self.experiment.name} on {self.preset.title} ({self.device.name}): {len(self.grid)} cells x "
                f"{len(self.variants)} variants x {self.repeats} timed requests, each cell after a warm-up request")

    def progress(self, elapsed_s: float) -> list[str]:
        """A line for each (variant, cell) finished since the last call: its cell, and its TPOT (or, with one
        token, its TTFT) median and range over the repeats; a variant that did not run, once."""
        new, self._told = self.closed[self._told:], len(self.closed)
        if not new:
            return []
        rows = {(row["variant"], row["cell"]): row for row in self.sweep()["results"]}
        lines = []
        for variant, cell in new:
            row = rows.get((variant, cell))
            if row is None:
                continue
            if row["status"] == "ok":
                name = "tpot_s" if row.get("tpot_s") is not None else "ttft_s"
                figure = cell_text(dict(row, ranges={name: spread(row, name)}), name)
                said = f"{'TPOT' if name == 'tpot_s' else 'TTFT'} {figure} ms"
            elif (variant, row["reason"]) in self._said:
                continue                                        # a variant that could not run: said once
            else:
                said = f"{row['status']}: {row['reason']}"
                self._said.add((variant, row["reason"]))
            where = cell_words(self.grid, cell)          # empty where the grid has one cell per variant
            lines.append(f"[{elapsed_s:5.1f} s] {variant}{', ' + where if where else ''}: {said}")
        return lines

    def sweep(self) -> dict:
        """The rows so far, shaped like `run_sweep`'s result (which it is, once the run is done)."""
        if self.result is not None:
            return self.result
        built = report.build(self.spec, self.preset, self.device, self.outcomes, quality=self.quality)
        return _sweep(self.experiment, self.quick, self.grid, self.left_out, built, self.t0)


def _sweep(experiment: Experiment, quick: bool, grid: list, left_out: list[str], built: dict, t0: float) -> dict:
    """A sweep's result from the engine's report: its rows labelled with their cell and derived."""
    rows = []
    for row in built["results"]:
        row.update(grid[row["cell"]][0], experiment=experiment.name,
                   max_new_tokens=grid[row["cell"]][1].max_new_tokens or experiment.max_new_tokens(quick))
        rows.append(row)
    rows = derive(experiment, rows)
    return {"experiment": experiment.name, "title": experiment.title, "explanation": experiment.explanation,
            "quick": quick, "preset": built["preset"], "device": built["device"], "versions": built["versions"],
            "repeats": built["repeats"], "cancelled": built["cancelled"], "wall_s": time.perf_counter() - t0,
            "left_out": left_out, "trends": trends(experiment, rows, figure_text), "results": rows}


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
                   cells=tuple(cell for _, cell in grid), warmup_requests=1, live=False,   # progress by cell
                   quality=experiment.quality)
    live = LiveSweep(experiment, engine, spec, quick, grid, left_out, t0)
    return engine.start(live.validated), live


def run_sweep(name: str, preset: Preset, quick: bool = False, variants: list[str] | None = None,
              on_event: Callable[[object], None] | None = None, engine: Engine | None = None,
              threads: int | None = None, progress: Callable[[str], None] | None = None,
              spare_cores: int = 0) -> dict:
    """Measure every (variant, cell) of an experiment; returns {experiment, preset, device, versions, trends,
    results}.

    Pass an `engine` to reuse loaded workers (the dashboard does); `on_event` sees every engine event;
    `progress` gets the plan, then a line per (variant, cell) as it is measured (LiveSweep.progress).
    """
    get(name)
    t0 = time.perf_counter()
    own = engine is None
    engine = engine or Engine(preset, threads=threads, spare_cores=spare_cores)
    try:
        run, live = start_sweep(name, engine, quick, variants, t0)
        if progress:
            progress(live.plan())
        def handle(event) -> None:
            if on_event:
                on_event(event)
            if live.apply(event) and progress:
                for line in live.progress(time.perf_counter() - t0):
                    progress(line)

        run.follow(handle, lambda: engine.cancel(run.id))     # Ctrl-C: stop, keep the rows measured so far
    finally:
        if own:
            engine.close()
    return live.sweep()


def to_csv(sweep: dict) -> str:
    """The rows as CSV, one column per field of ROW_FIELDS."""
    return csv_text(sweep["results"], ROW_FIELDS)


def trend_lines(sweep: dict) -> list[str]:
    """Each claim of the experiment's paragraph, what this run measured, and whether it bears it out."""
    lines = []
    for found in sweep.get("trends", []):
        lines += [f"claim: {found['claim']}", f"  measured: {found['measured']}", f"  {found['note']}"]
    return lines


def summary(sweep: dict) -> str:
    """A fixed-width table of the rows, the reasons of rows that did not run, the cells left out, the rows
    other processes slowed, and the paragraph's claims against this run's rows: for the command line. An
    experiment that shows quality figures gets them as llama.cpp's quantization tables do: same top token,
    mean KLD, its tail, perplexity and its ratio to the reference's (engine/quality_table.py), and why a
    variant has none below."""
    y = get(sweep["experiment"]).y
    headers, rows = sweep_table(sweep, tuple(name for name in y if name not in quality.FIELDS), reasons=False)
    scored = bool(quality.FIELDS & set(y)) and quality_table.shown(sweep["results"])
    if scored:                                   # before the CPU column, which stays last
        at = len(headers) - (headers[-1:] == ["CPU"])
        headers[at:at] = [*quality_table.HEADERS, *quality_table.PERPLEXITY_HEADERS]
        for cells, row in zip(rows, sweep["results"]):
            cells[at:at] = quality_table.cells(row.get("quality")) + quality_table.perplexity_cells(row.get("quality"))
    lines = fixed_width([headers, *rows]).splitlines()
    reasons = {r["variant"]: r["reason"] for r in sweep["results"] if r["reason"]}
    notes = [f"  left out: {note}" for note in sweep.get("left_out", [])]
    notes += [f"  {note}" for note in quality_table.notes(sweep["results"])] if scored else []
    busy = host_busy_note(sweep["results"])
    return "\n".join(lines + [f"  {v}: {why}" for v, why in reasons.items()] + notes + [busy] * bool(busy)
                     + trend_lines(sweep))


__all__ = ["EXPERIMENTS", "Experiment", "LiveSweep", "cell_words", "derive", "get", "host_busy_note", "repeats_for",
           "run_sweep", "start_sweep", "summary", "to_csv", "trend_lines"]
