"""A loaded variant: its model and tokenizer, and how one request is encoded, decoded and timed.

The clock of a request starts after everything but the decode is set up (the cores' CPU time read,
the request's monitor started, a new cache bucket prepared, the decode call's arguments built, the
model primed by a short forward pass) and each token is timed when it reaches the host
(`instruments.TimingStreamer`).
"""
from __future__ import annotations

import contextlib
import os
import time

import psutil
import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from engine import events, telemetry, topology
from engine.events import Request, WorkerSpec
from engine.variants import CATALOG
from engine.worker import decode, models
from engine.worker.prompts import prompt_ids
from engine.worker.instruments import FirstForward, RequestMonitor, TimingStreamer, TokenFeed, Watch

PRIME_TOKENS = 8                  # the untimed forward pass just before a request's clock (Runner.prime)
WARMUP_PROMPT = "Warm-up: the quick brown fox jumps over the lazy dog."


class Cancelled(StoppingCriteria):
    """Stops generate() at its next step once the streamer is told to stop (the monitor's thread sees the
    cancel): a plain attribute read per step, answered with one of two tensors made before the clock."""

    def __init__(self, streamer: TimingStreamer, batch: int, device):
        self.streamer = streamer
        self.go, self.halt = (torch.full((batch,), flag, dtype=torch.bool, device=device) for flag in (False, True))

    def __call__(self, input_ids, scores, **kwargs):
        return self.halt if self.streamer.stop else self.go


