"""ui/render.py alone: the page's HTML from lanes, views, engines and sweeps, without gradio."""
import html
import subprocess
import sys
from types import SimpleNamespace

from engine.limits import Limits

from app_server import ROOT

from engine import events
from engine.errors import InputError, PresetError
from engine.views.run import Lane, RunView
from ui import render, sweep_render


def engine_stub(random_weights=True, threads=1, kind="cpu", reasons=None):
    reasons = reasons or {}
    preset = SimpleNamespace(title="Tiny <test>", description=" a tiny model \n", random_weights=random_weights,
                             variants=("sdpa", "baseline", "fa2"))
    choices = [(name, f"{name} label", reasons.get(name)) for name in ("baseline", "sdpa", "fa2")]
    return SimpleNamespace(preset=preset, device=SimpleNamespace(kind=kind, name="cpu"), threads=threads, cores=6,
                           variant_choices=lambda: choices, run_limits=Limits())


def test_the_view_modules_import_neither_gradio_nor_torch():
    # a worker runs app.py again as __mp_main__ (multiprocessing does, for the parent's main script):
    # that must not import gradio, the page or torch into every worker
    code = ("import runpy, sys; runpy.run_path('app.py', run_name='__mp_main__'); "
            "assert not {'gradio', 'torch', 'ui.page'} & set(sys.modules), 'app.py imports gradio for its workers'; "
            "import ui.render, ui.sweep_render, engine.views.run, engine.views.run_charts, engine.views.summary, "
            "engine.views.sweep_charts, engine.views.tables; "
            "assert 'gradio' not in sys.modules and 'torch' not in sys.modules, 'imported'; "
            "import app, ui.page; assert 'torch' not in sys.modules, 'app imports torch'")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_messages_and_refusals_say_what_happened_and_escape_what_came_from_outside():
    assert render.message_html("") == ""
    assert render.message_html("ok <b>", "warn") == '<div class="sbs-msg sbs-msg-warn" data-kind="warn">ok <b></div>'
    assert render.refusal(InputError("the prompt is empty"), "Preset x cannot be used") == \
        "Nothing was run: the prompt is empty."
    assert render.refusal(PresetError("bad <yaml>"), "Preset x cannot be used") == \
        "Preset x cannot be used: bad &lt;yaml&gt;"


def test_the_banner_says_random_weights_and_how_many_cores_a_worker_uses():
    banner = render.banner_html(engine_stub())
    assert "Tiny &lt;test&gt;" in banner and "random weights" in banner and "a tiny model</div>" in banner
    assert "computes on 1 of the 6 CPU cores" in banner              # the engine's count, not the view's
    real = render.banner_html(engine_stub(random_weights=False, kind="cuda"))
    assert "random weights" not in real and "CPU cores" not in real


def test_variant_choices_grey_what_cannot_run_and_keep_the_order_asked_for():
    engine = engine_stub(reasons={"fa2": "needs CUDA"})
    choices, selected, classes = render.variant_choices(engine)
    assert choices[2] == ("fa2: fa2 label (unavailable: needs CUDA)", "fa2")
    assert selected == ["baseline", "sdpa"] and classes == ["sbs-variants", "sbs-off-fa2"]   # catalog order
    assert render.variant_choices(engine, ("fa2", "sdpa", "baseline"))[1] == ["sdpa", "baseline"]


def test_a_card_shows_the_loading_step_then_the_report_figures():
    lane = Lane("sdpa", "PyTorch <SDPA>", stage="loading", load_step=2, since=10.0)
    card = render.card_html(lane, now=14.2)
    assert 'data-stage="loading"' in card and "step 2 of 3: loading the model (4 s; its first load on this server" in card
    assert 'style="width:66%"' in card and "PyTorch &lt;SDPA&gt;" in card
    assert card.count('class="sbs-kpi-value">-<') == 4                      # nothing measured yet
    lane.detail = "starting llama.cpp's server on port 4321 (log: /c/engine-logs/p-llama.cpp.log)"   # the worker's words
    assert "step 2 of 3: starting llama.cpp's server on port 4321 (log: /c/engine-logs/p-llama.cpp.log) (4 s" in \
        html.unescape(render.card_html(lane, now=14.2))
    lane.stage, lane.reused = "queued", True
    assert "kept loaded from an earlier run; waiting for its turn" in render.card_html(lane, 0.0)
    lane.stage, lane.result = "done", {"status": "ok", "ttft_s": 0.0123, "tpot_s": 1.5, "tokens_per_s": 7.25,
                                       "peak_memory_bytes": 3 * 2**30, "output_tokens": 9, "repeats": 3,
                                       "tpot_min_s": 0.0011, "tpot_max_s": 0.0016}
    card = render.card_html(lane, 0.0)
    values = ['12.3 ms', '1.50 s', '7.2', '3.00 GiB']
    assert all(f'class="sbs-kpi-value">{v}<' in card for v in values), card
    assert "9 tokens; figures from the report; medians of 3 requests, TPOT 1.10-1.60 ms" in card


