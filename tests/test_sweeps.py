"""Experiments: the quick grids on the tiny model give complete, well-formed results."""
import csv
import io

import pytest

from engine import events, presets
from engine.pool import Engine
from engine.spec import RunSpec
from engine.studies.sweeps import (EXPERIMENTS, PROMPT, LiveSweep, derive, get, grid_for, run_sweep,
                                    start_sweep, to_csv)
from engine.events import Request, WorkerSpec
from engine.worker.runner import Runner


@pytest.fixture(scope="module")
def sweeps(engine):
    """Every experiment's quick grid, through one engine (workers stay loaded between sweeps)."""
    return {name: run_sweep(name, engine.preset, quick=True, engine=engine) for name in EXPERIMENTS}


def test_every_quick_grid_is_complete_and_well_formed(sweeps):
    for name, sweep in sweeps.items():
        experiment = get(name)
        cells = experiment.grid(True)
        assert len(sweep["results"]) == len(cells) * len(experiment.variants), name
        for row in sweep["results"]:
            assert row["experiment"] == name and row["variant"] in experiment.variants
            assert row["status"] in ("ok", "unavailable"), (name, row["variant"], row["reason"])
            assert 0 <= row["cell"] < len(cells)
            cell = cells[row["cell"]][1]
            assert row["batch_size"] == (cell.batch_size or 1)
            assert row["pad_ratio"] == cell.pad_ratio
            if row["status"] == "ok":
                assert row["output_tokens"] == row["max_new_tokens"] * row["batch_size"]
            else:
                assert row["reason"]                 # fa2 on a CPU: a row with its reason, not a crash
        parsed = list(csv.DictReader(io.StringIO(to_csv(sweep))))
        assert len(parsed) == len(sweep["results"]) and parsed[0]["experiment"] == name
        decoded = [(row, line) for row, line in zip(sweep["results"], parsed) if row["tpot_s"]]   # prefill rows: none
        assert decoded and all(row["mbu_measured"] > 0 and float(line["mbu_measured"]) == pytest.approx(
            row["mbu_measured"]) for row, line in decoded)
        assert all(line["host_busy"] in ("True", "False") and int(line["cpu_threads"]) >= 1 for _, line in decoded)


def test_attention_speedup_is_the_ratio_of_measured_times(sweeps):
    rows = sweeps["attention"]["results"]
    assert {r["phase"] for r in rows} == {"prefill", "generation"}
    assert {r["pad_ratio"] for r in rows} == {0.0, 0.3}
    baseline = {r["cell"]: r for r in rows if r["variant"] == "baseline"}
    checked = 0
    for row in rows:
        if row["status"] != "ok":
            assert row["speedup_vs_baseline"] is None
            continue
        reference = baseline[row["cell"]]
        time_key = "ttft_s" if row["phase"] == "prefill" else "e2e_s"
        assert row["time_s"] == row[time_key]
        assert row["speedup_vs_baseline"] == pytest.approx(reference[time_key] / row[time_key])
        checked += 1
    assert checked == len([r for r in rows if r["variant"] != "fa2"])
    assert all(r["speedup_vs_baseline"] == pytest.approx(1.0) for r in baseline.values())


def test_batch_rows_carry_batch_throughput_and_tpot(sweeps):
    rows = sweeps["batch"]["results"]
    assert [r["batch_size"] for r in rows] == [1, 2, 4]
    for row in rows:
        assert row["tokens_per_s"] == pytest.approx(row["output_tokens"] / row["e2e_s"])
        assert row["tpot_s"] > 0


