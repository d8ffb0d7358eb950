"""A newcomer's first look, in Debian's Chromium at a laptop's screen (1366x768) and a phone's (390x844): Run
brings the run into view at once, every ratio says which way it goes in words, the TTFT bars carry their
min-max range, the summary fits a laptop's width (its other columns behind a toggle), the cards stand equally
tall; the Experiments and History tabs read without placeholders.

The shared app (`url`, preset tiny). Screenshots of a first run, a second identical one, the Experiments tab
and the History tab go to test-artifacts/first-look-*.png (gitignored).
"""
from __future__ import annotations

import re

import pytest
from app_server import ARTIFACTS
from test_browser import browser, set_max_tokens, wait_until_all_final  # noqa: F401 - fixture

pytestmark = pytest.mark.browser

LAPTOP, PHONE = {"width": 1366, "height": 768}, {"width": 390, "height": 844}
SELECTED = ["baseline", "sdpa"]
# the status line (where the verdict comes) or a visible column's card, on the screen
RUN_IN_VIEW = """() => [document.querySelector('#sbs-message .sbs-msg'),
                        ...document.querySelectorAll('#sbs-lanes .sbs-card')]
    .filter(e => e && e.offsetParent)
    .some(e => { const r = e.getBoundingClientRect();
                 return r.height > 0 && r.top >= 0 && r.top < window.innerHeight - 40; })"""
# a ratio: "1.12x", "0.98x", "52%" as a memory share; each must be followed by its direction in words
RATIO = re.compile(r"\d+\.\d\dx|\d+(\.\d)?%")
DIRECTED = re.compile(r"(\d+\.\d\dx|\d+(\.\d)?%) (faster|slower|more|less|fewer)")
# each visible summary cell's text and its column's header
CELLS = """(selector) => { const root = document.querySelector(selector);
    const heads = [...root.querySelectorAll('thead th')].map(th => th.innerText.trim());
    return [...root.querySelectorAll('.virtual-row')].map(row => [...row.querySelectorAll('[role=gridcell]')]
        .map((cell, i) => [heads[i], cell.innerText.trim()])); }"""
# how far the table's content reaches beyond its scrolling box (0: no sideways scrolling)
OVERFLOW = """(selector) => { const box = document.querySelector(selector + ' .virtual-table-viewport');
    return box.scrollWidth - box.clientWidth; }"""


def open_page(browser, url, viewport):  # noqa: F811
    page = browser.new_page(viewport=viewport)
    page.goto(url)
    page.wait_for_selector("#sbs-run", timeout=30_000)
    for box in page.locator("#sbs-variants input[type=checkbox]").all():
        if box.is_enabled() and box.is_checked() != (box.get_attribute("name") in SELECTED):
            box.click()
    set_max_tokens(page, 8)
    return page


def run_and_see_it(page) -> None:
    """Click Run; within 2 s the status line or the columns are on the screen; then wait for the verdict."""
    # the status line of an earlier run is marked: this run's is a new one (it may finish within a poll,
    # workers kept loaded from the last run, so no stage in between is waited for)
    page.evaluate("() => document.querySelectorAll('#sbs-message .sbs-msg').forEach(e => e.dataset.before = '1')")
    page.click("#sbs-run")
    page.wait_for_function(RUN_IN_VIEW, timeout=2_000, polling=50)
    page.wait_for_selector("#sbs-message .sbs-msg:not([data-before]) .sbs-verdict", timeout=120_000)
    assert wait_until_all_final(page, len(SELECTED), 30) == ["done"] * len(SELECTED)


def undirected(texts: list[str]) -> list[str]:
    """The texts with a ratio not followed by its direction in words (a range in brackets belongs to the ratio
    before it)."""
    bare = [re.sub(r"\([^)]*\)", "", text) for text in texts]
    return [text for text, plain in zip(texts, bare) if len(RATIO.findall(plain)) != len(DIRECTED.findall(plain))]


