"""Measurements a worker makes outside a request: the engine's cost per token against a bare decode
loop ("overhead"), the device's peak copy bandwidth ("bandwidth"), and the variant's distributions on
the reference's answer ("quality", engine/worker/quality.py).

Each probe is a function of the loaded `Runner`, the `Probe` and the cancel flag that returns the
values of its `Measured` event; `PROBES` names them.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
import tempfile
from pathlib import Path

import torch

from engine import events, metrics
from engine.events import Probe, Request
from engine.worker.decode import SpanClock, TokenClock

OVERHEAD_PAIRS = 3                # timed (engine, bare loop) pairs of the overhead probe


def answer(runner, probe: Probe, cancel) -> events.Measured:
    """The probe measured in this worker, as the event that carries its values."""
    if probe.kind not in PROBES:
        raise ValueError(f"unknown probe {probe.kind!r}; known: {', '.join(PROBES)}")
    values = PROBES[probe.kind](runner, probe, cancel)
    return events.Measured(runner.spec.variant, probe.request_id, probe.kind, values)


def overhead(runner, probe: Probe, cancel) -> dict:
    """TPOT through the engine's path (streamer, events, memory sampler) against the bare loop's.

    The same request both ways, in pairs run back to back: a machine that drifts over minutes
    (clocks, other work) moves both halves of a pair alike, where a request timed in the run and a
    bare loop timed afterwards could differ by the drift alone. The order alternates within pairs
    (ABBA) so a drift within a pair cancels too; the first pair warms up.
    """
    request = Request(probe.request_id, "x", probe.new_tokens, True, 1, probe.prompt_tokens)
    input_ids, mask = runner.encode(request)
    worker, bare = [], []
    for pair in range(1 + OVERHEAD_PAIRS):
        for half in ("worker", "bare") if pair % 2 else ("bare", "worker"):
            if half == "worker":
                worker.append(metrics.tpot_s(runner.generate(request, cancel).token_times))
            else:
                bare.append(bare_tpot(runner, input_ids, mask, probe.new_tokens))
    worker, bare = worker[1:], bare[1:]
    ratios = [w / b for w, b in zip(worker, bare)]
    return {"ratio": statistics.median(ratios), "pair_ratios": ratios,
            "worker_tpot_s": statistics.median(worker), "bare_tpot_s": statistics.median(bare),
            "worker_runs_s": worker, "bare_runs_s": bare}


def bare_tpot(runner, input_ids, mask, new_tokens: int) -> float:
    """TPOT of the decode path without the engine's streamer, events and memory sampler: the
    compiled loop (each token still copied to the host), or generate() timed as
    (T(N) - T(1)) / (N - 1), which removes the prefill; on the device's clock on a GPU."""
    cuda = runner.cuda_index is not None
    with runner.attention_context(), torch.inference_mode():
        if runner.decoder is not None:
            clock = TokenClock(cuda)
            runner.decoder.run(input_ids, new_tokens, clock, lambda host: False, attention_mask=mask)
            return clock.tpot_s()
        spans = []
        for n in (new_tokens, 1):
            with SpanClock(cuda) as span:
                runner.model.generate(input_ids=input_ids, attention_mask=mask,
                                      **runner.generation_kwargs(Request(0, "x", n, True)))
            spans.append(span.seconds)
    return (spans[0] - spans[1]) / (new_tokens - 1)


def bandwidth(runner, probe: Probe, cancel) -> dict:
    """The device's copy bandwidth, bytes/s."""
    name = torch.cuda.get_device_name(runner.cuda_index) if runner.cuda_index is not None else "cpu"
    return {"bytes_per_s": measure_copy_bandwidth(name, runner.spec.device)}


def quality(runner, probe: Probe, cancel) -> dict:
    from engine.worker.quality import score
    return score(runner, probe, cancel)


PROBES = {"overhead": overhead, "bandwidth": bandwidth, "quality": quality}


def bandwidth_cache_path() -> Path:
    """Where a GPU's measured copy bandwidth is kept, by device name."""
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "sidebyside" / "copy-bandwidth-best.json"   # best of the copies (older files held a mean)


def measure_copy_bandwidth(device_name: str, torch_device: str = "cuda", size_bytes: int | None = None,
                           repeats: int | None = None, use_cache: bool = True) -> float:
    """Peak memory bandwidth in bytes/s from a large device-to-device copy (bytes read + written).

    The best of `repeats` timed copies, as STREAM reports: a peak, so the slowest copies (another
    process, a clock ramping up) do not lower it. On a GPU it is measured once per device name
    and cached on disk, from 20 copies after 3 untimed ones. On a CPU, where other programs share
    the memory, it is measured afresh for each engine, from STREAM's 10 copies after one untimed
    copy that maps the destination's pages: under a second of one core.
    """
    cuda = torch_device.startswith("cuda")
    use_cache = use_cache and cuda
    cached = cached_bandwidth(device_name) if use_cache else None
    if cached is not None:
        return cached
    size_bytes = size_bytes or (1 << 30 if cuda else 1 << 28)   # far above any cache
    repeats = repeats or (20 if cuda else 10)
    src = torch.full((size_bytes // 4,), 1.0, dtype=torch.float32, device=torch_device)   # written: every page is real
    dst = torch.empty_like(src)
    for _ in range(3 if cuda else 1):
        dst.copy_(src)
    times = []
    for _ in range(repeats):
        with SpanClock(cuda) as span:               # CUDA events on a GPU: the copy on the device's clock
            dst.copy_(src)
        times.append(span.seconds)
    bytes_per_s = 2 * src.numel() * src.element_size() / min(times)
    del src, dst
    if use_cache:
        remember_bandwidth(device_name, bytes_per_s)
    return bytes_per_s


def read_bandwidth_cache() -> dict[str, float]:
    """The cached bandwidths by device name: {} when there is no file or it is unreadable or corrupt
    (not JSON, not a mapping), and without entries that are not a positive finite number."""
    try:
        data = json.loads(bandwidth_cache_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):                  # ValueError: also bytes that are not UTF-8
        return {}
    if not isinstance(data, dict):
        return {}
    return {name: value for name, value in ((name, _bytes_per_s(value)) for name, value in data.items())
            if value is not None}


def _bytes_per_s(value) -> float | None:
    """A cached value as bytes/s, or None when it is not a positive finite number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)
    except OverflowError:
        return None
    return value if math.isfinite(value) and value > 0 else None


def cached_bandwidth(device_name: str) -> float | None:
    """The bandwidth cached for this device name, bytes/s, or None (none cached, or the cache is corrupt)."""
    return read_bandwidth_cache().get(device_name)


def remember_bandwidth(device_name: str, bytes_per_s: float) -> None:
    """Keep a measured bandwidth in the cache, written atomically (a temporary file in the same folder,
    then os.replace): a reader sees the old file or the new one, never half of one. A corrupt cache is
    replaced; one that cannot be written only costs a measurement next time."""
    path = bandwidth_cache_path()
    cache = read_bandwidth_cache()                 # read again: another worker may have added its device
    cache[device_name] = float(bytes_per_s)
    temp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.",
                                         suffix=".tmp", delete=False) as file:
            temp = file.name
            json.dump(cache, file, indent=1)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
        temp = None
    except OSError:
        pass
    finally:
        if temp is not None:
            with contextlib.suppress(OSError):
                os.unlink(temp)
