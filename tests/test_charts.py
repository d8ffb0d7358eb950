"""engine/views: events fold into the view the page shows; figures and the summary come from it."""
import csv
import io

import pytest

from engine import events, quality
from engine.outcomes import Outcome
from engine.views import run_charts, summary
from engine.views.run import RunView
from ui import render, sweep_render


def fold_fair_run():
    """Two variants in fair mode: baseline loads and generates 3 tokens, sdpa is kept loaded and stopped."""
    view = RunView(["baseline", "sdpa"], "fair")
    view.apply([events.Status("baseline", "loading", "starting the worker process"),
                events.Status("baseline", "loading", "tiny on cpu"), events.Status("baseline", "warming")], now=1.0)
    assert view.lanes["baseline"].stage == "warming" and view.lanes["baseline"].load_step == 3
    view.apply([events.Loaded("baseline", 2.0, 0.5, 1000, "cpu", "float32", "Eager attention"),
                events.Status("baseline", "queued"), events.Status("sdpa", "queued"),
                events.Status("baseline", "generating"), events.Started("baseline", 1, 10.0, 5),
                events.Token("baseline", 1, 0, 7, "a", 10.1), events.MemorySample("baseline", 10.15, 300),
                events.Token("baseline", 1, 1, 8, "b", 10.3), events.Token("baseline", 1, 2, 9, "c", 10.5)], now=2.0)
    return view


def test_fold_gives_live_figures_from_raw_timestamps():
    view = fold_fair_run()
    lane = view.lanes["baseline"]
    assert lane.text == "abc" and lane.stage == "generating"
    figures = lane.figures()
    assert figures["final"] is False
    assert abs(figures["ttft_s"] - 0.1) < 1e-9                    # 10.1 - 10.0
    assert abs(figures["tpot_s"] - 0.2) < 1e-9                    # (10.5 - 10.1) / 2
    assert abs(figures["tokens_per_s"] - 3 / 0.5) < 1e-9
    assert figures["peak_memory_bytes"] == 300
    assert view.lanes["sdpa"].reused                              # queued without loading: kept from last run
    assert lane.text_until(0.35) == "ab"


def test_report_replaces_live_figures_and_stages():
    view = fold_fair_run()
    row = {"variant": "baseline", "label": "Eager attention", "status": "ok", "reason": None, "text": "abc",
           "output_tokens": 3, "ttft_s": 0.11, "tpot_s": 0.2, "tokens_per_s": 6.0, "peak_memory_bytes": 400,
           "weights_bytes": 1000, "mbu": None, "mbu_measured": 0.4321, "first_diff_token": None, "contended": False,
           "token_times_s": [0.1, 0.3, 0.5], "memory": {"rss_bytes": 400}}
    stopped = dict(row, variant="sdpa", status="cancelled", reason="the run was stopped before this variant's turn",
                   text="", output_tokens=None, ttft_s=None, tpot_s=None, tokens_per_s=None)
    report = {"preset": {"name": "tiny"}, "device": {"name": "cpu"}, "mode": "fair", "prompt_tokens": 5,
              "cancelled": True, "results": [row, stopped]}
    view.apply([events.RunDone(report)], now=3.0)
    assert view.done
    assert view.lanes["baseline"].stage == "done" and view.lanes["baseline"].figures()["ttft_s"] == 0.11
    assert view.lanes["sdpa"].stage == "cancelled" and "stopped" in view.lanes["sdpa"].reason
    rows = summary.summary_rows(report)
    column = {name: i for i, name in enumerate(summary.SUMMARY_HEADERS)}
    assert rows[0][:5] == ["baseline", "reference", "200.00", "reference", "110.00"]     # one request: no spread
    assert [rows[0][column[c]] for c in ("Status", "Tokens", "Peak memory", "MBU (measured copy)",
                                         "MBU (datasheet)", "First diff")] == ["ok", "3", "0 MiB", "43%", "-",
                                                                               "reference"]
    assert rows[1][column["Status"]] == "cancelled" and rows[1][1] == "-"
    assert len(rows[0]) == len(summary.SUMMARY_HEADERS)
    assert summary.summary_rows({"results": [dict(row, mbu=0.0042)]})[0][column["MBU (datasheet)"]] == "0.4%"
    assert rows[0][-1] == "alone on the device"
    busy = dict(row, host_busy=True, host_others_cores=1.24)
    assert summary.summary_rows({"results": [busy]})[0][-1] == "alone on the device; CPU busy (1.2 cores taken)"
    table = list(csv.DictReader(io.StringIO(summary.report_csv(report))))
    assert [r["variant"] for r in table] == ["baseline", "sdpa"]
    assert table[0]["ttft_s"] == "0.11" and table[0]["memory_rss_bytes"] == "400" and "token_times_s" not in table[0]
    for figure in (run_charts.ttft_figure(view), run_charts.itl_figure(view), run_charts.race_figure(view),
                   run_charts.memory_figure(view), run_charts.race_figure(view, replay_s=0.2)):
        assert figure.data, "every chart has a trace"
    assert list(run_charts.race_figure(view, replay_s=0.2).data[0].y) == [0, 1]