def test_kv_cache_and_quantization_and_lengths_rows(sweeps):
    kv = sweeps["kv-cache"]["results"]
    assert {(r["variant"], r["max_new_tokens"]) for r in kv} == {
        (v, n) for v in ("sdpa", "no-kv-cache") for n in (8, 16, 32)}
    assert all(r["kv_cache_bytes"] == 0 for r in kv if r["variant"] == "no-kv-cache")
    quant = {r["variant"]: r for r in sweeps["quantization"]["results"]}
    assert quant["bnb-4bit"]["weights_bytes"] < quant["bnb-8bit"]["weights_bytes"] < quant["baseline"]["weights_bytes"]
    for name in ("bnb-4bit", "bnb-8bit"):
        assert 0 <= quant[name]["identical_token_share"] <= 1
    lengths = sweeps["lengths"]["results"]
    outputs = [r for r in lengths if r["axis"] == "output"]
    longest = max(outputs, key=lambda r: r["max_new_tokens"])
    assert longest["predicted_e2e_s"] == pytest.approx(longest["e2e_s"])     # the reference predicts itself
    for row in outputs:
        n = row["max_new_tokens"]
        assert row["predicted_e2e_s"] == pytest.approx(longest["ttft_s"] + longest["tpot_s"] * (n - 1))
    assert sorted(r["prompt_length"] for r in lengths if r["axis"] == "input") == [32, 64, 128]


def test_live_rows_are_the_final_rows_as_cells_finish(engine):
    run, live = start_sweep("kv-cache", engine, quick=True)
    partial = []
    for event in run:
        if live.apply(event) and not live.done:
            partial.append((live.settled, live.sweep()))
    final = live.sweep()
    assert [settled for settled, _ in partial] == [1, 2, 3, 4, 5, 6] and live.settled == live.total == 6
    assert [len(sweep["results"]) for _, sweep in partial] == [1, 2, 3, 4, 5, 6]
    assert set(partial[-1][1]) == set(final) and not final["cancelled"]
    for row, done in zip(partial[-1][1]["results"], final["results"]):   # same order: cells, then variants
        # placement and queueing are known at the end, as are the warm-ups (they never reach the consumer)
        known_at_end = {"placement", "queue_s", "warmup_requests", "warmup_e2e_s"}
        assert {k for k in row if row[k] != done[k]} <= known_at_end, (row, done)


def finished(variant, request_id, tokens, cell, batch=1):
    return events.Finished(variant, request_id, 10.0, tuple(10.0 + 0.05 + 0.01 * i for i in range(tokens)),
                           tuple(range(tokens)), "", 20, batch, False, {"rss_bytes": 2**20}, {}, cell=cell)


def test_live_sweep_places_each_answer_in_the_cell_it_names_and_closes_cells_on_failures():
    experiment, engine = get("kv-cache"), Engine(presets.load("tiny"))       # no worker is started
    grid, left_out = grid_for(experiment, True, engine.preset)
    spec = RunSpec(PROMPT, ["sdpa", "no-kv-cache", "fa2"], 8, repeats=2, cells=tuple(c for _, c in grid))
    live = LiveSweep(experiment, engine, spec, True, grid, left_out, t0=0.0)
    assert live.total == 3 * 3 * 2 and live.settled == 0
    assert not live.apply(events.Status("sdpa", "loading")) and live.stages == {"sdpa": "loading"}
    assert live.apply(events.Unavailable("fa2", "needs CUDA"))                # every cell of fa2, at once
    assert live.settled == 6 and live.revision == 1
    assert not live.apply(finished("sdpa", 1, 8, cell=0))                    # 1 of 2 repeats of cell 0
    assert live.apply(finished("sdpa", 2, 8, cell=0)) and live.settled == 8
    assert live.apply(events.Failed("no-kv-cache", "out of memory", request_id=3, cell=0))   # ends its cell 0
    assert live.apply(finished("no-kv-cache", 4, 16, cell=1)) is False and live.settled == 11
    assert live.apply(finished("no-kv-cache", 5, 16, cell=1))                # cell 1 done: 2 repeats
    assert live.apply(events.Failed("no-kv-cache", "the worker died"))       # no request: all it has left
    rows = {(r["variant"], r["cell"]): r for r in live.sweep()["results"]}
    assert live.settled == 6 + 2 + 6 and len(rows) == 3 + 1 + 3
    assert rows[("sdpa", 0)]["status"] == "ok" and rows[("sdpa", 0)]["max_new_tokens"] == 8
    assert rows[("sdpa", 0)]["tpot_s"] == pytest.approx(0.01) and rows[("sdpa", 0)]["ttft_s"] == pytest.approx(0.05)
    assert rows[("no-kv-cache", 0)]["status"] == "failed" and rows[("no-kv-cache", 0)]["reason"] == "out of memory"
    assert rows[("no-kv-cache", 1)]["status"] == "ok" and rows[("no-kv-cache", 1)]["output_tokens"] == 16
    assert rows[("no-kv-cache", 2)]["status"] == "failed"
    assert all(rows[("fa2", c)]["status"] == "unavailable" for c in range(3))
    assert ("sdpa", 1) not in rows and not live.done
    assert not live.apply(finished("bnb-4bit", 9, 8, cell=0))                # not in this sweep


