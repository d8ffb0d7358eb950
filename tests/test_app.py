"""End to end through Gradio's client: the real app on a free local port, the tiny preset on the CPU.

One app serves the whole module, so workers load once (about 20 s on two cores); later tests
check that they stay loaded. The outputs of /compare are found by name in ui.compare.RUN (message,
run JSON, summary, JSON and CSV files, four plots, a card and an answer per catalog variant).
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest
from app_server import ROOT, serve
from gradio_client import Client

from engine.schedule import ENDED_LOADING
from engine.variants import CATALOG, REFERENCE
from engine.worker.serve import LOAD_DELAY_ENV
from ui.compare import PLOTS as PLOT_NAMES
from ui.compare import REPLAY, RUN, answer, card
from ui.render import answer_text

NAMES = list(CATALOG)
MESSAGE, REPORT, SUMMARY, JSON_FILE, CSV_FILE = map(RUN.index, ("message", "report", "summary", "json_file",
                                                                "csv_file"))
PLOTS = [RUN.index(name) for name in PLOT_NAMES]            # TTFT, ITL, race, memory, speed against quality
CARD = {name: RUN.index(card(name)) for name in NAMES}
ANSWER = {name: RUN.index(answer(name)) for name in NAMES}
REFERENCE_CARD = CARD[REFERENCE]      # the baseline's card: every run here selects it
SELECTED = ["baseline", "sdpa", "bnb-4bit"]
PROMPT = "Explain why attention is memory-bound during decoding."
# ~4k tokens (byte-level tokenizer): with 256 new tokens a run lasts seconds even on a fast CPU, so
# the tests that act mid-run (queue, Stop, a closed page) have time to act
LONG_PROMPT = "Why does decoding wait on memory bandwidth? " * 90
REPORT_KEYS = {"created", "device", "versions", "preset", "prompt", "prompt_tokens", "mode", "repeats", "batch_size",
               "decoding", "cancelled", "results"}


def stage(card: str) -> str | None:
    found = re.search(r'data-stage="([a-z]+)"', card or "")
    return found.group(1) if found else None


def compare(client, variants=SELECTED, tokens=24, prompt=PROMPT, preset="tiny", mode="fair", repeats=None):
    extra = () if repeats is None else (repeats,)        # None: the page's default
    return client.submit(prompt, preset, variants, tokens, mode, *extra, api_name="/compare")


def test_compare_streams_every_variant_and_ends_with_the_run_json(url, client):
    tokens = 256
    job = compare(client, tokens=tokens)    # ~0.3 s a variant on a CPU: a few page updates while it generates
    updates = [list(update) for update in job]
    final = job.outputs()[-1]
    assert len(final) == len(RUN.api)
    assert "Done" in final[MESSAGE], final[MESSAGE]
    assert "3 timed requests each (medians)" in final[MESSAGE]      # the default: enough to state a range

    report = final[REPORT]
    assert REPORT_KEYS <= set(report)
    assert report["preset"]["name"] == "tiny" and report["mode"] == "fair" and report["prompt"] == PROMPT
    assert [r["variant"] for r in report["results"]] == SELECTED
    for row in report["results"]:
        assert row["status"] == "ok", row["reason"]
        assert row["output_tokens"] == tokens and len(row["token_times_s"]) == tokens   # random weights ignore EOS
        assert row["ttft_s"] > 0 and row["tpot_s"] > 0 and row["tokens_per_s"] > 0 and row["peak_memory_bytes"] > 0
        assert not row["contended"]
        assert row["cpu_threads"] == max(len(os.sched_getaffinity(0)) - 1, 1)   # a core left to the page
        assert isinstance(row["host_busy"], bool) and row["host_others_cores"] >= 0
        shown = final[ANSWER[row["variant"]]]
        assert shown == answer_text(row["text"]) and shown      # control characters as visible symbols
        assert stage(final[CARD[row["variant"]]]) == "done"

    # streamed: every variant's text shows up before the run ends, and some of it while still growing
    before_end = updates[:-1]
    partial = False
    for name in SELECTED:
        texts = [u[ANSWER[name]] for u in before_end]
        full = final[ANSWER[name]]
        assert any(t for t in texts if isinstance(t, str)) or name == SELECTED[-1], f"{name} never streamed"
        partial |= any(isinstance(t, str) and t and len(t) < len(full) and full.startswith(t) for t in texts)
    assert partial, "no update carried a partly generated answer"
    assert any(stage(u[REFERENCE_CARD]) == "loading" for u in before_end), \
        "the first run shows its workers loading"
    cards = [CARD[name] for name in SELECTED]   # a tiny model's turn can fall between two updates
    assert any(stage(u[index]) == "generating" for u in before_end for index in cards)

    # the charts: plotly figures, a bar per variant (TTFT), a line per variant (ITL, race, memory); on
    # random weights the speed-against-quality chart says why it draws no point
    figures = [json.loads(final[index]["plot"]) for index in PLOTS]
    assert all(final[index]["type"] == "plotly" for index in PLOTS)
    assert list(figures[0]["data"][0]["x"]) == SELECTED
    assert [[trace["name"] for trace in figure["data"]] for figure in figures[1:4]] == [SELECTED] * 3
    assert not figures[4]["data"]
    assert any(isinstance(u[PLOTS[2]], dict) and json.loads(u[PLOTS[2]]["plot"])["data"] for u in before_end), \
        "the race chart was live before the end"

    # summary and downloads (served by the app) hold the same run
    names = [row[0] for row in final[SUMMARY]["data"]]
    assert names[0] == REFERENCE and sorted(names) == sorted(SELECTED)       # the reference first, then by TPOT
    assert final[SUMMARY]["data"][0][1] == "reference"
    assert final[SUMMARY]["data"][1][1].split(" ")[0].endswith("x")             # a speedup against it
    files = {}
    for index in (JSON_FILE, CSV_FILE):
        path = final[index]["value"]
        with urllib.request.urlopen(f"{url}/gradio_api/file={urllib.parse.quote(path)}", timeout=10) as response:
            files[index] = response.read().decode()
    assert json.loads(files[JSON_FILE]) == report
    table = list(csv.DictReader(io.StringIO(files[CSV_FILE])))
    assert [row["variant"] for row in table] == SELECTED
    assert [float(row["tpot_s"]) for row in table] == [row["tpot_s"] for row in report["results"]]


def test_second_run_reuses_the_loaded_workers(client):
    first = compare(client, tokens=8)
    first.result()
    job = compare(client, tokens=8, repeats=1)
    updates = [list(u) for u in job]
    report = job.outputs()[-1][REPORT]
    assert all(r["status"] == "ok" for r in report["results"])
    assert report["repeats"] == 1 and report["warmup_requests"] == 1
    assert "One timed request each: no range to judge a difference by. Set Repeats to 3 or more." \
        in job.outputs()[-1][MESSAGE]
    assert "warm-up request" in job.outputs()[-1][REFERENCE_CARD]     # its time is shown apart
    stages = {stage(u[CARD[n]]) for u in updates for n in SELECTED}
    assert not stages & {"loading", "warming"}, f"a worker was reloaded: {stages}"
    assert "kept loaded" in job.outputs()[-1][REFERENCE_CARD]


def test_race_mode_marks_timings_contended(client):
    final = compare(client, tokens=8, mode="race").result()
    rows = final[REPORT]["results"]
    assert final[REPORT]["mode"] == "race" and all(r["status"] == "ok" and r["contended"] for r in rows)
    assert all(r["host_busy"] is None for r in rows)      # the variants share the cores: not judged as "busy"
    assert {row[-1] for row in final[SUMMARY]["data"]} == {"contended (race)"}
    assert "contended" in final[REFERENCE_CARD]


def test_replay_plays_the_last_run_as_a_race(client):
    run = compare(client, tokens=8).result()
    job = client.submit(api_name="/replay")
    frames = [list(u) for u in job]
    final = job.outputs()[-1]
    message, race = final[REPLAY.index("message")], final[REPLAY.index("plot:race")]
    answers = [final[REPLAY.index(answer(name))] for name in NAMES]
    assert "Replay" in message and len(answers) == len(NAMES) == len(final) - 2
    figure = json.loads(race["plot"])
    assert [trace["name"] for trace in figure["data"]] == SELECTED
    assert all(trace["x"][0] == 0 for trace in figure["data"])        # every variant starts at 0 s
    assert [trace["y"][-1] for trace in figure["data"]] == [8] * 3
    for name in SELECTED:
        assert answers[NAMES.index(name)] == run[ANSWER[name]]
    assert len(frames) >= 2


@pytest.mark.parametrize("prompt, variants, tokens, preset, expected", [
    ("", SELECTED, 8, "tiny", "the prompt is empty"),
    (PROMPT, [], 8, "tiny", "no variant selected"),
    ("x" * 5000, ["baseline"], 8, "tiny", "more than the context"),
    (PROMPT, ["baseline"], 8, "falcon-7b", "not in the local Hugging Face cache"),
], ids=["empty prompt", "no variant", "over the context", "preset that cannot load"])
def test_bad_input_gets_a_message_and_crashes_nothing(client, prompt, variants, tokens, preset, expected):
    result = client.predict(prompt, preset, variants, tokens, "fair", api_name="/compare")
    assert expected in result[MESSAGE] and 'data-kind="error"' in result[MESSAGE]
    assert result[REPORT] is None


def test_repeats_give_medians_and_the_spread_and_stay_within_their_limit(client):
    final = client.predict(PROMPT, "tiny", ["baseline", "sdpa"], 8, "fair", 3, api_name="/compare")
    report = final[REPORT]
    assert report["repeats"] == 3 and "3 timed requests each" in final[MESSAGE]
    assert "set Repeats" not in final[MESSAGE]
    lines = {line[0]: line for line in final[SUMMARY]["data"]}
    for row in report["results"]:
        line = lines[row["variant"]]
        assert row["status"] == "ok" and len(row["tpot_repeats_s"]) == 3
        assert row["tpot_min_s"] <= row["tpot_s"] <= row["tpot_max_s"]
        assert line[2] == (f"{row['tpot_s'] * 1000:.2f} ({row['tpot_min_s'] * 1000:.2f}-"
                           f"{row['tpot_max_s'] * 1000:.2f})")
    assert "medians of 3 requests" in final[REFERENCE_CARD]
    refused = client.predict(PROMPT, "tiny", SELECTED, 8, "fair", 9, api_name="/compare")   # past the slider
    assert "repeats must be a whole number from 1 to 5, got 9" in refused[MESSAGE] and refused[REPORT] is None


def test_next_run_after_bad_input_works_without_reloading(client):
    job = compare(client, tokens=4)
    updates = [list(u) for u in job]
    assert all(r["status"] == "ok" for r in job.outputs()[-1][REPORT]["results"])
    assert not {stage(u[CARD[n]]) for u in updates for n in SELECTED} & {"loading", "warming"}


def wait_until_generating(job, timeout_s=60, stages=("generating",)) -> None:
    deadline = time.monotonic() + timeout_s
    for update in job:
        if any(stage(update[CARD[name]]) in stages for name in NAMES):
            return
        assert time.monotonic() < deadline, f"no variant reached {' or '.join(stages)}"
    raise AssertionError(f"the run ended before any variant was seen in {' or '.join(stages)}")


def test_visitors_queue_and_stop_only_their_own_run(url, client):
    other = Client(url, verbose=False)
    job = compare(client, tokens=256, prompt=LONG_PROMPT, repeats=2)
    wait_until_generating(job)
    queued = compare(other, tokens=4)
    waiting = ""
    for _ in range(100):                           # the second visitor waits for the device and sees its place
        waiting = next((u[MESSAGE] for u in queued.outputs() if "Waiting for the device" in u[MESSAGE]), "")
        if waiting:
            break
        time.sleep(0.1)
    assert "Waiting for the device: 1 run ahead of yours" in waiting
    other.predict(api_name="/stop")                # the other visitor's Stop: their own run is only queued
    report = job.result()[REPORT]
    assert not report["cancelled"] and all(r["status"] == "ok" for r in report["results"])
    assert all(r["status"] == "ok" for r in queued.result()[REPORT]["results"])     # it ran after the first

    job = compare(client, tokens=256, prompt=LONG_PROMPT)
    wait_until_generating(job)
    client.predict(api_name="/stop")               # this visitor's Stop
    final = job.result()
    assert final[REPORT]["cancelled"] and "Stopped" in final[MESSAGE]
    assert {r["status"] for r in final[REPORT]["results"]} <= {"cancelled", "ok"}


def test_a_page_closed_mid_run_leaves_no_worker_busy(url, client):
    # without a KV cache each of 256 tokens recomputes the ~4k-token prompt (40-100 ms a token on a
    # CPU): left running, the abandoned run would hold the device for tens of seconds. The page goes
    # away during the warm-up request, which is as long as a timed one: the worker stops it at its
    # next token as it would a timed one (test_visitors_queue_and_stop_only_their_own_run stops a
    # run mid-generation), and the test need not wait the warm-up out first
    job = compare(client, variants=["no-kv-cache"], tokens=256, prompt=LONG_PROMPT)
    wait_until_generating(job, stages=("warmup", "generating"))
    job.cancel()                                   # what Gradio does when the page goes away
    t0 = time.monotonic()
    after = Client(url, verbose=False).predict(PROMPT, "tiny", ["no-kv-cache"], 4, "fair", api_name="/compare")
    assert all(r["status"] == "ok" for r in after[REPORT]["results"])
    assert time.monotonic() - t0 < 5, "the abandoned run kept the worker busy"


@pytest.mark.parametrize("args, message", [
    (["--threads", "0"], "--threads must be at least 1, got 0"),
    (["--preset", "nope"], "unknown preset 'nope'"),
])
def test_bad_command_line_exits_2_with_what_to_fix(args, message):
    done = subprocess.run([sys.executable, str(ROOT / "app.py"), *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and message in done.stderr, done.stderr[-2000:]
    # refused before the page's imports: `--help` and a mistyped flag answer at once
    code = f"import app, sys; code = app.main({args!r}); print(code, 'gradio' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["2", "False"] and message in done.stderr, done.stderr[-2000:]


def test_a_job_abandoned_while_waiting_gives_its_place_up_and_never_runs(url, client):
    job = compare(client, tokens=256, prompt=LONG_PROMPT)    # 3 timed requests: time for two more jobs to queue
    wait_until_generating(job)
    abandoned = compare(Client(url, verbose=False), tokens=4)
    deadline = time.monotonic() + 30
    while not any("Waiting for the device" in u[MESSAGE] for u in abandoned.outputs()):
        assert time.monotonic() < deadline, "the second job never said it was waiting"
        time.sleep(0.1)
    abandoned.cancel()                             # its page went away while it waited
    time.sleep(1.5)                                # the gate's next tick sees the closed stream
    third = compare(Client(url, verbose=False), tokens=4)
    deadline = time.monotonic() + 30
    while not any("Waiting for the device" in u[MESSAGE] for u in third.outputs()):
        assert time.monotonic() < deadline, "the third job never said it was waiting"
        time.sleep(0.1)
    waiting = next(u[MESSAGE] for u in third.outputs() if "Waiting for the device" in u[MESSAGE])
    assert "1 run ahead of yours" in waiting       # the abandoned one is no longer in line
    client.predict(api_name="/stop")               # the first visitor stops theirs: the third's turn comes
    assert all(r["status"] == "ok" for r in third.result()[REPORT]["results"])
    job.result()


def test_another_visitors_preset_switch_waits_and_unloads_nothing_of_a_running_run(url, client):
    job = compare(client, tokens=256, prompt=LONG_PROMPT, repeats=2)
    wait_until_generating(job)
    other = compare(Client(url, verbose=False), variants=["baseline"], tokens=4, preset="small")
    deadline = time.monotonic() + 30
    while not any("Waiting for the device" in u[MESSAGE] for u in other.outputs()):
        assert time.monotonic() < deadline, "the other preset's run did not wait for the device"
        time.sleep(0.1)
    report = job.result()[REPORT]                   # the first run was left alone: its workers kept running
    assert not report["cancelled"] and all(r["status"] == "ok" for r in report["results"])
    assert all(r["status"] == "ok" for r in other.result()[REPORT]["results"])    # then small loaded and ran


@pytest.fixture(scope="module")
def slow_load_url():
    """An app of its own whose sdpa worker takes a minute to load ($SIDEBYSIDE_LOAD_DELAY)."""
    with serve(name="test_app_slow_load", env={LOAD_DELAY_ENV: "sdpa=60"}) as address:
        yield address


def test_a_stop_while_a_variant_loads_ends_the_run_within_seconds(slow_load_url):
    # issue 30: a worker that is loading reads no pipe, and the run waited 10 s for each before failing
    # it; now it is ended at once, and the page's last update comes within a few seconds of the Stop
    client = Client(slow_load_url, verbose=False)
    job = compare(client, variants=["baseline", "sdpa"], tokens=256, prompt=LONG_PROMPT)
    wait_until_generating(job, timeout_s=120, stages=("warmup", "generating"))    # baseline streams
    assert stage(job.outputs()[-1][CARD["sdpa"]]) in ("loading", "warming")        # sdpa loads for a minute
    began = time.monotonic()
    client.predict(api_name="/stop")
    final = job.result()
    took = time.monotonic() - began
    assert took < 5.0, f"the run ended {took:.1f} s after the Stop"
    assert "Stopped" in final[MESSAGE] and final[REPORT]["cancelled"]
    assert {r["variant"]: r["status"] for r in final[REPORT]["results"]} == {"baseline": "cancelled",
                                                                             "sdpa": "cancelled"}
    assert stage(final[CARD["sdpa"]]) == "cancelled"
    assert ENDED_LOADING in final[CARD["sdpa"]], final[CARD["sdpa"]]      # "stopped while it loaded: ..."
    assert final[REPORT]["results"][1]["reason"] == "the run was stopped before this variant had loaded"


def test_a_model_cache_that_is_a_file_is_one_clear_line_on_the_page(tmp_path_factory):
    # issue 30: each variant failed with a raw FileExistsError; the page now opens on a preset that needs no
    # cache and refuses, in one line that says what to do, a run of one that does
    cache = tmp_path_factory.mktemp("cache") / "cache"
    cache.write_text("not a folder")
    said = f"the model cache {cache} is a file, not a folder: set $SIDEBYSIDE_CACHE to a folder you can write to"
    with serve("--preset", "opt-350m-random", name="test_app_cache_file",       # random weights made in memory
               env={"SIDEBYSIDE_CACHE": str(cache)}) as address:
        final = Client(address, verbose=False).predict(PROMPT, "tiny", ["baseline"], 4, "fair", api_name="/compare")
    assert final[REPORT] is None
    assert f"Preset tiny cannot be used: {said}" in final[MESSAGE], final[MESSAGE]
    # a page asked to open on such a preset does not start, and says why in the same line
    done = subprocess.run([sys.executable, str(ROOT / "app.py"), "--preset", "tiny", "--port", "0"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env=dict(os.environ, SIDEBYSIDE_CACHE=str(cache)))
    assert done.returncode == 2 and f"error: {said}" in done.stderr, done.stderr[-2000:]
