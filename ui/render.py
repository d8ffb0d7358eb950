"""The page's HTML, pure: strings from engines, lanes, views and sweeps. No gradio, no files.

Every text that comes from outside (a prompt, an error, a label) is escaped with `e`.
"""
from __future__ import annotations

import html

from engine import topology, verdict
from engine.errors import InputError
from engine.report import tpot_range
from engine.studies import sweeps
from engine.variants import REFERENCE
from engine.views import summary, tables
from engine.views.palette import color_of
from engine.views.run import FINAL_STAGES, STAGE_WORDS, Lane, RunView

LOAD_STEPS = {1: "starting the worker process", 2: "loading the model", 3: "warming up"}


def e(text) -> str:
    """`text` escaped for HTML (quotes too: it may land in an attribute)."""
    return html.escape(str(text), quote=True)


# control characters (a random-weight model emits raw bytes such as \x04) stop the page's textbox from
# showing an answer at all: each is shown as its Unicode control picture instead (tab and newline kept)
CONTROL_PICTURES = {code: 0x2400 + code for code in range(32) if chr(code) not in "\t\n"} | {0x7F: 0x2421}


def answer_text(text: str) -> str:
    """An answer as its textbox can show it: control characters as visible symbols."""
    return text.translate(CONTROL_PICTURES)


def message_html(text: str, kind: str = "info") -> str:
    """One status line above the columns: info, ok, warn or error. `text` is HTML already."""
    return f'<div class="sbs-msg sbs-msg-{kind}" data-kind="{kind}">{text}</div>' if text else ""


def refusal(error: Exception, cannot: str) -> str:
    """Why a run did not start: the input (the user's to change) or, after `cannot`, the preset."""
    if isinstance(error, InputError):
        return f"Nothing was run: {e(error)}."
    return f"{cannot}: {e(error)}"


def answer_label(engine) -> str:
    """The label of each answer box: random weights make the text noise."""
    return "Answer (random weights: noise)" if engine.preset.random_weights else "Answer"


def banner_html(engine) -> str:
    """What runs where; random-weight presets say that the text is noise."""
    preset = engine.preset
    noise = ('<span class="sbs-pill sbs-pill-warn">random weights: the text is noise, the timings are real</span>'
             if preset.random_weights else "")
    cores = ""
    if engine.device.kind == "cpu" and engine.threads:
        total = len(topology.usable_cores())
        rest = "; the rest draw this page while the variants run" if engine.threads < total else ""
        cores = (f'<div class="sbs-sub">Each worker computes on {engine.threads} of the {total} CPU cores this '
                 f'server may use{rest}.</div>')
    return (f'<div class="sbs-banner"><div><b>{e(preset.title)}</b> on <b>{e(engine.device.name)}</b> '
            f'{noise}</div><div class="sbs-sub">{e(preset.description.strip())}</div>{cores}'
            f'{mode_html(engine.run_limits)}</div>')


def mode_html(limits) -> str:
    """Which mode the page is in, and what it limits (engine/limits.py)."""
    if not limits.public:
        return ('<div class="sbs-sub" data-mode="private">Private mode: no limits beyond each preset\'s own caps '
                '(start with --public before sharing this page).</div>')
    return ('<div class="sbs-sub sbs-public" data-mode="public"><b>Public mode</b>: '
            + e("; ".join(limits.describe())) + ".</div>")


def preset_note(engine) -> str:
    """The message after a preset was chosen."""
    return message_html(f"Preset {e(engine.preset.title)}: its workers load on the first run "
                        "(the previous preset's workers are stopped then).")


def variant_choices(engine, selected: tuple[str, ...] | None = None) -> tuple[list, list[str], list[str]]:
    """Checkbox choices (label, name), the selection (`selected`, default the preset's, less what cannot
    run here) and CSS classes greying the unavailable ones (their reason is in their label)."""
    listed = engine.variant_choices()                       # catalog order
    choices = [(f"{name}: {label}" + (f" (unavailable: {reason})" if reason else ""), name)
               for name, label, reason in listed]
    off = [name for name, _, reason in listed if reason]
    if selected is None:
        selected = tuple(name for name, _, _ in listed if name in engine.preset.variants)
    return choices, [name for name in selected if name not in off], ["sbs-variants", *[f"sbs-off-{n}" for n in off]]


