"""The worker process: its entry point, the outbox that carries its events up the pipe, and the
loop that loads one variant and answers requests until told to stop.

`main(spec, conn, cancel)` is what the process layer starts ("engine.worker.serve:main"), a plain
function of picklable arguments; `serve` is the same loop over plain callables, so that it can be
driven without a process. Every failure becomes a `Failed` event.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import multiprocessing
import multiprocessing.connection
import os
import threading
import time
import traceback
from collections.abc import Callable

from engine import events
from engine.events import Probe, WorkerSpec
from engine.worker import allocator
from engine.worker.contract import Runner

ORPHANED_EXIT_CODE = 3            # the worker's exit status when it ends because its parent died


def main(spec: WorkerSpec, conn, cancel) -> None:
    """Child-process entry: serve over the pipe `conn`, the events batched (see Outbox)."""
    exit_with_parent()                # first: the parent may die while torch is still importing
    spec, shown = own_gpu(spec), spec.device                       # before torch is imported
    quiet_libraries()
    if not spec.device.startswith("cuda"):
        allocator.steady()            # a request's temporaries reuse the last one's memory (engine/worker/allocator.py)
    outbox = Outbox(conn.send)

    def receive():
        try:
            return conn.recv()
        except EOFError:              # the orchestrator went away: stop
            return None

    try:
        serve(spec, receive, outbox.emit, cancel, shown)
    finally:
        with contextlib.suppress(OSError, ValueError):
            outbox.close()


def quiet_libraries() -> None:
    """Keep the terminal for the table: no download bars, and the libraries' notices at error level only
    (set before transformers is imported, which reads its verbosity then)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)   # "MatMul8bitLt: inputs will be cast" per matmul
    logging.getLogger("torchao").setLevel(logging.ERROR)        # its kernels built for other GPUs, one line each
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)   # torchao's enums, twice per worker


def own_gpu(spec: WorkerSpec) -> WorkerSpec:
    """On a host with several GPUs, make the worker see its own GPU alone (CUDA_VISIBLE_DEVICES, set
    before torch is imported): its torch device is then cuda:0; NVML's index stays the GPU's own
    (engine/hardware.py nvml_index reads the variable). The spec as given elsewhere."""
    if spec.own_gpu is None or not spec.device.startswith("cuda"):
        return spec
    os.environ["CUDA_VISIBLE_DEVICES"] = str(spec.own_gpu)
    return dataclasses.replace(spec, device="cuda:0")


def exit_with_parent() -> None:
    """End this process within moments of its parent's death, whatever it is doing.

    A parent killed outright (SIGKILL) cannot stop its workers, and a worker that is loading or
    generating reads its pipe only between requests. A daemon thread waits on the parent's
    sentinel instead (a pipe that reads as closed once the parent is gone) and ends the process
    with os._exit: there is nobody left to send events to, and the main thread may be deep in a
    decode step. Not prctl(PR_SET_PDEATHSIG): Linux sends that signal when the parent *thread*
    that started the child ends, and the engine starts workers from a run's thread, which ends
    after the run while its workers stay loaded for the next one.
    """
    parent = multiprocessing.parent_process()
    if parent is None:                # not started by multiprocessing: nobody to outlive
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(ORPHANED_EXIT_CODE)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


class Outbox:
    """A worker's events on their way to the orchestrator, through its pipe.

    Every message wakes the orchestrator, and a message per token slows every decode step of a small
    model measurably (BENCHMARKS.md, "The engine's cost per token on a 2-core CPU"): what a worker
    sends while a request is timed (its start, tokens, memory samples) therefore waits in a batch,
    sent as one list at most `period_s` after the first of them. Any other event sends the batch
    first, then itself, so the order is kept. The timestamps are taken when a token reaches the
    host, so batching moves no measurement; the page refreshes less often than this.
    """

    BATCHED = (events.Started, events.Token, events.MemorySample)     # sent inside a timed request

    def __init__(self, send, period_s: float = 0.05):
        self._send, self._period_s = send, period_s
        self._pending: list = []
        self._pending_lock = threading.Lock()    # held for an append: the decode loop never waits on a send
        self._send_lock = threading.Lock()       # one sender at a time, batches before what follows them
        self._waiting = threading.Event()        # a batch has begun
        self._closed = False
        self._thread = threading.Thread(target=self._flush_after_period, daemon=True, name="outbox")
        self._thread.start()

    def emit(self, event) -> None:
        if isinstance(event, self.BATCHED):
            with self._pending_lock:
                first = not self._pending
                self._pending.append(event)
            if first:                            # wake the flusher once a batch, not once a token
                self._waiting.set()
            return
        with self._send_lock:
            self._send_batch()
            self._send(event)

    def flush(self) -> None:
        with self._send_lock:
            self._send_batch()

    def close(self) -> None:
        self._closed = True
        self._waiting.set()
        self._thread.join(timeout=5.0)
        self.flush()

    def _send_batch(self) -> None:
        with self._pending_lock:
            batch, self._pending = self._pending, []
        if batch:
            self._send(batch)

    def _flush_after_period(self) -> None:
        while True:
            self._waiting.wait()
            if self._closed:
                return
            time.sleep(self._period_s)
            self._waiting.clear()
            try:
                self.flush()
            except (OSError, ValueError):        # the pipe is gone: the orchestrator stopped
                return
            if self._closed:                     # closed while this batch waited
                return


