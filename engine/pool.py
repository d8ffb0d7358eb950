"""The engine: the workers of one preset, kept loaded between runs, and the runs made of them.

`Engine.start(spec)` validates a `RunSpec` and returns a `Run` at once: a stream of events that
ends with `RunDone` (the report). Runs execute one at a time per engine, each in its own thread;
a run waiting for the one before it can be cancelled like the active one. The plan and the loop
that carries it out are engine/schedule.py; the processes, engine/process.py; a run's
bookkeeping, engine/outcomes.py.
"""
from __future__ import annotations

import itertools
import queue
import threading
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field

from engine import budget, events, hardware, load_times, remote, report, schedule, scoring, source, topology, variants
from engine.errors import InputError
from engine.events import WorkerSpec
from engine.limits import Limits
from engine.outcomes import RunState
from engine.presets import Preset
from engine.process import WorkerSet, start_fork_server
from engine.spec import RunSpec, validate

BANDWIDTH_TIMEOUT_S = 120.0       # the copy-bandwidth probe: a second or two on any device
CLOSE_WAIT_S = 15.0               # how long close() lets a cancelled run end before stopping its workers


@dataclass(frozen=True)
class Validated:
    """A RunSpec an engine accepted (Engine.validate), so that starting it need not check and tokenize
    again (the prompt's count there is a pre-check only: the report gives the workers' own)."""
    spec: RunSpec
    checked_by: object = field(compare=False, repr=False)    # the Engine that checked it, against its preset and limits


class Run:
    """A run accepted by an engine: iterate it for events (the last is RunDone), or cancel it."""
    _ids = itertools.count(1)

    def __init__(self, spec: RunSpec):
        self.id, self.spec = next(Run._ids), spec
        self.queue: queue.Queue = queue.Queue()
        self.cancelled = threading.Event()
        self.finished = threading.Event()
        self.stop_reason: str | None = None      # why it was stopped, when not by its owner

    def put(self, item) -> None:
        """An event, or a list of them: a worker's batch arrives as one item, so a consumer wakes once
        for it, not once per token, while that worker's next request may be timed."""
        self.queue.put(item)

    def __iter__(self) -> Iterator[events.Event]:
        while True:
            for event in events.unbatch(self.queue.get()):
                yield event
                if isinstance(event, events.RunDone):
                    return

    def drain(self, timeout: float) -> list[events.Event]:
        """Block up to `timeout` for events, then take all that are waiting (for UIs that draw on a clock)."""
        try:
            batch = events.unbatch(self.queue.get(timeout=timeout))
        except queue.Empty:
            return []
        while True:
            try:
                batch += events.unbatch(self.queue.get_nowait())
            except queue.Empty:
                return batch

    def cancel(self) -> None:
        self.cancelled.set()

    def follow(self, handle, interrupted) -> None:
        """Pass every event to `handle` until the RunDone; Ctrl-C (KeyboardInterrupt) calls
        `interrupted()` (which cancels the run) and goes on to the end, so that what was measured is
        kept. Not a generator: an interrupt raised inside one would end it."""
        while True:
            try:
                for event in self.drain(0.5):
                    handle(event)
                    if isinstance(event, events.RunDone):
                        return
            except KeyboardInterrupt:
                interrupted()


