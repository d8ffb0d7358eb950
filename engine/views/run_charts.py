"""The charts of a run (TTFT, inter-token latency, the race, memory, speed against quality), drawn from a RunView.

`RunCharts` redraws a chart only when its data changed and a chart tick is due: each chart
update re-sends the whole figure to the browser, so charts refresh more slowly than text.
"""
from __future__ import annotations

import math

import plotly.graph_objects as go

from engine import quality, verdict
from engine.variants import REFERENCE
from engine.views import tables
from engine.views.palette import GRID, NOTE_TEXT, SURFACE, color_of, note
from engine.views.run import FIGURE_NAMES, RunView

TITLES = {"ttft": "Time to first token", "itl": "Inter-token latency", "race": "Race: tokens over time",
          "memory": "Memory per worker", "quality": "Speed against quality"}
MARKER_PX = 40            # the diameter of the largest peak memory's marker; the others by area
NOT_SCORED = "quality is scored after the timed requests"


def _layout(x_title: str, y_title: str, **extra) -> dict:
    """The legend goes under the x axis: the band above the plot holds the chart's label on the page."""
    layout = dict(
        height=300, margin=dict(l=56, r=12, t=36, b=44), **SURFACE,
        legend=dict(orientation="h", x=0, xanchor="left", y=-0.28, yanchor="top", bgcolor="rgba(0,0,0,0)"),
        xaxis=dict(title=dict(text=x_title), gridcolor=GRID, zeroline=False),
        yaxis=dict(title=dict(text=y_title), gridcolor=GRID, zeroline=False, rangemode="tozero"),
        uirevision="keep", hovermode="closest", showlegend=True)
    layout.update(extra)
    return layout


def _empty(figure: go.Figure, message: str) -> go.Figure:
    figure.update_xaxes(showticklabels=False)
    figure.update_yaxes(showticklabels=False)
    return note(figure, message)


WHISKERS = dict(type="data", symmetric=False, thickness=1.4, width=6, color="#6b7280")     # min-max bars


def spread_ms(lane, median_s: float) -> tuple[float, float]:
    """How far the lane's TTFT repeats reach below and above its median, in ms (0, 0 before the report, or with
    one repeat): a bar of medians with its whiskers, so that noise does not look like a result."""
    found = verdict.values(lane.result or {}, verdict.BY_NAME["ttft"]) if lane.result else []
    if len(found) < 2:
        return 0.0, 0.0
    return (median_s - min(found)) * 1000, (max(found) - median_s) * 1000


def ttft_figure(view: RunView) -> go.Figure:
    """Time to first token per variant: bars of the medians once the report is in, each with its min-max
    over the repeats as whiskers; live, the request so far."""
    rows = [(lane, lane.figures()["ttft_s"]) for lane in view.charted()]
    rows = [(lane, ttft) for lane, ttft in rows if ttft is not None]
    figure = go.Figure(layout=_layout("median of the repeats; whiskers: min-max" if view.done else "", "TTFT (ms)",
                                      showlegend=False))
    if not rows:
        return _empty(figure, "waiting for first tokens")
    spreads = [spread_ms(lane, ttft) for lane, ttft in rows]
    figure.add_bar(x=[lane.variant for lane, _ in rows], y=[ttft * 1000 for _, ttft in rows],
                   marker_color=[color_of(lane.variant) for lane, _ in rows],
                   text=[tables.duration(ttft) for _, ttft in rows], textposition="inside", insidetextanchor="start",
                   hovertext=[lane.label for lane, _ in rows],
                   customdata=[[ttft * 1000 - below, ttft * 1000 + above] for (_, ttft), (below, above)
                               in zip(rows, spreads)],
                   hovertemplate="%{hovertext}<br>TTFT %{y:.1f} ms (min %{customdata[0]:.1f}, "
                                 "max %{customdata[1]:.1f})<extra></extra>",
                   error_y=dict(WHISKERS, array=[above for _, above in spreads],
                                arrayminus=[below for below, _ in spreads], visible=any(map(any, spreads))))
    return figure


