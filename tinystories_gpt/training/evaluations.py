"""What a run measures of its model and keeps: an evaluation every `eval_interval` steps (losses on fixed windows,
records, a sample story, best/ on a new best held-out loss), and the final pass over the whole validation split.

The losses are computed by every process on its share of the windows; everything written comes from the main
process, from a plain copy of the model (generate() on a sharded one would deadlock).
"""

import json
import math

import torch

from ..evaluation.losses import estimate_loss, evaluate_split
from ..evaluation.stories import SEED_PROMPT, sample_stories
from ..evaluation.story_figures import describe, stories_of
from ..export.hub import push_to_hub
from ..files import folder_damage, write_file
from ..modeling_tinystories_gpt import TinyStoriesGPTForCausalLM
from ..signals import StopSignal
from . import budget
from .checkpoints import describe_output_dir
from .distributed import full_state_dict, is_sharded
from .lora import save_model_folder
from .optimization import learning_rate_at
from .parent import hub_base_model, start_summary
from .records import append_metrics, append_samples, evaluation_missing, plot_loss_curve, read_metrics, training_summary
from .run import Run
from .shape import shape_summary

EVAL_BATCHES_PER_STOP_CHECK = 4  # per process: a stop request cuts an evaluation short within this many batches


def evaluation_owed(run: Run) -> bool:
    """Whether the run must evaluate before its first step: a parent's losses on this data start the records at
    step 0, and an evaluation that a stop cut short is owed on resume."""
    if run.from_parent and run.state.step == 0:
        return True
    return evaluation_missing(run.output_dir / "metrics.jsonl", run.state.step, run.args)


def evaluate(run: Run, stop: StopSignal | None = None) -> dict[str, float] | None:
    """Losses on the fixed windows, then the records, a sample story and best/ if the held-out loss is a new best.

    Returns what its parts took in seconds ("evaluation", "losses", "best"), which a --max_time run plans with;
    None, having recorded nothing, when `stop` was requested during the losses.
    """
    started = budget.now()
    train_loss = estimate_loss_unless_stopped(run, run.data.train_eval_batches, stop)
    held_out_loss = estimate_loss_unless_stopped(run, run.data.held_out_batches, stop)
    average = run.ema.module if run.ema is not None else None
    average_loss = estimate_loss_unless_stopped(run, run.data.held_out_batches, stop, average) if average else None
    if train_loss is None or held_out_loss is None or (average is not None and average_loss is None):
        return None
    state, name = run.state, run.data.held_out_name
    record = {
        "step": state.step,
        "tokens_seen": state.tokens_seen,
        "train_loss": train_loss,
        f"{name}_loss": held_out_loss,
        "lr": learning_rate_at(state.step - 1, run.args),
        "max_iters": run.args.max_iters,  # the plan in force (a --max_time run's re-plans show here)
        **run.throughput.interval_record(run.accelerator.num_processes),
        **({f"{name}_loss_ema": average_loss} if average is not None else {}),
    }
    seconds = {"losses": budget.now() - started, "best": 0.0}
    run.accelerator.log(record, step=state.step)
    plain_model = main_process_copy(run)
    if run.accelerator.is_main_process:
        append_metrics(run.output_dir / "metrics.jsonl", record)
        plot_loss_curve(read_metrics(run.output_dir / "metrics.jsonl"), run.output_dir / "loss_curve.png")
        story_started = budget.now()
        stories = sample_stories(plain_model, run.data.tokenizer, run.args.num_samples, seed=run.args.seed + state.step)
        # one generate() to the end of the context (num_samples at once), as each of the final pass's stories costs
        seconds["story"] = budget.now() - story_started if stories else 0.0
        append_samples(run.output_dir / "samples.md", state.step, stories)
        print(
            f"\nstep {state.step}: train loss {train_loss:.4f}, {name} loss {held_out_loss:.4f}"
            + (f"\n{stories[0]}" if stories else "")
        )
        best_model, best_loss = plain_model, held_out_loss
        if average is not None and average_loss < held_out_loss:  # the moving average is the better model now
            best_model, best_loss = average, average_loss
        if best_loss < state.best_val_loss:
            best_started = budget.now()
            save_interim_best(run, best_model, best_loss, stories)
            seconds["best"] = budget.now() - best_started
    state.best_val_loss = min(state.best_val_loss, held_out_loss, average_loss if average is not None else math.inf)
    run.accelerator.wait_for_everyone()
    seconds["evaluation"] = budget.now() - started
    run.steps_at_last_evaluation = len(run.throughput.step_seconds)
    return seconds


def estimate_loss_unless_stopped(run: Run, batches: list, stop: StopSignal | None, model=None) -> float | None:
    """`estimate_loss` of `model` (the run's, by default) a few batches per process at a time; None as soon as any
    process was asked to `stop`."""
    accelerator = run.accelerator
    size = EVAL_BATCHES_PER_STOP_CHECK * accelerator.num_processes
    summed = 0.0
    for start in range(0, len(batches), size):
        if stop is not None and stop.agreed(accelerator):
            return None
        chunk = batches[start : start + size]
        summed += estimate_loss(model or run.model, chunk, accelerator) * len(chunk)  # every batch holds as many labels
    return summed / len(batches)


