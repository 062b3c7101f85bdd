"""Stopping cleanly on SIGINT and SIGTERM, in the two ways a run can honour them.

- `stop_on_signal`: where a run cannot checkpoint and carry on (preparing the data, the final pass, a
  conversion), a signal raises `Stopped` at once, so every `finally` and `with` on the way out runs: scratch
  folders are removed and worker pools end. Its message says what was kept.
- `StopSignal`: in the training loop a signal is a request instead, honoured at the next optimizer step (or
  within a few batches of an evaluation), after a checkpoint.

A signal that cannot be handled (kill -9) ends the process at once; `workers_die_with_this_process` makes the
worker processes it forked (datasets' pools) end with it instead of living on as orphans.
"""

import ctypes
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
PR_SET_PDEATHSIG = 1  # from Linux's <sys/prctl.h>: the signal the kernel sends a process when its parent dies
_forking = {"active": False, "parent": None, "hooked": False}  # read in the child, which inherits a copy


@contextmanager
def workers_die_with_this_process() -> Iterator[None]:
    """In the block, every process this one forks is killed by the kernel when this one dies, however it dies.

    Linux's PR_SET_PDEATHSIG, set in each child right after the fork (os.register_at_fork): datasets' worker pools
    and their Manager are forked, and without it a kill -9 of the run leaves them running for good. Elsewhere than
    Linux this does nothing.
    """
    if not _forking["hooked"]:
        os.register_at_fork(before=_before_fork, after_in_child=_die_with_parent)
        _forking["hooked"] = True
    _forking["active"] = True
    try:
        yield
    finally:
        _forking["active"] = False


def _before_fork() -> None:
    _forking["parent"] = os.getpid()


def _die_with_parent() -> None:
    if not _forking["active"]:
        return
    prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)
    if prctl is None:  # not Linux
        return
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != _forking["parent"]:  # the parent died between the fork and the prctl
        os._exit(1)


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