def itl_figure(view: RunView) -> go.Figure:
    """Inter-token latency (gap before each token) over the token index, one line per variant."""
    figure = go.Figure(layout=_layout("token index", "inter-token latency (ms)"))
    drawn = False
    for lane in view.charted():
        gaps = lane.timings().itl_s
        if not gaps:
            continue
        drawn = True
        figure.add_scatter(x=list(range(1, len(gaps) + 1)), y=[g * 1000 for g in gaps], mode="lines",
                           name=lane.variant, line=dict(color=color_of(lane.variant), width=1.6),
                           hovertemplate=f"{lane.variant}<br>token %{{x}}: %{{y:.1f}} ms<extra></extra>")
    return figure if drawn else _empty(figure, "waiting for the second token of a variant")


def race_figure(view: RunView, replay_s: float | None = None) -> go.Figure:
    """Tokens generated over time. Live: on the run's clock; replay: every variant from its own start."""
    replay = replay_s is not None
    figure = go.Figure(layout=_layout("seconds since each variant's start (replay)" if replay
                                      else "seconds since the first request started", "tokens generated"))
    t0 = view.t0
    drawn = False
    for lane in view.charted():
        if lane.t_start is None or t0 is None:
            continue
        times = lane.times if replay else [t - t0 for t in lane.token_times]
        if replay:
            times = [t for t in times if t <= replay_s]
        start = 0.0 if replay else lane.t_start - t0
        figure.add_scatter(x=[start] + times, y=list(range(len(times) + 1)), mode="lines", line_shape="hv",
                           name=lane.variant, line=dict(color=color_of(lane.variant), width=2),
                           hovertemplate=f"{lane.variant}<br>%{{x:.3f}} s: %{{y}} tokens<extra></extra>")
        drawn = True
    if replay:
        ends = [lane.times[-1] for lane in view.charted() if lane.times]
        most = max((len(lane.times) for lane in view.charted()), default=1)
        figure.update_xaxes(range=[0, max(ends, default=1.0) * 1.03])
        figure.update_yaxes(range=[0, most * 1.05], rangemode="normal")
    return figure if drawn else _empty(figure, "waiting for a variant to start")


def memory_figure(view: RunView) -> go.Figure:
    """Memory of each worker process over the run's time (RSS on a CPU, allocator reserved on a GPU)."""
    figure = go.Figure(layout=_layout("seconds since the first request started", "memory (MiB)"))
    t0 = view.t0
    drawn = False
    for lane in view.charted():
        if not lane.memory:
            continue
        origin = t0 if t0 is not None else lane.memory[0][0]
        figure.add_scatter(x=[t - origin for t, _ in lane.memory], y=[b / tables.MIB for _, b in lane.memory],
                           mode="lines+markers", marker=dict(size=5), name=lane.variant, line=dict(color=color_of(lane.variant), width=1.8),
                           hovertemplate=f"{lane.variant}<br>%{{x:.2f}} s: %{{y:.1f}} MiB<extra></extra>")
        drawn = True
    if drawn:
        figure.update_yaxes(rangemode="normal")
    return figure if drawn else _empty(figure, "memory is sampled while a variant generates")


KLD_FLOOR = 0.01                  # nats: the speed-against-quality chart's smallest y range


