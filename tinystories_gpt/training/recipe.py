"""What a run computes, saved with every checkpoint as recipe.json, so that `--resume` continues the same run.

A resumed run must compute what the interrupted one would have: the same data and split, the same tokens, the same
model, optimizer, schedule, batch, seed and precision. A flag that would change any of them is refused, naming each
change, with the way to start a new run from the checkpoint instead. What only changes what is reported or how often
(evaluation, checkpoint and logging intervals, trackers, samples, the Hub upload, the kernels and compilation) may
change, and `max_iters` and `max_time` may grow (a longer run; the schedule then stretches to the new end).
"""

import json
from pathlib import Path

from ..configuration_tinystories_gpt import TinyStoriesGPTConfig
from .arguments import DataArguments, ModelArguments, TrainingArguments

RECIPE_FILE = "recipe.json"
MODEL_FIELDS = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "dropout", "bias")
COMPUTING_FLAGS = {
    "model": ("init_from", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules"),
    "data": ("dataset", "tokenizer", "validation_split_percentage", "dev_stories"),
    "training": (
        "batch_size",
        "gradient_accumulation_steps",
        "eval_iters",
        "eval_batch_size",
        "learning_rate",
        "min_lr",
        "lr_scheduler_type",
        "warmup_steps",
        "weight_decay",
        "beta1",
        "beta2",
        "grad_clip",
        "ema_decay",
        "seed",
    ),
}
GROWING_FLAGS = ("max_iters", "max_time")  # may be raised on resume, never lowered, nor given or dropped


def recipe(
    arguments: tuple[ModelArguments, DataArguments, TrainingArguments], config: TinyStoriesGPTConfig, facts: dict
) -> dict:
    """The recipe of a run: the flags that change what it computes, the model's shape, and `facts` the flags do not
    show (the processes, the precision Accelerate runs in, the SHA-256 of the token files)."""
    model_args, data_args, args = arguments
    by_group = {"model": model_args, "data": data_args, "training": args}
    flags = {name: getattr(by_group[group], name) for group, names in COMPUTING_FLAGS.items() for name in names}
    flags |= {name: getattr(args, name) for name in GROWING_FLAGS}
    return flags | {name: getattr(config, name) for name in MODEL_FIELDS} | facts


def write_recipe(folder: Path, run_recipe: dict) -> None:
    (folder / RECIPE_FILE).write_text(json.dumps(run_recipe, indent=1) + "\n")


def check_same_recipe(checkpoint: Path, now: dict) -> None:
    """Refuse a resume whose recipe differs from the checkpoint's in what it computes, naming every difference."""
    saved = json.loads((checkpoint / RECIPE_FILE).read_text())
    changes = [
        f"{name} {saved.get(name)!r} -> {value!r}"
        for name, value in now.items()
        if name not in GROWING_FLAGS and saved.get(name) != value
    ]
    for name in GROWING_FLAGS:
        before, after = saved.get(name), now[name]
        if (before is None) != (after is None) or (before is not None and after < before):
            changes.append(f"{name} {before!r} -> {after!r} (it may only grow)")
    if changes:
        raise ValueError(
            f"--resume would not continue the run in {checkpoint.parent.parent}, whose checkpoint {checkpoint.name} "
            f"was made with other settings: {'; '.join(changes)}. Resume with the saved values, or start a new run "
            f"from this checkpoint: --init_from {checkpoint} --output_dir ANOTHER_FOLDER"
        )
