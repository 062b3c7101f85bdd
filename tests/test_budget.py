"""--max_time: max_iters chosen from the run's own measured speed, kept on resume, agreed by every process."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from runs import REPO, run_cli, tiny_args, without
from safetensors.torch import load_file

from tinystories_gpt.training.budget import MeasuredCosts, affordable_max_iters, remaining_seconds

COSTS = MeasuredCosts(step=0.1, evaluation=2.0, checkpoint=1.0, final_pass=5.0)


def test_the_affordable_max_iters_is_the_largest_that_fits():
    # 10 steps done; each further step 0.1 s, an evaluation every 100 steps, a checkpoint every 500
    chosen = affordable_max_iters(100.0, 10, COSTS, eval_interval=100, checkpoint_interval=500)
    usable = 100.0 * 0.97 - 5.0
    assert remaining_seconds(chosen, 10, COSTS, 100, 500) <= usable < remaining_seconds(chosen + 1, 10, COSTS, 100, 500)
    # by hand: 690 more steps (69 s), evaluations at 100, ..., 700 (14 s), checkpoints at 500 and 700 (2 s), the
    # final pass (5 s): 90 s of the 92 usable; one step more adds an evaluation and a checkpoint at step 701
    assert chosen == 700
    assert affordable_max_iters(1.0, 10, COSTS, 100, 500) is None  # not even the final pass fits


def budget_args(tmp_path, *extra: str) -> list[str]:
    """A tiny run on a time budget instead of a step count, measuring over 6 warm-up steps."""
    argv = without(
        tiny_args(tmp_path, "--warmup_steps", "8", "--eval_interval", "50", "--checkpoint_interval", "50"),
        "--max_iters",
    )
    return [*argv, *extra]


def chosen_max_iters(stdout: str) -> int:
    return int(re.search(r"for the final pass: max_iters = ([\d,]+)", stdout).group(1).replace(",", ""))


def test_a_budgeted_run_ends_within_its_budget(tmp_path):
    started = time.monotonic()
    result = run_cli(*budget_args(tmp_path, "--max_time", "60"))
    wall = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    chosen = chosen_max_iters(result.stdout)
    assert chosen > 8 and wall <= 60 * 1.1  # the stated tolerance: 10%
    assert f"step {chosen}:" in result.stdout  # the last evaluation is at the chosen step
    assert re.search(r"time: tokenizer \d+s, tokenization \d+s, .*final pass", result.stdout)
    measured = float(re.search(r"measured ([\d.]+) s per step", result.stdout).group(1))
    assert chosen * measured < 60  # the choice follows the measured speed


def test_resume_keeps_the_chosen_max_iters_and_trains_what_a_fixed_run_trains(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    argv = budget_args(broken, "--max_time", "60", "--checkpoint_interval", "10", "--eval_interval", "1000")
    process = subprocess.Popen([sys.executable, str(REPO / "train.py"), *argv], stdout=subprocess.PIPE, text=True)
    checkpoints = broken / "run" / "checkpoints"
    deadline = time.monotonic() + 120
    while not (checkpoints / "step_20").exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)  # step 20 comes after the choice (at step 8)
    process.send_signal(signal.SIGTERM)
    stdout, _ = process.communicate(timeout=120)
    chosen = chosen_max_iters(stdout)
    last = max(int(path.name.removeprefix("step_")) for path in checkpoints.glob("step_*"))
    assert last < chosen, "the run finished before the signal arrived; nothing was tested"

    resumed = run_cli(*argv, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "max_iters =" not in resumed.stdout  # not chosen again: the checkpoint holds the choice
    assert (checkpoints / f"step_{chosen}").is_dir()

    fixed = tmp_path / "fixed"
    fixed.mkdir()
    argv = budget_args(fixed, "--max_iters", str(chosen), "--checkpoint_interval", "10", "--eval_interval", "1000")
    assert run_cli(*argv).returncode == 0
    expected = load_file(fixed / "run" / "checkpoints" / f"step_{chosen}" / "model.safetensors")
    actual = load_file(checkpoints / f"step_{chosen}" / "model.safetensors")
    for name, tensor in expected.items():
        assert torch.equal(actual[name], tensor), name


def test_two_processes_agree_on_the_chosen_max_iters(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    command += ["--master_port", "29541", str(REPO / "train.py"), *budget_args(tmp_path, "--max_time", "60")]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    # processes that disagreed would wait for each other's collectives until the timeout
    result = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300)
    assert result.returncode == 0, result.stderr
    chosen = chosen_max_iters(result.stdout)
    assert (tmp_path / "run" / "checkpoints" / f"step_{chosen}").is_dir()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--max_time", "0"], "max_time must be a positive number of seconds, got 0.0"),
        (["--max_time", "60", "--warmup_steps", "2"], "needs at least 5 steps; got warmup_steps=2"),
        # spent before the first step, or during the warm-up, depending on this machine's speed
        (["--max_time", "3"], "Raise --max_time"),
    ],
)
def test_bad_budgets_are_refused_by_name(tmp_path, extra, message):
    result = run_cli(*budget_args(tmp_path, *extra))
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr
