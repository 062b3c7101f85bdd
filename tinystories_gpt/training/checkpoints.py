"""The output folder and the resumable state in it: what a run owns, its checkpoints, and how they are replaced.

    output_dir/
      .run.lock             held by the run writing here (host, PID, start time inside); a second run is refused
      checkpoints/step_N/   accelerator.save_state (model, optimizer, RNGs, RunState) + config.json + tokenizer/
                            + manifest.json (every file, its size and SHA-256, written last)
      checkpoints/.step_N.tmp    a checkpoint being written; renamed to step_N once complete
      checkpoints/.step_N.diverged   the weights of a step whose loss was not finite, set aside (never deleted)
      checkpoints/.step_N.damaged    a checkpoint that failed verification on --resume, set aside (never deleted)
      best/, metrics.jsonl, ...  see RUN_FILES

A checkpoint is only ever taken at an optimizer-step boundary, so `--resume` continues the run bit for bit; it is
verified before use (`files.folder_damage`), and a damaged one is skipped for the one before.
"""

import json
import math
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from filelock import FileLock, Timeout

from ..files import DiskFull, folder_damage, remove, replacing_folder, write_manifest
from .arguments import TrainingArguments

# What a run writes into output_dir, and what each holds
RUN_FILES = {
    "best": "the best model, Hub-ready: AutoModelForCausalLM.from_pretrained(this folder)",
    "checkpoints": "resumable training state (--resume)",
    "metrics.jsonl": "train/validation loss, lr, tokens/s at every evaluation",
    "final_metrics.json": "loss, perplexity, bits per byte of best/ over the whole validation split",
    "loss_curve.png": "train and validation loss against step",
    "samples.md": "sample stories at every evaluation",
    "logs": "tracker logs (tensorboard, ...)",
}
LOCK_FILE = ".run.lock"


class RunState:
    """What a resumed run needs beyond model, optimizer and RNGs; Accelerate checkpoints it with them."""

    def __init__(self, sampler: Any):
        self.step = 0
        self.tokens_seen = 0
        self.best_val_loss = math.inf
        self.chosen_max_iters = None  # what a --max_time run chose, once it has (its latest plan)
        self.plans: list[list[int]] = []  # every [step, max_iters] a --max_time run planned, in order
        self.budget_spent = 0.0  # seconds of --max_time spent by the processes before this one
        self.shape_choice: dict | None = None  # what --small_shape measured and chose (training/shape.py)
        self.sampler = sampler

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "best_val_loss": self.best_val_loss,
            "chosen_max_iters": self.chosen_max_iters,
            "plans": self.plans,
            "budget_spent": self.budget_spent,
            "shape_choice": self.shape_choice,
            "sampler": self.sampler.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]
        self.tokens_seen = state["tokens_seen"]
        self.best_val_loss = state["best_val_loss"]
        self.chosen_max_iters = state["chosen_max_iters"]
        self.plans = state["plans"]
        self.budget_spent = state["budget_spent"]
        self.shape_choice = state.get("shape_choice")  # absent from checkpoints older than --small_shape
        self.sampler.load_state_dict(state["sampler"])


def prepare_output_dir(args: TrainingArguments, is_main_process: bool) -> None:
    """Refuse to mix two runs in one folder; with overwrite_output_dir, clear only this project's files.

    With resume, the main process makes sure a usable checkpoint is there, setting damaged newer ones aside.
    """
    output_dir = Path(args.output_dir)
    existing = [name for name in RUN_FILES if (output_dir / name).exists()]
    if args.resume:
        found = complete_checkpoints(args.checkpoints_dir)
        if is_main_process and usable_checkpoint(args.checkpoints_dir) is None:
            why = f"the {len(found)} found were damaged (see above)" if found else "none was written yet"
            raise FileNotFoundError(
                f"--resume found no usable checkpoint in {args.checkpoints_dir}: {why}. Start the run again with "
                f"--overwrite_output_dir (this replaces {', '.join(existing) or 'nothing'}), or choose another "
                "--output_dir."
            )
        return
    if existing and not args.overwrite_output_dir:
        choices = (
            "Pass --resume to continue it, --overwrite_output_dir to replace it,"
            if newest_checkpoint(args.checkpoints_dir)
            else "It has no checkpoint to resume from: pass --overwrite_output_dir to start it again,"
        )
        raise ValueError(
            f"output_dir {output_dir} already holds another run ({', '.join(existing)}). {choices} or choose "
            "another --output_dir."
        )
    if existing and is_main_process:
        for name in existing:
            remove(output_dir / name)


