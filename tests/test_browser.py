"""The real page in Debian's Chromium, driven by Playwright: run three variants, then Stop a run;
run an experiment in the Experiments tab.

Three page loads in all (light theme, dark for a screenshot, light for the experiment). Screenshots go to
test-artifacts/ (gitignored). Without /usr/bin/chromium these tests skip, except in CI (CI=true),
where they fail.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from app_server import ARTIFACTS

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SELECTED = ["baseline", "sdpa", "bnb-4bit"]
FINAL = ("done", "failed", "unavailable", "cancelled")
VISIBLE_STAGES = ("() => [...document.querySelectorAll('.sbs-card')].filter(e => e.offsetParent)"
                  ".map(e => e.dataset.stage)")


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        message = f"Chromium is not installed at {CHROMIUM} (apt-get install -y chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def set_max_tokens(page, tokens: int) -> None:
    box = page.locator("#sbs-max input[type=number]")
    box.fill(str(tokens))
    box.press("Enter")
    box.blur()


def wait_until_all_final(page, count: int, timeout_s: float) -> list[str]:
    page.wait_for_function(f"""() => {{
        const stages = ({VISIBLE_STAGES})();
        return stages.length === {count} && stages.every(s => {list(FINAL)}.includes(s));
    }}""", timeout=timeout_s * 1000, polling=250)
    return page.evaluate(VISIBLE_STAGES)


def test_run_three_variants_then_stop_a_run(browser, url):
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1366, "height": 900})
    page.goto(url)
    page.wait_for_selector("#sbs-run", timeout=30_000)
    assert "random weights" in page.inner_text(".sbs-banner")
    cores = len(os.sched_getaffinity(0))
    assert f"computes on {max(cores - 1, 1)} of the {cores} CPU cores" in page.inner_text(".sbs-banner")

    page.fill("#sbs-prompt textarea", "Why does FlashAttention save memory?")
    for name in ["baseline", "sdpa", "sdpa-flash", "fa2", "bnb-4bit", "bnb-8bit", "compiled", "no-kv-cache"]:
        box = page.locator(f'#sbs-variants input[name="{name}"]')
        if box.is_checked() != (name in SELECTED) and box.is_enabled():
            box.click(force=name == "fa2")
    assert [n for n in SELECTED if page.locator(f'#sbs-variants input[name="{n}"]').is_checked()] == SELECTED
    set_max_tokens(page, 16)
    assert page.input_value("#sbs-repeats input[type=number]") == "3"        # enough timed requests for a range
    page.click("#sbs-run")
    page.wait_for_function(f"() => ({VISIBLE_STAGES})().length === 3", timeout=10_000)
    page.screenshot(path=str(ARTIFACTS / "browser-loading.png"), full_page=True)
    stages = wait_until_all_final(page, 3, 150)
    assert stages == ["done"] * 3, stages
    page.wait_for_selector("#sbs-message .sbs-msg-ok", timeout=10_000)
    assert "Done: 3 of 3" in page.inner_text("#sbs-message")

    # every column shows its answer and its figures
    for name in SELECTED:
        assert page.input_value(f"#sbs-answer-{name} textarea").strip()
        values = page.locator(f"#sbs-card-{name} .sbs-kpi-value").all_inner_texts()
        assert len(values) == 4 and all(v != "-" for v in values), (name, values)
    # the charts rendered: plotly drew the figures, with one race line per variant
    assert page.locator("[data-testid=plotly] .main-svg").count() >= 4
    page.wait_for_function("() => document.querySelectorAll('#sbs-plot-race .scatterlayer .trace').length === 3",
                           timeout=10_000)
    assert page.locator("#sbs-plot-ttft .barlayer .point").count() == 3
    summary = page.inner_text("#sbs-summary")
    assert all(name in summary for name in SELECTED) and "reference" in summary
    assert "Verdict:" in page.inner_text("#sbs-message")
    assert page.locator("#sbs-json").is_enabled() and page.locator("#sbs-csv").is_enabled()
    page.screenshot(path=str(ARTIFACTS / "browser-done.png"), full_page=True)

    # a second run, stopped mid-way: the page stays usable. The ~4k-token example and 256 new tokens
    # keep the three variants busy for seconds (eager prefill alone takes most of one), so the Stop
    # lands mid-run however fast the CPU decodes the tiny model.
    page.get_by_text("~4k tokens", exact=True).click()
    page.wait_for_function("() => document.querySelector('#sbs-prompt textarea').value.length > 3500",
                           timeout=10_000)
    set_max_tokens(page, 256)
    page.click("#sbs-run")
    page.wait_for_function(f"() => ({VISIBLE_STAGES})().includes('generating')", timeout=60_000, polling=50)
    page.click("#sbs-stop")
    stages = wait_until_all_final(page, 3, 60)
    assert "cancelled" in stages, stages
    page.wait_for_function("() => document.querySelector('#sbs-message').innerText.includes('Stopped')",
                           timeout=10_000)
    page.screenshot(path=str(ARTIFACTS / "browser-stopped.png"), full_page=True)

    set_max_tokens(page, 4)
    page.click("#sbs-run")
    page.wait_for_function(f"() => ({VISIBLE_STAGES})().some(s => !{list(FINAL)}.includes(s))", timeout=10_000,
                           polling=50)
    assert wait_until_all_final(page, 3, 60) == ["done"] * 3
    page.close()


def test_dark_theme_and_phone_width(browser, url):
    page = browser.new_page(viewport={"width": 390, "height": 844})
    page.goto(url + "/?__theme=dark")
    page.wait_for_selector("#sbs-run", timeout=30_000)
    assert page.evaluate("document.body.classList.contains('dark') || "
                         "document.documentElement.classList.contains('dark')")
    # nothing wider than the phone's screen: the page does not scroll sideways
    assert page.evaluate("document.documentElement.scrollWidth") <= 390 + 1
    page.screenshot(path=str(ARTIFACTS / "browser-dark-phone.png"), full_page=True)
    page.set_viewport_size({"width": 1366, "height": 900})
    page.screenshot(path=str(ARTIFACTS / "browser-dark.png"), full_page=True)

    # switching preset updates the page at once (its workers load on its first run)
    page.click("#sbs-preset input")
    page.get_by_role("option", name="(small)").click()
    page.wait_for_function("() => document.querySelector('.sbs-banner').innerText.includes('28M')", timeout=10_000)
    assert page.locator("#sbs-max input[type=number]").get_attribute("max") == "512"
    assert page.locator('#sbs-variants input[name="bnb-8bit"]').is_checked()
    assert "sbs-off-fa2" in page.get_attribute("#sbs-variants", "class")        # greyed: needs CUDA
    page.close()


def test_experiments_tab_runs_a_sweep_and_draws_its_chart(browser, url):
    page = browser.new_page(viewport={"width": 1366, "height": 900})
    page.goto(url)
    page.wait_for_selector("#sbs-run", timeout=30_000)
    page.get_by_role("tab", name="Experiments").click()
    page.wait_for_selector("#exp-run", timeout=10_000)
    assert "random weights" in page.inner_text("#exp-banner")
    page.click("#exp-name input")
    page.get_by_role("option", name="batch: Batching").click()
    page.wait_for_function("() => document.querySelector('#exp-explanation').innerText.includes('Batching')",
                           timeout=10_000)                           # its paragraph replaced attention's
    assert [n for n in ("baseline", "sdpa") if page.locator(f'#exp-variants input[name="{n}"]').is_checked()] == \
        ["sdpa"]                                                     # the experiment's own variants
    assert page.locator("#exp-quick input").is_checked()              # a CPU: the quick grid
    page.click("#exp-run")
    page.wait_for_function("() => document.querySelector('#exp-message').innerText.includes('Done')",
                           timeout=120_000, polling=250)
    assert "3 of 3" in page.inner_text("#exp-message")
    # two panels (throughput, TPOT), one line of three points each
    page.wait_for_function("() => document.querySelectorAll('#exp-plot .scatterlayer .trace').length === 2",
                           timeout=10_000)
    assert page.locator("#exp-plot .scatterlayer .trace .point").count() == 6
    assert page.locator('#exp-plot .modebar-btn[data-title*="png" i]').count() == 1     # the PNG download
    assert page.locator("#exp-json").is_enabled() and page.locator("#exp-html").is_enabled()
    page.screenshot(path=str(ARTIFACTS / "browser-experiments.png"), full_page=True)
    page.close()
