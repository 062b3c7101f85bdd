"""What a command line prints and returns when its work ends: 0, or one line on stderr and a status.

0     done
1     a run that failed on the way: a diverged loss, a full disk, the Hub refusing or unreachable
2     bad input: the message names the value and the fix (a folder that cannot be written among them)
128+N stopped by signal N (130 for SIGINT, 143 for SIGTERM) where it could not checkpoint first; the line says
      what was kept. Training stopped by a signal in its loop checkpoints first and exits 0.
"""

import errno
import gc
import sys
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import httpx

from ..files import DiskFull, is_disk_full
from ..signals import Stopped, stop_on_signal

# What a command line reports as bad input (exit status 2): the library's messages name the value and the fix
BAD_INPUT = (ValueError, FileNotFoundError, ConnectionError)
NOT_WRITABLE = {errno.EACCES: "permission denied", errno.EPERM: "not permitted", errno.EROFS: "a read-only filesystem"}
WHERE_TO_WRITE = "--output_dir for the run, --cache_dir for token files, HF_HOME for the Hugging Face cache"


def run_command(
    prog: str, command: Callable[[], Any], stop: stop_on_signal | None = None, failures: tuple[type, ...] = ()
) -> int:
    """Run a command line's work (under `stop`, if given) and return its exit status (see the module docstring);
    `failures` are the command's own exceptions for a run that failed on the way."""
    try:
        with stop or nullcontext():
            command()
        return 0
    except BAD_INPUT as error:  # the message names the value and the fix: a traceback would only bury it
        failure = f"{prog}: error: {error}", 2
    except (DiskFull, HfHubHTTPError, httpx.RequestError, *failures) as error:
        failure = f"{prog}: error: {error}", 1
    except OSError as error:  # a folder the run cannot write, or a disk filled outside our writers (datasets' cache)
        described = cannot_write(error)
        if described is None:
            raise
        failure = f"{prog}: error: {described}", 2 if error.errno in NOT_WRITABLE else 1
    except Stopped as stopped:
        failure = f"{prog}: {stopped}", stopped.exit_status
    gc.collect()  # the failed work's frames go, and with them its progress bars, which print as they close
    return report(*failure)


def cannot_write(error: OSError) -> str | None:
    """The one line for an OSError that says a path cannot be written, or None for any other."""
    path = error.filename or "a file"
    if error.errno in NOT_WRITABLE:
        return (
            f"cannot write {path}: {NOT_WRITABLE[error.errno]}. Choose a place you can write ({WHERE_TO_WRITE}), "
            "or fix its permissions"
        )
    if is_disk_full(error, error.filename or "."):  # pyarrow's errors keep only the system's words for it
        return f"the disk is full: {path} could not be written. Free some space, or write elsewhere ({WHERE_TO_WRITE})"
    return None


def report(message: str, status: int) -> int:
    """Print `message` as one line on stderr, whatever a library put in it; returns `status`."""
    print(" ".join(message.split()), file=sys.stderr)
    return status
