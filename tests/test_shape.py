"""--small_shape: a smaller model where the time budget affords the preset's shape few steps, chosen from timed steps.

The runs time their steps on a FakeClock (tests/runs.py), so whether a machine is "slow" is set by the test: 0.1 s a
step buys the preset's shape ~300 steps in 30 s, fewer than the 1,000 below which the small shape is trained; 0.005 s
buys 6,000, and the preset's shape is kept.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from runs import FakeClock, fake_clock_script, signal_after_checkpoint, tiny_args, without
from safetensors.torch import load_file

from tinystories_gpt.cli import train as train_cli
from tinystories_gpt.configuration_tinystories_gpt import TinyStoriesGPTConfig
from tinystories_gpt.training.loop import parse_args, train

SLOW, FAST = 0.05, 0.0025  # seconds per micro-batch; tiny_args accumulates 2 a step
SMALL = ["--small_shape", "1x48", "--small_shape_below_steps", "1000"]


def shape_args(tmp_path, *extra: str) -> list[str]:
    """A tiny 2 x 32 run on a 30 s budget that trains 1 x 48 where it affords fewer than 1,000 steps."""
    argv = without(tiny_args(tmp_path, "--warmup_steps", "8", "--eval_interval", "50"), "--max_iters")
    return [*argv, "--max_time", "30", *SMALL, *extra]


def trained_shape(folder) -> tuple[int, int]:
    config = TinyStoriesGPTConfig.from_pretrained(folder)
    return config.n_layer, config.n_embd


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--max_time", "30", "--small_shape", "2by48", "--small_shape_below_steps", "9"], "A shape is LAYERSxWIDTH"),
        (["--max_time", "30", "--small_shape", "1x33", "--small_shape_below_steps", "9"], "multiple of n_head (2)"),
        (["--max_time", "30", "--small_shape", "1x48"], "needs --small_shape_below_steps N"),
        (["--max_time", "30", *SMALL[:2], "--small_shape_below_steps", "-1"], "needs --small_shape_below_steps N"),
        (["--max_time", "30", "--small_shape_below_steps", "9"], "only applies with --small_shape"),
        (["--small_shape", "1x48", "--small_shape_below_steps", "9"], "add --max_time SECONDS"),
    ],
)
def test_bad_small_shapes_are_refused_by_name(tmp_path, capsys, extra, message):
    assert train_cli.main([*tiny_args(tmp_path), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


@pytest.mark.slow
def test_a_machine_that_affords_many_steps_keeps_the_preset_shape(tmp_path, monkeypatch, capsys):
    FakeClock(FAST).install(monkeypatch.setattr)
    train(*parse_args(shape_args(tmp_path)))
    out = capsys.readouterr().out
    assert "shape: 2x32 takes 0.005 s a step here (uncompiled), ~5,99" in out and "keeping 2x32" in out
    assert trained_shape(tmp_path / "run" / "best") == (2, 32)
    choice = json.loads((tmp_path / "run" / "final_metrics.json").read_text())["shape_choice"]
    assert choice["chosen"] == "2x32" and choice["affordable_steps"] >= 1000


@pytest.mark.slow
def test_a_slow_machine_trains_the_small_shape_and_resume_keeps_it(tmp_path, monkeypatch, capsys):
    """Stopped by SIGTERM and resumed on a machine fast enough to keep the preset's shape, the run goes on in the
    shape it chose, and ends with the weights of a run given that shape outright (the timed steps leave the run's
    random numbers untouched)."""
    FakeClock(SLOW).install(monkeypatch.setattr)
    broken = tmp_path / "broken"
    argv = shape_args(broken, "--checkpoint_interval", "10", "--eval_interval", "1000")
    with monkeypatch.context() as patch:
        signal_after_checkpoint(patch.setattr, 20)
        train(*parse_args(argv))
    out = capsys.readouterr().out
    assert "shape: 2x32 takes 0.100 s a step here (uncompiled), ~29" in out, out
    assert "fewer than 1,000: training the smaller 1x48 instead" in out and "stopped by signal at step 21" in out
    chosen = int(out.split("for the final pass: max_iters = ")[1].split()[0].replace(",", ""))

    FakeClock(FAST / 10).install(monkeypatch.setattr)  # fast enough to keep 2 x 32, were it to choose again
    train(*parse_args([*argv, "--resume"]))
    out = capsys.readouterr().out
    assert "resumed from" in out and "shape:" not in out
    resumed = broken / "run"
    assert trained_shape(resumed / "checkpoints" / f"step_{chosen}") == (1, 48)
    card = (resumed / "best" / "README.md").read_text()
    assert "fewer than 1,000: training the smaller 1x48 instead" in card
    assert json.loads((resumed / "final_metrics.json").read_text())["shape_choice"]["chosen"] == "1x48"

    FakeClock(SLOW).install(monkeypatch.setattr)
    given = tmp_path / "given"
    outright = without(without(shape_args(given), "--small_shape"), "--small_shape_below_steps")
    outright += ["--n_layer", "1", "--n_embd", "48", "--max_iters", str(chosen)]  # the cap: it affords more
    train(*parse_args([*outright, "--checkpoint_interval", "10", "--eval_interval", "1000"]))
    expected = load_file(given / "run" / "checkpoints" / f"step_{chosen}" / "model.safetensors")
    actual = load_file(resumed / "checkpoints" / f"step_{chosen}" / "model.safetensors")
    assert expected.keys() == actual.keys()
    for name, tensor in expected.items():
        assert torch.equal(actual[name], tensor), name


@pytest.mark.slow
def test_two_processes_build_the_shape_the_main_process_chose(tmp_path):
    """The second process alone would keep the preset's shape (its steps take a twentieth of the time): it builds
    the main process's choice, or DDP would refuse weights of two shapes."""
    script = fake_clock_script(tmp_path, [SLOW, SLOW / 20])
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    command += ["--master_port", "29543", str(script), *shape_args(tmp_path)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "training the smaller 1x48 instead" in result.stdout
    assert trained_shape(tmp_path / "run" / "best") == (1, 48)
