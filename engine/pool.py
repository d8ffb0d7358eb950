"""Worker processes and scheduling: start, load, fair or race generation, cancel, time out.

The pump runs in its own thread and hands events to the consumer through an unbounded queue,
so a slow consumer (a browser) never slows a worker. Each worker has its own pipe: a worker
killed mid-write cannot jam the others (a shared multiprocessing.Queue lock could).
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import multiprocessing
import multiprocessing.connection
import os
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from engine import budget, events, hardware, models, report
from engine.presets import Preset
from engine.variants import CATALOG, Variant
from engine.worker import Request, WorkerSpec

MODES = ("fair", "race")
CONTEXT = multiprocessing.get_context("spawn")
CANCEL_GRACE_S = 10.0             # after a cancel or timeout, how long a worker may take to stop


class InputError(ValueError):
    """The run's input is unusable; the message says what to do."""


@dataclass(frozen=True)
class Cell:
    """One point of a grid: what differs from the run's own settings (None keeps the run's)."""
    prompt_tokens: int | None = None     # a synthetic prompt of this many tokens, built from the prompt
    max_new_tokens: int | None = None
    batch_size: int | None = None
    pad_ratio: float = 0.0               # share of pad tokens in the batch (left padding), e.g. 0.3

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def free_core(cores: list[int], taken: set[int | None], siblings=hardware.core_siblings) -> int | None:
    """A CPU core of its own for a GPU worker, or None when none is left.

    A GPU worker's one Python thread launches every kernel: when it shares a core or moves between
    cores mid-run, its TPOT jitters. The first core is left to the orchestrator, the page and the
    rest of the machine (none of which is pinned). Two hyper-threads of one physical core share
    its execution units, so a core whose physical core is free (not the first core's, not another
    worker's) comes first; a hyper-thread of a taken one only when no such core is left.
    """
    taken = {core for core in taken if core is not None}
    free = [core for core in cores[1:] if core not in taken]
    shared = set().union(*(siblings(core) for core in [*cores[:1], *taken]))
    return next((core for core in free if not siblings(core) & shared), free[0] if free else None)


class Outbox:
    """A worker's events on their way to the orchestrator, through its pipe.

    Every message wakes the orchestrator, and a message per token cost the decode loop 0.12-0.16 ms
    a token on a 2-core CPU (see BENCHMARKS.md): what a worker sends while a request is
    timed (its start, tokens, memory samples) therefore waits in a batch, sent as one list at most
    `period_s` after the first of them. Any other event sends the batch first, then itself, so the
    order is kept. The timestamps are taken when a token reaches the host, so batching moves no
    measurement; the page refreshes less often than this.
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


def unbatch(message) -> list:
    """The events of one pipe message: a batch (list) or a single event."""
    return message if isinstance(message, list) else [message]


def _worker_main(spec, conn, cancel):
    """Child-process entry: route the worker's events into its pipe, batched (see Outbox)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")     # keep the terminal for the table
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import logging
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)   # "MatMul8bitLt: inputs will be cast" per matmul
    from engine.worker import serve
    outbox = Outbox(conn.send)

    def receive():
        try:
            return conn.recv()
        except EOFError:              # the orchestrator went away: stop
            return None

    try:
        serve(spec, receive, outbox.emit, cancel)
    finally:
        with contextlib.suppress(OSError, ValueError):
            outbox.close()


@dataclass
class Worker:
    """One worker process as the orchestrator tracks it."""
    variant: str
    process: multiprocessing.Process
    conn: multiprocessing.connection.Connection
    cancel: object
    spec: WorkerSpec
    loaded: events.Loaded | None = None
    failed: events.Failed | None = None

    @property
    def ready(self) -> bool:
        return self.loaded is not None and self.process.is_alive()


@dataclass
class Outcome:
    """What one variant produced in a run."""
    variant: str
    finished: list = field(default_factory=list)     # Finished events, one per repeat
    failed: events.Failed | None = None
    unavailable: str | None = None
    placement: str | None = None                  # "resident" or "swapped"; None if it never ran
    contended: bool = False
    loaded: events.Loaded | None = None
    t_ready: float | None = None                       # perf_counter() when its group began generating


