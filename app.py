"""The dashboard: one prompt through several model variants, side by side, in the browser.

`python app.py [--host H] [--port P] [--share] [--preset NAME] [--mode fair|race]`

A thin view over the engine (engine/pool.py): this file builds the Blocks and wires events; the
engine measures, engine/charts.py folds events into a view and draws it. The page refreshes on a
clock (about 10 Hz for text, 4 Hz for charts), not once per token. Runs are serialized by
Gradio's queue (one run on the device at a time); each visitor's run id lives in their gr.State,
so Stop cancels only that visitor's run, and a closed page cancels its run when Gradio closes the
generator.

Two tabs: Compare (one prompt, several variants) and Experiments (a sweep of engine/sweeps.py over a
grid of cells, its chart filling as cells finish). Both use the same engines and the same queue: a
sweep is a run.
"""
from __future__ import annotations

import argparse
import atexit
import html
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")      # a measuring instrument phones no one

import gradio as gr  # noqa: E402

from gradio.components.plot import PlotData  # noqa: E402

from engine import CATALOG, Engine, InputError, charts, hardware, presets  # noqa: E402
from engine.studies import sweeps  # noqa: E402
from engine.hardware import DeviceError  # noqa: E402
from engine.report import tpot_range  # noqa: E402
from engine.sweep_charts import UNITS, sweep_figure  # noqa: E402

TICK_S = 0.1                 # text and status refresh period while a run streams
CHART_TICK_S = 0.25          # chart refresh period (each chart update re-sends the figure)
REPLAY_MAX_S = 20.0          # a longer run is replayed faster than real time
STOP_WAIT_S = 15.0           # how long a new run waits for an abandoned one of another preset to end
KEEP_DOWNLOADS_S = 3600.0    # run files (JSON, CSV) older than this are deleted
REPEATS_MAX = 5               # timed requests per variant a visitor may ask for in one run
SWEEP_TICK_S = 0.25          # experiment status refresh period; the chart is redrawn only when a cell finished
SWEEP_PLOT_HEIGHT = 420      # px
FIGURE_NAMES = ("ttft", "itl", "race", "memory")
FIGURES = {"ttft": charts.ttft_figure, "itl": charts.itl_figure, "race": charts.race_figure,
           "memory": charts.memory_figure}
PLOT_LABELS = {"ttft": "Time to first token", "itl": "Inter-token latency", "race": "Race: tokens over time",
               "memory": "Memory per worker"}

PASSAGE = (
    "During decoding a language model produces one token per step. Each step reads every weight of "
    "the model from memory and, with a KV cache, the keys and values of all earlier positions, but "
    "does little arithmetic per byte read, so the step is bound by memory bandwidth rather than by "
    "compute. Prefill is different: the whole prompt is processed at once, and attention over a long "
    "prompt builds a score matrix whose size grows with the square of its length. FlashAttention "
    "tiles that computation so the matrix never travels to main memory; quantized weights shrink the "
    "bytes each decoding step must read. "
)
QUESTION = "Explain why attention is memory-bound during decoding."


