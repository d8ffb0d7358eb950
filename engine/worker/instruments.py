"""The worker's instruments around a timed request: the per-token streamer, the prefill's marks and the
request's monitor.

Only the streamer and the prefill's two self-removing hooks run on the timed path, and they do the
least they can: stamp the time (and keep the id). Everything else a request reports while it runs (its
Started event, each token's event and text, memory samples, the GPU clock, noticing a cancel) is done by
the monitor's thread a few times a second from the first token on, and once more when the request ends,
after its last token was timed.
"""
from __future__ import annotations

import contextlib
import statistics
import threading
import time

import psutil

from engine import events, telemetry

TICK_S = 0.05                     # how often the monitor reports: memory timeline resolution, cancel latency
PREFILL_QUIET_S = 1.0             # how long the monitor leaves a prefill alone before its first report


class TimingStreamer:
    """The one per-token hook. generate() calls put() first with the prompt (skipped), then once per step
    with the new token ids of shape (batch,), already copied to the host, so the device has finished
    the step. put() stamps the time and keeps sequence 0's id: no decoding, no event, and no lock but
    the one that wakes the monitor at the first token (`first`, once a request)."""

    def __init__(self, prompt_first: bool = True):
        self.times: list[float] = []
        self.ids: list[int] = []
        self.stop = False                          # set by the monitor on a cancel: the decode loop ends
        self.first: threading.Event | None = None  # set once, at the first token (the monitor waits for it)
        self._saw_prompt = not prompt_first        # generate() puts the prompt first; our own loops do not

    def put(self, value) -> None:
        now = time.perf_counter()
        if not self._saw_prompt:
            self._saw_prompt = True
            return
        self.times.append(now)                     # before the id: a reader that sees n ids sees n times
        self.ids.append(value.reshape(-1).tolist()[0])
        if self.first is not None:
            self.first.set()
            self.first = None

    def end(self) -> None:
        pass


class FirstForward:
    """When a request's first forward pass (its prefill) began and ended: two hooks on the model, each
    removed by itself once it has fired, so that the decode steps after the prefill run without them
    (a module without hooks takes PyTorch's direct path). Made after the prime, whose forward it must
    not see; `began` stays None where the decode does not call the model as a module."""

    def __init__(self, model):
        self.began: float | None = None
        self.ended: float | None = None
        self._handles = [model.register_forward_pre_hook(self._begin), model.register_forward_hook(self._end)]

    def _begin(self, module, args) -> None:
        self.began = time.perf_counter()
        self._handles[0].remove()

    def _end(self, module, args, output) -> None:
        self.ended = time.perf_counter()
        self._handles[1].remove()

    def close(self) -> None:
        """Remove what has not fired (a decode that never called the model, or one cancelled first)."""
        for handle in self._handles:
            handle.remove()


class TokenFeed:
    """The streamer's tokens as Token events with their text, decoded a batch at a time off the timed path.

    Incremental detokenisation: the text of ids[prefix:read] is known; a batch's new text is what
    decoding ids[prefix:] adds to it, held back while it ends mid-character. The batch's text goes on
    its last token (the others carry ""), so the pieces still join into the answer.
    """

    def __init__(self, tokenizer, streamer: TimingStreamer, variant: str, request_id: int):
        self.tokenizer, self.streamer, self.variant, self.request_id = tokenizer, streamer, variant, request_id
        self.sent = 0
        self._prefix = self._read = 0
        self.pieces: list[str] = []

    def drain(self, final: bool = False) -> list[events.Token]:
        """Token events for the tokens that arrived since the last call; `final` (the request is over)
        gives out the text held back too, even when it ends in bytes that are no character (a model
        with random weights emits such bytes); with no new token to carry it, it goes into `text`
        (the Finished event's) alone."""
        ids, times = self.streamer.ids, self.streamer.times
        count = len(ids)
        if count == self.sent:
            if final and count and self._read < count:     # held back: into the answer (Finished.text) only
                self._text(list(ids), final=True)
            return []
        piece = self._text(ids[:count], final)
        made = [events.Token(self.variant, self.request_id, index, ids[index], piece if index == count - 1 else "",
                             times[index]) for index in range(self.sent, count)]
        self.sent = count
        return made

    def _text(self, ids: list[int], final: bool = False) -> str:
        decode = self.tokenizer.decode
        known = decode(ids[self._prefix:self._read], skip_special_tokens=True)
        full = decode(ids[self._prefix:], skip_special_tokens=True)
        if len(full) > len(known) and (final or not full.endswith("\ufffd")):   # complete characters arrived
            self._prefix, self._read = self._read, len(ids)
            self.pieces.append(full[len(known):])
            return self.pieces[-1]
        return ""

    @property
    def text(self) -> str:
        return "".join(self.pieces)


