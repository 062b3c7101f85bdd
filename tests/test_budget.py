"""--max_time: max_iters chosen from the run's own measured speed, kept on resume, agreed by every process.

The runs here measure their speed on a FakeClock (tests/runs.py): a micro-batch takes a known time and nothing else
takes any, so each choice is known in advance and no test depends on how busy the machine is. Whether a real run
keeps its budget on a real machine is a benchmark (the quickstart's figures), not a test.
"""

import os
import re
import subprocess
import sys

import pytest
import torch
from runs import FakeClock, fake_clock_script, signal_after_checkpoint, tiny_args, without
from safetensors.torch import load_file

from tinystories_gpt.cli import train as train_cli
from tinystories_gpt.training import evaluations
from tinystories_gpt.training.budget import MeasuredCosts, affordable_max_iters, measure_costs, remaining_seconds
from tinystories_gpt.training.loop import parse_args, train
from tinystories_gpt.training.records import read_metrics

COSTS = MeasuredCosts(step=0.1, evaluation=2.0, checkpoint=1.0, final_pass=5.0)
STEP_SECONDS = 0.1  # tiny_args accumulates 2 micro-batches per step


def test_the_affordable_max_iters_is_the_largest_that_fits():
    # 10 steps done; each further step 0.1 s, an evaluation every 100 steps, a checkpoint every 500
    chosen = affordable_max_iters(100.0, 10, COSTS, eval_interval=100, checkpoint_interval=500)
    usable = 100.0 * 0.97 - 5.0
    assert remaining_seconds(chosen, 10, COSTS, 100, 500) <= usable < remaining_seconds(chosen + 1, 10, COSTS, 100, 500)
    # by hand: 690 more steps (69 s), evaluations at 100, ..., 700 (14 s), checkpoints at 500 and 700 (2 s), the
    # final pass (5 s): 90 s of the 92 usable; one step more adds an evaluation and a checkpoint at step 701
    assert chosen == 700
    assert affordable_max_iters(1.0, 10, COSTS, 100, 500) is None  # not even the final pass fits


def test_the_final_pass_is_costed_with_the_stories_it_writes():
    """The final pass writes 21 stories for their figures, each one generate() to the end of the context like an
    evaluation's samples (timed as its "story"): left out, the AMD quickstart overran its budget by 13 s."""
    evaluation = {"evaluation": 4.0, "losses": 2.0, "story": 0.5, "best": 1.0}
    # 4 evaluation batches a process: 2 s of forwards over 2 x 4 batches, 0.25 s each
    costs = measure_costs(0.1, evaluation, final_batches=40, final_stories=21, eval_iters=8, processes=2)
    assert costs.final_pass == 20 * 0.25 + 21 * 0.5 + (4.0 - 2.0) + 1
    assert costs.checkpoint == 3 * 1.0 + 0.5
    without_stories = measure_costs(0.1, {**evaluation, "story": 0.0}, 40, 21, 8, 2)
    assert costs.final_pass - without_stories.final_pass == 21 * 0.5


def budget_args(tmp_path, *extra: str) -> list[str]:
    """A tiny run on a time budget instead of a step count, deciding after its 8 warm-up steps."""
    argv = without(
        tiny_args(tmp_path, "--warmup_steps", "8", "--eval_interval", "50", "--checkpoint_interval", "50"),
        "--max_iters",
    )
    return [*argv, *extra]


def chosen_max_iters(stdout: str) -> int:
    return int(re.search(r"for the final pass: max_iters = ([\d,]+)", stdout).group(1).replace(",", ""))


