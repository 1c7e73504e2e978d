"""Debian's chromium, driven by Playwright (the system browser: `playwright install` is never
run), against a real gunicorn server with the tiny demo model.

Screenshots go to $QWEN3VL_TEST_ARTIFACTS (default tests/browser/artifacts/, git-ignored).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import API_KEY

CHROMIUM = os.environ.get("QWEN3VL_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(os.environ.get("QWEN3VL_TEST_ARTIFACTS") or Path(__file__).with_name("artifacts"))


def _require_browser():
    missing = []
    try:
        import playwright  # noqa: F401
    except ImportError:
        missing.append("the playwright package (requirements-dev.txt)")
    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists():
        missing.append(f"chromium at {CHROMIUM} (apt-get install chromium)")
    if missing:
        if os.environ.get("CI"):
            pytest.fail("browser tests need " + " and ".join(missing))  # CI installs both: never skip there
        pytest.skip("browser tests need " + " and ".join(missing))


@pytest.fixture(scope="module")
def play_server(server_factory):
    """One worker and no queue: while it generates, another request gets 503 + Retry-After."""
    with server_factory("--max-queue", "0", api_key=API_KEY, workers=1) as s:
        yield s


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1200, "height": 760},
        )
        context.set_default_timeout(30_000)
        yield context
        context.close()


@pytest.fixture
def page(browser, play_server):
    """A fresh tab on the playground with empty storage and the right key entered."""
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
    page.goto(play_server.url + "/")
    page.evaluate("localStorage.clear()")
    page.reload()
    set_key(page, API_KEY)
    page.wait_for_selector("#model-card h2")
    yield page
    page.close()
    assert not errors, f"JavaScript errors or CSP violations on the page: {errors}"


def set_key(page, key: str) -> None:
    page.fill("#api-key", key)
    page.dispatch_event("#api-key", "change")


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
