"""The Compare tab: one prompt through several variants, their answers streaming side by side.

`build` lays the tab out and wires it; the handlers below are module-level functions of the
`Context` and the event's inputs, returning updates by output name (ui/outputs.py). `RUN` lists
the outputs of /compare in the order an API client receives them.
"""
from __future__ import annotations

import json
import time
from functools import partial

import gradio as gr

from engine.spec import RunSpec
from engine.variants import CATALOG
from engine.views.run import FIGURE_NAMES, Lane, RunView, label_of
from engine.views.run_charts import TITLES, RunCharts, empty_figures
from engine import verdict
from engine.views.summary import (DEFINITIONS_MD, GLANCE_HEADERS, SUMMARY_HEADERS, glance_rows, judgement, report_csv,
                                  summary_rows)
from engine.errors import InputError
from ui import checks, render, stream
from ui.examples import EXAMPLES, QUESTION
from ui.outputs import Outputs, Wiring, answer, card, column
from ui.presets import preset_update
from ui.replay import replay
from ui.state import Context, Session

CHART_TICK_S = 0.25          # chart refresh period (each chart update re-sends the figure)
REPEATS_MAX = 5              # timed requests per variant a visitor may ask for in one run
REPEATS_DEFAULT = 3          # enough to state a range; each variant first runs one untimed warm-up
NAMES = tuple(CATALOG)
# Run brings the run into view: the status line (where the verdict comes) at the top, the columns under it. On a
# laptop the settings fill the first screen, so without it a click on Run changes nothing a person can see.
# Left alone when the status line is already in the upper half of the screen (a person who scrolled there).
SHOW_RUN_JS = """() => {
    const target = document.querySelector('#sbs-message') || document.querySelector('#sbs-lanes');
    if (!target) return;
    const top = target.getBoundingClientRect().top;
    if (top < 0 || top > window.innerHeight / 2) target.scrollIntoView({block: 'start', behavior: 'smooth'});
}"""
# Variant and Speedup together fit a 390 px phone; long cells wrap
SUMMARY_WIDTHS = ["96px", "132px", "132px", "132px", "132px", "90px", "90px", "120px", "150px", "90px", "70px",
                  "90px", "100px", "100px", "100px", "130px", "100px", "100px", "140px", "170px"]       # every catalog variant has a column; the unselected ones are hidden
# the first table: the columns a person compares, within a laptop's 1366 px (a phone scrolls it inside its box)
GLANCE_WIDTHS = ["9%", "20%", "20%", "17%", "17%", "17%"]


PLOTS = tuple(f"plot:{key}" for key in FIGURE_NAMES)
FILES = ("json_file", "csv_file")


class Layout:
    """The tab's outputs for its columns: one per catalog variant, then one per served endpoint of the
    page's presets (engine/remote.py), in that order (an API client finds them by name in `run`)."""

    def __init__(self, names):
        self.names = tuple(names)
        self.run = Outputs(["message", "report", "summary", "replay", *FILES, *PLOTS, *map(card, self.names),
                            *map(answer, self.names), "glance"], unlisted=["replay"])
        self.prepare = Outputs([*self.run.names, *map(column, self.names)])
        self.preset = Outputs(["banner", "variants", "max_new", "message", *map(answer, self.names)])
        self.replay = Outputs(["message", "plot:race", *map(answer, self.names)])


LAYOUT = Layout(NAMES)              # a page whose presets name no served endpoint
RUN, PREPARE, PRESET, REPLAY = LAYOUT.run, LAYOUT.prepare, LAYOUT.preset, LAYOUT.replay
STOP = Outputs(["message"])
EXAMPLE = Outputs(["prompt", "message"])
NO_FILE = {"value": None, "interactive": False}


def no_result() -> dict:
    """The outputs of a finished run, before it finished: no summary, nothing to replay or download."""
    return {"summary": None, "glance": None, "replay": gr.update(interactive=False),
            **{name: gr.update(**NO_FILE) for name in FILES}}


def blank() -> dict:
    """The run outputs before a run: no result, empty charts."""
    return {**no_result(), **{f"plot:{key}": figure for key, figure in empty_figures().items()}}


def on_preset(ctx: Context, preset_name: str) -> dict:
    """A new preset: its banner, which variants can run there, its token cap, the answers' label."""
    engine, update = preset_update(ctx, preset_name)
    if engine is not None:
        cap = min(engine.preset.max_new_tokens_cap, ctx.limits.new_tokens or engine.preset.max_new_tokens_cap)
        update["max_new"] = gr.update(maximum=cap, value=min(engine.preset.max_new_tokens, cap))
        update.update({answer(name): gr.update(label=render.answer_label(engine)) for name in ctx.engines.lanes()})
    return update


