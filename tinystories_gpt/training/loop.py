"""The training loop, read top to bottom in the order a run goes, as nanoGPT's train.py over Accelerate.

train()
  1. set up (run.py): the Accelerator, the output folder held by this run alone, the data, the model and
     optimizer, the checkpoint to resume from
  2. for each optimizer step: its learning rate, the step, an evaluation when due (evaluations.py; under
     --max_time the budget's decision follows the first one), a checkpoint when due or asked for by a signal
  3. finish: best/ scored over the whole validation split, its card, the Hub (evaluations.final_pass)
"""

import math
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..evaluation.losses import next_token_loss
from ..signals import StopSignal, stop_on_signal
from . import budget
from .arguments import DataArguments, ModelArguments, TrainingArguments, parse_args
from .budget import format_seconds, process_start_time
from .checkpoints import hold_output_dir, set_aside_diverged
from .distributed import make_accelerator
from .evaluations import evaluate, evaluation_owed, final_pass
from .optimization import learning_rate_at, set_learning_rate
from .run import Run, set_up

__all__ = ["TrainingDiverged", "parse_args", "train"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def train(model_args: ModelArguments, data_args: DataArguments, args: TrainingArguments) -> dict:
    """Train, evaluate and checkpoint; returns the final metrics and where the best model lies."""
    accelerator = make_accelerator(args)
    with (
        hold_output_dir(Path(args.output_dir), accelerator),
        stop_on_signal("before the first step", "nothing was left half-written; run the same command again"),
    ):
        run = set_up(accelerator, model_args, data_args, args)
        stopped = train_steps(run)
        result = finish(run, interrupted=stopped or not run.done())
        accelerator.end_training()  # also ends the process group: last
    return result


def train_steps(run: Run) -> bool:
    """Optimizer steps until max_iters, or until a stop signal (after a checkpoint); returns whether one stopped it."""
    if evaluation_owed(run):
        with run.clock.timing("evaluations"):
            evaluate(run)
    run.progress = progress_bar(run)
    run.model.train()
    stop_requested = False
    with StopSignal() as stop:
        while not run.done():
            set_learning_rate(run.optimizer, learning_rate_at(run.state.step, run.args))
            loss, stop_requested = optimizer_step(run, stop.requested)
            show_progress(run, loss)

            deciding, replanning = run.budget_decides_now(), run.budget_replans_now()
            steps_before = run.steps_at_last_evaluation
            if deciding or run.evaluation_due():
                with run.clock.timing("evaluations"):
                    costs = evaluate(run, stop=None if deciding else stop)  # the decision needs a whole one
                stop_requested = stop_requested or costs is None
            if deciding:
                run.decide_budget(costs)
            elif replanning and costs is not None:  # from the speed since the last evaluation, and this one's costs
                run.replan_budget(costs, since=steps_before)
            if run.checkpoint_due() or stop_requested:
                with run.clock.timing("checkpoints"):
                    run.save_checkpoint()
            if stop_requested:
                run.accelerator.print(f"stopped by signal at step {run.state.step}; continue with --resume")
                break
    run.progress.close()
    run.clock.add("compile and warm-up", run.throughput.warmup_seconds())
    run.clock.add("training", run.throughput.total_seconds() - run.throughput.warmup_seconds())
    return stop_requested


def optimizer_step(run: Run, stop_requested: bool) -> tuple[float, bool]:
    """Accumulate `gradient_accumulation_steps` micro-batches, clip, step.

    Returns the loss averaged over micro-batches and processes, and whether any process was asked to stop.
    """
    accelerator, args, state = run.accelerator, run.args, run.state
    run.throughput.start_step()
    loss_sum = torch.zeros((), device=accelerator.device)
    for _ in range(args.gradient_accumulation_steps):
        inputs, labels = state.sampler.next_batch()
        with accelerator.accumulate(run.model):  # syncs gradients across processes on the last micro-batch only
            loss = next_token_loss(run.model, inputs, labels)
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
        accelerator.clip_grad_norm_(run.model.parameters(), args.grad_clip)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    if run.ema is not None:
        run.ema.update_parameters(accelerator.unwrap_model(run.model))
    state.step += 1
    state.tokens_seen += run.tokens_per_step
    run.throughput.end_step()
    return mean_loss, stops > 0


def finish(run: Run, interrupted: bool) -> dict:
    """The final pass (unless the run stopped early), then the time each phase took. A signal now leaves the last
    checkpoint and best/ complete."""
    last_checkpoint = run.args.checkpoints_dir / f"step_{run.state.step}"
    if interrupted:
        result = {"step": run.state.step, "interrupted": True, "best_dir": str(run.output_dir / "best")}
    else:
        with (
            run.clock.timing("final pass"),
            stop_on_signal(
                "after the last step", f"{last_checkpoint} and best/ are complete; --resume redoes the rest"
            ),
        ):
            result = final_pass(run)
    run.accelerator.print(
        f"time: {run.clock.summary()}; {format_seconds(budget.now() - process_start_time())} in all"
        + (f" (budget {format_seconds(run.args.max_time)})" if run.budget else "")
        + f"; {run.state.tokens_seen:,} training tokens seen"
    )
    return result


def progress_bar(run: Run) -> tqdm:
    """The bar of the steps, on the main process; its total becomes the chosen max_iters once fixed."""
    return tqdm(
        total=run.args.max_iters, initial=run.state.step, disable=not run.accelerator.is_main_process, desc="training"
    )


def show_progress(run: Run, loss: float) -> None:
    """The step's loss, learning rate, tokens/s and, under --max_time, the time spent, on the bar."""
    postfix = {"loss": f"{loss:.4f}", "lr": f"{learning_rate_at(run.state.step - 1, run.args):.2e}"}
    postfix |= {"tok_s": run.throughput.last} | ({"time": run.budget.describe()} if run.budget else {})
    run.progress.update(1)
    run.progress.set_postfix(postfix)
