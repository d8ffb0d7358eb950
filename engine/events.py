"""The protocol between worker processes and the orchestrator: small frozen picklable messages.

Down the pipe go `Request` and `Probe` (and None: stop); a process starts from a `WorkerSpec`.
Up the pipe come events. Every event names the variant it belongs to; those of a request carry
its request id and its grid cell, so the orchestrator never has to guess which cell an answer
belongs to. Times are `time.perf_counter()` seconds taken in
the worker; on Linux that clock is shared by all processes of a machine, so times from
different workers can be drawn on one axis (the race chart).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.presets import Preset
    from engine.remote import Endpoint


# ----------------------------------------------------------------------------- to a worker
@dataclass(frozen=True)
class WorkerSpec:
    """What one worker process loads."""
    preset: Preset
    variant: str
    device: str                   # "cpu", "cuda:N", or "remote:HOST:PORT" for a served variant
    threads: int | None = None    # torch CPU threads (None: torch's default)
    core: int | None = None       # pin the serving thread to this CPU core once loaded (GPU workers)
    # on a host with several GPUs, the one (NVML's index) this worker alone sees: the child sets
    # CUDA_VISIBLE_DEVICES to it before torch loads, and its torch device is then cuda:0
    own_gpu: int | None = None
    endpoint: Endpoint | None = None      # a served variant's server (its worker loads no model)
    shares_machine: bool = True           # its work runs on this machine's cores (False: a server elsewhere)
    launch_device: str = "cpu"            # where an engine its worker starts computes: "cpu" or "cuda"


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
    cell: int | None = None       # the grid cell it measures (None outside a run), echoed by its events
    live: bool = True             # stream its tokens while it runs; False: everything after its last token
    t_sent: float | None = None   # perf_counter() when the orchestrator sent it (the clock workers share)


@dataclass(frozen=True)
class Probe:
    """A measurement that is not a request: "overhead" (the engine against a bare decode loop),
    "bandwidth", or "quality" (the reference's `answer` to `request` scored by teacher forcing, against
    the `reference` log-probabilities, a NumPy float32 array (positions, vocabulary), when given)."""
    request_id: int
    kind: str
    prompt_tokens: int = 128
    new_tokens: int = 64
    request: Request | None = None
    answer: tuple[int, ...] = ()
    reference: object = None
    keep_logprobs: bool = False   # send the variant's own log-probabilities back too


# ----------------------------------------------------------------------------- from a worker

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
    """A request began in the worker: its clock starts here. `warmup`: an untimed warm-up (the
    orchestrator marks it; its tokens stream to the page, its figures count nowhere)."""
    variant: str
    request_id: int
    t_start: float
    prompt_tokens: int
    cell: int | None = None
    warmup: bool = False


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
    cell: int | None = None
    server: dict = field(default_factory=dict)   # a served variant's endpoint, version and own figures
    # perf_counter() of the steps before its clock, where known: "sent" (by the orchestrator), "received"
    # (by the worker), "prompt_ready" (encoded), "prepared" (set up), "start" (after the prime: t_start)
    phases: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Failed:
    """The variant could not serve the request (or could not load). One line, plus the traceback."""
    variant: str
    reason: str
    traceback: str = ""
    request_id: int | None = None  # None: not about one request (the variant could not load)
    cell: int | None = None


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
class Scored:
    """A variant's quality figures (engine/quality.py), after the run's timed requests. Sent by the
    orchestrator; the report's row for the run's first cell carries the same entry."""
    variant: str
    quality: dict


@dataclass(frozen=True)
class CellDone:
    """The engine adds nothing more to the variant's outcome in this cell: every timed repeat answered,
    or it failed, or it cannot run here. Sent by the orchestrator (it never crosses a pipe), right after
    the event that closed the cell; `outcome` (engine/outcomes.py Outcome) is what the variant produced
    there, as the report reads it, so a consumer never decides for itself which answer closes a cell."""
    variant: str
    cell: int
    outcome: object


@dataclass(frozen=True)
class RunDone:
    """The last event of a run: the report, shaped like `python -m engine run --json`."""
    report: dict


Event = (Status | Loaded | Started | Token | MemorySample | Finished | Measured | Failed | Unavailable | Scored
         | CellDone | RunDone)


def unbatch(message) -> list:
    """The events of one pipe message: a worker sends a batch (a list) or a single event."""
    return message if isinstance(message, list) else [message]
