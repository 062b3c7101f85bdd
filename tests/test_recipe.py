"""`--resume` continues the run it was given (issue 22): a flag that changes what the run computes is refused, naming
each change and how to start a new run instead; one that changes only what is reported, or how often, is taken,
and the run ends exactly where the uninterrupted one does."""

import shutil

import pytest
from runs import assert_same_tensors, losses, run_cli, signal_after_checkpoint, small_stories, tiny_args
from safetensors.torch import load_file

from tinystories_gpt.cli import train as train_cli
from tinystories_gpt.training.loop import parse_args, train

pytestmark = pytest.mark.slow  # every test here trains


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 8-step run (checkpoints at steps 4 and 8) to copy and resume with other flags."""
    root = tmp_path_factory.mktemp("finished")
    train(*parse_args(tiny_args(root, "--num_samples", "0")))
    return root


def copied(finished, tmp_path):
    shutil.copytree(finished / "run", tmp_path / "run", symlinks=True)
    return tmp_path


@pytest.mark.parametrize(
    "flags, change",
    [
        (["--learning_rate", "1e-3"], "learning_rate 0.003 -> 0.001"),
        (["--batch_size", "4"], "batch_size 8 -> 4"),
        (["--seed", "8"], "seed 7 -> 8"),
        (["--eval_iters", "2"], "eval_iters 4 -> 2"),
        (["--dropout", "0.2"], "dropout 0.1 -> 0.2"),
        (["--max_iters", "6"], "max_iters 8 -> 6 (it may only grow)"),
        (["--tokenizer", "gpt2"], "tokenizer 'bpe:512' -> 'gpt2'"),
    ],
)
def test_a_resume_that_would_compute_something_else_is_refused_by_name(finished, tmp_path, capsys, flags, change):
    root = copied(finished, tmp_path)
    assert train_cli.main(tiny_args(root, "--resume", *flags)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    checkpoint = root / "run" / "checkpoints" / "step_8"
    assert err.startswith(f"train.py: error: --resume would not continue the run in {root / 'run'}"), err
    assert change in err, err
    assert err.endswith(f"start a new run from this checkpoint: --init_from {checkpoint} --output_dir ANOTHER_FOLDER")


def test_another_precision_is_refused(finished, tmp_path):
    # in its own process: Accelerate keeps one precision per process
    result = run_cli(*tiny_args(copied(finished, tmp_path), "--resume", "--mixed_precision", "bf16"))
    assert result.returncode == 2 and "precision 'no' -> 'bf16'" in result.stderr, result.stderr


def test_other_stories_at_another_path_or_the_same_one_are_refused(tmp_path, capsys):
    stories = tmp_path / "stories"
    shutil.copytree(small_stories(tmp_path.parent / "small-stories"), stories)
    train(*parse_args(tiny_args(tmp_path, "--dataset", str(stories), "--max_iters", "4", "--num_samples", "0")))
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(stories, elsewhere)
    (elsewhere / "train.txt").write_text((elsewhere / "train.txt").read_text().replace("Lily", "Rosa"))
    assert train_cli.main(tiny_args(tmp_path, "--resume", "--dataset", str(elsewhere))) == 2
    err = capsys.readouterr().err
    assert f"dataset '{stories}' -> '{elsewhere}'" in err and "train_tokens_sha256 " in err

    (stories / "train.txt").write_text((stories / "train.txt").read_text() + "<|endoftext|>One more story.")
    assert train_cli.main(tiny_args(tmp_path, "--resume", "--dataset", str(stories))) == 2
    err = capsys.readouterr().err
    assert "train_tokens_sha256 " in err and "dataset '" not in err  # the same name, other contents


def stopped_at_step_4(root, monkeypatch, *flags):
    """Run tiny_args to step 8, stopped by SIGTERM once its step_4 checkpoint is written (it checkpoints step 5)."""
    with monkeypatch.context() as patch:
        signal_after_checkpoint(patch.setattr, 4)
        train(*parse_args(tiny_args(root, "--checkpoint_interval", "4", *flags)))


def test_flags_that_only_report_may_change_and_the_run_ends_bit_for_bit(tmp_path, monkeypatch):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    train(*parse_args(tiny_args(whole, "--checkpoint_interval", "4")))
    stopped_at_step_4(broken, monkeypatch)
    allowed = ["--eval_interval", "2", "--checkpoint_interval", "3", "--keep_checkpoints", "5", "--num_samples", "2"]
    allowed += ["--report_to", "tensorboard"]
    train(*parse_args(tiny_args(broken, "--resume", *allowed)))
    expected = load_file(whole / "run" / "checkpoints" / "step_8" / "model.safetensors")
    assert_same_tensors(expected, load_file(broken / "run" / "checkpoints" / "step_8" / "model.safetensors"))
    # the resumed part evaluated every 2 steps instead of 4; the steps both evaluated measured the same windows
    resumed = {step: (train_loss, val_loss) for step, train_loss, val_loss in losses(broken / "run")}
    assert sorted(resumed) == [4, 6, 8]
    assert all(resumed[step] == (train_loss, val_loss) for step, train_loss, val_loss in losses(whole / "run"))


def test_a_longer_run_may_resume_a_shorter_one(finished, tmp_path):
    root = copied(finished, tmp_path)
    result = train(*parse_args(tiny_args(root, "--resume", "--max_iters", "12")))
    assert result["step"] == 12 and (root / "run" / "checkpoints" / "step_12").is_dir()