# One run per folder ---------------------------------------------------------------------------------------------


@contextmanager
def hold_output_dir(output_dir: Path, accelerator: Accelerator) -> Iterator[None]:
    """Hold `output_dir` for one run: the main process locks it, every process learns at once whether it did.

    A second run on the folder is refused naming the holder; what a dead run left half-written is removed (the lock
    proves nobody is writing it); a disk-full error on the way out names the last good checkpoint.
    """
    lock = refusal = None
    if accelerator.is_main_process:
        try:
            lock = take_run_lock(output_dir)
        except ValueError as error:
            refusal = str(error)
    if accelerator.num_processes > 1:
        refusal = broadcast_object_list([refusal])[0]
        accelerator.wait_for_everyone()  # every process has the answer before any can exit and end the launch
    if refusal is not None:
        raise ValueError(refusal)
    try:
        if accelerator.is_main_process:
            removed = remove_leftovers(output_dir)
            if removed:
                print(f"removed what an interrupted run left half-written: {', '.join(removed)}")
        yield
    except DiskFull as error:
        checkpoint = newest_checkpoint(output_dir / "checkpoints")
        started = any((output_dir / name).exists() for name in RUN_FILES)
        error.advice = (
            f"The last good checkpoint is {checkpoint}: free some space, then continue with --resume"
            if checkpoint
            else "No checkpoint was written yet: free some space, then start again"
            + (" with --overwrite_output_dir" if started else "")
        )
        raise
    finally:
        if lock is not None:
            os.truncate(lock.lock_file, 0)  # an empty lock file tells the next run that this one ended cleanly
            lock.release()


def take_run_lock(output_dir: Path) -> FileLock:
    """Lock `output_dir/.run.lock` for this process and write who holds it; ValueError naming the holder if taken.

    flock(2) locks end with their process, however it ends, so a lock file still holding a record when we get it
    was left by a run that was killed: it is taken over, with a warning naming that run.
    """
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"output_dir {output_dir} is a file; pass a folder.")
    output_dir.mkdir(parents=True, exist_ok=True)
    holder = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": " ".join(sys.argv),
    }
    left_behind = []

    def record_holder(fd: int) -> None:
        left_behind.append(os.pread(fd, 1 << 16, 0))
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)

    lock = FileLock(output_dir / LOCK_FILE, on_acquired=record_holder, preserve_lock_file=True)
    try:
        lock.acquire(blocking=False)
    except Timeout:
        raise ValueError(
            f"output_dir {output_dir} is in use by another run ({describe_holder(Path(lock.lock_file).read_bytes())}"
            "). Wait for it to finish or stop it, or choose another --output_dir."
        ) from None
    except OSError as error:  # e.g. a network filesystem without flock(2)
        raise ValueError(
            f"cannot lock {lock.lock_file} ({error}), so a second run could write into the same folder unnoticed; "
            "choose an --output_dir on a local disk"
        ) from None
    if left_behind[0].strip():
        print(
            f"warning: took over {lock.lock_file} from a run that ended without releasing it "
            f"({describe_holder(left_behind[0])}); it no longer holds the lock"
        )
    return lock


def describe_holder(record: bytes) -> str:
    """ "PID 12 on host h since 2026-12-01 10:00:00 UTC (train.py ...)" from a lock file's record."""
    try:
        holder = json.loads(record)
        return f"PID {holder['pid']} on host {holder['host']} since {holder['since']}: {holder['command']}"
    except (ValueError, KeyError, TypeError):
        return "its details are not written yet"


