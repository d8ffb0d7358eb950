"""Real runs of the engine on the built-in tiny model, on the CPU."""
import json
import os
import subprocess
import sys
import threading
import time
import uuid

import psutil
import pytest

from engine import events, presets
from engine.pool import Engine, InputError

SIX = ["baseline", "sdpa", "sdpa-flash", "bnb-4bit", "bnb-8bit", "no-kv-cache"]
PROMPT = "Why does decoding wait on memory bandwidth?"
LONG_PROMPT = PROMPT + " " + PROMPT * 90      # ~4k tokens: slower steps leave time to act mid-run


@pytest.fixture(scope="module")
def six_run(engine):
    """One fair run of six variants; the events and the report."""
    seen = list(engine.run(PROMPT, SIX, 24))
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
        tokens = [e for e in seen if isinstance(e, events.Token) and e.variant == name]
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
    pids = {name: w.process.pid for name, w in engine.workers.items()}
    seen = list(engine.run(PROMPT, ["baseline", "sdpa"], 4))
    assert not [e for e in seen if isinstance(e, events.Loaded)]
    assert {n: engine.workers[n].process.pid for n in ("baseline", "sdpa")} == \
        {n: pids[n] for n in ("baseline", "sdpa")}
    assert all(r["status"] == "ok" for r in seen[-1].report["results"])


def test_baseline_and_sdpa_give_the_same_logits():
    import torch

    from engine import models
    from engine.variants import CATALOG
    tiny = presets.load("tiny")
    eager, tokenizer = models.load_model(tiny, CATALOG["baseline"], "cpu")
    sdpa, _ = models.load_model(tiny, CATALOG["sdpa"], "cpu")
    assert eager.config._attn_implementation == "eager" and sdpa.config._attn_implementation == "sdpa"
    ids = torch.tensor([tokenizer(PROMPT)["input_ids"]])
    with torch.inference_mode():
        a, b = eager(ids).logits, sdpa(ids).logits
    assert a.shape == (1, ids.shape[1], 512)
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_a_killed_worker_fails_alone_and_restarts_next_run(engine, six_run):
    killed = threading.Event()
    run = engine.start(LONG_PROMPT, ["baseline", "sdpa", "no-kv-cache"], 200)
    report = None
    for event in run:
        if isinstance(event, events.Token) and event.variant == "sdpa" and event.index == 3 and not killed.is_set():
            engine.workers["sdpa"].process.kill()             # our own child, by its handle
            killed.set()
        if isinstance(event, events.RunDone):
            report = event.report
    by = rows(report)
    assert by["sdpa"]["status"] == "failed" and "died" in by["sdpa"]["reason"]
    assert by["baseline"]["status"] == "ok" and by["no-kv-cache"]["status"] == "ok"
    assert by["baseline"]["output_tokens"] == 200 == by["no-kv-cache"]["output_tokens"]
    again = list(engine.run(PROMPT, ["sdpa"], 4))
    assert any(isinstance(e, events.Loaded) for e in again)   # started afresh
    assert rows(again[-1].report)["sdpa"]["status"] == "ok"


def test_cancel_stops_a_run_early(engine, six_run):
    run = engine.start(LONG_PROMPT, ["baseline", "sdpa"], 256)
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
    assert rows(list(engine.run(PROMPT, ["sdpa"], 4))[-1].report)["sdpa"]["output_tokens"] == 4


def test_race_mode_marks_shared_device_results_contended(engine, six_run):
    report = list(engine.run(PROMPT, ["baseline", "sdpa"], 8, mode="race"))[-1].report
    assert report["mode"] == "race"
    assert all(r["contended"] is True and r["status"] == "ok" for r in report["results"])


def test_repeats_report_medians_and_the_spread(engine, six_run):
    row = rows(list(engine.run(PROMPT, ["sdpa"], 8, repeats=3))[-1].report)["sdpa"]
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
        engine.start(args["prompt"], args["variants"], args["max_new_tokens"])