@pytest.mark.slow
def test_a_budgeted_run_chooses_what_fits_and_ends_within_its_budget(tmp_path, monkeypatch, capsys):
    clock = FakeClock(STEP_SECONDS / 2)
    clock.install(monkeypatch.setattr)
    train(*parse_args(budget_args(tmp_path, "--max_time", "30")))
    out = capsys.readouterr().out
    # at the decision (step 8) the clock says 0.8 s spent; steps take 0.1 s, evaluations and best/ no time, so a
    # checkpoint is costed at 0.5 s and the final pass at 1 s
    measured = MeasuredCosts(step=STEP_SECONDS, evaluation=0.0, checkpoint=0.5, final_pass=1.0)
    expected = affordable_max_iters(30 - 8 * STEP_SECONDS, 8, measured, eval_interval=50, checkpoint_interval=50)
    assert chosen_max_iters(out) == pytest.approx(expected, abs=1) and expected > 200
    # each evaluation plans again; the run ends at the last plan, which spends the reserve kept at the first
    plans = planned(tmp_path / "run")
    assert chosen_max_iters(out) <= plans[-1] and f"step {plans[-1]}:" in out
    assert clock.elapsed() <= 30  # the budget held, on the clock it measured
    assert re.search(r"time: tokenizer \d+s, tokenization \d+s, .*final pass \d+s; \d+s in all \(budget 30s\)", out)


@pytest.mark.slow
def test_a_machine_busy_at_the_start_gets_its_steps_back_after_the_next_evaluation(tmp_path, monkeypatch, capsys):
    clock = FakeClock(STEP_SECONDS / 2)
    clock.install(monkeypatch.setattr)
    real_stories = evaluations.sample_stories

    def slow_story_at_the_decision(*args, **kwargs):
        if clock.step <= 8:  # the evaluation at the decision step, while another job still held the cores
            clock.seconds += 1.0
        return real_stories(*args, **kwargs)

    monkeypatch.setattr(evaluations, "sample_stories", slow_story_at_the_decision)
    train(*parse_args(budget_args(tmp_path, "--max_time", "30")))
    out = capsys.readouterr().out
    first = chosen_max_iters(out)
    # costed from that evaluation, the final pass's 22 stories alone would take 22 s of the 22 left at step 50; the
    # plan after step 50's evaluation costs them from its own story, and gives back what the slow one had taken
    replans = [int(after.replace(",", "")) for after in re.findall(r"max_iters [\d,]+ -> ([\d,]+)", out)]
    assert replans and replans[0] > first, (first, replans)
    assert clock.elapsed() <= 30


@pytest.mark.slow
def test_resume_keeps_the_chosen_max_iters_and_trains_what_a_fixed_run_trains(tmp_path, monkeypatch, capsys):
    FakeClock(STEP_SECONDS / 2).install(monkeypatch.setattr)
    broken = tmp_path / "broken"
    argv = budget_args(broken, "--max_time", "60", "--checkpoint_interval", "10", "--eval_interval", "1000")
    with monkeypatch.context() as patch:
        signal_after_checkpoint(patch.setattr, 20)  # after the choice (at step 8): it checkpoints step 21 and stops
        train(*parse_args(argv))
    out = capsys.readouterr().out
    chosen = chosen_max_iters(out)
    assert "stopped by signal at step 21" in out and chosen > 21

    FakeClock(10 * STEP_SECONDS).install(monkeypatch.setattr)  # a slower machine now: the choice must not change
    train(*parse_args([*argv, "--resume"]))
    out = capsys.readouterr().out
    assert "resumed from" in out and "max_iters =" not in out  # not chosen again: the checkpoint holds it
    checkpoints = broken / "run" / "checkpoints"
    assert (checkpoints / f"step_{chosen}").is_dir()

    fixed = tmp_path / "fixed"
    train(
        *parse_args(
            budget_args(fixed, "--max_iters", str(chosen), "--checkpoint_interval", "10", "--eval_interval", "1000")
        )
    )
    expected = load_file(fixed / "run" / "checkpoints" / f"step_{chosen}" / "model.safetensors")
    actual = load_file(checkpoints / f"step_{chosen}" / "model.safetensors")
    for name, tensor in expected.items():
        assert torch.equal(actual[name], tensor), name


