"""The Engine facade: real runs on the built-in tiny model, on the CPU."""
import json
import os
import signal
import threading
import time

import psutil
import pytest

from engine import events, presets
from engine.errors import InputError
from engine.pool import Engine
from engine.schedule import ENDED_LOADING
from engine.spec import RunSpec

SIX = ["baseline", "sdpa", "sdpa-flash", "bnb-4bit", "bnb-8bit", "no-kv-cache"]
PROMPT = "Why does decoding wait on memory bandwidth?"
LONG_PROMPT = PROMPT + " " + PROMPT * 90      # ~4k tokens: slower steps leave time to act mid-run


@pytest.fixture(scope="module")
def six_run(engine):
    """One fair run of six variants; the events and the report."""
    seen = list(engine.run(RunSpec(PROMPT, SIX, 24)))
    return seen, seen[-1].report


def rows(report):
    return {row["variant"]: row for row in report["results"]}


def test_every_variant_streams_tokens_with_consistent_metrics(six_run):
    seen, report = six_run
    assert report["prompt_tokens"] == len(PROMPT.encode()) + 1
    by = rows(report)
    assert list(by) == SIX
    for name, row in by.items():
        assert row["status"] == "ok", (name, row["reason"])
        assert row["output_tokens"] == 24                   # random weights: exactly the tokens asked for
        assert len(row["text"]) > 0
        assert 0 < row["ttft_s"] < row["e2e_s"]
        assert row["e2e_s"] == pytest.approx(row["ttft_s"] + row["tpot_s"] * 23, rel=1e-9)
        assert row["itl_p50_s"] <= row["itl_p90_s"] <= row["itl_p99_s"]
        assert row["tokens_per_s"] == pytest.approx(24 / row["e2e_s"])
        assert row["mbu"] is None                             # a CPU has no datasheet bandwidth
        assert row["mbu_measured"] == pytest.approx(row["decode_bytes_per_step"] / row["tpot_s"]
                                                    / report["peak_bandwidth_bytes_per_s"]["measured"])
        assert 0 < row["mbu_measured"] < 1
        assert row["placement"] == "resident" and row["contended"] is False
        assert row["peak_memory_bytes"] > 0 and row["weights_bytes"] > 0 and row["queue_s"] >= 0
        warmups = {e.request_id for e in seen if isinstance(e, events.Started) and e.variant == name and e.warmup}
        assert len(warmups) == 1                              # its warm-up streamed too, marked as one
        tokens = [e for e in seen if isinstance(e, events.Token) and e.variant == name
                  and e.request_id not in warmups]
        assert [t.index for t in tokens] == list(range(24))
        assert "".join(t.text for t in tokens) == row["text"]
    assert by["bnb-4bit"]["weights_bytes"] < by["bnb-8bit"]["weights_bytes"] < by["baseline"]["weights_bytes"]
    assert by["no-kv-cache"]["kv_cache_bytes"] == 0 < by["baseline"]["kv_cache_bytes"]
    # Float attention implementations compute the same greedy tokens as the baseline
    for name in ("sdpa", "sdpa-flash", "no-kv-cache"):
        assert by[name]["first_diff_token"] is None, name
    json.dumps(report)                                        # the report is plain JSON


def test_fair_mode_never_overlaps_two_generation_windows(six_run):
    seen, _ = six_run
    starts = {e.variant: e.t_start for e in seen if isinstance(e, events.Started)}
    ends = {e.variant: e.token_times[-1] for e in seen if isinstance(e, events.Finished)}
    windows = sorted((starts[n], ends[n]) for n in SIX)
    for (_, end), (next_start, _) in zip(windows, windows[1:]):
        assert end <= next_start


def test_second_run_reuses_the_loaded_workers(engine, six_run):
    pids = engine.pids()
    seen = list(engine.run(RunSpec(PROMPT, ["baseline", "sdpa"], 4)))
    assert not [e for e in seen if isinstance(e, events.Loaded)]
    assert {n: engine.pids()[n] for n in ("baseline", "sdpa")} == {n: pids[n] for n in ("baseline", "sdpa")}
    assert all(r["status"] == "ok" for r in seen[-1].report["results"])


