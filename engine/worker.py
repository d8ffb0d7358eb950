"""Worker process: load one variant once, warm it up, then serve requests, streaming events.

`serve` is a plain top-level function of picklable arguments (spawn start method); the process
layer (pool.py) knows nothing of models. Every failure becomes a `Failed` event.
"""
from __future__ import annotations

import contextlib
import gc
import os
import statistics
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from engine import events, hardware, metrics
from engine.presets import Preset
from engine.variants import CATALOG

MEMORY_SAMPLE_S = 0.05            # memory timeline resolution during generation
OVERHEAD_PAIRS = 3                # timed (engine, bare loop) pairs of the overhead probe
WARMUP_PROMPT = "Warm-up: the quick brown fox jumps over the lazy dog."


@dataclass(frozen=True)
class WorkerSpec:
    """What one worker process loads."""
    preset: Preset
    variant: str
    device: str                   # "cpu" or "cuda:N"
    threads: int | None = None    # torch CPU threads (None: torch's default)
    core: int | None = None       # pin the serving thread to this CPU core once loaded (GPU workers)


@dataclass(frozen=True)
class Probe:
    """A measurement that is not a request: "overhead" (the engine against a bare decode loop) or "bandwidth"."""
    request_id: int
    kind: str
    prompt_tokens: int = 128
    new_tokens: int = 64


@dataclass(frozen=True)
class Request:
    """One generation request. `prompt_tokens` replaces the prompt by a synthetic one of that length."""
    request_id: int
    prompt: str
    max_new_tokens: int
    ignore_eos: bool = False
    batch_size: int = 1
    prompt_tokens: int | None = None
    pad_ratio: float = 0.0        # share of pad tokens in the batch: sequences shortened, left-padded


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
        self._clock = hardware.ClockReader(cuda_index) if cuda_index is not None else None
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


