"""The Experiments tab end to end through Gradio's client: the real app, the tiny preset on the CPU; first
its experiment handler alone, on the presets a page offers.

Outputs of /experiment, found by name in ui.experiments.RUN: status line (with its progress bar),
chart, rows table, sweep JSON, JSON file, CSV file, chart HTML file, the paragraph beside the chart.
Inputs: experiment, preset, variants, quick grid.
"""
from __future__ import annotations

import csv
import html
import io
import json
import re
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from app_server import serve
from gradio_client import Client
from gradio_client.utils import Status

from engine.studies import sweeps
from engine.worker.serve import LOAD_DELAY_ENV
from engine import quality
from engine.errors import PresetError
from ui import experiments
from ui.compare import RUN as COMPARE
from ui.downloads import Downloads
from ui.experiments import EXPERIMENT, RUN
from ui.state import Context, Engines

MESSAGE, PLOT, TABLE, SWEEP, JSON_FILE, CSV_FILE, HTML_FILE, EXPLANATION = map(
    RUN.index, ("message", "plot", "table", "sweep", "json_file", "csv_file", "html_file", "explanation"))


QUANTIZED = ["baseline", "bnb-8bit", "bnb-4bit", "int4"]


def test_the_quantization_experiment_brings_its_own_real_model_where_the_page_offers_it(tmp_path, monkeypatch):
    offering = Engines(offered=["tiny", "smollm2-135m"])
    try:
        ctx = Context(offering, Downloads(tmp_path))
        update = experiments.on_experiment(ctx, "quantization", "tiny", True)
        assert set(update) <= set(EXPERIMENT.names) and update["preset"] == "smollm2-135m"
        assert update["variants"]["value"] == QUANTIZED and update["message"] == ""
        # the empty table already has the quality columns, in their words
        assert update["table"]["headers"][-7:] == ["same top token as baseline", "mean KLD (nats)", "KLD p99 (nats)",
                                                   "KLD max (nats)", "perplexity", "quality note", "reason"]
        on_it = experiments.on_experiment(ctx, "quantization", "smollm2-135m", True)     # there already
        assert "preset" not in on_it and on_it["message"] == "" and on_it["variants"]["value"] == QUANTIZED
        other = experiments.on_experiment(ctx, "batch", "tiny", True)        # an experiment that does not score
        assert "preset" not in other and other["message"] == "" and other["variants"]["value"] == ["sdpa"]
        # offered but unusable here: the current preset stays, and the message says why there are no figures
        real = offering.get

        def broken(name):
            if name == "smollm2-135m":
                raise PresetError("smollm2-135m.yaml: broken for this test")
            return real(name)
        monkeypatch.setattr(offering, "get", broken)
        kept = experiments.on_experiment(ctx, "quantization", "tiny", True)
        assert "preset" not in kept and kept["variants"]["value"] == QUANTIZED
        assert ("on preset tiny: not meaningful: random weights. They need a real model, such as smollm2-135m, "
                "which cannot be used here.") in kept["message"] and 'data-kind="warn"' in kept["message"]
    finally:
        offering.close()
    only_tiny = Engines(offered=["tiny"])
    try:
        update = experiments.on_experiment(Context(only_tiny, Downloads(tmp_path)), "quantization", "tiny", True)
        assert "preset" not in update and update["variants"]["value"] == QUANTIZED
        assert (f"Quality figures (same top token, KLD, perplexity) on preset tiny: {quality.RANDOM_WEIGHTS}. They "
                "need a real model, such as smollm2-135m, which this page does not offer.") in update["message"]
    finally:
        only_tiny.close()


@pytest.fixture(scope="module")
def url():
    """An app of this module's own, not the shared one (conftest.py): its first sweep finds no worker
    loaded yet, and so streams the load and every measurement. Its sdpa load is drawn out by a second:
    a tiny model loads and warms up in less than the status line's refresh period (SWEEP_TICK_S) once
    the fork server has finished its imports, and no update would show it loading."""
    with serve(name="test_experiments_tab", env={LOAD_DELAY_ENV: "sdpa=1"}) as address:
        yield address