def test_a_killed_worker_fails_alone_and_restarts_next_run(engine, six_run):
    killed = threading.Event()
    # a short prompt: 200 tokens still outlast the kill at token 3 by far, and no-kv-cache's recompute stays cheap
    run = engine.start(RunSpec(PROMPT, ["baseline", "sdpa", "no-kv-cache"], 200, warmup_requests=0,
                               ignore_eos=True))
    report = None
    for event in run:
        if isinstance(event, events.Token) and event.variant == "sdpa" and event.index == 3 and not killed.is_set():
            os.kill(engine.pids()["sdpa"], signal.SIGKILL)     # the engine's own child, by its pid
            killed.set()
        if isinstance(event, events.RunDone):
            report = event.report
    by = rows(report)
    assert by["sdpa"]["status"] == "failed" and "died" in by["sdpa"]["reason"]
    assert by["baseline"]["status"] == "ok" and by["no-kv-cache"]["status"] == "ok"
    assert by["baseline"]["output_tokens"] == 200 == by["no-kv-cache"]["output_tokens"]
    again = list(engine.run(RunSpec(PROMPT, ["sdpa"], 4)))
    assert any(isinstance(e, events.Loaded) for e in again)   # started afresh
    assert rows(again[-1].report)["sdpa"]["status"] == "ok"


def test_cancel_stops_a_run_early(engine, six_run):
    run = engine.start(RunSpec(LONG_PROMPT, ["baseline", "sdpa"], 256, warmup_requests=0))   # cancelled when timed
    report = None
    for event in run:
        if isinstance(event, events.Token) and event.index == 5:
            assert engine.cancel(run.id + 1) is False          # someone else's run id: nothing happens
            assert engine.cancel(run.id) is True
        if isinstance(event, events.RunDone):
            report = event.report
    by = rows(report)
    assert report["cancelled"] is True
    assert by["baseline"]["status"] == "cancelled" and 6 <= by["baseline"]["output_tokens"] < 256
    assert by["sdpa"]["status"] == "cancelled" and by["sdpa"]["output_tokens"] is None
    # the engine serves the next run normally
    assert rows(list(engine.run(RunSpec(PROMPT, ["sdpa"], 4)))[-1].report)["sdpa"]["output_tokens"] == 4


def test_race_mode_marks_shared_device_results_contended(engine, six_run):
    report = list(engine.run(RunSpec(PROMPT, ["baseline", "sdpa"], 8, mode="race")))[-1].report
    assert report["mode"] == "race"
    assert all(r["contended"] is True and r["status"] == "ok" for r in report["results"])


def test_repeats_report_medians_and_the_spread(engine, six_run):
    row = rows(list(engine.run(RunSpec(PROMPT, ["sdpa"], 8, repeats=3)))[-1].report)["sdpa"]
    assert row["repeats"] == 3
    assert row["tpot_min_s"] <= row["tpot_s"] <= row["tpot_max_s"]


@pytest.mark.parametrize("kwargs, message", [
    ({"prompt": "   "}, "the prompt is empty"),
    ({"variants": []}, "no variant selected"),
    ({"variants": ["warp"]}, "unknown variant 'warp'"),
    ({"max_new_tokens": 0}, "between 1 and 256"),
    ({"max_new_tokens": 257}, "between 1 and 256"),
    ({"prompt": "x" * 4600}, "more than the context of 4608"),
])
def test_bad_input_is_refused_before_any_work(engine, kwargs, message):
    args = {"prompt": PROMPT, "variants": ["baseline"], "max_new_tokens": 8} | kwargs
    with pytest.raises(InputError, match=message):
        engine.start(RunSpec(args["prompt"], args["variants"], args["max_new_tokens"]))


def test_a_decode_step_counts_one_row_of_an_untied_input_table_not_all_of_it(six_run):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from engine.worker import models
    shape = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4)
    untied = AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", tie_word_embeddings=False, **shape))
    tied = AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", tie_word_embeddings=True, **shape))
    assert models.input_table_bytes(untied) == 512 * 64 * 4 and models.input_table_bytes(tied) == 0
    tiny = presets.load("tiny").config                          # untied, float32
    table = tiny["vocab_size"] * tiny["hidden_size"] * torch.finfo(torch.float32).bits // 8
    row = rows(six_run[1])["no-kv-cache"]                       # no cache: a step reads the weights only
    assert row["decode_bytes_per_step"] == row["weights_bytes"] - table


def test_the_engine_measures_the_copy_bandwidth_once_after_the_timed_requests(engine, six_run):
    seen, report = six_run
    bandwidth = report["peak_bandwidth_bytes_per_s"]
    assert bandwidth["datasheet"] is None and bandwidth["measured"] == engine.bandwidth > 1e8
    assert not any(isinstance(e, events.Failed) for e in seen)
    again = list(engine.run(RunSpec(PROMPT, ["sdpa"], 2)))[-1].report             # no second measurement
    assert again["peak_bandwidth_bytes_per_s"]["measured"] == bandwidth["measured"]


