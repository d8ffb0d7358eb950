"""A run's bookkeeping as one object: events folded into (variant, cell) outcomes.

Made once per run (or probe) and dropped with it, so nothing of one run leaks into the next.
The events are folded here and nowhere else: when a (variant, cell) can change no more, the engine
sends a `CellDone` with its outcome (`closed`), which the live sweep and the page take as it is; the
report (engine/report.py) reads the same outcomes.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from engine import events
from engine.events import Probe, Request


@dataclass
class Outcome:
    """What one variant produced in one cell of a run."""
    variant: str
    finished: list = field(default_factory=list)     # Finished events, one per timed repeat
    warmups: list = field(default_factory=list)      # Finished events of the warm-ups, measured by nobody
    failed: events.Failed | None = None
    unavailable: str | None = None
    placement: str | None = None                      # "resident" or "swapped"; None if it never ran
    contended: bool = False
    loaded: events.Loaded | None = None
    t_ready: float | None = None                      # perf_counter() when its group began generating


class RunState:
    """Which request each variant works on, which requests are warm-ups, abandoned or probes, and the outcomes.

    `fold(event)` records an event where it belongs and says whether the run's consumer sees it:
    probes stay inside, as does anything of a request given up on (it timed out); of a warm-up the
    consumer sees the start (marked, see `shown`) and the tokens, for the page to stream, never its
    end (its answer is kept apart, for its time).
    """

    def __init__(self, names: list[str], cells: int, repeats: int = 1):
        self.outcomes = {(name, cell): Outcome(name) for cell in range(cells) for name in names}
        self.repeats = repeats                       # timed requests that close a (variant, cell)
        self._closed: set[tuple[str, int]] = set()
        self._newly_closed: list[tuple[str, int]] = []
        self.current: dict[str, int] = {}            # variant -> the request it is working on
        self._requests: dict[int, Request] = {}
        self._warmups: set[int] = set()              # their failures count; their tokens and timings do not
        self._abandoned: set[int] = set()            # nothing of them counts
        self._probes: dict[int, events.Measured | events.Failed | None] = {}

    def of(self, name: str) -> list[Outcome]:
        """The variant's outcomes, one per cell."""
        return [outcome for (variant, _), outcome in self.outcomes.items() if variant == name]

    def sent(self, name: str, message: Request | Probe, warmup: bool = False) -> None:
        """A request or probe went to the variant's worker; its answer is awaited."""
        self.current[name] = message.request_id
        if isinstance(message, Probe):
            self._probes[message.request_id] = None
            return
        self._requests[message.request_id] = message
        if warmup:
            self._warmups.add(message.request_id)

    def waiting(self, names) -> bool:
        """Whether any of the named variants still owes an answer."""
        return any(name in self.current for name in names)

    def answer(self, probe_id: int):
        """The Measured or Failed event that answered a probe (None: no answer)."""
        return self._probes.get(probe_id)

    def failure(self, name: str, reason: str) -> events.Failed:
        """A failure the orchestrator saw (a death, a stuck worker) for the variant's current request,
        or for the variant as a whole when it had none."""
        request = self._requests.get(self.current.get(name, -1))
        return events.Failed(name, reason, request_id=request.request_id if request else None,
                             cell=request.cell if request else None)

    def give_up(self, name: str, reason: str) -> events.Failed:
        """The variant's request ran past its time: it fails its cell, and whatever the worker still
        sends for it is dropped. It stays current until the worker answers or is stopped."""
        failed = self.failure(name, reason)
        self._record_failure(failed)
        self._abandoned.add(failed.request_id)
        return failed

    def fold(self, event) -> bool:
        """Record the event; True when the run's consumer should see it."""
        request_id = getattr(event, "request_id", None)
        name = getattr(event, "variant", None)
        if request_id in self._probes:
            if isinstance(event, (events.Measured, events.Failed)):
                self._probes[request_id] = event
                self.current.pop(name, None)
            return False
        if request_id in self._abandoned:
            if isinstance(event, (events.Finished, events.Failed)) and self.current.get(name) == request_id:
                self.current.pop(name)
            return False
        if isinstance(event, events.Finished):
            if request_id != self.current.get(name):
                return False                          # not the request it works on: nothing to add
            self.current.pop(name)
            for outcome in self._cell_outcomes(event):
                (outcome.warmups if request_id in self._warmups else outcome.finished).append(event)
            if request_id in self._warmups:
                return False
            outcome = self.outcomes.get((name, event.cell))
            if outcome is not None and len(outcome.finished) >= self.repeats:
                self._close([(name, event.cell)])
        elif isinstance(event, events.Failed):
            if request_id is None or self.current.get(name) == request_id:
                self.current.pop(name, None)
            self._record_failure(event)
        elif isinstance(event, events.Loaded):
            for outcome in self.of(name):
                outcome.loaded = event
        return True

    def unavailable(self, name: str, reason: str) -> None:
        """The variant cannot run here: every cell of it is closed with the reason."""
        for outcome in self.of(name):
            outcome.unavailable = reason
        self._close([key for key in self.outcomes if key[0] == name])

    def closed(self) -> list[events.CellDone]:
        """A CellDone for each (variant, cell) closed since the last call, in the order they closed, each
        with a copy of its outcome as it stands."""
        done, self._newly_closed = self._newly_closed, []
        return [events.CellDone(name, cell, self._copy(self.outcomes[(name, cell)])) for name, cell in done]

    @staticmethod
    def _copy(outcome: Outcome) -> Outcome:
        return dataclasses.replace(outcome, finished=list(outcome.finished), warmups=list(outcome.warmups))

    def _close(self, keys) -> None:
        for key in keys:
            if key in self.outcomes and key not in self._closed:
                self._closed.add(key)
                self._newly_closed.append(key)

    def shown(self, event):
        """The event as the consumer gets it: a warm-up's Started says that it is one."""
        if isinstance(event, events.Started) and event.request_id in self._warmups:
            return dataclasses.replace(event, warmup=True)
        return event

    def _record_failure(self, failed: events.Failed) -> None:
        """The failure closes its cell, or every open cell of the variant when it is about no request (a
        worker that could not load, or died between requests); a closed cell keeps what it had."""
        if failed.request_id is None or failed.cell is None:
            keys = [key for key in self.outcomes if key[0] == failed.variant]
        else:
            keys = [(failed.variant, failed.cell)]
        keys = [key for key in keys if key in self.outcomes and key not in self._closed]
        for key in keys:
            self.outcomes[key].failed = failed
        self._close(keys)

    def _cell_outcomes(self, event) -> list[Outcome]:
        """The outcome of the event's cell; every cell of the variant for a failure outside a request."""
        if event.request_id is None or event.cell is None:
            return self.of(event.variant)
        outcome = self.outcomes.get((event.variant, event.cell))
        return [outcome] if outcome is not None else []
