"""Benchmark: does the dashboard's event pump keep up with four variants at 200 tokens/s each?

Synthetic workers (one producer thread) put engine events on a queue at the given rate: per
variant, one Token every 1/rate seconds and a MemorySample every 50 ms, then Finished, then
the RunDone. The consumer is the dashboard's own path: `pump` folds each batch into a `RunView`,
`RunCharts` redraws the charts that are due and `ui.render.card_html` the cards; each update
(cards, texts, figures) is serialised as Gradio would send it (plotly figures to JSON). Reported: events per second handled, page updates per
second, and the lag of the last update (last event emitted -> the update that shows it).

    python benchmarks/ui_pump.py [--variants 4] [--rate 200] [--seconds 5]
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine import events, metrics  # noqa: E402
from engine.pool import Run  # noqa: E402
from engine.spec import RunSpec  # noqa: E402
from engine.variants import CATALOG  # noqa: E402
from engine.views.run import RunView, label_of, pump  # noqa: E402
from engine.views.run_charts import RunCharts  # noqa: E402
from ui.render import card_html  # noqa: E402     (pure HTML: no gradio)

MEMORY_PERIOD_S = 0.05


class SyntheticRun(Run):
    """An engine Run whose events come from a producer thread instead of workers."""

    def __init__(self, variants: list[str], rate: float, seconds: float):
        super().__init__(RunSpec("synthetic", variants, int(rate * seconds)))
        self.variants, self.rate, self.seconds = variants, rate, seconds
        self.produced = 0
        self.tokens = int(rate * seconds)
        self.t_last_event: float | None = None
        self.thread = threading.Thread(target=self._produce, daemon=True)

    def _put(self, event) -> None:
        self.produced += 1
        self.queue.put(event)

    def _produce(self) -> None:
        now = time.perf_counter
        for name in self.variants:
            self._put(events.Status(name, "loading", "synthetic"))
            self._put(events.Loaded(name, 0.0, 0.0, 1000, "cpu", "float32", name))
            self._put(events.Status(name, "generating"))
        t0 = now()
        for name in self.variants:
            self._put(events.Started(name, 1, t0, 16))
        times = {name: [] for name in self.variants}
        next_memory = t0
        for index in range(self.tokens):
            due = t0 + (index + 1) / self.rate
            while (wait := due - now()) > 0:
                time.sleep(wait)
            for name in self.variants:
                t = now()
                times[name].append(t)
                self._put(events.Token(name, 1, index, index, f"w{index} ", t))
            if now() >= next_memory:
                next_memory += MEMORY_PERIOD_S
                for name in self.variants:
                    self._put(events.MemorySample(name, now(), 100 * 2**20 + index * 1024))
        for name in self.variants:
            text = "".join(f"w{i} " for i in range(self.tokens))
            self._put(events.Finished(name, 1, t0, tuple(times[name]), tuple(range(self.tokens)), text, 16, 1,
                                      False, {"rss_bytes": 100 * 2**20}, {}))
        self.t_last_event = now()
        self._put(events.RunDone(synthetic_report(self.variants, t0, times)))


def synthetic_report(variants: list[str], t0: float, times: dict) -> dict:
    """A report shaped like report.build's, from the synthetic timestamps."""
    rows = []
    for name in variants:
        rel = metrics.relative_times(t0, times[name])
        rows.append({"variant": name, "label": label_of(name), "status": "ok", "reason": None,
                     "text": "".join(f"w{i} " for i in range(len(rel))), "output_tokens": len(rel),
                     "ttft_s": metrics.ttft_s(rel), "tpot_s": metrics.tpot_s(rel), "e2e_s": metrics.e2e_s(rel),
                     "tokens_per_s": metrics.tokens_per_s(len(rel), metrics.e2e_s(rel)),
                     "peak_memory_bytes": 100 * 2**20, "weights_bytes": 1000, "mbu": None,
                     "first_diff_token": None, "contended": True, "placement": "resident", "token_times_s": rel,
                     "memory": {"rss_bytes": 100 * 2**20}})
    return {"created": "synthetic", "device": {"name": "synthetic"}, "preset": {"name": "synthetic"},
            "prompt": "", "prompt_tokens": 16, "mode": "race", "repeats": 1, "batch_size": 1, "decoding": "greedy",
            "cancelled": False, "results": rows}


def page_update(view: RunView, charts: RunCharts, now: float) -> list:
    """What the Compare tab sends each tick: a card and a text per lane, then the four figures."""
    lanes = list(view.lanes.values())
    return ([card_html(lane, now) for lane in lanes] + [lane.text for lane in lanes]
            + list(charts.figures(view, now).values()))


def run(variants: int = 4, rate: float = 200.0, seconds: float = 5.0, interval_s: float = 0.1,
        chart_interval_s: float = 0.25) -> dict:
    """Drive the pump with synthetic events; return counts, rates, the final view and the lags."""
    names = list(CATALOG)[:variants]
    source = SyntheticRun(names, rate, seconds)
    view = RunView(names, "race")
    charts = RunCharts(chart_interval_s)
    busy = [0.0]                                         # seconds spent folding events and building updates
    fold = view.apply

    def timed_apply(batch, now=None):
        t = time.perf_counter()
        fold(batch, now)
        busy[0] += time.perf_counter() - t

    view.apply = timed_apply
    updates = payload = 0
    last: dict = {}                                       # output index -> its last serialised value
    max_backlog = 0
    started = time.perf_counter()
    source.thread.start()
    for view in pump(source, view, interval_s):
        t_update = time.perf_counter()
        for index, value in enumerate(page_update(view, charts, t_update)):   # a diff against the last update
            text = value.to_json() if hasattr(value, "to_json") else value
            if text == last.get(index):
                continue
            previous = last.get(index) or ""
            payload += len(text) - len(previous) if text.startswith(previous) else len(text)
            last[index] = text
        updates += 1
        busy[0] += time.perf_counter() - t_update
        max_backlog = max(max_backlog, source.queue.qsize())
    t_end = time.perf_counter()
    source.thread.join()
    elapsed = t_end - started
    return {"variants": variants, "rate": rate, "seconds": seconds, "produced": source.produced,
            "handled": view.events, "updates": updates, "elapsed_s": elapsed,
            "events_per_s": view.events / elapsed, "updates_per_s": updates / elapsed,
            "last_update_lag_s": t_end - source.t_last_event, "max_backlog": max_backlog,
            "payload_bytes": payload, "busy_s": busy[0], "tokens": source.tokens, "view": view}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", type=int, default=4)
    parser.add_argument("--rate", type=float, default=200.0, help="tokens/s per variant")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    result = run(args.variants, args.rate, args.seconds)
    print(f"{result['variants']} variants x {result['rate']:.0f} tokens/s for {result['seconds']:.1f} s: "
          f"{result['produced']} events produced, {result['handled']} handled")
    print(f"events/s handled:  {result['events_per_s']:.0f}")
    print(f"page updates/s:    {result['updates_per_s']:.1f} ({result['updates']} updates, "
          f"{result['payload_bytes'] / 1e6:.1f} MB serialised)")
    print(f"last-update lag:   {result['last_update_lag_s'] * 1000:.1f} ms")
    print(f"pump busy:         {result['busy_s'] / result['elapsed_s']:.0%} of the time "
          f"(capacity about {result['handled'] / result['busy_s']:.0f} events/s)")
    print(f"largest backlog:   {result['max_backlog']} events waiting at an update")
    return 0 if result["handled"] == result["produced"] else 1


if __name__ == "__main__":
    sys.exit(main())
