"""The History tab: the runs this page and the command line saved (engine/history.py), filtered, set side
by side against a reference run, imported from a report file, deleted.

Handlers are module-level functions of the `Context` and the event's inputs, as in the other tabs; each
checks its raw inputs (ui/checks.py) and answers bad input with one line. On a public page a visitor's
handlers see and change only the runs of their own session (ui/state.py PageHistory.scope).
"""
from __future__ import annotations

import json

import gradio as gr
from gradio.components.plot import PlotData

from engine import slo, verdict
from engine.errors import InputError
from engine.history import Entry
from engine.history_compare import QUALITY_FIGURES, compare as compare_runs
from engine.views import tables
from engine.views.history_tables import QUALITY_NOTE, comparison_notes, comparison_value, quality_text
from engine.views.history_charts import CAPTION, compare_figure
from ui import checks, render
from ui.outputs import Outputs, Wiring
from ui.state import Context

LIST_LIMIT = 200             # newest runs listed (and offered to compare) at once; the filters reach the rest
ANY = ""                     # a filter's "any" choice
LIST = Outputs(["message", "runs", "pick", "reference", "f_preset", "f_device", "f_variant"])
COMPARE = Outputs(["message", "comparison", "chart", "shown"], unlisted=["shown"])     # shown: the two, once compared
RUN_HEADERS = ["id", "date (UTC)", "kind", "preset", "device", "variants", "verdict", "versions", "commit",
               "quality (same top token/mean KLD)"]
RUN_WIDTHS = ["56px", "130px", "64px", "80px", "180px", "140px", "420px", "200px", "110px", "220px"]
NO_IMPORT = ("Import is off on this public page: it takes no uploads, so that strangers cannot store files on "
             "this server. On your own machine: `python -m engine history import FILE`.")
HOW_MD = """\
Every finished run and experiment of this page is saved here, and so are the command line's (`python -m engine
run`, `bench`, `sweep`). Select two runs or more, choose the reference, and press **Compare**: for each variant
(and cell) that the reference and another run both have, each run's TTFT, TPOT, tokens/s and peak memory, and
the change from the reference in percent. A change is *better* or *worse* only when the two runs' ranges over
their repeats (min-max) do not overlap; otherwise it is *within noise* (peak memory within 1% is the same), and
one repeat has no range (*no range*): the Compare tab's rule (engine/verdict.py). Runs made with other settings
(preset, device, prompt tokens, mode, repeats, batch) are said to differ: a change may come from that.
With latency targets, the table adds each run's requests that met every target and its goodput: those requests
per second, beside all requests per second (vLLM's definition; the Compare tab's definitions say more).

Where the runs scored their answers (a real model's run: the Compare tab's quality columns, the quantization
experiment), the list gives each run's variants' same top token and mean KLD, and the comparison adds quality
rows: same top token, mean KLD, KLD p99 (or KLD max on an answer under 100 tokens) and perplexity, each run's
value and the change from the reference in percent, marked *no range*: each run's variant scored its reference
variant's answer once, off the clock, so there is no spread to judge the change by. Runs with other prompts
scored other answers. The reference variant scored its own answer: of its figures only the perplexity is
compared. A run on random weights has no quality figures (not meaningful).
"""


def _when(created: str) -> str:
    return created.replace("T", " ").removesuffix("Z")[:16]


def _versions(entry: Entry) -> str:
    return ", ".join(f"{name} {entry.versions[name]}" for name in ("torch", "transformers")
                     if entry.versions.get(name)) or tables.DASH


def run_label(entry: Entry) -> str:
    """A run as its checkbox names it: id, kind, preset, device, date."""
    return f"#{entry.id} {entry.kind} · {entry.preset or tables.DASH} · {entry.device or tables.DASH} · " \
           f"{_when(entry.created)}"


def verdict_line(entry: Entry) -> str:
    """A run's verdict as the Compare tab gave it, its first sentence (who won what, or that nobody did beyond the
    noise); "-" for a sweep or a bench, whose reports have none."""
    text = (entry.verdict or "").strip()
    if not text:
        return tables.DASH
    first = text.split(". ", 1)[0]
    return first if first.endswith(".") else first + "."


def runs_value(entries: list[Entry]) -> dict:
    rows = [[f"#{e.id}", _when(e.created), e.kind, e.preset or tables.DASH, e.device or tables.DASH,
             ", ".join(e.settings.get("variants") or []) or tables.DASH, verdict_line(e), _versions(e),
             (e.git_commit or tables.DASH)[:10], quality_text(e)] for e in entries]
    return {"headers": RUN_HEADERS, "data": rows}


