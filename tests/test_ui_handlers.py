"""The page's handlers called directly, without a browser or a server: they fill named outputs.

Fake engines stand in where a handler would start a run; the preset handlers use the real
registry (making an engine starts no worker).
"""
import inspect
import os
import time
from types import SimpleNamespace

import gradio as gr
import pytest

from engine import events
from engine.variants import CATALOG
from engine.views.run import RunView
from ui import compare, experiments, replay, stream
from ui.downloads import Downloads
from ui.outputs import Outputs, bind
from ui.state import Context, Engines, Phase, Session

REPORT = {"preset": {"name": "tiny"}, "mode": "fair", "prompt_tokens": 5, "repeats": 1, "cancelled": False,
          "results": [{"variant": "baseline", "status": "ok", "reason": None, "text": "ab", "output_tokens": 2,
                       "ttft_s": 0.1, "tpot_s": 0.2, "tokens_per_s": 5.0, "peak_memory_bytes": 100}]}


class FakeRun:
    """A run whose events come in the given batches; after the last, drain waits and returns nothing."""

    def __init__(self, batches, run_id=7):
        self.id, self.batches = run_id, list(batches)

    def drain(self, timeout):
        if self.batches:
            return self.batches.pop(0)
        time.sleep(min(timeout, 0.01))
        return []


class FakeEngine:
    def __init__(self, run, on_start=None):
        self.run, self.on_start, self.cancelled, self.started = run, on_start, [], []
        self.device = SimpleNamespace(name="cpu", kind="cpu")

    def validate(self, spec):
        return spec

    def load_estimates(self, variants):
        return {}

    def start(self, spec):
        self.started.append(spec)
        if self.on_start:
            self.on_start()
        return self.run

    def cancel(self, run_id=None):
        self.cancelled.append(run_id)
        return True


class FakeEngines:
    """Engines that hand out one engine; any other use fails the test."""

    def __init__(self, engine=None):
        self.engine = engine

    def get(self, name):
        assert self.engine is not None, "the handler should not have needed an engine"
        return self.engine

    activate = get

    def cancel(self, name, run_id):
        return self.engine.cancel(run_id)

    def lanes(self):
        return compare.NAMES


@pytest.fixture(scope="module")
def engines():
    engines = Engines()
    yield engines
    engines.close()


def test_outputs_are_named_and_an_api_client_finds_each_by_its_index():
    outputs = Outputs(["message", "button", "plot"], unlisted=["button"])
    assert outputs.api == ("message", "plot") and outputs.index("plot") == 1
    message, button, plot = outputs.values({"message": "hi"})
    assert message == "hi" and button == plot == gr.skip()
    assert Outputs(["message"]).values({"message": "hi"}) == "hi"             # a lone output: the value itself
    with pytest.raises(KeyError, match="plots"):
        outputs.values({"plots": 1})
    # message, report, summary, two files, five plots, then a card and an answer per catalog variant
    assert compare.RUN.api[:3] == ("message", "report", "summary") and len(compare.RUN.api) == 11 + 2 * len(CATALOG)
    assert compare.RUN.api[-1] == "glance"                  # added last: an API client's earlier indices stand
    assert len(compare.SUMMARY_WIDTHS) == len(compare.SUMMARY_HEADERS)         # a width for every column
    assert compare.RUN.index("json_file") == 3                              # the replay button is not listed


def test_bind_gives_gradio_the_inputs_and_closes_the_handler_with_the_page():
    closed = []

    def handler(ctx, prompt, session_state):
        """Doc."""
        try:
            yield {"message": f"{ctx}:{prompt}"}
            yield {"message": "second"}
        finally:
            closed.append(True)

    fn = bind(handler, "ctx", Outputs(["message"]))
    assert list(inspect.signature(fn).parameters) == ["prompt", "session_state"] and fn.__doc__ == "Doc."
    updates = fn("p", None)
    assert next(updates) == "ctx:p"
    updates.close()                                                          # what Gradio does on a closed page
    assert closed == [True]


def test_the_preset_handler_follows_the_preset_in_each_tab(engines, tmp_path):
    ctx = Context(engines, Downloads(tmp_path))
    update = compare.on_preset(ctx, "small")
    assert "28M" in update["banner"] and update["max_new"]["maximum"] == 512
    assert "bnb-8bit" in update["variants"]["value"] and "sbs-off-fa2" in update["variants"]["elem_classes"]
    assert {update[compare.answer(n)]["label"] for n in compare.NAMES} == {"Answer (random weights: noise)"}
    assert set(update) <= set(compare.PRESET.names)
    sweep = experiments.on_preset(ctx, "tiny", "batch")
    assert sweep["variants"]["value"] == ["sdpa"] and sweep["quick"] is True and set(sweep) <= set(
        experiments.PRESET.names)
    refused = compare.on_preset(ctx, "nope")
    assert set(refused) == {"message"} and "Cannot use preset nope" in refused["message"]


def test_prepare_shows_the_selected_columns_waiting(tmp_path):
    session = Session()
    update = compare.prepare(Context(FakeEngines(), Downloads(tmp_path)), ["baseline", "sdpa"], session)
    assert session.phase is Phase.PENDING and "Waiting for the device" in update["message"]
    assert update[compare.column("sdpa")]["visible"] and not update[compare.column("fa2")]["visible"]
    assert 'data-stage="waiting"' in update[compare.card("sdpa")] and compare.card("fa2") not in update
    assert all(name in update for name in compare.PLOTS) and update["json_file"]["value"] is None
    assert experiments.prepare(None, "batch", session)["table"]["data"] == []


