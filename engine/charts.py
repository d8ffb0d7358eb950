"""The dashboard's view of a run: events folded into per-variant lanes, plotly figures, the summary.

Pure and gradio-free: `RunView` folds engine events (tokens, memory samples, statuses, the final
report) into what the page shows; the figure functions draw a `RunView`; `pump` turns a run's event
stream into one view update per clock tick (about 10 Hz), however fast tokens arrive. Live figures
are computed with the metric functions of engine/metrics.py from the events' raw timestamps; once
the run is done, every number is replaced by the engine's report.
"""
from __future__ import annotations

import csv
import io
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import plotly.graph_objects as go

from engine import events, metrics
from engine.report import tpot_range
from engine.variants import CATALOG

# One colour per catalog variant, in catalog order, shared by the cards and every chart.
PALETTE = ("#6b7280", "#2563eb", "#0891b2", "#7c3aed", "#d97706", "#db2777", "#16a34a", "#dc2626")
GRID = "rgba(128,128,128,0.22)"
MIB = 2 ** 20

# Stage of a lane -> words on the page. "waiting": selected, but the run has not reached it yet.
STAGE_WORDS = {
    "waiting": "waiting", "loading": "loading", "warming": "warming up", "ready": "ready",
    "queued": "queued", "generating": "generating", "unloading": "unloading", "done": "done",
    "unavailable": "unavailable", "failed": "failed", "cancelled": "stopped", "idle": "not run",
}
FINAL_STAGES = ("done", "unavailable", "failed", "cancelled")
REPORT_STAGE = {"ok": "done", "failed": "failed", "unavailable": "unavailable", "cancelled": "cancelled"}

DEFINITIONS_MD = """\
Timestamps are taken in the worker process with `time.perf_counter()` right after each new token
reached the host (the copy to the host waits for the device). The prompt is not a token.

- **TTFT** (time to first token) = t(first token) - t(request start in the worker).
- **TPOT** (time per output token) = (t(last token) - t(first token)) / (N - 1); the first
  token is excluded (vLLM's definition; GenAI-Perf calls it ITL).
- **ITL** (inter-token latency) = the gaps between consecutive tokens; the chart shows each
  gap, the JSON holds p50/p90/p99.
- **E2E latency** = t(last token) - t(request start) = TTFT + TPOT x (N - 1).
- **Tokens/s** = new tokens of all sequences / E2E latency.
- **Speedup** = TPOT of the baseline / TPOT of the variant (above 1: faster decoding).
- **Repeats**: with more than one, each variant's request is timed that many times (after the
  warm-up); the figures are medians, with the TPOT range in brackets. A speedup is marked
  *(noise)* when the two TPOT ranges overlap and the medians differ by less than the wider range.
  The first request at sequence lengths a variant has not met before can be several times
  slower than the next: on Hopper GPUs PyTorch's default SDPA builds a cuDNN plan for each new
  length (BENCHMARKS.md), which the median of three or more repeats leaves out.
- **MBU** (model bandwidth utilisation) = (weight bytes a step reads + mean KV-cache bytes) /
  TPOT / peak memory bandwidth of the device. A step reads every weight but an input embedding
  table that the output head does not share (it gathers one row of it). Against two peaks:
  *measured copy*, the best of 20 large copies on this device (bytes read + written, measured
  once after the first run's timed requests), and *datasheet*, the vendor's figure (GPUs in the
  engine's table only). Near 100% of the measured
  peak, a step reads its bytes as fast as this device can; far below it, something else
  (launching kernels from Python, say) sets the pace.
- **Peak memory**: the worker process's own memory: peak reserved by the torch allocator on a GPU,
  peak resident set size on a CPU. Whole-GPU memory mixes variants and is never shown as one's.
- **First diff**: index of the first new token that differs from the baseline's (greedy decoding).
- **Fair** mode runs one variant at a time on a device, so no variant slows another. **Race** mode
  runs them all at once: their timings are marked *contended*. *Replay* plays fair timings as a race.
- **CPU busy**: while each request is timed the worker counts the CPU time other processes spent
  on its cores. Past the cores it leaves spare, its timings are marked *CPU busy* with the cores
  taken: that variant was slowed by something else (a browser, another job), not by its kernels.
- Every variant is warmed up before it is measured; while a run streams, the figures are live
  estimates from the tokens so far, and the report's numbers replace them at the end.
"""