def example(ctx: Context, index: int) -> dict:
    """An example prompt into the prompt box (`index`: which of EXAMPLES, as the page sends it)."""
    try:
        return {"prompt": EXAMPLES[checks.whole("example", index, 0, len(EXAMPLES) - 1)][0]}
    except InputError as error:
        return {"message": render.ignored_html(error)}


def prepare(ctx: Context, selected: list[str], session_state: Session) -> dict:
    """Show the selected columns at once, before the run leaves the queue (/compare checks them again)."""
    try:
        selected = checks.names("variants", selected)
    except InputError as error:
        return {"message": render.ignored_html(error)}
    session_state.prepare()
    update = {"message": render.message_html("Waiting for the device..." if selected else ""), **blank()}
    for name in ctx.engines.lanes():
        update[column(name)] = gr.update(visible=name in selected)
        if name in selected:
            update[card(name)] = render.card_html(Lane(name, label_of(name), detail="waiting for the device"), 0.0)
            update[answer(name)] = ""
    return update


def failure_frame(names: tuple[str, ...], view: RunView, message: str) -> dict:
    """Every run output (the columns `names`) when the run did not start: `message` (HTML) says why."""
    for lane in view.lanes.values():
        lane.stage, lane.detail = "idle", "not run: see the message above"
    return {"message": message, "report": None, **blank(),
            **{card(n): render.card_html(view.lanes[n], 0.0) if n in view.lanes else "" for n in names},
            **{answer(n): "" for n in names}}


def frame(ctx: Context, charts: RunCharts, view: RunView, run_id: int, elapsed_s: float, stopping: bool) -> dict:
    """One update of every run output, each complete (Gradio sends only what changed, as a diff)."""
    now = time.perf_counter()
    update = {"message": render.run_message(view, stopping, elapsed_s), "report": None, **no_result(),
              **{f"plot:{key}": figure for key, figure in charts.figures(view, now).items()}}
    judged = judgement(view.report) if view.done else {}
    for name in ctx.engines.lanes():
        lane = view.lanes.get(name)
        update[card(name)] = render.card_html(lane, now, verdict.marks(judged, name)) if lane else ""
        update[answer(name)] = render.answer_text(lane.text) if lane else ""
    if view.done:
        report = view.report
        paths = ctx.downloads.save("run", run_id, report["preset"]["name"], json=json.dumps(report, indent=1),
                                   csv=report_csv(report))
        update.update({"report": report, "summary": summary_rows(report), "glance": glance_rows(report),
                       "replay": gr.update(interactive=any(lane.token_times for lane in view.lanes.values())),
                       **{name: gr.update(value=path, interactive=True) for name, path in zip(FILES, paths)}})
    return update


def _start(ctx: Context, preset_name: str, spec: RunSpec, view: RunView, session: Session):
    validated = ctx.engines.get(preset_name).validate(spec)
    engine = ctx.engines.activate(preset_name)      # valid input: only now does switching presets unload
    view.expect(engine.load_estimates(spec.variants))
    run = engine.start(validated)
    session.view = view
    return engine, run, view


