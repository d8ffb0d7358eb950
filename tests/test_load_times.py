"""Load times kept for the next run's estimate, in a real file; the card's estimate from them."""
import json

from engine import events, load_times
from engine.views.run import Lane, RunView
from ui import render


def loaded(name, load_s, warmup_s):
    return events.Loaded(name, load_s, warmup_s, 0, "cpu", "float32", name)


def test_the_last_load_of_each_variant_is_kept_and_the_file_stays_small(tmp_path, monkeypatch):
    monkeypatch.setenv("SIDEBYSIDE_CACHE", str(tmp_path))
    assert load_times.estimates("tiny", "CPU", ["sdpa"]) == {}                       # nothing kept yet
    load_times.remember("tiny", "CPU", {"sdpa": loaded("sdpa", 2.0, 1.5), "baseline": loaded("baseline", 1.0, 0.25)})
    load_times.remember("tiny", "CPU", {"sdpa": loaded("sdpa", 3.0, 1.0)})            # the newest wins
    assert load_times.estimates("tiny", "CPU", ["sdpa", "baseline", "fa2"]) == {"sdpa": 4.0, "baseline": 1.25}
    assert load_times.estimates("small", "CPU", ["sdpa"]) == {}                      # per preset and device
    monkeypatch.setattr(load_times, "MAX_ENTRIES", 3)
    for i in range(5):
        load_times.remember("tiny", "CPU", {f"v{i}": loaded(f"v{i}", 1.0, 0.0)})
    table = json.loads((tmp_path / "load_times.json").read_text())
    assert list(table) == ["tiny|v2|CPU", "tiny|v3|CPU", "tiny|v4|CPU"]              # the oldest went first
    (tmp_path / "load_times.json").write_text("{not json")
    assert load_times.estimates("tiny", "CPU", ["v4"]) == {}                         # unreadable: no estimate


def test_a_loading_card_shows_the_estimate_or_says_it_has_none():
    view = RunView(["sdpa", "fa2"])
    view.expect({"sdpa": 12.4})
    view.apply([events.Status("sdpa", "loading"), events.Status("fa2", "loading")], now=100.0)
    card = render.card_html(view.lanes["sdpa"], now=103.0)
    assert "step 1 of 3: starting the worker process (3 s of about 12 s, as the last load here took)" in card
    assert 'style="width:33%"' in card                 # the step is further on than the clock's 3/12
    assert 'style="width:95%"' in render.card_html(view.lanes["sdpa"], now=130.0)   # late: never full before the end
    assert "no estimate yet" in render.card_html(view.lanes["fa2"], now=103.0)
    assert render.card_html(Lane("x", "x", stage="loading", load_step=2), now=1.0).count("no estimate yet") == 1