def remove_leftovers(output_dir: Path) -> list[str]:
    """Delete the partial files and folders of a run that died while writing them; returns their names.

    Only names this package writes are touched (`.best.*.tmp` and the like, `checkpoints/.step_N.tmp`). A best/
    moved aside but never replaced (a kill between the two renames where the filesystem cannot swap folders) is
    put back first.
    """
    best = output_dir / "best"
    for aside in sorted(output_dir.glob(".best.*.old")):
        if not best.exists() and (aside / "best").is_dir():
            os.replace(aside / "best", best)
    patterns = [f".{name}.*tmp" for name in RUN_FILES] + [f".{name}.*.old" for name in RUN_FILES]
    patterns.append("checkpoints/.step_*.tmp")
    leftovers = sorted({path for pattern in patterns for path in output_dir.glob(pattern)})
    for path in leftovers:
        remove(path)
    return [str(path.relative_to(output_dir)) for path in leftovers]


def describe_output_dir(output_dir: Path) -> str:
    """What a finished run left, one line each, for the end of the log."""
    lines = [f"{output_dir}/"]
    lines += [f"  {name:<20} {role}" for name, role in RUN_FILES.items() if (output_dir / name).exists()]
    return "\n".join(lines)


def complete_checkpoints(checkpoints_dir: Path) -> list[Path]:
    """The complete checkpoints, oldest first; partial ones live under a hidden `.tmp` name, strays are ignored."""
    if not checkpoints_dir.is_dir():
        return []
    steps = [path for path in checkpoints_dir.glob("step_*") if path.name.removeprefix("step_").isdigit()]
    return sorted(steps, key=lambda path: int(path.name.removeprefix("step_")))


def newest_checkpoint(checkpoints_dir: Path) -> Path | None:
    """The complete checkpoint with the highest step, or None."""
    return next(reversed(complete_checkpoints(checkpoints_dir)), None)


def save_checkpoint(accelerator: Accelerator, step: int, args, describe: Callable[[Path], None]) -> Path:
    """`accelerator.save_state` into `.step_N.tmp`, then `describe(folder)` (the files read without loading the
    weights) and the manifest, renamed to `step_N` once every process has written its files; then the oldest
    checkpoints beyond `keep_checkpoints` go.

    A failure removes the partial folder (a full disk raises DiskFull), so the checkpoints left are all complete.
    """
    final = args.checkpoints_dir / f"step_{step}"
    staging = args.checkpoints_dir / f".step_{step}.tmp"  # one name every process knows: each writes its shard
    main = accelerator.is_main_process
    if main:
        remove(staging)
    accelerator.wait_for_everyone()
    with replacing_folder(final, f"checkpoint step_{step}", staging=staging, commit=main):
        accelerator.save_state(str(staging), safe_serialization=True)  # under FSDP, every process writes its shard
        accelerator.wait_for_everyone()  # every process has written its files before the folder is sealed
        if main:
            describe(staging)
            write_manifest(staging)
    if main:
        for old in complete_checkpoints(args.checkpoints_dir)[: -args.keep_checkpoints]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def usable_checkpoint(checkpoints_dir: Path) -> Path | None:
    """The newest checkpoint that passes `files.folder_damage`; newer damaged ones are set aside with a warning."""
    for checkpoint in reversed(complete_checkpoints(checkpoints_dir)):
        damage = folder_damage(checkpoint)
        if damage is None:
            return checkpoint
        aside = set_aside(checkpoint, "damaged")
        print(f"warning: skipped checkpoint {checkpoint}: {damage}. Set aside as {aside.name} (nothing was deleted)")
    return None


def set_aside(checkpoint: Path, why: str) -> Path:
    """Hide a checkpoint from --resume under `.step_N.{why}` (renamed, never deleted); returns the new path."""
    aside = checkpoint.with_name(f".{checkpoint.name}.{why}")
    number = 1
    while aside.exists():
        number += 1
        aside = checkpoint.with_name(f".{checkpoint.name}.{why}.{number}")
    os.replace(checkpoint, aside)
    return aside


def set_aside_diverged(checkpoints_dir: Path, step: int, accelerator: Accelerator) -> str:
    """Hide a checkpoint of the weights that just gave a non-finite loss, so --resume takes the one before.

    It is renamed, not deleted: nothing a run wrote is lost. Returns the newest checkpoint left, for the message.
    """
    diverged = checkpoints_dir / f"step_{step}"
    if accelerator.is_main_process and diverged.is_dir():
        set_aside(diverged, "diverged")
    accelerator.wait_for_everyone()
    return str(newest_checkpoint(checkpoints_dir) or "none (no checkpoint was written yet)")