def _card_detail(lane: Lane, now: float) -> str:
    stage = lane.stage
    if stage in ("loading", "warming"):
        began = lane.load_began or lane.since
        elapsed = max(now - began, 0.0) if began else 0.0
        step = max(lane.load_step, 1)
        if lane.expected_load_s:
            expect = f"{elapsed:.0f} s of about {max(lane.expected_load_s, 1):.0f} s, as the last load here took"
        else:
            expect = f"{elapsed:.0f} s; its first load on this server: no estimate yet"
        return f"step {step} of 3: {LOAD_STEPS.get(lane.load_step, '')} ({expect})"
    if stage == "queued":
        return ("kept loaded from an earlier run; " if lane.reused else "") + "waiting for its turn on the device"
    if stage == "ready":
        return "loaded and warmed up"
    if stage == "generating" and lane.repeats > 1 and lane.requests:
        return f"timed request {lane.requests} of {lane.repeats}"
    detail = lane.detail or lane.reason or ""
    if stage == "waiting":
        return detail or "waiting for the device"
    if stage == "done" and not lane.reason and lane.loaded:
        return f"loaded in {lane.loaded.load_s:.1f} s, warmed up in {lane.loaded.warmup_s:.1f} s"
    if stage == "done" and not lane.reason and lane.reused:
        return "worker kept loaded: no reload"
    return detail


def _card_note(lane: Lane, figures: dict) -> str:
    if not figures["tokens"]:
        return ""
    if lane.warmup:
        return f"{figures['tokens']} tokens of the untimed warm-up: its figures are not counted"
    note = f"{figures['tokens']} tokens; " + ("figures from the report" if figures["final"] else "live estimate")
    result = lane.result or {}
    spread = tpot_range(result)
    if spread is not None:
        note += f"; medians of {result['repeats']} requests, TPOT {tables.ms_range(*spread)} ms"
    warmups = result.get("warmup_e2e_s") or []
    if warmups:                          # the untimed first request at these lengths, apart from the figures
        note += f"; warm-up request {', '.join(tables.duration(w) for w in warmups)} (not counted)"
    if result.get("contended"):
        note += "; contended (race mode)"
    if result.get("host_busy"):
        note += f"; CPU busy: other processes took {result['host_others_cores']:.1f} cores, figures slowed"
    return note


def _card_versus(lane: Lane, best: list[str]) -> str:
    """Against the reference, once the report is in: the ratios (or "within noise"), who was slowed,
    and the titles this variant won."""
    result = lane.result or {}
    if not verdict.answered(result):
        return ""
    parts = []
    if lane.variant != REFERENCE:
        for metric in ("tpot", "ttft", "memory"):
            if (result.get("vs_reference") or {}).get(metric):
                parts.append(f"{verdict.HEADS[metric]} {summary.versus(result, metric).split('; slowed')[0]}")
    busy = (result.get("vs_reference") or {}).get("slowed_by_others") or []
    line = (f'<div class="sbs-versus">vs {e(REFERENCE)}: {e(" · ".join(parts))}'
            + (f' <span class="sbs-slowed">slowed by other processes: {e(", ".join(busy))}</span>' if busy else "")
            + "</div>") if parts else ""
    stars = "".join(f'<span class="sbs-best">\u2605 {e(title)}</span>' for title in best)
    return line + (f'<div class="sbs-stars">{stars}</div>' if stars else "")


