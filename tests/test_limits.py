"""The limits of a public page: the work budget, the checks, and the deadline of a real run."""
import pytest

from engine import events, presets
from engine.errors import InputError
from engine.limits import Limits, request_work, work
from engine.pool import Engine
from engine.spec import Cell, RunSpec


def test_work_counts_every_position_each_request_runs_through_the_model():
    assert request_work(100, 10, 1, use_cache=True) == 110
    assert request_work(100, 3, 2, use_cache=False) == (100 + 101 + 102) * 2      # recomputed every step
    spec = RunSpec("x", ["baseline", "no-kv-cache"], 4, repeats=3)               # + one warm-up each
    assert work(spec, 10) == 4 * (10 + 4) + 4 * (10 + 11 + 12 + 13)
    grid = RunSpec("x", ["sdpa"], 8, repeats=2, cells=(Cell(prompt_tokens=64, max_new_tokens=2),
                                                      Cell(prompt_tokens=32, batch_size=4)))
    assert work(grid, 10) == 3 * (64 + 2) + 3 * (32 + 8) * 4


def test_public_limits_refuse_with_what_to_change_and_private_ones_only_the_presets_caps():
    public = Limits.public_defaults(prompt_chars=50, work_tokens=1000)
    with pytest.raises(InputError, match="the prompt has 51 characters; this page allows up to 50: shorten it"):
        public.check(RunSpec("x" * 51, ["baseline"], 4))
    with pytest.raises(InputError, match="repeats is 4; this page allows 1 to 3"):
        public.check(RunSpec("x", ["baseline"], 4, repeats=4))
    with pytest.raises(InputError, match="max new tokens is 300; this page allows 1 to 256"):
        public.check(RunSpec("x", ["baseline"], 300))
    spec = RunSpec("x", ["baseline", "no-kv-cache"], 30, repeats=3)
    public.check(spec)                                                    # nothing tokenized yet: passes
    with pytest.raises(InputError, match=f"would process {work(spec, 20):,} token positions; this page allows "
                                         "1,000 per run: .* leave out no-kv-cache"):
        public.check(spec, 20)
    Limits().check(RunSpec("x" * 10 ** 6, ["baseline"], 10 ** 4, repeats=50), 10 ** 6)     # private: no limit here
    assert Limits().describe() == ["private mode: only each preset's own caps apply"]
    assert any("at most 8 runs waiting" in line for line in Limits.public_defaults().describe())


def test_an_engine_refuses_past_its_limits_and_stops_a_run_at_its_deadline_keeping_what_it_measured():
    with Engine(presets.load("tiny"), limits=Limits(prompt_chars=100_000)) as engine:
        with pytest.raises(InputError, match="allows up to 100,000"):
            engine.validate(RunSpec("y" * 100_001, ["baseline"], 4))
        prompt = "Why? " * 600
        list(engine.run(RunSpec(prompt, ["baseline"], 4)))               # loads the worker: it stays loaded
        engine.run_limits = Limits(run_deadline_s=4.0)
        # no load now: a short warm-up, then 500 timed requests of a few tenths of a second each, even on
        # a busy machine, so that some are done at the deadline and most are not
        seen = list(engine.run(RunSpec(prompt, ["baseline"], 32, repeats=500, ignore_eos=True)))
    report = seen[-1].report
    assert report["cancelled"] is True and "time limit of 4 s" in report["stop_reason"]
    row = report["results"][0]
    assert row["output_tokens"] and row["status"] == "cancelled"        # what it measured is kept
    assert 1 <= row["repeats"] < 500 and row["reason"] == report["stop_reason"]
    assert any(isinstance(e, events.Token) for e in seen)
