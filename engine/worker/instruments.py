"""The worker's instruments around a timed request: the per-token streamer and the memory sampler.

Both emit events as they measure; the worker routes them up its pipe (see serve.Outbox).
"""
from __future__ import annotations

import statistics
import threading
import time

from engine import events, telemetry

MEMORY_SAMPLE_S = 0.05            # memory timeline resolution during generation


class TimingStreamer:
    """The one per-token hook: timestamps each new token in `put`, decodes it and emits an event.

    generate() calls put() first with the prompt (skipped), then once per step with the new
    token ids of shape (batch,), already copied to the host, so the device has finished the step.
    """

    def __init__(self, tokenizer, emit, variant: str, request_id: int, prompt_first: bool = True):
        self.tokenizer, self.emit, self.variant, self.request_id = tokenizer, emit, variant, request_id
        self.times: list[float] = []
        self.ids: list[int] = []
        self._saw_prompt = not prompt_first        # generate() puts the prompt first; our own loops do not
        self._prefix = 0          # incremental detokenisation offsets (text of ids[prefix:read] is known)
        self._read = 0
        self.text_parts: list[str] = []

    def put(self, value) -> None:
        now = time.perf_counter()
        if not self._saw_prompt:
            self._saw_prompt = True
            return
        token_id = int(value.reshape(-1)[0])
        self.times.append(now)
        self.ids.append(token_id)
        piece = self._decode_piece()
        self.emit(events.Token(self.variant, self.request_id, len(self.ids) - 1, token_id, piece, now))

    def _decode_piece(self) -> str:
        decode = self.tokenizer.decode
        known = decode(self.ids[self._prefix:self._read], skip_special_tokens=True)
        full = decode(self.ids[self._prefix:], skip_special_tokens=True)
        if len(full) > len(known) and not full.endswith("\ufffd"):   # a complete character arrived
            self._prefix, self._read = self._read, len(self.ids)
            piece = full[len(known):]
            self.text_parts.append(piece)
            return piece
        return ""

    def end(self) -> None:
        pass

    @property
    def text(self) -> str:
        return "".join(self.text_parts)


class MemorySampler:
    """Samples the worker's memory every MEMORY_SAMPLE_S seconds in a thread while generating, and
    on a GPU its SM clock: a repeat slower than the others at a lower clock was slowed by the GPU."""

    def __init__(self, emit, variant: str, cuda_index: int | None):
        self.emit, self.variant, self.cuda_index = emit, variant, cuda_index
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._clock = telemetry.ClockReader(cuda_index) if cuda_index is not None else None
        self.clocks_mhz: list[int] = []

    def read(self) -> int:
        if self.cuda_index is not None:
            import torch
            return int(torch.cuda.memory_reserved(self.cuda_index))
        import psutil
        return int(psutil.Process().memory_info().rss)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.emit(events.MemorySample(self.variant, time.perf_counter(), self.read()))
            clock = self._clock.read() if self._clock is not None else None
            if clock is not None:
                self.clocks_mhz.append(clock)
            self._stop.wait(MEMORY_SAMPLE_S)

    def clock_mhz(self) -> dict:
        """The SM clock over the request: its median and lowest sample (empty where unknown)."""
        if not self.clocks_mhz:
            return {}
        return {"sm_clock_mhz": statistics.median(self.clocks_mhz), "sm_clock_mhz_min": min(self.clocks_mhz)}

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        if self._clock is not None:
            self._clock.close()
        self.emit(events.MemorySample(self.variant, time.perf_counter(), self.read()))