def _cli(*args, env_mark):
    env = dict(os.environ, SIDEBYSIDE_TEST_MARK=env_mark, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "engine", "run", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def _processes_marked(mark):
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("SIDEBYSIDE_TEST_MARK") == mark:
                found.append(proc.pid)
        except (psutil.Error, OSError):
            pass
    return found


@pytest.mark.parametrize("args, message", [
    (["--prompt", ""], "the prompt is empty"),
    (["--prompt", "x" * 5000], "more than the context"),
    (["--max-new-tokens", "0"], "max new tokens must be between 1 and 256"),
    (["--max-new-tokens", "9999"], "max new tokens must be between 1 and 256"),
    (["--preset", "nope"], "unknown preset 'nope'"),
    (["--variants", "baseline,warp"], "unknown variant 'warp'"),
    (["--preset", "opt-350m"], "is not in the local Hugging Face cache"),
    (["--threads", "0"], "threads must be at least 1, got 0"),
])
def test_cli_bad_input_exits_2_with_one_line_and_no_worker(args, message):
    mark = uuid.uuid4().hex
    done = _cli(*args, env_mark=mark)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert _processes_marked(mark) == []


def test_cli_run_prints_a_table_and_writes_the_json(tmp_path):
    out = tmp_path / "run.json"
    mark = uuid.uuid4().hex
    done = _cli("--variants", "baseline,sdpa,fa2", "--max-new-tokens", "6", "--threads", "1", "--json", str(out),
                env_mark=mark)
    assert done.returncode == 0, done.stderr
    assert "random weights: the text is noise, the timings are real" in done.stderr
    header = done.stdout.splitlines()[0].split()
    assert header[:5] == ["variant", "status", "tokens", "TTFT", "ms"]
    report = json.loads(out.read_text())
    assert {"device", "versions", "preset", "prompt_tokens", "results"} <= set(report)
    assert report["versions"]["torch"] and report["versions"]["transformers"]
    by = rows(report)
    assert by["fa2"]["status"] == "unavailable" and "NVIDIA GPU" in by["fa2"]["reason"]
    required = {"variant", "status", "reason", "text", "output_tokens", "load_s", "ttft_s", "tpot_s", "e2e_s",
                "tokens_per_s", "itl_p50_s", "itl_p90_s", "itl_p99_s", "peak_memory_bytes", "weights_bytes",
                "kv_cache_bytes", "mbu", "first_diff_token", "contended", "placement", "queue_s"}
    for row in report["results"]:
        assert required <= set(row)
    assert by["baseline"]["output_tokens"] == 6
    assert by["baseline"]["cpu_threads"] == 1 == by["sdpa"]["cpu_threads"]      # --threads reached the workers
    assert _processes_marked(mark) == []


def test_cli_table_shows_the_tpot_range_of_repeats_and_why_a_row_is_slow():
    from engine.__main__ import table
    row = {"variant": "sdpa", "status": "ok", "reason": None, "output_tokens": 8, "ttft_s": 0.004, "tpot_s": 0.0012,
           "tokens_per_s": 800.0, "peak_memory_bytes": 2**30, "weights_bytes": 2**20, "mbu": None,
           "first_diff_token": None, "placement": "resident", "repeats": 3, "tpot_min_s": 0.0011,
           "tpot_max_s": 0.0016, "host_busy": True, "host_others_cores": 1.3}
    lines = table({"results": [row, dict(row, variant="baseline", repeats=1, host_busy=False)]}).splitlines()
    assert "1.2 (1.1-1.6)" in lines[1] and " 1.2 " in lines[2] and "(" not in lines[2]
    assert lines[3].startswith("  sdpa: other processes kept 1.3 of its CPU cores busy") and len(lines) == 4


def test_a_decode_step_counts_one_row_of_an_untied_input_table_not_all_of_it(six_run):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from engine import models
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
    again = list(engine.run(PROMPT, ["sdpa"], 2))[-1].report             # no second measurement
    assert again["peak_bandwidth_bytes_per_s"]["measured"] == bandwidth["measured"]


def test_workers_outside_a_run_stay_loaded_when_memory_allows(engine, six_run):
    before = {name: w.process.pid for name, w in engine.workers.items()}
    assert {"bnb-4bit", "bnb-8bit"} <= set(before)
    list(engine.run(PROMPT, ["baseline"], 2))                 # a run of one variant
    after = {name: w.process.pid for name, w in engine.workers.items()}
    assert after["bnb-4bit"] == before["bnb-4bit"] and after["bnb-8bit"] == before["bnb-8bit"]


@pytest.mark.parametrize("attention", ["sdpa", "reduce"])
def test_compiled_decoder_matches_generate_and_compiles_outside_the_clock(attention, monkeypatch):
    import functools

    from torch._dynamo.utils import counters

    from engine import decode
    from engine.decode import bucket
    from engine.worker import Request, Runner, WorkerSpec
    # the worker builds its decoder with the defaults: hand it the formulation under test
    monkeypatch.setattr(decode, "CompiledDecoder",
                        functools.partial(decode.CompiledDecoder, fused_attention=attention))
    assert [bucket(n, 4608) for n in (1, 256, 257, 2176, 4000, 9000)] == [256, 256, 512, 4096, 4096, 4608]
    tiny = presets.load("tiny")
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


@pytest.mark.parametrize("model_type,fused,attention", [("llama", None, "sdpa"), ("llama", None, "reduce"),
                                                        ("llama", False, "sdpa"), ("qwen2", None, "sdpa"),
                                                        ("opt", None, "sdpa")])
def test_compiled_decoder_decodes_a_left_padded_batch_as_generate_does(model_type, fused, attention):
    """Rows padded on the left keep their own positions (OPT learns absolute ones) and never see the pads.

    Llama-family models get the engine's fused step (Qwen2 with q/k/v biases and tied embeddings,
    Llama with Llama 3's rotary scaling); OPT keeps transformers' forward, which builds its mask
    from the cache's fill level when given none: a data-dependent shape that transformers 5.17
    cannot compile. The decoder's step passes a mask of the cache's fixed length.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from engine import models
    from engine.decode import CompiledDecoder
    shape = dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, pad_token_id=0,
                 max_position_embeddings=512)
    shape.update({"opt": dict(ffn_dim=128, word_embed_proj_dim=32),
                  "qwen2": dict(intermediate_size=128, num_key_value_heads=2, tie_word_embeddings=True),
                  "llama": dict(intermediate_size=128, num_key_value_heads=2, rope_scaling={
                      "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 64})}[model_type])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **shape), attn_implementation="sdpa")
    model.eval().generation_config.eos_token_id = None        # random weights: decode all the tokens asked for
    ids = torch.randint(3, 500, (3, 24))
    mask = torch.ones_like(ids)
    ids[1, :9], mask[1, :9] = 0, 0                              # row 1 is 15 tokens, row 2 is 24, both left-aligned
    with torch.inference_mode():
        reference = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False)
        alone = model.generate(input_ids=ids[1:2, 9:], max_new_tokens=10, do_sample=False)
    size = models.weights_bytes(model)
    decoder, got = CompiledDecoder(model, 512, "cpu", fused=fused, fused_attention=attention), []
    expected_kind = "fused Llama step" if model_type != "opt" and fused is None else "transformers forward"
    if attention == "reduce":
        expected_kind += ", reduce attention"
    assert decoder.step_kind == expected_kind
    assert models.weights_bytes(model) == size                  # fused weights are not stored twice
    with torch.inference_mode():
        decoder.run(ids, 10, lambda tokens, ready: got.append(tokens), lambda host: False, attention_mask=mask)
        after = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False)
    tokens = torch.stack(got, 1)
    assert tokens.tolist() == reference[:, 24:].tolist()
    assert tokens[1].tolist() == alone[0, 15:].tolist()         # the padded row decodes as it would alone
    assert after.tolist() == reference.tolist()                 # the model's own forward still works after fusing
    if decoder.fused is not None:
        attn = model.model.layers[0].self_attn                  # q, k, v are views of the fused matrix
        assert attn.q_proj.weight.data_ptr() == decoder.fused.layers[0].qkv.data_ptr()
        assert attn.v_proj.weight.untyped_storage().data_ptr() == decoder.fused.layers[0].qkv.data_ptr()
    streamed = []                                               # a stop after the third token: no fourth
    with torch.inference_mode():
        decoder.run(ids, 10, lambda tokens, ready: streamed.append(tokens), lambda host: len(streamed) == 3,
                    attention_mask=mask)
    assert torch.stack(streamed, 1).tolist() == tokens[:, :3].tolist()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_the_forward_step_serves_every_cache_bucket_with_one_compile(attn):
    """A model without the fused step (OPT) gets a 4D mask from the step itself: transformers' own
    mask code would fix the cache's length and compile again for each bucket."""
    import torch
    from torch._dynamo.utils import counters
    from transformers import AutoConfig, AutoModelForCausalLM

    from engine.decode import CompiledDecoder, mask_kind
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(
        "opt", vocab_size=512, hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
        word_embed_proj_dim=64, max_position_embeddings=1024, pad_token_id=0), attn_implementation=attn)
    model.eval().generation_config.eos_token_id = None
    decoder = CompiledDecoder(model, 1024, "cpu")
    assert decoder.step_kind == "transformers forward" and decoder.mask_kind == {"sdpa": "bool", "eager": "additive"}[attn]
    graphs = None
    for length in (10, 300, 600):                               # buckets 256, 512 and 1024
        ids = torch.randint(3, 500, (2, length))
        mask = torch.ones_like(ids)
        ids[1, :4], mask[1, :4] = 0, 0
        got = []
        with torch.inference_mode():
            decoder.run(ids, 8, lambda tokens, ready: got.append(tokens), lambda host: False, attention_mask=mask)
            reference = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False)
        assert torch.stack(got, 1).tolist() == reference[:, length:].tolist()
        if graphs is None:
            graphs = counters["stats"]["unique_graphs"]
    assert counters["stats"]["unique_graphs"] == graphs          # buckets 512 and 1024: no new compile
    assert sorted(decoder.caches) == [(2, 256), (2, 512), (2, 1024)]
    # models whose layers do not all attend to every earlier position keep transformers' masks
    for fields in (dict(sliding_window=64), dict(layer_types=["full_attention", "sliding_attention"])):
        windowed = type("Model", (), {"config": type("Config", (), {"_attn_implementation": "sdpa", **fields})()})()
        assert mask_kind(windowed) is None
    flash = type("Model", (), {"config": type("Config", (), {"_attn_implementation": "flash_attention_2"})()})()
    assert mask_kind(flash) is None


