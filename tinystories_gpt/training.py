"""The training loop, read top to bottom in the order a run goes.

1. The Accelerator (devices, processes, mixed precision, accumulation) and the output folder.
2. The data: tokenized once by the main process, windows drawn by every process from the same seeded stream.
3. The model and optimizer, prepared by Accelerate; `--resume` loads the newest checkpoint.
4. Optimizer steps of `gradient_accumulation_steps` micro-batches; every `eval_interval` steps an evaluation
   (metrics, loss curve, samples, best/), every `checkpoint_interval` steps (and on SIGINT/SIGTERM) a checkpoint.
5. The end: best/ scored over the whole validation split, its card rewritten with those figures, pushed if asked.

The pieces live in their own modules: arguments.py (what the run is told), optimization.py (AdamW, schedule),
hardware.py (precision, compile), checkpointing.py (the output folder), records.py (what people read),
evaluation.py (losses, samples).
"""

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerFast

from .arguments import DataArguments, ModelArguments, TrainingArguments, check_fits_in_memory, model_config, parse_args
from .checkpointing import (
    RunState,
    check_checkpoint_matches,
    describe_output_dir,
    hold_output_dir,
    newest_checkpoint,
    prepare_output_dir,
    save_checkpoint,
    set_aside_diverged,
)
from .data import TokenFile, prepare_data
from .evaluation import SEED_PROMPT, estimate_loss, evaluate_split, next_token_loss, sample_stories
from .faults import StopSignal, stop_on_signal
from .hardware import can_compile, peak_flops, resolve_mixed_precision
from .hub import push_to_hub, save_hub_folder
from .modeling_tinystories_gpt import TinyStoriesGPTForCausalLM
from .optimization import build_optimizer, learning_rate_at, set_learning_rate
from .records import (
    append_metrics,
    append_samples,
    evaluation_missing,
    model_flops_per_token,
    plot_loss_curve,
    read_metrics,
    training_summary,
    truncate_metrics,
    write_replacing,
)
from .windows import WindowSampler, fixed_eval_batches

__all__ = ["TrainingDiverged", "parse_args", "train"]

EVAL_BATCHES_PER_STOP_CHECK = 4  # per process: a stop request cuts an evaluation short within this many batches


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainingData:
    """The tokenized splits as the loop uses them."""

    tokenizer: PreTrainedTokenizerFast
    train_tokens: int
    train_sampler: WindowSampler
    train_eval_batches: list
    val_eval_batches: list
    val_split: TokenFile
    hub_id: str | None
    validation_source: str


def load_training_data(
    data_args: DataArguments, model_args: ModelArguments, args: TrainingArguments, accelerator: Accelerator
) -> TrainingData:
    """Tokenize (or reuse) both splits; each process samples its own share of every batch."""
    prepared = prepare_data(
        data_args.dataset,
        data_args.tokenizer,
        cache_dir=data_args.cache_dir,
        validation_split_percentage=data_args.validation_split_percentage,
        num_proc=data_args.num_proc,
    )
    train_tokens, val_tokens = prepared.train.tokens(), prepared.validation.tokens()
    block_size, batch_size = model_args.block_size, args.batch_size
    return TrainingData(
        tokenizer=prepared.tokenizer,
        train_tokens=prepared.train.num_tokens,
        train_sampler=WindowSampler(
            train_tokens, block_size, batch_size, args.seed, accelerator.process_index, accelerator.num_processes
        ),
        # every process builds the same fixed lists; estimate_loss gives each its share
        train_eval_batches=fixed_eval_batches(train_tokens, block_size, batch_size, args.eval_iters, args.seed + 1),
        val_eval_batches=fixed_eval_batches(val_tokens, block_size, batch_size, args.eval_iters, args.seed + 2),
        val_split=prepared.validation,
        hub_id=prepared.hub_id,
        validation_source=prepared.validation_source,
    )


def train(model_args: ModelArguments, data_args: DataArguments, args: TrainingArguments) -> dict:
    """Train, evaluate and checkpoint; returns the final metrics and where the best model lies."""
    # 1. the Accelerator and the output folder
    use_cuda = torch.cuda.is_available() and not args.cpu
    accelerator = Accelerator(
        cpu=args.cpu,
        mixed_precision=resolve_mixed_precision(args.mixed_precision, use_cuda),
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=None if args.report_to == "none" else args.report_to,
        project_dir=str(Path(args.output_dir) / "logs"),
    )
    check_fits_in_memory(model_args, data_args, args, accelerator.device)
    # one run per output folder; until the loop, a stop signal ends the run at once (nothing is half-written)
    with (
        hold_output_dir(Path(args.output_dir), accelerator),
        stop_on_signal("before the first step", "nothing was left half-written; run the same command again"),
    ):
        return train_in_output_dir(accelerator, use_cuda, model_args, data_args, args)


