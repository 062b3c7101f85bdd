"""A time budget instead of a step count: `--max_time SECONDS` fixes `max_iters` from the run's own measured speed.

The budget counts wall-clock time from the start of the process, so reading the stories, training the tokenizer,
tokenizing and compiling count too. After a few warm-up steps (compilation happens in the first ones), at
`decision_step`, the run has measured what each part costs on this machine: an optimizer step, an evaluation (the
one it just ran), a checkpoint, and, from the evaluation's forwards, the final pass over the whole validation split.
It then takes the largest `max_iters` whose remaining steps, evaluations, checkpoints and final pass fit in the time
left, and behaves from then on exactly as a run given that `max_iters`. The learning-rate schedule needs `max_iters`
only once the warm-up is over, which is why the decision comes no later than `warmup_steps`.
"""

import math
import time
from dataclasses import dataclass

import psutil
from accelerate.utils import broadcast_object_list

MEASURE_AFTER = 3  # steps left out of the measurement: the first ones compile and warm the caches
MEASURED_STEPS = 20  # steps timed before deciding (fewer when the warm-up is shorter)
MIN_WARMUP_STEPS = MEASURE_AFTER + 2
SAFETY = 0.03  # of the time left, for the noise of a shared machine
EXIT_SECONDS = 5.0  # closing trackers and processes after the final pass


def decision_step(warmup_steps: int) -> int:
    """The step after which max_iters is fixed: enough steps to measure, and no later than the end of the warm-up."""
    return min(warmup_steps, MEASURE_AFTER + MEASURED_STEPS)


def process_start_time() -> float:
    """When this process started, on the time.time() clock: the budget includes the interpreter and the imports."""
    return psutil.Process().create_time()


@dataclass(frozen=True)
class MeasuredCosts:
    """Seconds each remaining part of the run takes on this machine."""

    step: float
    evaluation: float
    checkpoint: float
    final_pass: float


def remaining_seconds(max_iters: int, done: int, costs: MeasuredCosts, eval_interval: int, checkpoint_interval: int):
    """Time to go from step `done` to `max_iters`: its steps, evaluations and checkpoints, then the final pass."""

    def events(interval: int) -> int:  # at every multiple of the interval after `done`, and at the last step
        return max_iters // interval - done // interval + (max_iters % interval != 0)

    return (
        (max_iters - done) * costs.step
        + events(eval_interval) * costs.evaluation
        + events(checkpoint_interval) * costs.checkpoint
        + costs.final_pass
    )


def affordable_max_iters(
    seconds_left: float, done: int, costs: MeasuredCosts, eval_interval: int, checkpoint_interval: int
) -> int | None:
    """The largest max_iters (>= done) whose remaining work fits in `seconds_left`; None when not even finishing
    now (the final pass) does."""
    usable = seconds_left * (1 - SAFETY) - EXIT_SECONDS

    def fits(max_iters: int) -> bool:
        return remaining_seconds(max_iters, done, costs, eval_interval, checkpoint_interval) <= usable

    low, high = done, done + max(1, math.ceil(max(usable, 0) / costs.step))  # `high` never fits unless steps are free
    while high - low > 1:  # invariant: low fits (or is `done`), high does not
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    if fits(high):
        return high
    return low if fits(low) else None


class TimeBudget:
    """The deadline of a `--max_time` run and what the run measured on the way to its decision."""

    def __init__(self, max_time: float):
        self.max_time = max_time
        self.started = process_start_time()

    def elapsed(self) -> float:
        return time.time() - self.started

    def seconds_left(self) -> float:
        return self.max_time - self.elapsed()

    def describe(self) -> str:
        """'2m05s/9m30s' for the progress bar."""
        return f"{format_seconds(self.elapsed())}/{format_seconds(self.max_time)}"


def format_seconds(seconds: float) -> str:
    """12.3 -> '12s'; 421 -> '7m01s'."""
    seconds = round(max(seconds, 0.0))
    return f"{seconds}s" if seconds < 60 else f"{seconds // 60}m{seconds % 60:02d}s"


def choose_max_iters(
    budget: TimeBudget,
    step_seconds: float,
    costs: dict,
    final_batches: int,
    done: int,
    args,
    accelerator,
    step_cap: int | None = None,
) -> int:
    """Fix max_iters from what this run measured; every process gets the main process's choice.

    `costs` are an evaluation's parts in seconds ("evaluation", "losses": its forwards, "best": writing best/);
    `final_batches` the batches of the final pass over the validation split; `step_cap` the user's --max_iters.
    """
    processes = accelerator.num_processes
    forward_seconds = costs["losses"] / max(2 * math.ceil(args.eval_iters / processes), 1)
    measured = MeasuredCosts(
        step=step_seconds,
        evaluation=costs["evaluation"],
        # a checkpoint writes the weights and AdamW's two moments: about three times what best/ writes
        checkpoint=3 * costs["best"] + 0.5,
        # the final pass's forwards, then a story, best/ rewritten and loaded again: an evaluation's other parts
        final_pass=math.ceil(final_batches / processes) * forward_seconds + costs["evaluation"] - costs["losses"] + 1,
    )
    seconds_left = budget.seconds_left()
    affordable = affordable_max_iters(seconds_left, done, measured, args.eval_interval, args.checkpoint_interval)
    chosen = broadcast_object_list([min(affordable or 0, step_cap or math.inf)])[0]
    if chosen < args.warmup_steps:
        raise ValueError(
            f"--max_time {args.max_time:g} leaves {max(seconds_left, 0):.0f} s after {budget.elapsed():.0f} s of "
            f"preparation and {done} steps, which buys {max(chosen - done, 0)} more steps at {measured.step:.3f} s "
            f"each (evaluations {measured.evaluation:.1f} s, final pass {measured.final_pass:.1f} s): fewer than "
            f"the {args.warmup_steps} warm-up steps. Raise --max_time or lower --warmup_steps."
        )
    accelerator.print(
        f"\ntime budget: {format_seconds(budget.elapsed())} spent, {format_seconds(seconds_left)} left; measured "
        f"{measured.step:.3f} s per step, {measured.evaluation:.1f} s per evaluation, {measured.final_pass:.1f} s "
        f"for the final pass: max_iters = {chosen:,}" + (" (the --max_iters cap)" if chosen == step_cap else "")
    )
    return chosen
