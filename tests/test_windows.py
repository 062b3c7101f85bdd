"""Tokens -> windows: training batches in shuffled epochs, fixed evaluation batches, the full sequential pass."""

import json

import numpy as np
import pytest
import torch

from tinystories_gpt.data.batches import IGNORE_INDEX, WindowSampler, fixed_eval_batches, sequential_batches


@pytest.fixture(scope="module")
def tokens() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 50257, size=5000).astype(np.uint16)


def test_training_windows_are_shifted_slices(tokens):
    input_ids, labels = WindowSampler(tokens, block_size=16, batch_size=4, seed=1).next_batch()
    assert input_ids.shape == labels.shape == (4, 16)
    assert input_ids.dtype == labels.dtype == torch.int64
    assert torch.equal(input_ids[:, 1:], labels[:, :-1])
    for row_inputs, row_labels in zip(input_ids.tolist(), labels.tolist(), strict=True):
        window = row_inputs + row_labels[-1:]
        starts = [s for s in range(len(tokens) - 16) if tokens[s : s + 17].tolist() == window]
        assert starts  # a real window of the token stream


def test_sampler_resumes_exactly_from_a_saved_state(tokens):
    sampler = WindowSampler(tokens, block_size=8, batch_size=3, seed=7)
    for _ in range(3):
        sampler.next_batch()
    state = json.loads(json.dumps(sampler.state_dict()))  # plain values: survives JSON (and torch.save)
    expected = [sampler.next_batch() for _ in range(2)]
    resumed = WindowSampler(tokens, block_size=8, batch_size=3, seed=7)
    resumed.load_state_dict(state)
    for (x, y), (rx, ry) in zip(expected, [resumed.next_batch() for _ in range(2)], strict=True):
        assert torch.equal(x, rx) and torch.equal(y, ry)
    assert resumed.state_dict() == sampler.state_dict()
    assert not torch.equal(WindowSampler(tokens, 8, 3, seed=8).next_batch()[0], expected[0][0])


def test_each_epoch_predicts_every_token_once():
    tokens = np.arange(1000, dtype=np.uint16)  # distinct ids: a label names its position
    sampler = WindowSampler(tokens, block_size=8, batch_size=1, seed=5)
    for _ in range(3):  # three epochs, each with its own offset and order
        seen: set[int] = set()
        while True:  # draw until a label comes back: that window opened the next epoch
            state = sampler.state_dict()
            labels = set(sampler.next_batch()[1][0].tolist())
            if labels & seen:
                sampler.load_state_dict(state)
                break
            seen |= labels
        assert seen == set(range(min(seen), max(seen) + 1))  # no token skipped, none repeated
        assert min(seen) <= 8 and max(seen) >= len(tokens) - 9  # only the offset and the tail are left out


@pytest.mark.parametrize("batch_size", [1, 3, 4])
def test_window_stream_does_not_depend_on_chunking(tokens, batch_size):
    single = WindowSampler(tokens, block_size=8, batch_size=batch_size, seed=3)
    ranks = [WindowSampler(tokens, block_size=8, batch_size=batch_size, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for _ in range(5):  # 1 process x accumulation 2 == 2 processes x accumulation 1, step after step
        two_calls = [single.next_batch() for _ in range(2)]
        one_call_per_rank = [rank.next_batch() for rank in ranks]
        for (x, y), (rx, ry) in zip(two_calls, one_call_per_rank, strict=True):
            assert torch.equal(x, rx) and torch.equal(y, ry)
    assert single.state_dict() == ranks[0].state_dict() == ranks[1].state_dict()


def test_sampler_rejects_impossible_settings(tokens):
    with pytest.raises(ValueError, match="fewer than block_size"):
        WindowSampler(tokens[:8], block_size=8, batch_size=1)
    with pytest.raises(ValueError, match="rank"):
        WindowSampler(tokens, block_size=8, batch_size=1, rank=2, world_size=2)


def test_fixed_eval_batches_are_the_same_every_time(tokens):
    first = fixed_eval_batches(tokens, block_size=8, batch_size=4, num_batches=3, seed=0)
    second = fixed_eval_batches(tokens, block_size=8, batch_size=4, num_batches=3, seed=0)
    assert len(first) == 3
    for (x, y), (x2, y2) in zip(first, second, strict=True):
        assert x.shape == (4, 8) and torch.equal(x, x2) and torch.equal(y, y2)


@pytest.mark.parametrize(("num_tokens", "block_size", "batch_size"), [(100, 8, 3), (96, 8, 4), (5, 8, 2), (97, 8, 1)])
def test_sequential_pass_predicts_every_token_once(tokens, num_tokens, block_size, batch_size):
    split = tokens[:num_tokens]
    eos = 50256
    batches = list(sequential_batches(split, block_size, batch_size, eos_token_id=eos))
    inputs = torch.cat([x for x, _ in batches]).flatten()
    labels = torch.cat([y for _, y in batches]).flatten()
    assert all(x.shape[1] == block_size and x.shape[0] <= batch_size for x, _ in batches)
    predicted = labels != IGNORE_INDEX
    assert predicted.sum() == num_tokens  # TokenFile.num_tokens
    assert labels[predicted].tolist() == split.tolist()  # every token once, in order
    assert labels[num_tokens:].eq(IGNORE_INDEX).all()  # only the tail is padding
    windows_inputs, windows_labels = inputs.view(-1, block_size), labels.view(-1, block_size)
    assert windows_inputs[0, 0] == eos  # the first token is predicted from an end-of-text context
    within = windows_labels[:, 1:] != IGNORE_INDEX  # inside a window, each real input is the previous label
    assert torch.equal(windows_inputs[:, 1:][within], windows_labels[:, :-1][within])
    assert torch.equal(windows_inputs.flatten()[1:num_tokens], torch.from_numpy(split[:-1].astype(np.int64)))


def test_sequential_pass_split_across_ranks(tokens):
    split = tokens[:203]
    whole = torch.cat([y for _, y in sequential_batches(split, 8, 2, eos_token_id=0)])
    per_rank = [torch.cat([y for _, y in sequential_batches(split, 8, 2, 0, rank=r, world_size=3)]) for r in range(3)]
    assert torch.equal(torch.cat(per_rank), whole)