def test_failed_and_unavailable_lanes_carry_their_reason():
    view = RunView(["fa2", "bnb-4bit"])
    view.apply([events.Unavailable("fa2", "needs CUDA"), events.Failed("bnb-4bit", "could not load: boom")])
    assert view.lanes["fa2"].stage == "unavailable" and view.lanes["fa2"].reason == "needs CUDA"
    assert view.lanes["bnb-4bit"].stage == "failed" and "boom" in view.lanes["bnb-4bit"].detail
    view.apply([events.Failed("*", "the run stopped: bug")])
    assert view.error == "the run stopped: bug"


def test_a_card_says_when_other_processes_slowed_its_variant():
    view = fold_fair_run()
    row = {"variant": "baseline", "label": "Eager attention", "status": "ok", "reason": None, "text": "abc",
           "output_tokens": 3, "ttft_s": 0.11, "tpot_s": 0.2, "tokens_per_s": 6.0, "peak_memory_bytes": 400,
           "weights_bytes": 1000, "contended": False, "token_times_s": [0.1, 0.3, 0.5], "memory": {},
           "host_busy": True, "host_others_cores": 1.26}
    view.apply([events.RunDone({"mode": "fair", "results": [row]})], now=3.0)
    card = render.card_html(view.lanes["baseline"], now=3.0)
    assert "CPU busy: other processes took 1.3 cores, figures slowed" in card
    view.lanes["baseline"].result = dict(row, host_busy=False)
    assert "CPU busy" not in render.card_html(view.lanes["baseline"], now=3.0)


def test_a_finished_sweep_says_how_many_cells_other_processes_slowed():
    from types import SimpleNamespace

    rows = [{"variant": "sdpa", "status": "ok", "reason": None, "host_busy": False, "host_others_cores": 0.1},
            {"variant": "sdpa", "status": "ok", "reason": None, "host_busy": True, "host_others_cores": 1.34}]
    live = SimpleNamespace(settled=2, total=2, done=True, experiment=SimpleNamespace(name="batch"),
                           result={"results": rows, "cancelled": False, "wall_s": 3.0})
    text = sweep_render.sweep_message(live, "CPU", stopping=False, elapsed_s=3.0)
    assert 'data-kind="warn"' in text and "1 of 2 timed rows was slowed by other processes" in text
    assert "(up to 1.3 cores taken)" in text and "marked CPU busy in the table" in text
    rows[1]["host_busy"] = False
    assert 'data-kind="ok"' in sweep_render.sweep_message(live, "CPU", stopping=False, elapsed_s=3.0)
    live.result["trends"] = [{"claim": "c", "measured": "m", "agrees": False, "note": "On this run c did not hold."}]
    text = sweep_render.sweep_message(live, "CPU", stopping=False, elapsed_s=3.0)
    assert 'data-kind="warn"' in text and "the chart contradicts the paragraph beside it" in text