def train_in_output_dir(
    accelerator: Accelerator,
    use_cuda: bool,
    model_args: ModelArguments,
    data_args: DataArguments,
    args: TrainingArguments,
) -> dict:
    """`train`, once the output folder is this run's alone."""
    prepare_output_dir(args, accelerator.is_main_process)
    accelerator.wait_for_everyone()
    set_seed(args.seed)
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)

    # 2. data and tokenizer (built once by the main process, reused from the cache by the others)
    with accelerator.main_process_first():
        data = load_training_data(data_args, model_args, args, accelerator)

    # 3. model and optimizer, then the state to resume
    config = model_config(model_args, data.tokenizer)
    model = TinyStoriesGPTForCausalLM._from_config(config, attn_implementation=model_args.attn_implementation)
    n_params = model.num_parameters()
    optimizer = build_optimizer(model, args, fused=use_cuda)
    if args.compile and can_compile(accelerator):
        model.compile()  # in place, unlike torch.compile(model): checkpoints keep their plain key names
    model, optimizer = accelerator.prepare(model, optimizer)
    state = RunState(data.train_sampler)
    accelerator.register_for_checkpointing(state)
    tokens_per_step = args.batch_size * args.gradient_accumulation_steps * config.block_size * accelerator.num_processes
    print_run_plan(accelerator, config, n_params, tokens_per_step, data.train_tokens, args)
    if args.resume:
        resume(accelerator, state, config, args)
    accelerator.init_trackers("tinystories-gpt", config={**asdict(model_args), **asdict(data_args), **asdict(args)})

    # 4. the loop
    throughput = Throughput(tokens_per_step, model_flops_per_token(config, n_params), peak_flops(accelerator.device))
    progress = tqdm(total=args.max_iters, initial=state.step, disable=not accelerator.is_main_process, desc="training")
    model.train()
    if evaluation_missing(Path(args.output_dir) / "metrics.jsonl", state.step, args):  # a stop had cut it short
        evaluate_and_record(model, state, data, accelerator, throughput, model_args, data_args, args)
    stop_requested = False
    with StopSignal() as stop:
        while state.step < args.max_iters:
            throughput.start_step()
            step_loss, stop_requested = optimizer_step(model, optimizer, state, args, accelerator, stop.requested)
            state.step += 1
            state.tokens_seen += tokens_per_step
            throughput.end_step()
            progress.update(1)
            progress.set_postfix(
                loss=f"{step_loss:.4f}", lr=f"{learning_rate_at(state.step - 1, args):.2e}", tok_s=throughput.last
            )

            if state.step % args.eval_interval == 0 or state.step == args.max_iters:
                finished = evaluate_and_record(
                    model, state, data, accelerator, throughput, model_args, data_args, args, stop
                )
                stop_requested = stop_requested or not finished
            if state.step % args.checkpoint_interval == 0 or stop_requested or state.step == args.max_iters:
                save_checkpoint(accelerator, state.step, config, data.tokenizer, args)
            if stop_requested:
                accelerator.print(f"stopped by signal at step {state.step}; continue with --resume")
                break
    progress.close()

    # 5. the end
    last_checkpoint = args.checkpoints_dir / f"step_{state.step}"
    with stop_on_signal("after the last step", f"{last_checkpoint} and best/ are complete; --resume redoes the rest"):
        result = finish(
            accelerator, state, data, data_args, args, interrupted=stop_requested or state.step < args.max_iters
        )
    accelerator.end_training()  # also ends the process group: last
    return result


def print_run_plan(accelerator, config, n_params: int, tokens_per_step: int, train_tokens: int, args) -> None:
    """The model, the effective batch, the token budget and the device, before the first step."""
    budget = args.max_iters * tokens_per_step
    accelerator.print(
        f"model: {n_params / 1e6:.2f}M parameters, {config.n_layer} layers x {config.n_head} heads x "
        f"{config.n_embd} wide, context {config.block_size}, vocabulary {config.vocab_size}\n"
        f"effective batch: {args.batch_size} sequences x {args.gradient_accumulation_steps} accumulation x "
        f"{accelerator.num_processes} processes = {tokens_per_step:,} tokens per optimizer step\n"
        f"token budget: {args.max_iters:,} steps x {tokens_per_step:,} = {budget:,} tokens "
        f"({budget / max(train_tokens, 1):.1f} epochs of {train_tokens:,} training tokens)\n"
        f"device: {accelerator.device}, mixed precision: {accelerator.mixed_precision}, "
        f"processes: {accelerator.num_processes}"
    )