@pytest.mark.slow
def test_two_processes_agree_on_the_chosen_max_iters_and_every_re_plan(tmp_path):
    script = fake_clock_script(tmp_path, STEP_SECONDS / 2, slower=(60, 3.0))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    command += ["--master_port", "29541", str(script), *wsd_args(tmp_path, "--max_time", "30")]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    # processes that disagreed would wait for each other's collectives until the timeout
    result = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=600)
    assert result.returncode == 0, result.stderr
    plans = planned(tmp_path / "run")
    assert len(set(plans)) > 1 and (tmp_path / "run" / "checkpoints" / f"step_{plans[-1]}").is_dir(), plans


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra, seconds_spent, message",
    [
        (["--max_time", "0"], 0, "max_time must be a positive number of seconds, got 0.0"),
        (["--max_time", "60", "--warmup_steps", "2"], 0, "needs at least 5 steps; got warmup_steps=2"),
        (["--max_time", "3"], 5, "--max_time 3 was spent before the first step (5 s reading"),
        (["--max_time", "6"], 5, "which buys 0 more steps at 0.100 s each"),  # the warm-up does not fit
    ],
)
def test_bad_budgets_are_refused_by_name(tmp_path, monkeypatch, capsys, extra, seconds_spent, message):
    clock = FakeClock(STEP_SECONDS / 2)
    clock.seconds += seconds_spent  # reading and tokenizing took this long
    clock.install(monkeypatch.setattr)
    assert train_cli.main(budget_args(tmp_path, *extra)) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


# Re-planning: the plan grows or shrinks with the speed measured since the last evaluation (a wsd schedule's stable
# phase; a cosine decay all along)


def wsd_args(tmp_path, *extra: str) -> list[str]:
    """budget_args with a warmup-stable-decay schedule, evaluating and checkpointing every 20 steps."""
    schedule = ["--lr_scheduler_type", "wsd", "--decay_fraction", "0.3", "--eval_interval", "20"]
    return budget_args(tmp_path, *schedule, "--checkpoint_interval", "20", *extra)


def planned(run_dir) -> list[int]:
    """The plan in force at each evaluation (the first, at the decision step, comes before any plan)."""
    return [record["max_iters"] for record in read_metrics(run_dir / "metrics.jsonl") if record["max_iters"]]


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["wsd", "cosine"])
def test_a_machine_that_slows_down_mid_run_gets_a_shorter_plan_and_the_run_keeps_its_budget(
    tmp_path, monkeypatch, schedule
):
    slow_from_step_60 = (60, 3.0)  # another job takes the cores: a step costs 0.3 s instead of 0.1
    clock = FakeClock(STEP_SECONDS / 2, slower=slow_from_step_60)
    clock.install(monkeypatch.setattr)
    argv = wsd_args(tmp_path / "budget", "--lr_scheduler_type", schedule, "--max_time", "30")
    train(*parse_args(argv))
    plans = planned(tmp_path / "budget" / "run")
    assert plans[0] > plans[-1] and len(set(plans)) > 1, plans  # planned on fast steps, cut when they slowed
    assert clock.elapsed() <= 30  # the budget held, on the clock it measured

    # the same machine held to the first plan (no budget to re-plan) overruns the 30 s
    clock = FakeClock(STEP_SECONDS / 2, slower=slow_from_step_60)
    clock.install(monkeypatch.setattr)
    train(*parse_args(wsd_args(tmp_path / "fixed", "--lr_scheduler_type", schedule, "--max_iters", str(plans[0]))))
    assert clock.elapsed() > 30


@pytest.mark.slow
def test_resume_replays_the_plans_of_the_uninterrupted_run(tmp_path, monkeypatch):
    def on_the_same_machine():
        FakeClock(STEP_SECONDS / 2, slower=(60, 3.0)).install(monkeypatch.setattr)

    on_the_same_machine()
    train(*parse_args(wsd_args(tmp_path / "whole", "--max_time", "30")))

    on_the_same_machine()
    argv = wsd_args(tmp_path / "broken", "--max_time", "30")
    with monkeypatch.context() as patch:
        signal_after_checkpoint(patch.setattr, 40)  # after the first plans, before the machine slows down
        train(*parse_args(argv))
    on_the_same_machine()  # a new process: its clock starts again, the budget goes on from what was spent
    result = train(*parse_args([*argv, "--resume"]))
    assert planned(tmp_path / "broken" / "run") == planned(tmp_path / "whole" / "run")
    last = tmp_path / "whole" / "run" / "checkpoints" / f"step_{result['step']}" / "model.safetensors"
    actual = load_file(tmp_path / "broken" / "run" / "checkpoints" / f"step_{result['step']}" / "model.safetensors")
    for name, tensor in load_file(last).items():
        assert torch.equal(actual[name], tensor), name
