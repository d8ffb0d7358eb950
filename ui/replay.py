"""The Compare tab's replay: the last run's timings played as if every variant had started at once.

A fair-mode run times one variant at a time; the replay lays their token times on one clock, so a
person sees the race the timings describe (API: /replay).
"""
from __future__ import annotations

import time

import gradio as gr

from engine.views.run import RunView, replay_duration_s
from engine.views.run_charts import race_figure
from ui import render, stream
from ui.gate import Refused, visitor_of
from ui.outputs import answer
from ui.state import Context, Session

REPLAY_MAX_S = 20.0          # a longer run is replayed faster than real time
REPLAY_MIN_S = 5.0           # a shorter one slower, to be watchable


def replay_speed(duration_s: float) -> float:
    """How much faster than real time a replay plays: long runs sped up to REPLAY_MAX_S, short ones
    slowed down to REPLAY_MIN_S."""
    if duration_s <= 0:
        return 1.0
    if duration_s < REPLAY_MIN_S:
        return duration_s / REPLAY_MIN_S
    return max(1.0, duration_s / REPLAY_MAX_S)


def replay(ctx: Context, session_state: Session, request: gr.Request = None):
    """Play the last run's timings as if every variant had started at the same moment (API: /replay).
    A public page plays one replay per visitor at a time and refuses another at once."""
    view = session_state.view if isinstance(session_state, Session) else None
    if view is None or not view.done:
        yield {"message": render.message_html("Nothing to replay yet: run first.", "warn")}
        return
    try:
        visitor = ctx.replays.take(visitor_of(request))
    except Refused as refused:
        yield {"message": render.message_html(f"Not played: {render.e(refused)}.", "warn")}
        return
    try:
        yield from _replay(view)
    finally:
        ctx.replays.give(visitor)


def _replay(view: RunView):
    """The replay's updates, on the clock (stream.TICK_S), until the slowest variant has finished."""
    duration = replay_duration_s(view)
    speed = replay_speed(duration)
    begin = time.perf_counter()
    while True:
        t = (time.perf_counter() - begin) * speed
        note = f"Replay of the {view.mode}-mode timings as a race: {min(t, duration):.2f} s of {duration:.2f} s"
        note += (f" ({speed:.1f}x speed)" if speed > 1 else f" (slowed {1 / speed:.0f}x to be watchable)"
                 if speed < 1 else "")
        yield {"message": render.message_html(note), "plot:race": race_figure(view, replay_s=t),
               **{answer(n): render.answer_text(view.lanes[n].text_until(t)) for n in view.lanes}}
        if t >= duration:
            return
        time.sleep(stream.TICK_S)
