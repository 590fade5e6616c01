"""Headless Chromium for the browser tests (tests/test_browser.py: the website; tests/test_jupyterlab.py: JupyterLab).

Playwright for Python (pinned in requirements.txt) drives Debian's Chromium (/usr/bin/chromium, or the program named
by LABKIT_CHROMIUM); Playwright's own browser download is never used. Every browser context made here aborts and
records each request to a host other than 127.0.0.1, so a page that needs the internet fails here as it would for a
reader offline.

Where no Chromium exists the tests that use the `chromium` fixture skip, saying how to install it; where the
environment variable CI or LABKIT_REQUIRE_BROWSER is set (.ci/run sets the second) they fail instead. A test module
gets the fixtures by importing them: ``from browserkit import browser, chromium``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

try:
    from playwright.sync_api import Browser, BrowserContext, sync_playwright
except ImportError:  # the skip or failure below says what to install
    sync_playwright = None

INSTALL_HINT = (
    "install Debian's Chromium with `sudo apt-get install -y --no-install-recommends chromium` (or set "
    "LABKIT_CHROMIUM to a Chrome/Chromium program) and the pinned Playwright with `make setup`; never "
    "`playwright install`"
)
# Flags that work as root in a container with no display, GPU or network.
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]
WAIT_MS = 60_000  # generous: the test machine may be busy


def chromium_executable() -> str | None:
    """The Chromium program to drive: LABKIT_CHROMIUM, else `chromium` or `chromium-browser` on the PATH."""
    for name in [os.environ.get("LABKIT_CHROMIUM"), "chromium", "chromium-browser"]:
        if name and (found := shutil.which(name)):
            return found
    return None


def browser_required() -> bool:
    """In CI (CI or LABKIT_REQUIRE_BROWSER set) a missing browser is a failure, not a skip."""
    return bool(os.environ.get("CI") or os.environ.get("LABKIT_REQUIRE_BROWSER"))


@pytest.fixture(scope="module")
def chromium() -> str:
    problem = None
    executable = chromium_executable()
    if sync_playwright is None:
        problem = "Playwright for Python is not installed"
    elif executable is None:
        problem = "no Chromium found (looked for $LABKIT_CHROMIUM, chromium, chromium-browser)"
    if problem:
        message = f"{problem}: {INSTALL_HINT}"
        if browser_required():
            pytest.fail(f"{message} (required: CI or LABKIT_REQUIRE_BROWSER is set)", pytrace=False)
        pytest.skip(message)
    return executable


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Browser]:
    """One headless Chromium for the module (Playwright gives each launch a fresh temporary profile)."""
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
        yield launched
        launched.close()


def is_local(url: str) -> bool:
    """True for the local server (127.0.0.1), local files and in-page data."""
    parts = urlsplit(url)
    return parts.scheme in ("file", "data", "blob", "about") or parts.hostname == "127.0.0.1"


def offline_context(browser: Browser, **options: object) -> tuple[BrowserContext, list[str]]:
    """A context whose every request to a host other than 127.0.0.1 is aborted; returns it and those URLs."""
    context = browser.new_context(**options)
    context.set_default_timeout(WAIT_MS)
    outside: list[str] = []

    def route(route) -> None:
        if is_local(route.request.url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort("blockedbyclient")

    context.route("**/*", route)
    return context, outside
