"""The Experiments tab's chart in Debian's Chromium at a phone's width (390x844) and a laptop's
(1366x768): no two of its subplot titles, axis titles or legend overlap, before a sweep and after one.

Screenshots go to test-artifacts/ (gitignored). Without /usr/bin/chromium these tests skip, except in CI.
"""
from __future__ import annotations

import itertools

import pytest
from app_server import ARTIFACTS
from test_browser import browser  # noqa: F401  (the module's Chromium, a fixture)

pytestmark = pytest.mark.browser

VIEWPORTS = {"laptop": {"width": 1366, "height": 768}, "phone": {"width": 390, "height": 844}}
# the boxes of the chart's texts: subplot titles (and the empty chart's note), x axis titles, the legend
BOXES = """() => {
    const root = document.querySelector('#exp-plot');
    const boxes = (selector, kind) => [...root.querySelectorAll(selector)].map(e => {
        const r = e.getBoundingClientRect();
        return {kind, text: e.textContent, left: r.left, top: r.top, right: r.right, bottom: r.bottom};
    }).filter(b => b.right > b.left && b.bottom > b.top);
    const svg = root.querySelector('.main-svg').getBoundingClientRect();
    return {texts: [...boxes('g.annotation', 'title'), ...boxes('g.xtitle, g.x2title, g.x3title', 'axis'),
                    ...boxes('g.legend', 'legend')],
            svg: {left: svg.left, right: svg.right}, page: document.documentElement.scrollWidth};
}"""


def overlaps(a: dict, b: dict) -> bool:
    return a["left"] < b["right"] and b["left"] < a["right"] and a["top"] < b["bottom"] and b["top"] < a["bottom"]


def check_chart(page, width: int, titles: int) -> dict:
    """Assert that the chart's texts are all inside it and that no two of them overlap."""
    found = page.evaluate(BOXES)
    texts = found["texts"]
    assert sum(t["kind"] == "title" for t in texts) >= titles, texts
    clashes = [(a["text"], b["text"]) for a, b in itertools.combinations(texts, 2) if overlaps(a, b)]
    assert not clashes, clashes
    for text in texts:                                        # none cut off at the chart's sides
        assert found["svg"]["left"] - 1 <= text["left"] and text["right"] <= found["svg"]["right"] + 1, text
    assert found["page"] <= width + 1                         # the page does not scroll sideways
    return found


def open_experiments(browser, url, viewport):  # noqa: F811
    page = browser.new_page(viewport=viewport)
    page.goto(url)
    page.wait_for_selector("#sbs-run", timeout=30_000)
    page.get_by_role("tab", name="Experiments").click()
    page.wait_for_selector("#exp-plot .main-svg", timeout=20_000)
    page.wait_for_function("() => document.querySelectorAll('#exp-plot g.annotation').length >= 3", timeout=10_000)
    return page


def test_the_attention_chart_titles_do_not_overlap_at_a_phone_or_a_laptop_width(browser, url):  # noqa: F811
    ARTIFACTS.mkdir(exist_ok=True)
    for name, viewport in VIEWPORTS.items():                 # before any sweep: the empty panels and their note
        page = open_experiments(browser, url, viewport)
        check_chart(page, viewport["width"], titles=3)
        page.screenshot(path=str(ARTIFACTS / f"experiments-empty-{name}.png"), full_page=True)
        page.close()

    page = open_experiments(browser, url, VIEWPORTS["laptop"])
    page.click("#exp-run")                                   # attention, its own variants, the quick grid
    page.wait_for_function("() => document.querySelector('#exp-message').innerText.includes('Done')",
                           timeout=240_000, polling=500)
    page.wait_for_function("() => document.querySelectorAll('#exp-plot .scatterlayer .trace').length > 0",
                           timeout=10_000)
    assert page.locator("#exp-explanation .exp-trend").count() == 1     # the run's note beside the chart
    for name in ("laptop", "phone"):
        viewport = VIEWPORTS[name]
        page.set_viewport_size(viewport)
        page.wait_for_function(f"() => Math.abs(document.querySelector('#exp-plot .main-svg')"
                               f".getBoundingClientRect().width - document.querySelector('#exp-plot')"
                               f".getBoundingClientRect().width) < 40 && document.querySelector('#exp-plot')"
                               f".getBoundingClientRect().width <= {viewport['width']}", timeout=10_000)
        page.wait_for_timeout(500)                           # plotly redraws after the resize
        check_chart(page, viewport["width"], titles=3)
        page.locator("#exp-chart-row").screenshot(path=str(ARTIFACTS / f"experiments-done-{name}.png"))
        page.screenshot(path=str(ARTIFACTS / f"experiments-done-{name}-page.png"), full_page=True)
    page.close()
