"""The History tab in Debian's Chromium: two runs on the Compare tab are saved, the History tab lists them,
both are selected and compared, and the comparison's table and chart appear; at a laptop's width
(1366x768) and a phone's (390x844), with no sideways scrolling.

The app saves to a history file of this test (`--history`). Screenshots go to test-artifacts/ (gitignored).
"""
from __future__ import annotations

import pytest
from app_server import ARTIFACTS, serve
from test_browser import browser, set_max_tokens, wait_until_all_final  # noqa: F401  (browser: a fixture)

from engine.history import History

pytestmark = pytest.mark.browser

SELECTED = ["baseline", "sdpa"]
LAPTOP, PHONE = {"width": 1366, "height": 768}, {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    path = tmp_path_factory.mktemp("browser-history") / "history.sqlite"
    with serve("--history", str(path), name="test_browser_history") as address:
        yield address, path


def run_once(page) -> None:
    page.click("#sbs-run")
    page.wait_for_function("() => !document.querySelector('#sbs-message').innerText.includes('Done')",
                           timeout=10_000, polling=50)
    assert wait_until_all_final(page, len(SELECTED), 120) == ["done"] * len(SELECTED)
    page.wait_for_function("() => document.querySelector('#sbs-message').innerText.includes('Done')",
                           timeout=10_000)


def test_two_runs_are_saved_listed_and_compared_in_the_history_tab(browser, app):  # noqa: F811
    url, path = app
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport=LAPTOP)
    page.goto(url)
    page.wait_for_selector("#sbs-run", timeout=30_000)
    for name in ["baseline", "sdpa", "sdpa-flash", "fa2", "bnb-4bit", "bnb-8bit", "compiled", "no-kv-cache"]:
        box = page.locator(f'#sbs-variants input[name="{name}"]')
        if box.is_checked() != (name in SELECTED) and box.is_enabled():
            box.click()
    set_max_tokens(page, 6)
    run_once(page)
    run_once(page)
    assert [e.kind for e in History(path).list()] == ["run", "run"]        # both saved, by the page

    page.get_by_role("tab", name="History").click()
    page.wait_for_function("() => document.querySelectorAll('#hist-pick input[type=checkbox]').length === 2",
                           timeout=20_000)
    assert "2 runs listed" in page.inner_text("#hist-message")
    runs = page.inner_text("#hist-runs")
    assert "#1" in runs and "#2" in runs and "tiny" in runs and "baseline, sdpa" in runs
    for box in page.locator("#hist-pick input[type=checkbox]").all():
        box.check()
    page.click("#hist-compare")
    page.wait_for_function("() => document.querySelector('#hist-message').innerText.includes('runs against')",
                           timeout=20_000)
    assert "2 runs against #1 (reference)" in page.inner_text("#hist-message")
    table = page.inner_text("#hist-comparison")
    assert "#2 vs #1" in table and "TPOT ms" in table and "%" in table
    page.wait_for_function("() => document.querySelectorAll('#hist-chart .barlayer .trace').length >= 8",
                           timeout=20_000)         # 4 panels x 2 runs
    titles = page.evaluate("() => [...document.querySelectorAll('#hist-chart g.annotation')].map(e => e.textContent)")
    assert {"TTFT (ms)", "TPOT (ms)", "tokens/s", "peak memory (MiB)"} <= set(titles), titles
    page.screenshot(path=str(ARTIFACTS / "history-laptop.png"), full_page=True)
    assert page.evaluate("document.documentElement.scrollWidth") <= LAPTOP["width"] + 1

    page.set_viewport_size(PHONE)
    page.wait_for_timeout(800)                               # plotly redraws after the resize
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"] + 1
    page.screenshot(path=str(ARTIFACTS / "history-phone.png"), full_page=True)

    page.set_viewport_size(LAPTOP)
    page.locator("#hist-pick input[type=checkbox]").first.uncheck()       # #2, the newest: only #1 selected
    page.click("#hist-delete")
    page.wait_for_function("() => document.querySelector('#hist-message').innerText.includes('Deleted #1')",
                           timeout=20_000)
    assert [e.id for e in History(path).list()] == [2]
    assert page.locator("#hist-pick input[type=checkbox]").count() == 1
    page.close()
