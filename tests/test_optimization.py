"""The learning-rate schedule."""

import pytest

from tinystories_gpt.training.arguments import TrainingArguments
from tinystories_gpt.training.optimization import decay_start, learning_rate_at


def test_learning_rate_warms_up_linearly_then_decays_by_cosine_to_min_lr():
    args = TrainingArguments(learning_rate=1e-3, min_lr=1e-4, warmup_steps=10, max_iters=110)
    assert learning_rate_at(0, args) == pytest.approx(1e-3 / 11)
    assert learning_rate_at(9, args) == pytest.approx(1e-3 * 10 / 11)
    assert learning_rate_at(10, args) == pytest.approx(1e-3)
    assert learning_rate_at(60, args) == pytest.approx((1e-3 + 1e-4) / 2)
    assert learning_rate_at(110, args) == pytest.approx(1e-4)
    rates = [learning_rate_at(step, args) for step in range(10, 111)]
    assert all(later <= earlier for earlier, later in zip(rates, rates[1:], strict=False))


def test_linear_schedule_decays_in_a_straight_line_to_min_lr():
    args = TrainingArguments(learning_rate=1e-3, min_lr=0.0, warmup_steps=10, max_iters=110, lr_scheduler_type="linear")
    assert learning_rate_at(9, args) == pytest.approx(1e-3 * 10 / 11)  # the same warmup
    assert [learning_rate_at(step, args) for step in (10, 35, 60, 110)] == pytest.approx([1e-3, 7.5e-4, 5e-4, 0.0])


def test_wsd_holds_the_rate_until_its_decay_then_follows_a_cosine_to_min_lr():
    args = TrainingArguments(
        learning_rate=1e-3, min_lr=0.0, warmup_steps=10, max_iters=110, lr_scheduler_type="wsd", decay_fraction=0.2
    )
    assert decay_start(args) == 88  # the last 22 of 110 steps
    assert learning_rate_at(9, args) == pytest.approx(1e-3 * 10 / 11)  # the same warmup
    assert {learning_rate_at(step, args) for step in range(10, 89)} == {1e-3}  # stable: a plan may grow or shrink
    assert learning_rate_at(99, args) == pytest.approx(5e-4) and learning_rate_at(110, args) == pytest.approx(0.0)
