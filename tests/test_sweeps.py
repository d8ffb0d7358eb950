"""Experiments: the quick grids on the tiny model give complete, well-formed results."""
import csv
import io

import pytest

from engine import events, presets, quality
from engine.pool import Engine
from engine.outcomes import RunState
from engine.spec import RunSpec
from engine.studies.experiments import Claim, repeats_for
from engine.studies.trends import trend
from engine.studies.sweeps import (EXPERIMENTS, PROMPT, LiveSweep, cell_words, derive, get, grid_for, host_busy_note,
                                    run_sweep, start_sweep, summary, to_csv)
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
        # every claim of the paragraph is judged on the rows: a verdict and a note in words
        assert [t["claim"] for t in sweep["trends"]] == [c.text for c in experiment.claims] and experiment.claims
        for found in sweep["trends"]:
            assert found["agrees"] in (True, False, None) and found["note"].startswith("On this run")
        ok = [row for row in sweep["results"] if row["status"] == "ok"]
        assert all(row["repeats"] == repeats_for(True) for row in ok)
        for row in ok:                         # each shown timed figure has its range over the repeats
            for name, (low, high) in row["ranges"].items():
                assert low <= row[name] <= high, (name, row)


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
        # its range: the slowest reference repeat over this row's fastest, and the other way round
        key = "ttft_repeats_s" if row["phase"] == "prefill" else "e2e_repeats_s"
        low, high = row["ranges"]["speedup_vs_baseline"]
        assert low == pytest.approx(min(reference[key]) / max(row[key]))
        assert high == pytest.approx(max(reference[key]) / min(row[key]))
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
    assert list(quant) == ["baseline", "bnb-8bit", "bnb-4bit", "int4"]         # from the most bits to the fewest
    assert quant["bnb-4bit"]["weights_bytes"] < quant["bnb-8bit"]["weights_bytes"] < quant["baseline"]["weights_bytes"]
    for name in ("bnb-4bit", "bnb-8bit"):
        assert 0 <= quant[name]["identical_token_share"] <= 1
        # time per token against the baseline's, its range from the two rows' repeats
        assert quant[name]["speedup_vs_baseline"] == pytest.approx(quant["baseline"]["tpot_s"] / quant[name]["tpot_s"])
        low, high = quant[name]["ranges"]["speedup_vs_baseline"]
        assert low == pytest.approx(min(quant["baseline"]["tpot_repeats_s"]) / max(quant[name]["tpot_repeats_s"]))
        assert high == pytest.approx(max(quant["baseline"]["tpot_repeats_s"]) / min(quant[name]["tpot_repeats_s"]))
    # tiny has random weights: every variant was asked to score, and says why it has no figures, as a column too
    for row in quant.values():
        assert row["quality"] == quality.unmeasured("not meaningful", quality.RANDOM_WEIGHTS)
        assert row["quality_note"] == quality.RANDOM_WEIGHTS and row["quality_kld_mean"] is None
    told = sweeps["quantization"]["trends"][1]
    assert told["agrees"] is None and told["note"] == ("On this run nothing could be judged: its figure is not "
                                                       "meaningful: random weights.")
    assert "  quality of every variant: not meaningful: random weights" in summary(sweeps["quantization"]).splitlines()
    line = next(csv.DictReader(io.StringIO(to_csv(sweeps["quantization"]))))
    assert line["quality_note"] == quality.RANDOM_WEIGHTS and line["quality_top_agreement"] == ""
    # an experiment that shows no quality figures does not score its variants (off the clock, but not free)
    assert all(r["quality"] is None or r["quality"]["note"] == "not measured: quality was turned off for this run"
               for r in kv)
    assert "same top" not in summary(sweeps["kv-cache"]).splitlines()[0]
    lengths = sweeps["lengths"]["results"]
    outputs = [r for r in lengths if r["axis"] == "output"]
    longest = max(outputs, key=lambda r: r["max_new_tokens"])
    # the reference predicts itself within its repeats' E2E range (medians of TTFT and TPOT, not of E2E)
    assert min(longest["e2e_repeats_s"]) - 1e-9 <= longest["predicted_e2e_s"] <= max(longest["e2e_repeats_s"]) + 1e-9
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
    repeats, variants = repeats_for(True), 2
    # fair mode takes the variants in turn per repeat: a variant's cell ends at its last repeat's turn
    assert [settled for settled, _ in partial] == [cell * variants * repeats + (repeats - 1) * variants + k
                                                   for cell in range(3) for k in (1, 2)]
    assert live.settled == live.total == 6 * repeats
    assert [len(sweep["results"]) for _, sweep in partial] == [1, 2, 3, 4, 5, 6]
    assert set(partial[-1][1]) == set(final) and not final["cancelled"]
    for row, done in zip(partial[-1][1]["results"], final["results"]):   # same order: cells, then variants
        # the rows come from the engine's own outcomes (CellDone): only the MBU against the copy bandwidth,
        # measured after every timed request, is known at the end alone, and the quality entry of an experiment
        # that does not score (each variant's comes with a Scored event where it does)
        assert {k for k in row if row[k] != done[k]} <= {"mbu_measured", "quality"}, (row, done)
        assert row["quality"] is None and done["quality"] == (None if done["cell"] else quality.unmeasured(
            "not measured", "not measured: quality was turned off for this run"))
    lines = live.progress(elapsed_s=1.5)          # a line per (variant, cell), in the order they finished
    assert len(lines) == 6 and live.progress(elapsed_s=2.0) == []
    for line, (variant, cell) in zip(lines, live.closed):
        row = next(r for r in final["results"] if (r["variant"], r["cell"]) == (variant, cell))
        assert line.startswith(f"[  1.5 s] {variant}, {row['max_new_tokens']} new tokens: TPOT "), line
        assert f"{row['tpot_s'] * 1000:.2f} ({min(row['tpot_repeats_s']) * 1000:.2f}-" in line