class Watch:
    """What the monitor reports for one request: its tokens (through `feed`), its cancel flag, and the
    fields of its Started event. `t_start` is set when the clock starts (one store on the timed path)."""

    def __init__(self, feed: TokenFeed, cancel, prompt_tokens: int, cell: int | None = None, live: bool = True):
        self.feed, self.cancel, self.prompt_tokens, self.cell, self.live = feed, cancel, prompt_tokens, cell, live
        self.t_start: float | None = None
        self.announced = False
        self.held: list = []                       # not live: the events, sent once the request is over
        self.clocks_mhz: list[int] = []

    def clock_mhz(self) -> dict:
        """The SM clock over the request: its median and lowest sample (empty where unknown)."""
        if not self.clocks_mhz:
            return {}
        return {"sm_clock_mhz": statistics.median(self.clocks_mhz), "sm_clock_mhz_min": min(self.clocks_mhz)}


class RequestMonitor:
    """One thread per worker, beside its timed requests: every TICK_S it sends the request's new tokens
    (its Started event first), samples the worker's memory and, on a GPU, the SM clock (a repeat slower
    than the others at a lower clock was slowed by the GPU), and passes a cancel on to the streamer.

    The thread is started once and waits between requests: a thread started per request slows the
    prefill that follows it (BENCHMARKS.md, "The engine against an independent reference"). A request
    not `live` keeps its events until it is over, so that nothing is pickled, sent or read by the
    orchestrator while it is timed.
    """

    def __init__(self, emit, cuda_index: int | None, clock=None):
        """`clock`: what reads the SM clock (read() -> MHz or None); NVML's on a GPU by default."""
        self.emit, self.cuda_index = emit, cuda_index
        if clock is None and cuda_index is not None:
            clock = telemetry.ClockReader(cuda_index)
        self._clock = clock
        self._process = psutil.Process()
        self._watch: Watch | None = None
        self._lock = threading.Lock()              # the thread's ticks and the last one never overlap
        self._begun, self._ended, self._ticking, self._idle, self._first = (threading.Event() for _ in range(5))
        threading.Thread(target=self._run, daemon=True, name="request-monitor").start()

    def read(self) -> int:
        if self.cuda_index is not None:
            import torch
            return int(torch.cuda.memory_reserved(self.cuda_index))
        return int(self._process.memory_info().rss)

    @contextlib.contextmanager
    def watching(self, watch: Watch):
        """Report on `watch` while the block runs, and what is left of it when the block ends."""
        self._watch = watch
        self._tick()                                # the memory before the request, before its clock starts
        watch.feed.streamer.first = self._first
        self._begun.set()
        self._ticking.wait()                        # the thread is in its wait: it takes no GIL from the prefill
        try:
            yield watch
        finally:
            self._begun.clear()
            self._first.set()                       # a request that ended without a token
            self._ended.set()
            self._idle.wait()
            for flag in (self._idle, self._ticking, self._ended, self._first):
                flag.clear()
            self._tick(final=True)                  # the last tokens and a final memory sample
            if not watch.live:
                for event in watch.held:
                    self.emit(event)
            self._watch = None

    def _tick(self, final: bool = False) -> None:
        with self._lock:
            watch = self._watch
            emit = self.emit if watch.live else watch.held.append
            if watch.cancel.is_set():
                watch.feed.streamer.stop = True
            if watch.t_start is not None and not watch.announced:
                feed = watch.feed
                emit(events.Started(feed.variant, feed.request_id, watch.t_start, watch.prompt_tokens, watch.cell))
                watch.announced = True
            for token in watch.feed.drain(final):
                emit(token)
            emit(events.MemorySample(watch.feed.variant, time.perf_counter(), self.read()))
            clock = self._clock.read() if self._clock is not None else None
            if clock is not None:
                watch.clocks_mhz.append(clock)

    def _run(self) -> None:
        while True:
            self._begun.wait()
            self._ticking.set()
            # no tick before the first token: one would take the GIL and a core from the prefill (on small, a
            # tick 50 ms after the prime began fell inside eager's 40 ms prefill); then one every TICK_S. A
            # prefill longer than PREFILL_QUIET_S is reported on (its start, memory, a cancel) from then on
            self._first.wait(PREFILL_QUIET_S)
            while not self._ended.wait(TICK_S):
                self._tick()
            self._idle.set()