def test_the_summary_states_each_comparison_with_its_range_or_within_noise_fastest_first():
    def row(variant, tpots, busy=False):
        return {"variant": variant, "status": "ok", "output_tokens": 8, "tpot_s": sorted(tpots)[1],
                "tpot_min_s": min(tpots), "tpot_max_s": max(tpots), "repeats": 3, "tpot_repeats_s": tpots,
                "ttft_s": 0.02, "ttft_repeats_s": [0.02, 0.02, 0.02], "host_busy": busy, "host_others_cores": 1.3}
    report = {"results": [row("baseline", [0.0100, 0.0098, 0.0104]), row("sdpa", [0.0097, 0.0095, 0.0099]),
                          row("compiled", [0.0050, 0.0049, 0.0052], busy=True)]}
    table = summary.summary_rows(report)
    assert [r[0] for r in table] == ["baseline", "compiled", "sdpa"]       # the reference, then the fastest
    assert [r[2] for r in table] == ["10.00 (9.80-10.40)", "5.00 (4.90-5.20)", "9.70 (9.50-9.90)"]
    assert table[1][1] == f"2.00x faster ({0.0098 / 0.0052:.2f}-{0.0104 / 0.0049:.2f}x)"
    assert table[2][1] == "1.03x faster, within noise"
    assert table[2][3] == "1.00x faster, within noise"             # TTFT: identical repeats overlap
    assert table[1][8] == "\u2605 fastest per token" and table[2][8] == "" and table[0][8] == ""
    # the first table: each figure with its direction, who was slowed said once in the row, the rest left out
    glance = summary.glance_rows(report)
    assert [len(r) for r in glance] == [len(summary.GLANCE_HEADERS)] * 3
    assert glance[0][:2] == ["baseline", "10.00 (9.80-10.40) · reference"]
    assert glance[1][1] == f"5.00 (4.90-5.20) · 2.00x faster ({0.0098 / 0.0052:.2f}-{0.0104 / 0.0049:.2f}x)"
    assert glance[2][2] == "20.00 (20.00-20.00) · 1.00x faster, within noise"
    assert glance[1][5] == "\u2605 fastest per token; slowed by other processes: compiled"
    assert glance[2][5] == "-" and sum("slowed" in cell for cell in glance[1]) == 1


def test_a_card_counts_the_timed_requests_of_a_variant_with_repeats():
    view = RunView(["sdpa"], "fair", repeats=3)
    for request_id in (1, 2):
        view.apply([events.Started("sdpa", request_id, 10.0 * request_id, 5),
                    events.Token("sdpa", request_id, 0, 7, "a", 10.0 * request_id + 0.1)], now=1.0)
    lane = view.lanes["sdpa"]
    assert lane.requests == 2 and lane.text == "a"                  # each repeat starts its answer afresh
    assert "timed request 2 of 3" in render.card_html(lane, now=1.0)
    once = RunView(["sdpa"], "fair")
    once.apply([events.Started("sdpa", 1, 10.0, 5)], now=1.0)
    assert "timed request" not in render.card_html(once.lanes["sdpa"], now=1.0)


def test_a_variant_with_repeats_left_waits_for_its_next_turn_instead_of_reading_done():
    view = RunView(["sdpa", "baseline"], "fair", repeats=2)
    finished = events.Finished("sdpa", 1, 10.0, (10.1, 10.2), (7, 8), "ab", 5, 1, False)
    view.apply([events.Started("sdpa", 1, 10.0, 5), finished], now=1.0)
    assert view.lanes["sdpa"].stage == "queued"                     # the others take their turn first
    second = events.Finished("sdpa", 2, 20.0, (20.1, 20.2), (7, 8), "ab", 5, 1, False)
    view.apply([events.Started("sdpa", 2, 20.0, 5), second], now=2.0)
    assert view.lanes["sdpa"].stage == "queued"                     # the engine has not said it is done
    view.apply([events.CellDone("sdpa", 0, Outcome("sdpa", finished=[finished, second]))], now=2.0)
    assert view.lanes["sdpa"].stage == "done"


def attention_sweep(busy=False):
    """A hand-made attention sweep: baseline and sdpa at two prompt lengths, prefill and generation."""
    from engine.studies.experiments import derive, get
    rows = []
    for cell, (phase, length) in enumerate((("prefill", 64), ("prefill", 256), ("generation", 64),
                                            ("generation", 256))):
        for variant, times in (("baseline", [0.010, 0.011, 0.012]), ("sdpa", [0.005, 0.0055, 0.006])):
            scaled = [t * length / 64 for t in times]
            rows.append({"variant": variant, "status": "ok", "reason": None, "cell": cell, "phase": phase,
                         "prompt_length": length, "pad_ratio": 0.0, "batch_size": 4, "max_new_tokens": 1,
                         "ttft_s": scaled[1], "e2e_s": scaled[1], "ttft_repeats_s": scaled,
                         "token_times_repeats_s": [[t] for t in scaled], "e2e_repeats_s": scaled,
                         "peak_memory_bytes": 300 * 2**20 + cell,
                         "host_busy": busy and variant == "sdpa", "host_others_cores": 1.26})
    return {"experiment": "attention", "results": derive(get("attention"), rows)}


