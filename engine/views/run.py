"""A run as the page shows it: engine events folded into one lane per variant.

`RunView` folds events (tokens, memory samples, statuses, the final report) into lanes; `pump`
turns a run's event stream into one view update per clock tick (about 10 Hz), however fast tokens
arrive. Live figures come from the metric functions of engine/metrics.py applied to the events'
raw timestamps; once the run is done, the engine's report replaces every number.
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from engine import events, metrics
from engine.variants import CATALOG

# Stage of a lane -> words on the page. "waiting": selected, but the run has not reached it yet.
STAGE_WORDS = {
    "waiting": "waiting", "loading": "loading", "warming": "warming up", "warmup": "warm-up (untimed)",
    "ready": "ready",
    "queued": "queued", "generating": "generating", "unloading": "unloading", "done": "done",
    "unavailable": "unavailable", "failed": "failed", "cancelled": "stopped", "idle": "not run",
}
FINAL_STAGES = ("done", "unavailable", "failed", "cancelled")
REPORT_STAGE = {"ok": "done", "failed": "failed", "unavailable": "unavailable", "cancelled": "cancelled"}
FIGURE_NAMES = ("ttft", "itl", "race", "memory", "quality")     # the run's charts, each with its own revision


def label_of(variant: str) -> str:
    """The catalog's label of a variant (its name when it is not in the catalog)."""
    return CATALOG[variant].display_label() if variant in CATALOG else variant


@dataclass
class Lane:
    """One variant's column, as the events so far describe it."""
    variant: str
    label: str
    stage: str = "waiting"
    detail: str = ""
    since: float = 0.0                     # clock time the current stage began (for elapsed times)
    load_step: int = 0                     # 1 starting the process, 2 loading weights, 3 warming up
    load_began: float = 0.0                # clock time the load began
    expected_load_s: float | None = None   # what loading and warming up took the last time, here
    loaded: events.Loaded | None = None
    reused: bool = False                   # the worker was already loaded from an earlier run
    t_start: float | None = None           # perf_counter() of the request start in the worker
    pieces: list[str] = field(default_factory=list)       # decoded text of each token (may be "")
    token_times: list[float] = field(default_factory=list)  # perf_counter() of each token
    memory: list[tuple[float, int]] = field(default_factory=list)  # (perf_counter(), bytes)
    reason: str | None = None              # why it failed, is unavailable or was stopped
    result: dict | None = None             # the report's row, once the run is done
    repeats: int = 1                       # timed requests the run makes of this variant
    requests: int = 0                      # of which started so far
    warmup: bool = False                   # the tokens shown are an untimed warm-up's (charts leave them out)
    quality: dict | None = None            # its answers against the reference's (engine/quality.py), once scored

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def times(self) -> list[float]:
        """Token times in seconds since the request start: of the repeat streaming now, and once the run
        is done of the repeat its report shows (the last timed one, its `shown_repeat`)."""
        return [] if self.t_start is None else metrics.relative_times(self.t_start, self.token_times)

    def timings(self) -> metrics.Timings:
        """The timing figures of the tokens so far (none before a request started)."""
        if self.t_start is None:
            return metrics.timings(0.0, ())
        return metrics.timings(self.t_start, self.token_times)

    def figures(self) -> dict:
        """TTFT, TPOT, tokens/s and peak memory: the report's once done, live estimates before."""
        if self.result is not None and self.result.get("status") in ("ok", "cancelled", "failed"):
            r = self.result
            return {"ttft_s": r.get("ttft_s"), "tpot_s": r.get("tpot_s"), "tokens_per_s": r.get("tokens_per_s"),
                    "peak_memory_bytes": r.get("peak_memory_bytes"), "tokens": r.get("output_tokens"),
                    "final": True}
        timed = self.timings()
        peak = max((b for _, b in self.memory), default=None)
        return {"ttft_s": timed.ttft_s, "tpot_s": timed.tpot_s, "tokens_per_s": timed.tokens_per_s,
                "peak_memory_bytes": peak, "tokens": len(timed.times), "final": False}

    def text_until(self, seconds: float) -> str:
        """The text made in the first `seconds` after the request start (for the replay)."""
        return "".join(p for p, t in zip(self.pieces, self.times) if t <= seconds)


