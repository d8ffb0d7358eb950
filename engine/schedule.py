"""How a run uses the device, and the loop that carries it out over the engine's workers.

The plan is data: which variants load together (`groups`: the resident ones, then each swapped one
alone), and in what order requests go out (`turns`: cell by cell, warm-ups first, then the timed
repeats; in fair mode one variant at a time, in race mode all at once). `Execution` sends the
requests, waits on the workers' pipes and process sentinels, and turns a death, a stuck worker or a
timeout into a `Failed` event for that variant alone.
"""
from __future__ import annotations

import dataclasses
import itertools
import time
from dataclasses import dataclass

from engine import budget, events, process
from engine.events import Probe, Request
from engine.outcomes import RunState
from engine.process import WorkerProcess, WorkerSet
from engine.spec import RunSpec

CANCEL_GRACE_S = 5.0              # after a cancel or timeout, how long a worker may take to stop (a
                                  # generating one stops at its next token; one still loading is ended at once)
ENDED_LOADING = "stopped while it loaded: its worker was ended, and loads afresh on the next run"
WAIT_SLICE_S = 0.5                # the longest single wait, so a cancel is noticed promptly


@dataclass(frozen=True)
class Turn:
    """One round of requests: every ready variant answers cell `cell` once."""
    cell: int
    warmup: bool                  # unmeasured: the first request at new lengths can be slow
    together: bool                # race mode: all at once; fair mode: one after another


def turns(spec: RunSpec) -> list[Turn]:
    """Cell by cell; in each, the warm-ups, then the timed repeats."""
    rounds = spec.warmup_requests + spec.repeats
    return [Turn(cell, attempt < spec.warmup_requests, spec.mode == "race")
            for cell in range(len(spec.grid)) for attempt in range(rounds)]


def groups(names: list[str], placement: dict[str, str], first: str | None = None) -> list[list[str]]:
    """Variants that are loaded at the same time: the resident ones, then each swapped one alone, the
    swapped `first` (the reference, whose answer the others are scored on) before the other swapped ones."""
    resident = [name for name in names if placement[name] == "resident"]
    swapped = sorted((n for n in names if placement[n] == "swapped"), key=lambda n: n != first)
    return [group for group in [resident] + [[n] for n in swapped] if group]


class ProbeFailed(RuntimeError):
    """A probe the worker did not answer with a measurement; `reason` is its one line."""

    def __init__(self, variant: str, kind: str, reason: str):
        super().__init__(f"{variant}: {kind} failed: {reason}")
        self.reason = reason


@dataclass(frozen=True)
class Timeouts:
    """How long the orchestrator waits on a worker before failing its column (public pages' caps on a
    run are engine/limits.py's Limits)."""
    request_s: float = 900.0      # one request
    load_s: float = 3600.0        # loading and warming up one worker


