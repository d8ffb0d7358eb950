"""The page's HTML, pure: strings from engines, lanes and views (a sweep's: ui/sweep_render.py). No
gradio, no files.

Every text that comes from outside (a prompt, an error, a label) is escaped with `e`.
"""
from __future__ import annotations

import html

from engine import quality, verdict
from engine.errors import InputError
from engine.report import tpot_range
from engine.schedule import CANCEL_GRACE_S
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


def ignored_html(error: Exception) -> str:
    """The message for a value the page never sends (a script calling a handler directly): what was wrong."""
    return message_html(f"Ignored: {e(error)}.", "error")


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
        total = engine.cores
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
        # the worker's own words while it loads (a started engine names its server and log), else the step's
        what = lane.detail if lane.load_step == 2 and lane.detail else LOAD_STEPS.get(lane.load_step, "")
        return f"step {step} of 3: {what} ({expect})"
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
    if lane.warmup and lane.pieces:       # no timed request began: the answer box holds the warm-up's text
        tokens = len(lane.pieces)
        if figures["final"]:
            return (f"no timed request ran: the answer box shows the untimed warm-up's {tokens} tokens, "
                    "counted in no figure")
        return f"{tokens} tokens of the untimed warm-up: its figures are not counted"
    if not figures["tokens"]:
        return ""
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
                parts.append(f"{verdict.HEADS[metric]} {summary.versus(result, metric)}")
    busy = (result.get("vs_reference") or {}).get("slowed_by_others") or []
    line = (f'<div class="sbs-versus">vs {e(REFERENCE)}: {e(" · ".join(parts))}'
            + (f' <span class="sbs-slowed">{e(summary.SLOWED)}: {e(", ".join(busy))}</span>' if busy else "")
            + "</div>") if parts else ""
    stars = "".join(f'<span class="sbs-best">\u2605 {e(title)}</span>' for title in best)
    return line + (f'<div class="sbs-stars">{stars}</div>' if stars else "")


def _card_quality(lane: Lane) -> str:
    """One line on its answers against the reference's (engine/quality.py), once scored; or why there are no
    figures ("not meaningful: random weights")."""
    text = quality.line(lane.quality)
    if not text:
        return ""
    status = lane.quality.get("status") or ""
    return (f'<div class="sbs-quality" data-quality="{e(status)}"><span class="sbs-quality-name">quality</span> '
            f'<span class="sbs-quality-line">{e(text)}</span></div>')


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
    served = lane.loaded is not None and lane.loaded.device.startswith("remote:")     # engine/remote.py
    memory = "server's own" if served else tables.size(figures["peak_memory_bytes"])
    kpis = "".join(
        f'<div class="sbs-kpi"><div class="sbs-kpi-name">{name}</div><div class="sbs-kpi-value">{value}</div></div>'
        for name, value in (("TTFT", tables.duration(figures["ttft_s"])), ("TPOT", tables.duration(figures["tpot_s"])),
                            ("tokens/s", tables.fixed(tokens_per_s)),
                            ("peak memory", memory)))
    return (f'<div class="sbs-card" data-variant="{e(lane.variant)}" data-stage="{e(stage)}" '
            f'style="--lane:{color_of(lane.variant)}">'
            f'<div class="sbs-head"><span class="sbs-dot"></span><span class="sbs-name">{e(lane.variant)}</span>'
            f'<span class="sbs-badge sbs-stage-{e(stage)}">{e(STAGE_WORDS.get(stage, stage))}</span></div>'
            f'<div class="sbs-label">{e(lane.label)}</div>{progress}'
            f'<div class="sbs-detail">{e(_card_detail(lane, now))}</div><div class="sbs-kpis">{kpis}</div>'
            f'{_card_versus(lane, best or [])}{_card_quality(lane)}'
            f'<div class="sbs-note">{e(_card_note(lane, figures))}</div></div>')


def verdict_html(report: dict) -> str:
    """The run's verdict in one line (engine/verdict.py): who wins which figure, by how much, or that
    the differences are within noise."""
    text = summary.judgement(report).get("text")
    how = '<a class="sbs-how" href="#sbs-definitions">how these are measured</a>'      # the definitions panel
    return f'<div class="sbs-verdict" data-verdict="1"><b>Verdict:</b> {e(text)} {how}</div>' if text else ""


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


# what a variant still at work does after a Stop (engine/schedule.py): the words of the line that waits for it
STOPPING_WORDS = {"generating": "stops at its next token", "warmup": "stops at its next token",
                  "loading": "its loading is ended", "warming": "its loading is ended", "unloading": "unloading"}


def stopping_text(view: RunView) -> str:
    """After a Stop, until the report: which variants the run still waits for, and what each is doing."""
    busy = [f"{lane.variant} ({STOPPING_WORDS[lane.stage]})" for lane in view.lanes.values()
            if lane.stage in STOPPING_WORDS]
    if not busy:
        return "Stopping: writing the report of what was measured."
    return (f"Stopping: waiting for {', '.join(busy)}; a variant still at work {CANCEL_GRACE_S:.0f} s after "
            "the Stop is ended.")


def run_message(view: RunView, stopping: bool, elapsed_s: float) -> str:
    """The status line of a run in progress or done."""
    if view.error:
        return message_html(f"The run failed: {e(view.error)}", "error")
    if view.done:
        return _run_done_message(view, elapsed_s)
    if stopping:
        return message_html(e(stopping_text(view)), "warn")
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