def test_the_sweep_table_has_one_format_per_field_and_marks_rows_other_processes_slowed():
    from engine.views.sweep_charts import sweep_table
    headers, rows = sweep_table(attention_sweep(), ("speedup_vs_baseline", "peak_memory_bytes"))
    assert headers == ["variant", "status", "phase", "prompt tokens", "padding", "batch size", "new tokens",
                       "speedup over baseline", "peak memory", "reason"]
    speedups = [row[7] for row in rows]
    assert speedups[:2] == ["1.00x (0.83-1.20)", "2.00x (1.67-2.40)"]      # medians, and the range over repeats
    assert all(s.endswith(")") and s.split(" ")[0].endswith("x") and len(s.split(" ")[0]) == 5 for s in speedups)
    assert rows[0][8] == "300 MiB" and rows[0][4] == "0%"                 # sizes in MiB, not bytes
    headers, rows = sweep_table(attention_sweep(busy=True), ("speedup_vs_baseline",), reasons=False)
    assert headers[-1] == "CPU" and rows[1][-1] == "busy (1.3 cores taken)" and rows[0][-1] == ""


def test_the_sweep_chart_stacks_its_panels_so_their_titles_never_share_a_line():
    from engine.views.sweep_charts import PANELS, empty_sweep_figure, sweep_figure
    for name, panels in PANELS.items():
        figure = empty_sweep_figure(name)
        titles = [a for a in figure.layout.annotations if a.text in {p.title for p in panels}]
        assert [a.text for a in titles] == [p.title for p in panels]
        assert len({round(a.y, 6) for a in titles}) == len(panels)          # one title per line
        assert {a.x for a in titles} == {0.5}                              # each centred over the full width
        domains = [figure.layout[f"yaxis{'' if i == 1 else i}"].domain for i in range(1, len(panels) + 1)]
        assert all(low > high_below for (low, _), (_, high_below) in zip(domains, domains[1:]))   # no overlap
    figure = sweep_figure(attention_sweep())
    assert {trace.xaxis for trace in figure.data} == {"x", "x2", "x3"}
    assert [list(t.y) for t in figure.data if t.name == "sdpa"][0] == [2.0, 2.0]


def quantization_sweep(entries: dict) -> dict:
    """A hand-made quantization sweep, one cell: each variant's row with its quality entry (`entries`)."""
    from engine.studies.experiments import derive, get
    tpot = {"baseline": [0.010, 0.011, 0.012], "bnb-8bit": [0.020, 0.021, 0.022], "bnb-4bit": [0.015, 0.0155, 0.016],
            "int4": [0.005, 0.0055, 0.006]}
    rows = [{"variant": v, "status": "ok", "reason": None, "cell": 0, "prompt_length": 9, "pad_ratio": 0.0,
             "batch_size": 1, "max_new_tokens": 4, "tpot_s": sorted(tpot[v])[1], "tpot_repeats_s": tpot[v],
             "weights_bytes": 2**20, "peak_memory_bytes": 2**21, "quality": entry} for v, entry in entries.items()]
    return {"experiment": "quantization", "results": derive(get("quantization"), rows)}


