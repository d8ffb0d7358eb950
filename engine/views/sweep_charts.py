"""An experiment's rows (engine/studies/sweeps.py) as a figure, one panel per view of the rows, and as
a table: one format per field, the ranges over the repeats beside the medians, rows that other
processes slowed marked.

The panels are stacked, one above the other, each as wide as the figure: the page's width is not
known where the figure is built, and side by side at a phone's width their titles would overlap.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from engine import quality, quality_table
from engine.variants import REFERENCE
from engine.views import tables
from engine.views.palette import GRID, NOTE_TEXT, SURFACE, color_of, note

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
    "quality_kld_mean": (f"mean KLD vs {REFERENCE} (nats)", 1.0),
    "prompt_length": ("prompt tokens", 1.0),
    "max_new_tokens": ("new tokens", 1.0),
    "batch_size": ("batch size", 1.0),
    "pad_ratio": ("padding (%)", 100.0),
    "variant": ("", 1.0),
}


def _ms(value: float | None) -> str:
    return tables.ms(value, 2)


@dataclass(frozen=True)
class Column:
    """A row field in the table: its header, a value as a cell, and the unit that follows it in a sentence."""
    header: str
    cell: Callable[[object], str] = tables.general
    unit: str = ""
    bare: Callable[[object], str] | None = None        # a bound of its range (default: `cell`)


# one format per field, the same in every row (sizes in MiB or GiB, times in ms, speedups as 1.23x)
COLUMNS = {
    "prompt_length": Column("prompt tokens"), "pad_ratio": Column("padding", tables.share),
    "batch_size": Column("batch size"), "max_new_tokens": Column("new tokens"),
    "speedup_vs_baseline": Column(f"speedup over {REFERENCE}", tables.ratio, bare=lambda v: tables.fixed(v, 2)),
    "peak_memory_bytes": Column("peak memory", tables.size_digits),
    "weights_bytes": Column("weights", tables.size_digits),
    "tokens_per_s": Column("throughput (tokens/s)", tables.fixed, " tokens/s"),
    "tpot_s": Column("TPOT (ms)", _ms, " ms"), "e2e_s": Column("E2E latency (ms)", _ms, " ms"),
    "predicted_e2e_s": Column("predicted E2E (ms)", _ms, " ms"), "ttft_s": Column("TTFT (ms)", _ms, " ms"),
    "identical_token_share": Column(f"tokens identical to {REFERENCE}", tables.percent),
    # the quality entry's flat columns (engine/quality.py `flat`), in the Compare tab's formats: agreement as
    # a percentage (never 100% unless every position agreed), KL divergence to three significant digits
    "quality_top_agreement": Column(f"same top token as {REFERENCE}", quality_table.agreement),
    "quality_kld_mean": Column("mean KLD (nats)", quality_table.kld),
    "quality_kld_p99": Column("KLD p99 (nats)", quality_table.kld),
    "quality_kld_max": Column("KLD max (nats)", quality_table.kld),
    "quality_perplexity": Column("perplexity", lambda v: tables.fixed(v, 3)),
    "quality_reference_perplexity": Column(f"{REFERENCE}'s perplexity", lambda v: tables.fixed(v, 3)),
    "quality_positions": Column("scored tokens"),
    "quality_note": Column("quality note"),
}
# a quality column that the reference's own row reads "reference" in: its answer scored against itself
REFERENCE_CELLS = frozenset(("quality_top_agreement", "quality_kld_mean", "quality_kld_p99", "quality_kld_max"))


def figure_text(name: str, value) -> str:
    """One figure of field `name` as a sentence shows it: the table's format and its unit (12.30 ms)."""
    column = COLUMNS.get(name, Column(name))
    return column.cell(value) + ("" if value is None else column.unit)


def cell_text(row: dict, name: str) -> str:
    """A row's figure as its table cell: the median, and its (min-max) over the repeats when it has one."""
    column = COLUMNS.get(name, Column(name))
    if name in REFERENCE_CELLS and isinstance(row.get("quality"), dict) and row["quality"]["status"] == "reference":
        return "reference"
    text = column.cell(row.get(name))
    spread = (row.get("ranges") or {}).get(name)
    if spread is None or row.get(name) is None:
        return text
    bare = column.bare or column.cell
    return f"{text} ({bare(spread[0])}-{bare(spread[1])})"          # 1.15x (0.98-1.31)


