"""What the demo tests share: Chromium driven by Playwright, a static server on 127.0.0.1 (servers.py), and the
request log that proves a page fetched nothing from outside.

Chromium is the system's (`/usr/bin/chromium`, or $TINYSTORIES_CHROMIUM), never Playwright's own download. Without
it, or without Playwright, a browser test skips saying which is missing, except under
TINYSTORIES_REQUIRE_SIDE_ENVS=1 (as `.ci/run` sets), where it fails.
"""

import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from servers import free_port, serving

CHROMIUM = Path(os.environ.get("TINYSTORIES_CHROMIUM", "/usr/bin/chromium"))
# headless, and quiet: no background requests of Chromium's own (updates, sync, safe browsing) in the request log
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
STORY_TIMEOUT_MS = 120_000  # a story gets up to 2 minutes: a bound, not a speed


def missing(what: str) -> None:
    """Skip, naming what is missing, or fail under TINYSTORIES_REQUIRE_SIDE_ENVS=1."""
    if os.environ.get("TINYSTORIES_REQUIRE_SIDE_ENVS") == "1":
        pytest.fail(what)
    pytest.skip(what)


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the session (each test opens its own page), closed however the tests end."""
    if not CHROMIUM.is_file():
        missing(f"Chromium is not installed at {CHROMIUM}: apt-get install chromium (or set TINYSTORIES_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ModuleNotFoundError:
        missing("Playwright for Python is not installed: pip install -e '.[dev]'")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


class RequestLog(list):
    """Every URL a page requested, from its first navigation on."""

    def outside(self) -> list[str]:
        """The requests that went anywhere but 127.0.0.1 (data: and blob: URLs stay in the page)."""
        return [
            url
            for url in self
            if urlsplit(url).scheme not in ("data", "blob") and urlsplit(url).hostname != "127.0.0.1"
        ]


@contextmanager
def page_with_log(browser) -> Iterator[tuple[object, RequestLog]]:
    """A fresh page (its own context: no cache or storage shared with another test) and its request log."""
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    try:
        page = context.new_page()
        log = RequestLog()
        page.on("request", lambda request: log.append(request.url))
        yield page, log
    finally:
        context.close()


@contextmanager
def static_server(folder: Path) -> Iterator[str]:
    """`python -m http.server --bind 127.0.0.1` serving `folder`, as a visitor's static host would; yields its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    command = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(folder)]
    with serving(command, url):
        yield url


def visible_text(page) -> str:
    """The page's text as a visitor reads it, whitespace collapsed."""
    return re.sub(r"\s+", " ", page.inner_text("body"))
