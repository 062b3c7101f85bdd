"""What a run leaves for people to read: metrics lines, the loss curve, sample stories, the summary the model card
shows, and the FLOPs behind MFU. Written by the main process only; each file is appended to or replaced whole."""

import json
import os
from pathlib import Path

from .arguments import DataArguments, TrainingArguments
from .configuration_tinystories_gpt import TinyStoriesGPTConfig


def append_metrics(path: Path, record: dict) -> None:
    with path.open("a") as metrics_file:
        metrics_file.write(json.dumps(record) + "\n")


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def truncate_metrics(path: Path, last_step: int) -> None:
    """On resume, drop records written after the checkpoint: the resumed run writes them again."""
    kept = [record for record in read_metrics(path) if record["step"] <= last_step]
    path.write_text("".join(json.dumps(record) + "\n" for record in kept))


def plot_loss_curve(metrics: list[dict], path: Path) -> None:
    """Train and validation loss against optimizer step, like the seed's plot; replaced atomically."""
    import matplotlib  # here: only the main process draws, and only at an evaluation

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [record["step"] for record in metrics]
    figure, axes = plt.subplots(figsize=(7, 4.5))
    axes.plot(steps, [record["train_loss"] for record in metrics], label="train loss", marker=".")
    axes.plot(steps, [record["val_loss"] for record in metrics], label="validation loss", marker=".")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("cross-entropy (nats/token)")
    axes.set_title("TinyStories GPT: loss")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    partial = path.with_name(path.name + ".tmp.png")
    figure.savefig(partial, dpi=110)
    plt.close(figure)
    os.replace(partial, path)


def append_samples(path: Path, step: int, stories: list[str]) -> None:
    with path.open("a") as samples_file:
        samples_file.write(f"## step {step}\n\n")
        samples_file.writelines(f"{story}\n\n---\n\n" for story in stories)


def training_summary(step: int, tokens_seen: int, data_args: DataArguments, args: TrainingArguments) -> dict:
    """The recipe and progress facts the model card reports."""
    return {
        "dataset": data_args.dataset,
        "tokenizer": data_args.tokenizer,
        "steps": step,
        "max_iters": args.max_iters,
        "tokens_seen": tokens_seen,
        "batch_size": args.batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "learning_rate": args.learning_rate,
        "min_lr": args.min_lr,
        "lr_scheduler_type": args.lr_scheduler_type,
        "warmup_steps": args.warmup_steps,
        "weight_decay": args.weight_decay,
        "grad_clip": args.grad_clip,
        "seed": args.seed,
    }


def model_flops_per_token(config: TinyStoriesGPTConfig, n_params: int) -> float:
    """Training FLOPs per token: 6N for the matmuls plus attention's 12 L T C (PaLM appendix B)."""
    return 6 * n_params + 12 * config.n_layer * config.block_size * config.n_embd