def finished(variant, request_id, tokens, cell, batch=1):
    return events.Finished(variant, request_id, 10.0, tuple(10.0 + 0.05 + 0.01 * i for i in range(tokens)),
                           tuple(range(tokens)), "", 20, batch, False, {"rss_bytes": 2**20}, {}, cell=cell)


def test_live_sweep_places_each_answer_in_the_cell_it_names_and_closes_cells_on_failures():
    """The events go through the engine's own fold (RunState), as a run's do: the sweep takes the cells
    the engine closes, with what each produced."""
    experiment, engine = get("kv-cache"), Engine(presets.load("tiny"))       # no worker is started
    grid, left_out = grid_for(experiment, True, engine.preset)
    spec = RunSpec(PROMPT, ["sdpa", "no-kv-cache", "fa2"], 8, repeats=2, cells=tuple(c for _, c in grid))
    live = LiveSweep(experiment, engine, spec, True, grid, left_out, t0=0.0)
    state = RunState(list(spec.variants), len(grid), spec.repeats)

    def apply(event) -> bool:
        if isinstance(event, events.Unavailable):
            state.unavailable(event.variant, event.reason)
        elif isinstance(event, (events.Finished, events.Failed)) and event.request_id is not None:
            state.sent(event.variant, events.Request(event.request_id, PROMPT, 8, cell=event.cell))
        passed = [event] if state.fold(event) else []
        return any([live.apply(e) for e in passed + state.closed()])

    assert live.total == 3 * 3 * 2 and live.settled == 0
    assert not apply(events.Status("sdpa", "loading")) and live.stages == {"sdpa": "loading"}
    assert apply(events.Unavailable("fa2", "needs CUDA"))                     # every cell of fa2, at once
    assert live.settled == 6 and live.revision == 3                          # one per cell closed
    assert not apply(finished("sdpa", 1, 8, cell=0))                         # 1 of 2 repeats of cell 0
    assert apply(finished("sdpa", 2, 8, cell=0)) and live.settled == 8
    assert apply(events.Failed("no-kv-cache", "out of memory", request_id=3, cell=0))   # ends its cell 0
    assert apply(finished("no-kv-cache", 4, 16, cell=1)) is False and live.settled == 11
    assert apply(finished("no-kv-cache", 5, 16, cell=1))                     # cell 1 done: 2 repeats
    assert apply(events.Failed("no-kv-cache", "the worker died"))            # no request: all it has left
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
    entry = quality.unmeasured("not meaningful", quality.RANDOM_WEIGHTS)
    assert live.apply(events.Scored("sdpa", entry)) and live.revision == 8   # its first cell's row carries it
    assert [(r["cell"], r["quality"]) for r in live.sweep()["results"] if r["variant"] == "sdpa"] == [(0, entry)]
    assert rows[("no-kv-cache", 1)]["reason"] is None       # the death between cells leaves a closed cell as it was
    lines = live.progress(elapsed_s=3.0)
    assert lines[0] == "[  3.0 s] fa2, 8 new tokens: unavailable: needs CUDA" and len(lines) == 1 + 3 + 1
    assert lines[1] == "[  3.0 s] sdpa, 8 new tokens: TPOT 10.00 (10.00-10.00) ms"
    assert lines[2] == "[  3.0 s] no-kv-cache, 8 new tokens: failed: out of memory"
    assert lines[3] == "[  3.0 s] no-kv-cache, 16 new tokens: TPOT 10.00 (10.00-10.00) ms"
    assert lines[4] == "[  3.0 s] no-kv-cache, 32 new tokens: failed: the worker died"


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


