"""The protocol between worker processes and the orchestrator: small frozen picklable events.

Every event names the variant it belongs to. Times are `time.perf_counter()` seconds taken in
the worker; on Linux that clock is shared by all processes of a machine, so times from
different workers can be drawn on one axis (the race chart).
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Status:
    """A variant changed stage: loading, warming, queued, generating, unloading."""
    variant: str
    stage: str
    detail: str = ""


@dataclass(frozen=True)
class Loaded:
    """The worker holds the model and has warmed it up; it is ready for requests."""
    variant: str
    load_s: float
    warmup_s: float
    weights_bytes: int
    device: str
    dtype: str
    label: str                      # what actually runs, e.g. "4-bit NF4 + SDPA"
    input_table_bytes: int = 0      # the input embedding table, when not shared with the output head:
                                    # a decode step reads one row of it per sequence, not all of it


@dataclass(frozen=True)
class Started:
    """A request began in the worker: its clock starts here."""
    variant: str
    request_id: int
    t_start: float
    prompt_tokens: int


@dataclass(frozen=True)
class Token:
    """One new token (of sequence 0) reached the host."""
    variant: str
    request_id: int
    index: int                      # 0-based position among the new tokens
    token_id: int
    text: str                       # the new piece of decoded text (may be "" mid-character)
    t: float                        # perf_counter() when `put` received it


@dataclass(frozen=True)
class MemorySample:
    """Memory of the worker process, sampled during generation."""
    variant: str
    t: float
    bytes: int                      # torch reserved on CUDA, resident set size on a CPU


@dataclass(frozen=True)
class Finished:
    """A request ended (all tokens, or cancelled). Raw measurements; metrics are derived later."""
    variant: str
    request_id: int
    t_start: float
    token_times: tuple[float, ...]  # perf_counter() of every new token, sequence 0
    token_ids: tuple[int, ...]
    text: str
    prompt_tokens: int
    batch_size: int
    cancelled: bool
    memory: dict = field(default_factory=dict)   # peak_allocated_bytes, peak_reserved_bytes, nvml_bytes, rss_bytes
    cache: dict = field(default_factory=dict)    # KV-cache shape facts: layers, kv_heads, head_dim, bytes_per_element
    # the machine around it: cores, threads, others_cores, resolution_cores, preemptions (of the
    # serving thread) and, on a GPU, sm_clock_mhz and sm_clock_mhz_min
    host: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Failed:
    """The variant could not serve the request (or could not load). One line, plus the traceback."""
    variant: str
    reason: str
    traceback: str = ""
    request_id: int | None = None


@dataclass(frozen=True)
class Unavailable:
    """The variant cannot run here; the reason says why and what would make it run."""
    variant: str
    reason: str


@dataclass(frozen=True)
class Measured:
    """The answer to a probe (a measurement outside a request)."""
    variant: str
    request_id: int
    kind: str
    values: dict


@dataclass(frozen=True)
class RunDone:
    """The last event of a run: the report, shaped like `python -m engine run --json`."""
    report: dict


Event = Status | Loaded | Started | Token | MemorySample | Finished | Measured | Failed | Unavailable | RunDone
