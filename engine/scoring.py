"""Each variant of a run scored on the reference's answer, group by group, after the timed requests.

The reference variant scores its own answer first (its log-probabilities at each answer position, the
whole vocabulary in float32: 49,152 x 4 bytes per position for SmolLM2, exact, no top-k); then every
other variant whose worker is loaded scores the same tokens against them (engine/worker/quality.py).
A swapped reference loads before the other swapped variants (schedule.groups), and resident variants
stay loaded until the run ends, so every local variant is scored while its weights are in memory.
Probes never touch an outcome or a timing: they come after the group's last timed request.
"""
from __future__ import annotations

from engine import events, quality
from engine.presets import Preset
from engine.schedule import ProbeFailed, Turn
from engine.spec import RunSpec
from engine.variants import REFERENCE


class Scorer:
    """The quality entry (engine/quality.py) of every variant of one run, made as its groups finish."""

    def __init__(self, spec: RunSpec, preset: Preset, remote_names: set[str], keep_logprobs: bool = False):
        self.spec, self.remote_names, self.keep_logprobs = spec, remote_names, keep_logprobs
        self.entries: dict[str, dict] = {}
        self.logprobs: dict[str, object] = {}       # with keep_logprobs: each variant's array, and the answer
        self._reference: dict | None = None          # the reference's values, its log-probabilities
        self._answer: tuple[int, ...] = ()
        self._note: str | None = None                # the answer was scored on its first positions only
        self.off: str | None = None
        self._told = False
        if not spec.quality:
            self.off = "not measured: quality was turned off for this run"
        elif preset.random_weights:
            self.off = quality.RANDOM_WEIGHTS
        elif REFERENCE not in spec.variants:
            self.off = quality.NO_REFERENCE
        if self.off is not None:
            status = "not meaningful" if self.off == quality.RANDOM_WEIGHTS else "not measured"
            self.entries = {name: quality.unmeasured(status, self.off) for name in spec.variants}

    def after_group(self, execution, loaded: list[str], last: bool) -> None:
        """Score every variant loaded now that has answered and has no entry yet, the reference first."""
        if self.off is not None:
            if not self._told and self.spec.quality:     # why not, said once as the first group is done
                self._told = True
                for name in self.spec.variants:
                    execution.emit(events.Scored(name, self.entries[name]))
            return
        ready = [name for name in self.spec.variants if name not in self.entries and execution.ready(name)]
        if REFERENCE in ready and self._reference is None:
            self._score_reference(execution)
        if self._reference is not None:
            for name in ready:
                if name not in self.entries:
                    self._score(execution, name)
        if last:
            self._finish(execution)

    def _answered(self, execution, name: str):
        outcome = execution.state.outcomes.get((name, 0))
        return outcome.finished[-1] if outcome is not None and outcome.finished else None

    def _probe(self, execution, name: str, **fields) -> dict | None:
        request = execution.request(self.spec, Turn(0, False, False))
        try:
            return execution.measure(name, "quality", execution.timeouts.request_s, request=request,
                                     answer=self._answer, keep_logprobs=self.keep_logprobs, **fields)
        except Exception as error:  # noqa: BLE001 - a variant that cannot score keeps its timings
            # the worker's one line, less the served scorer's exception name ("NotReported: ...")
            reason = error.reason.removeprefix("NotReported: ") if isinstance(error, ProbeFailed) else str(error)
            if name in self.remote_names:
                entry = quality.unmeasured("not reported", f"{quality.NOT_REPORTED} ({reason})", REFERENCE)
            else:
                entry = quality.unmeasured("not measured", f"not measured: {reason}", REFERENCE)
            self._enter(execution, name, entry)
            return None

    def _score_reference(self, execution) -> None:
        shown = self._answered(execution, REFERENCE)
        if shown is None or not shown.token_ids:
            return
        self._answer = tuple(shown.token_ids)
        values = self._probe(execution, REFERENCE)
        if values is None:
            return
        self._reference = values
        if values["positions"] < len(self._answer):     # bounded by the worker (engine/worker/quality.py)
            self._note = f"on the first {values['positions']} of the answer's {len(self._answer)} tokens"
            self._answer = self._answer[:values["positions"]]
        self._keep(REFERENCE, values)
        entry = quality.summarize(dict(values, kld=[0.0] * values["positions"]), values, REFERENCE, self._note)
        entry["status"] = "reference"
        self._enter(execution, REFERENCE, entry)

    def _score(self, execution, name: str) -> None:
        if self._answered(execution, name) is None:
            self._enter(execution, name, quality.unmeasured("not measured", "not measured: it gave no answer",
                                                            REFERENCE))
            return
        values = self._probe(execution, name, reference=self._reference["logprobs"])
        if values is not None:
            self._keep(name, values)
            notes = [note for note in (values.get("approximation"), self._note) if note]
            self._enter(execution, name, quality.summarize(values, self._reference, REFERENCE,
                                                           "; ".join(notes) or None))

    def _keep(self, name: str, values: dict) -> None:
        if self.keep_logprobs:
            self.logprobs[name] = values.get("logprobs")
            self.logprobs["answer"] = self._answer

    def _enter(self, execution, name: str, entry: dict) -> None:
        self.entries[name] = entry
        execution.emit(events.Scored(name, entry))

    def _finish(self, execution) -> None:
        """Every variant left without an entry says why."""
        if self._reference is None:
            why = "not measured: the baseline gave no answer to score"
        else:
            why = "not measured: it was not loaded after the baseline answered"
        for name in self.spec.variants:
            if name not in self.entries:
                self._enter(execution, name, quality.unmeasured("not measured", why, REFERENCE))

    def entry(self, name: str, cancelled: bool) -> dict:
        """The variant's entry for the report (a stopped run leaves the unscored ones saying so)."""
        if name in self.entries:
            return self.entries[name]
        why = "not measured: the run was stopped" if cancelled else "not measured"
        return quality.unmeasured("not measured", why, REFERENCE)

