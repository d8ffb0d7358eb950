"""The quality of each variant's answers on the real page, in Debian's Chromium: the line on each card,
the summary's quality columns (every column, behind the first table's toggle) and the speed-against-quality chart, at a laptop's width (1366 px) and a
phone's (390 px).

On the random-weight `tiny` preset every figure is replaced by "not meaningful: random weights"; on
the real SmolLM2-135M-Instruct (`smollm2-135m`) the figures are measured. Both run on the shared app
(tests/conftest.py `url`): no app of their own. Screenshots go to test-artifacts/quality-*.png.
"""
from __future__ import annotations

import re

import pytest
from app_server import ARTIFACTS
from test_browser import browser, set_max_tokens, wait_until_all_final  # noqa: F401 - fixture

from engine import presets

pytestmark = pytest.mark.browser

SELECTED = ["baseline", "sdpa"]
QUALITY_HEADERS = ["Same top token", "Mean KLD", "KLD p99 (or max)", "Perplexity (reference's)"]
RANDOM = "not meaningful: random weights"
REAL = "smollm2-135m"


def run(page, preset: str, tokens: int) -> None:
    """On an open page: choose `preset`, tick SELECTED alone, run `tokens` new tokens once each and wait for
    the end."""
    if page.input_value("#sbs-preset input") != presets.load(preset).title + f" ({preset})":
        page.click("#sbs-preset input")
        page.get_by_role("option", name=f"({preset})").click()
        # on a fresh machine the first switch to the real model makes it into the model cache (about 20 s)
        page.wait_for_function(f"() => document.querySelector('.sbs-banner').innerText.includes("
                               f"{presets.load(preset).title!r})", timeout=120_000)
    for box in page.locator("#sbs-variants input[type=checkbox]").all():
        if box.is_enabled() and box.is_checked() != (box.get_attribute("name") in SELECTED):
            box.click()
    page.fill("#sbs-prompt textarea", "What is a KV cache? Answer in two sentences.")
    set_max_tokens(page, tokens)
    repeats = page.locator("#sbs-repeats input[type=number]")       # the answers are scored once, whatever
    repeats.fill("1")                                                # the repeats: one timed request is enough
    repeats.press("Enter")
    repeats.blur()
    page.click("#sbs-run")
    page.wait_for_function("() => [...document.querySelectorAll('.sbs-card')].filter(e => e.offsetParent)"
                           ".some(e => !['done', 'failed', 'unavailable', 'cancelled'].includes(e.dataset.stage))",
                           timeout=10_000, polling=50)
    assert wait_until_all_final(page, len(SELECTED), 240) == ["done"] * len(SELECTED)
    page.wait_for_selector("#sbs-message .sbs-msg-ok", timeout=10_000)


def summary_table(page) -> dict[str, dict[str, str]]:
    """The summary's cells by variant, then by header: every column, behind its toggle under the first table."""
    if not page.locator("#sbs-summary-all").is_visible():
        page.click("#sbs-summary-more .label-wrap")
        page.wait_for_selector("#sbs-summary-all [role=gridcell]", state="visible")
    headers, *rows = page.evaluate("""() => [...document.querySelectorAll('#sbs-summary-all [role=row]')]
        .map(row => [...row.querySelectorAll('[role=columnheader], [role=gridcell]')].map(cell => cell.innerText.trim()))""")
    assert all(h in headers for h in QUALITY_HEADERS), headers
    return {row[0]: dict(zip(headers, row)) for row in rows if row}


def show_quality_columns(page, name: str) -> None:
    """Scroll the summary sideways to its quality columns, check they are in view, and take its picture."""
    scrolled = page.evaluate("""() => {
        const head = [...document.querySelectorAll('#sbs-summary-all [role=columnheader]')]
            .find(h => h.innerText.trim() === 'Same top token');
        let box = head.parentElement;
        while (box && !(box.scrollWidth > box.clientWidth + 1 && getComputedStyle(box).overflowX !== 'visible')) {
            box = box.parentElement;
        }
        if (box) box.scrollLeft = head.offsetLeft - 96;      // the variant's column stays in sight when pinned
        return head.getBoundingClientRect().left;
    }""")
    page.wait_for_timeout(300)
    table = page.locator("#sbs-summary-all").bounding_box()
    assert table["x"] <= scrolled < table["x"] + table["width"], (scrolled, table)
    page.locator("#sbs-summary-all").screenshot(path=str(ARTIFACTS / f"quality-{name}-summary.png"))


