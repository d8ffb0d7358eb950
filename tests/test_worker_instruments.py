"""The worker's measuring instruments (engine/worker/instruments.py)."""
import threading
import time

import torch

from engine import events, presets
from engine.telemetry import ClockReader
from engine.worker.instruments import RequestMonitor, TimingStreamer, TokenFeed, Watch
from engine.worker.prompts import load_tokenizer


def put_all(streamer, ids):
    for token in ids:
        streamer.put(torch.tensor([token]))


def test_the_streamer_skips_the_prompt_and_only_stamps_and_keeps_ids():
    streamer = TimingStreamer()
    streamer.put(torch.tensor([[5, 6, 7]]))                  # generate() puts the prompt first
    before = time.perf_counter()
    put_all(streamer, [11, 12])
    assert streamer.ids == [11, 12] and before <= streamer.times[0] <= streamer.times[1] <= time.perf_counter()
    own_loop = TimingStreamer(prompt_first=False)             # the compiled loop puts tokens only
    put_all(own_loop, [3])
    assert own_loop.ids == [3]


def test_the_feed_sends_each_token_once_and_its_pieces_join_into_the_answer():
    tokenizer = load_tokenizer(presets.load("tiny"))
    text = "Caché ✓ done"                                     # multi-byte characters: one token per byte
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    streamer = TimingStreamer(prompt_first=False)
    feed = TokenFeed(tokenizer, streamer, "sdpa", 7)
    made = []
    for cut in (1, 5, 6, 9, len(ids)):                      # batches that split characters across drains
        put_all(streamer, ids[len(streamer.ids):cut])
        made += feed.drain()
    assert feed.drain() == []
    assert [t.index for t in made] == list(range(len(ids))) and [t.token_id for t in made] == ids
    assert all(t.request_id == 7 and t.variant == "sdpa" for t in made)
    assert [t.t for t in made] == streamer.times
    assert "".join(t.text for t in made) == feed.text == text
    assert all("\ufffd" not in t.text for t in made)          # a character is never sent half-made


def test_bytes_that_are_no_character_at_the_end_still_reach_the_answer():
    tokenizer = load_tokenizer(presets.load("tiny"))
    ids = tokenizer("ok é", add_special_tokens=False)["input_ids"]
    ids = ids[:-1]                                          # "é" cut in half: its first byte alone, at the end
    streamer = TimingStreamer(prompt_first=False)
    feed = TokenFeed(tokenizer, streamer, "bnb-4bit", 3)
    put_all(streamer, ids)
    made = feed.drain()
    assert "".join(t.text for t in made) == ""              # held back while the character may still end
    assert feed.drain(final=True) == [] and feed.text.startswith("ok ") and len(feed.text) == 4   # then given out
    view_text = "".join(t.text for t in made)
    from engine.views.run import RunView
    view = RunView(["bnb-4bit"])
    view.apply([events.Started("bnb-4bit", 3, 0.0, 2), *made,
                events.Finished("bnb-4bit", 3, 0.0, tuple(streamer.times), tuple(ids), feed.text, 2, 1, False,
                                {}, {}, {})])
    assert view.lanes["bnb-4bit"].text == feed.text != view_text          # the page shows it too


def test_the_monitor_announces_the_start_first_then_tokens_memory_and_the_gpu_clock():
    reads = iter([1980, 1980, 1410] + [1980] * 100)

    class Clock:
        def read(self):
            return next(reads)

    assert ClockReader(0).read() is None or torch.cuda.is_available()   # no GPU: unknown, no error
    tokenizer = load_tokenizer(presets.load("tiny"))
    sent = []
    monitor = RequestMonitor(sent.append, None, clock=Clock())
    for request_id in (3, 4):                                 # one thread serves request after request
        streamer, cancel = TimingStreamer(prompt_first=False), threading.Event()
        watch = Watch(TokenFeed(tokenizer, streamer, "sdpa", request_id), cancel, 12, cell=2)
        assert watch.clock_mhz() == {}
        with monitor.watching(watch):
            watch.t_start = time.perf_counter()
            put_all(streamer, [70, 71])
            time.sleep(0.12)
            cancel.set()                                      # the orchestrator's Stop
            time.sleep(0.12)
            assert streamer.stop                              # the decode loop ends at its next step
            put_all(streamer, [72])
        mine = [e for e in sent if getattr(e, "request_id", request_id) == request_id]
        started = [e for e in mine if isinstance(e, events.Started)]
        tokens = [e for e in mine if isinstance(e, events.Token)]
        assert len(started) == 1 and mine.index(started[0]) < mine.index(tokens[0])
        assert (started[0].t_start, started[0].prompt_tokens, started[0].cell) == (watch.t_start, 12, 2)
        assert [t.token_id for t in tokens] == [70, 71, 72]   # the last one sent when the request ended
        sent.clear()
    assert watch.clocks_mhz[:1] and min(watch.clocks_mhz) >= 1410


def test_a_request_that_is_not_live_sends_nothing_until_it_is_over():
    tokenizer = load_tokenizer(presets.load("tiny"))
    sent, streamer = [], TimingStreamer(prompt_first=False)
    monitor = RequestMonitor(sent.append, None)
    watch = Watch(TokenFeed(tokenizer, streamer, "sdpa", 5), threading.Event(), 4, live=False)
    with monitor.watching(watch):
        watch.t_start = time.perf_counter()
        put_all(streamer, [70, 71])
        time.sleep(0.15)                                       # three ticks
        assert sent == []
    kinds = [type(e) for e in sent]
    assert kinds.count(events.Started) == 1 and kinds.index(events.Started) < kinds.index(events.Token)
    assert kinds.count(events.Token) == 2 and kinds.count(events.MemorySample) >= 3


def test_the_monitor_leaves_the_prefill_alone_until_the_first_token_or_a_long_prefill(monkeypatch):
    from engine.worker import instruments
    tokenizer = load_tokenizer(presets.load("tiny"))
    sent = []
    monitor = RequestMonitor(sent.append, None)
    streamer = TimingStreamer(prompt_first=False)
    with monitor.watching(Watch(TokenFeed(tokenizer, streamer, "sdpa", 6), threading.Event(), 4)) as watch:
        watch.t_start = time.perf_counter()
        before = list(sent)                                    # the memory before the clock
        time.sleep(4 * instruments.TICK_S)                     # the prefill: no tick takes the GIL from it
        assert sent == before and [type(e) for e in before] == [events.MemorySample]
        put_all(streamer, [70])                                # the first token wakes the monitor
        time.sleep(3 * instruments.TICK_S)
        assert any(isinstance(e, events.Started) for e in sent) and any(isinstance(e, events.Token) for e in sent)
    monkeypatch.setattr(instruments, "PREFILL_QUIET_S", 2 * instruments.TICK_S)
    sent.clear()
    streamer = TimingStreamer(prompt_first=False)
    with monitor.watching(Watch(TokenFeed(tokenizer, streamer, "sdpa", 7), threading.Event(), 4)) as watch:
        watch.t_start = time.perf_counter()
        time.sleep(6 * instruments.TICK_S)                     # a long prefill is reported on after a while
        assert any(isinstance(e, events.Started) for e in sent)
        put_all(streamer, [70])
