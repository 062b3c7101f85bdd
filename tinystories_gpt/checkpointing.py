"""The output folder and the resumable state in it: what a run owns, its checkpoints, and how they are replaced.

    output_dir/
      checkpoints/step_N/   accelerator.save_state (model, optimizer, RNGs, RunState) + config.json + tokenizer/
      checkpoints/.step_N.tmp    a checkpoint being written; renamed to step_N once complete
      checkpoints/.step_N.diverged   the weights of a step whose loss was not finite, set aside (never deleted)
      best/, metrics.jsonl, ...  see RUN_FILES

A checkpoint is only ever taken at an optimizer-step boundary, so `--resume` continues the run bit for bit.
"""

import math
import os
import shutil
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from .arguments import TrainingArguments
from .configuration_tinystories_gpt import TinyStoriesGPTConfig

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
SHAPE_FIELDS = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "bias")


class RunState:
    """What a resumed run needs beyond model, optimizer and RNGs; Accelerate checkpoints it with them."""

    def __init__(self, sampler: Any):
        self.step = 0
        self.tokens_seen = 0
        self.best_val_loss = math.inf
        self.chosen_max_iters = None  # what a --max_time run chose, once it has
        self.sampler = sampler

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "best_val_loss": self.best_val_loss,
            "chosen_max_iters": self.chosen_max_iters,
            "sampler": self.sampler.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]
        self.tokens_seen = state["tokens_seen"]
        self.best_val_loss = state["best_val_loss"]
        self.chosen_max_iters = state.get("chosen_max_iters")  # absent from checkpoints of older releases
        self.sampler.load_state_dict(state["sampler"])


def prepare_output_dir(args: TrainingArguments, is_main_process: bool) -> None:
    """Refuse to mix two runs in one folder; with overwrite_output_dir, clear only this project's files."""
    output_dir = Path(args.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"output_dir {output_dir} is a file; pass a folder.")
    existing = [name for name in RUN_FILES if (output_dir / name).exists()]
    if args.resume:
        if newest_checkpoint(args.checkpoints_dir) is None:
            raise FileNotFoundError(
                f"--resume found no complete checkpoint in {args.checkpoints_dir}. Start a fresh run without --resume."
            )
        return
    if existing and not args.overwrite_output_dir:
        raise ValueError(
            f"output_dir {output_dir} already holds another run ({', '.join(existing)}). Pass --resume to continue "
            "it, --overwrite_output_dir to replace it, or choose another --output_dir."
        )
    if existing and is_main_process:
        for name in existing:
            path = output_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()


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


def save_checkpoint(accelerator: Accelerator, step: int, config: TinyStoriesGPTConfig, tokenizer, args) -> Path:
    """`accelerator.save_state` into a temporary folder, renamed into place once every file is written."""
    final = args.checkpoints_dir / f"step_{step}"
    partial = args.checkpoints_dir / f".step_{step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial), safe_serialization=True)  # under FSDP, every process writes its shard
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        config.save_pretrained(partial)  # lets convert.py and --resume check shapes without loading weights
        tokenizer.save_pretrained(partial / "tokenizer")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
        for old in complete_checkpoints(args.checkpoints_dir)[: -args.keep_checkpoints]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def check_checkpoint_matches(checkpoint: Path, config: TinyStoriesGPTConfig) -> None:
    """A resume must not load weights into a model of another shape; say which fields differ."""
    saved = TinyStoriesGPTConfig.from_pretrained(checkpoint)
    differences = [
        f"{name}: checkpoint {getattr(saved, name)} vs now {getattr(config, name)}"
        for name in SHAPE_FIELDS
        if getattr(saved, name) != getattr(config, name)
    ]
    if differences:
        raise ValueError(
            f"Checkpoint {checkpoint} was trained with another model shape ({'; '.join(differences)}). "
            "Resume with the original settings, or start a new run in another --output_dir."
        )


def set_aside_diverged(checkpoints_dir: Path, step: int, accelerator: Accelerator) -> str:
    """Hide a checkpoint of the weights that just gave a non-finite loss, so --resume takes the one before.

    It is renamed, not deleted: nothing a run wrote is lost. Returns the newest checkpoint left, for the message.
    """
    diverged = checkpoints_dir / f"step_{step}"
    if accelerator.is_main_process and diverged.is_dir():
        os.replace(diverged, checkpoints_dir / f".step_{step}.diverged")
    accelerator.wait_for_everyone()
    return str(newest_checkpoint(checkpoints_dir) or "none (no checkpoint was written yet)")