class RunView:
    """Per-run view state: fold events in with `apply`; read lanes, revisions and the report."""

    def __init__(self, variants: Iterable[str], mode: str = "fair", repeats: int = 1):
        self.mode = mode
        self.lanes: dict[str, Lane] = {name: Lane(name, label_of(name), repeats=repeats) for name in variants}
        self.report: dict | None = None
        self.error: str | None = None      # a failure of the whole run (not of one variant)
        self.events = 0                    # events folded so far
        self.revisions = {name: 0 for name in (*FIGURE_NAMES, "report")}

    @property
    def done(self) -> bool:
        return self.report is not None

    @property
    def t0(self) -> float | None:
        """The run's time origin for the race and memory charts: the first timed request's start."""
        starts = [lane.t_start for lane in self.charted() if lane.t_start is not None]
        return min(starts) if starts else None

    def charted(self) -> list[Lane]:
        """The lanes the charts draw: all but those showing an untimed warm-up."""
        return [lane for lane in self.lanes.values() if not lane.warmup]

    def expect(self, load_s: dict[str, float]) -> None:
        """What each variant's load took the last time (engine.load_estimates), for the cards' estimate."""
        for name, seconds in load_s.items():
            if name in self.lanes:
                self.lanes[name].expected_load_s = seconds

    def _lane(self, variant: str, now: float) -> Lane:
        if variant not in self.lanes:      # an event for a variant not selected: show it anyway
            self.lanes[variant] = Lane(variant, label_of(variant), since=now)
        return self.lanes[variant]

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
            if lane.warmup:
                return
            self.revisions["itl"] += 1
            self.revisions["race"] += 1
            if event.index == 0:
                self.revisions["ttft"] += 1
        elif isinstance(event, events.MemorySample):
            lane.memory.append((event.t, event.bytes))
            self.revisions["memory"] += 1
        elif isinstance(event, events.Status):
            self._status(lane, event, now)
        elif isinstance(event, events.Loaded):
            lane.loaded = event
            lane.label = event.label or lane.label
            self._stage(lane, "ready", now)
        elif isinstance(event, events.Started):
            lane.t_start = event.t_start
            lane.pieces, lane.token_times, lane.memory = [], [], []      # a repeat starts afresh
            lane.warmup = event.warmup
            if event.warmup:                  # streamed while others load: shown, counted nowhere
                self._stage(lane, "warmup", now, "untimed warm-up at these lengths; the timed requests follow "
                                                 "once every variant has loaded")
                return
            lane.requests += 1
            self._stage(lane, "generating", now)
            self.revisions["race"] += 1
        elif isinstance(event, events.Finished):
            lane.token_times = list(event.token_times)        # the worker's own, authoritative list
            held = event.text[len(lane.text):] if event.text.startswith(lane.text) else ""
            if held and lane.pieces:              # text held back mid-character until the end: on the last token
                lane.pieces[-1] += held
            if event.cancelled:
                self._stage(lane, "cancelled", now)
            else:                                             # fair mode takes the variants in turn per repeat
                self._stage(lane, "queued", now, f"timed request {lane.requests} of {lane.repeats} done")
        elif isinstance(event, events.Scored):               # off the clock, after the timed requests
            lane.quality = event.quality
            self.revisions["quality"] += 1
        elif isinstance(event, events.CellDone):              # the engine says the variant is done
            if lane.stage not in FINAL_STAGES:
                self._stage(lane, "done", now)
        elif isinstance(event, (events.Failed, events.Unavailable)):
            lane.reason = event.reason
            self._stage(lane, "failed" if isinstance(event, events.Failed) else "unavailable", now, event.reason)

    def _status(self, lane: Lane, event: events.Status, now: float) -> None:
        if lane.stage in FINAL_STAGES:               # e.g. "unloading" after a swapped variant's turn
            lane.detail = "unloaded to free memory" if event.stage == "unloading" else event.detail
            return
        if event.stage == "loading":
            lane.load_began = lane.load_began or now
            lane.load_step = min(lane.load_step + 1, 2)
        elif event.stage == "warming":
            lane.load_step = 3
        elif event.stage == "queued" and lane.loaded is None and lane.load_step == 0:
            lane.reused = True                       # no loading this run: the worker stayed loaded
        self._stage(lane, event.stage, now, event.detail)

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
            lane.quality = row.get("quality", lane.quality)       # the report's entry is the one kept
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


def replay_duration_s(view: RunView) -> float:
    """How long the slowest variant took from its start to its last token."""
    return max((lane.times[-1] for lane in view.lanes.values() if lane.times), default=0.0)


def pump(source, view, interval_s: float = 0.1, clock=time.perf_counter) -> Iterator:
    """Fold `source.drain(timeout)` batches into `view`; yield it once per `interval_s`, and once at the end.

    `view` is anything with `apply(batch, now)` and `done` (a RunView; the Experiments tab's sweep).
    However many events arrive in a tick (four variants at 200 tokens/s is 800/s), the page gets
    one update per tick. While nothing arrives it still ticks, so elapsed times move on.
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