def card_html(lane: Lane, now: float, best: list[str] | None = None) -> str:
    """A variant's status, progress and figures (the answer streams into the textbox below it);
    `best`: the titles it won in the run's verdict (engine/verdict.py)."""
    stage = lane.stage
    progress = ""
    if stage in ("loading", "warming"):
        share = max(lane.load_step, 1) / 3
        if lane.expected_load_s and lane.load_began:      # the time estimate, never past 95% before the end
            share = max(share, min((now - lane.load_began) / lane.expected_load_s, 0.95))
        progress = f'<div class="sbs-progress"><div style="width:{int(100 * share)}%"></div></div>'
    figures = lane.figures()
    tokens_per_s = figures["tokens_per_s"]
    kpis = "".join(
        f'<div class="sbs-kpi"><div class="sbs-kpi-name">{name}</div><div class="sbs-kpi-value">{value}</div></div>'
        for name, value in (("TTFT", tables.duration(figures["ttft_s"])), ("TPOT", tables.duration(figures["tpot_s"])),
                            ("tokens/s", tables.fixed(tokens_per_s)),
                            ("peak memory", tables.size(figures["peak_memory_bytes"]))))
    return (f'<div class="sbs-card" data-variant="{e(lane.variant)}" data-stage="{e(stage)}" '
            f'style="--lane:{color_of(lane.variant)}">'
            f'<div class="sbs-head"><span class="sbs-dot"></span><span class="sbs-name">{e(lane.variant)}</span>'
            f'<span class="sbs-badge sbs-stage-{e(stage)}">{e(STAGE_WORDS.get(stage, stage))}</span></div>'
            f'<div class="sbs-label">{e(lane.label)}</div>{progress}'
            f'<div class="sbs-detail">{e(_card_detail(lane, now))}</div><div class="sbs-kpis">{kpis}</div>'
            f'{_card_versus(lane, best or [])}<div class="sbs-note">{e(_card_note(lane, figures))}</div></div>')


def verdict_html(report: dict) -> str:
    """The run's verdict in one line (engine/verdict.py): who wins which figure, by how much, or that
    the differences are within noise."""
    text = summary.judgement(report).get("text")
    return f'<div class="sbs-verdict" data-verdict="1"><b>Verdict:</b> {e(text)}</div>' if text else ""


def _run_done_message(view: RunView, elapsed_s: float) -> str:
    report, counts = view.report, view.counts()
    ok, repeats, cancelled = counts.get("done", 0), report.get("repeats") or 1, report.get("cancelled")
    text = (f"{'Stopped' if cancelled else 'Done'}: {ok} of {len(view.lanes)} variants answered in "
            f"{elapsed_s:.1f} s; prompt {report.get('prompt_tokens')} tokens, {report.get('mode')} mode"
            + (f", {repeats} timed requests each (medians)" if repeats > 1 else "") + ".")
    problems = [f"{e(lane.variant)}: {e(lane.reason)}" for lane in view.lanes.values()
                if lane.stage in ("failed", "unavailable") and lane.reason]
    text += "".join(f"<br>{problem}" for problem in problems)
    kind = "error" if ok == 0 and not cancelled else "warn" if problems or cancelled else "ok"
    if report.get("stop_reason"):
        text += f"<br>{e(report['stop_reason'])}"
    return message_html(text + verdict_html(report), kind)


def run_message(view: RunView, stopping: bool, elapsed_s: float) -> str:
    """The status line of a run in progress or done."""
    if view.error:
        return message_html(f"The run failed: {e(view.error)}", "error")
    if view.done:
        return _run_done_message(view, elapsed_s)
    if stopping:
        return message_html("Stopping: each variant stops after its current token.", "warn")
    lanes = view.lanes.values()
    finished = sum(view.counts().get(stage, 0) for stage in FINAL_STAGES)
    active = [lane.variant for lane in lanes if lane.stage == "generating"]
    loading = [lane.variant for lane in lanes if lane.stage in ("loading", "warming")]
    warming = [lane.variant for lane in lanes if lane.stage == "warmup"]
    doing = "; ".join(part for part in (
        f"generating: {', '.join(active)}" if active else "",
        f"untimed warm-up streaming: {', '.join(warming)}" if warming else "",
        f"loading: {', '.join(loading)}" if loading else "") if part) or "working"
    return message_html(f"Running in {view.mode} mode: {finished} of {len(view.lanes)} variants finished; "
                        f"{e(doing)} ({elapsed_s:.0f} s).")


TREND_LOOK = {True: ("agrees", "#16a34a", "The run agrees"), False: ("contradicts", "#d97706", "The run disagrees"),
              None: ("noise", "#9ca3af", "Within noise")}


def trends_html(sweep: dict | None) -> str:
    """What a finished sweep showed of each claim of its paragraph: the verdict, the note, the figures."""
    parts = []
    for found in (sweep or {}).get("trends", []):
        kind, colour, word = TREND_LOOK[found["agrees"]]
        parts.append(f'<div class="exp-trend" data-agrees="{kind}" style="border-left: 3px solid {colour}; '
                     f'padding: 2px 0 2px 8px; margin: 0 0 8px"><p><b>{word}:</b> {e(found["note"])}</p>'
                     f'<div class="exp-plan">Measured: {e(found["measured"])}</div></div>')
    return "".join(parts)


