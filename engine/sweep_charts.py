"""Plotly figures of an experiment's rows (engine/sweeps.py): one panel per plotted field."""
from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from engine.charts import GRID, color_of
from engine.sweeps import get

# field -> (axis title, scale to the shown unit)
UNITS = {
    "speedup_vs_baseline": ("speedup over eager (x)", 1.0),
    "peak_memory_bytes": ("peak memory (MiB)", 1 / 2**20),
    "weights_bytes": ("weights (MiB)", 1 / 2**20),
    "tokens_per_s": ("throughput (tokens/s)", 1.0),
    "tpot_s": ("TPOT (ms)", 1000.0),
    "e2e_s": ("E2E latency (ms)", 1000.0),
    "predicted_e2e_s": ("E2E latency (ms)", 1000.0),
    "ttft_s": ("TTFT (ms)", 1000.0),
    "identical_token_share": ("tokens identical to baseline", 1.0),
    "prompt_length": ("prompt tokens", 1.0),
    "max_new_tokens": ("new tokens", 1.0),
    "batch_size": ("batch size", 1.0),
    "variant": ("variant", 1.0),
}
DASHES = ("solid", "dash", "dot", "dashdot")


def _series(row: dict) -> str:
    """What distinguishes lines of one variant: the phase, the padding, the axis of a length sweep."""
    parts = [row.get("phase") or "", f"pad {row['pad_ratio']:.0%}" if row.get("pad_ratio") else ""]
    return " ".join(p for p in parts if p)


def sweep_figure(sweep: dict) -> go.Figure:
    """All panels of one experiment; rows that did not run are left out (their reasons are in the table)."""
    experiment = get(sweep["experiment"])
    panels = [field for field in experiment.y if field != "predicted_e2e_s"]
    figure = make_subplots(rows=1, cols=len(panels), horizontal_spacing=0.09,
                           subplot_titles=[UNITS[p][0] for p in panels])
    rows = [r for r in sweep["rows"] if r["status"] == "ok"]
    x_field = experiment.x
    if sweep["experiment"] == "lengths":          # TTFT is drawn against the input length
        rows_for = {"e2e_s": [r for r in rows if r.get("axis") == "output"],
                    "ttft_s": [r for r in rows if r.get("axis") == "input"]}
    else:
        rows_for = {p: rows for p in panels}
    seen = set()
    for col, field in enumerate(panels, start=1):
        panel_x = "prompt_length" if (sweep["experiment"] == "lengths" and field == "ttft_s") else x_field
        groups: dict[tuple[str, str], list[dict]] = {}
        for row in rows_for[field]:
            groups.setdefault((row["variant"], _series(row)), []).append(row)
        series_names = sorted({s for _, s in groups})
        for (variant, series), members in groups.items():
            members = sorted(members, key=lambda r: (r[panel_x] if not isinstance(r[panel_x], str) else 0))
            scale = UNITS[field][1]
            name = f"{variant} {series}".strip()
            kind = go.Bar if panel_x == "variant" else go.Scatter
            extra = {} if kind is go.Bar else {"mode": "lines+markers",
                                               "line": {"dash": DASHES[series_names.index(series) % 4]}}
            figure.add_trace(kind(x=[r[panel_x] for r in members],
                                  y=[None if r.get(field) is None else r[field] * scale for r in members],
                                  name=name, legendgroup=name, showlegend=name not in seen,
                                  marker_color=color_of(variant), **extra), row=1, col=col)
            seen.add(name)
            if field == "e2e_s" and sweep["experiment"] == "lengths":
                figure.add_trace(go.Scatter(x=[r[panel_x] for r in members],
                                            y=[r.get("predicted_e2e_s") and r["predicted_e2e_s"] * 1000 for r in members],
                                            name=f"{variant} predicted", mode="lines",
                                            line={"dash": "dot", "color": color_of(variant)}), row=1, col=col)
        figure.update_xaxes(title_text=UNITS[panel_x][0], gridcolor=GRID, row=1, col=col)
        figure.update_yaxes(gridcolor=GRID, rangemode="tozero", row=1, col=col)
    figure.update_layout(height=360, margin=dict(l=50, r=16, t=48, b=48), paper_bgcolor="rgba(0,0,0,0)",
                         plot_bgcolor="rgba(0,0,0,0)", font=dict(size=12, color="#7c828d"),
                         legend=dict(orientation="h", y=-0.25), title=dict(text=sweep["title"], font=dict(size=14)))
    return figure