def test_stop_on_a_pending_session_keeps_its_run_from_starting(tmp_path):
    ctx, session = Context(FakeEngines(), Downloads(tmp_path)), Session()
    session.prepare()
    assert "will not start" in stream.stop(ctx, session)["message"] and session.phase is Phase.STOP_REQUESTED
    frames = list(compare.compare(ctx, "Why?", "tiny", ["sdpa"], 4, "fair", 1, session))
    assert len(frames) == 1 and "Stopped before the run started" in frames[0]["message"]
    assert session.phase is Phase.IDLE and frames[0]["report"] is None
    assert stream.stop(ctx, session) == {}                                  # idle: nothing to stop


def test_stop_on_a_running_session_cancels_that_run_and_the_next_update_says_so(tmp_path):
    engine = FakeEngine(FakeRun([[events.Status("sdpa", "generating")]] * 3))
    ctx, session = Context(FakeEngines(engine), Downloads(tmp_path)), Session()
    updates = compare.compare(ctx, "Why?", "tiny", ["sdpa"], 4, "fair", 1, session)
    assert "Running in fair mode" in next(updates)["message"] and session.phase is Phase.RUNNING
    assert stream.stop(ctx, session) == {} and engine.cancelled == [7] and session.phase is Phase.STOPPING
    assert "Stopping" in next(updates)["message"]
    updates.close()                                                          # the page went away
    assert engine.cancelled == [7, 7] and session.phase is Phase.IDLE and session.run_id is None


def test_a_stop_while_the_run_was_starting_cancels_it_at_once(tmp_path):
    session = Session()
    session.prepare()
    engine = FakeEngine(FakeRun([[events.RunDone(dict(REPORT, cancelled=True))]]))
    ctx = Context(FakeEngines(engine), Downloads(tmp_path))
    engine.on_start = lambda: stream.stop(ctx, session)                      # Stop, while start() runs
    frames = list(compare.compare(ctx, "Why?", "tiny", ["baseline"], 4, "fair", 1, session))
    assert engine.cancelled == [7] and "Stopped" in frames[-1]["message"] and session.phase is Phase.IDLE


def test_a_finished_run_fills_the_summary_and_writes_its_files(tmp_path):
    run = FakeRun([[events.Started("baseline", 1, 1.0, 5), events.Token("baseline", 1, 0, 3, "a", 1.1)],
                   [events.RunDone(REPORT)]])
    session = Session()
    frames = list(compare.compare(Context(FakeEngines(FakeEngine(run)), Downloads(tmp_path)), "Why?", "tiny",
                                  ["baseline"], 4, "fair", 1, session))
    final = frames[-1]
    assert final["report"] == REPORT and final["summary"][0][:2] == ["baseline", "reference"]
    assert final["summary"][0][compare.SUMMARY_HEADERS.index("Tokens")] == "2"
    assert final[compare.answer("baseline")] == "a" and final["replay"]["interactive"]
    json_path, csv_path = final["json_file"]["value"], final["csv_file"]["value"]
    assert os.path.basename(json_path).startswith("run-7-tiny-") and csv_path.endswith(".csv")
    assert session.view.done and session.phase is Phase.IDLE


def test_the_failure_frame_says_why_and_leaves_the_columns_idle(engines, tmp_path):
    ctx = Context(engines, Downloads(tmp_path))
    (frame,) = compare.compare(ctx, "", "tiny", ["baseline", "sdpa"], 8, "fair", 1, Session())
    assert 'data-kind="error"' in frame["message"] and "Nothing was run: the prompt is empty" in frame["message"]
    assert frame["report"] is None and frame["summary"] is None and not frame["replay"]["interactive"]
    assert 'data-stage="idle"' in frame[compare.card("sdpa")] and "not run" in frame[compare.card("sdpa")]
    assert frame[compare.card("fa2")] == "" and set(frame) <= set(compare.RUN.names)
    (sweep,) = experiments.experiment(ctx, "batch", "tiny", [], True, Session())
    assert "no variant selected" in sweep["message"] and sweep["sweep"] is None


def test_replay_before_a_run_says_to_run_first():
    (update,) = replay.replay(None, Session())
    assert set(update) == {"message"} and "run first" in update["message"]


def test_downloads_are_written_and_old_ones_pruned(tmp_path):
    downloads = Downloads(tmp_path, keep_s=60)
    old = tmp_path / "run-1-tiny-old.json"
    old.write_text("{}")
    os.utime(old, (time.time() - 120, time.time() - 120))
    paths = downloads.save("sweep", 3, "batch-tiny", json="{}", csv="a\n", html="<p>")
    assert [p.rsplit(".", 1)[1] for p in paths] == ["json", "csv", "html"] and not old.exists()
    assert open(paths[1]).read() == "a\n"


def test_a_replay_slows_a_short_run_to_a_watchable_length_and_speeds_up_a_long_one(tmp_path):
    assert replay.replay_speed(0.25) == 0.25 / replay.REPLAY_MIN_S              # 20x slower than it ran
    assert replay.replay_speed(replay.REPLAY_MIN_S) == 1.0 == replay.replay_speed(12.0)
    assert replay.replay_speed(60.0) == 60.0 / replay.REPLAY_MAX_S
    view = RunView(["baseline"])
    view.apply([events.Started("baseline", 1, 10.0, 5), events.Token("baseline", 1, 0, 3, "a", 10.1),
                events.Token("baseline", 1, 1, 3, "b", 10.25), events.RunDone({"mode": "fair", "results": []})])
    session = Session()
    session.view = view
    ctx = Context(FakeEngines(), Downloads(tmp_path))
    first = next(replay.replay(ctx, session))
    assert "of 0.25 s (slowed 20x to be watchable)" in first["message"]