def quality_figure(view: RunView) -> go.Figure:
    """Each scored variant at its time per token and the mean KLD of its answers against the reference's
    (engine/quality.py; the reference at 0), the marker's area its peak memory; without figures, why not."""
    figure = go.Figure(layout=_layout("time per output token (ms)", f"mean KLD vs {quality_reference(view)} (nats)",
                                      showlegend=False))
    points, left_out = [], []
    for lane in view.charted():
        entry, tpot = lane.quality, lane.figures()["tpot_s"]
        kld = 0.0 if (entry or {}).get("status") == "reference" else (entry or {}).get("kld_mean")
        if quality.has_figures(entry) and tpot is not None and kld is not None:
            points.append((lane, tpot, kld, lane.figures()["peak_memory_bytes"]))
        elif entry and entry.get("note"):
            left_out.append((lane.variant, entry["note"]))
    if not points:
        reasons = list(dict.fromkeys(note for _, note in left_out))
        waiting = "no quality figures in this run's report" if view.done else NOT_SCORED
        return _empty(figure, reasons[0] if len(reasons) == 1 else waiting if not reasons else "; ".join(
            f"{name}: {note}" for name, note in left_out))
    points.sort(key=lambda point: point[1])
    largest = max((peak or 0 for *_, peak in points), default=0) or 1
    figure.add_scatter(
        x=[tpot * 1000 for _, tpot, _, _ in points], y=[kld for _, _, kld, _ in points], mode="markers+text",
        text=[lane.variant for lane, *_ in points], cliponaxis=False,
        # neighbours' names alternate above and below their markers, so that close points stay legible
        textposition=["top center" if i % 2 == 0 else "bottom center" for i in range(len(points))],
        marker=dict(size=[peak or 0 for *_, peak in points], sizemode="area", sizeref=2 * largest / MARKER_PX ** 2,
                    sizemin=7, color=[color_of(lane.variant) for lane, *_ in points], opacity=0.85,
                    line=dict(width=1, color="rgba(255,255,255,0.6)")),
        customdata=[[tables.size(peak), quality.line(lane.quality)] for lane, _, _, peak in points],
        hovertemplate="%{text}<br>TPOT %{x:.2f} ms, mean KLD %{y:.3g}<br>peak memory %{customdata[0]}"
                      "<br>%{customdata[1]}<extra></extra>")
    # from 0 on both axes (a ratio reads true only from 0), with room for the largest marker and the names:
    # the reference's marker sits on the zero line, whole, not cut in half by the axis
    slowest = max(tpot for _, tpot, _, _ in points) * 1000
    # never scaled below KLD_FLOOR: a float32 rounding difference (1e-8 nats) must not look as far from the
    # reference as a quantized variant's real cost does (0.02-0.3 nats on the real model); hover gives the value
    top = max(max(kld for _, _, kld, _ in points), KLD_FLOOR)
    figure.update_xaxes(range=[0, slowest * 1.18])
    figure.update_yaxes(range=[-0.4 * top, top * 1.3], zeroline=True, zerolinecolor=GRID, rangemode="normal",
                        tickvals=_ticks_from_zero(top * 1.3),      # no negative tick: a KLD is never below 0
                        exponentformat="e")                        # 4e-08, not SI's "40n"
    if left_out:                      # under the x axis' title: the band above the plot holds the chart's label
        figure.update_layout(margin=dict(b=72))
        figure.add_annotation(text="not drawn: " + "; ".join(f"{name} ({note})" for name, note in left_out),
                              showarrow=False, xref="paper", yref="paper", x=0, y=-0.26, xanchor="left",
                              yanchor="top", font=dict(size=11, color=NOTE_TEXT))
    return figure


def _ticks_from_zero(top: float, count: int = 4) -> list[float]:
    """About `count` round tick values (steps of 1, 2 or 5 times a power of ten) from 0 up to `top`."""
    raw = top / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(power * m for m in (1, 2, 5, 10) if power * m >= raw)
    return [round(step * i, 12) for i in range(int(top / step) + 1)]


def quality_reference(view: RunView) -> str:
    """The variant whose answer the others were scored on: the one the quality entries name."""
    found = [lane.quality.get("reference") for lane in view.lanes.values() if lane.quality]
    return next((name for name in found if name), REFERENCE)


FIGURES = {"ttft": ttft_figure, "itl": itl_figure, "race": race_figure, "memory": memory_figure,
           "quality": quality_figure}


def empty_figures() -> dict[str, go.Figure]:
    """The run's charts before a run."""
    view = RunView([])
    return {name: FIGURES[name](view) for name in FIGURE_NAMES}


class RunCharts:
    """The charts of one run, each rebuilt only when its data changed and a chart tick is due."""

    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self.next_s = float("-inf")
        self.drawn: dict[str, tuple[int, go.Figure]] = {}     # chart -> (view revision, figure)

    def figures(self, view: RunView, now: float) -> dict[str, go.Figure]:
        """Every chart at clock time `now`: new ones where due (and always once the run is done)."""
        due = now >= self.next_s or view.done
        if now >= self.next_s:
            self.next_s = now + self.interval_s
        for name in FIGURE_NAMES:
            revision, figure = self.drawn.get(name, (None, None))
            if figure is None or (due and revision != view.revisions[name]):
                self.drawn[name] = (view.revisions[name], FIGURES[name](view))
        return {name: self.drawn[name][1] for name in FIGURE_NAMES}
