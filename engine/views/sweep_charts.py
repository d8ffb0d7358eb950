"""An experiment's rows (engine/studies/sweeps.py) as a figure, one panel per view of the rows, and as
a table in the figure's units."""
from __future__ import annotations

from dataclasses import dataclass, field

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from engine.variants import REFERENCE
from engine.views import tables
from engine.views.palette import GRID, SURFACE, color_of, note

# row field -> (axis title, scale to the shown unit)
UNITS = {
    "speedup_vs_baseline": (f"speedup over {REFERENCE} (x)", 1.0),
    "peak_memory_bytes": ("peak memory (MiB)", 1 / tables.MIB),
    "weights_bytes": ("weights (MiB)", 1 / tables.MIB),
    "tokens_per_s": ("throughput (tokens/s)", 1.0),
    "tpot_s": ("TPOT (ms)", 1000.0),
    "e2e_s": ("E2E latency (ms)", 1000.0),
    "ttft_s": ("TTFT (ms)", 1000.0),
    "identical_token_share": (f"share of tokens identical to {REFERENCE}", 1.0),
    "prompt_length": ("prompt tokens", 1.0),
    "max_new_tokens": ("new tokens", 1.0),
    "batch_size": ("batch size", 1.0),
    "pad_ratio": ("padding (%)", 100.0),
    "variant": ("", 1.0),
}
GRID_KEYS = ("phase", "axis")          # the labels a grid gives its cells (engine/studies/sweeps.py)


@dataclass(frozen=True)
class Panel:
    """One chart panel: `y` against `x` for the rows matching `where`; lines per variant (and padding)."""
    title: str
    y: str
    x: str
    where: dict = field(default_factory=dict)
    predicted: str | None = None          # a row field drawn as a dotted line beside y


PANELS: dict[str, tuple[Panel, ...]] = {
    "attention": (Panel(f"prefill speedup over {REFERENCE}", "speedup_vs_baseline", "prompt_length",
                        {"phase": "prefill"}),
                  Panel(f"generation speedup over {REFERENCE}", "speedup_vs_baseline", "prompt_length",
                        {"phase": "generation"}),
                  Panel("prefill peak memory (MiB)", "peak_memory_bytes", "prompt_length", {"phase": "prefill"})),
    "batch": (Panel("throughput across the batch (tokens/s)", "tokens_per_s", "batch_size"),
              Panel("time per token for each sequence (ms)", "tpot_s", "batch_size")),
    "kv-cache": (Panel("time per token (ms)", "tpot_s", "max_new_tokens"),
                 Panel("end-to-end latency (ms)", "e2e_s", "max_new_tokens")),
    "quantization": (Panel("weights (MiB)", "weights_bytes", "variant"),
                     Panel("time per token (ms)", "tpot_s", "variant"),
                     Panel(f"greedy tokens identical to {REFERENCE}", "identical_token_share", "variant")),
    "lengths": (Panel("E2E against new tokens: measured, and predicted (dotted)", "e2e_s", "max_new_tokens",
                      {"axis": "output"}, predicted="predicted_e2e_s"),
                Panel("TTFT against prompt length (ms)", "ttft_s", "prompt_length", {"axis": "input"})),
}


def _matches(row: dict, where: dict) -> bool:
    return all(row.get(key) == value for key, value in where.items())


def _add_panel(figure: go.Figure, col: int, panel: Panel, rows: list[dict], shown: set) -> None:
    """One panel's traces: a bar per variant against "variant", else a line per (variant, padding)."""
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


def sweep_figure(sweep: dict, height: int = 340) -> go.Figure:
    """All panels of one experiment; rows that did not run are left out (the table gives their reasons)."""
    panels = PANELS[sweep["experiment"]]
    figure = make_subplots(rows=1, cols=len(panels), horizontal_spacing=0.08,
                           subplot_titles=[p.title for p in panels])
    rows = [r for r in sweep["results"] if r["status"] == "ok"]
    shown: set = set()
    for col, panel in enumerate(panels, start=1):
        _add_panel(figure, col, panel, rows, shown)
        figure.update_xaxes(title_text=UNITS[panel.x][0], gridcolor=GRID, row=1, col=col)
        figure.update_yaxes(gridcolor=GRID, rangemode="tozero", row=1, col=col)
    figure.update_annotations(font_size=12)
    figure.update_layout(height=height, margin=dict(l=48, r=16, t=40, b=40), **SURFACE, bargap=0.35,
                         legend=dict(orientation="h", y=-0.22, x=0))
    return figure


def empty_sweep_figure(name: str, height: int = 340) -> go.Figure:
    """The experiment's panels with no data yet: their titles only."""
    figure = sweep_figure({"experiment": name, "results": []}, height)
    figure.update_xaxes(visible=False).update_yaxes(visible=False)
    return note(figure, "Run the experiment: each point appears when its cell is measured")


def sweep_table(sweep: dict, y: tuple[str, ...], reasons: bool = True) -> tuple[list[str], list[list[str]]]:
    """Headers (in the chart's units) and formatted rows: the cell's settings, then the fields `y`."""
    rows = sweep["results"]
    keys = ["variant", "status", *[k for k in GRID_KEYS if any(k in row for row in rows)],
            "prompt_length", "pad_ratio", "batch_size", "max_new_tokens", *y] + (["reason"] if reasons else [])
    units = [UNITS.get(key, (key, 1.0)) for key in keys]
    headers = [title or key for key, (title, _) in zip(keys, units)]
    return headers, [[tables.general(row.get(key), scale) for key, (_, scale) in zip(keys, units)] for row in rows]