def one_line(error: BaseException) -> str:
    """A failure as one line a person can act on."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}"[:300]


def serve(spec: WorkerSpec, receive: Callable[[], object], emit: Callable[[object], None], cancel,
          shown: str | None = None) -> None:
    """Process body: load, warm up, then answer what `receive()` returns (Request, Probe) until None.
    `shown`: the device as the orchestrator names it (cuda:3 for a worker that sees it as cuda:0)."""
    try:
        runner = load(spec, emit, cancel, shown)
    except BaseException as error:  # noqa: BLE001 - a failure is a value, sent to the orchestrator
        emit(events.Failed(spec.variant, "could not load: " + one_line(error), traceback.format_exc()))
        return
    try:
        _answer(spec, runner, receive, emit, cancel)
    finally:
        close = getattr(runner, "close", None)       # a served variant stops the engine it started
        if close is not None:
            close()


def _answer(spec: WorkerSpec, runner, receive, emit, cancel) -> None:
    """Answer what `receive()` returns until None."""
    while (request := receive()) is not None:
        try:
            # a probe is the runner's to answer (a served one never imports the torch of the local probes)
            emit(runner.answer(request, cancel) if isinstance(request, Probe)
                 else runner.generate(request, cancel))   # a request's Started event says it is generating
        except BaseException as error:  # noqa: BLE001
            reason = one_line(error)
            if "out of memory" in reason.lower():
                reason = "out of GPU memory: " + reason + " (try fewer variants, a shorter prompt or fewer tokens)"
            emit(events.Failed(spec.variant, reason, traceback.format_exc(), request.request_id,
                               getattr(request, "cell", None)))
            if runner.cuda_index is not None:
                import torch
                torch.cuda.empty_cache()


LOAD_DELAY_ENV = "SIDEBYSIDE_LOAD_DELAY"


def load_delay_s(variant: str) -> float:
    """Seconds this variant's load is drawn out by, from $SIDEBYSIDE_LOAD_DELAY ("sdpa=3,fa2=1"):
    a slow load made on purpose, for the tests (and to see the page while one variant loads); the
    delay counts in its load time. Anything unreadable counts as no delay."""
    for item in os.environ.get(LOAD_DELAY_ENV, "").split(","):
        name, _, seconds = item.partition("=")
        if name.strip() == variant:
            with contextlib.suppress(ValueError):
                return max(float(seconds), 0.0)
    return 0.0


def load(spec: WorkerSpec, emit: Callable[[object], None], cancel, shown: str | None = None) -> Runner:
    """Load and warm up the variant, announcing each stage; its runner (engine/worker/contract.py), once
    `Loaded` is sent. A served variant (engine/worker/served.py) loads nothing: it asks its server what
    it serves."""
    if spec.endpoint is not None:
        from engine.worker import served
        t0 = time.perf_counter()
        runner = served.load(spec, emit)
        emit(events.Loaded(spec.variant, time.perf_counter() - t0, 0.0, 0, spec.device,
                           "the server's", runner.label))
        return runner
    if spec.threads:
        import torch
        torch.set_num_threads(spec.threads)
    emit(events.Status(spec.variant, "loading", f"loading the model on {shown or spec.device}"))
    from engine.worker.runner import Runner        # imports torch and transformers: after the status
    t0 = time.perf_counter()
    time.sleep(load_delay_s(spec.variant))
    runner = Runner(spec, lambda event: None)
    load_s = time.perf_counter() - t0
    emit(events.Status(spec.variant, "warming", "first calls pick kernels" +
                       (" and compile" if runner.variant.compile else "")))
    t1 = time.perf_counter()
    runner.warm_up(cancel)
    # torch and transformers leave many long-lived objects, and a full collection walks them all,
    # stalling a token at random (BENCHMARKS.md, "The worker's garbage collector"). Frozen, they are skipped.
    gc.collect()
    gc.freeze()
    if spec.core is not None:     # after loading, which may use every core (quantizing on the CPU)
        with contextlib.suppress(OSError):      # an optimisation: never a reason to fail a load
            os.sched_setaffinity(0, {spec.core})
    runner.emit = emit
    emit(events.Loaded(spec.variant, load_s, time.perf_counter() - t1, runner.weights_bytes, shown or spec.device,
                       spec.preset.dtype, runner.label, runner.input_table_bytes))
    return runner
