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
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerFast

from .arguments import DataArguments, ModelArguments, TrainingArguments, check_fits_in_memory, parse_args
from .budget import TimeBudget, choose_max_iters, decision_step, format_seconds, process_start_time
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
from .distributed import engine_name, full_state_dict, is_sharded, make_accelerator
from .evaluation import SEED_PROMPT, estimate_loss, evaluate_split, next_token_loss, sample_stories
from .faults import StopSignal, stop_on_signal
from .hardware import can_compile, peak_flops
from .hub import push_to_hub
from .init_from import build_model, describe_start, hub_base_model, load_parent, start_summary
from .lora import check_checkpoint_adapters, save_model_folder
from .modeling_tinystories_gpt import TinyStoriesGPTForCausalLM
from .optimization import build_optimizer, learning_rate_at, set_learning_rate
from .records import (
    PhaseClock,
    Throughput,
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
from .windows import DeviceBatches, WindowSampler, fixed_eval_batches

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
    held_out_batches: list  # fixed windows of the dev split if there is one, else of the validation split
    held_out_name: str  # "dev" or "val", the records' key prefix
    held_out_source: str  # the held-out split in words, for the card
    val_split: TokenFile
    hub_id: str | None
    validation_source: str
    seconds: dict[str, float]


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
        dev_stories=data_args.dev_stories,
    )
    train_tokens, held_out_tokens = prepared.train.tokens(), (prepared.dev or prepared.validation).tokens()
    block_size, batch_size, eval_batch_size = model_args.block_size, args.batch_size, args.eval_batch_size
    return TrainingData(
        tokenizer=prepared.tokenizer,
        train_tokens=prepared.train.num_tokens,
        train_sampler=WindowSampler(
            train_tokens, block_size, batch_size, args.seed, accelerator.process_index, accelerator.num_processes
        ),
        # every process builds the same fixed lists; estimate_loss gives each its share
        train_eval_batches=fixed_eval_batches(
            train_tokens, block_size, eval_batch_size, args.eval_iters, args.seed + 1
        ),
        held_out_batches=fixed_eval_batches(
            held_out_tokens, block_size, eval_batch_size, args.eval_iters, args.seed + 2
        ),
        held_out_name="dev" if prepared.dev else "val",
        held_out_source=(
            f"the dev split (the last {data_args.dev_stories} train stories of {data_args.dataset}, held out)"
            if prepared.dev
            else prepared.validation_source
        ),
        val_split=prepared.validation,
        hub_id=prepared.hub_id,
        validation_source=prepared.validation_source,
        seconds=prepared.seconds,
    )


def train(model_args: ModelArguments, data_args: DataArguments, args: TrainingArguments) -> dict:
    """Train, evaluate and checkpoint; returns the final metrics and where the best model lies."""
    # 1. the Accelerator and the output folder, held by this run alone (a stop signal until the loop ends it at once)
    accelerator = make_accelerator(args)
    with (
        hold_output_dir(Path(args.output_dir), accelerator),
        stop_on_signal("before the first step", "nothing was left half-written; run the same command again"),
    ):
        return train_in_output_dir(accelerator, model_args, data_args, args)


