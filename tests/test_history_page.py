"""The page's side of the run history: every finished run is saved, and on a public page a visitor sees and
changes only the runs of their own session, none of which outlives it (ui/state.py PageHistory, ui/history.py).

Unit tests on PageHistory and the tab's handlers with stand-in requests, then the real public app driven by two
gradio_client visitors (each Client is a session of its own).
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from gradio_client import Client
from test_history import Q4, quantized, report, row, scored

from engine import quality
from engine.history import History
from engine.views.history_tables import QUALITY_NOTE
from ui import history as tab
from ui.history import COMPARE, LIST
from ui.state import Context, Engines, PageHistory

A, B = SimpleNamespace(session_hash="visitor-a"), SimpleNamespace(session_hash="visitor-b")
MESSAGE, RUNS = LIST.index("message"), LIST.index("runs")


def page_context(history: PageHistory) -> Context:
    return Context(Engines(), downloads=None, history=history)


def listed(ctx, request) -> list[str]:
    return [r[0] for r in tab.listing(ctx, "", "", "", "", [], request)["runs"]["data"]]


def test_a_public_visitor_sees_and_deletes_only_their_own_runs(tmp_path):
    history = PageHistory(History(tmp_path / "h.sqlite"), public=True)
    first = history.save(report(row("baseline", (10, 11, 12))), A)
    second = history.save(report(row("baseline", (9, 10, 11))), A)
    theirs = history.save(report(row("baseline", (8, 9, 10))), B)
    ctx = page_context(history)
    assert listed(ctx, A) == [f"#{second}", f"#{first}"] and listed(ctx, B) == [f"#{theirs}"]
    refused = tab.delete(ctx, [first], "", "", "", "", B)["message"]
    assert f"no run #{first}" in refused and 'data-kind="error"' in refused
    assert f"no run #{first}" in tab.compare(ctx, [first, theirs], 0, request=B)["message"]
    assert len(History(tmp_path / "h.sqlite").list()) == 3          # nothing of A's was touched
    compared = tab.compare(ctx, [first, second], 0, request=A)
    assert 'data-kind="ok"' in compared["message"] and compared["comparison"]["headers"][2] == f"#{second} vs #{first}"
    assert compared["shown"]["visible"]                    # the table and the chart, hidden until the first comparison
    assert compared["comparison"]["data"][0][:2] == ["baseline", "TPOT ms"]
    assert compared["comparison"]["data"][0][2] == "-9.1% within noise"     # 10 ms against 11, ranges overlap
    targeted = tab.compare(ctx, [first, second], 0, 12, None, request=A)["comparison"]["data"]     # TTFT 12 ms
    met = [r for r in targeted if r[1] == "requests met targets"]
    assert met == [["baseline", "requests met targets", "-", "3 of 3", "3 of 3"]]    # TTFT 5 ms in every repeat
    assert "bad" in tab.compare(ctx, [first, second], 0, "bad", None, request=A)["message"]
    assert "Deleted" in tab.delete(ctx, [first], "", "", "", "", A)["message"]
    assert listed(ctx, A) == [f"#{second}"]
    history.forget(A)                                                # A's page closed
    assert listed(ctx, A) == [] and listed(ctx, B) == [f"#{theirs}"]
    nobody = tab.listing(ctx, "", "", "", "", [], SimpleNamespace(session_hash=None))["message"]
    assert "has none" in nobody and 'data-kind="error"' in nobody   # no session: nothing shown, not everything


def test_a_private_page_shows_every_run_and_keeps_them_when_a_page_closes(tmp_path):
    history = PageHistory(History(tmp_path / "h.sqlite"), public=False)
    ours = history.save(report(row("baseline", (10, 11, 12))), A)
    History(tmp_path / "h.sqlite").save(report(row("baseline", (1, 2, 3))), "bench")   # the command line's
    ctx = page_context(history)
    assert len(listed(ctx, B)) == 2 and History(tmp_path / "h.sqlite").get(ours).session is None
    history.forget(A)
    assert len(listed(ctx, None)) == 2


def test_a_kept_public_history_keeps_a_closed_sessions_runs_in_the_deployments_file(tmp_path):
    history = PageHistory.for_page(str(tmp_path / "h.sqlite"), public=True, keep=True)
    kept = history.save(report(row("baseline", (10, 11, 12))), A)
    history.forget(A)
    assert History(tmp_path / "h.sqlite").get(kept).session == "visitor-a"
    temporary = PageHistory.for_page(str(tmp_path / "other.sqlite"), public=True, keep=False)
    temporary.save(report(row("baseline", (10, 11, 12))), A)
    assert temporary.store.path.parent.name.startswith("sidebyside-history-")
    assert not (tmp_path / "other.sqlite").exists()                 # a stranger's run never reaches the file


def test_the_run_list_gives_each_runs_quality_and_a_comparison_its_quality_rows(tmp_path):
    history = PageHistory(History(tmp_path / "h.sqlite"), public=False)
    first = history.save(quantized(created="2026-12-01T10:00:00+0000"), None)
    worse = scored([1, 2, 9, 9], [0.02, 0.04, 0.06, 0.08], (-0.3, -0.3, -0.3, -0.9))
    second = history.save(quantized(q4=worse, created="2026-12-02T10:00:00+0000"), None)
    noise = history.save(report(row("baseline", (1, 2, 3), quality=quality.unmeasured(
        "not meaningful", quality.RANDOM_WEIGHTS)), created="2026-12-03T10:00:00+0000"), None)
    older = history.save(report(row("baseline", (1, 2, 3)), created="2026-12-04T10:00:00+0000"), None)
    ctx = page_context(history)
    runs = tab.listing(ctx, "", "", "", "", [], None)["runs"]
    assert runs["headers"][-1] == "quality (same top token/mean KLD)" and len(tab.RUN_WIDTHS) == len(runs["headers"])
    column = {r[0]: r[-1] for r in runs["data"]}
    assert column[f"#{first}"] == "bnb-8bit 100%/0.001, bnb-4bit 75%/0.04, int4 99%/0.0595"
    assert column[f"#{second}"] == "bnb-8bit 100%/0.001, bnb-4bit 50%/0.05, int4 99%/0.0595"
    assert column[f"#{noise}"] == "not meaningful" and column[f"#{older}"] == "-"
    compared = tab.compare(ctx, [first, second], 0)
    rows = {(r[0], r[1]): r[2:] for r in compared["comparison"]["data"]}
    assert rows["bnb-4bit", "mean KLD"] == ["+25.0% no range", f"{Q4['kld_mean']:.3g}", "0.05"]
    assert rows["bnb-4bit", "same top token"] == ["-33.3% no range", "75%", "50%"]
    assert rows["bnb-4bit", "KLD max"] == ["-20.0% no range", "0.1", "0.08"] and ("int4", "KLD p99") in rows
    assert rows["baseline", "perplexity"] == ["+0.0% no range", "1.28", "1.28"]
    assert 'data-kind="ok"' in compared["message"]                   # the quality note is said, not a warning
    assert QUALITY_NOTE[1:] in compared["message"].replace("&#x27;", "'")
    plain = tab.compare(ctx, [noise, older], 0)["message"]            # no quality rows: no quality note
    assert QUALITY_NOTE[1:] not in plain.replace("&#x27;", "'")
    for words in ("same top token, mean KLD, KLD p99 (or KLD max", "perplexity", "*no range*", "not meaningful"):
        assert words in tab.HOW_MD, words


@pytest.mark.parametrize("args, message", [
    ((["x"], 0), "each of the selected runs must be a whole number"),
    (([1], 0), "select two runs or more to compare"),
    (([1, 2], "ref"), "reference must be a whole number"),
    (("1,2", 0), "selected runs must be a list of run ids"),
])
def test_bad_compare_input_is_one_line(tmp_path, args, message):
    ctx = page_context(PageHistory(History(tmp_path / "h.sqlite")))
    found = tab.compare(ctx, *args)["message"]
    assert message in found and 'data-kind="error"' in found, found


def test_bad_filters_and_imports_are_one_line(tmp_path):
    ctx = page_context(PageHistory(History(tmp_path / "h.sqlite")))
    assert "since: expected a date" in tab.listing(ctx, "", "", "", "yesterday", [])["message"]
    assert "must be text" in tab.listing(ctx, 3, "", "", "", [])["message"]
    (tmp_path / "bad.json").write_text("{}")
    assert "is not a run, bench or sweep report" in tab.import_report(ctx, str(tmp_path / "bad.json"), "", "", "",
                                                                      "")["message"]
    public = page_context(PageHistory(History(tmp_path / "p.sqlite"), public=True))
    assert "Import is off on this public page" in tab.import_report(public, str(tmp_path / "bad.json"), "", "", "",
                                                                    "", A)["message"]


# --- the real public app, two visitors ----------------------------------------------------------

@pytest.fixture(scope="module")
def public_url(public_app):
    """The shared public app (conftest.py), asked to keep its history in a file it must leave untouched."""
    return public_app.url, public_app.asked_history


def test_public_visitors_through_the_api_see_and_change_only_their_own_runs(public_url):
    url, asked_file = public_url
    a, b = Client(url, verbose=False), Client(url, verbose=False)
    for _ in range(2):
        a.predict("Why is decoding memory-bound?", "tiny", ["baseline", "sdpa"], 4, "fair", 2, api_name="/compare")
    mine = a.predict("", "", "", "", [], api_name="/history_list")
    assert "2 runs of your session listed" in mine[MESSAGE], mine[MESSAGE]
    ids = [int(r[0].lstrip("#")) for r in mine[RUNS]["data"]]
    assert "No saved run of your session yet" in b.predict("", "", "", "", [], api_name="/history_list")[MESSAGE]
    refused = b.predict(ids, 0, None, None, api_name="/history_compare")[COMPARE.index("message")]
    assert f"no run #{min(ids)}" in refused or f"no run #{max(ids)}" in refused
    assert f"no run #{ids[0]}" in b.predict([ids[0]], "", "", "", "", api_name="/history_delete")[MESSAGE]
    compared = a.predict(ids, 0, 200, 50, api_name="/history_compare")
    assert "2 runs against" in compared[COMPARE.index("message")]
    rows = compared[COMPARE.index("comparison")]["data"]
    assert {r[1] for r in rows} >= {"TPOT ms", "requests met targets", "goodput req/s"}, rows
    assert len(a.predict("", "", "", "", [], api_name="/history_list")[RUNS]["data"]) == 2
    with pytest.raises(ValueError):                         # a public page has no import endpoint
        a.predict(None, "", "", "", "", api_name="/history_import")
    assert not asked_file.exists()        # without --keep-public-history, strangers' runs never reach the file


def test_the_run_list_gives_each_runs_verdict_line(tmp_path):
    history = PageHistory(History(tmp_path / "h.sqlite"), public=False)
    judged = report(row("baseline", (10, 11, 12)))
    judged["comparison"] = {"text": "per token: sdpa 2.00x faster than baseline (range 1.80-2.20x). What each winner "
                                    "costs: sdpa: baseline's memory within noise."}
    run = history.save(judged, None)
    plain = history.save(report(row("baseline", (10, 11, 12))), None)          # saved without a verdict
    runs = tab.listing(page_context(history), "", "", "", "", [], None)["runs"]
    verdicts = {r[0]: r[runs["headers"].index("verdict")] for r in runs["data"]}
    assert verdicts == {f"#{run}": "per token: sdpa 2.00x faster than baseline (range 1.80-2.20x).", f"#{plain}": "-"}