def color_of(variant: str) -> str:
    """The variant's colour, stable across runs (catalog order)."""
    names = list(CATALOG)
    index = names.index(variant) if variant in names else len(names)
    return PALETTE[index % len(PALETTE)]


@dataclass
class Lane:
    """One variant's column, as the events so far describe it."""
    variant: str
    label: str
    stage: str = "waiting"
    detail: str = ""
    since: float = 0.0                     # clock time the current stage began (for elapsed times)
    load_step: int = 0                     # 1 starting the process, 2 loading weights, 3 warming up
    loaded: events.Loaded | None = None
    reused: bool = False                   # the worker was already loaded from an earlier run
    t_start: float | None = None           # perf_counter() of the request start in the worker
    prompt_tokens: int | None = None
    pieces: list[str] = field(default_factory=list)       # decoded text of each token (may be "")
    token_times: list[float] = field(default_factory=list)  # perf_counter() of each token
    memory: list[tuple[float, int]] = field(default_factory=list)  # (perf_counter(), bytes)
    reason: str | None = None              # why it failed, is unavailable or was stopped
    result: dict | None = None             # the report's row, once the run is done
    revision: int = 0                      # bumped by every event that changes this lane
    repeats: int = 1                       # timed requests the run makes of this variant
    requests: int = 0                      # of which started so far

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def times(self) -> list[float]:
        """Token times in seconds since the request start."""
        if self.t_start is None:
            return []
        return metrics.relative_times(self.t_start, self.token_times)

    def figures(self) -> dict:
        """TTFT, TPOT, tokens/s and peak memory: the report's once done, live estimates before."""
        if self.result is not None and self.result.get("status") in ("ok", "cancelled", "failed"):
            r = self.result
            return {"ttft_s": r.get("ttft_s"), "tpot_s": r.get("tpot_s"), "tokens_per_s": r.get("tokens_per_s"),
                    "peak_memory_bytes": r.get("peak_memory_bytes"), "tokens": r.get("output_tokens"),
                    "final": True}
        times = self.times
        peak = max((b for _, b in self.memory), default=None)
        return {"ttft_s": metrics.ttft_s(times), "tpot_s": metrics.tpot_s(times),
                "tokens_per_s": metrics.tokens_per_s(len(times), metrics.e2e_s(times)),
                "peak_memory_bytes": peak, "tokens": len(times), "final": False}

    def text_until(self, seconds: float) -> str:
        """The text made in the first `seconds` after the request start (for the replay)."""
        return "".join(p for p, t in zip(self.pieces, self.times) if t <= seconds)


