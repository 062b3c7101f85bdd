"""What the demo tests share: Chromium driven by Playwright, servers on 127.0.0.1 that are always stopped, and the
request log that proves a page fetched nothing from outside.

Chromium is the system's (`/usr/bin/chromium`, or $TINYSTORIES_CHROMIUM), never Playwright's own download. Without
it, or without Playwright, a browser test skips saying which is missing, except under
TINYSTORIES_REQUIRE_SIDE_ENVS=1 (as `.ci/run` sets), where it fails.
"""

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest

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
READY_TRIES = 600  # a server gets up to a minute (600 x 0.1 s) to answer, a story up to 2 minutes: bounds, not speeds
STORY_TIMEOUT_MS = 120_000


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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_served(url: str, process: subprocess.Popen | None = None, output: Path | None = None) -> None:
    """Return once `url` answers 200; fail if the process serving it exits first (showing its `output`) or it never
    answers."""
    for _ in range(READY_TRIES):
        if process is not None and process.poll() is not None:
            said = output.read_text(errors="replace")[-3000:] if output is not None else ""
            pytest.fail(f"the server exited with {process.returncode} before serving {url}:\n{said}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    pytest.fail(f"nothing answered at {url}")


@contextmanager
def serving(command: list[str] | str, url: str, **popen) -> Iterator[subprocess.Popen]:
    """Run a server process (in a session of its own) until the block ends, stopping it and every process it started
    then, also when the block fails; yields it once `url` answers. Its output goes to a file, which cannot fill up
    and stall it as a pipe would."""
    with tempfile.NamedTemporaryFile("w+", suffix=".log") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True, **popen)
        try:
            wait_until_served(url, process, Path(output.name))
            yield process
        finally:
            stop_session(process)


def stop_session(process: subprocess.Popen) -> None:
    """SIGTERM to the process's session (a shell and the server it started), then SIGKILL to whatever is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


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