def one_line(error: BaseException) -> str:
    """A failure as one line a person can act on."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}"[:300]


class Runner:
    """A loaded variant: the model, its tokenizer and how to call generate for it."""

    def __init__(self, spec: WorkerSpec, emit):
        import torch

        from engine import models
        self.spec, self.emit = spec, emit
        self.variant = CATALOG[spec.variant]
        self.torch = torch
        self.cuda_index = int(spec.device.split(":")[1]) if spec.device.startswith("cuda") else None
        if self.cuda_index is not None:
            torch.cuda.set_device(self.cuda_index)   # events and streams without a device name use this one
        self.model, self.tokenizer = models.load_model(spec.preset, self.variant, spec.device)
        self.weights_bytes = models.weights_bytes(self.model)
        self.input_table_bytes = models.input_table_bytes(self.model)
        self.cache_shape = models.kv_cache_shape(self.model)
        self.cache_shape["bytes_per_element"] = torch.finfo(getattr(torch, spec.preset.dtype)).bits // 8
        self.decoder = None
        if self.variant.compile:
            from engine.decode import CompiledDecoder
            self.decoder = CompiledDecoder(self.model, spec.preset.context_length, spec.device)
        if self.cuda_index is not None:
            # quantizing in place frees the 16-bit weights, fusing frees the unfused ones: give them back
            torch.cuda.empty_cache()

    def attention_context(self):
        """The SDPA backend forced by the variant, or nothing."""
        if self.variant.sdpa_backend is None:
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel
        return sdpa_kernel(getattr(SDPBackend, self.variant.sdpa_backend))

    def encode(self, request: Request):
        """Input ids of shape (batch, prompt) on the device, and the attention mask."""
        torch, tokenizer, preset = self.torch, self.tokenizer, self.spec.preset
        if request.prompt_tokens is not None:
            ids = tokenizer(request.prompt or "x", add_special_tokens=True)["input_ids"]
            ids = (ids * (request.prompt_tokens // max(len(ids), 1) + 1))[:request.prompt_tokens]
        elif preset.chat_template and tokenizer.chat_template:
            ids = tokenizer.apply_chat_template([{"role": "user", "content": request.prompt}],
                                                add_generation_prompt=True, tokenize=True)
            ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
        else:
            ids = tokenizer(request.prompt, add_special_tokens=True)["input_ids"]
        if len(ids) + request.max_new_tokens > preset.context_length:
            raise ValueError(f"the prompt is {len(ids)} tokens and {request.max_new_tokens} new tokens are "
                             f"asked for, more than the context of {preset.context_length}: shorten the prompt "
                             "or ask for fewer tokens")
        rows = [list(ids)] * request.batch_size
        mask = [[1] * len(ids)] * request.batch_size
        if request.pad_ratio and request.batch_size > 1:
            # lengths fall linearly from L to L(1 - 2r): the batch's mean pad share is r
            pad_id, length, last = self.tokenizer.pad_token_id, len(ids), request.batch_size - 1
            rows, mask = [], []
            for i in range(request.batch_size):
                keep = max(1, round(length * (1 - 2 * request.pad_ratio * i / last)))
                rows.append([pad_id] * (length - keep) + list(ids[length - keep:]))
                mask.append([0] * (length - keep) + [1] * keep)
        return (torch.tensor(rows, device=self.spec.device), torch.tensor(mask, device=self.spec.device))

    def generation_kwargs(self, request: Request) -> dict:
        kwargs = {"max_new_tokens": request.max_new_tokens, "do_sample": False,
                  "use_cache": self.variant.use_cache, "pad_token_id": self.tokenizer.pad_token_id}
        if self.ignores_eos(request):
            kwargs["min_new_tokens"] = request.max_new_tokens     # masks end-of-sequence until the end
        return kwargs

    def ignores_eos(self, request: Request) -> bool:
        return request.ignore_eos or self.spec.preset.always_ignore_eos

    def _decode(self, input_ids, mask, request: Request, streamer, cancel) -> None:
        """generate() for most variants; the lean compiled loop for a compiled one."""
        from transformers import StoppingCriteria, StoppingCriteriaList
        torch = self.torch
        if self.decoder is not None:
            eos = self.tokenizer.eos_token_id
            ignore = self.ignores_eos(request)
            self.decoder.run(input_ids, request.max_new_tokens, lambda tokens, ready: streamer.put(tokens),
                             lambda host: cancel.is_set() or (not ignore and bool((host == eos).all())),
                             attention_mask=mask)
            return

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool,
                                  device=input_ids.device)

        self.model.generate(input_ids=input_ids, attention_mask=mask, streamer=streamer,
                            stopping_criteria=StoppingCriteriaList([Cancelled()]),
                            **self.generation_kwargs(request))

    def generate(self, request: Request, cancel) -> events.Finished:
        torch = self.torch
        input_ids, mask = self.encode(request)
        if self.cuda_index is not None:
            torch.cuda.reset_peak_memory_stats(self.cuda_index)
        self.peak_rss_scope = "request" if hardware.reset_peak_rss() else "process"
        streamer = TimingStreamer(self.tokenizer, self.emit, self.spec.variant, request.request_id,
                                  prompt_first=self.decoder is None)
        sampler = MemorySampler(self.emit, self.spec.variant, self.cuda_index)
        if self.decoder is not None and not self.decoder.is_ready_for(input_ids, request.max_new_tokens):
            # a new cache bucket needs its CUDA graph (or a compile): make it before the clock starts
            self.emit(events.Status(self.spec.variant, "warming", "preparing the decode step for this length"))
            with torch.inference_mode():
                self.decoder.run(input_ids, min(request.max_new_tokens, 4), lambda *token: None, lambda host: False,
                                 attention_mask=mask)
        cores = hardware.usable_cores()
        # a CPU worker computes on `threads` cores; a GPU worker's one thread launches the kernels
        threads = torch.get_num_threads() if self.cuda_index is None else 1
        # everything but the decode itself is set up before the clock starts: reading every core's
        # CPU time or starting the sampler's thread must not count in the time to first token
        with hardware.HostLoad(cores) as host, sampler, self.attention_context(), torch.inference_mode():
            t_start = time.perf_counter()
            self.emit(events.Started(self.spec.variant, request.request_id, t_start, int(input_ids.shape[1])))
            self._decode(input_ids, mask, request, streamer, cancel)
        return events.Finished(
            variant=self.spec.variant, request_id=request.request_id, t_start=t_start,
            token_times=tuple(streamer.times), token_ids=tuple(streamer.ids), text=streamer.text,
            prompt_tokens=int(input_ids.shape[1]), batch_size=request.batch_size,
            cancelled=cancel.is_set() and len(streamer.ids) < request.max_new_tokens,
            memory=self.memory(), cache=dict(self.cache_shape),
            host={"cores": len(cores), "threads": threads, "others_cores": host.others_cores,
                  "resolution_cores": host.resolution_cores, "preemptions": host.preemptions,
                  **sampler.clock_mhz()})

    def memory(self) -> dict:
        """Peak allocator figures and NVML's view of this process (CUDA), and the request's peak RSS."""
        import psutil
        result = {"rss_bytes": int(psutil.Process().memory_info().rss), "peak_rss_bytes": hardware.peak_rss_bytes(),
                  "peak_rss_scope": self.peak_rss_scope}     # "request" where Linux lets the peak be reset
        if self.cuda_index is not None:
            torch = self.torch
            result["peak_allocated_bytes"] = int(torch.cuda.max_memory_allocated(self.cuda_index))
            result["peak_reserved_bytes"] = int(torch.cuda.max_memory_reserved(self.cuda_index))
            result["nvml_bytes"] = hardware.process_gpu_bytes(os.getpid(), self.cuda_index)
        return result

    def probe(self, probe: Probe, cancel) -> events.Measured:
        """Measurements outside a request: the engine's overhead per token, or the copy bandwidth."""
        torch = self.torch
        if probe.kind == "bandwidth":
            from engine.hardware import measure_copy_bandwidth
            name = torch.cuda.get_device_name(self.cuda_index) if self.cuda_index is not None else "cpu"
            value = measure_copy_bandwidth(name, self.spec.device)
            return events.Measured(self.spec.variant, probe.request_id, probe.kind, {"bytes_per_s": value})
        if probe.kind != "overhead":
            raise ValueError(f"unknown probe {probe.kind!r}")
        # the same request through the engine's path (streamer, events, memory sampler) and through
        # the bare loop, in pairs run back to back: a machine that drifts over minutes (clocks,
        # other work) moves both halves of a pair alike, where a request timed in the run and a
        # bare loop timed afterwards could differ by the drift alone. The order alternates within
        # pairs (ABBA) so a drift within a pair cancels too; the first pair warms up.
        request = Request(probe.request_id, "x", probe.new_tokens, True, 1, probe.prompt_tokens)
        input_ids, mask = self.encode(request)
        worker, bare = [], []
        for pair in range(1 + OVERHEAD_PAIRS):
            for half in ("worker", "bare") if pair % 2 else ("bare", "worker"):
                if half == "worker":
                    worker.append(metrics.tpot_s(self.generate(request, cancel).token_times))
                else:
                    bare.append(self._bare_tpot(input_ids, mask, probe.new_tokens))
        worker, bare = worker[1:], bare[1:]
        ratios = [w / b for w, b in zip(worker, bare)]
        return events.Measured(self.spec.variant, probe.request_id, probe.kind, {
            "ratio": statistics.median(ratios), "pair_ratios": ratios,
            "worker_tpot_s": statistics.median(worker), "bare_tpot_s": statistics.median(bare),
            "worker_runs_s": worker, "bare_runs_s": bare})

    def _bare_tpot(self, input_ids, mask, new_tokens: int) -> float:
        """TPOT of the decode path without the engine's streamer, events and memory sampler: the
        compiled loop (each token still copied to the host), or generate() timed as
        (T(N) - T(1)) / (N - 1), which removes the prefill; on the device's clock on a GPU."""
        from engine.decode import SpanClock, TokenClock
        torch, cuda = self.torch, self.cuda_index is not None
        with self.attention_context(), torch.inference_mode():
            if self.decoder is not None:
                clock = TokenClock(cuda)
                self.decoder.run(input_ids, new_tokens, clock, lambda host: False, attention_mask=mask)
                return clock.tpot_s()
            spans = []
            for n in (new_tokens, 1):
                with SpanClock(cuda) as span:
                    self.model.generate(input_ids=input_ids, attention_mask=mask,
                                        **self.generation_kwargs(Request(0, "x", n, True)))
                spans.append(span.seconds)
        return (spans[0] - spans[1]) / (new_tokens - 1)

    def warm_up(self, cancel) -> None:
        """Two short generations: the first picks kernels (and compiles), the second confirms."""
        for i, new in enumerate((4, 8)):
            self.generate(Request(-1 - i, WARMUP_PROMPT * (i + 1), new, ignore_eos=True), cancel)


