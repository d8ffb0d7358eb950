"""What a served model's answer and its server's metrics say, as plain arithmetic: the chunks of a
stream counted as tokens, and the server's own figures over one request. No I/O here; the worker
that streams and reads them is engine/worker/served.py.

A chunk that carries several tokens shares out the time since the chunk before it among them
(`share_gap`): inter-token latency per token, not per chunk. A stream without token ids whose server
counted more tokens than it sent chunks is counted by the server's count (`by_server_count`).
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

NO_TOKEN_ID = -1                # a token the server streamed as text, without its id
# vLLM's histograms (name -> what the server measured), read before and after each request
SERVER_HISTOGRAMS = {"ttft_s": "vllm:time_to_first_token_seconds",
                     "tpot_s": "vllm:request_time_per_output_token_seconds",
                     "queue_s": "vllm:request_queue_time_seconds",
                     "e2e_s": "vllm:e2e_request_latency_seconds"}


def share_gap(previous: float, now: float, count: int) -> list[float]:
    """The times of `count` tokens that arrived together at `now`: each a share of the gap since
    `previous` (the chunk before), the last at `now` itself."""
    return [previous + (now - previous) * (i + 1) / count for i in range(count)]


def read_metrics(text: str, model: str | None) -> dict[str, float]:
    """Prometheus text format -> {series name: value}, summed over the series of `model` (its
    `model_name` label; every series when None or unlabelled)."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z_:][\w:]*)(\{[^}]*\})?\s+(\S+)(\s+\S+)?", line.strip())
        if not match:
            continue
        name, labels, value = match.group(1), match.group(2) or "", match.group(3)
        labelled = re.search(r'model_name="([^"]*)"', labels)
        if model is not None and labelled and labelled.group(1) != model:
            continue
        if 'le="' in labels:                     # a histogram's buckets: only _sum and _count are used
            continue
        try:
            values[name] = values.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return values


def server_figures(before: dict[str, float] | None, after: dict[str, float] | None) -> dict:
    """The server's own mean per request of each SERVER_HISTOGRAMS figure over one request (the
    difference of its _sum over the difference of its _count); {} when it exposes none."""
    if before is None or after is None:
        return {}
    found = {}
    for key, name in SERVER_HISTOGRAMS.items():
        count = after.get(name + "_count", 0.0) - before.get(name + "_count", 0.0)
        if count > 0:
            found[key] = (after.get(name + "_sum", 0.0) - before.get(name + "_sum", 0.0)) / count
    return found


@dataclass
class Stream:
    """What one streamed completion gave: sequence 0's tokens with their arrival times."""
    times: list[float] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    text: str = ""
    usage_tokens: int | None = None      # the server's completion_tokens (all sequences)
    multi_token_chunks: int = 0
    cut: str | None = None               # why the stream broke off, when it did
    timings: dict | None = None          # the server's own timings of the request (llama.cpp's `timings`)


def own_timings(timings: dict | None) -> dict:
    """llama.cpp's own figures of one request, from the `timings` of its last chunk: its prompt processing
    (prefill, its time to first token) and its time per predicted token, as llama.cpp computes them; {}
    from a server that sends none."""
    if not timings:
        return {}
    found = {"timings": dict(timings)}
    if isinstance(timings.get("prompt_ms"), (int, float)):
        found["ttft_s"] = timings["prompt_ms"] / 1000
    if isinstance(timings.get("predicted_per_token_ms"), (int, float)):
        found["tpot_s"] = timings["predicted_per_token_ms"] / 1000
    return found


@dataclass(frozen=True)
class Counted:
    """Sequence 0's tokens as the timings count them, and what the row says about the count."""
    times: tuple[float, ...]
    ids: tuple[int, ...]
    multi_token_chunks: int
    note: str | None = None


def by_server_count(stream: Stream, batch_size: int = 1) -> Counted:
    """The stream's tokens counted by the server's own count (`usage`, all sequences) where the two differ.

    A stream without token ids times its chunks, not its tokens: when the server counted N tokens of
    sequence 0 in M < N chunks (M >= 2), the first chunk keeps the first token (TTFT) and the other
    N - 1 are shared out evenly over the M - 1 chunks after it, each chunk's tokens splitting the time
    since the one before; the last token keeps the last chunk's time, so TPOT = (t_last - t_first) / (N - 1).
    Ids the server did send are exact: a different count is only named.
    """
    carried = len(stream.times)
    plain = Counted(tuple(stream.times), tuple(stream.ids), stream.multi_token_chunks)
    if stream.usage_tokens is None or carried == 0:
        return plain
    server = stream.usage_tokens // max(batch_size, 1)
    if server == carried:
        return plain
    without_ids = all(token == NO_TOKEN_ID for token in stream.ids)
    if not without_ids or server < carried or carried < 2:
        why = ("the server sent the ids" if not without_ids else
               "too few chunks to share them out" if carried < 2 else "the server counted fewer")
        return dataclasses.replace(plain, note=f"the stream carried {carried} tokens, the server counted {server}: "
                                              f"timings use the stream's ({why})")
    times, several = [stream.times[0]], 0
    later = carried - 1
    for j in range(1, carried):
        share = round(j * (server - 1) / later) - round((j - 1) * (server - 1) / later)
        times += share_gap(stream.times[j - 1], stream.times[j], share)
        several += share > 1
    note = (f"the server counted {server} tokens in {carried} chunks without token ids: the {server - carried} "
            f"tokens more are shared out evenly over the chunks after the first, so TPOT is over its count")
    return Counted(tuple(times), (NO_TOKEN_ID,) * server, several, note)
