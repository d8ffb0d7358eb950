"""An engine the dashboard starts itself, on the real page in Debian's Chromium: `app.py --engine llama.cpp`
on the real SmolLM2-135M-Instruct, its card going through the server's start (the status line naming
the server's log) to an answer, beside a local variant. Screenshot: test-artifacts/engine-card.png."""
from __future__ import annotations

import pytest
from app_server import ARTIFACTS, serve
from test_browser import browser, set_max_tokens, wait_until_all_final  # noqa: F401 - fixture
from test_engines import require_llama_server

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


@pytest.fixture(scope="module")
def engine_page():
    require_llama_server()
    with serve("--private", "--preset", "smollm2-135m", "--engine", "llama.cpp", "--threads", "1",
               name="engine_page") as address:
        yield address


def test_the_engine_card_shows_its_server_starting_then_its_answer_beside_a_local_variant(browser, engine_page):
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1366, "height": 900})
    page.goto(engine_page)
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
