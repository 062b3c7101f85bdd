"""What a run leaves for people to read: metrics lines, the loss curve, sample stories, the summary the model card
shows, and the FLOPs behind MFU. Written by the main process only; each file is appended to or replaced whole, and
a write that fails (a full disk: DiskFull) leaves the file as it was."""

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..configuration_tinystories_gpt import TinyStoriesGPTConfig
from ..files import appending, replacing_file, write_file
from . import budget
from .arguments import DataArguments, TrainingArguments
from .budget import MEASURE_AFTER as WARMUP_STEPS_TIMED
from .budget import format_seconds


def append_metrics(path: Path, record: dict) -> None:
    with appending(path, "a metrics line") as metrics_file:
        metrics_file.write(json.dumps(record) + "\n")


def read_metrics(path: Path) -> list[dict]:
    """The records of metrics.jsonl. A last line cut short by a crash is dropped with a warning; any other line
    that is not JSON is an error naming it."""
    lines = path.read_text().splitlines() if path.exists() else []
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError as error:
            if number < len(lines):
                raise ValueError(
                    f"{path} line {number} is not JSON ({error}); fix or delete that line, then run again"
                ) from None
            print(f"warning: dropped the last line of {path}, cut short when a run was killed: {line[:60]!r}")
    return records


def truncate_metrics(path: Path, last_step: int) -> None:
    """On resume, drop records written after the checkpoint (the resumed run writes them again), and a torn line."""
    kept = [record for record in read_metrics(path) if record["step"] <= last_step]
    write_file(path, "".join(json.dumps(record) + "\n" for record in kept), "the metrics")


def evaluation_missing(path: Path, step: int, args: TrainingArguments) -> bool:
    """Whether `step` is an evaluation step with no record: a stop cut its evaluation short, and it is owed."""
    due = step > 0 and (step % args.eval_interval == 0 or step == args.max_iters)
    return due and all(record["step"] != step for record in read_metrics(path))


def plot_loss_curve(metrics: list[dict], path: Path) -> None:
    """Train and validation loss against optimizer step, like the seed's plot; replaced atomically."""
    import matplotlib  # here: only the main process draws, and only at an evaluation

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [record["step"] for record in metrics]
    figure, axes = plt.subplots(figsize=(7, 4.5))
    axes.plot(steps, [record["train_loss"] for record in metrics], label="train loss", marker=".")
    held_out = "dev" if metrics and "dev_loss" in metrics[0] else "val"
    label = "dev loss" if held_out == "dev" else "validation loss"
    axes.plot(steps, [record[f"{held_out}_loss"] for record in metrics], label=label, marker=".")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("cross-entropy (nats/token)")
    axes.set_title("TinyStories GPT: loss")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    try:
        with replacing_file(path, "the loss curve") as partial:
            figure.savefig(partial, dpi=110, format="png")
    finally:
        plt.close(figure)


def append_samples(path: Path, step: int, stories: list[str]) -> None:
    with appending(path, "sample stories") as samples_file:
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


class Throughput:
    """Training tokens/s, timed around optimizer steps only (evaluations and checkpoints are not training)."""

    def __init__(self, tokens_per_step: int, flops_per_token: float, peak_flops: float | None):
        self.tokens_per_step, self.flops_per_token, self.peak = tokens_per_step, flops_per_token, peak_flops
        self.seconds = self.steps = 0  # since the last evaluation
        self.step_seconds: list[float] = []  # every step of this process's run, in order
        self.last = ""

    def start_step(self) -> None:
        self._started = budget.now()

    def end_step(self) -> None:
        seconds = budget.now() - self._started
        self.seconds += seconds
        self.steps += 1
        self.step_seconds.append(seconds)
        self.last = f"{self.tokens_per_step / seconds:,.0f}"

    def typical_step(self, since: int = 0) -> float:
        """The median step once compiled and warm (the first WARMUP_STEPS_TIMED steps left out), of the steps from
        this process's `since`-th on."""
        measured = sorted(self.step_seconds[max(since, WARMUP_STEPS_TIMED) :] or self.step_seconds[since:])
        return measured[len(measured) // 2]

    def warmup_seconds(self) -> float:
        """What the first steps cost beyond typical ones: compilation, mostly."""
        first = self.step_seconds[:WARMUP_STEPS_TIMED]
        return max(sum(first) - len(first) * self.typical_step(), 0.0) if self.step_seconds else 0.0

    def total_seconds(self) -> float:
        return sum(self.step_seconds)

    def interval_record(self, num_processes: int) -> dict:
        """Mean tokens/s (and MFU on a known GPU) since the last call; starts a new interval."""
        if not self.steps:  # no step timed: an evaluation before the first step (--init_from), or redone on resume
            return {}
        tokens_per_second = self.steps * self.tokens_per_step / max(self.seconds, 1e-9)
        record = {"tokens_per_second": tokens_per_second}
        if self.peak:
            record["mfu"] = self.flops_per_token * tokens_per_second / (self.peak * num_processes)
        self.seconds = self.steps = 0
        return record


class PhaseClock:
    """Wall time per phase of the run (tokenizer, tokenization, compile, training, ...), for the closing summary."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds

    @contextmanager
    def timing(self, phase: str) -> Iterator[None]:
        started = budget.now()
        try:
            yield
        finally:
            self.add(phase, budget.now() - started)

    def summary(self) -> str:
        """'tokenizer 12s, tokenization 20s, compile 31s, training 7m02s, ...'"""
        return ", ".join(f"{phase} {format_seconds(seconds)}" for phase, seconds in self.seconds.items())