def test_a_variant_stopped_before_its_timed_requests_says_its_answer_box_holds_the_warm_up():
    view = RunView(["sdpa"], "fair")
    view.apply([events.Started("sdpa", 1, 1.0, 5, warmup=True),
                *(events.Token("sdpa", 1, i, 7, f"w{i}", 1.1 + i) for i in range(3))], now=1.0)
    assert "3 tokens of the untimed warm-up: its figures are not counted" in render.card_html(view.lanes["sdpa"], 2.0)
    row = {"variant": "sdpa", "status": "cancelled", "reason": "the run was stopped before this variant's turn",
           "text": "", "output_tokens": None, "ttft_s": None, "tpot_s": None}
    view.apply([events.RunDone({"mode": "fair", "prompt_tokens": 5, "repeats": 1, "results": [row]})], now=3.0)
    card = render.card_html(view.lanes["sdpa"], 3.0)
    assert "no timed request ran: the answer box shows the untimed warm-up&#x27;s 3 tokens" in card, card
    assert card.count('class="sbs-kpi-value">-<') == 4 and "the run was stopped before this variant" in card
    view.apply([events.Started("sdpa", 2, 4.0, 5), events.Token("sdpa", 2, 0, 7, "t", 4.1)], now=4.0)
    assert "warm-up" not in render.card_html(view.lanes["sdpa"], 4.2)        # a timed request replaced it


def test_the_run_message_follows_the_run():
    view = RunView(["baseline", "sdpa"], "race")
    view.apply([events.Status("baseline", "generating"), events.Started("baseline", 1, 1.0, 5)], now=1.0)
    assert "Running in race mode: 0 of 2 variants finished; generating: baseline (3 s)" in \
        render.run_message(view, stopping=False, elapsed_s=3.2)
    view.apply([events.Status("sdpa", "loading", "loading the model on cpu")], now=1.5)
    stopping = render.run_message(view, stopping=True, elapsed_s=3.2)     # what the Stop still waits for
    assert 'data-kind="warn"' in stopping and ("Stopping: waiting for baseline (stops at its next token), sdpa "
                                               "(its loading is ended); a variant still at work 5 s after") in stopping
    view.apply([events.Status("sdpa", "cancelled", "stopped while it loaded")], now=1.6)
    assert "waiting for baseline (stops at its next token);" in render.run_message(view, True, 3.3)
    rows = [{"variant": "baseline", "status": "ok", "reason": None},
            {"variant": "sdpa", "status": "failed", "reason": "out of <memory>"}]
    view.apply([events.RunDone({"mode": "race", "prompt_tokens": 5, "repeats": 1, "results": rows})], now=2.0)
    done = render.run_message(view, stopping=False, elapsed_s=4.0)
    assert 'data-kind="warn"' in done and "Done: 1 of 2 variants answered in 4.0 s; prompt 5 tokens" in done
    assert "<br>sdpa: out of &lt;memory&gt;" in done and "set Repeats" not in done      # one answered
    view.error = "the run stopped: bug"
    assert 'data-kind="error"' in render.run_message(view, stopping=False, elapsed_s=4.0)


def test_the_experiment_paragraph_and_its_standalone_chart_page():
    paragraph = sweep_render.explanation_html("batch", quick=True)
    assert 'data-experiment="batch"' in paragraph and "Quick grid: 3 cells per variant" in paragraph
    assert f"{sweep_render.sweeps.repeats_for(True)} measured requests per cell (the median is kept)," in paragraph
    assert "3 measured requests per cell (the median is kept)" in sweep_render.explanation_html("batch", quick=False)
    sweep = {"title": "Batching <b>", "explanation": "why", "quick": True, "device": {"name": "cpu"},
             "preset": {"title": "Tiny", "random_weights": True}}
    page = sweep_render.sweep_page(sweep, "<div id=chart></div>")
    assert page.startswith("<!doctype html>") and "<title>Batching &lt;b&gt;</title>" in page
    assert "Tiny on cpu; quick grid. Random weights" in page and "<div id=chart></div>" in page
    assert page.endswith("</script></body></html>") and 'id="no-library" hidden' in page   # said where plotly is missing