def check_summary_and_cards(page) -> None:
    """Every ratio on the cards and in the summary says its direction; the summary's first table holds the
    columns a person compares and fits the laptop's width; the rest waits behind its toggle."""
    versus = page.locator("#sbs-lanes .sbs-versus").all_inner_texts()
    assert versus and not undirected(versus), versus
    rows = page.evaluate(CELLS, "#sbs-summary")
    heads = [head for head, _ in rows[0]]
    assert [row[0][1] for row in rows] == SELECTED                          # the reference first
    assert heads == ["Variant", "Time per token, ms (min-max)", "First token, ms (min-max)", "Peak memory",
                     "Quality of answers", "Verdict"], heads
    compared = [text.split(" · ", 1)[1] for row in rows for _, text in row[1:4] if " · " in text]
    assert any(RATIO.search(text) for text in compared) and not undirected(compared), compared
    assert page.evaluate(OVERFLOW, "#sbs-summary") <= 1                 # no sideways scrolling inside its box
    assert page.evaluate("document.documentElement.scrollWidth") <= LAPTOP["width"] + 1
    assert not page.locator("#sbs-summary-all").is_visible()
    page.click("#sbs-summary-more .label-wrap")
    page.wait_for_selector("#sbs-summary-all table", state="visible", timeout=5_000)
    every = page.evaluate(CELLS, "#sbs-summary-all")
    assert page.evaluate(OVERFLOW, "#sbs-summary-all") > 0         # every column: wider than a laptop, hence the toggle
    shown = [text for row in every for head, text in row if head in ("Speedup (TPOT)", "TTFT vs reference",
                                                                      "Memory vs reference")]
    assert len(every[0]) > 15 and any(RATIO.search(text) for text in shown) and not undirected(shown), shown


def check_other_tabs(page) -> None:
    """The Experiments tab's dropdown shows its whole text; the History tab shows no placeholder table, its
    optional targets empty, and each run's verdict line in the list."""
    page.get_by_role("tab", name="Experiments").click()
    page.wait_for_selector("#exp-plot .main-svg", timeout=20_000)
    cut = page.evaluate("() => { const box = document.querySelector('#exp-name input');"
                        " return [box.value, box.scrollWidth - box.clientWidth]; }")
    assert cut[0].startswith("attention: ") and cut[1] <= 0, cut               # not "...by prompt leng"
    page.screenshot(path=str(ARTIFACTS / "first-look-experiments.png"), full_page=False)

    page.get_by_role("tab", name="History").click()
    page.wait_for_function("() => document.querySelectorAll('#hist-pick input[type=checkbox]').length >= 2",
                           timeout=20_000)
    assert not page.locator("#hist-comparison").is_visible() and not page.locator("#hist-chart").is_visible()
    assert [page.input_value(f"#hist-{name}-target input") for name in ("ttft", "tpot")] == ["", ""]
    rows = page.evaluate(CELLS, "#hist-runs")
    verdicts = [text for row in rows for head, text in row if head == "verdict"]
    assert verdicts and verdicts[0].startswith("no variant beats baseline beyond the noise") or \
        re.match(r"(per token|first token|tokens/s|memory): ", verdicts[0]), verdicts      # the newest: our run
    page.screenshot(path=str(ARTIFACTS / "first-look-history.png"), full_page=False)


def test_a_first_run_is_in_view_and_reads_without_a_glossary(browser, url):  # noqa: F811
    ARTIFACTS.mkdir(exist_ok=True)
    page = open_page(browser, url, LAPTOP)
    # the columns start below a laptop's first screen: without scrolling, Run would change nothing in sight
    assert page.locator("#sbs-lanes").bounding_box()["y"] > LAPTOP["height"]
    assert not page.evaluate(RUN_IN_VIEW)
    run_and_see_it(page)
    page.screenshot(path=str(ARTIFACTS / "first-look-run-1.png"), full_page=False)
    page.screenshot(path=str(ARTIFACTS / "first-look-run-1-page.png"), full_page=True)
    check_summary_and_cards(page)
    # the cards stand equally tall, so that the answers under them start on one line
    lanes = [page.locator(f"#sbs-card-{name}").bounding_box() for name in SELECTED]
    answers = [page.locator(f"#sbs-answer-{name}").bounding_box() for name in SELECTED]
    assert abs(lanes[0]["height"] - lanes[1]["height"]) <= 2 and abs(answers[0]["y"] - answers[1]["y"]) <= 2, \
        (lanes, answers)
    # the TTFT bars are medians: each carries its min-max over the repeats
    page.wait_for_function("() => document.querySelectorAll('#sbs-plot-ttft .barlayer .point').length === 2",
                           timeout=10_000)
    assert page.locator("#sbs-plot-ttft g.errorbar").count() == len(SELECTED)
    assert "whiskers: min-max" in page.inner_text("#sbs-plot-ttft")

    # the same run again, as a person checking whether the answer holds: in view again, from the top of the page
    page.evaluate("window.scrollTo(0, 0)")
    run_and_see_it(page)
    page.screenshot(path=str(ARTIFACTS / "first-look-run-2.png"), full_page=False)
    check_other_tabs(page)
    page.close()

    page = open_page(browser, url, PHONE)
    assert not page.evaluate(RUN_IN_VIEW)
    run_and_see_it(page)
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"] + 1
    page.screenshot(path=str(ARTIFACTS / "first-look-phone.png"), full_page=False)
    page.close()
