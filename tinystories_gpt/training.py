"""The training loop, read top to bottom in the order a run goes.

1. The Accelerator (devices, processes, mixed precision, accumulation) and the output folder.
2. The data: tokenized once by the main process, windows drawn by every process from the same seeded stream.
3. The model (fresh, or `--init_from`'s parent, with LoRA adapters if asked) and optimizer, prepared by Accelerate;
   `--resume` loads the newest checkpoint. A run from a parent first evaluates it: step 0 of the records.
4. Optimizer steps of `gradient_accumulation_steps` micro-batches; every `eval_interval` steps an evaluation
   (metrics, loss curve, samples, best/), every `checkpoint_interval` steps (and on SIGINT/SIGTERM) a checkpoint.
5. The end: best/ scored over the whole validation split, its card rewritten with those figures, pushed if asked.

The pieces live in their own modules: arguments.py (what the run is told), init_from.py (the model it starts from),
lora.py (adapters, best/ merged), optimization.py (AdamW, schedule), hardware.py (precision, compile),
checkpointing.py (the output folder), records.py (what people read), evaluation.py (losses, samples).
"""

import json
import math
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerFast

from .arguments import DataArguments, ModelArguments, TrainingArguments, parse_args
from .checkpointing import (
    RunState,
    check_checkpoint_matches,
    describe_output_dir,
    newest_checkpoint,
    prepare_output_dir,
    save_checkpoint,
    set_aside_diverged,
)
from .data import TokenFile, prepare_data
from .evaluation import SEED_PROMPT, estimate_loss, evaluate_split, next_token_loss, sample_stories
from .hardware import can_compile, peak_flops, resolve_mixed_precision
from .hub import push_to_hub
from .init_from import build_model, describe_start, hub_base_model, load_parent, start_summary
from .lora import check_checkpoint_adapters, save_model_folder
from .modeling_tinystories_gpt import TinyStoriesGPTForCausalLM
from .optimization import build_optimizer, learning_rate_at, set_learning_rate
from .records import (
    append_metrics,
    append_samples,
    model_flops_per_token,
    plot_loss_curve,
    read_metrics,
    training_summary,
    truncate_metrics,
)
from .windows import WindowSampler, fixed_eval_batches