def serve(spec: WorkerSpec, receive: Callable[[], object], emit: Callable[[object], None], cancel) -> None:
    """Process body: load, warm up, then answer what `receive()` returns (Request, Probe) until None."""
    name = spec.variant
    try:
        if spec.threads:
            import torch
            torch.set_num_threads(spec.threads)
        emit(events.Status(name, "loading", f"{spec.preset.title} on {spec.device}"))
        t0 = time.perf_counter()
        runner = Runner(spec, lambda event: None)
        load_s = time.perf_counter() - t0
        emit(events.Status(name, "warming", "first calls pick kernels" +
                           (" and compile" if runner.variant.compile else "")))
        t1 = time.perf_counter()
        runner.warm_up(cancel)
        # torch and transformers leave ~200k long-lived objects; a full collection walks them all
        # (66 ms on a 2-core CPU) and would stall a token at random. Frozen, they are skipped.
        gc.collect()
        gc.freeze()
        if spec.core is not None:     # after loading, which may use every core (quantizing on the CPU)
            with contextlib.suppress(OSError):      # an optimisation: never a reason to fail a load
                os.sched_setaffinity(0, {spec.core})
        runner.emit = emit
        label = runner.variant.display_label()
        if runner.decoder is not None:
            label += f" ({runner.decoder.step_kind})"
        emit(events.Loaded(name, load_s, time.perf_counter() - t1, runner.weights_bytes, spec.device,
                           spec.preset.dtype, label, runner.input_table_bytes))
    except BaseException as error:  # noqa: BLE001 - a failure is a value, sent to the orchestrator
        emit(events.Failed(name, "could not load: " + one_line(error), traceback.format_exc()))
        return
    while True:
        request = receive()
        if request is None:
            return
        try:
            if isinstance(request, Probe):
                emit(runner.probe(request, cancel))
                continue
            emit(events.Status(name, "generating"))
            emit(runner.generate(request, cancel))
        except BaseException as error:  # noqa: BLE001
            reason = one_line(error)
            if "out of memory" in reason.lower():
                reason = "out of GPU memory: " + reason + " (try fewer variants, a shorter prompt or fewer tokens)"
            emit(events.Failed(name, reason, traceback.format_exc(), request.request_id))
            if runner.cuda_index is not None:
                runner.torch.cuda.empty_cache()