def test_the_quantization_table_and_chart_show_each_variants_quality():
    from engine.studies.experiments import get
    from engine.views.sweep_charts import sweep_figure, sweep_table
    base = {"top_ids": [1, 2, 3, 4], "token_logprobs": [-0.1, -0.2, -0.3, -0.4]}

    def scored(top_ids, kld, logprobs):
        return quality.summarize({"top_ids": top_ids, "token_logprobs": logprobs, "kld": kld}, base, "baseline")
    entries = {"baseline": dict(scored([1, 2, 3, 4], [0.0] * 4, base["token_logprobs"]), status="reference"),
               "bnb-8bit": scored([1, 2, 3, 4], [0.0, 0.001, 0.002, 0.0012345], [-0.1, -0.2, -0.3, -0.5]),
               "bnb-4bit": scored([1, 2, 3, 9], [0.01, 0.02, 0.03, 0.1], [-0.2, -0.2, -0.3, -0.9]),
               "int4": quality.unmeasured("not measured", "not measured: it gave no answer", "baseline")}
    sweep = quantization_sweep(entries)
    headers, rows = sweep_table(sweep, get("quantization").y)
    assert headers[-7:] == ["same top token as baseline", "mean KLD (nats)", "KLD p99 (nats)", "KLD max (nats)",
                            "perplexity", "quality note", "reason"]
    table = {row[0]: row[-7:-1] for row in rows}
    assert table["baseline"] == ["reference", "reference", "reference", "reference", "1.284", "-"]
    # agreement as a percentage; KLD to three significant digits (0.0010586 -> 0.00106); perplexity to 3 decimals
    assert table["bnb-8bit"] == ["100%", "0.00106", "-", "0.002", "1.317", "-"]
    assert table["bnb-4bit"] == ["75%", "0.04", "-", "0.1", "1.492", "-"]
    assert table["int4"] == ["-"] * 5 + ["not measured: it gave no answer"]
    # the third panel: mean KLD of the measured variants (not the reference's answer scored by itself)
    figure = sweep_figure(sweep)
    kld = {t.name: list(t.y) for t in figure.data if t.xaxis == "x3"}
    assert kld == {"bnb-8bit": [pytest.approx(0.0010586, rel=1e-4)], "bnb-4bit": [pytest.approx(0.04)]}
    assert figure.layout.annotations[2].text == "mean KLD vs baseline (nats): lower is closer"
    assert figure.layout.yaxis3.rangemode == "tozero" and len(figure.layout.annotations) == 3
    # random weights: the reason in the table's note column and in the panel, no bar dressed as a figure
    noise = quantization_sweep({v: quality.unmeasured("not meaningful", quality.RANDOM_WEIGHTS) for v in entries})
    headers, rows = sweep_table(noise, get("quantization").y)
    assert {row[headers.index("quality note")] for row in rows} == {"not meaningful: random weights"}
    assert {row[headers.index("mean KLD (nats)")] for row in rows} == {"-"}
    figure = sweep_figure(noise)
    assert not [t for t in figure.data if t.xaxis == "x3"] and len([t for t in figure.data if t.xaxis == "x2"]) == 4
    (why,) = [a for a in figure.layout.annotations if a.xref == "x3 domain"]
    assert why.text == "not meaningful: random weights" and why.yref == "y3 domain" and (why.x, why.y) == (0.5, 0.5)
    # rows not scored yet (a live sweep before its Scored events): no reason to give, no bars
    assert len(sweep_figure(quantization_sweep({v: None for v in entries})).layout.annotations) == 3


def test_sizes_keep_three_digits_in_the_unit_they_fill_and_ratios_two_decimals():
    from engine.views import tables
    assert [tables.size_digits(n) for n in (None, 512, 580 * 2**10, int(1.05 * 2**20), 409 * 2**20, 15 * 2**30)] == \
        ["-", "512 B", "580 KiB", "1.05 MiB", "409 MiB", "15.0 GiB"]
    assert [tables.ratio(x) for x in (1, 8.666, 9.227, 0.7171, None)] == ["1.00x", "8.67x", "9.23x", "0.72x", "-"]
    assert tables.share(0.3) == "30%" and tables.share(0.0) == "0%"