class RunView:
    """Per-run view state: fold events in with `apply`; read lanes, revisions and the report."""

    def __init__(self, variants: Iterable[str], mode: str = "fair", labels: dict | None = None, repeats: int = 1):
        labels = labels or {}
        self.mode = mode
        self.lanes: dict[str, Lane] = {
            name: Lane(name, labels.get(name) or (CATALOG[name].display_label() if name in CATALOG else name),
                       repeats=repeats)
            for name in variants}
        self.report: dict | None = None
        self.error: str | None = None      # a failure of the whole run (not of one variant)
        self.events = 0                    # events folded so far
        self.revisions = {"ttft": 0, "itl": 0, "race": 0, "memory": 0, "report": 0}

    @property
    def done(self) -> bool:
        return self.report is not None

    @property
    def t0(self) -> float | None:
        """The run's time origin for the race and memory charts: the first request start."""
        starts = [lane.t_start for lane in self.lanes.values() if lane.t_start is not None]
        return min(starts) if starts else None

    def _lane(self, variant: str, now: float) -> Lane:
        lane = self.lanes.get(variant)
        if lane is None:                   # an event for a variant not selected: show it anyway
            lane = self.lanes[variant] = Lane(variant, CATALOG[variant].display_label()
                                              if variant in CATALOG else variant, since=now)
        lane.revision += 1
        return lane

    def _stage(self, lane: Lane, stage: str, now: float, detail: str = "") -> None:
        if lane.stage != stage:
            lane.since = now
        lane.stage, lane.detail = stage, detail

    def apply(self, batch: Iterable[events.Event], now: float | None = None) -> None:
        """Fold a batch of events in; `now` is the clock used for elapsed stage times."""
        now = time.perf_counter() if now is None else now
        for event in batch:
            self.events += 1
            self._apply(event, now)

    def _apply(self, event, now: float) -> None:
        if isinstance(event, events.RunDone):
            self._done(event.report, now)
            return
        if isinstance(event, events.Failed) and event.variant == "*":
            self.error = event.reason
            return
        lane = self._lane(event.variant, now)
        if isinstance(event, events.Token):
            lane.pieces.append(event.text)
            lane.token_times.append(event.t)
            self.revisions["itl"] += 1
            self.revisions["race"] += 1
            if event.index == 0:
                self.revisions["ttft"] += 1
        elif isinstance(event, events.MemorySample):
            lane.memory.append((event.t, event.bytes))
            self.revisions["memory"] += 1
        elif isinstance(event, events.Status):
            if lane.stage in FINAL_STAGES:           # e.g. "unloading" after a swapped variant's turn
                lane.detail = "unloaded to free memory" if event.stage == "unloading" else event.detail
                return
            if event.stage == "loading":
                lane.load_step = min(lane.load_step + 1, 2)
            elif event.stage == "warming":
                lane.load_step = 3
            elif event.stage == "queued" and lane.loaded is None and lane.load_step == 0:
                lane.reused = True                   # no loading this run: the worker stayed loaded
            self._stage(lane, event.stage, now, event.detail)
        elif isinstance(event, events.Loaded):
            lane.loaded = event
            lane.label = event.label or lane.label
            self._stage(lane, "ready", now)
        elif isinstance(event, events.Started):
            lane.t_start, lane.prompt_tokens = event.t_start, event.prompt_tokens
            lane.pieces, lane.token_times, lane.memory = [], [], []      # a repeat starts afresh
            lane.requests += 1
            self._stage(lane, "generating", now)
            self.revisions["race"] += 1
        elif isinstance(event, events.Finished):
            lane.token_times = list(event.token_times)        # the worker's own, authoritative list
            self._stage(lane, "cancelled" if event.cancelled else "done", now)
        elif isinstance(event, events.Failed):
            lane.reason = event.reason
            self._stage(lane, "failed", now, event.reason)
        elif isinstance(event, events.Unavailable):
            lane.reason = event.reason
            self._stage(lane, "unavailable", now, event.reason)

    def _done(self, report: dict, now: float) -> None:
        self.report = report
        for row in report.get("results", []):
            lane = self._lane(row["variant"], now)
            lane.result = row
            lane.label = row.get("label") or lane.label
            stage = REPORT_STAGE.get(row.get("status"), row.get("status"))
            if stage != lane.stage:
                self._stage(lane, stage, now, row.get("reason") or "")
            lane.reason = row.get("reason")
            if not lane.pieces and row.get("text"):
                lane.pieces = [row["text"]]
        for lane in self.lanes.values():              # never reached (e.g. the run failed early)
            if lane.stage not in FINAL_STAGES:
                self._stage(lane, "cancelled", now, self.error or "the run ended before this variant ran")
        for key in self.revisions:
            self.revisions[key] += 1

    def counts(self) -> dict:
        """How many lanes are in each stage."""
        found: dict[str, int] = {}
        for lane in self.lanes.values():
            found[lane.stage] = found.get(lane.stage, 0) + 1
        return found


def pump(source, view: RunView, interval_s: float = 0.1, clock=time.perf_counter) -> Iterator[RunView]:
    """Fold `source.drain(timeout)` batches into `view`; yield it once per `interval_s`, and once at the end.

    However many events arrive in a tick (four variants at 200 tokens/s is 800/s), the page
    gets one update per tick. While nothing arrives it still ticks, so elapsed times move on.
    """
    next_tick = clock() + interval_s
    while not view.done:
        batch = source.drain(max(next_tick - clock(), 0.0))
        if batch:
            view.apply(batch, clock())
        if view.done:
            break
        now = clock()
        if now >= next_tick:
            next_tick = now + interval_s
            yield view
    yield view