def busy_text(row: dict) -> str:
    """The table's mark on a row that other processes slowed (CPU busy), else empty."""
    return f"busy ({row['host_others_cores']:.1f} cores taken)" if row.get("host_busy") else ""


GRID_KEYS = ("phase", "axis")          # the labels a grid gives its cells (engine/studies/sweeps.py)


@dataclass(frozen=True)
class Panel:
    """One chart panel: `y` against `x` for the rows matching `where`; lines per variant (and padding)."""
    title: str
    y: str
    x: str
    where: dict = field(default_factory=dict)
    predicted: str | None = None          # a row field drawn as a dotted line beside y
    measured: bool = False                # only rows whose quality entry was measured (not the reference's),
                                          # and the entries' note in the panel where none was


PANELS: dict[str, tuple[Panel, ...]] = {
    "attention": (Panel(f"prefill speedup over {REFERENCE} (x)", "speedup_vs_baseline", "prompt_length",
                        {"phase": "prefill"}),
                  Panel(f"generation speedup over {REFERENCE} (x)", "speedup_vs_baseline", "prompt_length",
                        {"phase": "generation"}),
                  Panel("prefill peak memory (MiB)", "peak_memory_bytes", "prompt_length", {"phase": "prefill"})),
    "batch": (Panel("throughput of the batch (tokens/s)", "tokens_per_s", "batch_size"),
              Panel("time per token, each sequence (ms)", "tpot_s", "batch_size")),
    "kv-cache": (Panel("time per token (ms)", "tpot_s", "max_new_tokens"),
                 Panel("end-to-end latency (ms)", "e2e_s", "max_new_tokens")),
    "quantization": (Panel("weights (MiB)", "weights_bytes", "variant"),
                     Panel("time per token (ms)", "tpot_s", "variant"),
                     Panel(f"mean KLD vs {REFERENCE} (nats): lower is closer", "quality_kld_mean", "variant",
                           measured=True)),
    "lengths": (Panel("E2E (ms) by new tokens; dotted: predicted", "e2e_s", "max_new_tokens",
                      {"axis": "output"}, predicted="predicted_e2e_s"),
                Panel("TTFT (ms) by prompt length", "ttft_s", "prompt_length", {"axis": "input"})),
}


def _matches(row: dict, where: dict) -> bool:
    return all(row.get(key) == value for key, value in where.items())


def unmeasured_note(panel: Panel, rows: list[dict]) -> str | None:
    """Why a `measured` panel has no bars: its rows' notes ("not meaningful: random weights"); None while a
    row is measured or none has been scored yet."""
    if not panel.measured or any(quality.measured(row.get("quality")) for row in rows):
        return None
    notes = dict.fromkeys(row["quality"].get("note") for row in rows if isinstance(row.get("quality"), dict))
    return "; ".join(n for n in notes if n) or None


def _whiskers(rows: list[dict], name: str, scale: float) -> dict:
    """Error bars from each row's min-max over the repeats (`ranges`), for a median's bar or point; none
    drawn where no row has a range."""
    below, above = [], []
    for row in rows:
        low, high = (row.get("ranges") or {}).get(name) or (None, None)
        low, high = row[name] if low is None else low, row[name] if high is None else high
        below.append((row[name] - low) * scale)
        above.append((high - row[name]) * scale)
    return dict(type="data", symmetric=False, array=above, arrayminus=below, thickness=1.2, width=4,
                visible=any(below) or any(above))


def _add_panel(figure: go.Figure, at: int, panel: Panel, rows: list[dict], shown: set) -> None:
    """One panel's traces: a bar per variant against "variant", else a line per (variant, padding)."""
    scale = UNITS[panel.y][1]
    groups: dict[tuple[str, float], list[dict]] = {}
    for row in rows:
        if _matches(row, panel.where) and row.get(panel.y) is not None and (quality.measured(row.get("quality")) or not panel.measured):
            groups.setdefault((row["variant"], row.get("pad_ratio") or 0.0), []).append(row)
    for (variant, pad), members in groups.items():
        name = variant + (f", {pad:.0%} padding" if pad else "")
        style = {"legendgroup": name, "showlegend": name not in shown, "name": name,
                 "marker_color": color_of(variant)}
        shown.add(name)
        if panel.x == "variant":
            figure.add_trace(go.Bar(x=[variant], y=[members[0][panel.y] * scale],
                                    error_y=_whiskers(members[:1], panel.y, scale), **style), row=at, col=1)
            continue
        members.sort(key=lambda r: r[panel.x])
        xs = [r[panel.x] for r in members]
        figure.add_trace(go.Scatter(x=xs, y=[r[panel.y] * scale for r in members], mode="lines+markers",
                                    error_y=_whiskers(members, panel.y, scale),
                                    line={"dash": "dash" if pad else "solid"}, **style), row=at, col=1)
        if panel.predicted:
            figure.add_trace(go.Scatter(x=xs, y=[r[panel.predicted] * scale for r in members], mode="lines",
                                        line={"dash": "dot", "color": color_of(variant)}, showlegend=False,
                                        name=f"{variant} predicted"), row=at, col=1)


