"""Plotly figures of an experiment's rows (engine/sweeps.py): one panel per view of the rows."""
from __future__ import annotations

from dataclasses import dataclass, field

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from engine.charts import GRID, color_of

# row field -> (axis title, scale to the shown unit)
UNITS = {
    "speedup_vs_baseline": ("speedup over eager (x)", 1.0),
    "peak_memory_bytes": ("peak memory (MiB)", 1 / 2**20),
    "weights_bytes": ("weights (MiB)", 1 / 2**20),
    "tokens_per_s": ("throughput (tokens/s)", 1.0),
    "tpot_s": ("TPOT (ms)", 1000.0),
    "e2e_s": ("E2E latency (ms)", 1000.0),
    "ttft_s": ("TTFT (ms)", 1000.0),
    "identical_token_share": ("share of tokens identical to baseline", 1.0),
    "prompt_length": ("prompt tokens", 1.0),
    "max_new_tokens": ("new tokens", 1.0),
    "batch_size": ("batch size", 1.0),
    "variant": ("", 1.0),
}


@dataclass(frozen=True)
class Panel:
    """One chart panel: `y` against `x` for the rows matching `where`; lines per variant (and padding)."""
    title: str
    y: str
    x: str
    where: dict = field(default_factory=dict)
    predicted: str | None = None          # a row field drawn as a dotted line beside y


PANELS: dict[str, tuple[Panel, ...]] = {
    "attention": (Panel("prefill speedup over eager", "speedup_vs_baseline", "prompt_length", {"phase": "prefill"}),
                  Panel("generation speedup over eager", "speedup_vs_baseline", "prompt_length",
                        {"phase": "generation"}),
                  Panel("prefill peak memory (MiB)", "peak_memory_bytes", "prompt_length", {"phase": "prefill"})),
    "batch": (Panel("throughput across the batch (tokens/s)", "tokens_per_s", "batch_size"),
              Panel("time per token for each sequence (ms)", "tpot_s", "batch_size")),
    "kv-cache": (Panel("time per token (ms)", "tpot_s", "max_new_tokens"),
                 Panel("end-to-end latency (ms)", "e2e_s", "max_new_tokens")),
    "quantization": (Panel("weights (MiB)", "weights_bytes", "variant"),
                     Panel("time per token (ms)", "tpot_s", "variant"),
                     Panel("greedy tokens identical to baseline", "identical_token_share", "variant")),
    "lengths": (Panel("E2E against new tokens: measured, and predicted (dotted)", "e2e_s", "max_new_tokens",
                      {"axis": "output"}, predicted="predicted_e2e_s"),
                Panel("TTFT against prompt length (ms)", "ttft_s", "prompt_length", {"axis": "input"})),
}


def _matches(row: dict, where: dict) -> bool:
    return all(row.get(key) == value for key, value in where.items())


def sweep_figure(sweep: dict) -> go.Figure:
    """All panels of one experiment; rows that did not run are left out (the table gives their reasons)."""
    panels = PANELS[sweep["experiment"]]
    figure = make_subplots(rows=1, cols=len(panels), horizontal_spacing=0.08,
                           subplot_titles=[p.title for p in panels])
    rows = [r for r in sweep["rows"] if r["status"] == "ok"]
    shown = set()
    for col, panel in enumerate(panels, start=1):
        scale = UNITS[panel.y][1]
        groups: dict[tuple[str, float], list[dict]] = {}
        for row in rows:
            if _matches(row, panel.where) and row.get(panel.y) is not None:
                groups.setdefault((row["variant"], row.get("pad_ratio") or 0.0), []).append(row)
        for (variant, pad), members in groups.items():
            name = variant + (f", {pad:.0%} padding" if pad else "")
            style = {"legendgroup": name, "showlegend": name not in shown, "name": name,
                     "marker_color": color_of(variant)}
            shown.add(name)
            if panel.x == "variant":
                figure.add_trace(go.Bar(x=[variant], y=[members[0][panel.y] * scale], **style), row=1, col=col)
                continue
            members.sort(key=lambda r: r[panel.x])
            xs = [r[panel.x] for r in members]
            figure.add_trace(go.Scatter(x=xs, y=[r[panel.y] * scale for r in members], mode="lines+markers",
                                        line={"dash": "dash" if pad else "solid"}, **style), row=1, col=col)
            if panel.predicted:
                figure.add_trace(go.Scatter(x=xs, y=[r[panel.predicted] * scale for r in members], mode="lines",
                                            line={"dash": "dot", "color": color_of(variant)}, showlegend=False,
                                            name=f"{variant} predicted"), row=1, col=col)
        figure.update_xaxes(title_text=UNITS[panel.x][0], gridcolor=GRID, row=1, col=col)
        figure.update_yaxes(gridcolor=GRID, rangemode="tozero", row=1, col=col)
    figure.update_annotations(font_size=12)
    figure.update_layout(height=340, margin=dict(l=48, r=16, t=40, b=40), paper_bgcolor="rgba(0,0,0,0)",
                         plot_bgcolor="rgba(0,0,0,0)", font=dict(size=12, color="#7c828d"), bargap=0.35,
                         legend=dict(orientation="h", y=-0.22, x=0))
    return figure