# ---------------------------------------------------------------------------------------- figures
def _layout(x_title: str, y_title: str, **extra) -> dict:
    """Transparent background and neutral greys: readable in light and dark themes alike. The
    legend goes under the x axis: the band above the plot holds the chart's label on the page."""
    layout = dict(
        height=300, margin=dict(l=56, r=12, t=36, b=44), paper_bgcolor="rgba(0,0,0,0)",
        plot_bgcolor="rgba(0,0,0,0)", font=dict(size=12, color="#7c828d"),
        legend=dict(orientation="h", x=0, xanchor="left", y=-0.28, yanchor="top", bgcolor="rgba(0,0,0,0)"),
        xaxis=dict(title=dict(text=x_title), gridcolor=GRID, zeroline=False),
        yaxis=dict(title=dict(text=y_title), gridcolor=GRID, zeroline=False, rangemode="tozero"),
        uirevision="keep", hovermode="closest", showlegend=True)
    layout.update(extra)
    return layout


def _empty(figure: go.Figure, message: str) -> go.Figure:
    figure.add_annotation(text=message, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5,
                          font=dict(size=13, color="#8a8f98"))
    figure.update_xaxes(showticklabels=False)
    figure.update_yaxes(showticklabels=False)
    return figure


def ttft_figure(view: RunView) -> go.Figure:
    """Time to first token per variant, as bars."""
    rows = [(lane, lane.figures()["ttft_s"]) for lane in view.lanes.values()]
    rows = [(lane, ttft) for lane, ttft in rows if ttft is not None]
    figure = go.Figure(layout=_layout("", "TTFT (ms)", showlegend=False))
    if not rows:
        return _empty(figure, "waiting for first tokens")
    figure.add_bar(x=[lane.variant for lane, _ in rows], y=[ttft * 1000 for _, ttft in rows],
                   marker_color=[color_of(lane.variant) for lane, _ in rows],
                   text=[f"{ttft * 1000:.0f} ms" if ttft >= 0.01 else f"{ttft * 1000:.1f} ms" for _, ttft in rows],
                   textposition="auto", hovertext=[lane.label for lane, _ in rows],
                   hovertemplate="%{hovertext}<br>TTFT %{y:.1f} ms<extra></extra>")
    return figure


def itl_figure(view: RunView) -> go.Figure:
    """Inter-token latency (gap before each token) over the token index, one line per variant."""
    figure = go.Figure(layout=_layout("token index", "inter-token latency (ms)"))
    drawn = False
    for lane in view.lanes.values():
        gaps = metrics.itl_s(lane.times)
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
    for lane in view.lanes.values():
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
        ends = [lane.times[-1] for lane in view.lanes.values() if lane.times]
        most = max((len(lane.times) for lane in view.lanes.values()), default=1)
        figure.update_xaxes(range=[0, max(ends, default=1.0) * 1.03])
        figure.update_yaxes(range=[0, most * 1.05], rangemode="normal")
    return figure if drawn else _empty(figure, "waiting for a variant to start")


def memory_figure(view: RunView) -> go.Figure:
    """Memory of each worker process over the run's time (RSS on a CPU, allocator reserved on a GPU)."""
    figure = go.Figure(layout=_layout("seconds since the first request started", "memory (MiB)"))
    t0 = view.t0
    drawn = False
    for lane in view.lanes.values():
        if not lane.memory:
            continue
        origin = t0 if t0 is not None else lane.memory[0][0]
        figure.add_scatter(x=[t - origin for t, _ in lane.memory], y=[b / MIB for _, b in lane.memory],
                           mode="lines", name=lane.variant, line=dict(color=color_of(lane.variant), width=1.8),
                           hovertemplate=f"{lane.variant}<br>%{{x:.2f}} s: %{{y:.1f}} MiB<extra></extra>")
        drawn = True
    if drawn:
        figure.update_yaxes(rangemode="normal")
    return figure if drawn else _empty(figure, "memory is sampled while a variant generates")


def replay_duration_s(view: RunView) -> float:
    """How long the slowest variant took from its start to its last token."""
    return max((lane.times[-1] for lane in view.lanes.values() if lane.times), default=0.0)


# ---------------------------------------------------------------------------------------- summary
def _fmt(value, scale: float = 1.0, digits: int = 1, unit: str = "") -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}{unit}"


