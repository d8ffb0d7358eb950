"""An engine the dashboard starts itself, on the real page in Debian's Chromium: `app.py --engine llama.cpp`
on the real SmolLM2-135M-Instruct, its card going through the server's start (the status line naming
the server's log) to an answer, beside a local variant; then the app killed outright (SIGKILL: no
handler runs) leaves no server behind. Screenshot: test-artifacts/engine-card.png."""
from __future__ import annotations

import psutil
import pytest
from app_server import ARTIFACTS, kill_if_running, outliving, start
from test_browser import browser, set_max_tokens, wait_until_all_final  # noqa: F401 - fixture
from test_engines import require_llama_server

from engine import launch

pytestmark = pytest.mark.browser

SELECTED = ["baseline", "llama.cpp"]
# every text and stage the engine's card shows, recorded in the page as it changes
RECORD = """() => {
    window.engineCard = [];
    new MutationObserver(() => {
        const card = document.querySelector('.sbs-card[data-variant="llama.cpp"]');
        if (!card) return;
        const seen = card.dataset.stage + ' | ' + card.querySelector('.sbs-detail').innerText;
        if (window.engineCard[window.engineCard.length - 1] !== seen) window.engineCard.push(seen);
    }).observe(document.body, {subtree: true, childList: true, characterData: true, attributes: true});
}"""


def test_the_engine_card_shows_its_server_starting_then_its_answer_and_a_killed_app_leaves_no_server(browser, tmp_path):
    require_llama_server()
    app, url = start("--private", "--preset", "smollm2-135m", "--engine", "llama.cpp", "--threads", "1",
                     name="engine_page", env={"TMPDIR": str(tmp_path)})
    try:
        show_engine_card(browser, url)
        servers = [p for p in psutil.Process(app.pid).children(recursive=True)
                   if p.cmdline()[:1] == [str(launch.program("llama.cpp"))]]
        assert len(servers) == 1, servers
    finally:
        app.kill()                                 # SIGKILL, by its handle: the app cannot stop anything
        app.wait(10)
        kill_if_running(app)
    # its worker ends within moments of the app, and the kernel ends the worker's server with it
    assert not outliving(servers, timeout_s=10), "llama.cpp's server outlived the app"


def show_engine_card(browser, url: str) -> None:
    """Run baseline and llama.cpp on the page; check the engine's card from its start to its answer."""
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1366, "height": 900})
    page.goto(url)
    page.wait_for_selector("#sbs-run", timeout=30_000)
    engine_box = page.locator('#sbs-variants input[name="llama.cpp"]')
    assert engine_box.is_enabled() and engine_box.is_checked()          # an engine of the command line: chosen
    for box in page.locator("#sbs-variants input[type=checkbox]").all():
        if box.is_enabled() and box.is_checked() != (box.get_attribute("name") in SELECTED):
            box.click()
    page.fill("#sbs-prompt textarea", "What is a KV cache? Answer in one sentence.")
    set_max_tokens(page, 12)
    repeats = page.locator("#sbs-repeats input[type=number]")
    repeats.fill("1")
    repeats.press("Enter")
    repeats.blur()
    page.evaluate(RECORD)
    page.click("#sbs-run")
    assert wait_until_all_final(page, len(SELECTED), 240) == ["done", "done"]
    seen = page.evaluate("window.engineCard")
    loading = [text for text in seen if text.startswith("loading")]
    assert any("starting llama.cpp's server on port" in text and "engine-logs/smollm2-135m-llama.cpp.log" in text
               for text in loading), seen
    card = page.locator('.sbs-card[data-variant="llama.cpp"]')
    assert card.locator(".sbs-label").inner_text().startswith(
        "llama.cpp on SmolLM2-135M-Instruct.Q4_1.gguf: the original GGUF file")
    assert "ms" in card.locator(".sbs-kpi-value").first.inner_text()                    # its TTFT
    # what it costs in answers, from its own log-probabilities on the baseline's answer
    assert card.locator(".sbs-quality").get_attribute("data-quality") == "measured"
    assert "llama.cpp's top-20" in card.locator(".sbs-quality-line").inner_text()
    assert page.locator("[id='sbs-answer-llama.cpp'] textarea").input_value().strip()        # its answer
    page.locator(".sbs-card[data-variant='llama.cpp']").scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "engine-card.png"), full_page=False)
