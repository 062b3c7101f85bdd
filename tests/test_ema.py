"""--ema_decay: a moving average of the weights, scored at every evaluation, kept as best/ when it is better, and
resumed exactly."""

import pytest
from runs import assert_same_tensors, assert_sigterm_resumes_bit_for_bit, tiny_args
from safetensors.torch import load_file

from tinystories_gpt.training.loop import parse_args, train
from tinystories_gpt.training.records import read_metrics

pytestmark = pytest.mark.slow  # every test here trains


def test_the_average_is_scored_and_best_takes_it_when_it_is_better(tmp_path):
    train(*parse_args(tiny_args(tmp_path, "--ema_decay", "0.5", "--max_iters", "12")))
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert all("val_loss_ema" in record for record in records)
    best = min(min(record["val_loss"], record["val_loss_ema"]) for record in records)
    card = (tmp_path / "run" / "best" / "README.md").read_text()
    step = next(r["step"] for r in records if best in (r["val_loss"], r["val_loss_ema"]))
    assert f"at step {step}" in card or "a full pass" in card  # the final pass rewrote the card of that model


def test_a_run_with_an_average_resumes_bit_for_bit_and_keeps_the_same_best(tmp_path):
    run_args = lambda folder: tiny_args(folder, "--ema_decay", "0.9", "--max_iters", "12", "--checkpoint_interval", "2")  # noqa: E731
    assert_sigterm_resumes_bit_for_bit(run_args, tmp_path, last_step=12)
    for name in ("model.safetensors",):
        assert_same_tensors(
            load_file(tmp_path / "whole" / "run" / "best" / name),
            load_file(tmp_path / "broken" / "run" / "best" / name),
        )
    average = "custom_checkpoint_1.pkl"  # the moving average, checkpointed beside the run state
    assert (tmp_path / "broken" / "run" / "checkpoints" / "step_12" / average).is_file()


def test_an_average_with_lora_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="--ema_decay averages every weight"):
        parse_args(tiny_args(tmp_path, "--ema_decay", "0.9", "--init_from", "parent", "--lora_r", "2"))
