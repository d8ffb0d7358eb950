"""The Experiments tab: a sweep of engine/studies/sweeps.py over a grid of cells, its chart filling as
cells finish. Same shape as the Compare tab; a sweep is a run, on the same device queue.

`RUN` lists the outputs of /experiment in the order an API client receives them.
"""
from __future__ import annotations

import json
from functools import partial

import gradio as gr
from gradio.components.plot import PlotData

from engine import presets, quality
from engine.errors import InputError
from engine.studies import sweeps
from engine.views.sweep_charts import empty_sweep_figure, sweep_figure, sweep_table
from ui import checks, render, stream, sweep_render
from ui.outputs import Outputs, Wiring
from ui.presets import preset_update
from ui.state import Context, Session

SWEEP_TICK_S = 0.25          # status refresh period; the chart is redrawn only when a cell finished
FIRST_EXPERIMENT = "attention"
PNG_NOTE = ("PNG: hover the chart and press the camera button (\u201cDownload plot as a PNG\u201d) in its "
            "toolbar. The HTML file is the interactive chart; it loads the charting library, plotly.min.js, from "
            "beside it (the page says where to find a copy for offline use), so each file stays small.")

FILES = ("json_file", "csv_file", "html_file")
RUN = Outputs(["message", "plot", "table", "sweep", *FILES, "explanation"])
EXPERIMENT = Outputs(["explanation", "preset", "variants", "plot", "table", *FILES, "sweep", "message"])
PRESET = Outputs(["banner", "variants", "quick", "message"])
QUICK = Outputs(["explanation", "message"])
STOP = Outputs(["message"])
NO_FILE = {"value": None, "interactive": False}


def experiment_choices() -> list[tuple[str, str]]:
    """Dropdown choices (label, name), one per experiment."""
    return [(f"{experiment.name}: {experiment.title}", name) for name, experiment in sweeps.EXPERIMENTS.items()]


def plot_value(figure, name: str) -> PlotData:
    """The figure for gr.Plot, with plotly's own PNG button named after the experiment."""
    plot = json.loads(figure.to_json())
    plot["config"] = {"displaylogo": False,
                      "toImageButtonOptions": {"format": "png", "filename": f"sweep-{name}", "scale": 2}}
    return PlotData(type="plotly", plot=json.dumps(plot))


def table_value(sweep: dict) -> dict:
    """The rows for gr.Dataframe, headers in the chart's units."""
    headers, rows = sweep_table(sweep, sweeps.get(sweep["experiment"]).y)
    return {"headers": headers, "data": rows}


def blank(name: str) -> dict:
    """The run outputs before a sweep: the experiment's empty panels and table, no files."""
    known = name in sweeps.EXPERIMENTS
    return {"plot": plot_value(empty_sweep_figure(name), name) if known else None,
            "table": table_value({"experiment": name, "results": []}) if known else None,
            "sweep": None, **{key: gr.update(**NO_FILE) for key in FILES}}


def offered(ctx: Context) -> list[str]:
    """The presets this page offers (its preset dropdown's)."""
    return list(ctx.engines.offered) if ctx.engines.offered is not None else presets.available()


def on_experiment(ctx: Context, name: str, preset_name: str, quick: bool) -> dict:
    """A new experiment: its paragraph, its own variants selected, its empty chart. An experiment that scores
    the answers (quantization) switches to its own preset (a real model) when the page offers it and it can
    load here; otherwise the current preset stays, and on random weights the message says that the quality
    figures are not meaningful (each row's quality note says so too)."""
    try:
        experiment, quick = sweeps.get(checked_name(name)), checks.flag("quick", quick)
    except InputError as error:
        return {"message": render.ignored_html(error)}
    update = {"explanation": sweep_render.explanation_html(name, quick), "message": "", **blank(name)}
    own, kept = experiment.preset, ""
    if experiment.quality and own != preset_name:
        kept = "which this page does not offer"
        if own in offered(ctx):
            engine, found = preset_update(ctx, own, experiment.variants)
            if engine is not None:      # its change event then brings the banner, the quick grid, the note
                return {**update, "preset": own, "variants": found["variants"]}
            kept = "which cannot be used here"
    engine, found = preset_update(ctx, preset_name, experiment.variants)
    if engine is None:
        return update
    if experiment.quality and engine.preset.random_weights:
        update["message"] = render.message_html(render.e(
            f"Quality figures (same top token, KLD, perplexity) on preset {preset_name}: {quality.RANDOM_WEIGHTS}. "
            f"They need a real model, such as {own}" + (f", {kept}" if kept else "") + "."), "warn")
    return {**update, "variants": found["variants"]}


