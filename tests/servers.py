"""Servers the tests start: each on a free 127.0.0.1 port, in a session of its own, and always stopped (with every
process it started), also when the test fails."""

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

READY_TRIES = 600  # a server gets up to a minute (600 x 0.1 s) to answer: a bound, not a speed


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