def compare(ctx: Context, prompt_text: str, preset_name: str, selected: list[str], max_new_tokens: int,
            run_mode: str, repeats: int, session_state: Session, request: gr.Request = None):
    """Run the prompt through the selected variants, streaming the page (API: /compare).

    Each variant, in a worker process of its own, answers one untimed warm-up request, then `repeats` timed
    ones (greedy decoding); each figure is the median over the repeats, with its min-max range. A public page's
    limits apply (prompt length, new tokens, repeats, a work budget, one job per visitor); bad input is refused
    at once, in one line.

    Args:
        prompt_text: the prompt, as plain text (a chat preset wraps it in its tokenizer's chat template)
        preset_name: the model setup to run, e.g. "tiny" (a 2-layer Llama made locally: no download, any CPU)
        selected: the variants to run side by side, e.g. ["baseline", "sdpa"]; baseline (eager) is the reference
        max_new_tokens: new tokens per request, a whole number from 1 to the preset's cap or the page's limit
        run_mode: "fair" (one variant at a time on a device, the default) or "race" (all at once: contended)
        repeats: timed requests per variant, a whole number from 1 to 5 (default 3), or to a public page's limit

    Returns:
        message: one status line (HTML); a refused input or a run that could not start says why, in one line
        report: the run's JSON in the schema of `python -m engine run --json` (None when it did not run);
        per variant in its results: status, reason, ttft_s, tpot_s (the median; tpot_min_s, tpot_max_s),
        e2e_s, tokens_per_s, itl_p50_s/p90/p99, peak_memory_bytes, mbu, the answer's text, and its quality entry
        quality: what the variant's answers cost, from scoring the baseline's answer off the clock (teacher forcing)
        quality.status: "measured"; "reference" (baseline, scored on its own answer); "not meaningful" (random weights)
        or "not measured", "not reported" (by a server), with quality.note saying why there are no figures
        quality.top_token_agreement: the share of answer positions where its most likely token is baseline's
        quality.kld_mean, kld_p99 (from 100 positions) and kld_max: KL divergence from baseline's distribution (nats)
        quality.kld_tail ("p99" or "max"), positions (answer tokens scored), reference (the variant scored against)
        quality.perplexity: of baseline's answer under the variant, beside reference_perplexity (baseline's own)
        quality.approximation: how a served variant's KLD was bounded (from its top tokens), else None
        summary: the summary table (headers, rows): baseline first, then the variants from the fastest per token,
        every column; each ratio against baseline says its direction ("1.12x faster (1.11-1.14x)", "48% less")
        then the report as JSON and CSV files, the five charts (plotly: TTFT, ITL, race, memory, speed against
        quality), each variant's card (HTML, with its quality line) and answer, and last the summary's columns a
        person compares (time per token, first token, peak memory, quality, verdict: who was slowed, once a row)
    """
    try:
        spec = checked_spec(ctx, prompt_text, selected, max_new_tokens, run_mode, repeats)
    except InputError as error:                     # before any work, and before the queue
        session_state.end()
        lanes = ctx.engines.lanes()
        names = [n for n in (selected if isinstance(selected, list) else []) if isinstance(n, str) and n in lanes]
        yield failure_frame(lanes, RunView(names), render.message_html(render.refusal(error, ""), "error"))
        return
    lanes = ctx.engines.lanes()
    view = RunView([n for n in spec.variants if n in lanes], spec.mode, repeats=spec.repeats)
    yield from stream.stream(ctx, session_state, preset_name, partial(_start, ctx, preset_name, spec, view,
                                                                      session_state),
                             partial(frame, ctx, RunCharts(CHART_TICK_S)), partial(failure_frame, lanes, view),
                             f"Preset {render.e(preset_name)} cannot be used", request=request)


def checked_spec(ctx: Context, prompt_text, selected, max_new_tokens, run_mode, repeats) -> RunSpec:
    """The run the parameters ask for, each checked for type and range (ui/checks.py), then against the
    page's limits that need no tokenizing (the engine checks them again, with the rest)."""
    spec = RunSpec(checks.text("prompt", prompt_text if prompt_text is not None else ""),
                   checks.names("variants", selected), checks.whole("max new tokens", max_new_tokens, 1, None),
                   mode=checks.choice("mode", run_mode, ("fair", "race")),
                   repeats=checks.whole("repeats", REPEATS_DEFAULT if repeats is None else repeats, 1,
                                        ctx.limits.repeats or REPEATS_MAX))
    ctx.limits.check(spec)
    return spec


def limits_md(limits) -> str:
    """The page's limits, for the definitions panel."""
    head = "**Limits of this page** (public mode):" if limits.public else "**Limits of this page**:"
    return "\n" + head + "\n" + "".join(f"\n- {line}" for line in limits.describe()) + "\n"