def explanation_html(name: str, quick: bool, sweep: dict | None = None) -> str:
    """The experiment's paragraph (what its chart shows and why) and the grid it measures; after a sweep
    (`sweep`, finished), what it showed of the paragraph's claims."""
    experiment = sweeps.get(name)
    cells, repeats = len(experiment.grid(quick)), sweeps.repeats_for(quick)
    plan = (f"{'Quick' if quick else 'Full'} grid: {cells} cells per variant (those beyond the preset's context "
            f"are left out), {repeats} measured "
            f"request{'s' if repeats > 1 else ''} per cell{' (the median is kept)' if repeats > 1 else ''}, "
            "each cell after one warm-up request. Fair mode: one variant on the device at a time.")
    return (f'<div class="exp-explain" data-experiment="{e(name)}"><div class="exp-kicker">What the chart shows, '
            f'and why</div><div class="exp-title">{e(experiment.title)}</div><p>{e(experiment.explanation)}</p>'
            f'{trends_html(sweep)}<div class="exp-plan">{e(plan)}</div></div>')


def _sweep_done_message(live, device: str) -> tuple[str, str]:
    sweep, rows = live.result, live.result["results"]
    ok = sum(row["status"] == "ok" for row in rows)
    problems = list(dict.fromkeys(f"{e(row['variant'])}: {e(row['reason'])}" for row in rows
                                  if row["status"] in ("failed", "unavailable") and row["reason"]))
    text = (f"{'Stopped' if sweep['cancelled'] else 'Done'}: {live.experiment.name}, {ok} of {len(rows)} "
            f"(variant, cell) pairs measured in {sweep['wall_s']:.1f} s on {e(device)}.")
    busy = sweeps.host_busy_note(rows, "rerun with less running beside the dashboard")
    if busy:
        problems.append(e(busy) + " (marked CPU busy in the table)")
    if any(found["agrees"] is False for found in sweep.get("trends", [])):
        problems.append("On this run the chart contradicts the paragraph beside it: its note says where")
    text += "".join(f"<br>{problem}" for problem in problems)
    return text, "warn" if problems or sweep["cancelled"] else "ok"


def sweep_message(live, device: str, stopping: bool, elapsed_s: float) -> str:
    """The status line of a sweep (a sweeps.LiveSweep), with its progress bar (measured requests / all)."""
    share = live.settled / live.total if live.total else 1.0
    if live.done:
        text, kind = _sweep_done_message(live, device)
    elif stopping:
        text, kind = "Stopping: the sweep ends after the current request's next token.", "warn"
    else:
        loading = [variant for variant, stage in live.stages.items() if stage in ("loading", "warming")]
        doing = f"loading and warming up {', '.join(loading)}" if loading else "measuring"
        text, kind = (f"Running {live.experiment.name}: {live.settled} of {live.total} measurements ({share:.0%}); "
                      f"{e(doing)} ({elapsed_s:.0f} s)."), "info"
    bar = (f'<div class="exp-bar" role="progressbar" aria-valuemin="0" aria-valuemax="100" '
           f'aria-valuenow="{share * 100:.0f}" data-progress="{share:.4f}"><div style="width:{share * 100:.1f}%">'
           '</div></div>')
    return message_html(text + bar, kind)


def sweep_page(sweep: dict, figure_html: str) -> str:
    """A standalone page of a sweep's chart (`figure_html` embeds plotly: it works offline)."""
    where = f"{sweep['preset']['title']} on {sweep['device'].get('name', '?')}"
    noise = " Random weights: the timings are real, any text is noise." if sweep["preset"]["random_weights"] else ""
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{e(sweep["title"])}</title></head>'
            '<body style="font-family: system-ui, sans-serif; max-width: 1200px; margin: 24px auto; color: #1f2937">'
            f'<h2>{e(sweep["title"])}</h2><p>{e(sweep["explanation"])}</p>{trends_html(sweep)}'
            f'<p style="color: #6b7280">{e(where)}; {"quick" if sweep["quick"] else "full"} grid.{e(noise)}</p>'
            f'{figure_html}</body></html>')
