"""The report's pure parts: rows from raw measurements."""
from engine import events


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
    import json

    import numpy as np
    import pytest

    from engine import presets
    from engine.spec import RunSpec
    run = list(engine.run(RunSpec("Why does decoding wait on memory bandwidth?", ["sdpa", "no-kv-cache"], 16,
                                  repeats=3, ignore_eos=True)))
    report = json.loads(json.dumps(run[-1].report))                    # only what the JSON holds
    assert report["repeats"] == 3 and report["warmup_requests"] == 1
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
        assert row["token_times_s"] == row["token_times_repeats_s"][0] and len(row["token_ids"]) == 16
        head_dim = config["hidden_size"] // config["num_attention_heads"]
        held = row["prompt_tokens"] + 16 - 1                             # the last token is never fed back
        expected = 2 * config["num_hidden_layers"] * config["num_key_value_heads"] * head_dim * held * 4
        assert row["kv_cache_bytes"] == (0 if row["variant"] == "no-kv-cache" else expected)