def test_workers_outside_a_run_stay_loaded_when_memory_allows(engine, six_run):
    before = engine.pids()
    assert {"bnb-4bit", "bnb-8bit"} <= set(before)
    list(engine.run(RunSpec(PROMPT, ["baseline"], 2)))        # a run of one variant
    after = engine.pids()
    assert after["bnb-4bit"] == before["bnb-4bit"] and after["bnb-8bit"] == before["bnb-8bit"]


def test_a_request_past_its_timeout_fails_and_the_worker_serves_the_next():
    with Engine(presets.load("small"), request_timeout_s=1.0) as small:
        # about 5 s of work on this CPU; no warm-up request, which would take as long before it
        report = list(small.run(RunSpec(PROMPT, ["sdpa"], 512, warmup_requests=0)))[-1].report
        row = rows(report)["sdpa"]
        assert row["status"] == "failed" and row["reason"].startswith("timed out after 1 s")
        pid = small.pids()["sdpa"]
        again = rows(list(small.run(RunSpec(PROMPT, ["sdpa"], 4)))[-1].report)["sdpa"]
        assert again["status"] == "ok" and again["output_tokens"] == 4
        assert small.pids()["sdpa"] == pid       # the worker obeyed the cancel and stayed


def test_gpu_workers_get_a_core_each_and_cpu_workers_none(engine, six_run):
    from engine.topology import free_core

    def alone(core):
        return frozenset({core})
    assert free_core([0, 1, 2, 3], set(), alone) == 1           # core 0 stays with the orchestrator
    assert free_core([0, 1, 2, 3], {1, None}, alone) == 2
    assert free_core([4, 5, 6], {5, 6}, alone) is None          # no core left: the worker is not pinned
    assert free_core([0], set(), alone) is None

    def pairs(core):                                            # hyper-threads 0-1, 2-3, ...
        return frozenset({core - core % 2, core - core % 2 + 1})

    def halves(core):                                           # hyper-threads 0-4, 1-5, ...
        return frozenset({core % 4, core % 4 + 4})
    assert free_core(list(range(8)), set(), pairs) == 2         # not 1: it shares core 0's physical core
    assert free_core(list(range(8)), {2, None}, pairs) == 4
    assert free_core(list(range(8)), {2, 4, 6}, pairs) == 1     # no physical core left whole: a hyper-thread
    assert free_core(list(range(8)), {1, 2}, halves) == 3
    assert free_core(list(range(8)), {1, 2, 3}, halves) == 4
    usable = set(os.sched_getaffinity(0))                       # a CPU run: no worker is pinned
    assert engine.pids() and all(set(psutil.Process(pid).cpu_affinity()) == usable for pid in engine.pids().values())


def test_every_timed_request_reports_its_threads_and_the_host_load(six_run):
    _, report = six_run
    for row in report["results"]:
        assert row["cpu_threads"] == __import__("torch").get_num_threads()   # the engine's default: torch's
        assert row["host_others_cores"] >= 0 and isinstance(row["host_busy"], bool)
        # beside each repeat: how often its serving thread was preempted; no GPU clock on a CPU
        assert len(row["preemptions_repeats"]) == row["repeats"]
        assert all(isinstance(p, int) and p >= 0 for p in row["preemptions_repeats"])
        assert row["sm_clock_mhz_repeats"] == [None] * row["repeats"]


def test_an_engine_that_leaves_cores_spare_gives_each_cpu_worker_the_rest():
    from engine import topology
    cores = len(topology.usable_cores())
    assert Engine(presets.load("tiny"), spare_cores=1).threads == max(cores - 1, 1)
    assert Engine(presets.load("tiny"), spare_cores=cores + 4).threads == 1
    assert Engine(presets.load("tiny"), threads=3, spare_cores=1).threads == 3     # an explicit count wins
    assert Engine(presets.load("tiny")).threads is None                          # torch's default


def test_a_run_waiting_for_the_device_can_be_cancelled_and_then_does_nothing(engine, six_run):
    active = engine.start(RunSpec(LONG_PROMPT, ["sdpa"], 256))
    waiting = engine.start(RunSpec(PROMPT, ["baseline"], 8))
    assert engine.cancel(waiting.id) is True                  # it waits behind `active`, and is still reachable
    assert not engine.idle
    seen = list(waiting)
    assert not [e for e in seen if isinstance(e, (events.Started, events.Token, events.Status))]
    report = seen[-1].report
    assert report["cancelled"] is True and rows(report)["baseline"]["status"] == "cancelled"
    done = list(active)[-1].report                            # the active run was not touched by that cancel
    assert done["cancelled"] is False and rows(done)["sdpa"]["output_tokens"] == 256
    assert engine.cancel(waiting.id) is False                 # finished runs are forgotten