PANEL_HEIGHT = 210        # px of one panel's plot area
PANEL_GAP = 96            # px between panels: the x axis's ticks and title, then the next panel's title
TOP, BOTTOM = 36, 120     # px above the first title; below the last plot (its x axis and the legend)


def sweep_figure(sweep: dict, panel_height: int = PANEL_HEIGHT) -> go.Figure:
    """All panels of one experiment, stacked; rows that did not run are left out (the table gives their
    reasons)."""
    panels = PANELS[sweep["experiment"]]
    area = len(panels) * panel_height + (len(panels) - 1) * PANEL_GAP
    figure = make_subplots(rows=len(panels), cols=1, vertical_spacing=PANEL_GAP / area,
                           subplot_titles=[p.title for p in panels])
    rows = [r for r in sweep["results"] if r["status"] == "ok"]
    shown: set = set()
    for at, panel in enumerate(panels, start=1):
        _add_panel(figure, at, panel, rows, shown)
        # ticks at the grid's own values (64, 256 prompt tokens), not plotly's round numbers
        ticks = sorted({r[panel.x] for r in rows if _matches(r, panel.where)}) if panel.x != "variant" else None
        figure.update_xaxes(title_text=UNITS[panel.x][0], title_standoff=6, gridcolor=GRID, tickvals=ticks or None,
                            row=at, col=1)
        figure.update_yaxes(gridcolor=GRID, rangemode="tozero", row=at, col=1)
        why = unmeasured_note(panel, rows)
        if why:                                    # the reason in place of bars, not a bar dressed as a figure
            figure.add_annotation(text=why, showarrow=False, xref="x domain", yref="y domain", x=0.5, y=0.5,
                                  font=dict(color=NOTE_TEXT), row=at, col=1)
    figure.update_annotations(font_size=12)
    figure.update_layout(height=area + TOP + BOTTOM, margin=dict(l=48, r=16, t=TOP, b=BOTTOM), **SURFACE,
                         bargap=0.35, legend=dict(orientation="h", yanchor="top", y=-64 / area, x=0))
    return figure


def empty_sweep_figure(name: str, panel_height: int = PANEL_HEIGHT) -> go.Figure:
    """The experiment's panels with no data yet: their titles only."""
    figure = sweep_figure({"experiment": name, "results": []}, panel_height)
    figure.update_xaxes(visible=False).update_yaxes(visible=False)
    return note(figure, "Run the experiment: each point<br>appears when its cell is measured")   # fits 320 px


def sweep_table(sweep: dict, y: tuple[str, ...], reasons: bool = True) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted rows: the cell's settings, then the fields `y` (medians, with their range
    over the repeats; with quality fields, then the quality note: why a row has no quality figures), a
    CPU column marking the rows other processes slowed when there are any, and (`reasons`) why a row did
    not run."""
    rows = sweep["results"]
    keys = ["variant", "status", *[k for k in GRID_KEYS if any(k in row for row in rows)],
            "prompt_length", "pad_ratio", "batch_size", "max_new_tokens", *y,
            *["quality_note"] * bool(quality.FIELDS & set(y) and "quality_note" not in y)]
    busy = any(row.get("host_busy") for row in rows)
    headers = [COLUMNS[key].header if key in COLUMNS else key for key in keys] + ["CPU"] * busy + \
        ["reason"] * reasons
    table = [[cell_text(row, key) for key in keys] + [busy_text(row)] * busy
             + [tables.general(row.get("reason"))] * reasons for row in rows]
    return headers, table