def checked_name(name) -> str:
    """An experiment's name, as /experiment checks it."""
    return checks.choice("experiment", name, tuple(sweeps.EXPERIMENTS))


def on_preset(ctx: Context, preset_name: str, name: str) -> dict:
    """A new preset: its banner, which variants can run there, the quick grid on a CPU."""
    try:
        experiment = sweeps.get(checked_name(name))
    except InputError as error:
        return {"message": render.ignored_html(error)}
    engine, update = preset_update(ctx, preset_name, experiment.variants)
    if engine is not None:
        update["quick"] = engine.device.kind == "cpu"
    return update


def on_quick(ctx: Context, name: str, quick: bool) -> dict:
    """The quick grid on or off: the paragraph beside the chart says which cells it measures."""
    try:
        return {"explanation": sweep_render.explanation_html(checked_name(name), checks.flag("quick", quick))}
    except InputError as error:
        return {"message": render.ignored_html(error)}


def prepare(ctx: Context, name: str, session_state: Session) -> dict:
    """Clear the last result at once, before the sweep leaves the queue."""
    try:
        checked_name(name)
    except InputError as error:
        return {"message": render.ignored_html(error)}
    session_state.prepare()
    return {"message": render.message_html("Waiting for the device..."), **blank(name)}


class SweepView:
    """A sweep as `pump` folds it (a batch of events at a time), and the chart last drawn of it."""

    def __init__(self, live: sweeps.LiveSweep, device: str):
        self.live, self.device = live, device
        self.drawn: tuple = (None, None, None, None)       # (revision, figure, plot, table)
        self.explained = False                             # the paragraph beside the chart, redrawn for this run

    @property
    def done(self) -> bool:
        return self.live.done

    @property
    def report(self) -> dict | None:
        """The sweep's JSON once it is done (what the history keeps), like RunView.report."""
        return self.live.result if self.live.done else None

    def apply(self, batch, now=None) -> None:
        for event in batch:
            self.live.apply(event)

    def draw(self, name: str) -> tuple:
        """(figure, plot, table), redrawn only when a cell finished since the last call."""
        if self.drawn[0] != self.live.revision:
            sweep = self.live.sweep()
            figure = sweep_figure(sweep)
            self.drawn = (self.live.revision, figure, plot_value(figure, name), table_value(sweep))
        return self.drawn[1:]


def frame(ctx: Context, name: str, view: SweepView, run_id: int, elapsed_s: float, stopping: bool) -> dict:
    """One update of the sweep's outputs; once it is done, with its rows and files."""
    figure, plot, table = view.draw(name)
    update = {"message": sweep_render.sweep_message(view.live, view.device, stopping, elapsed_s), "plot": plot,
              "table": table, "sweep": None, **{key: gr.update(**NO_FILE) for key in FILES}}
    if view.done or not view.explained:     # the plain paragraph while it runs; what the run showed once done
        update["explanation"] = sweep_render.explanation_html(name, view.live.quick, view.live.result)
        view.explained = True
    if view.done:
        sweep = view.live.result
        paths = ctx.downloads.save("sweep", run_id, f"{name}-{sweep['preset']['name']}",
                                   json=json.dumps(sweep, indent=1), csv=sweeps.to_csv(sweep),
                                   html=sweep_render.sweep_page(sweep, figure.to_html(
                                       full_html=False, include_plotlyjs=ctx.downloads.library())))
        update.update({"sweep": sweep, **{key: gr.update(value=path, interactive=True)
                                          for key, path in zip(FILES, paths)}})
    return update