__all__ = ["TrainingDiverged", "parse_args", "train"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class StopSignal:
    """Turns SIGINT/SIGTERM into a request to checkpoint and stop at the next optimizer step."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self) -> "StopSignal":
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._request)
        return self

    def _request(self, signum, frame) -> None:
        self.requested = True

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


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
    prepare_output_dir(args, accelerator.is_main_process)
    accelerator.wait_for_everyone()
    set_seed(args.seed)
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)

    # 2. data and tokenizer (built once by the main process, reused from the cache by the others); a parent
    # (--init_from) fixes the model's shape and the tokenizer first
    with accelerator.main_process_first():
        parent = load_parent(model_args, data_args)
        data = load_training_data(data_args, model_args, args, accelerator)

    # 3. model and optimizer, then the state to resume
    model = build_model(model_args, data.tokenizer, parent)
    config = model.config
    if parent is not None:
        accelerator.print(describe_start(model, model_args))
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
        resume(accelerator, model, state, config, args)
    accelerator.init_trackers("tinystories-gpt", config={**asdict(model_args), **asdict(data_args), **asdict(args)})

    # 4. the loop
    throughput = Throughput(tokens_per_step, model_flops_per_token(config, n_params), peak_flops(accelerator.device))
    progress = tqdm(total=args.max_iters, initial=state.step, disable=not accelerator.is_main_process, desc="training")
    model.train()
    if parent is not None and state.step == 0:  # the parent's losses on this data: where the curve starts
        evaluate_and_record(model, state, data, accelerator, throughput, model_args, data_args, args)
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
                evaluate_and_record(model, state, data, accelerator, throughput, model_args, data_args, args)
            if state.step % args.checkpoint_interval == 0 or stop_requested or state.step == args.max_iters:
                save_checkpoint(accelerator, state.step, config, data.tokenizer, args)
            if stop_requested:
                accelerator.print(f"stopped by signal at step {state.step}; continue with --resume")
                break
    progress.close()

    # 5. the end
    result = finish(accelerator, state, data, model_args, data_args, args, interrupted=state.step < args.max_iters)
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


def resume(accelerator: Accelerator, model, state: RunState, config, args: TrainingArguments) -> None:
    """Load the newest checkpoint (model, optimizer, RNGs, run state) and drop the records written after it."""
    checkpoint = newest_checkpoint(args.checkpoints_dir)
    check_checkpoint_matches(checkpoint, config)
    check_checkpoint_adapters(checkpoint, accelerator.unwrap_model(model))
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
        if not self.steps:  # an evaluation before the first step (--init_from) has no throughput to report
            return {}
        tokens_per_second = self.steps * self.tokens_per_step / max(self.seconds, 1e-9)
        record = {"tokens_per_second": tokens_per_second}
        if self.peak:
            record["mfu"] = self.flops_per_token * tokens_per_second / (self.peak * num_processes)
        self.seconds = self.steps = 0
        return record


def evaluate_and_record(model, state, data, accelerator, throughput, model_args, data_args, args) -> None:
    """Losses on the fixed windows (every process), then the records and best/ (the main process)."""
    record = {
        "step": state.step,
        "tokens_seen": state.tokens_seen,
        "train_loss": estimate_loss(model, data.train_eval_batches, accelerator),
        "val_loss": estimate_loss(model, data.val_eval_batches, accelerator),
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
                model_args,
                args,
                metrics={"val_loss": record["val_loss"], "step": state.step},
                evaluation=f"an estimate on {windows} of {data.validation_source}, at step {state.step} of "
                f"{args.max_iters}: interim figures, replaced by a full pass over the split when the run finishes",
                training=training_summary(state.step, state.tokens_seen, data_args, args),
                samples=stories,
            )
    state.best_val_loss = min(state.best_val_loss, record["val_loss"])
    accelerator.wait_for_everyone()


def save_best(
    model, data: TrainingData, model_args: ModelArguments, args: TrainingArguments, *, training: dict, **card
) -> None:
    """Replace best/ (atomically) with `model` (after LoRA: merged, its adapter beside it), its tokenizer and a card
    holding `card`'s figures, the recipe in `training` and the model training started from."""
    save_model_folder(
        model,
        data.tokenizer,
        Path(args.output_dir) / "best",
        loss_curve=Path(args.output_dir) / "loss_curve.png",
        repo_id=args.hub_model_id,
        dataset_id=data.hub_id,
        base_model=hub_base_model(model_args),
        training=start_summary(model_args) | training,
        **card,
    )


def finish(accelerator, state, data, model_args, data_args, args, interrupted: bool) -> dict:
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
            model_args,
            args,
            metrics=final,
            evaluation=f"a full pass over {data.validation_source}: every token predicted once "
            f"({final['tokens']:,} tokens, {final['bytes']:,} UTF-8 bytes)",
            training=training_summary(state.step, state.tokens_seen, data_args, args),
            samples=stories,
        )
        (output_dir / "final_metrics.json").write_text(json.dumps(final, indent=2) + "\n")
        accelerator.print(
            f"\nvalidation (whole split): loss {final['loss']:.4f}, perplexity {final['perplexity']:.2f}, "
            f"bits per byte {final['bits_per_byte']:.4f}\n\nthe best model's story for {SEED_PROMPT!r}:\n\n"
            f"{stories[0]}\n\n{describe_output_dir(output_dir)}"
        )
        if args.push_to_hub:
            push_to_hub(best_dir, args.hub_model_id)
    accelerator.wait_for_everyone()
    return result
