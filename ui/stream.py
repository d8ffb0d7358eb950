"""The one loop that turns a run's events into page updates, for both tabs, and the Stop handler.

The page refreshes on a clock, not once per token (four variants at 200 tokens/s would be 800
updates a second): `pump` folds whatever arrived in a tick into the view, and each tab's `draw`
makes one update of its outputs from it.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from functools import partial

from engine.errors import USER_ERRORS
from engine.views.run import pump
from ui import render
from ui.gate import Audience, Refused, visitor_of
from ui.state import Context, Phase, Session

TICK_S = 0.1          # text and status refresh period while a run streams
WAIT_TICK_S = 1.0     # how often a job waiting for the device says how many are ahead
# what refuses a run before it starts: input the visitor can fix, or a preset that cannot be used
# here (a broken preset file raises ValueError or OSError)
REFUSED = (*USER_ERRORS, ValueError, OSError)


def stream(ctx: Context, session: Session, preset: str, start: Callable, draw: Callable, refuse: Callable,
           cannot: str, interval_s: float = TICK_S, request=None) -> Iterator[dict]:
    """Wait for the device (ui/gate.py), start a run and yield the page updates of a tab until it is done.

    `start()` -> (engine, run, view): the view folds events (`apply(batch, now)`, `done`);
    `draw(view, run_id, elapsed_s, stopping)` -> the tab's update; `refuse(message_html)` -> the update
    when the run does not start, `cannot` saying what could not run. A page closed while waiting or
    mid-run (Gradio closes this generator) gives its place up, or cancels the run; so does a job
    whose updates nobody reads (`request`: the visitor's, for their place in line and their session).
    """
    session_hash = getattr(request, "session_hash", None)
    audience = Audience(partial(ctx.unread, session_hash), ctx.limits.unread_s)
    try:
        ticket = ctx.gate.enter(visitor_of(request))
    except Refused as refused:
        session.end()
        yield {"message": render.message_html(f"Not queued: {render.e(refused)}.", "warn")}
        return
    try:
        patience = 0.0                       # a job behind another says so at once, then once a second
        while not ctx.gate.wait(ticket, patience):
            patience = WAIT_TICK_S
            if session.phase is Phase.STOP_REQUESTED:
                break
            if audience.gone():
                session.end()
                _abandoned(session_hash, "waiting for the device", audience)
                return
            ahead = ctx.gate.ahead(ticket)
            yield {"message": render.message_html(
                f"Waiting for the device: {ahead} run{'s' * (ahead != 1)} ahead of yours (one runs at a time).")}
        yield from _run(session, preset, start, draw, refuse, cannot, interval_s, audience, session_hash,
                        partial(_save, ctx, request))
    finally:
        ctx.gate.leave(ticket)


def _abandoned(session_hash: str | None, where: str, audience: Audience) -> None:
    """One line in the server's log: a job stopped because nobody read its updates."""
    print(f"stopped a job {where}: nobody read its updates for {audience.patience_s:g} s "
          f"(session {session_hash})", file=sys.stderr, flush=True)


def _save(ctx: Context, request, view) -> None:
    """A finished run's or experiment's report into the history (with the visitor's session on a public page)."""
    report = getattr(view, "report", None)
    if ctx.history is not None and isinstance(report, dict):
        ctx.history.save(report, request)


def _run(session: Session, preset: str, start: Callable, draw: Callable, refuse: Callable, cannot: str,
         interval_s: float, audience: Audience, session_hash: str | None, save: Callable) -> Iterator[dict]:
    if session.take_stop_request():
        yield refuse(render.message_html("Stopped before the run started.", "warn"))
        return
    try:
        engine, run, view = start()
    except REFUSED as error:
        session.end()
        yield refuse(render.message_html(render.refusal(error, cannot), "error"))
        return
    except BaseException:
        session.end()                                # a bug: the page shows Gradio's error, Stop stays usable
        raise
    if not session.begin(run.id, preset):         # Stop came while the run was starting
        engine.cancel(run.id)
    began = time.perf_counter()
    try:
        for view in pump(run, view, interval_s):
            if audience.gone():                  # cancelled in `finally`; what it measured is nobody's
                _abandoned(session_hash, f"running (run {run.id})", audience)
                break
            if view.done:                        # the last view: saved before its frame, once
                save(view)
            yield draw(view, run.id, time.perf_counter() - began, session.phase is Phase.STOPPING)
    finally:
        if not view.done:
            engine.cancel(run.id)
        session.end()


def stop(ctx: Context, session: Session) -> dict:
    """Stop this visitor's run (API: /stop, /experiment_stop); another visitor's run is never touched.

    A running run's next update says "Stopping"; a run still in the queue will not start.
    """
    if session.stop(ctx.engines) is Phase.PENDING:
        return {"message": render.message_html("Stopped: the run will not start.", "warn")}
    return {}