def main_process_copy(run: Run) -> TinyStoriesGPTForCausalLM | None:
    """The whole model on the main process (None elsewhere): unwrapped, or rebuilt from weights gathered from
    every process when they are sharded (every process must call this)."""
    accelerator = run.accelerator
    if not is_sharded(accelerator):
        return accelerator.unwrap_model(run.model) if accelerator.is_main_process else None
    state_dict = full_state_dict(accelerator, run.model)
    if not accelerator.is_main_process:
        return None
    plain = TinyStoriesGPTForCausalLM(run.config).to(accelerator.device)
    plain.load_state_dict(state_dict)
    return plain


def save_interim_best(run: Run, model: torch.nn.Module, held_out_loss: float, stories: list[str]) -> None:
    """best/ with the figures of this evaluation, until the final pass replaces them."""
    args, step = run.args, run.state.step
    windows = f"{args.eval_iters} fixed batches of {args.eval_batch_size} x {run.config.block_size}-token windows"
    of_steps = f"of {args.max_iters}" if args.max_iters else "(before the run chose its max_iters)"
    save_best(
        run,
        model,
        metrics={
            "loss": held_out_loss,
            "step": step,
            "split": "dev" if run.data.held_out_name == "dev" else "validation",
        },
        evaluation=f"an estimate on {windows} of {run.data.held_out_source}, at step {step} {of_steps}: "
        "interim figures, replaced by a full pass over the split when the run finishes",
        samples=stories,
    )


def save_best(run: Run, model: torch.nn.Module, **card) -> None:
    """Replace best/ (atomically) with `model` (after LoRA: merged, its adapter beside it), its tokenizer and a card
    holding `card`'s figures, the recipe, and the model training started from."""
    save_model_folder(
        model,
        run.data.tokenizer,
        run.output_dir / "best",
        loss_curve=run.output_dir / "loss_curve.png",
        repo_id=run.args.hub_model_id,
        dataset_id=run.data.hub_id,
        base_model=hub_base_model(run.model_args),
        training=start_summary(run.model_args)
        | shape_summary(run.state.shape_choice)
        | training_summary(run.state.step, run.state.tokens_seen, run.data_args, run.args),
        **card,
    )


def final_pass(run: Run) -> dict:
    """Score best/ over the whole validation split, write the figures into its card and final_metrics.json, push if
    asked; returns them with the step and where best/ lies."""
    accelerator, best_dir = run.accelerator, run.output_dir / "best"
    result = {"step": run.state.step, "interrupted": False, "best_dir": str(best_dir)}
    if not best_dir.exists():
        return result
    damage = folder_damage(best_dir)
    if damage:  # by its manifest: changed after this run wrote it
        raise ValueError(
            f"{best_dir} is not the model this run saved: {damage}. Restore it, or start the run again with "
            "--overwrite_output_dir"
        )
    # every process scores its share of the split with its own plain copy of best/ (no collective in the forward)
    best_model = TinyStoriesGPTForCausalLM.from_pretrained(best_dir).to(accelerator.device)
    final = evaluate_split(
        best_model,
        run.data.val_split,
        run.args.eval_batch_size,
        progress=accelerator.is_main_process,
        accelerator=accelerator,
    )
    if accelerator.is_main_process:
        stories = sample_stories(best_model, run.data.tokenizer, max(run.args.num_samples, 1), seed=run.args.seed)
        held_out = run.data.held_out_stories  # the dev split's when there is one: figures to tune on
        final["story_figures"] = stories_of(
            best_model, run.data.tokenizer, held_out, run.data.train_texts, run.args.seed
        )
        result.update(final, stories=stories)
        save_best(
            run,
            best_model,
            metrics=final,
            evaluation=f"a full pass over {run.data.validation_source}: every token predicted once "
            f"({final['tokens']:,} tokens, {final['bytes']:,} UTF-8 bytes)",
            samples=stories,
        )
        if run.state.shape_choice:  # what --small_shape measured and chose
            final["shape_choice"] = run.state.shape_choice
        write_file(run.output_dir / "final_metrics.json", json.dumps(final, indent=2) + "\n", "the final metrics")
        accelerator.print(
            f"\nvalidation (whole split): loss {final['loss']:.4f}, perplexity {final['perplexity']:.2f}, "
            f"bits per byte {final['bits_per_byte']:.4f}\n{describe(final['story_figures'])}\n\n"
            f"the best model's story for {SEED_PROMPT!r}:\n\n"
            f"{stories[0]}\n\n{describe_output_dir(run.output_dir)}"
        )
        if run.args.push_to_hub:
            push_to_hub(best_dir, run.args.hub_model_id)
    accelerator.wait_for_everyone()
    return result