def timed(variant, x, values, name="x", field="tpot_s", busy=False, **extra):
    """A hand-made row of a sweep: `field`'s value per repeat; the row's figure is their median."""
    ordered = sorted(values)
    repeats = {"tpot_s": "tpot_repeats_s", "ttft_s": "ttft_repeats_s", "tokens_per_s": "tokens_per_s_repeats"}
    row = {"variant": variant, "status": "ok", name: x, field: ordered[len(ordered) // 2], "host_busy": busy,
           "host_others_cores": 1.5 if busy else 0.1, **extra}
    if field in repeats:
        row[repeats[field]] = list(values)
    return row


GROWS = Claim("y grows with x", "tpot_s", "x", "y did not grow with x", "x is small here")


def test_a_claim_agrees_when_the_whole_range_of_the_change_is_on_its_side():
    rows = [timed("sdpa", 1, [1.0, 1.1, 1.2]), timed("sdpa", 4, [2.0, 2.1, 2.2]),
            timed("baseline", 1, [1.0, 1.05, 1.1]), timed("baseline", 4, [1.5, 1.6, 1.7])]
    found = trend(GROWS, rows)
    assert found["agrees"] is True and found["note"] == "On this run, as the paragraph says: y grows with x."
    sdpa = next(s for s in found["series"] if s["variant"] == "sdpa")
    assert sdpa["change"] == pytest.approx(2.1 / 1.1)
    assert (sdpa["change_min"], sdpa["change_max"]) == (pytest.approx(2.0 / 1.2), pytest.approx(2.2 / 1.0))
    assert "sdpa: 1.1 to 2.1 from 1 to 4: x1.91 (range 1.67-2.20)" in found["measured"]


def test_a_claim_is_contradicted_when_the_change_lies_wholly_the_other_way_and_says_why():
    rows = [timed("sdpa", 1, [2.0, 2.1, 2.2]), timed("sdpa", 4, [1.0, 1.1, 1.2]),
            timed("sdpa-flash", 1, [1.0, 1.1, 1.2], pad_ratio=0.3),
            timed("sdpa-flash", 4, [2.0, 2.1, 2.2], pad_ratio=0.3)]
    found = trend(GROWS, rows)
    assert found["agrees"] is False
    assert found["note"] == ("On this run y did not grow with x for sdpa (it did for sdpa-flash, 30% padding): "
                             "x is small here.")
    alone = trend(GROWS, rows[:2])
    assert alone["agrees"] is False and alone["note"] == "On this run y did not grow with x: x is small here."
    falls = trend(Claim("y falls", "tpot_s", "x", "y did not fall", "why", direction=-1), rows[:2])
    assert falls["agrees"] is True


def test_a_change_within_the_repeats_spread_is_noise_and_one_repeat_cannot_be_judged():
    rows = [timed("sdpa", 1, [1.0, 1.5, 2.0]), timed("sdpa", 4, [1.2, 1.6, 2.2])]      # ranges overlap
    found = trend(GROWS, rows)
    assert found["agrees"] is None and "stayed within the repeats' spread: noise" in found["note"]
    assert found["series"][0]["change_min"] < 1 < found["series"][0]["change_max"]
    once = trend(GROWS, [timed("sdpa", 1, [1.0]), timed("sdpa", 4, [3.0])])
    assert once["agrees"] is None and "one request per cell: no range over repeats" in once["note"]
    assert trend(GROWS, [])["agrees"] is None and "nothing could be judged" in trend(GROWS, [])["note"]


def test_a_contradiction_on_rows_other_processes_slowed_says_to_rerun_and_counts_them():
    rows = [timed("sdpa", 1, [2.0, 2.1, 2.2], busy=True), timed("sdpa", 4, [1.0, 1.1, 1.2])]
    found = trend(GROWS, rows)
    assert found["agrees"] is False and "but other processes slowed rows it compares: rerun" in found["note"]
    assert found["note"].endswith("1 of the 2 rows compared was slowed by other processes on the CPU.")
    assert "x is small here" not in found["note"]


def test_kv_claim_compares_the_growth_without_the_cache_against_the_growth_with_it():
    claim = get("kv-cache").claims[0]
    steep = [timed("no-kv-cache", 8, [1.0, 1.1, 1.2], "max_new_tokens"),
             timed("no-kv-cache", 32, [3.0, 3.1, 3.2], "max_new_tokens")]
    flat = [timed("sdpa", 8, [1.0, 1.05, 1.1], "max_new_tokens"), timed("sdpa", 32, [1.0, 1.1, 1.2], "max_new_tokens")]
    found = trend(claim, steep + flat)
    assert found["agrees"] is True and found["series"][0]["than"]["variant"] == "sdpa"
    assert "; sdpa: x1.05 (range 0.91-1.20)" in found["measured"]
    assert trend(claim, [*flat[:1], timed("sdpa", 32, [4.0, 4.1, 4.2], "max_new_tokens"), *steep])["agrees"] is False
    assert trend(claim, steep)["agrees"] is None                      # nothing to compare against


def test_quantization_claim_checks_each_step_of_the_weights_and_attention_leaves_the_reference_out():
    claim = get("quantization").claims[0]
    rows = [{"variant": v, "status": "ok", "weights_bytes": b} for v, b in
            (("baseline", 4 * 2**20), ("bnb-4bit", 2**20), ("bnb-8bit", 2 * 2**20))]
    found = trend(claim, rows)
    assert found["agrees"] is True and [s["series"] for s in found["series"]] == [
        "baseline to bnb-8bit", "bnb-8bit to bnb-4bit"]
    rows[1]["weights_bytes"] = 3 * 2**20                            # 4-bit heavier than 8-bit
    assert trend(claim, rows)["agrees"] is False
    attention = get("attention")
    sweep_rows = derive(attention, [
        {"variant": v, "cell": c, "phase": "prefill", "prompt_length": n, "status": "ok", "ttft_s": t[1],
         "e2e_s": t[1], "ttft_repeats_s": t, "e2e_repeats_s": t, "pad_ratio": 0.0}
        for v, c, n, t in (("baseline", 0, 64, [1.0, 1.0, 1.0]), ("sdpa", 0, 64, [1.0, 1.0, 1.0]),
                           ("baseline", 1, 256, [4.0, 4.0, 4.0]), ("sdpa", 1, 256, [2.0, 2.0, 2.0]))])
    found = trend(attention.claims[0], sweep_rows)
    assert [s["series"] for s in found["series"]] == ["sdpa"] and found["agrees"] is True
    assert found["series"][0]["change"] == pytest.approx(2.0)


def test_the_summary_marks_slowed_rows_counts_them_and_states_each_claim():
    rows = [dict(timed("sdpa", 1, [0.010, 0.011, 0.012], "batch_size", busy=True), cell=0, tokens_per_s=100.0,
                 tokens_per_s_repeats=[99.0, 100.0, 101.0], reason=None, prompt_length=64, pad_ratio=0.0,
                 max_new_tokens=16),
            dict(timed("sdpa", 4, [0.020, 0.021, 0.022], "batch_size"), cell=1, tokens_per_s=200.0,
                 tokens_per_s_repeats=[190.0, 200.0, 210.0], reason=None, prompt_length=64, pad_ratio=0.0,
                 max_new_tokens=16)]
    experiment = get("batch")
    from engine.studies.trends import trends
    from engine.views.sweep_charts import figure_text
    rows = derive(experiment, rows)
    sweep = {"experiment": "batch", "results": rows, "left_out": [], "trends": trends(experiment, rows, figure_text)}
    lines = summary(sweep).splitlines()
    assert lines[0].split("  ")[-1].strip() == "CPU" and lines[1].endswith("busy (1.5 cores taken)")
    assert "11.00 (10.00-12.00)" in lines[1] and "100.0 (99.0-101.0)" in lines[1]
    assert not lines[2].rstrip().endswith("taken)")
    assert lines[3] == ("1 of 2 timed rows was slowed by other processes on the CPU (up to 1.5 cores taken): their "
                        "figures are slower than this device can do (close them, or leave a core spare)")
    assert lines[4] == "claim: throughput rises with the batch size"
    assert lines[5] == ("  measured: sdpa: 100.0 tokens/s to 200.0 tokens/s from batch 1 to 4: x2.00 "
                        "(range 1.88-2.12)")
    assert lines[6].startswith("  On this run, as the paragraph says") and lines[6].endswith(
        "1 of the 2 rows compared was slowed by other processes on the CPU.")
    assert lines[7] == "claim: time per token (TPOT) rises with the batch size"
    assert host_busy_note([dict(r, host_busy=False) for r in rows]) is None


def test_cells_are_named_by_their_labels_and_what_differs_between_them():
    grid = get("attention").grid(True)
    assert cell_words(grid, 0) == "prefill, 64 prompt tokens, 0% padding, 1 new token"
    assert cell_words(get("batch").grid(True), 2) == "batch 4"


def test_the_quantization_table_sets_memory_speed_and_quality_side_by_side_as_llama_cpps_does():
    """Hand-made rows of a real model's quantization sweep, with quality entries made by engine/quality.py."""
    base = {"top_ids": [1, 2, 3, 4], "token_logprobs": [-0.1, -0.2, -0.3, -0.4]}

    def scored(top_ids, kld, logprobs):
        return quality.summarize({"top_ids": top_ids, "token_logprobs": logprobs, "kld": kld}, base, "baseline")

    entries = {"baseline": dict(scored([1, 2, 3, 4], [0.0] * 4, base["token_logprobs"]), status="reference"),
               "bnb-8bit": scored([1, 2, 3, 4], [0.0, 0.001, 0.002, 0.001], [-0.1, -0.2, -0.3, -0.5]),
               "bnb-4bit": scored([1, 2, 3, 9], [0.01, 0.02, 0.03, 0.1], [-0.2, -0.2, -0.3, -0.9]),
               "int4": quality.unmeasured("not measured", "not measured: it gave no answer", "baseline")}
    tpot = {"baseline": [0.010, 0.011, 0.012], "bnb-8bit": [0.020, 0.021, 0.022], "bnb-4bit": [0.0150, 0.0155, 0.016],
            "int4": [0.005, 0.0055, 0.006]}
    weights = {"baseline": 4 * 2**20, "bnb-8bit": 2 * 2**20, "bnb-4bit": 2**20, "int4": 2**20}
    experiment = get("quantization")
    rows = derive(experiment, [dict(timed(v, 0, tpot[v], "cell"), reason=None, prompt_length=99, pad_ratio=0.0,
                                    batch_size=1, max_new_tokens=4, weights_bytes=weights[v],
                                    peak_memory_bytes=weights[v] + 2**20, quality=entries[v]) for v in entries])
    by = {row["variant"]: row for row in rows}
    assert by["bnb-4bit"]["quality_top_agreement"] == 0.75 and by["bnb-4bit"]["quality_kld_max"] == 0.1
    assert by["bnb-4bit"]["quality_kld_mean"] == pytest.approx(0.04) and by["bnb-4bit"]["quality_note"] is None
    assert by["int4"]["quality_note"] == "not measured: it gave no answer" and by["int4"]["quality_kld_mean"] is None
    assert by["bnb-8bit"]["speedup_vs_baseline"] == pytest.approx(0.011 / 0.021)
    from engine.studies.trends import trends
    from engine.views.sweep_charts import figure_text
    sweep = {"experiment": "quantization", "results": rows, "left_out": [],
             "trends": trends(experiment, rows, figure_text)}
    assert [t["agrees"] for t in sweep["trends"]] == [True, True]       # lighter weights; 4-bit further away
    assert sweep["trends"][1]["measured"] == "bnb-8bit 0.001, bnb-4bit 0.04: x40.00"
    lines = summary(sweep).splitlines()
    head = lines[0].split("  ")
    assert [h.strip() for h in head if h.strip()][-7:] == ["TPOT (ms)", "speedup over baseline", "same top",
                                                           "mean KLD", "KLD p99/max", "PPL", "PPL/ref"]
    table = {line.split()[0]: line.split() for line in lines[1:5]}
    assert table["baseline"][-5:] == ["reference", "-", "-", "1.28", "1.000"]
    assert table["bnb-8bit"][-6:] == ["100%", "0.001", "0.002", "(max)", "1.32", "1.025"]
    assert table["bnb-4bit"][-6:] == ["75%", "0.04", "0.1", "(max)", "1.49", "1.162"]
    assert " 15.50 (15.00-16.00) " in lines[3] and " 1.00 MiB  2.00 MiB " in lines[3]   # TPOT, weights, peak
    assert table["int4"][-5:] == ["-"] * 5
    assert lines[5] == "  quality of int4: not measured: it gave no answer"
    assert lines[6] == f"claim: {experiment.claims[0].text}"
