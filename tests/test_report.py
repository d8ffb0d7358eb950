"""The report: rows from raw measurements, every figure recomputable from the JSON, the run's settings whole."""
import json
import shutil

from engine import events, presets, source
from engine.pool import Engine
from engine.spec import Cell, RunSpec
from engine.views.run import RunView


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


def test_every_figure_of_a_run_can_be_recomputed_from_its_json_alone(engine):
    """vLLM's definitions (benchmark_serving's calculate_metrics) applied to the JSON's token times."""
    import numpy as np
    import pytest

    spec = RunSpec("Why does decoding wait on memory bandwidth?", ["sdpa", "no-kv-cache"], 16, repeats=3,
                   ignore_eos=True)
    run = list(engine.run(spec))
    report = json.loads(json.dumps(run[-1].report))                    # only what the JSON holds
    assert report["repeats"] == 3 and report["warmup_requests"] == 1
    # the run's settings are its RunSpec, whole: nothing to guess (max new tokens, ignore_eos)
    assert {key: report[key] for key in ("prompt", "variants", "max_new_tokens", "mode", "ignore_eos", "batch_size",
                                         "cells", "live")} == \
        {"prompt": spec.prompt, "variants": ["sdpa", "no-kv-cache"], "max_new_tokens": 16, "mode": "fair",
         "ignore_eos": True, "batch_size": 1, "cells": [], "live": True}
    assert report["prompt_tokens"] == report["results"][0]["prompt_tokens"] == report["results"][1]["prompt_tokens"]
    # the page's lanes, folded from the same events, draw the repeat the JSON shows
    view = RunView(spec.variants, repeats=3)
    view.apply(run)
    for row in report["results"]:
        lane = view.lanes[row["variant"]]
        assert lane.times == row["token_times_s"] and lane.text == row["text"]
    config = presets.load("tiny").config
    for row in report["results"]:
        assert row["status"] == "ok" and row["repeats"] == 3 == len(row["token_times_repeats_s"])
        assert row["warmup_requests"] == 1 and len(row["warmup_e2e_s"]) == 1 and row["warmup_e2e_s"][0] > 0
        per = []
        for times in row["token_times_repeats_s"]:
            n, gaps = len(times), np.diff(times)
            ttft, e2e = times[0], times[-1]
            tpot = (e2e - ttft) / (n - 1)                                # vLLM: (latency - ttft) / (output_len - 1)
            assert e2e == pytest.approx(ttft + tpot * (n - 1), rel=1e-12)   # the identity holds per repeat
            per.append({"ttft_s": ttft, "tpot_s": tpot, "e2e_s": e2e, "tokens_per_s": n / e2e,
                        **{f"itl_p{q}_s": float(np.percentile(gaps, q)) for q in (50, 90, 99)}})
        for key in per[0]:
            assert row[key] == pytest.approx(float(np.median([p[key] for p in per])), rel=1e-12), key
        assert row["tpot_repeats_s"] == pytest.approx([p["tpot_s"] for p in per], rel=1e-12)
        assert row["tpot_min_s"] == min(row["tpot_repeats_s"]) and row["tpot_max_s"] == max(row["tpot_repeats_s"])
        # the steps before each request's clock, from the orchestrator's send to the prime's end, then TTFT's
        # own: generate() before the prefill, the prefill, the first token out, which add up to TTFT
        assert len(row["phases_repeats_s"]) == 3 and all(
            set(phase) == {"pipe_s", "encode_s", "setup_s", "prime_s", "before_prefill_s", "prefill_s",
                           "first_token_out_s"} and all(0 < v < 1 for v in phase.values())
            for phase in row["phases_repeats_s"]), row["phases_repeats_s"]
        for phase, repeat in zip(row["phases_repeats_s"], per):
            assert phase["before_prefill_s"] + phase["prefill_s"] + phase["first_token_out_s"] == \
                pytest.approx(repeat["ttft_s"], rel=1e-9)
        # the repeat shown is the last timed one, in every field that shows one repeat
        assert row["shown_repeat"] == 2 and row["token_times_s"] == row["token_times_repeats_s"][-1]
        assert len(row["token_ids"]) == 16 and row["e2e_repeats_s"] == [p["e2e_s"] for p in per]
        head_dim = config["hidden_size"] // config["num_attention_heads"]
        held = row["prompt_tokens"] + 16 - 1                             # the last token is never fed back
        expected = 2 * config["num_hidden_layers"] * config["num_key_value_heads"] * head_dim * held * 4
        assert row["kv_cache_bytes"] == (0 if row["variant"] == "no-kv-cache" else expected)


def test_the_reports_prompt_tokens_are_what_the_workers_tokenized_after_the_chat_template(tmp_path):
    """A preset that wraps the prompt in its chat template: the orchestrator's pre-check counts the bare
    prompt, the workers the templated one, and the report gives the workers' count, top level and rows."""
    from engine.worker.models import saved_random_model
    folder = tmp_path / "chat-tiny"
    shutil.copytree(saved_random_model(presets.load("tiny")), folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% for m in messages %}<s>[{{ m['role'] }}] {{ m['content'] }}</s>{% endfor %}[assistant] "
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    preset = presets.parse({"name": "chat-tiny", "title": "Chat tiny", "source": "hub", "model_id": str(folder),
                            "chat_template": True, "variants": ["baseline"], "context_length": 4096}, "chat.yaml")
    prompt = "What does the chat template add?"
    bare = source.count_prompt_tokens(preset, prompt)
    with Engine(preset, request_timeout_s=120) as engine:
        report = list(engine.run(RunSpec(prompt, ["sdpa"], 4, warmup_requests=0)))[-1].report
        grid = list(engine.run(RunSpec(prompt, ["sdpa"], 4, warmup_requests=0,
                                       cells=(Cell(), Cell(prompt_tokens=12)))))[-1].report
    row, = report["results"]
    assert row["status"] == "ok", row["reason"]
    templated = row["prompt_tokens"]
    assert templated > bare and report["prompt_tokens"] == templated
    assert [row["prompt_length"] for row in grid["results"]] == [templated, 12] and grid["prompt_tokens"] == templated
