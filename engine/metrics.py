"""Latency, throughput and bandwidth metrics: pure functions of raw timestamps.

Definitions (shown in the dashboard too):
- TTFT  = t(first token) - t(request start)
- TPOT  = (t(last token) - t(first token)) / (N - 1); the first token is excluded (vLLM's TPOT)
- ITL   = gaps between consecutive tokens
- E2E   = t(last token) - t(request start) = TTFT + TPOT * (N - 1)
- tokens/s = new tokens of all sequences / E2E
- MBU   = (weight bytes + mean KV-cache bytes) / TPOT / peak memory bandwidth
Each function takes token times relative to the request start, in seconds.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


def relative_times(t_start: float, token_times: Sequence[float]) -> list[float]:
    """Token times as seconds since the request started."""
    return [t - t_start for t in token_times]


@dataclass(frozen=True)
class Timings:
    """One request's timing figures: the report, the live cards, the bench and the experiments all
    take them from here."""
    times: tuple[float, ...]        # each token's time since the request start, sequence 0
    ttft_s: float | None
    tpot_s: float | None
    e2e_s: float | None
    itl_s: tuple[float, ...]
    tokens_per_s: float | None      # new tokens of every sequence per second of E2E
    output_tokens: int              # new tokens of every sequence


def timings(t_start: float, token_times: Sequence[float], batch_size: int = 1) -> Timings:
    """The timing figures of a request that started at `t_start` (perf_counter()) and whose sequence 0
    got its tokens at `token_times`; a batch's other sequences count in the throughput."""
    times = tuple(relative_times(t_start, token_times))
    e2e = e2e_s(times)
    return Timings(times, ttft_s(times), tpot_s(times), e2e, tuple(itl_s(times)),
                   tokens_per_s(len(times) * batch_size, e2e), len(times) * batch_size)


def ttft_s(times: Sequence[float]) -> float | None:
    """Time to first token."""
    return times[0] if times else None


def e2e_s(times: Sequence[float]) -> float | None:
    """End-to-end latency: request start to last token."""
    return times[-1] if times else None


def tpot_s(times: Sequence[float]) -> float | None:
    """Time per output token after the first; None with fewer than two tokens."""
    if len(times) < 2:
        return None
    return (times[-1] - times[0]) / (len(times) - 1)


def itl_s(times: Sequence[float]) -> list[float]:
    """Inter-token latencies: the N-1 gaps between consecutive tokens."""
    return [b - a for a, b in zip(times, times[1:])]


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation between ranks (numpy's default)."""
    if not values:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be within 0..100, got {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float | None:
    """The 50th percentile."""
    return percentile(values, 50)


def tokens_per_s(output_tokens: int, e2e: float | None) -> float | None:
    """Throughput: new tokens of all sequences per second of end-to-end latency."""
    if not e2e or e2e <= 0 or output_tokens <= 0:
        return None
    return output_tokens / e2e


def kv_cache_bytes(layers: int, kv_heads: int, head_dim: int, tokens: float, batch_size: int,
                   bytes_per_element: int) -> int:
    """Bytes of keys and values held for `tokens` positions: 2 (K and V) x layers x kv_heads x head_dim."""
    return int(2 * layers * kv_heads * head_dim * tokens * batch_size * bytes_per_element)


def cached_positions(prompt_tokens: int, output_tokens: int) -> int:
    """Positions the KV cache holds once N tokens are out: the prompt and every new token but the last,
    which is never fed back."""
    return prompt_tokens + max(output_tokens - 1, 0)


def mean_decode_context(prompt_tokens: int, output_tokens: int) -> float:
    """Mean number of cached positions read per decode step.

    Decode step i (i = 1..N-1) attends over prompt + i positions, so the mean is prompt + N/2.
    """
    if output_tokens < 2:
        return float(prompt_tokens)
    return prompt_tokens + output_tokens / 2


def mbu(weights_bytes: int, kv_bytes: int, tpot: float | None, peak_bytes_per_s: float | None) -> float | None:
    """Model bandwidth utilisation: bytes a decode step must read / TPOT / peak bandwidth."""
    if not tpot or not peak_bytes_per_s:
        return None
    return (weights_bytes + kv_bytes) / tpot / peak_bytes_per_s


def first_difference(reference: Sequence[int], other: Sequence[int]) -> int | None:
    """Index of the first token where two outputs differ; None when one is a prefix-equal copy.

    Outputs of different lengths differ at the shorter length.
    """
    for i, (a, b) in enumerate(zip(reference, other)):
        if a != b:
            return i
    if len(reference) != len(other):
        return min(len(reference), len(other))
    return None


def identical_share(reference: Sequence[int], other: Sequence[int]) -> float | None:
    """Share of positions where two outputs hold the same token (over the longer output)."""
    longest = max(len(reference), len(other))
    if longest == 0:
        return None
    return sum(a == b for a, b in zip(reference, other)) / longest