def progress(message: str) -> float:
    found = re.search(r'data-progress="([0-9.]+)"', message or "")
    return float(found.group(1)) if found else -1.0


def fetch(url: str, path: str) -> str:
    with urllib.request.urlopen(f"{url}/gradio_api/file={urllib.parse.quote(path)}", timeout=10) as response:
        return response.read().decode()


def test_an_experiment_streams_its_progress_and_ends_with_every_row_and_its_files(url):
    client = Client(url, verbose=False, download_files=False)      # the files as the app serves them
    job = client.submit("lengths", "tiny", ["sdpa"], True, api_name="/experiment")
    updates = [list(update) for update in job]
    final = job.outputs()[-1]
    assert len(final) == len(RUN.api) == 8 and "Done: lengths, 6 of 6" in final[MESSAGE], final[MESSAGE]

    # streamed: the status ticks while the worker loads, and the progress bar only moves forward
    shares = [progress(u[MESSAGE]) for u in updates]
    assert len(updates) >= 3 and shares[0] < 1 and shares[-1] == 1.0
    assert shares == sorted(shares) and all(0 <= s <= 1 for s in shares)
    assert any("loading" in u[MESSAGE] for u in updates[:-1]), "the first sweep shows its worker loading"

    # the sweep: a row per (variant, cell), each with its status, shaped like python -m engine sweep --json
    sweep = final[SWEEP]
    experiment = sweeps.get("lengths")
    cells = experiment.grid(True)
    assert sweep["experiment"] == "lengths" and sweep["quick"] and sweep["preset"]["name"] == "tiny"
    assert sweep["explanation"] == experiment.explanation and not sweep["cancelled"]
    assert sorted((r["variant"], r["cell"]) for r in sweep["results"]) == [("sdpa", c) for c in range(len(cells))]
    for row in sweep["results"]:
        assert row["status"] == "ok", row["reason"]
        assert row["max_new_tokens"] == (cells[row["cell"]][1].max_new_tokens or experiment.max_new_tokens(True))
        assert row["output_tokens"] == row["max_new_tokens"] and row["e2e_s"] > row["ttft_s"] > 0
    outputs = [r for r in sweep["results"] if r["axis"] == "output"]
    assert all(r["predicted_e2e_s"] > 0 for r in outputs)
    assert all(r["repeats"] == sweeps.repeats_for(True) for r in sweep["results"])

    # beside the chart, once done: the paragraph, then what this run showed of each of its claims
    (found,) = sweep["trends"]
    kind = {True: "agrees", False: "contradicts", None: "noise"}[found["agrees"]]
    assert f'data-agrees="{kind}"' in final[EXPLANATION] and found["claim"] == experiment.claims[0].text
    assert html.escape(found["note"], quote=True) in final[EXPLANATION]
    assert html.escape(found["measured"], quote=True) in final[EXPLANATION]
    assert "exp-trend" not in (updates[0][EXPLANATION] or "")        # while it runs: the plain paragraph

    # the table and the chart show the same rows
    assert len(final[TABLE]["data"]) == 6 and "TTFT (ms)" in final[TABLE]["headers"]
    figure = json.loads(final[PLOT]["plot"])
    assert final[PLOT]["type"] == "plotly" and figure["config"]["toImageButtonOptions"]["filename"] == "sweep-lengths"
    measured = [t for t in figure["data"] if t["name"] == "sdpa"]
    assert sorted(len(t["x"]) for t in measured) == [3, 3]          # E2E by new tokens, TTFT by prompt length

    # downloads, served by the app
    assert json.loads(fetch(url, final[JSON_FILE]["value"]["path"])) == sweep
    table = list(csv.DictReader(io.StringIO(fetch(url, final[CSV_FILE]["value"]["path"]))))
    assert len(table) == 6 and {r["variant"] for r in table} == {"sdpa"} and {r["status"] for r in table} == {"ok"}
    assert [float(r["e2e_s"]) for r in table] == [r["e2e_s"] for r in sweep["results"]]
    chart = final[HTML_FILE]["value"]["path"]
    page = fetch(url, chart)
    assert experiment.title in page and "Plotly.newPlot" in page
    # stored once, where the app wrote it (not copied into Gradio's cache), and small: the library is one file
    # beside the charts, which the page loads from there
    assert Path(chart).parent.name.startswith("sidebyside-runs-") and len(page) < 200_000, (chart, len(page))
    assert 'src="plotly.min.js"' in page and "function" in fetch(url, str(Path(chart).with_name("plotly.min.js")))