def quality_report():
    """A finished run with quality entries (engine/quality.py): baseline the reference, sdpa its equal,
    bnb-4bit off on one position in four, a served variant whose server reports none."""
    reference = {"top_ids": [1, 2, 3, 4], "token_logprobs": [-0.1, -0.2, -0.3, -0.4]}
    same = quality.summarize({"top_ids": [1, 2, 3, 4], "token_logprobs": [-0.1, -0.2, -0.3, -0.4],
                              "kld": [0.0] * 4}, reference, "baseline")
    off = quality.summarize({"top_ids": [1, 2, 3, 5], "token_logprobs": [-0.1, -0.25, -0.3, -0.9],
                             "kld": [0.0, 0.01, 0.02, 0.13]}, reference, "baseline")

    def row(variant, tpot, peak, entry):
        return {"variant": variant, "label": variant, "status": "ok", "reason": None, "text": "abcd",
                "output_tokens": 4, "ttft_s": 0.01, "tpot_s": tpot, "tokens_per_s": 1 / tpot,
                "peak_memory_bytes": peak, "weights_bytes": 1000, "mbu": None, "first_diff_token": None,
                "contended": False, "token_times_s": [0.01, 0.02], "memory": {}, "quality": entry}
    return {"preset": {"name": "smollm2-135m"}, "device": {"name": "cpu"}, "mode": "fair", "prompt_tokens": 5,
            "results": [row("baseline", 0.060, 600 * 2**20, dict(same, status="reference")),
                        row("sdpa", 0.050, 610 * 2**20, same), row("bnb-4bit", 0.066, 150 * 2**20, off),
                        row("vllm", 0.030, None, quality.unmeasured("not reported", quality.NOT_REPORTED))]}


def test_the_summary_and_the_csv_give_each_variant_its_answers_against_the_reference():
    report = quality_report()
    column = {name: i for i, name in enumerate(summary.SUMMARY_HEADERS)}
    cells = {r[0]: [r[column[c]] for c in ("Same top token", "Mean KLD", "KLD p99 (or max)",
                                           "Perplexity (reference's)")] for r in summary.summary_rows(report)}
    assert cells["baseline"] == ["reference", "reference", "reference", "1.284"]
    assert cells["sdpa"] == ["100%", "0", "0 (max)", "1.284 (baseline 1.284)"]
    assert cells["bnb-4bit"] == ["75%", "0.04", "0.13 (max)", "1.473 (baseline 1.284)"]
    assert cells["vllm"] == ["not reported by the server", "-", "-", "-"]
    assert quality.agreement_text(0.998) == "99.8%" and quality.agreement_text(0.9996) == "99.9%"  # never 100%
    # a random-weight preset: the reason in place of numbers; a report without entries: dashes
    noise = dict(report["results"][2], quality=quality.unmeasured("not meaningful", quality.RANDOM_WEIGHTS))
    assert summary.quality_cells(noise) == ["not meaningful: random weights", "-", "-", "-"]
    assert summary.quality_cells({"variant": "sdpa"}) == ["-"] * 4
    table = {r["variant"]: r for r in csv.DictReader(io.StringIO(summary.report_csv(report)))}
    assert table["bnb-4bit"]["quality_top_agreement"] == "0.75" and table["bnb-4bit"]["quality_kld_mean"] == "0.04"
    assert table["bnb-4bit"]["quality_kld_max"] == "0.13" and table["bnb-4bit"]["quality_kld_p99"] == ""
    assert table["bnb-4bit"]["quality_kld_tail"] == "max" and table["bnb-4bit"]["quality_positions"] == "4"
    assert table["baseline"]["quality_status"] == "reference" and table["bnb-4bit"]["quality_note"] == ""
    assert table["vllm"]["quality_note"] == "not reported by the server" and table["vllm"]["quality_kld_mean"] == ""
    assert "quality" not in table["sdpa"]                        # the entry as columns, not a dict's repr
    for words in ("Same top token", "Mean KLD", "--kl-divergence", "llama.cpp", "lm-eval", "vLLM",
                  "not meaningful: random weights", "Speed against quality"):
        assert words in summary.DEFINITIONS_MD, words