def sized_prompt(chars: int) -> str:
    """A prompt of about `chars` characters: one token per character with a byte-level tokenizer."""
    question = "\n\nSummarise the notes above in three sentences."
    body = (PASSAGE * (chars // len(PASSAGE) + 1))[:chars - len(question)]
    return body.rsplit(" ", 1)[0].ljust(chars - len(question), ".") + question


EXAMPLES = ((QUESTION, "short question"), (sized_prompt(256), "~256 tokens"),
            (sized_prompt(1900), "~2k tokens"), (sized_prompt(4000), "~4k tokens"))


# ---------------------------------------------------------------------------------------- state
class Engines:
    """The app's engines, one per preset, made on first use; only one preset keeps workers loaded."""

    def __init__(self, threads: int | None = None, spare_cores: int = 1):
        self.threads, self.spare_cores = threads, spare_cores      # see Engine: the page needs a core
        self._engines: dict[str, Engine] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> Engine:
        """The preset's engine (no workers are started); raises PresetError or DeviceError."""
        with self._lock:
            engine = self._engines.get(name)
            if engine is None:
                engine = self._engines[name] = Engine(presets.load(name), threads=self.threads,
                                                          spare_cores=self.spare_cores)
            return engine

    def activate(self, name: str) -> Engine:
        """The preset's engine, after stopping the workers of every other preset (switching unloads)."""
        engine = self.get(name)
        with self._lock:
            others = [e for e in self._engines.values() if e is not engine and (e.workers or e.active)]
        for other in others:
            active = other.active                  # only an abandoned run can be left: runs are serialized
            if active is not None:
                other.cancel(active.id)
                active.finished.wait(STOP_WAIT_S)
            other.close()
        return engine

    def cancel(self, name: str | None, run_id: int | None) -> bool:
        """Cancel run `run_id` of preset `name`, and nothing else."""
        engine = self._engines.get(name) if name else None
        return bool(engine and run_id is not None and engine.cancel(run_id))

    def close(self) -> None:
        with self._lock:
            engines = list(self._engines.values())
        for engine in engines:
            engine.close()


@dataclass
class Session:
    """One visitor's state (gr.State): their run, so that Stop reaches it and only it."""
    run_id: int | None = None
    preset: str | None = None
    pending: bool = False                 # Run was pressed and the run waits in Gradio's queue
    stop_requested: bool = False          # Stop was pressed while it waited
    stopping: bool = False
    view: charts.RunView | None = None    # the last run, for the replay


# ---------------------------------------------------------------------------------------- HTML
def _e(text) -> str:
    return html.escape(str(text), quote=True)


PRESET_ERRORS = (presets.PresetError, DeviceError, ValueError, OSError)   # a preset that cannot be used here


def refusal(error: Exception, cannot: str) -> str:
    """Why a run did not start: the input (the user's to change) or, after `cannot`, the preset."""
    if isinstance(error, InputError):
        return f"Nothing was run: {_e(error)}."
    return f"{cannot}: {_e(error)}"


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    return f"{seconds * 1000:.1f} ms" if seconds < 0.1 else f"{seconds * 1000:.0f} ms"


def _bytes(value: int | None) -> str:
    if value is None:
        return "-"
    return f"{value / 2**30:.2f} GiB" if value >= 2**30 else f"{value / 2**20:.0f} MiB"


def banner_html(engine: Engine) -> str:
    """What runs where; random-weight presets say that the text is noise."""
    preset = engine.preset
    noise = ('<span class="sbs-pill sbs-pill-warn">random weights: the text is noise, the timings are real</span>'
             if preset.random_weights else "")
    cores = ""
    if engine.device.kind == "cpu" and engine.threads:
        total = len(hardware.usable_cores())
        rest = "; the rest draw this page while the variants run" if engine.threads < total else ""
        cores = (f'<div class="sbs-sub">Each worker computes on {engine.threads} of the {total} CPU cores this '
                 f'server may use{rest}.</div>')
    return (f'<div class="sbs-banner"><div><b>{_e(preset.title)}</b> on <b>{_e(engine.device.name)}</b> '
            f'{noise}</div><div class="sbs-sub">{_e(preset.description.strip())}</div>{cores}</div>')


def message_html(text: str, kind: str = "info") -> str:
    """One status line above the columns: info, ok, warn or error."""
    return f'<div class="sbs-msg sbs-msg-{kind}" data-kind="{kind}">{text}</div>' if text else ""


def card_html(lane: charts.Lane, now: float) -> str:
    """A variant's status, progress and figures (the answer streams into the textbox below it)."""
    stage = lane.stage
    words = charts.STAGE_WORDS.get(stage, stage)
    detail = lane.detail or lane.reason or ""
    if stage in ("loading", "warming"):
        elapsed = max(now - lane.since, 0.0) if lane.since else 0.0
        step = {1: "starting the worker process", 2: "loading the model", 3: "warming up"}.get(lane.load_step, "")
        detail = f"step {max(lane.load_step, 1)} of 3: {step} ({elapsed:.0f} s)"
    elif stage == "queued":
        detail = "kept loaded from an earlier run; " if lane.reused else ""
        detail += "waiting for its turn on the device"
    elif stage == "ready":
        detail = "loaded and warmed up"
    elif stage == "generating" and lane.repeats > 1 and lane.requests:
        detail = f"timed request {lane.requests} of {lane.repeats}"
    elif stage == "waiting":
        detail = detail or "waiting for the device"
    elif stage == "done" and lane.loaded and not lane.reason:
        detail = f"loaded in {lane.loaded.load_s:.1f} s, warmed up in {lane.loaded.warmup_s:.1f} s"
    elif stage == "done" and lane.reused and not lane.reason:
        detail = "worker kept loaded: no reload"
    progress = ""
    if stage in ("loading", "warming"):
        progress = (f'<div class="sbs-progress"><div style="width:{int(100 * max(lane.load_step, 1) / 3)}%">'
                    '</div></div>')
    figures = lane.figures()
    kpis = "".join(
        f'<div class="sbs-kpi"><div class="sbs-kpi-name">{name}</div><div class="sbs-kpi-value">{value}</div></div>'
        for name, value in (("TTFT", _ms(figures["ttft_s"])), ("TPOT", _ms(figures["tpot_s"])),
                            ("tokens/s", "-" if figures["tokens_per_s"] is None else f"{figures['tokens_per_s']:.1f}"),
                            ("peak memory", _bytes(figures["peak_memory_bytes"]))))
    note = ""
    if figures["tokens"]:
        note = (f"{figures['tokens']} tokens; " + ("figures from the report" if figures["final"]
                                                   else "live estimate"))
        result = lane.result or {}
        spread = tpot_range(result)
        if spread is not None:
            note += f"; medians of {result['repeats']} requests, TPOT {spread[0] * 1000:.2f}-{spread[1] * 1000:.2f} ms"
        if result.get("contended"):
            note += "; contended (race mode)"
        if result.get("host_busy"):
            note += f"; CPU busy: other processes took {result['host_others_cores']:.1f} cores, figures slowed"
    return (f'<div class="sbs-card" data-variant="{_e(lane.variant)}" data-stage="{_e(stage)}" '
            f'style="--lane:{charts.color_of(lane.variant)}">'
            f'<div class="sbs-head"><span class="sbs-dot"></span><span class="sbs-name">{_e(lane.variant)}</span>'
            f'<span class="sbs-badge sbs-stage-{_e(stage)}">{_e(words)}</span></div>'
            f'<div class="sbs-label">{_e(lane.label)}</div>{progress}'
            f'<div class="sbs-detail">{_e(detail)}</div><div class="sbs-kpis">{kpis}</div>'
            f'<div class="sbs-note">{_e(note)}</div></div>')


def run_message(view: charts.RunView, session: Session, started: float, now: float) -> str:
    """The status line of a run in progress or done."""
    counts = view.counts()
    finished = sum(counts.get(s, 0) for s in charts.FINAL_STAGES)
    if view.error:
        return message_html(f"The run failed: {_e(view.error)}", "error")
    if view.done:
        report = view.report
        ok = counts.get("done", 0)
        text = (f"{'Stopped' if report.get('cancelled') else 'Done'}: {ok} of {len(view.lanes)} variants "
                f"answered in {now - started:.1f} s; prompt {report.get('prompt_tokens')} tokens, "
                f"{report.get('mode')} mode" + (f", {report['repeats']} timed requests each (medians)"
                                                if (report.get("repeats") or 1) > 1 else "") + ".")
        if (report.get("repeats") or 1) == 1 and ok > 1 and not report.get("cancelled"):
            text += " One timed request each: set Repeats to 3 or more to tell a speedup from noise."
        problems = [f"{_e(lane.variant)}: {_e(lane.reason)}" for lane in view.lanes.values()
                    if lane.stage in ("failed", "unavailable") and lane.reason]
        if problems:
            text += "<br>" + "<br>".join(problems)
        return message_html(text, "warn" if problems or report.get("cancelled") else "ok")
    if session.stopping:
        return message_html("Stopping: each variant stops after its current token.", "warn")
    active = [lane.variant for lane in view.lanes.values() if lane.stage == "generating"]
    doing = f"generating: {', '.join(active)}" if active else "loading and warming up" if any(
        lane.stage in ("loading", "warming") for lane in view.lanes.values()) else "working"
    return message_html(f"Running in {view.mode} mode: {finished} of {len(view.lanes)} variants finished; "
                        f"{_e(doing)} ({now - started:.0f} s).")


def variant_choices(engine: Engine) -> tuple[list[tuple[str, str]], list[str], list[str]]:
    """Checkbox choices (label, name), the preset's default selection, and CSS classes greying the
    unavailable ones (their reason is in their label)."""
    choices, classes, defaults = [], ["sbs-variants"], []
    for name, label, reason in engine.variant_choices():
        if reason:
            choices.append((f"{name}: {label} (unavailable: {reason})", name))
            classes.append(f"sbs-off-{name}")
        else:
            choices.append((f"{name}: {label}", name))
            if name in engine.preset.variants:
                defaults.append(name)
    return choices, defaults, classes


# Unavailable variants stay listed, greyed and unclickable, their reason in their label.
CSS_OFF = "\n".join(
    f'.sbs-variants.sbs-off-{name} label:has(input[name="{name}"]) {{ opacity: .5; pointer-events: none; '
    'filter: grayscale(1); }' for name in CATALOG)
CSS_LANES = "\n".join(f".sbs-lane-{name} {{ --lane: {charts.color_of(name)}; }}" for name in CATALOG)

CSS = """
.sbs-banner { padding: 10px 14px; border-radius: 10px; border: 1px solid var(--border-color-primary);
  background: var(--block-background-fill); }
.sbs-sub { color: var(--body-text-color-subdued); font-size: .9em; margin-top: 2px; }
.sbs-pill { display: inline-block; padding: 1px 9px; border-radius: 999px; font-size: .8em; margin-left: 6px; }
.sbs-pill-warn { background: rgba(217,119,6,.16); color: #b45309; }
.dark .sbs-pill-warn { color: #fbbf24; }
.sbs-msg { padding: 8px 12px; border-radius: 8px; border-left: 4px solid #3b82f6; background: rgba(59,130,246,.09); }
.sbs-msg-ok { border-color: #16a34a; background: rgba(22,163,74,.09); }
.sbs-msg-warn { border-color: #d97706; background: rgba(217,119,6,.1); }
.sbs-msg-error { border-color: #dc2626; background: rgba(220,38,38,.1); }
/* variant columns: a grid that wraps onto rows (hidden columns are not in the DOM) */
#sbs-lanes { display: grid !important; gap: 12px;
  grid-template-columns: repeat(auto-fit, minmax(min(290px, 100%), 1fr)); }
#sbs-lanes > .sbs-lane { min-width: 0 !important; border: 1px solid var(--border-color-primary);
  border-top: 4px solid var(--lane); border-radius: 12px; padding: 8px; gap: 6px;
  background: var(--block-background-fill); }
.sbs-card { padding: 2px 4px; }
.sbs-head { display: flex; align-items: center; gap: 8px; }
.sbs-dot { width: 10px; height: 10px; border-radius: 50%; background: var(--lane); flex: none; }
.sbs-name { font-weight: 700; font-size: 1.05em; }
.sbs-label { color: var(--body-text-color-subdued); font-size: .85em; min-height: 1.2em; }
.sbs-badge { margin-left: auto; padding: 1px 9px; border-radius: 999px; font-size: .78em; font-weight: 600;
  background: rgba(128,128,128,.16); white-space: nowrap; }
.sbs-stage-generating { background: rgba(37,99,235,.16); color: #2563eb; }
.sbs-stage-loading, .sbs-stage-warming { background: rgba(217,119,6,.16); color: #b45309; }
.sbs-stage-done { background: rgba(22,163,74,.16); color: #15803d; }
.sbs-stage-failed { background: rgba(220,38,38,.16); color: #dc2626; }
.dark .sbs-stage-generating { color: #93c5fd; } .dark .sbs-stage-loading, .dark .sbs-stage-warming { color: #fbbf24; }
.dark .sbs-stage-done { color: #86efac; } .dark .sbs-stage-failed { color: #fca5a5; }
.sbs-detail { font-size: .85em; margin: 4px 0 6px; min-height: 1.2em; overflow-wrap: anywhere; }
.sbs-card[data-stage=failed] .sbs-detail, .sbs-card[data-stage=unavailable] .sbs-detail { color: #dc2626; }
.dark .sbs-card[data-stage=failed] .sbs-detail, .dark .sbs-card[data-stage=unavailable] .sbs-detail { color: #fca5a5; }
.sbs-progress { height: 5px; border-radius: 3px; background: rgba(128,128,128,.2); overflow: hidden; margin-top: 6px; }
.sbs-progress > div { height: 100%; background: var(--lane); transition: width .3s;
  animation: sbs-pulse 1.2s ease-in-out infinite; }
@keyframes sbs-pulse { 50% { opacity: .45; } }
.sbs-kpis { display: grid; grid-template-columns: repeat(4, minmax(0, 1fr)); gap: 6px; }
.sbs-kpi { background: rgba(128,128,128,.08); border-radius: 6px; padding: 4px 6px; }
.sbs-kpi-name { font-size: .72em; text-transform: uppercase; letter-spacing: .03em;
  color: var(--body-text-color-subdued); }
.sbs-kpi-value { font-weight: 700; font-variant-numeric: tabular-nums; white-space: nowrap; }
.sbs-note { font-size: .75em; color: var(--body-text-color-subdued); margin-top: 4px; min-height: 1em; }
.sbs-defs { font-size: .86em; }
/* headers wrap between words, never inside one; on a phone the tables scroll sideways instead */
#sbs-summary table, #exp-table table { min-width: 680px; }
#sbs-summary th, #sbs-summary th *, #exp-table th, #exp-table th * { white-space: normal; word-break: normal;
  overflow-wrap: normal; }
.js-plotly-plot .main-svg text { fill: var(--body-text-color-subdued) !important; }
/* experiments tab */
.exp-bar { height: 6px; border-radius: 3px; background: rgba(128,128,128,.2); overflow: hidden; margin-top: 6px; }
.exp-bar > div { height: 100%; background: #3b82f6; transition: width .3s; }
.sbs-msg-ok .exp-bar > div { background: #16a34a; }
.sbs-msg-warn .exp-bar > div { background: #d97706; }
.exp-explain { padding: 12px 14px; border-radius: 10px; border: 1px solid var(--border-color-primary);
  background: var(--block-background-fill); }
.exp-kicker { font-size: .72em; text-transform: uppercase; letter-spacing: .04em;
  color: var(--body-text-color-subdued); }
.exp-title { font-weight: 700; margin: 2px 0 6px; line-height: 1.3; }
.exp-explain p { margin: 0 0 8px; line-height: 1.5; font-size: .92em; }
.exp-plan { font-size: .8em; color: var(--body-text-color-subdued); }
.exp-note { font-size: .85em; color: var(--body-text-color-subdued); }
""" + CSS_OFF + "\n" + CSS_LANES

THEME = gr.themes.Soft(primary_hue="indigo", neutral_hue="slate")


# ---------------------------------------------------------------------------------------- updates
def prune_downloads(folder: Path) -> None:
    """Delete run and sweep files older than KEEP_DOWNLOADS_S (Gradio serves its own copies)."""
    for old in [*folder.glob("run-*"), *folder.glob("sweep-*")]:
        if old.stat().st_mtime < time.time() - KEEP_DOWNLOADS_S:
            old.unlink(missing_ok=True)


def write_downloads(report: dict, run_id: int, folder: Path) -> tuple[str, str]:
    """The run as JSON (the command line's schema) and CSV files in `folder`."""
    prune_downloads(folder)
    stem = f"run-{run_id}-{report['preset']['name']}-{time.strftime('%Y%m%d-%H%M%S')}"
    json_path, csv_path = folder / f"{stem}.json", folder / f"{stem}.csv"
    json_path.write_text(json.dumps(report, indent=1))
    csv_path.write_text(charts.report_csv(report))
    return str(json_path), str(csv_path)


def frame(view: charts.RunView, session_state: Session, started: float, figures: dict, charts_due: bool,
          run_id: int, folder: Path) -> tuple:
    """One update of every run output, each complete (Gradio sends only what changed, as a diff).

    A figure is rebuilt only when its data changed and a chart tick is due; `figures` caches the
    last one built per chart as (revision, figure).
    """
    now = time.perf_counter()
    drawn = []
    for key in FIGURE_NAMES:
        revision, figure = figures.get(key, (None, None))
        if figure is None or ((charts_due or view.done) and revision != view.revisions[key]):
            figure = FIGURES[key](view)
            figures[key] = (view.revisions[key], figure)
        drawn.append(figure)
    lanes = [view.lanes.get(name) for name in CATALOG]
    cards = [card_html(lane, now) if lane else "" for lane in lanes]
    texts = [lane.text if lane else "" for lane in lanes]
    final = [None, None, gr.update(interactive=False), gr.update(value=None, interactive=False),
             gr.update(value=None, interactive=False)]
    if view.done:
        report = view.report
        json_path, csv_path = write_downloads(report, run_id, folder)
        playable = any(lane.token_times for lane in view.lanes.values())
        final = [report, charts.summary_rows(report), gr.update(interactive=playable),
                 gr.update(value=json_path, interactive=True), gr.update(value=csv_path, interactive=True)]
    return (run_message(view, session_state, started, now), *final, *drawn, *cards, *texts)


# ---------------------------------------------------------------------------------------- experiments
PNG_NOTE = ("PNG: hover the chart and press the camera button (\u201cDownload plot as a PNG\u201d) in its "
            "toolbar. The HTML file is the interactive chart, standalone (it works offline).")
GRID_KEYS = ("phase", "axis")          # the labels a grid gives its cells (engine/sweeps.py)
FIRST_EXPERIMENT = "attention"


def experiment_choices() -> list[tuple[str, str]]:
    """Dropdown choices (label, name), one per experiment."""
    return [(f"{experiment.name}: {experiment.title}", name) for name, experiment in sweeps.EXPERIMENTS.items()]


def experiment_variants(engine: Engine, name: str) -> tuple[list[tuple[str, str]], list[str], list[str]]:
    """Like variant_choices, but selecting the experiment's own variants that can run here."""
    choices, _, classes = variant_choices(engine)
    off = {variant for variant, _, reason in engine.variant_choices() if reason}
    return choices, [v for v in sweeps.get(name).variants if v not in off], classes


def explanation_html(name: str, quick: bool) -> str:
    """The experiment's paragraph (what its chart shows and why) and the grid it measures."""
    experiment = sweeps.get(name)
    cells, repeats = len(experiment.grid(quick)), sweeps.repeats_for(quick)
    plan = (f"{'Quick' if quick else 'Full'} grid: {cells} cells per variant (those beyond the preset's context "
            f"are left out), {repeats} measured "
            f"request{'s' if repeats > 1 else ''} per cell{' (the median is kept)' if repeats > 1 else ''}, "
            "each cell after one warm-up request. Fair mode: one variant on the device at a time.")
    return (f'<div class="exp-explain" data-experiment="{_e(name)}"><div class="exp-kicker">What the chart shows, '
            f'and why</div><div class="exp-title">{_e(experiment.title)}</div><p>{_e(experiment.explanation)}</p>'
            f'<div class="exp-plan">{_e(plan)}</div></div>')


def sized(figure):
    """The sweep figure at the dashboard's height (taller than the command line's: the paragraph sits beside it)."""
    return figure.update_layout(height=SWEEP_PLOT_HEIGHT)


def empty_sweep_figure(name: str):
    """The experiment's panels with no data yet."""
    figure = sized(sweep_figure({"experiment": name, "results": []}))
    figure.update_xaxes(visible=False).update_yaxes(visible=False)     # no axes without points: titles only
    figure.add_annotation(text="Run the experiment: each point appears when its cell is measured", showarrow=False,
                          xref="paper", yref="paper", x=0.5, y=0.5, font=dict(size=13, color="#8a8f98"))
    return figure


def plot_value(figure, name: str) -> PlotData:
    """The figure for gr.Plot, with plotly's own PNG button named after the experiment."""
    plot = json.loads(figure.to_json())
    plot["config"] = {"displaylogo": False,
                      "toImageButtonOptions": {"format": "png", "filename": f"sweep-{name}", "scale": 2}}
    return PlotData(type="plotly", plot=json.dumps(plot))


def _cell_value(value, scale: float = 1.0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) or (isinstance(value, int) and not isinstance(value, bool) and scale != 1.0):
        return f"{value * scale:.4g}"
    return str(value)


def sweep_table(sweep: dict) -> dict:
    """The rows as a table (headers in the chart's units), for gr.Dataframe."""
    experiment = sweeps.get(sweep["experiment"])
    rows = sweep["results"]
    labels = [key for key in GRID_KEYS if any(key in row for row in rows)]
    fields = [("variant", "variant", 1.0), ("status", "status", 1.0), *[(k, k, 1.0) for k in labels],
              ("prompt_length", "prompt tokens", 1.0), ("pad_ratio", "padding (%)", 100.0),
              ("batch_size", "batch", 1.0), ("max_new_tokens", "new tokens", 1.0),
              *[(key, UNITS.get(key, (key, 1.0))[0] or key, UNITS.get(key, (key, 1.0))[1]) for key in experiment.y],
              ("reason", "reason", 1.0)]
    return {"headers": [header for _, header, _ in fields],
            "data": [[_cell_value(row.get(key), scale) for key, _, scale in fields] for row in rows]}


def empty_table(name: str) -> dict:
    """The experiment's table headers, no rows yet."""
    return sweep_table({"experiment": name, "results": []})


def sweep_message(live: sweeps.LiveSweep, device: str, stopping: bool, elapsed_s: float) -> str:
    """The status line of a sweep, with its progress bar (measured requests / all of them)."""
    share = live.settled / live.total if live.total else 1.0
    name = live.experiment.name
    if live.done:
        sweep = live.result
        ok = sum(row["status"] == "ok" for row in sweep["results"])
        problems = list(dict.fromkeys(f"{_e(row['variant'])}: {_e(row['reason'])}" for row in sweep["results"]
                                      if row["status"] in ("failed", "unavailable") and row["reason"]))
        text = (f"{'Stopped' if sweep['cancelled'] else 'Done'}: {name}, {ok} of {len(sweep['rows'])} "
                f"(variant, cell) pairs measured in {sweep['wall_s']:.1f} s on {_e(device)}.")
        busy = [row for row in sweep["results"] if row.get("host_busy")]
        if busy:
            problems.append(f"{len(busy)} of them slowed by other processes on the CPU (CPU busy, up to "
                            f"{max(row['host_others_cores'] for row in busy):.1f} cores taken): "
                            "rerun with less running beside the dashboard")
        text += "".join(f"<br>{problem}" for problem in problems)
        kind = "warn" if problems or sweep["cancelled"] else "ok"
    elif stopping:
        text, kind = "Stopping: the sweep ends after the current request's next token.", "warn"
    else:
        loading = [variant for variant, stage in live.stages.items() if stage in ("loading", "warming")]
        doing = f"loading and warming up {', '.join(loading)}" if loading else "measuring"
        text, kind = (f"Running {name}: {live.settled} of {live.total} measurements ({share:.0%}); {_e(doing)} "
                      f"({elapsed_s:.0f} s)."), "info"
    bar = (f'<div class="exp-bar" role="progressbar" aria-valuemin="0" aria-valuemax="100" '
           f'aria-valuenow="{share * 100:.0f}" data-progress="{share:.4f}"><div style="width:{share * 100:.1f}%">'
           '</div></div>')
    return message_html(text + bar, kind)


def write_sweep_downloads(sweep: dict, figure, run_id: int, folder: Path) -> tuple[str, str, str]:
    """The sweep as JSON (the command line's schema), CSV, and a standalone HTML page of its chart."""
    prune_downloads(folder)
    stem = f"sweep-{run_id}-{sweep['experiment']}-{sweep['preset']['name']}-{time.strftime('%Y%m%d-%H%M%S')}"
    json_path, csv_path, html_path = (folder / f"{stem}.{ext}" for ext in ("json", "csv", "html"))
    json_path.write_text(json.dumps(sweep, indent=1))
    csv_path.write_text(sweeps.to_csv(sweep))
    where = f"{sweep['preset']['title']} on {sweep['device'].get('name', '?')}"
    noise = " Random weights: the timings are real, any text is noise." if sweep["preset"]["random_weights"] else ""
    html_path.write_text(
        f'<!doctype html><html><head><meta charset="utf-8"><title>{_e(sweep["title"])}</title></head>'
        '<body style="font-family: system-ui, sans-serif; max-width: 1200px; margin: 24px auto; color: #1f2937">'
        f'<h2>{_e(sweep["title"])}</h2><p>{_e(sweep["explanation"])}</p>'
        f'<p style="color: #6b7280">{_e(where)}; {"quick" if sweep["quick"] else "full"} grid.{_e(noise)}</p>'
        f'{figure.to_html(full_html=False, include_plotlyjs=True)}</body></html>')
    return str(json_path), str(csv_path), str(html_path)


# ---------------------------------------------------------------------------------------- the app
def build_app(engines: Engines, preset: str = "tiny", mode: str = "fair") -> gr.Blocks:
    """The Blocks of the dashboard, over `engines`; launch it with launch_kwargs()."""
    first = engines.get(preset)
    choices, defaults, classes = variant_choices(first)
    downloads = Path(tempfile.mkdtemp(prefix="sidebyside-runs-"))
    atexit.register(shutil.rmtree, downloads, ignore_errors=True)
    names = list(CATALOG)
    preset_choices = []
    for name in presets.available():
        try:
            preset_choices.append((f"{presets.load(name).title} ({name})", name))
        except presets.PresetError:
            preset_choices.append((f"{name} (broken preset file)", name))

    empty = {key: FIGURES[key](charts.RunView([])) for key in FIGURE_NAMES}
    exp_choices, exp_defaults, exp_classes = experiment_variants(first, FIRST_EXPERIMENT)
    with gr.Blocks(title="Side by side: LLM inference variants", delete_cache=(3600, 3600)) as demo:
        session = gr.State(Session())
        exp_session = gr.State(Session())         # a visitor's sweep, apart from their Compare run
        gr.Markdown("# Side by side: one prompt, several inference variants\n"
                    "Watch eager attention, SDPA, FlashAttention, quantization and more answer the same "
                    "prompt, with live time-to-first-token, time-per-token and memory.")
        with gr.Tabs(elem_id="sbs-tabs"):
            with gr.Tab("Compare", id="compare", elem_id="sbs-tab-compare"):
                banner = gr.HTML(banner_html(first), js_on_load=None)
                with gr.Row(equal_height=False):
                    with gr.Column(scale=3, min_width=300):
                        prompt = gr.Textbox(QUESTION, label="Prompt", lines=5, max_lines=10, elem_id="sbs-prompt",
                                            placeholder="Type a prompt, or pick an example below")
                        gr.Examples([[text] for text, _ in EXAMPLES], inputs=[prompt], label="Example prompts",
                                    example_labels=[label for _, label in EXAMPLES])
                    with gr.Column(scale=2, min_width=300):
                        preset_box = gr.Dropdown(preset_choices, value=preset, label="Preset", elem_id="sbs-preset")
                        variants_box = gr.CheckboxGroup(choices, value=defaults, label="Variants", elem_classes=classes,
                                                        elem_id="sbs-variants")
                        with gr.Row():
                            max_new = gr.Slider(1, first.preset.max_new_tokens_cap, value=first.preset.max_new_tokens,
                                                step=1, label="Max new tokens", min_width=160, elem_id="sbs-max")
                            repeats_box = gr.Slider(1, REPEATS_MAX, value=1, step=1, label="Repeats", min_width=160,
                                                    info="medians and spread", elem_id="sbs-repeats")
                        mode_box = gr.Radio(["fair", "race"], value=mode, label="Mode",
                                            info="fair: one at a time; race: all at once (contended)",
                                            elem_id="sbs-mode")
                        with gr.Row():
                            run_button = gr.Button("Run", variant="primary", elem_id="sbs-run")
                            stop_button = gr.Button("Stop", variant="stop", elem_id="sbs-stop")
                message = gr.HTML("", elem_id="sbs-message", js_on_load=None)
                columns, cards, answers = [], [], []
                answer_label = "Answer (random weights: noise)" if first.preset.random_weights else "Answer"
                with gr.Row(elem_id="sbs-lanes", equal_height=False):
                    for name in names:
                        with gr.Column(visible=name in defaults, min_width=300,
                                       elem_classes=["sbs-lane", f"sbs-lane-{name}"]) as column:
                            idle = charts.Lane(name, CATALOG[name].display_label(), stage="idle", detail="press Run")
                            cards.append(gr.HTML(card_html(idle, 0.0),
                                                 js_on_load=None, elem_id=f"sbs-card-{name}"))
                            answers.append(gr.Textbox(label=answer_label, lines=5, max_lines=9, interactive=False,
                                                      autoscroll=True, elem_id=f"sbs-answer-{name}"))
                        columns.append(column)
                with gr.Row(equal_height=False):
                    with gr.Column(scale=4, min_width=300):
                        with gr.Row():
                            plots = {key: gr.Plot(empty[key], label=PLOT_LABELS[key], elem_id=f"sbs-plot-{key}",
                                                  min_width=300) for key in FIGURE_NAMES[:2]}
                        with gr.Row():
                            plots.update({key: gr.Plot(empty[key], label=PLOT_LABELS[key], elem_id=f"sbs-plot-{key}",
                                                       min_width=300) for key in FIGURE_NAMES[2:]})
                    with gr.Column(scale=1, min_width=260):
                        with gr.Accordion("How the numbers are measured", open=True, elem_id="sbs-definitions",
                                          max_height=640):
                            gr.Markdown(charts.DEFINITIONS_MD, elem_classes=["sbs-defs"])
                summary = gr.Dataframe(headers=list(charts.SUMMARY_HEADERS), label="Summary (from the run's report)",
                                       interactive=False, wrap=True, elem_id="sbs-summary")
                with gr.Row():
                    replay_button = gr.Button("Replay as a race", interactive=False, elem_id="sbs-replay")
                    json_button = gr.DownloadButton("Download JSON", interactive=False, elem_id="sbs-json")
                    csv_button = gr.DownloadButton("Download CSV", interactive=False, elem_id="sbs-csv")
                with gr.Accordion("Run JSON (same schema as python -m engine run --json)", open=False):
                    report_json = gr.JSON(label="run", elem_id="sbs-report")
            with gr.Tab("Experiments", id="experiments", elem_id="sbs-tab-experiments"):
                exp_banner = gr.HTML(banner_html(first), js_on_load=None, elem_id="exp-banner")
                with gr.Row(equal_height=False):
                    exp_name = gr.Dropdown(experiment_choices(), value=FIRST_EXPERIMENT, label="Experiment",
                                           scale=3, min_width=300, elem_id="exp-name")
                    exp_preset = gr.Dropdown(preset_choices, value=preset, label="Preset", scale=2, min_width=220,
                                             elem_id="exp-preset")
                    exp_quick = gr.Checkbox(first.device.kind == "cpu", label="Quick grid", scale=1, min_width=180,
                                            info="fewer, smaller cells; one repeat", elem_id="exp-quick")
                exp_variants = gr.CheckboxGroup(exp_choices, value=exp_defaults, label="Variants",
                                                elem_classes=exp_classes, elem_id="exp-variants",
                                                info="the experiment's own variants are selected first")
                with gr.Row():
                    exp_run = gr.Button("Run experiment", variant="primary", elem_id="exp-run")
                    exp_stop = gr.Button("Stop", variant="stop", elem_id="exp-stop")
                exp_message = gr.HTML("", elem_id="exp-message", js_on_load=None)
                with gr.Row(equal_height=False, elem_id="exp-chart-row"):
                    exp_plot = gr.Plot(plot_value(empty_sweep_figure(FIRST_EXPERIMENT), FIRST_EXPERIMENT),
                                       label="Chart", show_label=False, scale=3, min_width=320,
                                       elem_id="exp-plot")
                    exp_explain = gr.HTML(explanation_html(FIRST_EXPERIMENT, first.device.kind == "cpu"),
                                          js_on_load=None, scale=1, min_width=260, elem_id="exp-explanation")
                exp_table = gr.Dataframe(empty_table(FIRST_EXPERIMENT),
                                         label="Rows: one per variant and cell (units in the headers)",
                                         interactive=False, wrap=True, elem_id="exp-table")
                with gr.Row(equal_height=True, elem_id="exp-downloads"):
                    exp_json_button = gr.DownloadButton("Download JSON", interactive=False, elem_id="exp-json")
                    exp_csv_button = gr.DownloadButton("Download CSV", interactive=False, elem_id="exp-csv")
                    exp_html_button = gr.DownloadButton("Download chart (HTML)", interactive=False,
                                                        elem_id="exp-html")
                gr.Markdown(PNG_NOTE, elem_classes=["exp-note"])
                with gr.Accordion("Experiment JSON (same schema as python -m engine sweep --json)", open=False):
                    exp_json = gr.JSON(label="experiment", elem_id="exp-report")

        # ------------------------------------------------------------------ handlers
        def on_preset(name):
            try:
                engine = engines.get(name)
            except PRESET_ERRORS as error:
                return (gr.skip(), gr.skip(), gr.skip(), message_html(f"Cannot use preset {_e(name)}: {_e(error)}",
                                                                      "error"), *[gr.skip()] * len(answers))
            new_choices, selected, css = variant_choices(engine)
            label = "Answer (random weights: noise)" if engine.preset.random_weights else "Answer"
            cap = engine.preset.max_new_tokens_cap
            return (banner_html(engine), gr.update(choices=new_choices, value=selected, elem_classes=css),
                    gr.update(maximum=cap, value=min(engine.preset.max_new_tokens, cap)),
                    message_html(f"Preset {_e(engine.preset.title)}: its workers load on the first run "
                                 "(the previous preset's workers are stopped then)."),
                    *[gr.update(label=label) for _ in answers])

        def prepare(selected, session_state: Session):
            """Show the selected columns at once, before the run leaves the queue."""
            session_state.pending, session_state.stop_requested = True, False
            selected = selected or []
            waiting = [card_html(charts.Lane(n, CATALOG[n].display_label(), detail="waiting for the device"), 0.0)
                       if n in selected else gr.skip() for n in names]
            return (message_html("Waiting for the device..." if selected else ""),
                    *[gr.update(visible=n in selected) for n in names], *waiting,
                    *["" if n in selected else gr.skip() for n in names],
                    *[empty[key] for key in FIGURE_NAMES], None,
                    gr.update(interactive=False), gr.update(value=None, interactive=False),
                    gr.update(value=None, interactive=False))

        def failure_frame(view: charts.RunView, text: str):
            now = time.perf_counter()
            view.error = text
            for lane in view.lanes.values():
                lane.stage, lane.detail = "idle", "not run: see the message above"
            return (message_html(text, "error"), None, None, gr.update(interactive=False),
                    gr.update(value=None, interactive=False), gr.update(value=None, interactive=False),
                    *[empty[key] for key in FIGURE_NAMES],
                    *[card_html(view.lanes[n], now) if n in view.lanes else "" for n in names], *[""] * len(names))

        def compare(prompt_text, preset_name, selected, max_new_tokens, run_mode, repeats, session_state: Session):
            """Run the prompt through the selected variants, streaming the page (API: /compare)."""
            session_state.pending = False
            selected, repeats = list(selected or []), int(repeats or 1)
            view = charts.RunView([n for n in selected if n in CATALOG], run_mode, repeats=repeats)
            if session_state.stop_requested:
                session_state.stop_requested = False
                yield failure_frame(view, "Stopped before the run started.")
                return
            try:
                engines.get(preset_name).validate(prompt_text or "", selected, int(max_new_tokens), run_mode, repeats)
                engine = engines.activate(preset_name)      # valid input: now switching presets unloads
                run = engine.start(prompt_text or "", selected, int(max_new_tokens), mode=run_mode, repeats=repeats)
            except (InputError, *PRESET_ERRORS) as error:
                yield failure_frame(view, refusal(error, f"Preset {_e(preset_name)} cannot be used"))
                return
            session_state.run_id, session_state.preset, session_state.view = run.id, preset_name, view
            session_state.stopping = False
            started = time.perf_counter()
            figures: dict = {}
            next_charts = started
            try:
                for view in charts.pump(run, view, TICK_S):
                    now = time.perf_counter()
                    due = now >= next_charts
                    if due:
                        next_charts = now + CHART_TICK_S
                    yield frame(view, session_state, started, figures, due, run.id, downloads)
            finally:
                if not view.done:                  # the page went away (Gradio closed the generator)
                    engine.cancel(run.id)
                session_state.run_id, session_state.stopping = None, False

        def stop(session_state: Session):
            """Stop this visitor's run (API: /stop); another visitor's run is never touched."""
            if session_state.run_id is not None:           # the run's next update says "Stopping"
                session_state.stopping = engines.cancel(session_state.preset, session_state.run_id)
                return gr.skip()
            if session_state.pending:
                session_state.stop_requested = True
                return message_html("Stopped: the run will not start.", "warn")
            return gr.skip()

        def replay(session_state: Session):
            """Play the last run's timings as if every variant had started at the same moment."""
            view = session_state.view
            if view is None or not view.done:
                yield message_html("Nothing to replay yet: run first.", "warn"), gr.skip(), *[gr.skip()] * len(names)
                return
            duration = charts.replay_duration_s(view)
            speed = max(1.0, duration / REPLAY_MAX_S)
            begin = time.perf_counter()
            while True:
                t = (time.perf_counter() - begin) * speed
                note = f"Replay of the {view.mode}-mode timings as a race: {min(t, duration):.2f} s of {duration:.2f} s"
                note += f" ({speed:.1f}x speed)" if speed > 1 else ""
                yield (message_html(note), charts.race_figure(view, replay_s=t),
                       *[view.lanes[n].text_until(t) if n in view.lanes else gr.skip() for n in names])
                if t >= duration:
                    return
                time.sleep(TICK_S)

        preset_box.change(on_preset, [preset_box], [banner, variants_box, max_new, message, *answers],
                          queue=False, api_visibility="private")
        run_outputs = [message, report_json, summary, replay_button, json_button, csv_button,
                       *[plots[k] for k in FIGURE_NAMES], *cards, *answers]
        prepared = run_button.click(
            prepare, [variants_box, session],
            [message, *columns, *cards, *answers, *[plots[k] for k in FIGURE_NAMES], summary, replay_button,
             json_button, csv_button], queue=False, api_visibility="private", show_progress="hidden")
        prepared.then(compare, [prompt, preset_box, variants_box, max_new, mode_box, repeats_box, session],
                      run_outputs, api_name="compare", concurrency_limit=1, concurrency_id="device",
                      show_progress="full", show_progress_on=[message])
        stop_button.click(stop, [session], [message], queue=False, api_name="stop", show_progress="hidden")
        replay_button.click(replay, [session], [message, plots["race"], *answers], api_name="replay",
                            concurrency_limit=4, concurrency_id="replay", show_progress="hidden")

        # ------------------------------------------------------------------ experiments tab
        def on_experiment(name, preset_name, quick):
            """A new experiment: its paragraph, its own variants selected, its empty chart."""
            try:
                engine = engines.get(preset_name)
            except PRESET_ERRORS:
                engine = None
            variants = gr.skip() if engine is None else gr.update(value=experiment_variants(engine, name)[1])
            return (explanation_html(name, quick), variants, plot_value(empty_sweep_figure(name), name),
                    empty_table(name), *[gr.update(value=None, interactive=False)] * 3, None, "")

        def on_experiment_preset(preset_name, name):
            """A new preset: its banner, which variants can run there, quick grid on for a CPU."""
            try:
                engine = engines.get(preset_name)
            except PRESET_ERRORS as error:
                return (gr.skip(), gr.skip(), gr.skip(),
                        message_html(f"Cannot use preset {_e(preset_name)}: {_e(error)}", "error"))
            new_choices, selected, css = experiment_variants(engine, name)
            return (banner_html(engine), gr.update(choices=new_choices, value=selected, elem_classes=css),
                    engine.device.kind == "cpu",
                    message_html(f"Preset {_e(engine.preset.title)}: its workers load on the first run "
                                 "(the previous preset's workers are stopped then)."))

        def prepare_experiment(name, session_state: Session):
            """Clear the last result at once, before the sweep leaves the queue."""
            session_state.pending, session_state.stop_requested = True, False
            return (message_html("Waiting for the device..."), plot_value(empty_sweep_figure(name), name),
                    empty_table(name), None, *[gr.update(value=None, interactive=False)] * 3)

        def sweep_failure(name: str, text: str, kind: str = "error"):
            known = name in sweeps.EXPERIMENTS
            return (message_html(text, kind), plot_value(empty_sweep_figure(name), name) if known else None,
                    empty_table(name) if known else None, None, *[gr.update(value=None, interactive=False)] * 3)

        def experiment(name, preset_name, selected, quick, session_state: Session):
            """Run an experiment's sweep, streaming progress, the chart and the rows (API: /experiment).

            Outputs: status line, chart, rows table, sweep JSON, JSON file, CSV file, chart HTML file.
            """
            session_state.pending = False
            selected = list(selected or [])
            if session_state.stop_requested:
                session_state.stop_requested = False
                yield sweep_failure(name, "Stopped before the experiment started.", "warn")
                return
            try:
                sweeps.get(name)
                if not selected:
                    raise InputError("no variant selected: choose at least one (the experiment's own are "
                                     f"{', '.join(sweeps.get(name).variants)})")
                engine = engines.activate(preset_name)
                run, live = sweeps.start_sweep(name, engine, bool(quick), selected)
            except (InputError, *PRESET_ERRORS) as error:
                yield sweep_failure(name, refusal(error, f"Experiment {_e(name)} on preset {_e(preset_name)} "
                                                         "cannot run"))
                return
            session_state.run_id, session_state.preset, session_state.stopping = run.id, preset_name, False
            started = time.perf_counter()
            next_tick, drawn = started, (None, None, None, None)   # (revision, figure, plot, table) last drawn
            try:
                while True:
                    for event in run.drain(max(next_tick - time.perf_counter(), 0.0)):
                        live.apply(event)
                    now = time.perf_counter()
                    if not live.done and now < next_tick:
                        continue
                    next_tick = now + SWEEP_TICK_S
                    if drawn[0] != live.revision:               # a cell finished: redraw chart and rows
                        sweep = live.sweep()
                        figure = sized(sweep_figure(sweep))
                        drawn = (live.revision, figure, plot_value(figure, name), sweep_table(sweep))
                    status = sweep_message(live, engine.device.name, session_state.stopping, now - started)
                    files = [gr.update(value=None, interactive=False)] * 3
                    result = None
                    if live.done:
                        result = live.result
                        files = [gr.update(value=path, interactive=True)
                                 for path in write_sweep_downloads(result, drawn[1], run.id, downloads)]
                    yield (status, drawn[2], drawn[3], result, *files)
                    if live.done:
                        return
            finally:
                if not live.done:                  # the page went away (Gradio closed the generator)
                    engine.cancel(run.id)
                session_state.run_id, session_state.stopping = None, False

        exp_name.change(on_experiment, [exp_name, exp_preset, exp_quick],
                        [exp_explain, exp_variants, exp_plot, exp_table, exp_json_button, exp_csv_button,
                         exp_html_button, exp_json, exp_message], queue=False, api_visibility="private")
        exp_quick.change(explanation_html, [exp_name, exp_quick], [exp_explain], queue=False,
                         api_visibility="private", show_progress="hidden")
        exp_preset.change(on_experiment_preset, [exp_preset, exp_name],
                          [exp_banner, exp_variants, exp_quick, exp_message], queue=False, api_visibility="private")
        exp_outputs = [exp_message, exp_plot, exp_table, exp_json, exp_json_button, exp_csv_button, exp_html_button]
        exp_run.click(prepare_experiment, [exp_name, exp_session], exp_outputs, queue=False,
                      api_visibility="private", show_progress="hidden").then(
            experiment, [exp_name, exp_preset, exp_variants, exp_quick, exp_session], exp_outputs,
            api_name="experiment", concurrency_limit=1, concurrency_id="device",
            show_progress="full", show_progress_on=[exp_message])
        exp_stop.click(stop, [exp_session], [exp_message], queue=False, api_name="experiment_stop",
                       show_progress="hidden")
    return demo


def launch_kwargs() -> dict:
    """Theme and CSS go to launch() in Gradio 6."""
    return {"theme": THEME, "css": CSS}


def share_reachable(timeout_s: float = 3.0) -> str | None:
    """None when Gradio's share server answers; else why not (so --share can say so once)."""
    try:
        socket.create_connection(("api.gradio.app", 443), timeout=timeout_s).close()
        return None
    except OSError as error:
        return str(error) or type(error).__name__


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(description="Side-by-side inference dashboard (Gradio).")
    top.add_argument("--host", help="address to serve on (default: Gradio's, 127.0.0.1 or $GRADIO_SERVER_NAME)")
    top.add_argument("--port", type=int, help="port (default: Gradio's, 7860 or $GRADIO_SERVER_PORT)")
    top.add_argument("--share", action="store_true", help="ask Gradio for a public link")
    top.add_argument("--preset", default="tiny", help=f"preset shown first: {', '.join(presets.available())}")
    top.add_argument("--mode", choices=("fair", "race"), default="fair", help="mode selected first")
    top.add_argument("--threads", type=int, help="torch CPU threads per worker (default: on a CPU device, "
                     "all cores but one, which is left to the page; on a GPU host, torch's)")
    return top


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.threads is not None and args.threads < 1:
        print(f"error: --threads must be at least 1, got {args.threads}", file=sys.stderr)
        return 2
    engines = Engines(threads=args.threads)
    try:
        demo = build_app(engines, args.preset, args.mode)
    except (presets.PresetError, DeviceError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    share = args.share
    if share and os.environ.get("SYSTEM") == "spaces":
        share = False                                       # a Space is public already
    elif share:
        reason = share_reachable()
        if reason:
            print(f"--share: no public link ({reason}: Gradio's share server cannot be reached); "
                  "serving locally only.", file=sys.stderr)
            share = False
    demo.queue(default_concurrency_limit=1)
    signal.signal(signal.SIGTERM, signal.default_int_handler)     # stop like Ctrl-C: close workers too
    try:
        # quiet: Gradio's own hint about share=True would contradict the line above
        demo.launch(server_name=args.host, server_port=args.port, share=share, quiet=True,
                    prevent_thread_lock=True, **launch_kwargs())
        print(f"* Running on local URL:  {demo.local_url}", flush=True)
        demo.block_thread()
    finally:
        engines.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
