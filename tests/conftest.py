"""Shared pytest configuration and fixtures."""
import pytest

from engine import presets
from engine.pool import Engine


def pytest_configure(config):
    config.addinivalue_line("markers", "browser: drives the real page in Chromium with Playwright "
                                       "(deselect with -m 'not browser')")


@pytest.fixture(scope="module")
def engine():
    """An engine on the tiny preset, shared by the tests of one module (its workers load once)."""
    with Engine(presets.load("tiny"), request_timeout_s=120) as eng:
        yield eng


@pytest.fixture(scope="module")
def url(request):
    """The real app (`python app.py` on a free port) for one test module; its log is named after the module."""
    from app_server import serve
    with serve(name=request.module.__name__.rsplit(".", 1)[-1]) as address:
        yield address


@pytest.fixture(scope="module")
def client(url):
    """A gradio_client Client of that app."""
    from gradio_client import Client
    return Client(url, verbose=False)