def train_in_output_dir(
    accelerator: Accelerator, model_args: ModelArguments, data_args: DataArguments, args: TrainingArguments
) -> dict:
    """`train`, once the output folder is this run's alone."""
    clock = PhaseClock()
    prepare_output_dir(args, accelerator.is_main_process)
    accelerator.wait_for_everyone()
    set_seed(args.seed)
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)

    # 2. data and tokenizer (built once by the main process, reused from the cache by the others); a parent
    # (--init_from) fixes the model's shape and the tokenizer first
    if model_args.lora_r and is_sharded(accelerator):  # merging and resuming adapters need the whole model
        raise ValueError(
            "--lora_r under FSDP is not supported: LoRA trains a few adapters on a model that fits one device, so "
            "launch it with configs/accelerate/ddp.yaml or as one process."
        )
    with accelerator.main_process_first():
        parent = load_parent(model_args, data_args)  # fills in the shape flags a parent fixes
        check_fits_in_memory(model_args, data_args, args, accelerator.device)  # before any data work
        data = load_training_data(data_args, model_args, args, accelerator)
    for phase, seconds in data.seconds.items():
        clock.add(phase, seconds)

    # 3. model and optimizer, then the state to resume
    model = build_model(model_args, data.tokenizer, parent)
    config = model.config
    if parent is not None:
        accelerator.print(describe_start(model, model_args))
    n_params = model.num_parameters()
    optimizer = build_optimizer(model, args, fused=accelerator.device.type == "cuda")
    if args.compile and can_compile(accelerator):
        model.compile()  # in place, unlike torch.compile(model): checkpoints keep their plain key names
    model, optimizer = accelerator.prepare(model, optimizer)
    state = RunState(DeviceBatches(data.train_sampler, accelerator.device))
    accelerator.register_for_checkpointing(state)
    tokens_per_step = args.batch_size * args.gradient_accumulation_steps * config.block_size * accelerator.num_processes
    print_run_plan(accelerator, config, n_params, tokens_per_step, data.train_tokens, args)
    if args.resume:
        resume(accelerator, model, state, config, args)
    accelerator.init_trackers("tinystories-gpt", config={**asdict(model_args), **asdict(data_args), **asdict(args)})

    # 4. the loop
    budget = TimeBudget(args.max_time) if args.max_time else None
    if budget and budget.seconds_left() <= 0:
        raise ValueError(
            f"--max_time {args.max_time:g} was spent before the first step ({budget.elapsed():.0f} s reading, "
            "tokenizing and building the model). Raise --max_time."
        )
    step_cap = args.max_iters  # with --max_time, an upper bound on the number chosen
    if budget:
        args = replace(args, max_iters=state.chosen_max_iters)  # None until chosen (or as a resumed run chose it)
    throughput = Throughput(tokens_per_step, model_flops_per_token(config, n_params), peak_flops(accelerator.device))
    progress = tqdm(total=args.max_iters, initial=state.step, disable=not accelerator.is_main_process, desc="training")
    model.train()
    if parent is not None and state.step == 0:  # the parent's losses on this data: where the curve starts
        with clock.timing("evaluations"):
            evaluate_and_record(model, state, data, accelerator, throughput, model_args, data_args, args)
    elif evaluation_missing(Path(args.output_dir) / "metrics.jsonl", state.step, args):  # a stop had cut it short
        evaluate_and_record(model, state, data, accelerator, throughput, model_args, data_args, args)
    stop_requested = False
    with StopSignal() as stop:
        while args.max_iters is None or state.step < args.max_iters:
            throughput.start_step()
            step_loss, stop_requested = optimizer_step(model, optimizer, state, args, accelerator, stop.requested)
            state.step += 1
            state.tokens_seen += tokens_per_step
            throughput.end_step()
            progress.update(1)
            postfix = {"loss": f"{step_loss:.4f}", "lr": f"{learning_rate_at(state.step - 1, args):.2e}"}
            postfix |= {"tok_s": throughput.last} | ({"time": budget.describe()} if budget else {})
            progress.set_postfix(postfix)

            choosing = budget and args.max_iters is None and state.step == decision_step(args.warmup_steps)
            if choosing or state.step % args.eval_interval == 0 or state.step == args.max_iters:
                with clock.timing("evaluations"):
                    interruptible = None if choosing else stop  # when its costs fix max_iters, it must finish
                    costs = evaluate_and_record(
                        model, state, data, accelerator, throughput, model_args, data_args, args, interruptible
                    )
                stop_requested = stop_requested or costs is None
            if choosing:  # from here on, exactly the run that was given this max_iters
                final_batches = math.ceil(data.val_split.num_tokens / (config.block_size * args.eval_batch_size))
                state.chosen_max_iters = choose_max_iters(
                    budget, throughput.typical_step(), costs, final_batches, state.step, args, accelerator, step_cap
                )
                args = replace(args, max_iters=state.chosen_max_iters)
                progress.total = args.max_iters
            if state.step % args.checkpoint_interval == 0 or stop_requested or state.step == args.max_iters:
                with clock.timing("checkpoints"):
                    save_checkpoint(accelerator, state.step, config, data.tokenizer, args)
            if stop_requested:
                accelerator.print(f"stopped by signal at step {state.step}; continue with --resume")
                break
    progress.close()
    clock.add("compile and warm-up", throughput.warmup_seconds())
    clock.add("training", throughput.total_seconds() - throughput.warmup_seconds())

    # 5. the end (a stop now leaves the last checkpoint and best/ complete)
    interrupted = stop_requested or args.max_iters is None or state.step < args.max_iters
    last_checkpoint = args.checkpoints_dir / f"step_{state.step}"
    with (
        clock.timing("final pass"),
        stop_on_signal("after the last step", f"{last_checkpoint} and best/ are complete; --resume redoes the rest"),
    ):
        result = finish(accelerator, state, data, model_args, data_args, args, interrupted=interrupted)
    accelerator.print(
        f"time: {clock.summary()}; {format_seconds(time.time() - process_start_time())} in all"
        + (f" (budget {format_seconds(args.max_time)})" if budget else "")
        + f"; {state.tokens_seen:,} training tokens seen"
    )
    accelerator.end_training()  # also ends the process group: last
    return result


