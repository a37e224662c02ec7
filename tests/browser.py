"""Headless Chromium for the report tests (Debian's ``chromium`` and ``chromium-driver``, driven by selenium).

``chrome()`` starts it with the flags a closed network needs; ``browser_missing()`` says why it cannot start
(the test then skips, or fails when ``TAV_REQUIRE_BROWSER=1``, as ``.ci/run`` sets after installing it).
"""

from __future__ import annotations

import os
import shutil

CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--mute-audio", "--window-size=1280,900")


def _binary(*names: str) -> str | None:
    return next((p for p in map(shutil.which, names) if p), None)


def browser_missing() -> str | None:
    """``None`` when headless Chromium can be driven, else what is missing."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    if _binary("chromium", "chromium-browser") is None or _binary("chromedriver") is None:
        return "chromium and chromedriver are not installed (apt-get install chromium chromium-driver)"
    return None


def require_browser_or_skip() -> None:
    import pytest

    missing = browser_missing()
    if missing is None:
        return
    if os.environ.get("TAV_REQUIRE_BROWSER") == "1":
        pytest.fail(f"TAV_REQUIRE_BROWSER=1 but {missing}")
    pytest.skip(missing)


def chrome(user_data_dir: str):
    """A headless Chromium WebDriver that keeps the browser console log."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = _binary("chromium", "chromium-browser")
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={user_data_dir}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(_binary("chromedriver")), options=options)
