"""RunState: events folded into (variant, cell) outcomes, and what the run's consumer sees (pure)."""
from engine import events
from engine.events import Probe, Request
from engine.outcomes import RunState


def finished(name, request_id, cell, tokens=(0.1, 0.2)):
    return events.Finished(name, request_id, 0.0, tokens, (1, 2), "ab", 4, 1, False, cell=cell)


def test_each_answer_lands_in_the_cell_it_names():
    state = RunState(["sdpa"], cells=2)
    for request_id, cell in ((1, 1), (2, 0)):
        state.sent("sdpa", Request(request_id, "p", 2, cell=cell))
        assert state.fold(events.Started("sdpa", request_id, 0.0, 4, cell))
        assert state.fold(finished("sdpa", request_id, cell))
    assert [f.request_id for f in state.outcomes[("sdpa", 0)].finished] == [2]
    assert [f.request_id for f in state.outcomes[("sdpa", 1)].finished] == [1]
    assert not state.waiting(["sdpa"])


def test_a_warmup_streams_marked_its_end_stays_inside_and_its_failure_counts():
    state = RunState(["sdpa"], cells=1)
    state.sent("sdpa", Request(1, "p", 2, cell=0), warmup=True)
    start = events.Started("sdpa", 1, 0.0, 4, 0)
    assert state.fold(start) and state.shown(start).warmup is True          # the page streams it, marked
    assert state.fold(events.Token("sdpa", 1, 0, 5, "a", 0.1))
    timed = events.Started("sdpa", 9, 0.0, 4, 0)
    assert state.shown(timed) is timed                                      # a timed one is passed as is
    warm = finished("sdpa", 1, 0)
    assert not state.fold(warm)
    assert state.outcomes[("sdpa", 0)].finished == [] and state.outcomes[("sdpa", 0)].warmups == [warm]
    state.sent("sdpa", Request(2, "p", 2, cell=0), warmup=True)
    failed = events.Failed("sdpa", "boom", request_id=2, cell=0)
    assert state.fold(failed) and state.outcomes[("sdpa", 0)].failed is failed


def test_a_request_given_up_on_fails_its_cell_and_its_late_answer_is_dropped():
    state = RunState(["sdpa", "baseline"], cells=2)
    state.sent("sdpa", Request(7, "p", 2, cell=1))
    failed = state.give_up("sdpa", "timed out after 1 s")
    assert (failed.request_id, failed.cell) == (7, 1)
    assert state.outcomes[("sdpa", 1)].failed is failed and state.outcomes[("sdpa", 0)].failed is None
    assert state.waiting(["sdpa"])                             # still in flight until the worker answers
    assert not state.fold(events.Token("sdpa", 7, 0, 5, "a", 0.1))
    assert not state.fold(finished("sdpa", 7, 1))
    assert not state.waiting(["sdpa"]) and state.outcomes[("sdpa", 1)].finished == []


def test_a_failure_outside_any_request_fails_every_cell_of_that_variant_only():
    state = RunState(["sdpa", "baseline"], cells=2)
    load = state.failure("sdpa", "could not load")
    assert load.request_id is None and state.fold(load)
    assert all(state.outcomes[("sdpa", c)].failed is load for c in (0, 1))
    assert all(state.outcomes[("baseline", c)].failed is None for c in (0, 1))


def test_a_probes_answer_never_touches_an_outcome():
    state = RunState(["sdpa"], cells=1)
    state.sent("sdpa", Probe(3, "bandwidth"))
    measured = events.Measured("sdpa", 3, "bandwidth", {"bytes_per_s": 1e9})
    assert not state.fold(measured)
    assert state.answer(3) is measured and not state.waiting(["sdpa"])
    state.sent("sdpa", Probe(4, "overhead"))
    assert not state.fold(events.Failed("sdpa", "no", request_id=4))
    assert state.outcomes[("sdpa", 0)].failed is None and state.answer(4).reason == "no"


def test_a_worker_kept_loaded_from_an_earlier_run_fills_every_cell():
    state = RunState(["sdpa"], cells=2)
    loaded = events.Loaded("sdpa", 1.0, 2.0, 100, "cpu", "float32", "PyTorch SDPA")
    state.fold(loaded)
    assert all(state.outcomes[("sdpa", c)].loaded is loaded for c in (0, 1))


def test_the_engine_says_when_a_cell_is_done_and_a_later_failure_leaves_it_as_it_was():
    state = RunState(["sdpa", "fa2"], cells=2, repeats=2)
    state.unavailable("fa2", "needs CUDA")
    assert [(d.variant, d.cell, d.outcome.unavailable) for d in state.closed()] == [("fa2", 0, "needs CUDA"),
                                                                                  ("fa2", 1, "needs CUDA")]
    for request_id in (1, 2):                                       # cell 0: its two timed repeats
        state.sent("sdpa", Request(request_id, "p", 2, cell=0))
        state.fold(finished("sdpa", request_id, 0))
        done = state.closed()
        assert done == [] if request_id == 1 else [(d.variant, d.cell) for d in done] == [("sdpa", 0)]
    assert [f.request_id for f in done[0].outcome.finished] == [1, 2]
    state.sent("sdpa", Request(3, "p", 2, cell=1))
    state.fold(finished("sdpa", 3, 1))
    died = state.failure("sdpa", "the worker died")                 # about its request in cell 1
    state.fold(died)
    assert [(d.variant, d.cell, d.outcome.failed) for d in state.closed()] == [("sdpa", 1, died)]
    assert state.outcomes[("sdpa", 0)].failed is None               # the closed cell keeps what it had
    state.fold(events.Failed("sdpa", "gone"))                       # about no request: no open cell is left
    assert state.closed() == [] and state.outcomes[("sdpa", 0)].failed is None