def _start(ctx: Context, name: str, preset_name: str, selected: list[str], quick: bool):
    experiment = sweeps.get(name)
    if not selected:
        raise InputError("no variant selected: choose at least one (the experiment's own are "
                         f"{', '.join(experiment.variants)})")
    engine = ctx.engines.activate(preset_name)
    run, live = sweeps.start_sweep(name, engine, quick, selected)
    return engine, run, SweepView(live, engine.device.name)


def failure(name: str, message: str) -> dict:
    return {"message": message, **blank(name)}


def experiment(ctx: Context, name: str, preset_name: str, selected: list[str], quick: bool,
               session_state: Session, request: gr.Request = None):
    """Run an experiment's sweep, streaming progress, the chart and the rows (API: /experiment).

    The sweep of `python -m engine sweep NAME`: every (variant, grid cell) measured 3 times after a warm-up
    request, on the device's queue like a run. A public page runs the quick grid with the experiment's own
    variants, whatever is asked.

    Args:
        name: the experiment: "attention", "batch", "kv-cache", "quantization" or "lengths"
        preset_name: the model setup, e.g. "tiny" (local, random weights: no quality figures) or "smollm2-135m"
        selected: the variants to sweep, at least one, e.g. ["baseline", "sdpa"] (a public page: the experiment's)
        quick: true for the quick grid (fewer, smaller cells: seconds on "tiny" on a CPU), false for the full one

    Returns:
        message: a status line (HTML); a refused input or a sweep that could not run says why, in one line
        plot: the chart (plotly JSON); table: the rows (headers, data), one per variant and cell
        sweep: the sweep's JSON in the schema of `python -m engine sweep --json` (None until it is done): its
        rows in results (variant, cell, each figure's median and range), its claims checked in trends. The
        quantization experiment scores each variant on the baseline's answer, and its rows add the quality
        entry (as /compare's) and its flat quality_* columns: quality_top_agreement (share of positions where
        the variant's most likely token is the baseline's), quality_kld_mean, quality_kld_p99 (from 100
        positions), quality_kld_max (KL divergence from the baseline's distribution, nats), quality_perplexity
        and quality_reference_perplexity (of the baseline's answer), quality_positions, and quality_note (why
        a row has none: "not meaningful: random weights" on a random-weight preset such as "tiny")
        then the JSON, CSV and chart HTML files, and the paragraph beside the chart (once done, with what the
        run showed of its claims)
    """
    try:
        checks.choice("experiment", name, tuple(sweeps.EXPERIMENTS))
        selected, quick = checks.names("variants", selected), checks.flag("quick", quick)
    except InputError as error:                     # before any work, and before the queue
        session_state.end()
        known = name if name in sweeps.EXPERIMENTS else next(iter(sweeps.EXPERIMENTS))
        yield failure(known, render.message_html(render.refusal(error, ""), "error"))
        return
    if ctx.limits.quick_experiments_only:           # a public page: the quick grid, the experiment's variants
        selected, quick = list(sweeps.get(name).variants), True
    yield from stream.stream(ctx, session_state, preset_name,
                             partial(_start, ctx, name, preset_name, selected, quick),
                             partial(frame, ctx, name), partial(failure, name),
                             f"Experiment {render.e(name)} on preset {render.e(preset_name)} cannot run",
                             interval_s=SWEEP_TICK_S, request=request)