def _baseline(report: dict) -> dict | None:
    return next((r for r in report.get("results", []) if r["variant"] == "baseline"), None)


def speedup(report: dict, row: dict) -> float | None:
    """Baseline TPOT / this variant's TPOT; None without a measured baseline in the run."""
    base = _baseline(report)
    if base is None or not base.get("tpot_s") or not row.get("tpot_s"):
        return None
    return base["tpot_s"] / row["tpot_s"]


def within_noise(report: dict, row: dict) -> bool | None:
    """Whether the difference from the baseline's TPOT is noise: their ranges over the repeats overlap
    and their medians differ by less than the wider range (one slow repeat widens a range without
    making a large difference noise). None when either ran once: no spread to judge by."""
    base = _baseline(report)
    if base is None or base is row:
        return None
    mine, theirs = tpot_range(row), tpot_range(base)
    if mine is None or theirs is None or row.get("tpot_s") is None or base.get("tpot_s") is None:
        return None
    overlap = mine[0] <= theirs[1] and theirs[0] <= mine[1]
    spread = max(mine[1] - mine[0], theirs[1] - theirs[0])
    return overlap and abs(row["tpot_s"] - base["tpot_s"]) < spread


SUMMARY_HEADERS = ("Variant", "Status", "Tokens", "TTFT ms", "TPOT ms (min-max)", "Speedup (TPOT)", "Tokens/s",
                   "Peak memory MiB", "Weights MiB", "MBU (measured copy)", "MBU (datasheet)", "First diff",
                   "Timings")


def _percent(value: float | None) -> str:
    """A share: one decimal below 10% (a small model's MBU on a CPU is a fraction of a percent)."""
    if value is None:
        return "-"
    return f"{value:.1%}" if value < 0.1 else f"{value:.0%}"


def summary_rows(report: dict) -> list[list[str]]:
    """One formatted row per variant of the report (see SUMMARY_HEADERS)."""
    has_baseline = any(r["variant"] == "baseline" and r.get("output_tokens") for r in report.get("results", []))
    rows = []
    for r in report.get("results", []):
        ratio = speedup(report, r)
        if r["variant"] == "baseline":
            diff = "reference"
        elif not has_baseline or not r.get("output_tokens"):
            diff = "-"
        else:
            diff = "none" if r.get("first_diff_token") is None else f"token {r['first_diff_token']}"
        if r.get("output_tokens"):
            timings = "contended (race)" if r.get("contended") else "alone on the device"
            if r.get("host_busy"):
                timings += f"; CPU busy ({r['host_others_cores']:.1f} cores taken)"
        else:
            timings = "-"
        spread = tpot_range(r)
        speed = "-" if ratio is None else f"{ratio:.2f}x" + (" (noise)" if within_noise(report, r) else "")
        rows.append([
            r["variant"], r["status"], str(r.get("output_tokens") or "-"), _fmt(r.get("ttft_s"), 1000),
            _fmt(r.get("tpot_s"), 1000, 2) + ("" if spread is None else
                                              f" ({spread[0] * 1000:.2f}-{spread[1] * 1000:.2f})"),
            speed,
            _fmt(r.get("tokens_per_s")), _fmt(r.get("peak_memory_bytes"), 1 / MIB, 0),
            _fmt(r.get("weights_bytes"), 1 / MIB, 2), _percent(r.get("mbu_measured")), _percent(r.get("mbu")),
            diff, timings])
    return rows


RUN_FIELDS = ("created", "mode", "prompt_tokens", "repeats", "batch_size", "decoding", "cancelled")


def report_csv(report: dict) -> str:
    """The report as CSV: one row per variant, run facts repeated on each row, lists left out."""
    table = []
    for r in report.get("results", []):
        row = {"preset": report.get("preset", {}).get("name"), "device": report.get("device", {}).get("name")}
        row.update({key: report.get(key) for key in RUN_FIELDS})
        row.update({k: v for k, v in r.items() if not isinstance(v, (list, dict))})
        row.update({f"memory_{k}": v for k, v in (r.get("memory") or {}).items()})
        table.append(row)
    headers: list[str] = []
    for row in table:
        headers += [key for key in row if key not in headers]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=headers, lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    return out.getvalue()