def _filters(preset, device, variant, since) -> dict:
    """The list's filters, each text or nothing (any)."""
    found = {}
    for name, value in (("preset", preset), ("device", device), ("variant", variant), ("since", since)):
        text = checks.text(f"the {name} filter", value if value is not None else "").strip()
        found[name] = text or None
    return found


def _choices(values, current) -> dict:
    """A filter's choices: any, then each value seen (the current one kept even when no run has it now)."""
    seen = sorted({v for v in values if v} | ({current} if current else set()))
    return gr.update(choices=[("any", ANY)] + [(v, v) for v in seen], value=current or ANY)


def listing(ctx: Context, preset: str, device: str, variant: str, since: str, picked: list,
            request: gr.Request = None) -> dict:
    """The saved runs that match the filters, newest first (API: /history_list).

    Runs, experiments and benches of this page and of the command line (a public page: the caller's session's).

    Args:
        preset: only this preset's runs, e.g. "tiny" ("" for any)
        device: only runs on a device whose name contains this, e.g. "H200" or "cpu" ("" for any)
        variant: only runs that have this variant, e.g. "sdpa" ("" for any)
        since: only runs made since this date or time (UTC), e.g. "2026-12-01" ("" for any)
        picked: the run ids selected to compare, kept when still listed ([] for none)

    Returns:
        message: a status line (HTML): how many runs are listed, or why the filters were refused
        runs: the table (headers, data): per run its id, date, kind, preset, device, variants, its verdict's first
        sentence (who won what beyond the noise, or that nobody did; "-" for a sweep or a bench), versions, commit
        and quality: each scored variant's same-top-token share and mean KLD against the reference variant
        ("bnb-8bit 99%/0.00213, bnb-4bit 94%/0.0412"), else the reference's perplexity alone, or why there are
        none ("not meaningful": random weights), or "-" for a run saved without quality
        then the choices of the selection (each run's id), of the reference run and of the three filters
    """
    return _listing(ctx, preset, device, variant, since, picked, request)


def _listing(ctx: Context, preset, device, variant, since, picked, request, note: str = "") -> dict:
    try:
        filters = _filters(preset, device, variant, since)
        kept = checks.ids("selected runs", picked)
        session = ctx.history.scope(request)
        entries = ctx.history.store.list(**filters, session=session, limit=LIST_LIMIT)
        every = ctx.history.store.list(session=session, limit=LIST_LIMIT) if any(filters.values()) else entries
    except InputError as error:
        return {"message": render.message_html(render.e(error), "error")}
    listed = {e.id for e in entries}
    choices = [(run_label(e), e.id) for e in entries]
    whose = "of your session " if ctx.history.public else ""
    if entries:
        text = (f"{len(entries)} run{'s' * (len(entries) != 1)} {whose}listed"
                + (f" (the newest {LIST_LIMIT})" if len(entries) == LIST_LIMIT else "")
                + ". Select two or more to compare.")
    else:
        text = (f"No saved run {whose}matches these filters." if any(filters.values())
                else f"No saved run {whose}yet: each finished run and experiment of this page is saved here.")
    return {"message": render.message_html(render.e(note + text if note else text), "ok" if note else "info"),
            "runs": runs_value(entries),
            "pick": gr.update(choices=choices, value=[i for i in kept if i in listed]),
            "reference": gr.update(choices=[("the oldest selected", 0)] + choices,
                                   value=0),
            "f_preset": _choices([e.preset for e in every], filters["preset"]),
            "f_device": _choices([e.device for e in every], filters["device"]),
            "f_variant": _choices([v for e in every for v in e.settings.get("variants") or []], filters["variant"])}


def plot_value(figure) -> PlotData:
    plot = json.loads(figure.to_json())
    plot["config"] = {"displaylogo": False,
                      "toImageButtonOptions": {"format": "png", "filename": "history-compare", "scale": 2}}
    return PlotData(type="plotly", plot=json.dumps(plot))


def _targets(ttft_ms, tpot_ms) -> slo.Targets:
    """The page's targets: each a number of milliseconds, or nothing (None, "" or 0) for none; the page sends text
    (an empty box, never a 0 that reads as a target), a script may send a number."""
    found = {}
    for name, value in (("ttft_ms", ttft_ms), ("tpot_ms", tpot_ms)):
        if isinstance(value, str):
            text = checks.text(f"the {slo.FIELDS[name]} target", value).strip()
            try:
                value = float(text) if text else None
            except ValueError:
                raise InputError(f"the {slo.FIELDS[name]} target must be a number of milliseconds, got {text!r}") \
                    from None
        if value in (None, 0):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value < 0:
            raise InputError(f"the {slo.FIELDS[name]} target must be a number of milliseconds, got {value!r}")
        found[name] = value
    return slo.Targets(**found)