def resume(accelerator: Accelerator, state: RunState, config, args: TrainingArguments) -> None:
    """Load the newest checkpoint (model, optimizer, RNGs, run state) and drop the records written after it."""
    checkpoint = newest_checkpoint(args.checkpoints_dir)
    check_checkpoint_matches(checkpoint, config)
    accelerator.load_state(str(checkpoint))
    if accelerator.is_main_process:
        truncate_metrics(Path(args.output_dir) / "metrics.jsonl", state.step)
    accelerator.print(f"resumed from {checkpoint} at step {state.step}")


def optimizer_step(
    model, optimizer, state: RunState, args: TrainingArguments, accelerator: Accelerator, stop_requested: bool
) -> tuple[float, bool]:
    """Accumulate `gradient_accumulation_steps` micro-batches, clip, step.

    Returns the loss averaged over micro-batches and processes, and whether any process was asked to stop.
    """
    set_learning_rate(optimizer, learning_rate_at(state.step, args))
    loss_sum = torch.zeros((), device=accelerator.device)
    for _ in range(args.gradient_accumulation_steps):
        inputs, labels = (tensor.to(accelerator.device) for tensor in state.sampler.next_batch())
        with accelerator.accumulate(model):  # syncs gradients across processes on the last micro-batch only
            loss = next_token_loss(model, inputs, labels)
            accelerator.backward(loss)
        loss_sum += loss.detach()
    # One collective and one host sync per step: the mean loss of all processes (a NaN on any of them makes it
    # NaN on every one, so they all stop together) and the stop requests of any.
    totals = torch.stack([loss_sum / args.gradient_accumulation_steps, torch.tensor(float(stop_requested))])
    mean_loss, stops = accelerator.reduce(totals.to(accelerator.device), reduction="sum").tolist()
    mean_loss /= accelerator.num_processes
    if not math.isfinite(mean_loss):
        raise TrainingDiverged(
            f"The training loss became {mean_loss} at step {state.step}; the weights were not updated. The last "
            f"good checkpoint is {set_aside_diverged(args.checkpoints_dir, state.step, accelerator)}. Lower "
            "--learning_rate or raise --warmup_steps, then start again (or --resume)."
        )
    if args.grad_clip > 0:
        accelerator.clip_grad_norm_(model.parameters(), args.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return mean_loss, stops > 0


class Throughput:
    """Training tokens/s, timed around optimizer steps only (evaluations and checkpoints are not training)."""

    def __init__(self, tokens_per_step: int, flops_per_token: float, peak_flops: float | None):
        self.tokens_per_step, self.flops_per_token, self.peak = tokens_per_step, flops_per_token, peak_flops
        self.seconds = self.steps = 0  # since the last evaluation
        self.last = ""

    def start_step(self) -> None:
        self._started = time.perf_counter()

    def end_step(self) -> None:
        seconds = time.perf_counter() - self._started
        self.seconds += seconds
        self.steps += 1
        self.last = f"{self.tokens_per_step / seconds:,.0f}"

    def interval_record(self, num_processes: int) -> dict:
        """Mean tokens/s (and MFU on a known GPU) since the last call; starts a new interval."""
        if not self.steps:  # an evaluation redone on resume: no step was timed
            return {}
        tokens_per_second = self.steps * self.tokens_per_step / max(self.seconds, 1e-9)
        record = {"tokens_per_second": tokens_per_second}
        if self.peak:
            record["mfu"] = self.flops_per_token * tokens_per_second / (self.peak * num_processes)
        self.seconds = self.steps = 0
        return record


def evaluate_and_record(model, state, data, accelerator, throughput, model_args, data_args, args, stop=None) -> bool:
    """Losses on the fixed windows (every process), then the records and best/ (the main process).

    Returns False, having recorded nothing, when `stop` was requested during the losses.
    """
    train_loss = estimate_loss_unless_stopped(model, data.train_eval_batches, accelerator, stop)
    val_loss = estimate_loss_unless_stopped(model, data.val_eval_batches, accelerator, stop)
    if train_loss is None or val_loss is None:
        return False
    record = {
        "step": state.step,
        "tokens_seen": state.tokens_seen,
        "train_loss": train_loss,
        "val_loss": val_loss,
        "lr": learning_rate_at(state.step - 1, args),
        **throughput.interval_record(accelerator.num_processes),
    }
    accelerator.log(record, step=state.step)
    if accelerator.is_main_process:
        output_dir = Path(args.output_dir)
        append_metrics(output_dir / "metrics.jsonl", record)
        plot_loss_curve(read_metrics(output_dir / "metrics.jsonl"), output_dir / "loss_curve.png")
        plain_model = accelerator.unwrap_model(model)
        stories = sample_stories(plain_model, data.tokenizer, args.num_samples, seed=args.seed + state.step)
        append_samples(output_dir / "samples.md", state.step, stories)
        print(
            f"\nstep {record['step']}: train loss {record['train_loss']:.4f}, val loss {record['val_loss']:.4f}"
            + (f"\n{stories[0]}" if stories else "")
        )
        if record["val_loss"] < state.best_val_loss:
            windows = f"{args.eval_iters} fixed batches of {args.batch_size} x {model_args.block_size}-token windows"
            save_best(
                plain_model,
                data,
                args,
                metrics={"val_loss": record["val_loss"], "step": state.step},
                evaluation=f"an estimate on {windows} of {data.validation_source}, at step {state.step} of "
                f"{args.max_iters}: interim figures, replaced by a full pass over the split when the run finishes",
                training=training_summary(state.step, state.tokens_seen, data_args, args),
                samples=stories,
            )
    state.best_val_loss = min(state.best_val_loss, record["val_loss"])
    accelerator.wait_for_everyone()
    return True


def estimate_loss_unless_stopped(model, batches: list, accelerator, stop: StopSignal | None) -> float | None:
    """`estimate_loss` a few batches per process at a time; None as soon as any process was asked to `stop`."""
    size = EVAL_BATCHES_PER_STOP_CHECK * accelerator.num_processes
    summed = 0.0
    for start in range(0, len(batches), size):
        if stop is not None and stop.agreed(accelerator):
            return None
        chunk = batches[start : start + size]
        summed += estimate_loss(model, chunk, accelerator) * len(chunk)  # every batch holds as many labels
    return summed / len(batches)


def save_best(model, data: TrainingData, args: TrainingArguments, **card) -> None:
    """Replace best/ (atomically) with `model`, its tokenizer and a card holding `card`'s figures."""
    save_hub_folder(
        model,
        data.tokenizer,
        Path(args.output_dir) / "best",
        loss_curve=Path(args.output_dir) / "loss_curve.png",
        repo_id=args.hub_model_id,
        dataset_id=data.hub_id,
        overwrite=True,
        **card,
    )


def finish(accelerator, state, data, data_args, args, interrupted: bool) -> dict:
    """Score best/ over the whole validation split, write the figures into its card, push if asked."""
    output_dir = Path(args.output_dir)
    best_dir = output_dir / "best"
    result = {"step": state.step, "interrupted": interrupted, "best_dir": str(best_dir)}
    if interrupted or not best_dir.exists():
        return result
    # every process scores its share of the split with its own plain copy of best/ (no collective in the forward)
    best_model = TinyStoriesGPTForCausalLM.from_pretrained(best_dir).to(accelerator.device)
    final = evaluate_split(
        best_model, data.val_split, args.batch_size, progress=accelerator.is_main_process, accelerator=accelerator
    )
    if accelerator.is_main_process:
        stories = sample_stories(best_model, data.tokenizer, max(args.num_samples, 1), seed=args.seed)
        result.update(final, stories=stories)
        save_best(
            best_model,
            data,
            args,
            metrics=final,
            evaluation=f"a full pass over {data.validation_source}: every token predicted once "
            f"({final['tokens']:,} tokens, {final['bytes']:,} UTF-8 bytes)",
            training=training_summary(state.step, state.tokens_seen, data_args, args),
            samples=stories,
        )
        write_replacing(output_dir / "final_metrics.json", json.dumps(final, indent=2) + "\n", "the final metrics")
        accelerator.print(
            f"\nvalidation (whole split): loss {final['loss']:.4f}, perplexity {final['perplexity']:.2f}, "
            f"bits per byte {final['bits_per_byte']:.4f}\n\nthe best model's story for {SEED_PROMPT!r}:\n\n"
            f"{stories[0]}\n\n{describe_output_dir(output_dir)}"
        )
        if args.push_to_hub:
            push_to_hub(best_dir, args.hub_model_id)
    accelerator.wait_for_everyone()
    return result