def test_closing_an_engine_cancels_its_runs_and_stops_every_worker():
    with Engine(presets.load("tiny")) as own:
        active = own.start(RunSpec(LONG_PROMPT, ["sdpa", "baseline"], 256))
        waiting = own.start(RunSpec(PROMPT, ["baseline"], 8))
        for event in active:
            if isinstance(event, events.Token):
                break
        pids = list(own.pids().values())
        own.close()
        assert own.idle and own.pids() == {}
        assert list(waiting)[-1].report["cancelled"] is True
        gone, alive = psutil.wait_procs([psutil.Process(pid) for pid in pids if psutil.pid_exists(pid)], timeout=5)
        assert alive == []


def test_a_loaded_variant_streams_its_warm_up_while_a_slow_one_loads_and_nothing_timed_overlaps_a_load(
        monkeypatch):
    monkeypatch.setenv("SIDEBYSIDE_LOAD_DELAY", "sdpa=3")        # read by the workers this engine starts
    with Engine(presets.load("tiny")) as fresh:
        seen = list(fresh.run(RunSpec(PROMPT, ["baseline", "sdpa"], 8, repeats=2)))
    order = [(type(e).__name__, e.variant, getattr(e, "warmup", None)) for e in seen if not isinstance(e, events.RunDone)]
    sdpa_loaded = order.index(("Loaded", "sdpa", None))
    first_token = next(i for i, e in enumerate(seen) if isinstance(e, events.Token))
    assert seen[first_token].variant == "baseline" and first_token < sdpa_loaded     # streamed before the load ended
    warm = [e for e in seen if isinstance(e, events.Started) and e.warmup]
    assert sorted(e.variant for e in warm) == ["baseline", "sdpa"]
    timed = [e for e in seen if isinstance(e, events.Started) and not e.warmup]
    assert len(timed) == 4 and min(seen.index(e) for e in timed) > sdpa_loaded      # timed: after every load
    report = seen[-1].report
    by = rows(report)
    assert by["sdpa"]["load_s"] >= 3.0                            # the drawn-out load counts as loading
    assert by["baseline"]["warmup_requests"] == 1 == len(by["baseline"]["warmup_e2e_s"])
    assert by["baseline"]["repeats"] == 2 and by["baseline"]["status"] == "ok" == by["sdpa"]["status"]


def test_a_stop_ends_every_variant_within_seconds_loading_ones_included(monkeypatch):
    """Stop while baseline streams and three variants still load (drawn out to a minute): a loading worker
    reads no pipe until it is ready, so it is ended at once instead of waited for; the report comes within
    a few seconds of the Stop (issue 30: it took 20 s with eight variants) and every row says cancelled."""
    slow = ["sdpa", "bnb-8bit", "no-kv-cache"]
    monkeypatch.setenv("SIDEBYSIDE_LOAD_DELAY", ",".join(f"{name}=60" for name in slow))
    with Engine(presets.load("tiny")) as fresh:
        run = fresh.start(RunSpec(LONG_PROMPT, ["baseline", *slow], 256))
        for event in run:
            if isinstance(event, events.Token) and event.variant == "baseline":
                break                                 # baseline generates (its warm-up); the others load
        pids = fresh.pids()
        assert sorted(pids) == sorted(["baseline", *slow])
        began = time.monotonic()
        assert fresh.cancel(run.id) is True
        rest = list(run)
        took = time.monotonic() - began
        report = rest[-1].report
        assert took < 5.0, f"the report came {took:.1f} s after the Stop"
        assert report["cancelled"] is True
        assert {row["variant"]: row["status"] for row in report["results"]} == dict.fromkeys(["baseline", *slow],
                                                                                               "cancelled")
        by = rows(report)
        assert all(by[name]["reason"] == "the run was stopped before this variant had loaded" for name in slow)
        ended = [e.variant for e in rest if isinstance(e, events.Status) and e.stage == "cancelled"]
        assert sorted(ended) == sorted(slow) and all(e.detail == ENDED_LOADING for e in rest
                                                     if isinstance(e, events.Status) and e.stage == "cancelled")
        gone, alive = psutil.wait_procs([psutil.Process(pids[name]) for name in slow if psutil.pid_exists(pids[name])],
                                        timeout=2)
        assert alive == []                            # ended, not left loading
        assert fresh.pids() == {"baseline": pids["baseline"]}       # it obeyed at its next token and stays loaded
