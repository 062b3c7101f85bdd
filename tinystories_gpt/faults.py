"""Faults from outside the program, each turned into an exception that says what happened, where, and what to do.

- `DiskFull`: a write failed because the disk (or the quota) is full. `removed_on_failure` raises it once the
  partial file is gone, so nothing half-written is ever left to look complete.
- `Stopped`: SIGINT or SIGTERM arrived where a run cannot checkpoint and carry on (preparing the data, the final
  pass). `stop_on_signal` raises it at once, so every `finally` and `with` on the way out runs: scratch folders are
  removed and worker pools end.
- `StopSignal`: in the training loop a signal is a request instead, honoured at the next optimizer step (or within
  a few batches of an evaluation), after a checkpoint.

The command lines print either as one line (`run_command`).
"""

import errno
import gc
import os
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import httpx

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# PyTorch's C++ writer and numpy's tofile report a short write without an errno; a filesystem left with less than
# this free is then taken to be the cause (a full disk is left at 0 bytes, the write having filled it).
NEARLY_FULL_BYTES = 1 << 20
# What a command line reports as bad input (exit status 2): the library's messages name the value and the fix
BAD_INPUT = (ValueError, FileNotFoundError, ConnectionError)


class DiskFull(OSError):
    """A write failed for lack of space; the partial file was removed. `advice` ends the message."""

    def __init__(self, what: str, path: str | Path):
        super().__init__(errno.ENOSPC, f"the disk is full: {what} could not be written to {path}", str(path))
        self.advice = "Free some space, or write to another disk"

    def __str__(self) -> str:
        return f"{self.strerror} (the partial file was removed). {self.advice}."


def is_disk_full(error: BaseException, path: str | Path) -> bool:
    """Whether `error` came from a full disk: an ENOSPC/EDQUOT anywhere in its chain, the system's words for it
    (safetensors and pyarrow keep only those), or a short write on a filesystem with no space left."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in DISK_FULL_ERRNOS:
            return True
        if any(os.strerror(code) in str(seen) for code in DISK_FULL_ERRNOS):
            return True
        seen = seen.__cause__ or seen.__context__
    return isinstance(error, RuntimeError | OSError) and _free_bytes(Path(path)) < NEARLY_FULL_BYTES


def _free_bytes(path: Path) -> int:
    existing = next((folder for folder in (path, *path.parents) if folder.exists()), Path("."))
    return shutil.disk_usage(existing).free


@contextmanager
def removed_on_failure(partial: Path, what: str) -> Iterator[None]:
    """Remove `partial` (a file or a folder) if the block fails; a failure for lack of space becomes DiskFull."""
    try:
        yield
    except BaseException as error:
        full = is_disk_full(error, partial)  # before the clean-up frees the space again
        remove(partial)
        if full:
            raise DiskFull(what, partial) from error
        raise


def remove(path: Path) -> None:
    """Delete a file or a folder, if it is there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


class Stopped(KeyboardInterrupt):
    """A stop signal ended the program where it could not checkpoint first; the message says what was kept.

    A KeyboardInterrupt, so that no `except Exception` on the way out swallows it.
    """

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum

    @property
    def exit_status(self) -> int:
        return 128 + self.signum  # what a shell reports for a process ended by that signal


class _SignalHandlers:
    """Handle SIGINT and SIGTERM in the block, then restore the handlers found (signals reach the main thread only,
    so elsewhere this does nothing)."""

    def __enter__(self):
        self._pid = os.getpid()
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._handle) for signum in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame) -> None:
        if os.getpid() != self._pid:  # a forked worker (datasets' pools) inherited this: end as if never set
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self._received(signum)

    def _received(self, signum: int) -> None:
        raise NotImplementedError


class stop_on_signal(_SignalHandlers):  # noqa: N801 (used like contextlib's lower-case context managers)
    """In the block, SIGINT/SIGTERM raise `Stopped` at once: "stopped by SIGTERM {doing}: {kept}"."""

    def __init__(self, doing: str, kept: str = ""):
        self.doing, self.kept = doing, kept
        self.stopped = None

    def _received(self, signum: int) -> None:
        message = f"stopped by {signal.Signals(signum).name} {self.doing}" + (self.kept and f": {self.kept}")
        self.stopped = Stopped(signum, message)
        raise self.stopped

    def __exit__(self, exc_type, exc, traceback) -> None:
        super().__exit__()
        if self.stopped is not None and exc is not None and exc is not self.stopped:
            # clean-up on the way out raised its own error instead (datasets' pool waits on workers that are gone)
            raise self.stopped from None


class StopSignal(_SignalHandlers):
    """In the block, SIGINT/SIGTERM only set `requested`: the loop checkpoints and stops at the next optimizer step."""

    requested = False

    def _received(self, signum: int) -> None:
        self.requested = True

    def agreed(self, accelerator) -> bool:
        """Whether any process was asked to stop (a collective: every process must call it at the same point)."""
        requests = torch.tensor(float(self.requested), device=accelerator.device)
        return accelerator.reduce(requests, reduction="sum").item() > 0


def run_command(
    prog: str, command: Callable[[], Any], stop: stop_on_signal | None = None, failures: tuple[type, ...] = ()
) -> int:
    """Run a command line's work (under `stop`, if given) and return its exit status: 0, or after one line on stderr,
    2 for bad input, 1 for a run that failed on the way (a full disk, the Hub refusing or unreachable, one of
    `failures`), 128 + N when signal N stopped it."""
    try:
        with stop or nullcontext():
            command()
        return 0
    except BAD_INPUT as error:  # the message names the value and the fix: a traceback would only bury it
        failure = f"{prog}: error: {error}", 2
    except (DiskFull, HfHubHTTPError, httpx.RequestError, *failures) as error:
        failure = f"{prog}: error: {error}", 1
    except Stopped as stopped:
        failure = f"{prog}: {stopped}", stopped.exit_status
    gc.collect()  # the failed work's frames go, and with them its progress bars, which print as they close
    return _report(*failure)


def _report(message: str, status: int) -> int:
    print(" ".join(message.split()), file=sys.stderr)  # one line, whatever a library put in its message
    return status