class Runner:
    """A loaded variant: the model, its tokenizer and how to call generate for it (a
    engine/worker/contract.py Runner)."""
    def __init__(self, spec: WorkerSpec, emit):
        self.spec, self.emit, self.device = spec, emit, spec.device
        self.variant = CATALOG[spec.variant]
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
            self.decoder = decode.CompiledDecoder(self.model, spec.preset.context_length, spec.device)
        if self.cuda_index is not None:
            # quantizing in place frees the 16-bit weights, fusing frees the unfused ones: give them back
            torch.cuda.empty_cache()
        self.peak_rss_scope = "process"
        self.monitor = RequestMonitor(lambda event: self.emit(event), self.cuda_index)

    @property
    def label(self) -> str:
        """What actually runs, e.g. "4-bit NF4 + SDPA" or a compiled decoder's step kind."""
        label = self.variant.display_label()
        return label + f" ({self.decoder.step_kind})" if self.decoder is not None else label

    def attention_context(self):
        """The SDPA backend forced by the variant, or nothing."""
        if self.variant.sdpa_backend is None:
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel
        return sdpa_kernel(getattr(SDPBackend, self.variant.sdpa_backend))

    def encode(self, request: Request):
        """Input ids of shape (batch, prompt) on the device, and the attention mask."""
        ids = self.prompt_ids(request)
        preset = self.spec.preset
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

    def prompt_ids(self, request: Request) -> list[int]:
        return prompt_ids(self.tokenizer, self.spec.preset, request)

    def generation_kwargs(self, request: Request) -> dict:
        kwargs = {"max_new_tokens": request.max_new_tokens, "do_sample": False,
                  "use_cache": self.variant.use_cache, "pad_token_id": self.tokenizer.pad_token_id}
        if self.ignores_eos(request):
            kwargs["min_new_tokens"] = request.max_new_tokens     # masks end-of-sequence until the end
        return kwargs

    def ignores_eos(self, request: Request) -> bool:
        return request.ignore_eos or self.spec.preset.always_ignore_eos

    def _decoding(self, input_ids, mask, request: Request, streamer: TimingStreamer):
        """The decode to time, made ready to call (its arguments built before the clock starts):
        generate() for most variants; the lean compiled loop for a compiled one."""
        if self.decoder is None:
            kwargs = dict(input_ids=input_ids, attention_mask=mask, streamer=streamer,
                          stopping_criteria=StoppingCriteriaList([Cancelled(streamer, len(input_ids), input_ids.device)]),
                          **self.generation_kwargs(request))
            return lambda: self.model.generate(**kwargs)
        eos, ignore = self.tokenizer.eos_token_id, self.ignores_eos(request)

        def stop(host) -> bool:
            return streamer.stop or (not ignore and bool((host == eos).all()))

        return lambda: self.decoder.run(input_ids, request.max_new_tokens, lambda tokens, ready: streamer.put(tokens),
                                        stop, attention_mask=mask)

    def prepare(self, input_ids, mask, request: Request) -> None:
        """A new cache bucket needs its CUDA graph (or a compile): make it before the clock starts."""
        if self.decoder is None or self.decoder.is_ready_for(input_ids, request.max_new_tokens):
            return
        self.emit(events.Status(self.spec.variant, "warming", "preparing the decode step for this length"))
        with torch.inference_mode():
            self.decoder.run(input_ids, min(request.max_new_tokens, 4), lambda *token: None, lambda host: False,
                             attention_mask=mask)

    def prime(self, input_ids, mask) -> None:
        """One short untimed forward pass of the model right before the clock starts, so that a timed
        request meets the machine as a back-to-back loop of requests leaves it. Between two requests a
        worker waits on its pipe, and a core that idled has (most likely) lost the model's code and data
        from its caches: on tiny, 5 ms asleep cost a 128-token prefill 9%, which a forward of 8 tokens just
        before it won back (BENCHMARKS.md, "What idling before a request costs"). The compiled
        decoder's steps are replayed graphs, primed by its own preparation."""
        if self.decoder is not None:
            return
        width = min(PRIME_TOKENS, int(input_ids.shape[1]))
        self.model(input_ids=input_ids[:1, -width:], attention_mask=mask[:1, -width:], use_cache=False)
        if self.cuda_index is not None:
            torch.cuda.synchronize(self.cuda_index)     # its kernels end before the clock starts

    def answer(self, probe, cancel) -> events.Measured:
        """A probe measured on this model (engine/worker/probes.py)."""
        from engine.worker import probes
        return probes.answer(self, probe, cancel)

    def generate(self, request: Request, cancel) -> events.Finished:
        """Serve one request, streaming its Started and Token events; its raw measurements."""
        received = time.perf_counter()
        input_ids, mask = self.encode(request)
        prompt_ready = time.perf_counter()
        if self.cuda_index is not None:
            torch.cuda.reset_peak_memory_stats(self.cuda_index)
        self.peak_rss_scope = "request" if telemetry.reset_peak_rss() else "process"
        name = self.spec.variant
        streamer = TimingStreamer(prompt_first=self.decoder is None)
        feed = TokenFeed(self.tokenizer, streamer, name, request.request_id)
        watch = Watch(feed, cancel, int(input_ids.shape[1]), request.cell, live=request.live)
        self.prepare(input_ids, mask, request)
        decoding = self._decoding(input_ids, mask, request, streamer)
        cores = topology.usable_cores()
        # a CPU worker computes on `threads` cores; a GPU worker's one thread launches the kernels
        threads = torch.get_num_threads() if self.cuda_index is None else 1
        # everything but the decode itself is set up before the clock starts (reading every core's CPU
        # time, starting the monitor's thread), and the clock's start is one attribute store: events,
        # text and memory samples are the monitor's work, on its own thread
        with telemetry.HostLoad(cores) as host, self.monitor.watching(watch), self.attention_context(), \
                torch.inference_mode():
            prepared = time.perf_counter()
            self.prime(input_ids, mask)
            prefill = FirstForward(self.model)
            watch.t_start = t_start = time.perf_counter()
            try:
                decoding()
            finally:
                prefill.close()
        return events.Finished(
            variant=name, request_id=request.request_id, t_start=t_start,
            token_times=tuple(streamer.times), token_ids=tuple(streamer.ids), text=feed.text,
            prompt_tokens=int(input_ids.shape[1]), batch_size=request.batch_size,
            cancelled=streamer.stop and len(streamer.ids) < request.max_new_tokens,
            memory=self.memory(), cache=dict(self.cache_shape),
            host={"cores": len(cores), "threads": threads, "others_cores": host.others_cores,
                  "resolution_cores": host.resolution_cores, "preemptions": host.preemptions,
                  **watch.clock_mhz()},
            cell=request.cell, phases={"sent": request.t_sent, "received": received, "prompt_ready": prompt_ready,
                                       "prepared": prepared, "start": t_start, "prefill_began": prefill.began,
                                       "prefill_ended": prefill.ended,
                                       "first_token": streamer.times[0] if streamer.times else None})

    def memory(self) -> dict:
        """Peak allocator figures and NVML's view of this process (CUDA), and the request's peak RSS."""
        result = {"rss_bytes": int(psutil.Process().memory_info().rss), "peak_rss_bytes": telemetry.peak_rss_bytes(),
                  "peak_rss_scope": self.peak_rss_scope}     # "request" where Linux lets the peak be reset
        if self.cuda_index is not None:
            result["peak_allocated_bytes"] = int(torch.cuda.max_memory_allocated(self.cuda_index))
            result["peak_reserved_bytes"] = int(torch.cuda.max_memory_reserved(self.cuda_index))
            result["nvml_bytes"] = telemetry.process_gpu_bytes(os.getpid(), self.cuda_index)
        return result

    def warm_up(self, cancel) -> None:
        """Two short generations: the first picks kernels (and compiles), the second confirms."""
        for i, new in enumerate((4, 8)):
            self.generate(Request(-1 - i, WARMUP_PROMPT * (i + 1), new, ignore_eos=True), cancel)