def print_run_plan(accelerator, config, n_params: int, tokens_per_step: int, train_tokens: int, args) -> None:
    """The model, the effective batch, the token budget and the device, before the first step."""
    if args.max_iters is None or args.max_time:
        plan = (
            f"time budget: {format_seconds(args.max_time)} from the start of the process; max_iters is chosen after "
            f"{decision_step(args.warmup_steps)} steps from the measured speed"
            + (f" (at most {args.max_iters:,})" if args.max_iters else "")
        )
    else:
        plan = f"token budget: {token_budget(args.max_iters, tokens_per_step, train_tokens)}"
    accelerator.print(
        f"model: {n_params / 1e6:.2f}M parameters, {config.n_layer} layers x {config.n_head} heads x "
        f"{config.n_embd} wide, context {config.block_size}, vocabulary {config.vocab_size}\n"
        f"effective batch: {args.batch_size} sequences x {args.gradient_accumulation_steps} accumulation x "
        f"{accelerator.num_processes} processes = {tokens_per_step:,} tokens per optimizer step\n"
        f"{plan}\n"
        f"device: {accelerator.device}, mixed precision: {accelerator.mixed_precision}, "
        f"engine: {engine_name(accelerator)}, processes: {accelerator.num_processes}"
    )


def token_budget(max_iters: int, tokens_per_step: int, train_tokens: int) -> str:
    """'3,400 steps x 2,048 = 6,963,200 tokens (9.5 epochs of 735,360 training tokens)'"""
    tokens = max_iters * tokens_per_step
    return (
        f"{max_iters:,} steps x {tokens_per_step:,} = {tokens:,} tokens "
        f"({tokens / max(train_tokens, 1):.1f} epochs of {train_tokens:,} training tokens)"
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
        inputs, labels = state.sampler.next_batch()
        with accelerator.accumulate(model):  # syncs gradients across processes on the last micro-batch only
            loss = next_token_loss(model, inputs, labels)
            accelerator.backward(loss)
        loss_sum += loss.detach()
    # One collective and one host sync per step: the mean loss of all processes (a NaN on any of them makes it
    # NaN on every one, so they all stop together) and the stop requests of any.
    stop_flag = torch.tensor(float(stop_requested), device=accelerator.device)
    totals = torch.stack([loss_sum / args.gradient_accumulation_steps, stop_flag])
    mean_loss, stops = accelerator.reduce(totals, reduction="sum").tolist()
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


def evaluate_and_record(
    model, state, data, accelerator, throughput, model_args, data_args, args, stop: StopSignal | None = None
) -> dict | None:
    """Losses on the fixed windows and the model's weights (every process), then the records, samples and best/
    (the main process, on a plain copy of the model: generate() on a sharded one would deadlock).

    Returns what its parts took, in seconds ("evaluation", "losses", "best"), for a --max_time run's plan; None,
    having recorded nothing, when `stop` was requested during the losses.
    """
    started = time.perf_counter()
    train_loss = estimate_loss_unless_stopped(model, data.train_eval_batches, accelerator, stop)
    held_out_loss = estimate_loss_unless_stopped(model, data.held_out_batches, accelerator, stop)
    if train_loss is None or held_out_loss is None:
        return None
    record = {
        "step": state.step,
        "tokens_seen": state.tokens_seen,
        "train_loss": train_loss,
        f"{data.held_out_name}_loss": held_out_loss,
        "lr": learning_rate_at(state.step - 1, args),
        **throughput.interval_record(accelerator.num_processes),
    }
    seconds = {"losses": time.perf_counter() - started, "best": 0.0}
    accelerator.log(record, step=state.step)
    plain_model = main_process_copy(accelerator, model)
    if accelerator.is_main_process:
        output_dir = Path(args.output_dir)
        append_metrics(output_dir / "metrics.jsonl", record)
        plot_loss_curve(read_metrics(output_dir / "metrics.jsonl"), output_dir / "loss_curve.png")
        stories = sample_stories(plain_model, data.tokenizer, args.num_samples, seed=args.seed + state.step)
        append_samples(output_dir / "samples.md", state.step, stories)
        print(
            f"\nstep {state.step}: train loss {record['train_loss']:.4f}, {data.held_out_name} loss {held_out_loss:.4f}"
            + (f"\n{stories[0]}" if stories else "")
        )
        if held_out_loss < state.best_val_loss:
            best_started = time.perf_counter()
            windows = (
                f"{args.eval_iters} fixed batches of {args.eval_batch_size} x {model_args.block_size}-token windows"
            )
            of_steps = f"of {args.max_iters}" if args.max_iters else "(before the run chose its max_iters)"
            save_best(
                plain_model,
                data,
                model_args,
                args,
                metrics={
                    "loss": held_out_loss,
                    "step": state.step,
                    "split": "dev" if data.held_out_name == "dev" else "validation",
                },
                evaluation=f"an estimate on {windows} of {data.held_out_source}, at step {state.step} {of_steps}: "
                "interim figures, replaced by a full pass over the split when the run finishes",
                training=training_summary(state.step, state.tokens_seen, data_args, args),
                samples=stories,
            )
            seconds["best"] = time.perf_counter() - best_started
    state.best_val_loss = min(state.best_val_loss, held_out_loss)
    accelerator.wait_for_everyone()
    seconds["evaluation"] = time.perf_counter() - started
    return seconds


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


def main_process_copy(accelerator: Accelerator, model) -> TinyStoriesGPTForCausalLM | None:
    """The whole model on the main process (None elsewhere): unwrapped, or rebuilt from weights gathered from
    every process when they are sharded (every process must call this)."""
    if not is_sharded(accelerator):
        return accelerator.unwrap_model(model) if accelerator.is_main_process else None
    state_dict = full_state_dict(accelerator, model)
    if not accelerator.is_main_process:
        return None
    plain = TinyStoriesGPTForCausalLM(accelerator.unwrap_model(model).config).to(accelerator.device)
    plain.load_state_dict(state_dict)
    return plain


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
        best_model, data.val_split, args.eval_batch_size, progress=accelerator.is_main_process, accelerator=accelerator
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