def test_derive_on_hand_made_rows():
    rows = [{"variant": "baseline", "cell": 0, "phase": "prefill", "ttft_s": 0.4, "e2e_s": 0.5, "status": "ok"},
            {"variant": "sdpa", "cell": 0, "phase": "prefill", "ttft_s": 0.1, "e2e_s": 0.2, "status": "ok"},
            {"variant": "sdpa", "cell": 1, "phase": "generation", "ttft_s": 0.1, "e2e_s": 0.3, "status": "ok"}]
    derived = derive(get("attention"), rows)
    assert derived[1]["speedup_vs_baseline"] == pytest.approx(4.0)
    assert derived[2]["time_s"] == 0.3 and derived[2]["speedup_vs_baseline"] is None   # no baseline in cell 1


def test_padding_leaves_the_asked_share_of_pad_tokens():
    runner = Runner(WorkerSpec(presets.load("tiny"), "sdpa", "cpu"), lambda event: None)
    ids, mask = runner.encode(Request(1, "hello", 4, batch_size=4, prompt_tokens=100, pad_ratio=0.3))
    assert tuple(ids.shape) == (4, 100)
    assert mask.sum(dim=1).tolist() == [100, 80, 60, 40]            # lengths fall linearly from L to L(1-2r)
    assert 1 - mask.float().mean().item() == pytest.approx(0.3)
    assert (ids[mask == 0] == runner.tokenizer.pad_token_id).all()
    finished = runner.generate(Request(2, "hello", 3, ignore_eos=True, batch_size=4, prompt_tokens=100,
                                       pad_ratio=0.3), cancel=type("C", (), {"is_set": lambda self: False})())
    assert len(finished.token_ids) == 3 and finished.batch_size == 4


def test_batch_raises_throughput_on_small():
    sweep = run_sweep("batch", presets.load("small"), quick=True)
    by_batch = {r["batch_size"]: r["tokens_per_s"] for r in sweep["results"]}
    assert by_batch[4] > by_batch[1]


def test_unknown_experiment_lists_the_choices():
    with pytest.raises(ValueError, match="choose one of: attention, batch, kv-cache, quantization, lengths"):
        get("nope")


def test_cells_beyond_the_context_are_left_out_and_named():
    opt = presets.load("opt-350m-random")                     # context 2048
    fits, left_out = grid_for(get("attention"), False, opt)
    assert {cell.prompt_tokens for _, cell in fits} == {256, 1024}
    assert len(fits) == 8 and len(left_out) == 8              # 2048 + new tokens and 4096 do not fit
    assert "exceed the context of 2048" in left_out[0] and "'opt-350m-random'" in left_out[0]
    fits, left_out = grid_for(get("attention"), False, presets.load("tiny"))   # context 4608: all fit
    assert len(fits) == 16 and left_out == []
