#!/usr/bin/env python3
"""The page's default run as a person meets it: `python app.py` on its default preset, in Debian's
Chromium (Playwright), Run pressed twice; how long each took from the click to the verdict.

    python benchmarks/page_run.py [--shots DIR] [--json PATH]

The first run loads the workers; the second finds them loaded. The browser and the page's drawing
share the machine with the workers, as they do for a person running it on their own computer, so
these times are a little longer than benchmarks/default_run.py's (the engine alone). Saves a
screenshot of the page after each run in --shots (default test-artifacts/).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shots", default=str(ROOT / "test-artifacts"))
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    from app import DEFAULT_PRESET
    from app_server import start, terminate
    shots = Path(args.shots)
    shots.mkdir(parents=True, exist_ok=True)
    process, url = start("--preset", DEFAULT_PRESET, name="page_run")
    runs = []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium",
                                                 args=["--headless", "--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1366, "height": 900})
            page.goto(url)
            page.wait_for_selector("#sbs-run")
            for kind in ("first", "second"):
                started = time.perf_counter()
                page.click("#sbs-run")
                page.wait_for_function("() => !document.querySelector('#sbs-message .sbs-msg-ok')", timeout=60_000)
                page.wait_for_selector("#sbs-message .sbs-msg-ok", timeout=600_000)
                seconds = time.perf_counter() - started
                page.wait_for_timeout(1000)
                page.screenshot(path=str(shots / f"page-run-{kind}.png"), full_page=True)
                runs.append({"run": kind, "seconds": seconds, "message": page.inner_text("#sbs-message")})
                print(f"{kind} run: {seconds:.1f} s from the click to the verdict")
            browser.close()
    finally:
        terminate(process)
    print(runs[-1]["message"])
    if args.json:
        Path(args.json).write_text(json.dumps({"preset": DEFAULT_PRESET, "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
