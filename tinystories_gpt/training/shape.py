"""`--small_shape`: a smaller model for a machine whose time budget affords the preset's shape few steps.

A model this size gets better with every step its minutes buy. Where a machine affords the preset's shape fewer
than `--small_shape_below_steps` (a CPU without AMX, or one core), a smaller shape takes more steps in the same
time and ends lower; where it affords many (a CPU with AMX on two cores), the smaller one overfits the repeated data
and the preset's shape wins (benchmarks/quickstart_trials.md, session 8).

Before the run's model is built, every process times a few training steps of the preset's shape on random tokens, in
the run's precision and uncompiled (seconds, where compiling would take half a minute), and the main process
chooses from the steps the time left buys at that speed; every process builds what it chose. The choice is printed,
kept in the run state of every checkpoint and in final_metrics.json, and a resumed run takes its checkpoint's shape.
"""

from dataclasses import dataclass, replace

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from transformers import PreTrainedTokenizerFast

from ..configuration_tinystories_gpt import TinyStoriesGPTConfig
from ..evaluation.losses import next_token_loss
from .arguments import ModelArguments, TrainingArguments, parse_shape
from .budget import TimeBudget
from .checkpoints import newest_checkpoint
from .optimization import build_optimizer
from .parent import build_model
from .records import WARMUP_STEPS_TIMED, Throughput

PROBE_TIMED_STEPS = 6  # after the warm-up steps Throughput leaves out, as the budget's own timing does


@dataclass(frozen=True)
class ShapeChoice:
    """What the run measured and chose: the preset's shape, its speed here, the steps that buys, the shape built."""

    preset: str  # "4x256": layers x width
    step_seconds: float  # one optimizer step of the preset's shape, uncompiled, on this machine
    affordable_steps: int  # steps of the preset's shape the time left buys at that speed
    below_steps: int  # the threshold: fewer, and the small shape is built
    chosen: str

    def describe(self, where: str = "here") -> str:
        verdict = (
            f"fewer than {self.below_steps:,}: training the smaller {self.chosen} instead"
            if self.chosen != self.preset
            else f"at least {self.below_steps:,}: keeping {self.preset}"
        )
        return (
            f"{self.preset} takes {self.step_seconds:.3f} s a step {where} (uncompiled), ~{self.affordable_steps:,} "
            f"steps in the time left, {verdict}"
        )


def shape_name(n_layer: int, n_embd: int) -> str:
    return f"{n_layer}x{n_embd}"


def with_shape(model_args: ModelArguments, shape: str) -> ModelArguments:
    n_layer, n_embd = parse_shape(shape)
    return replace(model_args, n_layer=n_layer, n_embd=n_embd)


def choose_shape(
    model_args: ModelArguments,
    args: TrainingArguments,
    tokenizer: PreTrainedTokenizerFast,
    accelerator: Accelerator,
    time_budget: TimeBudget,
) -> tuple[ModelArguments, ShapeChoice | None]:
    """The model arguments of the shape this machine affords best, and the measurement behind the choice (None on
    --resume, which takes the checkpoint's shape and loads the choice with the run state)."""
    if args.resume:
        return resumed_shape(model_args, args), None
    preset = shape_name(model_args.n_layer, model_args.n_embd)
    step_seconds = probe_step_seconds(model_args, args, tokenizer, accelerator)
    affordable = max(int(time_budget.seconds_left() / step_seconds), 0)
    below = model_args.small_shape_below_steps
    chosen = model_args.small_shape if affordable < below else preset
    # every process timed its own steps, and builds (and records) the main process's choice
    choice = broadcast_object_list([ShapeChoice(preset, step_seconds, affordable, below, chosen)])[0]
    accelerator.print(f"shape: {choice.describe()}")
    return with_shape(model_args, choice.chosen), choice


def probe_step_seconds(
    model_args: ModelArguments, args: TrainingArguments, tokenizer: PreTrainedTokenizerFast, accelerator: Accelerator
) -> float:
    """Seconds per optimizer step of the preset's shape here: its batch of random tokens, forward and backward in the
    run's precision, and AdamW's update; the typical step once warm, as the budget measures the run's."""
    device = accelerator.device
    tokens_per_step = args.gradient_accumulation_steps * args.batch_size * model_args.block_size
    timer = Throughput(tokens_per_step, flops_per_token=0.0, peak_flops=None)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # the run's seed stays untouched
        model = build_model(model_args, tokenizer, parent=None).to(device).train()
        optimizer = build_optimizer(model, args, fused=device.type == "cuda")
        batches = torch.randint(
            model.config.vocab_size,
            (args.gradient_accumulation_steps, args.batch_size, model_args.block_size),
            device=device,
        )
        for _ in range(WARMUP_STEPS_TIMED + PROBE_TIMED_STEPS):
            timer.start_step()
            for input_ids in batches:
                with accelerator.autocast():
                    loss = next_token_loss(model, input_ids, input_ids)
                loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            timer.end_step()
    return timer.typical_step()


def resumed_shape(model_args: ModelArguments, args: TrainingArguments) -> ModelArguments:
    """A resumed run builds the shape its checkpoint was trained in, when that is the small shape; any other
    difference from the preset is left for the recipe check to name."""
    checkpoint = newest_checkpoint(args.checkpoints_dir)
    if checkpoint is None:
        return model_args
    config = TinyStoriesGPTConfig.from_pretrained(checkpoint)
    trained = shape_name(config.n_layer, config.n_embd)
    return with_shape(model_args, trained) if trained == model_args.small_shape else model_args


def shape_summary(shape_choice: dict | None) -> dict:
    """The model card's row for the choice ({} when the run had none to make)."""
    return {"shape": ShapeChoice(**shape_choice).describe("on the training machine")} if shape_choice else {}
