"""A loaded variant (engine/worker/runner.py) serving requests in this process, on the CPU."""
import pytest

from engine import events, presets

PROMPT = "Why does decoding wait on memory bandwidth?"


@pytest.mark.parametrize("attention", ["sdpa", "reduce"])
def test_compiled_decoder_matches_generate_and_compiles_outside_the_clock(attention, monkeypatch):
    import functools

    import torch
    from torch._dynamo.utils import counters

    from engine.worker import decode
    from engine.worker.decode import bucket
    from engine.events import Request, WorkerSpec
    from engine.worker.runner import Runner
    # the worker builds its decoder with the defaults: hand it the formulation under test
    monkeypatch.setattr(decode, "CompiledDecoder",
                        functools.partial(decode.CompiledDecoder, fused_attention=attention))
    assert [bucket(n, 4608) for n in (1, 256, 257, 2176, 4000, 9000)] == [256, 256, 512, 4096, 4096, 4608]
    tiny = presets.load("tiny")
    torch._dynamo.reset()              # a step compiled by an earlier test in this process must not serve this one
    seen = []
    compiled = Runner(WorkerSpec(tiny, "compiled", "cpu"), seen.append)
    never = type("Never", (), {"is_set": lambda self: False})()
    graphs = counters["stats"]["unique_graphs"]
    short = compiled.generate(Request(1, PROMPT, 12, ignore_eos=True), never)
    longer = compiled.generate(Request(2, "x", 12, ignore_eos=True, prompt_tokens=300), never)   # bucket 512
    assert counters["stats"]["unique_graphs"] - graphs == 1     # the cache's length is dynamic: one compile
    stages = [e.detail for e in seen if isinstance(e, events.Status)]
    assert stages == ["preparing the decode step for this length"] * 2
    started = [e for e in seen if isinstance(e, events.Started)]
    assert [s.request_id for s in started] == [1, 2]
    # the clock starts after the warm-up: every token came after its own request's start
    assert longer.token_times[0] > longer.t_start and len(longer.token_ids) == 12
    eager = Runner(WorkerSpec(tiny, "sdpa", "cpu"), lambda e: None)
    reference = eager.generate(Request(3, PROMPT, 12, ignore_eos=True), never)
    assert short.token_ids == reference.token_ids                # the same greedy tokens as generate()
    assert longer.token_ids == eager.generate(Request(4, "x", 12, ignore_eos=True, prompt_tokens=300), never).token_ids
    assert sorted(compiled.decoder.caches) == [(1, 256), (1, 512)]      # one cache (and CUDA graph) per bucket
    assert compiled.decoder.fused.attention == attention


def test_cpu_peak_memory_is_measured_per_request():
    from engine import telemetry
    from engine.events import Request, WorkerSpec
    from engine.worker.runner import Runner
    runner = Runner(WorkerSpec(presets.load("tiny"), "sdpa", "cpu"), lambda event: None)
    never = type("Never", (), {"is_set": lambda self: False})()
    ballast = bytearray(400 * 2**20)
    ballast[::4096] = b"x" * len(ballast[::4096])               # touch the pages: 400 MiB resident
    high_water = telemetry.peak_rss_bytes()
    del ballast
    memory = runner.generate(Request(1, PROMPT, 4, ignore_eos=True), never).memory
    assert memory["peak_rss_scope"] == "request"
    assert memory["peak_rss_bytes"] < high_water - 300 * 2**20  # the ballast's peak is not this request's
    assert memory["peak_rss_bytes"] >= memory["rss_bytes"] * 0.9


def test_a_short_untimed_forward_pass_primes_the_model_just_before_the_clock_starts():
    import time

    from engine.events import Request, WorkerSpec
    from engine.worker.runner import PRIME_TOKENS, Runner
    runner = Runner(WorkerSpec(presets.load("tiny"), "sdpa", "cpu"), lambda event: None)
    calls = []                                     # (when, input width, with a cache?) of every forward pass
    forward = runner.model.forward

    def timed_forward(*args, **kwargs):
        calls.append((time.perf_counter(), kwargs["input_ids"].shape[1], kwargs.get("use_cache")))
        return forward(*args, **kwargs)

    runner.model.forward = timed_forward
    never = type("Never", (), {"is_set": lambda self: False})()
    finished = runner.generate(Request(1, "x", 6, ignore_eos=True, batch_size=2, prompt_tokens=40, pad_ratio=0.25),
                               never)
    before = [call for call in calls if call[0] < finished.t_start]
    after = [call for call in calls if call[0] >= finished.t_start]
    assert [(width, cache) for _, width, cache in before] == [(PRIME_TOKENS, False)]    # the prime, untimed
    assert after[0][1] == 40 and len(after) == 6          # the timed prefill, then one step per later token
    assert len(finished.token_ids) == 6
    # TTFT in three: the prefill's marks are that forward pass's, and its hooks are gone once they fired
    marks = finished.phases
    assert finished.t_start < marks["prefill_began"] <= after[0][0] < marks["prefill_ended"] < after[1][0]
    assert marks["prefill_ended"] < marks["first_token"] == finished.token_times[0]
    assert not runner.model._forward_pre_hooks and not runner.model._forward_hooks