def build(ctx: Context, preset: str, mode: str, preset_choices: list) -> None:
    """Lay out the tab and wire its events (inside gr.Blocks and a gr.Tab).

    One long function on purpose: the layout reads top to bottom as the page does.
    """
    first = ctx.engines.get(preset)
    layout = Layout(ctx.engines.lanes())
    choices, defaults, classes = render.variant_choices(first)
    c: dict = {"session": gr.State(Session(), time_to_live=ctx.limits.session_s)}
    c["banner"] = gr.HTML(render.banner_html(first), js_on_load=None)
    with gr.Row(equal_height=False):
        with gr.Column(scale=3, min_width=300):
            c["prompt"] = gr.Textbox(QUESTION, label="Prompt", lines=5, max_lines=10, elem_id="sbs-prompt",
                                     placeholder="Type a prompt, or pick an example below")
            # a Dataset with a handler of ours, not gr.Examples: its handler would take any value a script sends
            c["examples"] = gr.Dataset(components=[c["prompt"]], samples=[[text] for text, _ in EXAMPLES],
                                       sample_labels=[label for _, label in EXAMPLES], label="Example prompts",
                                       type="index", elem_id="sbs-examples")
            with gr.Row():           # beside the prompt: on the first screen of a laptop, and before the settings on a phone
                c["run"] = gr.Button("Run", variant="primary", elem_id="sbs-run")
                c["stop"] = gr.Button("Stop", variant="stop", elem_id="sbs-stop")
        with gr.Column(scale=2, min_width=300):
            c["preset"] = gr.Dropdown(preset_choices, value=preset, label="Preset", elem_id="sbs-preset")
            c["variants"] = gr.CheckboxGroup(choices, value=defaults, label="Variants", elem_classes=classes,
                                             elem_id="sbs-variants")
            with gr.Row():
                cap = min(first.preset.max_new_tokens_cap, ctx.limits.new_tokens or first.preset.max_new_tokens_cap)
                c["max_new"] = gr.Slider(1, cap, value=min(first.preset.max_new_tokens, cap),
                                         step=1, label="Max new tokens", min_width=160, elem_id="sbs-max")
                most = ctx.limits.repeats or REPEATS_MAX
                c["repeats"] = gr.Slider(1, most, value=min(REPEATS_DEFAULT, most), step=1, label="Repeats", min_width=160,
                                         info="medians and spread", elem_id="sbs-repeats")
            c["mode"] = gr.Radio(["fair", "race"], value=mode, label="Mode",
                                 info="fair: one at a time; race: all at once (contended)", elem_id="sbs-mode")
    c["message"] = gr.HTML("", elem_id="sbs-message", js_on_load=None)
    with gr.Row(elem_id="sbs-lanes", equal_height=False):
        for name in layout.names:
            with gr.Column(visible=name in defaults, min_width=300,
                           elem_classes=["sbs-lane", f"sbs-lane-{name}"]) as c[column(name)]:
                idle = Lane(name, label_of(name), stage="idle", detail="press Run")
                c[card(name)] = gr.HTML(render.card_html(idle, 0.0), js_on_load=None, elem_id=f"sbs-card-{name}")
                c[answer(name)] = gr.Textbox(label=render.answer_label(first), lines=5, max_lines=9,
                                             interactive=False, autoscroll=True, elem_id=f"sbs-answer-{name}")
    empty = empty_figures()
    with gr.Row(equal_height=False):
        with gr.Column(scale=4, min_width=300):
            for pair in (FIGURE_NAMES[i:i + 2] for i in range(0, len(FIGURE_NAMES), 2)):
                with gr.Row():
                    for key in pair:
                        c[f"plot:{key}"] = gr.Plot(empty[key], label=TITLES[key], elem_id=f"sbs-plot-{key}",
                                                   min_width=300)
        with gr.Column(scale=1, min_width=260):
            with gr.Accordion("How the numbers are measured (scrolls)", open=True, elem_id="sbs-definitions",
                              max_height=640):
                gr.Markdown(DEFINITIONS_MD + limits_md(ctx.limits), elem_classes=["sbs-defs"])
    c["glance"] = gr.Dataframe(headers=list(GLANCE_HEADERS), label="Summary (from the run's report)",
                               interactive=False, wrap=True, elem_id="sbs-summary", column_widths=GLANCE_WIDTHS)
    with gr.Accordion("All columns: tokens/s, MBU, weights, first differing token, KLD tail, perplexity, timings",
                      open=False, elem_id="sbs-summary-more"):
        c["summary"] = gr.Dataframe(headers=list(SUMMARY_HEADERS), label="Summary, every column", interactive=False,
                                    wrap=True, elem_id="sbs-summary-all",
                                    column_widths=SUMMARY_WIDTHS)   # the variant and its speedup fit a phone
    with gr.Row():
        c["replay"] = gr.Button("Replay as a race", interactive=False, elem_id="sbs-replay")
        c["json_file"] = gr.DownloadButton("Download JSON", interactive=False, elem_id="sbs-json")
        c["csv_file"] = gr.DownloadButton("Download CSV", interactive=False, elem_id="sbs-csv")
    with gr.Accordion("Run JSON (same schema as python -m engine run --json)", open=False):
        c["report"] = gr.JSON(label="run", elem_id="sbs-report")

    on = Wiring(ctx, c)
    # the handlers outside the queue take raw values (preprocess=False) and check each: a script can call them
    # by their fn_index with anything, and Gradio's own refusal would be a traceback in the log
    raw = dict(queue=False, api_visibility="private", preprocess=False, show_progress="hidden")
    on(c["examples"].click, example, ["examples"], EXAMPLE, **raw)
    on(c["preset"].change, on_preset, ["preset"], layout.preset, **raw)
    c["run"].click(None, js=SHOW_RUN_JS, queue=False, api_visibility="private")     # in the browser alone
    prepared = on(c["run"].click, prepare, ["variants", "session"], layout.prepare, **raw)
    on(prepared.then, compare, ["prompt", "preset", "variants", "max_new", "mode", "repeats", "session"], layout.run,
       api_name="compare", concurrency_limit=ctx.jobs, concurrency_id="device",
       preprocess=False,       # raw values: ui/checks.py checks each, with a message, where Gradio would crash
       show_progress="hidden")        # the message says where the run is; Gradio's history-based ETA misleads
    on(c["stop"].click, stream.stop, ["session"], STOP, queue=False, api_name="stop", show_progress="hidden")
    on(c["replay"].click, replay, ["session"], layout.replay, api_name="replay", concurrency_limit=4,
       concurrency_id="replay", show_progress="hidden",
       preprocess=False)        # the session as it is (a state's value is the server's own, whatever is sent)
