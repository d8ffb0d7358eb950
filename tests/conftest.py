"""Shared pytest configuration."""


def pytest_configure(config):
    config.addinivalue_line("markers", "browser: drives the real page in Chromium with Playwright "
                                       "(deselect with -m 'not browser')")
