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