class Run:
    """A run in progress: iterate it for events (the last is RunDone), or cancel it."""
    _ids = itertools.count(1)

    def __init__(self):
        self.id = next(Run._ids)
        self.queue: queue.Queue = queue.Queue()
        self.cancelled = threading.Event()
        self.finished = threading.Event()

    def __iter__(self) -> Iterator[events.Event]:
        while True:
            event = self.queue.get()
            yield event
            if isinstance(event, events.RunDone):
                return

    def drain(self, timeout: float) -> list[events.Event]:
        """Block up to `timeout` for one event, then take all that are waiting (for batched UIs)."""
        try:
            batch = [self.queue.get(timeout=timeout)]
        except queue.Empty:
            return []
        while True:
            try:
                batch.append(self.queue.get_nowait())
            except queue.Empty:
                return batch

    def cancel(self) -> None:
        self.cancelled.set()


class Engine:
    """The workers of one preset, kept loaded between runs; one run at a time per engine."""

    def __init__(self, preset: Preset, request_timeout_s: float = 900.0, load_timeout_s: float = 3600.0,
                 threads: int | None = None, spare_cores: int = 0):
        """`threads`: torch CPU threads per worker (None: torch's default, one per core). On a CPU
        device, `spare_cores` leaves that many cores to other work instead (the dashboard leaves one
        to itself and the browser: a decode step that waits for every core stalls whenever one of
        them is taken away, and the page is drawn while the variants run)."""
        self.preset = preset
        self.device = hardware.resolve(preset.device)
        self.request_timeout_s = request_timeout_s
        self.load_timeout_s = load_timeout_s
        if threads is not None and threads < 1:
            raise InputError(f"threads must be at least 1, got {threads}")
        if threads is None and spare_cores and self.device.kind == "cpu":
            threads = max(len(hardware.usable_cores()) - spare_cores, 1)
        self.threads = threads
        self.workers: dict[str, Worker] = {}
        self.bandwidth: float | None = None        # the device's measured copy bandwidth, bytes/s
        self.active: Run | None = None
        self._lock = threading.Lock()
        self._request_ids = itertools.count(1)

    # ------------------------------------------------------------------ public surface
    def variant_choices(self) -> list[tuple[str, str, str | None]]:
        """(name, label, reason it cannot run here or None) for every catalog variant."""
        return [(v.name, v.display_label(), v.unavailable_reason(self.preset, self.device))
                for v in CATALOG.values()]

    def validate(self, prompt: str, variants: list[str], max_new_tokens: int, mode: str = "fair",
                 repeats: int = 1, batch_size: int = 1) -> int:
        """Raise InputError with what to do; return the prompt's token count."""
        preset = self.preset
        if not variants:
            raise InputError("no variant selected: choose at least one (e.g. baseline,sdpa)")
        unknown = [v for v in variants if v not in CATALOG]
        if unknown:
            raise InputError(f"unknown variant {unknown[0]!r}; available: {', '.join(CATALOG)}")
        if len(set(variants)) != len(variants):
            raise InputError("a variant is listed twice: list each once")
        if mode not in MODES:
            raise InputError(f"mode {mode!r} is not one of {', '.join(MODES)}")
        if not 1 <= max_new_tokens <= preset.max_new_tokens_cap:
            raise InputError(f"max new tokens must be between 1 and {preset.max_new_tokens_cap} for preset "
                             f"{preset.name!r}, got {max_new_tokens}")
        if repeats < 1 or batch_size < 1:
            raise InputError("repeats and batch size must be at least 1")
        if not prompt.strip():
            raise InputError("the prompt is empty: type a prompt (or pick an example)")
        try:
            models.ensure_source(preset)
        except models.ModelSourceError as error:
            raise InputError(str(error)) from None
        count = models.count_prompt_tokens(preset, prompt)
        if count + max_new_tokens > preset.context_length:
            raise InputError(f"the prompt is {count} tokens and {max_new_tokens} new tokens are asked for: "
                             f"more than the context of {preset.context_length} tokens of preset "
                             f"{preset.name!r}; shorten the prompt or ask for fewer tokens")
        return count

    def start(self, prompt: str, variants: list[str], max_new_tokens: int, mode: str = "fair",
              repeats: int = 1, ignore_eos: bool = False, batch_size: int = 1,
              prompt_lengths: list[int] | None = None, warmup_requests: int = 0,
              cells: list[Cell] | None = None) -> Run:
        """Validate, then run in a background thread; raises InputError before starting anything.

        `cells` makes a grid: each variant answers every cell (a synthetic prompt length, a number
        of new tokens, a batch size, a padding ratio), one result row per (variant, cell);
        `prompt_lengths` is shorthand for cells that differ in prompt length only.
        `warmup_requests` unmeasured requests precede the measured ones in every cell.
        """
        if prompt_lengths:
            cells = [Cell(prompt_tokens=length) for length in prompt_lengths]
        count = self.validate(prompt, variants, max_new_tokens, mode, repeats, batch_size)
        for cell in cells or []:
            self._validate_cell(cell, count, max_new_tokens, batch_size)
        run = Run()
        args = (run, prompt, list(variants), max_new_tokens, mode, repeats, ignore_eos, batch_size,
                cells, warmup_requests, count)
        threading.Thread(target=self._run_guarded, args=args, daemon=True, name=f"run-{run.id}").start()
        return run

    def _validate_cell(self, cell: Cell, prompt_count: int, max_new_tokens: int, batch_size: int) -> None:
        new = cell.max_new_tokens or max_new_tokens
        tokens = cell.prompt_tokens or prompt_count
        if not 1 <= new <= self.preset.max_new_tokens_cap:
            raise InputError(f"a cell asks for {new} new tokens; preset {self.preset.name!r} allows 1 to "
                             f"{self.preset.max_new_tokens_cap}")
        if tokens + new > self.preset.context_length:
            raise InputError(f"a cell of {tokens} prompt tokens and {new} new tokens exceeds the context of "
                             f"{self.preset.context_length} tokens of preset {self.preset.name!r}: use shorter prompts")
        if (cell.batch_size or batch_size) < 1 or not 0 <= cell.pad_ratio < 1:
            raise InputError("a cell's batch size must be at least 1 and its pad ratio within [0, 1)")
        if cell.pad_ratio and (cell.batch_size or batch_size) < 2:
            raise InputError("padding needs a batch of at least 2 sequences")

    def run(self, *args, **kwargs) -> Iterator[events.Event]:
        """Events of a run, as `start(...)` would produce them."""
        return iter(self.start(*args, **kwargs))

    def cancel(self, run_id: int | None = None) -> bool:
        """Cancel the active run (only if it is `run_id`, when given); True if one was cancelled."""
        run = self.active
        if run is None or (run_id is not None and run.id != run_id):
            return False
        run.cancel()
        for worker in self.workers.values():
            worker.cancel.set()
        return True

    def close(self) -> None:
        """Stop every worker this engine started (politely, then by its own process handle)."""
        for name in list(self.workers):
            self._stop_worker(name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ workers
    def _spawn(self, name: str) -> Worker:
        parent, child = CONTEXT.Pipe(duplex=True)
        cancel = CONTEXT.Event()
        core = None
        if self.device.kind == "cuda":
            core = free_core(sorted(hardware.usable_cores()), {w.spec.core for w in self.workers.values()})
        spec = WorkerSpec(self.preset, name, "cpu" if self.device.kind == "cpu" else f"cuda:{self.device.index}",
                          self.threads, core)
        process = CONTEXT.Process(target=_worker_main, args=(spec, child, cancel), daemon=True,
                                  name=f"worker-{name}")
        process.start()
        child.close()
        worker = Worker(name, process, parent, cancel, spec)
        self.workers[name] = worker
        return worker

    def _stop_worker(self, name: str, timeout: float = 10.0) -> None:
        worker = self.workers.pop(name, None)
        if worker is None:
            return
        try:
            worker.conn.send(None)
        except (OSError, BrokenPipeError):
            pass
        worker.process.join(timeout)
        if worker.process.is_alive():
            worker.process.kill()             # our own child, by its handle
            worker.process.join(5)
        worker.conn.close()

    # ------------------------------------------------------------------ the pump
    def _receive(self, run: Run, names: list[str], until, timeout: float) -> None:
        """Forward events from the named workers until `until()` is true; handle deaths and timeouts.

        Blocks in multiprocessing.connection.wait on the workers' pipes and process sentinels.
        """
        deadline = time.monotonic() + timeout
        while not until():
            live = [self.workers[n] for n in names if n in self.workers]
            if not live:
                return
            if run.cancelled.is_set():                 # a cancelled worker stops at its next token
                deadline = min(deadline, time.monotonic() + CANCEL_GRACE_S)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                for worker in live:
                    if run.cancelled.is_set():
                        self._fail(run, worker, f"did not stop within {CANCEL_GRACE_S:.0f} s of the cancel: "
                                                "the worker was stopped and starts afresh next run")
                    elif worker.variant in self._current:
                        self._time_out(run, worker, timeout)
                    else:
                        self._fail(run, worker, f"did not load within {timeout:.0f} s: the worker was stopped")
                return
            handles = [w.conn for w in live] + [w.process.sentinel for w in live]
            ready = multiprocessing.connection.wait(handles, timeout=min(remaining, 0.5))
            for worker in live:
                if worker.conn in ready:
                    self._read(run, worker)
            for worker in live:
                if worker.process.sentinel in ready and worker.variant in self.workers:
                    self._read(run, worker)            # events it sent before dying
                    if worker.failed is not None and worker.loaded is None:
                        self._stop_worker(worker.variant, timeout=1.0)   # it said why it could not load
                        continue
                    code = worker.process.exitcode
                    self._fail(run, worker, f"the worker process died (exit code {code}); "
                                            "it will be started afresh on the next run")

    def _read(self, run: Run, worker: Worker) -> None:
        try:
            while worker.conn.poll():
                for event in unbatch(worker.conn.recv()):
                    if isinstance(event, events.Loaded):
                        worker.loaded = event
                    elif isinstance(event, events.Failed):
                        worker.failed = event
                    self._deliver(run, event)
        except (EOFError, OSError):
            pass

    def _fail(self, run: Run, worker: Worker, reason: str) -> None:
        """Turn a dead or stuck worker into a Failed event for its variant, and remove it."""
        failed = events.Failed(worker.variant, reason, request_id=self._current.get(worker.variant))
        worker.failed = failed
        self._deliver(run, failed)
        self._stop_worker(worker.variant, timeout=1.0)

    def _time_out(self, run: Run, worker: Worker, timeout: float) -> None:
        """A request ran past its time: fail it, stop it at its next token, keep the worker if it obeys."""
        name, request_id = worker.variant, self._current[worker.variant]
        self._deliver(run, events.Failed(name, f"timed out after {timeout:.0f} s: stopped (ask for fewer tokens, "
                                               "or allow more time)", request_id=request_id))
        self._current[name] = request_id          # still in flight: wait for its (dropped) answer
        self._discard.add(request_id)
        worker.cancel.set()
        deadline = time.monotonic() + CANCEL_GRACE_S
        while name in self._current and name in self.workers and time.monotonic() < deadline:
            if worker.conn.poll(0.2):
                self._read(run, worker)
        if name in self._current:                 # it did not stop: end the process
            self._current.pop(name, None)
            self._stop_worker(name, timeout=1.0)
        worker.cancel.clear()

    def _deliver(self, run: Run, event) -> None:
        """Record an event in the outcome it belongs to and pass it on (warm-up requests stay inside)."""
        request_id = getattr(event, "request_id", None)
        if request_id is not None and request_id in self._probes:
            if isinstance(event, (events.Measured, events.Failed)):
                self._current.pop(event.variant, None)
                if isinstance(event, events.Measured):
                    self._measured = event
                else:
                    self._probe_failure = event
            return
        if request_id is not None and request_id in self._cell_of:
            outcomes = [self._outcomes.get((event.variant, self._cell_of[request_id]))]
        else:                                          # a load failure concerns every cell of the variant
            outcomes = [o for (name, _), o in self._outcomes.items() if name == event.variant]
        outcomes = [o for o in outcomes if o is not None]
        if isinstance(event, events.Finished):
            if request_id != self._current.get(event.variant):
                return                                 # a stale answer of an earlier, abandoned request
            self._current.pop(event.variant, None)
            if request_id in self._discard:
                return
            for outcome in outcomes:
                outcome.finished.append(event)
        elif isinstance(event, events.Failed):
            self._current.pop(event.variant, None)
            for outcome in outcomes:
                outcome.failed = event
        elif isinstance(event, events.Loaded):
            for outcome in outcomes:
                outcome.loaded = event
        if request_id in self._discard and isinstance(event, (events.Token, events.Started)):
            return
        run.queue.put(event)

    # ------------------------------------------------------------------ a run
    def _run_guarded(self, run: Run, *args) -> None:
        with self._lock:
            self.active = run
            try:
                self._run(run, *args)
            except Exception as error:  # noqa: BLE001 - the consumer must always get a RunDone
                import traceback
                run.queue.put(events.Failed("*", f"the run stopped: {error}", traceback.format_exc()))
                run.queue.put(events.RunDone(report.build(self.preset, self.device, "", 0, {}, [], [None],
                                                          "fair", 1, 1, cancelled=True)))
            finally:
                self.active = None
                run.finished.set()

    def _reset(self, outcomes: dict) -> None:
        self._outcomes = outcomes
        self._current: dict[str, int] = {}        # variant -> the request it is working on
        self._cell_of: dict[int, int] = {}        # request id -> index of its cell
        self._discard: set[int] = set()           # warm-up requests: measured by nobody
        self._measured: events.Measured | None = None
        self._probes: set[int] = set()            # probe ids: their answers stay out of the outcomes
        self._probe_failure: events.Failed | None = None

    def _run(self, run: Run, prompt, names, max_new_tokens, mode, repeats, ignore_eos, batch_size,
             grid, warmup_requests, prompt_token_count) -> None:
        cells = list(grid) if grid else [None]
        for worker in self.workers.values():
            worker.cancel.clear()
        self._reset({(name, i): Outcome(name) for name in names for i in range(len(cells))})
        runnable: list[Variant] = []
        for name in names:
            reason = CATALOG[name].unavailable_reason(self.preset, self.device)
            if reason:
                for i in range(len(cells)):
                    self._outcomes[(name, i)].unavailable = reason
                run.queue.put(events.Unavailable(name, reason))
            else:
                runnable.append(CATALOG[name])
        placement = self._placement(runnable)
        for (name, _), outcome in self._outcomes.items():
            outcome.placement = placement.get(name)
        resident = [v.name for v in runnable if placement[v.name] == "resident"]
        swapped = [v.name for v in runnable if placement[v.name] == "swapped"]

        def make_request(name: str, cell: int, discard: bool) -> Request:
            c = cells[cell] or Cell()
            # a warm-up is the measured request itself: every sequence length the cell's decode meets
            # must have been seen (PyTorch's default SDPA on a Hopper GPU builds a cuDNN plan for each
            # new one: after 8-token warm-ups sdpa's repeats took 56.54, 21.11, 22.76 ms, see BENCHMARKS.md)
            request = Request(next(self._request_ids), prompt, c.max_new_tokens or max_new_tokens, ignore_eos,
                              c.batch_size or batch_size, c.prompt_tokens, c.pad_ratio)
            self._current[name] = request.request_id
            self._cell_of[request.request_id] = cell
            if discard:
                self._discard.add(request.request_id)
            return request

        self._load(run, resident)
        groups = [group for group in [resident] + [[name] for name in swapped] if group]
        for group in groups:
            if run.cancelled.is_set():
                break
            if group is not resident:
                self._load(run, group)
            loaded = [n for n in group if n in self.workers and self.workers[n].ready]
            t_ready = time.perf_counter()
            for name in loaded:
                for i in range(len(cells)):
                    self._outcomes[(name, i)].t_ready = t_ready
                run.queue.put(events.Status(name, "queued"))
            for cell in range(len(cells)):
                for attempt in range(warmup_requests + repeats):
                    if run.cancelled.is_set():
                        break
                    ready = [n for n in loaded if n in self.workers and self._outcomes[(n, cell)].failed is None]
                    discard = attempt < warmup_requests
                    if mode == "race" and len(ready) > 1:
                        for name in ready:
                            self._outcomes[(name, cell)].contended = True
                        self._generate(run, {name: make_request(name, cell, discard) for name in ready})
                    else:
                        for name in ready:
                            if not run.cancelled.is_set():
                                self._generate(run, {name: make_request(name, cell, discard)})
            if group is groups[-1] and not run.cancelled.is_set():
                self._measure_bandwidth(group)       # after every timed request, before the last unload
            if group is not resident:
                for name in group:
                    run.queue.put(events.Status(name, "unloading"))
                    self._stop_worker(name)
        built = report.build(self.preset, self.device, prompt, prompt_token_count, self._outcomes, names, cells,
                             mode, repeats, batch_size, cancelled=run.cancelled.is_set())
        report.add_measured_bandwidth(built, self.bandwidth)
        run.queue.put(events.RunDone(built))

    def probe(self, variant: str, kind: str, prompt_tokens: int = 128, new_tokens: int = 64,
              timeout: float | None = None) -> dict:
        """A measurement in the variant's worker (loading it if needed): "overhead" or "bandwidth"."""
        from engine.worker import Probe
        with self._lock:
            run = Run()
            self._reset({(variant, 0): Outcome(variant)})
            self._load(run, [variant])
            worker = self.workers.get(variant)
            if worker is None or not worker.ready:
                failed = self._outcomes[(variant, 0)].failed
                raise RuntimeError(f"{variant} could not load: {failed.reason if failed else 'unknown'}")
            return self._measure(variant, Probe(next(self._request_ids), kind, prompt_tokens, new_tokens), timeout)

    def _measure(self, variant: str, probe, timeout: float | None = None) -> dict:
        """Send a probe to the variant's loaded worker and wait for its values (the lock is held).

        Its answer, or its failure, stays out of the run's outcomes: a probe never fails a cell.
        """
        self._probes.add(probe.request_id)
        self._measured = self._probe_failure = None
        self._current[variant] = probe.request_id
        self.workers[variant].conn.send(probe)
        self._receive(Run(), [variant], lambda: variant not in self._current, timeout or self.request_timeout_s)
        if self._measured is None:
            failed = self._probe_failure
            raise RuntimeError(f"{variant}: {probe.kind} failed: {failed.reason if failed else 'no answer'}")
        return dict(self._measured.values)

    def _measure_bandwidth(self, names: list[str]) -> None:
        """The device's copy bandwidth, measured once per engine in a loaded worker (after the timed
        requests, so the large copy disturbs none of them); left unknown if that fails."""
        from engine.worker import Probe
        loaded = [n for n in names if n in self.workers and self.workers[n].ready]
        if self.bandwidth is not None or not loaded:
            return
        try:
            self.bandwidth = self._measure(loaded[0], Probe(next(self._request_ids), "bandwidth"),
                                           timeout=120.0)["bytes_per_s"]
        except Exception:  # noqa: BLE001 - after every timed request: a failure only leaves the figure unknown
            pass

    def _held_bytes(self, names) -> int:
        """Device memory that the named loaded workers hold (their weights)."""
        return 0 if self.device.kind == "cpu" else sum(
            w.loaded.weights_bytes for n, w in self.workers.items() if w.loaded and n in names)

    def _free_bytes(self) -> int:
        """Memory free on the device now (NVML on a GPU, available RAM on a CPU)."""
        if self.device.kind == "cpu":
            return hardware.cpu_device().free_bytes
        gpus = hardware.cuda_devices()
        return gpus[self.device.index].free_bytes if self.device.index < len(gpus) else self.device.free_bytes

    def _placement(self, runnable: list[Variant]) -> dict[str, str]:
        """Plan the run against the memory free now plus what this run's own loaded workers hold.

        Workers of variants outside this run stay loaded (the next run may want them) unless
        their room is needed; a loaded worker that the plan swaps is stopped, to load in its turn.
        """
        names = {v.name for v in runnable}
        cuda = self.device.kind == "cuda"
        placement = budget.plan(self.preset, runnable, self._free_bytes() + self._held_bytes(names), cuda)
        idle = [n for n in self.workers if n not in names]
        if idle and "swapped" in placement.values():
            for name in idle:
                self._stop_worker(name)
            placement = budget.plan(self.preset, runnable, self._free_bytes() + self._held_bytes(names), cuda)
        for name, where in placement.items():
            if where == "swapped" and name in self.workers:
                self._stop_worker(name)
        return placement

    def _load(self, run: Run, names: list[str]) -> None:
        """Start the named workers that are not running and wait until each is loaded or failed."""
        for name in names:
            worker = self.workers.get(name)
            if worker is not None and not worker.process.is_alive():
                self._stop_worker(name)
                worker = None
            if worker is None:
                self._spawn(name)
                run.queue.put(events.Status(name, "loading", "starting the worker process"))
            elif worker.loaded:
                for (variant, _), outcome in self._outcomes.items():
                    if variant == name:
                        outcome.loaded = worker.loaded
        pending = [n for n in names if n in self.workers and not self.workers[n].loaded]
        self._receive(run, pending, lambda: run.cancelled.is_set() or all(
            n not in self.workers or self.workers[n].loaded or self.workers[n].failed for n in pending),
            self.load_timeout_s)
        for name in pending:
            worker = self.workers.get(name)
            if worker is not None and worker.failed and not worker.loaded:
                self._stop_worker(name)

    def _generate(self, run: Run, requests: dict[str, Request]) -> None:
        """Send each named worker its request at once and wait for all answers."""
        for name, request in requests.items():
            try:
                self.workers[name].conn.send(request)
            except (OSError, BrokenPipeError):
                self._fail(run, self.workers[name], "the worker process is gone; it will be restarted")
        names = list(requests)
        self._receive(run, names, lambda: not any(n in self._current for n in names), self.request_timeout_s)