def phone_view(page, name: str) -> None:
    """At 390 px: nothing scrolls sideways, each card's quality line and the chart are whole on screen."""
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_timeout(500)
    assert page.evaluate("document.documentElement.scrollWidth") <= 391
    for variant in SELECTED:
        box = page.locator(f"#sbs-card-{variant} .sbs-quality").bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= 390, (variant, box)
    page.locator("#sbs-card-sdpa").screenshot(path=str(ARTIFACTS / f"quality-{name}-phone-card.png"))
    page.locator("#sbs-plot-quality").scroll_into_view_if_needed()
    page.wait_for_timeout(300)
    chart = page.locator("#sbs-plot-quality .main-svg").first.bounding_box()
    assert chart and chart["x"] >= 0 and chart["x"] + chart["width"] <= 391, chart
    page.locator("#sbs-plot-quality").screenshot(path=str(ARTIFACTS / f"quality-{name}-phone-chart.png"))
    show_quality_columns(page, f"{name}-phone")


def open_page(browser, url: str):
    """A laptop-sized page of the shared app, loaded."""
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1366, "height": 900})
    page.set_default_timeout(10_000)
    page.goto(url)
    page.wait_for_selector("#sbs-run", timeout=30_000)
    return page


def test_random_weights_say_not_meaningful_on_cards_table_and_chart(browser, url):  # noqa: F811
    page = open_page(browser, url)
    run(page, "tiny", 8)
    for variant in SELECTED:
        assert page.inner_text(f"#sbs-card-{variant} .sbs-quality-line") == RANDOM
    table = summary_table(page)
    for variant in SELECTED:                           # the reason in place of numbers, never a number
        assert [table[variant][h] for h in QUALITY_HEADERS] == [RANDOM, "-", "-", "-"], table[variant]
    page.wait_for_function(f"() => [...document.querySelectorAll('#sbs-plot-quality .annotation-text')]"
                           f".some(t => t.textContent === {RANDOM!r})", timeout=10_000)
    assert page.locator("#sbs-plot-quality .scatterlayer .point").count() == 0
    assert "llama.cpp" in page.inner_text("#sbs-definitions")
    page.screenshot(path=str(ARTIFACTS / "quality-tiny.png"), full_page=True)
    show_quality_columns(page, "tiny")
    phone_view(page, "tiny")
    page.close()


def test_a_real_model_gets_measured_figures_on_cards_table_and_chart(browser, url):  # noqa: F811
    page = open_page(browser, url)
    run(page, REAL, 16)
    line = page.inner_text("#sbs-card-sdpa .sbs-quality-line")
    assert re.fullmatch(r"same top token as baseline on [\d.]+% of positions; mean KLD [0-9.e+-]+", line), line
    assert page.inner_text("#sbs-card-baseline .sbs-quality-line").startswith(
        "the reference for every variant's answers: perplexity ")
    table = summary_table(page)
    assert [table["baseline"][h] for h in QUALITY_HEADERS][:3] == ["reference"] * 3
    sdpa = [table["sdpa"][h] for h in QUALITY_HEADERS]
    assert re.fullmatch(r"\d+(\.\d)?%", sdpa[0]) and float(sdpa[1]) >= 0, sdpa
    assert re.fullmatch(r"[0-9.e+-]+ \((p99|max)\)", sdpa[2]), sdpa
    assert re.fullmatch(r"[0-9.]+ \(baseline [0-9.]+\)", sdpa[3]), sdpa
    # one marker per variant, each named on the chart
    page.wait_for_function("() => document.querySelectorAll('#sbs-plot-quality .scatterlayer .point').length === "
                           f"{len(SELECTED)}", timeout=10_000)
    assert sorted(page.locator("#sbs-plot-quality .scatterlayer .textpoint").all_text_contents()) == sorted(SELECTED)
    page.screenshot(path=str(ARTIFACTS / "quality-real.png"), full_page=True)
    show_quality_columns(page, "real")
    phone_view(page, "real")
    page.close()