class Execution:
    """One run (or probe) over the engine's workers: sends, waits, and folds events into `state`."""

    def __init__(self, workers: WorkerSet, state: RunState, emit, cancelled, ids: itertools.count,
                 timeouts: Timeouts):
        self.workers, self.state, self.emit = workers, state, emit
        self.cancelled = cancelled                  # a threading.Event: the run's Stop
        self._ids, self.timeouts = ids, timeouts

    # ------------------------------------------------------------------ a run
    def run(self, spec: RunSpec, placement: dict[str, str], after_group=None, first: str | None = None) -> None:
        """Load each group (the swapped `first` before the other swapped ones), then go through the
        turns with the variants of that group.

        `after_group(loaded names, last)` runs once each group's timed requests are done, before the
        group is unloaded (measurements there disturb no timing); `last`: every timed request of the
        run is done."""
        plan = groups([n for n in spec.variants if n in placement], placement, first)
        for (name, _), outcome in self.state.outcomes.items():
            outcome.placement = placement.get(name)
        for index, group in enumerate(plan):
            if self.cancelled.is_set():
                return
            warmed = self.load(group, spec)
            loaded = [n for n in group if self.ready(n)]
            t_ready = time.perf_counter()
            for name in loaded:
                for outcome in self.state.of(name):
                    outcome.t_ready = t_ready
                self.emit(events.Status(name, "queued"))
            for turn in turns(spec):
                if self.cancelled.is_set():
                    break
                early = warmed if turn.warmup and turn.cell == 0 else ()      # done while the others loaded
                self._turn(spec, turn, [n for n in loaded if n not in early])
            if after_group is not None and not self.cancelled.is_set():
                after_group(loaded, index == len(plan) - 1)
            if placement.get(group[0]) == "swapped":
                for name in group:
                    self.emit(events.Status(name, "unloading"))
                self.workers.stop(group)

    def _turn(self, spec: RunSpec, turn: Turn, loaded: list[str]) -> None:
        ready = [n for n in loaded if self.ready(n) and self.state.outcomes[(n, turn.cell)].failed is None]
        if turn.together and len(ready) > 1:
            for name in ready:
                self.state.outcomes[(name, turn.cell)].contended = True
            self.generate({name: self.request(spec, turn) for name in ready}, turn.warmup)
            return
        # fair: one variant at a time on each device; variants on different devices (a served
        # endpoint, another GPU) do not contend, so their requests go out together
        for together in self._rounds(ready):
            if self.cancelled.is_set():
                return
            self.generate({name: self.request(spec, turn) for name in together}, turn.warmup)

    def _rounds(self, names: list[str]) -> list[list[str]]:
        """`names` by device, then round by round the next variant of every device."""
        specs = {name: self.workers.get(name).spec for name in names}
        # a server on this very machine shares its cores (and maybe its GPU) with every local worker
        shared = any(spec.endpoint is not None and spec.shares_machine for spec in specs.values())
        lanes: dict[str, list[str]] = {}
        for name, spec in specs.items():
            elsewhere = spec.endpoint is not None and not spec.shares_machine
            key = spec.device if elsewhere or not shared else "this machine"
            lanes.setdefault(key, []).append(name)
        return [[n for n in group if n is not None] for group in itertools.zip_longest(*lanes.values())]

    def request(self, spec: RunSpec, turn: Turn) -> Request:
        """The request of `turn`'s cell, with a new id."""
        # a warm-up is the timed request itself, not a shorter one: every sequence length the cell's
        # decode meets must have been seen (PyTorch's default SDPA on a Hopper GPU builds a cuDNN plan
        # for each new length; BENCHMARKS.md has what short warm-ups cost the first repeat)
        cell = spec.resolved(spec.grid[turn.cell])
        return Request(next(self._ids), spec.prompt, cell.max_new_tokens, spec.ignore_eos, cell.batch_size,
                       cell.prompt_tokens, cell.pad_ratio, cell=turn.cell, live=spec.live)

    def ready(self, name: str) -> bool:
        """Whether the variant's worker is loaded and answering."""
        worker = self.workers.get(name)
        return worker is not None and worker.ready

    # ------------------------------------------------------------------ workers
    def load(self, names: list[str], spec: RunSpec | None = None) -> set[str]:
        """Start the named workers that are not running, and wait until each is loaded or failed.

        With a `spec`, a worker that has loaded answers the first cell's warm-ups at once, while the
        others are still loading: a person sees its answer stream without waiting for the slowest to
        load, and nothing is timed (warm-ups count nowhere; the timed requests wait until every
        worker of the group has loaded and warmed up, so that none shares the device with a load).
        Returns the variants that did all their warm-ups of the first cell that way."""
        for name in names:
            worker = self.workers.get(name)
            if worker is not None and not worker.alive:
                self.workers.stop([name])
                worker = None
            if worker is None:
                self.workers.spawn(name)
                self.emit(events.Status(name, "loading", "starting the worker process"))
            elif worker.loaded:
                self.state.fold(worker.loaded)     # kept loaded from an earlier run: no Loaded comes
        pending = [n for n in names if (w := self.workers.get(n)) is not None and not w.loaded]
        warmups = {name: 0 for name in pending} if spec is not None and spec.warmup_requests else {}
        warmed: set[str] = set()

        def warm_the_loaded() -> None:
            for name, sent in warmups.items():
                worker = self.workers.get(name)
                if (worker is None or not worker.ready or name in self.state.current or self.cancelled.is_set()
                        or self.state.outcomes[(name, 0)].failed is not None):
                    continue
                if sent == spec.warmup_requests:
                    if name not in warmed:
                        warmed.add(name)
                        self.emit(events.Status(name, "queued", "warmed up; the timed requests begin once "
                                                                 "every variant has loaded"))
                    continue
                request = self.request(spec, Turn(0, True, False))
                warmups[name] = sent + 1
                self.state.sent(name, request, warmup=True)
                if not worker.send(request):
                    self._fail(worker, "the worker process is gone; it will be restarted")

        def settled() -> bool:
            return (all((w := self.workers.get(n)) is None or w.loaded or w.failed for n in pending)
                    and not self.state.waiting(pending))

        self.receive(pending, settled, self.timeouts.load_s, between=warm_the_loaded)
        for name in pending:
            worker = self.workers.get(name)
            if worker is not None and worker.failed and not worker.loaded:
                self.workers.stop([name])
        return {name for name in warmed if self.state.outcomes[(name, 0)].failed is None}

    def generate(self, requests: dict[str, Request], warmup: bool) -> None:
        """Send each named worker its request at once and wait for all answers."""
        for name, request in requests.items():
            request = dataclasses.replace(request, t_sent=time.perf_counter())
            self.state.sent(name, request, warmup)
            if not self.workers.get(name).send(request):
                self._fail(self.workers.get(name), "the worker process is gone; it will be restarted")
        names = list(requests)
        self.receive(names, lambda: not self.state.waiting(names), self.timeouts.request_s)

    def measure(self, name: str, kind: str, timeout: float, **fields) -> dict:
        """A probe in the variant's loaded worker; its answer or failure never touches an outcome."""
        if self.cancelled.is_set():                # a stopped run measures nothing more
            raise ProbeFailed(name, kind, "the run was stopped")
        probe = Probe(next(self._ids), kind, **fields)
        self.state.sent(name, probe)
        self.workers.get(name).send(probe)
        self.receive([name], lambda: not self.state.waiting([name]), timeout)
        answer = self.state.answer(probe.request_id)
        if not isinstance(answer, events.Measured):
            raise ProbeFailed(name, kind, answer.reason if answer else "no answer")
        return dict(answer.values)

    def receive(self, names: list[str], until, timeout: float, between=None) -> None:
        """Pass on events of the named workers until `until()`; handle deaths, stuck workers, timeouts.
        `between()` runs before each check (it may send the workers more work)."""
        deadline = time.monotonic() + timeout
        while True:
            if between is not None:
                between()
            if until():
                return
            live = [w for n in names if (w := self.workers.get(n)) is not None]
            if not live:
                return
            if self.cancelled.is_set():                # a cancelled worker stops at its next token
                if self._end_loading(live):
                    continue
                deadline = min(deadline, time.monotonic() + CANCEL_GRACE_S)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._overdue(live, timeout)
                return
            readable, dead = process.wait(live, min(remaining, WAIT_SLICE_S))
            for worker in readable:
                self._forward(worker)
            for worker in dead:
                if self.workers.get(worker.variant) is worker:
                    self._died(worker)

    def _forward(self, worker: WorkerProcess) -> None:
        passed = [self.state.shown(event) for event in worker.read() if self.state.fold(event)]
        passed += self.state.closed()
        if passed:
            self.emit(passed if len(passed) > 1 else passed[0])

    def _died(self, worker: WorkerProcess) -> None:
        self._forward(worker)                          # what it sent before dying
        worker.process.join(1.0)                       # reap it, so that its exit code is known
        if worker.failed is not None and worker.loaded is None:
            self.workers.stop([worker.variant], timeout=1.0)     # it said why it could not load
            return
        self._fail(worker, f"the worker process died (exit code {worker.process.exitcode}); "
                           "it will be started afresh on the next run")

    def _end_loading(self, live: list[WorkerProcess]) -> bool:
        """On a cancel, end the workers that are still loading or warming up, all at once: such a worker
        reads its pipe only once it is ready (seconds to minutes away, and on a shared CPU each one slows
        the others), and what it loads is for this run alone. Each row says so; the next run that needs
        the variant starts it afresh. True if any was ended."""
        for worker in live:                            # a Loaded already in the pipe keeps its worker
            if worker.loaded is None and worker.conn.poll():
                self._forward(worker)
        loading = [w.variant for w in live if w.loaded is None and w.failed is None
                   and w.variant not in self.state.current and self.workers.get(w.variant) is w]
        if not loading:
            return False
        self.workers.stop(loading, timeout=0.0)
        self.emit([events.Status(name, "cancelled", ENDED_LOADING) for name in loading])
        return True

    def _overdue(self, live: list[WorkerProcess], timeout: float) -> None:
        """Past the deadline: every worker still owing an answer is failed, and the stuck ones are
        stopped together (one wait, not one per worker)."""
        stuck = []
        for worker in live:
            if self.cancelled.is_set():
                stuck.append(self._fail(worker, f"did not stop within {CANCEL_GRACE_S:.0f} s of the cancel: "
                                                "the worker was stopped and starts afresh next run", stop=False))
            elif worker.variant in self.state.current:
                self._time_out(worker, timeout)
            else:
                stuck.append(self._fail(worker, f"did not load within {timeout:.0f} s: the worker was stopped",
                                        stop=False))
        self.workers.stop(stuck, timeout=1.0)

    def _fail(self, worker: WorkerProcess, reason: str, stop: bool = True) -> str:
        """Turn a dead or stuck worker into a Failed event for its variant, and stop it (unless `stop` is
        False: the caller stops several together). Its variant."""
        failed = self.state.failure(worker.variant, reason)
        if self.state.fold(failed):
            self.emit([failed, *self.state.closed()])
        if stop:
            self.workers.stop([worker.variant], timeout=1.0)
        return worker.variant

    def _time_out(self, worker: WorkerProcess, timeout: float) -> None:
        """A request ran past its time: fail it, stop it at its next token, keep the worker if it obeys."""
        name = worker.variant
        self.emit([self.state.give_up(name, f"timed out after {timeout:.0f} s: stopped (ask for fewer tokens, "
                                             "or allow more time)"), *self.state.closed()])
        worker.cancel.set()
        deadline = time.monotonic() + CANCEL_GRACE_S
        while name in self.state.current and self.workers.get(name) is worker and time.monotonic() < deadline:
            if worker.conn.poll(0.2):
                self._forward(worker)
        if name in self.state.current:                 # it did not stop: end the process
            self.state.current.pop(name)
            self.workers.stop([name], timeout=1.0)
        worker.cancel.clear()


def place(workers: WorkerSet, runnable, preset, device, on_device: str | None = None) -> dict[str, str]:
    """Plan the run against the memory free now plus what this run's own loaded workers hold.

    Workers of variants outside this run stay loaded (the next run may want them) unless their room
    is needed; a loaded worker that the plan swaps is stopped, to load in its turn. `on_device`
    ("cuda:N", on a host with several GPUs): the plan of that GPU alone, whose idle workers alone
    may give their room up.
    """
    names = {v.name for v in runnable}

    def planned() -> dict[str, str]:
        held = budget.held_bytes(device, {w.variant: w.loaded for w in workers.all() if w.loaded}, names)
        return budget.plan(preset, runnable, budget.free_bytes(device) + held, device.kind == "cuda")

    placement = planned()
    idle = [n for n in workers.names() if n not in names
            and (on_device is None or workers.get(n) is None or workers.get(n).spec.device == on_device)]
    if idle and "swapped" in placement.values():
        workers.stop(idle)
        placement = planned()
    workers.stop([name for name, where in placement.items() if where == "swapped"])
    return placement