def test_the_fused_steps_two_attentions_agree_uncompiled():
    """Attention as products and sums ("reduce", for inductor to split over the cache) is SDPA's maths:
    eager, it gives SDPA's result, masked and grouped alike, and the same tokens as generate()."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from engine import decode
    from engine.fused import FusedLlamaStep, _reduce_attention
    torch.manual_seed(0)
    group, keys, values = torch.randn(2, 2, 3, 16), torch.randn(2, 2, 40, 16), torch.randn(2, 2, 40, 16)
    visible = torch.rand(2, 40) > 0.5
    visible[:, 0] = True
    sdpa = torch.nn.functional.scaled_dot_product_attention(group, keys, values, attn_mask=visible[:, None, None, :],
                                                            scale=0.25)
    torch.testing.assert_close(_reduce_attention(group, keys, values, visible, 0.25), sdpa)
    half = [t.bfloat16() for t in (group, keys, values)]           # float32 inside, the model's dtype out
    assert _reduce_attention(*half, visible, 0.25).dtype == torch.bfloat16

    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(
        "llama", vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, pad_token_id=0), attn_implementation="sdpa")
    model.eval().generation_config.eos_token_id = None
    ids = torch.randint(3, 500, (2, 12))
    mask = torch.ones_like(ids)
    ids[1, :5], mask[1, :5] = 0, 0
    with torch.inference_mode():
        reference = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False)

    def decoded(attention: str) -> list:
        decoder, got = decode.CompiledDecoder(model, 64, "cpu", fused=True, fused_attention=attention), []
        decoder.step = decode._fused_step                            # uncompiled
        with torch.inference_mode():
            decoder.run(ids, 8, lambda tokens, ready: got.append(tokens), lambda host: False, attention_mask=mask)
        return torch.stack(got, 1).tolist()

    assert decoded("reduce") == decoded("sdpa") == reference[:, 12:].tolist()
    with pytest.raises(ValueError, match="unknown attention 'flash'.*'sdpa' or 'reduce'"):
        FusedLlamaStep(model, attention="flash")


def test_on_a_cpu_each_token_is_streamed_before_the_next_step_runs():
    """A CPU step runs to its end inside the call: streaming a token after the next step would add
    a step to TTFT and put the last two tokens at the same instant."""
    import torch

    from engine import models
    from engine.decode import CompiledDecoder
    from engine.variants import CATALOG
    model, _ = models.load_model(presets.load("tiny"), CATALOG["compiled"], "cpu")
    decoder, log = CompiledDecoder(model, 512, "cpu"), []
    step = decoder.step
    decoder.step = lambda *args: log.append("step") or step(*args)
    with torch.inference_mode():
        decoder.run(torch.tensor([[5, 6, 7]]), 4, lambda tokens, ready: log.append("token"), lambda host: False)
    assert log == ["token", "step", "token", "step", "token", "step", "token"]


def test_the_fused_step_refuses_models_it_does_not_compute():
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from engine.decode import CompiledDecoder
    from engine.fused import unsupported_reason
    mistral = AutoModelForCausalLM.from_config(AutoConfig.for_model(
        "mistral", vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, sliding_window=16))
    assert unsupported_reason(mistral) == "sliding-window attention"
    with pytest.raises(ValueError, match="sliding-window attention"):
        CompiledDecoder(mistral, 64, "cpu", fused=True)
    assert CompiledDecoder(mistral, 64, "cpu").step_kind == "transformers forward"
    llama = AutoModelForCausalLM.from_config(AutoConfig.for_model(
        "llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2))
    llama.model.layers[0].mlp.up_proj = torch.nn.Identity()     # not a plain Linear (as a quantized layer is not)
    assert "Identity layers" in unsupported_reason(llama)


def test_a_request_past_its_timeout_fails_and_the_worker_serves_the_next():
    with Engine(presets.load("small"), request_timeout_s=1.0) as small:
        report = list(small.run(PROMPT, ["sdpa"], 512))[-1].report   # about 4 s of work on this CPU
        row = rows(report)["sdpa"]
        assert row["status"] == "failed" and row["reason"].startswith("timed out after 1 s")
        pid = small.workers["sdpa"].process.pid
        again = rows(list(small.run(PROMPT, ["sdpa"], 4))[-1].report)["sdpa"]
        assert again["status"] == "ok" and again["output_tokens"] == 4
        assert small.workers["sdpa"].process.pid == pid       # the worker obeyed the cancel and stayed


def test_cpu_peak_memory_is_measured_per_request():
    from engine import hardware
    from engine.worker import Request, Runner, WorkerSpec
    runner = Runner(WorkerSpec(presets.load("tiny"), "sdpa", "cpu"), lambda event: None)
    never = type("Never", (), {"is_set": lambda self: False})()
    ballast = bytearray(400 * 2**20)
    ballast[::4096] = b"x" * len(ballast[::4096])               # touch the pages: 400 MiB resident
    high_water = hardware.peak_rss_bytes()
    del ballast
    memory = runner.generate(Request(1, PROMPT, 4, ignore_eos=True), never).memory
    assert memory["peak_rss_scope"] == "request"
    assert memory["peak_rss_bytes"] < high_water - 300 * 2**20  # the ballast's peak is not this request's
    assert memory["peak_rss_bytes"] >= memory["rss_bytes"] * 0.9


def test_gpu_workers_get_a_core_each_and_cpu_workers_none(engine, six_run):
    from engine.pool import free_core

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
    assert engine.workers and all(w.spec.core is None for w in engine.workers.values())   # a CPU run: not pinned


def test_core_siblings_read_linux_topology(tmp_path):
    from engine.hardware import core_siblings
    for core, text in ((0, "0,8\n"), (1, "1-2\n"), (3, "3\n")):
        (tmp_path / f"cpu{core}" / "topology").mkdir(parents=True)
        (tmp_path / f"cpu{core}" / "topology" / "thread_siblings_list").write_text(text)
    assert [core_siblings(core, tmp_path) for core in (0, 1, 3, 5)] == [
        {0, 8}, {1, 2}, {3}, {5}]                                   # cpu5: no topology, stands alone


def test_a_worker_given_a_core_serves_from_it_once_loaded():
    from engine.pool import CONTEXT, _worker_main
    from engine.worker import WorkerSpec
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.skip("one core: nothing to pin to")
    parent, child = CONTEXT.Pipe(duplex=True)
    spec = WorkerSpec(presets.load("tiny"), "sdpa", "cpu", 1, cores[-1])
    cancel = CONTEXT.Event()                                   # kept referenced until the child has it
    process = CONTEXT.Process(target=_worker_main, args=(spec, child, cancel), daemon=True)
    process.start()
    child.close()                                               # the child's death ends parent.recv()
    try:
        while not isinstance(event := parent.recv(), (events.Loaded, events.Failed)):
            pass
        assert isinstance(event, events.Loaded), event
        assert psutil.Process(process.pid).cpu_affinity() == [cores[-1]]
    finally:
        parent.send(None)
        process.join(30)


def test_host_load_counts_other_processes_cpu_time_on_the_workers_cores():
    from engine.hardware import HostLoad
    clock, machine, own = iter([0.0, 2.0]), iter([100.0, 105.0]), iter([10.0, 12.0])
    switches = iter([40, 47])
    with HostLoad({0, 1, 2, 3}, clock=lambda: next(clock), machine=lambda cores: next(machine),
                  own=lambda: next(own), tick_s=0.01, switches=lambda: next(switches)) as load:
        pass
    assert load.others_cores == pytest.approx((5.0 - 2.0) / 2.0)          # 3 CPU seconds of others over 2 s
    assert load.preemptions == 7                          # the serving thread was taken off its core 7 times
    assert load.resolution_cores == pytest.approx(5 * 0.01 / 2.0)         # four cores' counts and our own
    clock, machine, own = iter([0.0, 1.0]), iter([100.0, 100.5]), iter([10.0, 10.52])
    with HostLoad({0}, clock=lambda: next(clock), machine=lambda cores: next(machine),
                  own=lambda: next(own)) as load:
        pass
    assert load.others_cores == 0.0                      # tick rounding never gives a negative load


def test_a_busy_host_marks_the_timings_it_slowed():
    from engine.report import HOST_BUSY_MARGIN_CORES, host_load, host_note

    def timed(others, resolution, spare=0, threads=2):
        host = {"cores": threads + spare, "threads": threads, "others_cores": others, "resolution_cores": resolution}
        return events.Finished("sdpa", 1, 0.0, (0.1, 0.2), (1, 2), "", 4, 1, False, {}, {}, host)

    quiet = host_load([timed(0.05, 0.02), timed(0.1, 0.02)])
    assert quiet == {"cpu_threads": 2, "host_others_cores": 0.1, "host_busy": False}
    assert host_note(quiet) is None
    busy = host_load([timed(0.05, 0.02), timed(1.2, 0.05)])                 # one repeat disturbed is enough
    assert busy["host_busy"] and busy["host_others_cores"] == 1.2
    assert "1.2 of its CPU cores" in host_note(busy)
    assert not host_load([timed(0.6, 0.67)])["host_busy"]                   # a 50 ms request: within counting error
    assert not host_load([timed(0.9, 0.02, spare=1, threads=1)])["host_busy"]   # the core it left spare
    assert host_load([timed(1.0 + HOST_BUSY_MARGIN_CORES + 0.1, 0.02, spare=1, threads=1)])["host_busy"]
    assert host_load([events.Finished("sdpa", 1, 0.0, (0.1,), (1,), "", 4, 1, False)]) == {}


def test_every_timed_request_reports_its_threads_and_the_host_load(six_run):
    _, report = six_run
    for row in report["results"]:
        assert row["cpu_threads"] == __import__("torch").get_num_threads()   # the engine's default: torch's
        assert row["host_others_cores"] >= 0 and isinstance(row["host_busy"], bool)
        # beside each repeat: how often its serving thread was preempted; no GPU clock on a CPU
        assert len(row["preemptions_repeats"]) == row["repeats"]
        assert all(isinstance(p, int) and p >= 0 for p in row["preemptions_repeats"])
        assert row["sm_clock_mhz_repeats"] == [None] * row["repeats"]


def test_the_memory_sampler_reports_the_gpu_clock_it_read():
    from engine.hardware import ClockReader
    from engine.worker import MemorySampler
    assert ClockReader(0).read() is None or __import__("torch").cuda.is_available()   # no GPU: unknown, no error
    samples = []
    sampler = MemorySampler(samples.append, "sdpa", None)
    assert sampler.clock_mhz() == {}                          # a CPU: no clock
    reads = iter([1980, 1980, 1410] + [1980] * 100)

    class Clock:
        def read(self):
            return next(reads)

        def close(self):
            pass
    sampler._clock = Clock()
    with sampler:
        __import__("time").sleep(0.12)
    assert sampler.clocks_mhz[:3] == [1980, 1980, 1410]
    assert sampler.clock_mhz() == {"sm_clock_mhz": 1980, "sm_clock_mhz_min": 1410}
    assert samples                                            # the memory samples went out as before


def test_an_engine_that_leaves_cores_spare_gives_each_cpu_worker_the_rest():
    from engine import hardware
    cores = len(hardware.usable_cores())
    assert Engine(presets.load("tiny"), spare_cores=1).threads == max(cores - 1, 1)
    assert Engine(presets.load("tiny"), spare_cores=cores + 4).threads == 1
    assert Engine(presets.load("tiny"), threads=3, spare_cores=1).threads == 3     # an explicit count wins
    assert Engine(presets.load("tiny")).threads is None                          # torch's default


def test_the_outbox_batches_tokens_and_keeps_every_event_in_order():
    from engine.pool import Outbox, unbatch
    sent = []
    outbox = Outbox(sent.append, period_s=3600.0)              # the timer never fires during this test
    tokens = [events.Token("sdpa", 1, i, i, "x", float(i)) for i in range(3)]
    sample = events.MemorySample("sdpa", 0.5, 100)
    for event in (*tokens[:2], sample, tokens[2]):
        outbox.emit(event)
    assert sent == []                                          # no wake-up of the orchestrator per token
    done = events.Status("sdpa", "done")
    outbox.emit(done)
    assert sent == [[tokens[0], tokens[1], sample, tokens[2]], done]   # the batch first, then what followed it
    outbox.emit(done)
    assert sent[-1] is done and len(sent) == 3                 # nothing pending: no empty batch
    outbox.emit(tokens[0])
    outbox.close()
    assert sent[-1] == [tokens[0]]                             # closing sends what waits
    assert [e for message in sent for e in unbatch(message)] == [*tokens[:2], sample, tokens[2], done, done,
                                                                 tokens[0]]


def test_the_outbox_sends_a_waiting_batch_after_its_period():
    from engine.pool import Outbox
    sent, arrived = [], threading.Event()
    outbox = Outbox(lambda message: (sent.append(message), arrived.set()), period_s=0.01)
    token = events.Token("sdpa", 1, 0, 7, "a", 1.0)
    outbox.emit(token)
    assert arrived.wait(5.0) and sent == [[token]]
    outbox.close()


def test_closing_the_outbox_while_a_batch_waits_sends_it_once_and_returns():
    from engine.pool import Outbox
    sent = []
    outbox = Outbox(sent.append, period_s=0.2)
    token = events.Token("sdpa", 1, 0, 7, "a", 1.0)
    outbox.emit(token)
    started = time.monotonic()
    outbox.close()
    assert time.monotonic() - started < 2.0 and not outbox._thread.is_alive()
    assert sent == [[token]]