def test_a_running_sweep_shows_its_progress_and_what_it_loads():
    live = SimpleNamespace(settled=3, total=12, done=False, experiment=SimpleNamespace(name="attention"),
                           stages={"sdpa": "loading", "baseline": "done"})
    text = sweep_render.sweep_message(live, "CPU", stopping=False, elapsed_s=5.0)
    assert "Running attention: 3 of 12 measurements (25%); loading and warming up sdpa (5 s)." in text
    assert 'data-progress="0.2500"' in text and 'data-kind="info"' in text
    assert 'data-kind="warn"' in sweep_render.sweep_message(live, "CPU", stopping=True, elapsed_s=5.0)


def test_the_banner_says_the_mode_and_a_run_where_nothing_answered_is_an_error():
    from engine import events
    from engine.views.run import RunView
    public = dict(vars(engine_stub()), run_limits=Limits.public_defaults())
    banner = render.banner_html(SimpleNamespace(**public))
    assert 'data-mode="public"' in banner and "one queued or running job per visitor" in banner
    assert 'data-mode="private"' in render.banner_html(engine_stub())
    view = RunView(["sdpa", "fa2"])
    view.apply([events.RunDone({"mode": "fair", "prompt_tokens": 5, "results": [
        {"variant": "sdpa", "status": "failed", "reason": "boom"},
        {"variant": "fa2", "status": "unavailable", "reason": "needs CUDA"}]})])
    message = render.run_message(view, stopping=False, elapsed_s=1.0)
    assert 'data-kind="error"' in message and "Done: 0 of 2 variants answered" in message


def test_control_characters_of_an_answer_are_shown_as_symbols_tabs_and_newlines_kept():
    assert render.answer_text('migi"\x04\x0fJZ\x00\tok\nend\x7f') == 'migi"\u2404\u240fJZ\u2400\tok\nend\u2421'


def test_a_card_gives_one_quality_line_from_the_report_or_why_there_is_none():
    from engine import quality
    reference = {"top_ids": [1, 2, 3, 4], "token_logprobs": [-0.1, -0.2, -0.3, -0.4]}
    measured = quality.summarize({"top_ids": [1, 2, 3, 5], "token_logprobs": [-0.1, -0.2, -0.3, -0.9],
                                  "kld": [0.0, 0.0, 0.01, 0.038]}, reference, "baseline")
    entries = {"bnb-4bit": measured, "baseline": dict(measured, status="reference", kld_mean=0.0,
                                                                  perplexity=measured["reference_perplexity"]),
               "sdpa": quality.unmeasured("not meaningful", quality.RANDOM_WEIGHTS), "vllm": None}
    rows = [{"variant": name, "status": "ok", "reason": None, "text": "abcd", "output_tokens": 4, "ttft_s": 0.01,
             "tpot_s": 0.02, "quality": entry} for name, entry in entries.items() if entry is not None]
    rows.append({"variant": "vllm", "status": "ok", "reason": None, "text": "abcd", "output_tokens": 4})
    view = RunView(list(entries))
    view.apply([events.RunDone({"mode": "fair", "prompt_tokens": 5, "repeats": 1, "results": rows})], now=1.0)
    cards = {name: render.card_html(view.lanes[name], 1.0) for name in entries}
    assert ('<div class="sbs-quality" data-quality="measured"><span class="sbs-quality-name">quality</span> '
            '<span class="sbs-quality-line">same top token as baseline on 75% of positions; mean KLD 0.012</span>'
            '</div>') in cards["bnb-4bit"]
    assert 'data-quality="reference"' in cards["baseline"] and \
        "the reference for every variant&#x27;s answers: perplexity 1.28 on its own answer (4 tokens)" in cards["baseline"]
    assert ('data-quality="not meaningful"><span class="sbs-quality-name">quality</span> '
            '<span class="sbs-quality-line">not meaningful: random weights</span>') in cards["sdpa"]
    assert "sbs-quality" not in cards["vllm"]             # a row without an entry: no line at all
    assert cards["bnb-4bit"].index("sbs-kpis") < cards["bnb-4bit"].index("sbs-quality") < \
        cards["bnb-4bit"].index("sbs-note")               # under the figures, above the small print