class Engine:
    """The workers of one preset, kept loaded between runs; one run at a time per engine."""

    def __init__(self, preset: Preset, request_timeout_s: float = 900.0, load_timeout_s: float = 3600.0,
                 threads: int | None = None, spare_cores: int = 0, limits: Limits | None = None):
        """`threads`: torch CPU threads per worker (None: torch's default, one per core). On a CPU
        device, `spare_cores` leaves that many cores to other work instead (the dashboard leaves one
        to itself and the browser: a decode step that waits for every core stalls whenever one of
        them is taken away, and the page is drawn while the variants run)."""
        self.preset = preset
        self.run_limits = limits or Limits()       # what one run may ask (engine/limits.py)
        self.device = hardware.resolve(preset.device)
        # "auto" on a host with several GPUs: workers are spread over them (budget.assign), and fair
        # mode runs variants on different GPUs at the same time, since they do not contend
        gpus = hardware.cuda_devices() if self.device.kind == "cuda" and preset.device == "auto" else []
        self.devices = gpus if len(gpus) > 1 else [self.device]
        self._assignment: dict[str, int] = {}      # variant -> GPU index, with several GPUs
        self.timeouts = schedule.Timeouts(request_timeout_s, load_timeout_s)
        if threads is not None and threads < 1:
            raise InputError(f"threads must be at least 1, got {threads}")
        if threads is None and spare_cores and self.device.kind == "cpu":
            threads = max(self.cores - spare_cores, 1)
        self.threads = threads
        self.bandwidth: float | None = None        # the device's measured copy bandwidth, bytes/s
        self.keep_logprobs = False                 # keep each variant's scored log-probabilities (last_logprobs)
        self.last_logprobs: dict = {}              # of the last run, with keep_logprobs: name -> array, "answer"
        self._workers = WorkerSet(self._worker_spec)
        self._runs: dict[int, Run] = {}            # accepted and not finished: pending or active
        self._active: Run | None = None
        self._runs_lock = threading.Lock()         # guards _runs and _active
        self._device_lock = threading.Lock()       # held by the run (or probe) using the workers
        self._ids = itertools.count(1)             # request and probe ids

    # ------------------------------------------------------------------ public surface
    def variant_choices(self) -> list[tuple[str, str, str | None]]:
        """(name, label, reason it cannot run here or None) for every catalog variant, then the preset's
        served endpoints."""
        found = [variants.lookup(name, self.preset) for name in variants.names(self.preset)]
        return [(v.name, v.display_label(), v.unavailable_reason(self.preset, self.device)) for v in found]

    def validate(self, spec: RunSpec | Validated) -> Validated:
        """Raise InputError with what to do; the spec as accepted by this engine, to pass to `start`."""
        if isinstance(spec, Validated) and spec.checked_by is self:
            return spec
        spec = spec.spec if isinstance(spec, Validated) else spec
        self.run_limits.check(spec)                    # a huge prompt is refused before it is tokenized
        self.run_limits.check(spec, validate(spec, self.preset))
        return Validated(spec, self)

    def prepare(self) -> None:
        """Start, ahead of the first run, what its workers are made from: on a CPU the fork server, whose
        imports of torch and transformers (seconds) then overlap what comes first (the dashboard calls
        this as the page starts), and a package preset's model folder (made once from its package's file;
        ModelSourceError says what to install). A run calls it too, once its input is valid: a refused run
        starts nothing. A model cache folder that cannot be used is refused first, in one line that says
        what to do (ModelSourceError), not by each worker with an OSError."""
        if source.uses_cache(self.preset):
            source.usable_cache_dir()
        if self.preset.source == "package":
            source.ensure_source(self.preset)      # made once (seconds); ModelSourceError: what to install
        if self.device.kind == "cpu":
            start_fork_server()

    def start(self, spec: RunSpec | Validated) -> Run:
        """Validate (unless this engine did already), then run in a background thread; raises InputError
        before starting anything."""
        spec = self.validate(spec).spec
        self.prepare()
        run = Run(spec)
        with self._runs_lock:
            self._runs[run.id] = run
        threading.Thread(target=self._execute, args=(run,), daemon=True, name=f"run-{run.id}").start()
        return run

    def run(self, spec: RunSpec | Validated) -> Iterator[events.Event]:
        """The events of a run of `spec`."""
        return iter(self.start(spec))

    def cancel(self, run_id: int | None = None) -> bool:
        """Cancel run `run_id`, waiting or active (every run when None); True if one was cancelled."""
        with self._runs_lock:
            runs = [r for r in self._runs.values() if run_id is None or r.id == run_id]
            active = self._active in runs
        for run in runs:
            run.cancel()
        if active:
            self._workers.cancel_all()              # each stops its request at its next token
        return bool(runs)

    @property
    def idle(self) -> bool:
        """No worker loaded or loading, and no run accepted."""
        with self._runs_lock:
            return not self._runs and not self._workers.names()

    @property
    def cores(self) -> int:
        """The CPU cores this engine's workers may use (this process's affinity mask)."""
        return len(topology.usable_cores())

    def loaded(self) -> dict[str, events.Loaded]:
        """The Loaded event of each worker ready now (workers stay loaded between runs)."""
        return self._workers.loaded()

    def load_estimates(self, variants) -> dict[str, float]:
        """Seconds each variant took to load and warm up when it last loaded here (none: absent)."""
        return load_times.estimates(self.preset.name, self.device.name, variants)

    def pids(self) -> dict[str, int]:
        """The process id of each worker (for diagnostics and tests)."""
        return {w.variant: w.pid for w in self._workers.all()}

    def probe(self, variant: str, kind: str, prompt_tokens: int = 128, new_tokens: int = 64,
              timeout: float | None = None) -> dict:
        """A measurement in the variant's worker (loading it if needed): "overhead" or "bandwidth"."""
        with self._device_lock:
            # nobody reads a probe's events, and a probe cannot be cancelled (close() stops its worker)
            execution = schedule.Execution(self._workers, RunState([variant], 1), lambda event: None,
                                           threading.Event(), self._ids, self.timeouts)
            execution.load([variant])
            worker = self._workers.get(variant)
            if worker is None or not worker.ready:
                failed = execution.state.outcomes[(variant, 0)].failed
                raise RuntimeError(f"{variant} could not load: {failed.reason if failed else 'unknown'}")
            return execution.measure(variant, kind, timeout or self.timeouts.request_s,
                                     prompt_tokens=prompt_tokens, new_tokens=new_tokens)

    def close(self, wait_s: float = CLOSE_WAIT_S) -> None:
        """Cancel every run, let the active one end (up to `wait_s`), then stop every worker together."""
        with self._runs_lock:
            active = self._active
        self.cancel()
        if active is not None:
            active.finished.wait(wait_s)
        self._workers.stop_all()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ a run
    def _worker_spec(self, name: str, others: list[WorkerSpec]) -> WorkerSpec:
        served = self.preset.endpoint(name)
        if served is not None and served.launch is not None:
            # an engine started by its worker: a free loopback port, as many threads as a local worker
            # on a GPU, the engine's own GPU, or every GPU where its arguments ask for several
            served = remote.at_port(served, topology.free_port())
            gpu = self.device.kind == "cuda"
            own = (hardware.nvml_index(self._assignment.get(name, self.device.index))
                   if gpu and len(self.devices) > 1 and served.launch.gpus == 1 else None)
            return WorkerSpec(self.preset, name, f"remote:{served.host}", self.threads or self.cores,
                              own_gpu=own, endpoint=served, shares_machine=True, launch_device=self.device.kind)
        if served is not None:                     # a server elsewhere runs beside ours in fair mode
            return WorkerSpec(self.preset, name, f"remote:{served.host}", endpoint=served,
                              shares_machine=remote.on_this_machine(served))
        core = None
        if self.device.kind == "cuda":             # a core of its own for the thread that launches kernels
            core = topology.free_core(sorted(topology.usable_cores()), {spec.core for spec in others})
        if self.device.kind == "cpu":
            return WorkerSpec(self.preset, name, "cpu", self.threads, core)
        index = self._assignment.get(name, self.device.index)
        own = hardware.nvml_index(index) if len(self.devices) > 1 else None     # it sees only its own GPU
        return WorkerSpec(self.preset, name, f"cuda:{index}", self.threads, core, own)

    def _execution(self, run: Run, state: RunState) -> schedule.Execution:
        return schedule.Execution(self._workers, state, run.put, run.cancelled, self._ids, self.timeouts)

    def _execute(self, run: Run) -> None:
        """The run's thread: wait for the device, run, and always end the stream with a RunDone."""
        spec = run.spec
        state = RunState(list(spec.variants), len(spec.grid), spec.repeats)
        scorer = scoring.Scorer(spec, self.preset, {e.name for e in self.preset.remote}, self.keep_logprobs)
        deadline = None
        try:
            with self._device_lock:
                with self._runs_lock:
                    self._active = run
                if not run.cancelled.is_set():         # a run cancelled while it waited does nothing
                    self._workers.clear_cancel()
                    deadline = self._deadline(run)
                    self._run(run, state, scorer)
        except Exception as error:  # noqa: BLE001 - the consumer must always get a RunDone
            run.put(events.Failed("*", f"the run stopped: {error}", traceback.format_exc()))
            run.cancel()
        finally:
            if deadline is not None:
                deadline.cancel()
            cancelled = run.cancelled.is_set()
            built = report.build(spec, self.preset, self.device, state.outcomes, cancelled=cancelled,
                                 stop_reason=run.stop_reason, measured_bandwidth=self.bandwidth,
                                 quality={name: scorer.entry(name, cancelled) for name in spec.variants})
            self.last_logprobs = scorer.logprobs
            load_times.remember(self.preset.name, self.device.name,
                                {o.variant: o.loaded for o in state.outcomes.values() if o.loaded})
            run.put(events.RunDone(built))
            with self._runs_lock:
                self._runs.pop(run.id, None)
                if self._active is run:
                    self._active = None
            run.finished.set()

    def _deadline(self, run: Run) -> threading.Timer | None:
        """Stop the run at the limits' deadline (its results so far are kept), counted from its start."""
        seconds = self.run_limits.run_deadline_s
        if seconds is None:
            return None

        def expire() -> None:
            if not run.finished.is_set() and not run.cancelled.is_set():
                run.stop_reason = (f"stopped at this page's time limit of {seconds:.0f} s per run: the figures "
                                   "cover what was measured until then")
                self._workers.cancel_all()
                run.cancel()

        timer = threading.Timer(seconds, expire)
        timer.daemon = True
        timer.start()
        return timer

    def _run(self, run: Run, state: RunState, scorer: scoring.Scorer) -> None:
        runnable = []
        for name in run.spec.variants:
            variant = variants.lookup(name, self.preset)
            reason = variant.unavailable_reason(self.preset, self.device)
            if reason:
                state.unavailable(name, reason)
                run.put([events.Unavailable(name, reason), *state.closed()])
            else:
                runnable.append(variant)
        placement = self._place(runnable)
        execution = self._execution(run, state)

        def after_group(loaded: list[str], last: bool) -> None:
            scorer.after_group(execution, loaded, last)
            if last:
                self._measure_bandwidth(execution, loaded)

        execution.run(run.spec, placement, after_group, first=variants.REFERENCE)

    def _place(self, runnable: list) -> dict[str, str]:
        """Resident or swapped for each variant; with several GPUs, which GPU first (budget.assign; a
        loaded worker keeps its GPU), then each GPU's own plan."""
        if len(self.devices) == 1:
            return schedule.place(self._workers, runnable, self.preset, self.device)
        on = {w.variant: int(w.spec.device.split(":")[1]) for w in self._workers.all()
              if w.spec.device.startswith("cuda:")}
        self._assignment = budget.assign(self.preset, runnable, hardware.cuda_devices() or self.devices,
                                         {v.name: on[v.name] for v in runnable if v.name in on})
        placement = {v.name: "resident" for v in runnable if v.remote}
        for device in self.devices:
            mine = [v for v in runnable if self._assignment.get(v.name) == device.index]
            if mine:
                placement.update(schedule.place(self._workers, mine, self.preset, device, f"cuda:{device.index}"))
        return placement

    def _measure_bandwidth(self, execution: schedule.Execution, loaded: list[str]) -> None:
        """The device's copy bandwidth, measured once per engine in a loaded worker (after the timed
        requests, so the large copy disturbs none of them); left unknown if that fails."""
        if self.bandwidth is not None or not loaded:
            return
        try:
            self.bandwidth = execution.measure(loaded[0], "bandwidth", BANDWIDTH_TIMEOUT_S)["bytes_per_s"]
        except Exception:  # noqa: BLE001 - after every timed request: a failure only leaves the figure unknown
            pass