@pytest.mark.parametrize("preset, variants, expected", [
    ("tiny", [], "no variant selected"),
    ("falcon-7b", ["sdpa"], "not in the local Hugging Face cache"),
], ids=["no variant", "preset that cannot load"])
def test_bad_input_gets_a_message_and_runs_nothing(client, preset, variants, expected):
    result = client.predict("batch", preset, variants, True, api_name="/experiment")
    assert expected in result[MESSAGE] and 'data-kind="error"' in result[MESSAGE]
    assert result[SWEEP] is None


def wait_for_partial(job) -> list:
    """The first update of a sweep with some cells measured, not all."""
    for update in job:
        if 0 < progress(update[MESSAGE]) < 1 and update[TABLE]["data"]:
            return update
    raise AssertionError("no update carried a partly measured sweep")


def test_the_chart_fills_as_cells_finish_on_the_same_device_queue_as_compare(url, client):
    other = Client(url, verbose=False)
    job = client.submit("attention", "tiny", ["baseline", "sdpa"], True, api_name="/experiment")
    partial = wait_for_partial(job)
    assert 0 < len(partial[TABLE]["data"]) < 16
    assert json.loads(partial[PLOT]["plot"])["data"], "the chart had no points while the sweep ran"

    queued = other.submit("Why?", "tiny", ["sdpa"], 4, "fair", api_name="/compare")
    waiting = ""
    for _ in range(100):                   # a Compare run waits for the sweep: one run per device
        messages = [update[COMPARE.index("message")] for update in queued.outputs()]
        waiting = next((m for m in messages if "Waiting for the device" in m), "")
        if waiting:
            break
        time.sleep(0.1)
    assert "Waiting for the device: 1 run ahead of yours" in waiting, queued.outputs()[-1:]
    other.predict(api_name="/experiment_stop")          # another visitor's Stop leaves this sweep alone
    final = job.result()
    assert "Done: attention, 16 of 16" in final[MESSAGE] and not final[SWEEP]["cancelled"]
    assert {r["status"] for r in final[SWEEP]["results"]} == {"ok"}
    compared = queued.result()[COMPARE.index("report")]                      # then the Compare run ran
    assert all(r["status"] == "ok" for r in compared["results"])


def test_stop_ends_this_visitors_sweep_with_the_rows_it_has(client):
    job = client.submit("attention", "tiny", ["baseline", "sdpa"], True, api_name="/experiment")
    wait_for_partial(job)
    client.predict(api_name="/experiment_stop")
    final = job.result()
    assert "Stopped" in final[MESSAGE] and 'data-kind="warn"' in final[MESSAGE], final[MESSAGE]
    rows = final[SWEEP]["results"]
    assert final[SWEEP]["cancelled"] and len(rows) == 16
    assert "ok" in {r["status"] for r in rows} and "cancelled" in {r["status"] for r in rows}
    assert {r["status"] for r in rows} <= {"ok", "cancelled"}
    assert final[JSON_FILE]["value"] and len(final[TABLE]["data"]) == 16
