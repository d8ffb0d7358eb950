"""The page read at a glance, in Debian's Chromium: answers stream while a slow variant still loads,
the Run button is on a laptop's first screen, the verdict names the winner and is starred on its
card, and on a phone the verdict and the speedups need no sideways scrolling.

The app runs with $SIDEBYSIDE_LOAD_DELAY drawing out sdpa's load (engine/worker/serve.py), so the
other variants load first. Screenshots go to test-artifacts/.
"""
from __future__ import annotations

import pytest
from app_server import ARTIFACTS, serve
from test_browser import VISIBLE_STAGES, browser, set_max_tokens, wait_until_all_final  # noqa: F401 - fixture

pytestmark = pytest.mark.browser

SLOW = "sdpa"
SELECTED = ["baseline", "sdpa"]


@pytest.fixture(scope="module")
def slow_url():
    with serve(name="test_browser_verdict", env={"SIDEBYSIDE_LOAD_DELAY": f"{SLOW}=5"}) as address:
        yield address


def select(page, names) -> None:
    for box in page.locator("#sbs-variants input[type=checkbox]").all():
        if box.is_enabled() and box.is_checked() != (box.get_attribute("name") in names):
            box.click()


def test_streams_before_the_slow_load_ends_then_names_and_stars_the_winner(browser, slow_url):  # noqa: F811
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1366, "height": 768})
    page.goto(slow_url)
    page.wait_for_selector("#sbs-run", timeout=30_000)
    run_box = page.locator("#sbs-run").bounding_box()
    assert run_box["y"] + run_box["height"] <= 768, run_box          # on the first screen, no scrolling
    page.screenshot(path=str(ARTIFACTS / "verdict-first-screen.png"))

    select(page, SELECTED)
    page.get_by_text("~2k tokens", exact=True).click()                # a long prompt: eager's prefill is slow
    page.wait_for_function("() => document.querySelector('#sbs-prompt textarea').value.length > 1500",
                           timeout=10_000)
    set_max_tokens(page, 12)
    page.click("#sbs-run")
    # an answer streams while the slow variant is still loading
    page.wait_for_function(f"""() => {{
        const slow = document.querySelector('#sbs-card-{SLOW} .sbs-card');
        const text = document.querySelector('#sbs-answer-baseline textarea').value;
        return text.length > 0 && slow && ['loading', 'warming'].includes(slow.dataset.stage);
    }}""", timeout=60_000, polling=50)
    assert page.locator("#sbs-card-baseline .sbs-card").get_attribute("data-stage") in ("warmup", "queued")
    page.screenshot(path=str(ARTIFACTS / "verdict-streaming-while-loading.png"), full_page=True)

    assert wait_until_all_final(page, 2, 240) == ["done"] * 2
    page.wait_for_selector("#sbs-message .sbs-verdict", timeout=10_000)
    verdict = page.inner_text("#sbs-message .sbs-verdict")
    page.screenshot(path=str(ARTIFACTS / "verdict-done.png"), full_page=True)
    # the fastest to the first token, by the report's own comparison, is named and starred
    summary = page.locator("#sbs-summary").inner_text()
    assert "Verdict:" in verdict and "first token: sdpa" in verdict, verdict
    assert "fastest first token" in page.inner_text(f"#sbs-card-{SLOW} .sbs-stars")
    assert "\u2605 " in summary and "fastest first token" in summary

    # on a phone: the verdict and the summary's speedups are on screen without scrolling sideways
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_timeout(500)
    assert page.evaluate("document.documentElement.scrollWidth") <= 391
    box = page.locator("#sbs-message .sbs-verdict").bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= 390, box
    page.locator("#sbs-summary").scroll_into_view_if_needed()
    page.wait_for_timeout(500)
    page.screenshot(path=str(ARTIFACTS / "verdict-phone.png"), full_page=True)
    speeds = page.evaluate("""() => [...document.querySelectorAll('#sbs-summary .cell-wrap')]
        .filter(td => td.getBoundingClientRect().height > 0 && /\\d+\\.\\d\\dx (faster|slower)/.test(td.textContent))
        .map(td => { const r = td.getBoundingClientRect(); return [td.textContent.trim(), r.left, r.right]; })""")
    assert speeds, page.evaluate("""() => [...document.querySelectorAll('#sbs-summary .cell-wrap')].map(
        td => [td.textContent, td.getBoundingClientRect().height])""")
    for text, left, right in speeds:               # sdpa's time per token and first token: the first must fit
        assert left >= 0, (text, left)
    assert speeds[0][2] <= 390, speeds
    page.screenshot(path=str(ARTIFACTS / "verdict-phone.png"), full_page=True)
    page.close()