def compare(ctx: Context, picked: list, reference, ttft_ms=None, tpot_ms=None, request: gr.Request = None) -> dict:
    """Set saved runs side by side against a reference run (API: /history_compare).

    A change is better or worse only when the two runs' ranges over their repeats do not overlap; otherwise
    it is within noise (engine/verdict.py's rule).

    Args:
        picked: the ids of the runs to compare, two or more, e.g. [3, 5] (the ids that /history_list shows)
        reference: the id of the run the others are compared with (0: the oldest selected; one not picked is added)
        ttft_ms: a time-to-first-token target in milliseconds, a number or its text (None, "" or 0: none), for goodput
        tpot_ms: a time-per-output-token target in milliseconds, a number or its text (None, "" or 0: none)

    Returns:
        message: a status line (HTML) with the notes: settings in which the runs differ, rows left out
        comparison: the table (headers, data): per variant and figure (TTFT, TPOT, tokens/s, peak memory), each
        other run's change from the reference in percent (better, worse, within noise or no range), then each
        run's median; where the runs were scored, quality rows: same top token (the share of answer positions
        where the variant's most likely token is the reference variant's), mean KLD, KLD p99 (or KLD max on an
        answer under 100 tokens; KL divergence from the reference variant's distribution, nats) and perplexity
        (of the reference variant's answer), each run's value and the change in percent marked "no range" (a
        variant is scored once per run: there is no spread to judge it by); with targets, each run's requests
        that met every target and its goodput (requests meeting every target per second beside all requests
        per second, vLLM's definition)
        chart: the same as a plotly chart (both hidden until the first comparison)
    """
    try:
        ids = checks.ids("selected runs", picked)
        chosen = checks.whole("reference", 0 if reference in (None, "") else reference, 0, None)
        if chosen and chosen not in ids:
            ids.append(chosen)
        if len(ids) < 2:
            raise InputError("select two runs or more to compare")
        targets = _targets(ttft_ms, tpot_ms)
        session = ctx.history.scope(request)
        entries = sorted((ctx.history.store.get(run_id, session) for run_id in ids), key=lambda e: (e.created, e.id))
        reports = [slo.apply(entry.report, targets) if targets else entry.report for entry in entries]
        index = [e.id for e in entries].index(chosen) if chosen else 0
        compared = compare_runs(reports, index)
    except InputError as error:
        return {"message": render.message_html(render.e(error), "error")}
    labels = [f"#{e.id}" for e in entries]
    called = sum(word in (verdict.BETTER, verdict.WORSE) for c in compared.changes for word in c.verdicts if word)
    text = (f"{len(entries)} runs against {labels[index]} (reference): {called} change{'s' * (called != 1)} "
            "beyond the runs' own spread; the rest are within noise or have no range.")
    extra = comparison_notes(compared, labels)
    html = render.e(text) + "".join(f"<br>Note: {render.e(line)}." for line in extra)
    if any(change.metric in QUALITY_FIGURES for change in compared.changes):     # why "no range": said, not a warning
        html += f"<br>{render.e(QUALITY_NOTE[0].upper() + QUALITY_NOTE[1:])}."
    return {"message": render.message_html(html, "warn" if extra else "ok"),
            "comparison": comparison_value(compared, labels, reports),
            "chart": plot_value(compare_figure(reports, compared, labels)), "shown": gr.update(visible=True)}


def delete(ctx: Context, picked: list, preset: str, device: str, variant: str, since: str,
           request: gr.Request = None) -> dict:
    """Delete the selected runs (API: /history_delete); on a public page, only the visitor's own.

    picked: the ids of the runs to delete; the filters as in /history_list, for the list shown after.
    """
    try:
        ids = checks.ids("selected runs", picked)
        if not ids:
            raise InputError("select the runs to delete first")
        session = ctx.history.scope(request)
        for run_id in ids:
            ctx.history.store.get(run_id, session)           # all of them exist (and are this visitor's) first
        with ctx.history.store.batch():
            for run_id in ids:
                ctx.history.store.delete(run_id, session)
    except InputError as error:
        return {"message": render.message_html(render.e(error), "error")}
    gone = ", ".join(f"#{i}" for i in ids)
    return _listing(ctx, preset, device, variant, since, [], request, note=f"Deleted {gone}. ")


