"""Saved runs side by side (engine/history.py's `compare`) as a figure: one panel per figure (TTFT, TPOT,
tokens/s, peak memory), a group of bars per variant (and cell), one bar per run with its min-max over the
repeats; a bar whose difference from the reference run is within noise is drawn faded.

The panels are stacked, as in sweep_charts.py: side by side at a phone's width their titles would overlap.
"""
from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from engine import verdict
from engine.history_compare import Compared, cell_label
from engine.views import tables
from engine.views.palette import GRID, PALETTE, SURFACE, note

# verdict metric name -> (panel title, scale to the shown unit)
PANELS = {"ttft": ("TTFT (ms)", 1000.0), "tpot": ("TPOT (ms)", 1000.0), "tokens_per_s": ("tokens/s", 1.0),
          "memory": ("peak memory (MiB)", 1 / tables.MIB)}
PANEL_HEIGHT, PANEL_GAP, TOP, BOTTOM = 170, 70, 36, 96      # px, as in sweep_charts.py
FADED = 0.35                                               # a bar's opacity when within noise of the reference
NOISE_TEXT = "#1e3a8a"                                     # its change's text: dark on the faded bar
CAPTION = ("Bars: each run's median; whiskers: its min-max over the repeats; a faded bar is within noise of the "
           "reference (or has one repeat); the number at a bar's foot is its change from the reference.")


def run_color(index: int, reference: int) -> str:
    """The reference run grey, the others in the palette's order."""
    if index == reference:
        return PALETTE[0]
    return PALETTE[1 + (index - (index > reference)) % (len(PALETTE) - 1)]


def row_label(variant: str, cell: str) -> str:
    return f"{variant}<br>{cell}" if cell else variant


def compare_figure(reports: list[dict], compared: Compared, labels: list[str]) -> go.Figure:
    """The comparison of `reports` (in the order `compare` got them), each run named by `labels`."""
    titles = [f"{PANELS[name][0]}" for name in PANELS]
    area = len(PANELS) * PANEL_HEIGHT + (len(PANELS) - 1) * PANEL_GAP
    figure = make_subplots(rows=len(PANELS), cols=1, vertical_spacing=PANEL_GAP / area, subplot_titles=titles)
    figure.update_annotations(font_size=12)
    figure.update_layout(height=area + TOP + BOTTOM, margin=dict(l=52, r=16, t=TOP, b=BOTTOM), **SURFACE,
                         barmode="group", bargap=0.3,
                         legend=dict(orientation="h", yanchor="top", y=-56 / area, x=0, bgcolor="rgba(0,0,0,0)"))
    figure.update_xaxes(gridcolor=GRID)
    figure.update_yaxes(gridcolor=GRID, rangemode="tozero", zeroline=False)
    if not compared.changes:
        return note(figure, "nothing to compare: no variant is in two of these runs")
    keyed = [{(row["variant"], cell_label(row)): row for row in report["results"]} for report in reports]
    by_metric: dict[str, list] = {}
    for change in compared.changes:
        by_metric.setdefault(change.metric, []).append(change)
    for index, label in enumerate(labels):
        reference = index == compared.reference
        for at, (name, (title, scale)) in enumerate(PANELS.items(), start=1):
            changes = [c for c in by_metric.get(name, []) if c.values[index] is not None]
            xs, ys, low, high, text, opacity = [], [], [], [], [], []
            for change in changes:
                row = keyed[index][(change.variant, change.cell)]
                value = change.values[index] * scale
                spread = [v * scale for v in verdict.values(row, verdict.BY_NAME[name])]
                xs.append(row_label(change.variant, change.cell))
                ys.append(value)
                low.append(value - min(spread, default=value))
                high.append(max(spread, default=value) - value)
                word = change.verdicts[index]
                text.append("" if reference or change.percent[index] is None else f"{change.percent[index]:+.0f}%")
                opacity.append(FADED if word in (verdict.NOISE, verdict.NO_RANGE) else 1.0)
            words = ["reference" if reference else c.verdicts[index] or "" for c in changes]
            figure.add_bar(x=xs, y=ys, name=f"{label} (reference)" if reference else label, legendgroup=label,
                           showlegend=at == 1, marker=dict(color=run_color(index, compared.reference),
                                                           opacity=opacity),
                           error_y=dict(type="data", symmetric=False, array=high, arrayminus=low, thickness=1.2,
                                        width=3, color="#9ca3af"),
                           # the change at the bar's foot, clear of the whiskers at its top
                           text=text, textposition="inside", insidetextanchor="start", textangle=0,
                           textfont=dict(color=[NOISE_TEXT if o < 1 else "white" for o in opacity], size=11),
                           customdata=words,
                           hovertemplate=f"{label}<br>%{{x}}<br>{title}: %{{y:.3~g}} %{{text}} %{{customdata}}"
                                         "<extra></extra>", row=at, col=1)
    return figure
