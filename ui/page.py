"""The whole page: a header and the two tabs, with its theme and CSS (both go to launch() in Gradio 6)."""
from __future__ import annotations

from functools import partial
from pathlib import Path

import gradio as gr

from engine.limits import Limits
from engine.variants import CATALOG
from engine.views.palette import color_of
from ui import compare, experiments, history as history_tab
from ui.downloads import Downloads
from ui.presets import preset_choices
from ui.gate import Gate, Slots, unread_updates
from ui.guard import Guard
from ui.state import Context, Engines, PageHistory

TITLE = "Side by side: LLM inference variants"
INTRO = ("# Side by side: one prompt, several inference variants\n"
         "Watch eager attention, SDPA, FlashAttention, quantization and more answer the same "
         "prompt, with live time-to-first-token, time-per-token and memory.")


def css(lanes=tuple(CATALOG)) -> str:
    """theme.css, then one rule per column (`lanes`: the catalog's variants, then served endpoints): its
    colour; and one per catalog variant: its checkbox greyed and unclickable while it cannot run here
    (its reason is in its label)."""
    rules = [f".sbs-lane-{name} {{ --lane: {color_of(name)}; }}" for name in lanes]
    rules += [f'.sbs-variants.sbs-off-{name} label:has(input[name="{name}"]) {{ opacity: .5; pointer-events: none; '
              'filter: grayscale(1); }' for name in CATALOG]
    return (Path(__file__).with_name("theme.css").read_text() + "\n".join(rules))


REPLAY_BUSY = "a replay of yours is already playing on this page: wait for it to end, then replay again"
BACKLOG = 64          # a public page's Gradio queue: events waiting for one of its 40 threads, whoever sent them


def launch_kwargs(lanes=tuple(CATALOG), limits: Limits | None = None) -> dict:
    """What launch() takes for this page: theme and CSS (they go to launch() in Gradio 6) and, on a public
    page, the guard in front of every route (ui/guard.py: body size, calls per visitor) and the sessions
    whose state Gradio keeps."""
    kwargs = {"theme": gr.themes.Soft(primary_hue="indigo", neutral_hue="slate"), "css": css(lanes)}
    if limits is not None and limits.public:
        from starlette.middleware import Middleware
        kwargs["app_kwargs"] = {"middleware": [Middleware(Guard, limits=limits)]}
        kwargs["state_session_capacity"] = limits.sessions      # Gradio keeps 10,000 sessions' state by default
    return kwargs


def queue_kwargs(limits: Limits) -> dict:
    """demo.queue()'s settings. A public page's runs are bounded by the gate alone (ui/gate.py: its queue
    size, one job per visitor, with the page's own messages); Gradio's queue only holds events for a
    moment until a thread takes them (a run, a replay and the history are let in at once and refused by
    the page when over a visitor's share), so it is bounded well above what one visitor's calls can fill
    (ui/guard.py: `call_burst`), and closed to direct HTTP calls that would skip it."""
    if not limits.public:
        return {"default_concurrency_limit": 1, "max_size": None, "api_open": True}
    return {"default_concurrency_limit": 1, "max_size": max(BACKLOG, 2 * (limits.call_burst or 0)),
            "api_open": False}


def build_app(engines: Engines, preset: str = "tiny", mode: str = "fair",
              history: PageHistory | None = None) -> gr.Blocks:
    """The Blocks of the dashboard over `engines`, saving finished runs to `history` (None: no history and
    no History tab); raises PresetError or DeviceError for an unusable `preset`."""
    engines.get(preset)
    choices = preset_choices(engines.offered)
    with gr.Blocks(title=TITLE, delete_cache=(3600, 3600)) as demo:
        downloads = Downloads.temporary()
        gr.set_static_paths([downloads.folder])       # served from there as they are: Gradio keeps no copy
        ctx = Context(engines, downloads, Gate(engines.limits), partial(unread_updates, demo), history,
                      Slots(1 if engines.limits.public else None, REPLAY_BUSY))
        gr.Markdown(INTRO)
        with gr.Tabs(elem_id="sbs-tabs"):
            with gr.Tab("Compare", id="compare", elem_id="sbs-tab-compare"):
                compare.build(ctx, preset, mode, choices)
            with gr.Tab("Experiments", id="experiments", elem_id="sbs-tab-experiments"):
                experiments.build(ctx, preset, choices)
            if history is not None:
                with gr.Tab("History", id="history", elem_id="sbs-tab-history") as tab:
                    history_tab.build(ctx, tab)
        if history is not None:
            def forget(request: gr.Request) -> None:
                history.forget(request)           # a public session's runs go when its page closes
            demo.unload(forget)
    return demo