def import_report(ctx: Context, path, preset: str, device: str, variant: str, since: str,
                  request: gr.Request = None) -> dict:
    """Keep a report file (the JSON of `python -m engine run`, `bench` or `sweep` --json) in the history
    (API: /history_import; refused on a public page, which takes no upload)."""
    try:
        if not ctx.history.imports:
            raise InputError(NO_IMPORT)
        if not path:
            raise InputError("choose a report file (.json) to import")
        ids = ctx.history.store.import_file(checks.text("file", path))
    except InputError as error:
        return {"message": render.message_html(render.e(error), "error")}
    return _listing(ctx, preset, device, variant, since, ids, request,
                    note=f"Imported as {', '.join(f'#{i}' for i in ids)}. ")


def build(ctx: Context, tab: gr.Tab) -> None:
    """Lay out the tab and wire its events (inside gr.Blocks and `tab`); the list refreshes when the tab is opened."""
    c: dict = {}
    with gr.Row(equal_height=False, elem_id="hist-filters"):
        c["f_preset"] = gr.Dropdown([("any", ANY)], value=ANY, label="Preset", min_width=160, elem_id="hist-preset")
        c["f_device"] = gr.Dropdown([("any", ANY)], value=ANY, label="Device", min_width=160, elem_id="hist-device")
        c["f_variant"] = gr.Dropdown([("any", ANY)], value=ANY, label="Variant", min_width=160,
                                     elem_id="hist-variant")
        c["since"] = gr.Textbox("", label="Since (date)", placeholder="2026-12-01", min_width=160, max_lines=1,
                                elem_id="hist-since")
    c["message"] = gr.HTML("", elem_id="hist-message", js_on_load=None)
    c["runs"] = gr.Dataframe(runs_value([]), label="Saved runs, newest first", interactive=False, wrap=True,
                             elem_id="hist-runs", column_widths=RUN_WIDTHS)
    c["pick"] = gr.CheckboxGroup([], label="Runs to compare (or delete)", elem_id="hist-pick")
    with gr.Row(equal_height=True):
        c["reference"] = gr.Dropdown([("the oldest selected", 0)], value=0, label="Reference run", min_width=220,
                                     scale=2, elem_id="hist-reference")
        c["compare"] = gr.Button("Compare", variant="primary", min_width=120, scale=1, elem_id="hist-compare")
        c["delete"] = gr.Button("Delete selected", variant="stop", min_width=120, scale=1, elem_id="hist-delete")
    with gr.Row(equal_height=True):
        # text boxes, empty until typed: a number box shows 0, which reads as a target of 0 ms
        c["ttft_ms"] = gr.Textbox("", label="TTFT target (ms)", placeholder="none", max_lines=1, min_width=160,
                                  elem_id="hist-ttft-target", info="optional: adds goodput")
        c["tpot_ms"] = gr.Textbox("", label="TPOT target (ms)", placeholder="none", max_lines=1, min_width=160,
                                  elem_id="hist-tpot-target", info="requests meeting every target per second")
    # shown by the first comparison: empty, the table would show Gradio's placeholder headers (1, 2, 3)
    with gr.Column(visible=False, elem_id="hist-shown") as c["shown"]:
        c["comparison"] = gr.Dataframe(label="Side by side (each run's median; change from the reference)",
                                       interactive=False, wrap=True, elem_id="hist-comparison")
        c["chart"] = gr.Plot(label="Side by side", show_label=False, elem_id="hist-chart")
        gr.Markdown(CAPTION, elem_classes=["exp-note"])
    with gr.Accordion("Import a report from another machine", open=False, elem_id="hist-import-box"):
        if ctx.history.imports:
            c["file"] = gr.File(label="Report JSON (python -m engine run, bench or sweep --json)",
                                file_types=[".json"], type="filepath", elem_id="hist-import")
        else:
            gr.Markdown(NO_IMPORT, elem_id="hist-no-import")
    with gr.Accordion("How runs are compared", open=False, elem_id="hist-how"):
        gr.Markdown(HOW_MD, elem_classes=["sbs-defs"])

    filters = ["f_preset", "f_device", "f_variant", "since"]
    on = Wiring(ctx, c)
    quick = dict(concurrency_limit=4, concurrency_id="history", show_progress="hidden",
                 preprocess=False)       # raw values: ui/checks.py checks each, with a message
    on(tab.select, listing, [*filters, "pick"], LIST, api_name="history_list", **quick)
    for name in filters:
        listener = c[name].submit if name == "since" else c[name].input
        on(listener, listing, [*filters, "pick"], LIST, api_visibility="private", **quick)
    on(c["compare"].click, compare, ["pick", "reference", "ttft_ms", "tpot_ms"], COMPARE, api_name="history_compare",
       **quick)
    on(c["delete"].click, delete, ["pick", *filters], LIST, api_name="history_delete", **quick)
    if "file" in c:
        on(c["file"].upload, import_report, ["file", *filters], LIST, api_name="history_import",
           concurrency_limit=4, concurrency_id="history", show_progress="hidden")
