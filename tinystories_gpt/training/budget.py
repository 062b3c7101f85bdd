"""A time budget instead of a step count: `--max_time SECONDS` fixes `max_iters` from the run's own measured speed.

The budget counts wall-clock time from the start of the process, so reading the stories, training the tokenizer,
tokenizing and compiling count too. After a few warm-up steps (compilation happens in the first ones), at
`TimeBudget.decision_step`, the run has measured what each part costs on this machine: an optimizer step, an
evaluation (the one it just ran), a checkpoint, and, from the evaluation's forwards, the final pass over the whole
validation split. It then takes the largest `max_iters` whose remaining steps, evaluations, checkpoints and final
pass fit in the time left, and behaves from then on exactly as a run given that `max_iters`. The learning-rate
schedule needs `max_iters` only once the warm-up is over, which is why the decision comes no later than
`warmup_steps`.
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


def now() -> float:
    """The clock every duration of a run is read from: the wall clock, which the process's start time is on.

    Called as `budget.now()`, so that a test can run the budget's logic on a clock of its own.
    """
    return time.time()


def process_start_time() -> float:
    """When this process started, on the `now()` clock: the budget includes the interpreter and the imports."""
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


def measure_costs(
    step_seconds: float,
    evaluation: dict[str, float],
    final_batches: int,
    final_stories: int,
    eval_iters: int,
    processes: int,
) -> MeasuredCosts:
    """What each remaining part of a run costs, from a typical step and the parts of one evaluation in seconds
    ("evaluation", "losses": its forwards, "story": its sample stories, "best": writing best/); `final_batches` are
    the final pass's batches, `final_stories` the stories it writes for their figures."""
    forward_seconds = evaluation["losses"] / max(2 * math.ceil(eval_iters / processes), 1)
    other_parts = evaluation["evaluation"] - evaluation["losses"]  # the story, best/ written
    return MeasuredCosts(
        step=step_seconds,
        evaluation=evaluation["evaluation"],
        # a checkpoint writes the weights and AdamW's two moments: about three times what best/ writes
        checkpoint=3 * evaluation["best"] + 0.5,
        # the final pass's forwards; its stories, each one generate() to the end of the context like an evaluation's
        # samples; then a story, best/ rewritten and loaded again: an evaluation's other parts
        final_pass=math.ceil(final_batches / processes) * forward_seconds
        + final_stories * evaluation.get("story", 0.0)
        + other_parts
        + 1,
    )


class TimeBudget:
    """The deadline of a `--max_time` run, and its decision: after `decision_step` steps, the `max_iters` that fits.

    `step_cap` is the user's --max_iters, an upper bound on the number chosen.
    """

    def __init__(self, max_time: float, warmup_steps: int, step_cap: int | None = None, spent: float = 0.0):
        self.max_time = max_time
        self.started = process_start_time() - spent  # a resumed run's budget goes on from what the others spent
        self.decision_step = min(warmup_steps, MEASURE_AFTER + MEASURED_STEPS)  # no later than the warm-up's end
        self.step_cap = step_cap

    def elapsed(self) -> float:
        return now() - self.started

    def seconds_left(self) -> float:
        return self.max_time - self.elapsed()

    def describe(self) -> str:
        """'2m05s/9m30s' for the progress bar."""
        return f"{format_seconds(self.elapsed())}/{format_seconds(self.max_time)}"

    def check_started_in_time(self) -> None:
        """Refuse a budget spent before the first step."""
        if self.seconds_left() <= 0:
            raise ValueError(
                f"--max_time {self.max_time:g} was spent before the first step ({self.elapsed():.0f} s reading, "
                "tokenizing and building the model). Raise --max_time."
            )

    def decides_at(self, step: int, max_iters: int | None) -> bool:
        """Whether max_iters is to be fixed after this step: not yet fixed, and enough steps measured."""
        return max_iters is None and step == self.decision_step

    def choose_max_iters(self, measured: MeasuredCosts, done: int, args, accelerator) -> int:
        """Fix max_iters from what this run measured; every process gets the main process's choice."""
        seconds_left = self.seconds_left()
        affordable = affordable_max_iters(seconds_left, done, measured, args.eval_interval, args.checkpoint_interval)
        chosen = broadcast_object_list([min(affordable or 0, self.step_cap or math.inf)])[0]
        if chosen < args.warmup_steps:
            raise ValueError(
                f"--max_time {args.max_time:g} leaves {max(seconds_left, 0):.0f} s after {self.elapsed():.0f} s of "
                f"preparation and {done} steps, which buys {max(chosen - done, 0)} more steps at {measured.step:.3f} "
                f"s each (evaluations {measured.evaluation:.1f} s, final pass {measured.final_pass:.1f} s): fewer "
                f"than the {args.warmup_steps} warm-up steps. Raise --max_time or lower --warmup_steps."
            )
        accelerator.print(
            f"\ntime budget: {format_seconds(self.elapsed())} spent, {format_seconds(seconds_left)} left; measured "
            f"{measured.step:.3f} s per step, {measured.evaluation:.1f} s per evaluation, {measured.final_pass:.1f} s "
            f"for the final pass: max_iters = {chosen:,}"
            + (" (the --max_iters cap)" if chosen == self.step_cap else "")
        )
        return chosen

    def replan(self, measured: MeasuredCosts, done: int, args, accelerator, floor: int) -> int:
        """max_iters again from what the run measured since its last evaluation, no lower than `floor` (a plan
        whose decay would already have begun); every process gets the main process's plan."""
        affordable = affordable_max_iters(
            self.seconds_left(), done, measured, args.eval_interval, args.checkpoint_interval
        )
        planned = broadcast_object_list([max(min(affordable or 0, self.step_cap or math.inf), floor)])[0]
        if planned != args.max_iters:
            accelerator.print(
                f"\ntime budget: {format_seconds(self.elapsed())} spent, {format_seconds(self.seconds_left())} left; "
                f"{measured.step:.3f} s per step since the last evaluation: max_iters {args.max_iters:,} -> {planned:,}"
            )
        return planned


def format_seconds(seconds: float) -> str:
    """12.3 -> '12s'; 421 -> '7m01s'."""
    seconds = round(max(seconds, 0.0))
    return f"{seconds}s" if seconds < 60 else f"{seconds // 60}m{seconds % 60:02d}s"