def test_the_speed_against_quality_chart_puts_each_variant_at_its_tpot_and_mean_kld():
    report = quality_report()
    view = RunView([r["variant"] for r in report["results"]], "fair")
    assert run_charts.quality_figure(view).layout.annotations[0].text == "quality is scored after the timed requests"
    view.apply([events.RunDone(report)], now=1.0)
    figure = run_charts.quality_figure(view)
    (points,) = figure.data
    assert list(points.text) == ["sdpa", "baseline", "bnb-4bit"]              # by time per token
    assert [round(x, 6) for x in points.x] == [50.0, 60.0, 66.0] and list(points.y) == [0.0, 0.0, 0.04]
    assert list(points.marker.size) == [610 * 2**20, 600 * 2**20, 150 * 2**20]      # area: peak memory
    assert points.marker.sizemode == "area" and points.marker.sizeref == 2 * 610 * 2**20 / 40 ** 2
    assert points.customdata[2][0] == "150 MiB" and "same top token as baseline on 75%" in points.customdata[2][1]
    assert figure.layout.yaxis.title.text == "mean KLD vs baseline (nats)"
    assert list(figure.layout.yaxis.tickvals) == [0.0, 0.02, 0.04] and figure.layout.yaxis.range[0] < 0  # markers whole
    assert figure.layout.annotations[0].text == "not drawn: vllm (not reported by the server)"
    # rounding-sized differences only (sdpa against eager): drawn at their value on an axis of at least
    # 0.01 nats, so 4e-08 sits on the reference's line instead of filling the chart
    for row in report["results"]:
        if row["variant"] == "bnb-4bit":
            row["quality"] = dict(row["quality"], kld_mean=4e-08)
    close = RunView([r["variant"] for r in report["results"]], "fair")
    close.apply([events.RunDone(report)], now=1.0)
    figure = run_charts.quality_figure(close)
    assert list(figure.data[0].y) == [0.0, 0.0, 4e-08] and figure.layout.yaxis.range[1] == pytest.approx(0.013)
    # random weights: the reason, and no point dressed as a measurement
    for row in report["results"]:
        row["quality"] = quality.unmeasured("not meaningful", quality.RANDOM_WEIGHTS)
    noise = RunView(["baseline", "sdpa"], "fair")
    noise.apply([events.RunDone(report)], now=1.0)
    figure = run_charts.quality_figure(noise)
    assert not figure.data and figure.layout.annotations[0].text == "not meaningful: random weights"
    for row in report["results"]:
        del row["quality"]
    older = RunView(["baseline"], "fair")
    older.apply([events.RunDone(report)], now=1.0)
    assert run_charts.quality_figure(older).layout.annotations[0].text == "no quality figures in this run's report"
    assert set(run_charts.empty_figures()) == {"ttft", "itl", "race", "memory", "quality"}


def test_a_scored_event_shows_the_quality_before_the_report():
    report = quality_report()
    view = fold_fair_run()
    before = view.revisions["quality"]
    view.apply([events.Scored("baseline", report["results"][2]["quality"])], now=3.0)
    assert view.lanes["baseline"].quality["kld_mean"] == 0.04 and view.revisions["quality"] == before + 1
    assert list(run_charts.quality_figure(view).data[0].y) == [0.04]
    assert "mean KLD 0.04" in render.card_html(view.lanes["baseline"], now=3.0)


def test_bars_of_medians_carry_their_min_max_whiskers():
    """The TTFT bars (Compare tab) and an experiment's medians: whiskers from each repeat's min and max, so that
    noise does not look like a result; live, one request, none."""
    view = fold_fair_run()
    live = run_charts.ttft_figure(view).data[0]
    assert not live.error_y.visible
    row = {"variant": "baseline", "status": "ok", "output_tokens": 3, "ttft_s": 0.011, "tpot_s": 0.2,
           "ttft_repeats_s": [0.010, 0.011, 0.014], "tokens_per_s": 6.0, "peak_memory_bytes": 400}
    view.apply([events.RunDone({"mode": "fair", "results": [row]})], now=3.0)
    bar = run_charts.ttft_figure(view).data[0]
    assert bar.error_y.visible and list(bar.y) == [pytest.approx(11.0)]
    assert list(bar.error_y.arrayminus) == [pytest.approx(1.0)] and list(bar.error_y.array) == [pytest.approx(3.0)]
    sweep = quantization_sweep({v: None for v in ("baseline", "bnb-4bit")})
    tpot = next(t for t in sweep_figure_traces(sweep) if t.name == "bnb-4bit" and t.yaxis == "y2")
    assert tpot.error_y.visible                                # 15.5 ms, from 15.0 to 16.0
    assert list(tpot.error_y.arrayminus) == [pytest.approx(0.5)] and list(tpot.error_y.array) == [pytest.approx(0.5)]


def sweep_figure_traces(sweep: dict) -> list:
    from engine.views.sweep_charts import sweep_figure
    return list(sweep_figure(sweep).data)