def build(ctx: Context, preset: str, preset_choices: list) -> None:
    """Lay out the tab and wire its events (inside gr.Blocks and a gr.Tab).

    One long function on purpose: the layout reads top to bottom as the page does.
    """
    first = ctx.engines.get(preset)
    quick = first.device.kind == "cpu"
    choices, defaults, classes = render.variant_choices(first, sweeps.get(FIRST_EXPERIMENT).variants)
    empty = blank(FIRST_EXPERIMENT)
    c: dict = {"session": gr.State(Session(), time_to_live=ctx.limits.session_s)}          # a visitor's sweep, apart from their Compare run
    c["banner"] = gr.HTML(render.banner_html(first), js_on_load=None, elem_id="exp-banner")
    # a row of its own: the experiments' names are long ("attention: FlashAttention and SDPA against eager
    # attention, by prompt length and padding") and a dropdown's text does not wrap
    c["experiment"] = gr.Dropdown(experiment_choices(), value=FIRST_EXPERIMENT, label="Experiment",
                                  elem_id="exp-name")
    with gr.Row(equal_height=False):
        c["preset"] = gr.Dropdown(preset_choices, value=preset, label="Preset", scale=2, min_width=220,
                                  elem_id="exp-preset")
        c["quick"] = gr.Checkbox(quick, label="Quick grid", scale=1, min_width=180,
                                 info=f"fewer, smaller cells; {sweeps.repeats_for(True)} repeats each",
                                 elem_id="exp-quick")
    c["variants"] = gr.CheckboxGroup(choices, value=defaults, label="Variants", elem_classes=classes,
                                     elem_id="exp-variants", info="the experiment's own variants are selected first")
    with gr.Row():
        c["run"] = gr.Button("Run experiment", variant="primary", elem_id="exp-run")
        c["stop"] = gr.Button("Stop", variant="stop", elem_id="exp-stop")
    c["message"] = gr.HTML("", elem_id="exp-message", js_on_load=None)
    with gr.Row(equal_height=False, elem_id="exp-chart-row"):
        c["plot"] = gr.Plot(empty["plot"], label="Chart", show_label=False, scale=3, min_width=320,
                            elem_id="exp-plot")
        c["explanation"] = gr.HTML(sweep_render.explanation_html(FIRST_EXPERIMENT, quick), js_on_load=None, scale=1,
                                   min_width=260, elem_id="exp-explanation")
    c["table"] = gr.Dataframe(empty["table"], label="Rows: one per variant and cell (units in the headers)",
                              interactive=False, wrap=True, elem_id="exp-table")
    with gr.Row(equal_height=True, elem_id="exp-downloads"):
        c["json_file"] = gr.DownloadButton("Download JSON", interactive=False, elem_id="exp-json")
        c["csv_file"] = gr.DownloadButton("Download CSV", interactive=False, elem_id="exp-csv")
        c["html_file"] = gr.DownloadButton("Download chart (HTML)", interactive=False, elem_id="exp-html")
    gr.Markdown(PNG_NOTE, elem_classes=["exp-note"])
    with gr.Accordion("Experiment JSON (same schema as python -m engine sweep --json)", open=False):
        c["sweep"] = gr.JSON(label="experiment", elem_id="exp-report")

    on = Wiring(ctx, c)
    # outside the queue, raw values checked by each handler (see the Compare tab's build)
    raw = dict(queue=False, api_visibility="private", preprocess=False)
    on(c["experiment"].change, on_experiment, ["experiment", "preset", "quick"], EXPERIMENT, **raw)
    on(c["quick"].change, on_quick, ["experiment", "quick"], QUICK, show_progress="hidden", **raw)
    on(c["preset"].change, on_preset, ["preset", "experiment"], PRESET, **raw)
    prepared = on(c["run"].click, prepare, ["experiment", "session"], RUN, show_progress="hidden", **raw)
    on(prepared.then, experiment, ["experiment", "preset", "variants", "quick", "session"], RUN,
       api_name="experiment", concurrency_limit=ctx.jobs, concurrency_id="device",
       preprocess=False,       # raw values: ui/checks.py checks each, with a message, where Gradio would crash
       show_progress="hidden")        # the message and its bar say where the sweep is; Gradio's ETA misleads
    on(c["stop"].click, stream.stop, ["session"], STOP, queue=False, api_name="experiment_stop",
       show_progress="hidden")
