"""Stopping cleanly on SIGINT and SIGTERM, in the two ways a run can honour them.

- `stop_on_signal`: where a run cannot checkpoint and carry on (preparing the data, the final pass, a
  conversion), a signal raises `Stopped` at once, so every `finally` and `with` on the way out runs: scratch
  folders are removed and worker pools end. Its message says what was kept.
- `StopSignal`: in the training loop a signal is a request instead, honoured at the next optimizer step (or
  within a few batches of an evaluation), after a checkpoint.
"""

import os
import signal
import threading

import torch

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


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
