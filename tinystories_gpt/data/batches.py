"""Tokens -> windows -> batches: what the model sees, drawn from a split's flat token array.

- `WindowSampler`: training batches, in shuffled epochs, resumable exactly, split across processes.
- `fixed_eval_batches`: the same random windows at every evaluation, so evaluations compare.
- `sequential_batches`: a full pass in which every token of the split is a label exactly once.

Batch format, everywhere: a pair `(input_ids, labels)` of int64 tensors of shape (B, block_size), with the labels
already shifted: ``labels[b, t]`` is the token that follows ``input_ids[b, t]``, and -100 marks positions to ignore.
A Transformers model takes them as ``model(input_ids=x, labels=y, shift_labels=y)`` (passing `shift_labels` stops
the model from shifting again). Pre-shifting lets a window use all `block_size` positions of the model's context.
"""

from collections.abc import Iterator

import numpy as np
import torch

IGNORE_INDEX = -100  # what Transformers' losses skip


class WindowSampler:
    """Training batches: windows of `block_size + 1` tokens in shuffled epochs, from a seeded, resumable generator.

    Each epoch cuts the token stream into windows at a random offset, `block_size` apart, so every token is a label
    exactly once per epoch (but for the few before the offset and after the last window), then shuffles them: the
    model sees every story equally often, where windows drawn with replacement would repeat some and skip others.
    Each call takes the next `batch_size * world_size` windows of one stream and returns this rank's slice of them,
    so the stream does not depend on how it is chunked: with the same seed, two calls at world_size=1 give exactly
    the windows one call gives ranks 0 and 1 at world_size=2. Every rank builds its own sampler with the same seed.
    Batches are `(input_ids, labels)`, labels pre-shifted (see the module docstring).
    """

    def __init__(
        self, tokens: np.ndarray, block_size: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if len(tokens) < block_size + 1:
            raise ValueError(
                f"the split has {len(tokens)} tokens, fewer than block_size + 1 = {block_size + 1}; "
                "use a smaller block_size or more data"
            )
        self.block_size, self.batch_size, self.rank, self.world_size = block_size, batch_size, rank, world_size
        self.seed = seed
        self._windows = np.lib.stride_tricks.sliding_window_view(tokens, block_size + 1)  # (num_starts, T+1), no copy
        self._rng = np.random.Generator(np.random.PCG64(seed))
        self._new_epoch()

    def _new_epoch(self) -> None:
        self._epoch_rng_state = self._rng.bit_generator.state  # all that is needed to rebuild this epoch on resume
        offset = self._rng.integers(min(self.block_size, len(self._windows)))
        self._epoch_starts = self._rng.permutation(np.arange(offset, len(self._windows), self.block_size))
        self._cursor = 0

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's next `(input_ids, labels)`, each int64 of shape (batch_size, block_size)."""
        starts = []
        while len(starts) < self.batch_size * self.world_size:
            if self._cursor == len(self._epoch_starts):
                self._new_epoch()
            take = min(self.batch_size * self.world_size - len(starts), len(self._epoch_starts) - self._cursor)
            starts.extend(self._epoch_starts[self._cursor : self._cursor + take])
            self._cursor += take
        mine = starts[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        windows = torch.from_numpy(self._windows[mine].astype(np.int64))  # (B, T+1)
        return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()

    def state_dict(self) -> dict:
        """Plain ints and strings (JSON- and torch.save-friendly) from which `load_state_dict` resumes exactly."""
        return {"seed": self.seed, "epoch_rng": self._epoch_rng_state, "epoch_cursor": self._cursor}

    def load_state_dict(self, state: dict) -> None:
        self.seed = state["seed"]
        self._rng.bit_generator.state = state["epoch_rng"]
        self._new_epoch()
        self._cursor = state["epoch_cursor"]


def fixed_eval_batches(
    tokens: np.ndarray, block_size: int, batch_size: int, num_batches: int, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A fixed evaluation set: `num_batches` batches of random windows, chosen once so every eval sees the same ones.

    Build it once per run and reuse the list (every process builds the same one and scores its share of it).
    """
    sampler = WindowSampler(tokens, block_size, batch_size, seed=seed)
    return [sampler.next_batch() for _ in range(num_batches)]


def sequential_batches(
    tokens: np.ndarray, block_size: int, batch_size: int, eos_token_id: int, rank: int = 0, world_size: int = 1
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """A full pass for final metrics: every token of the split is a label exactly once.

    The split is cut into consecutive, non-overlapping windows of `block_size` labels. The first window's context
    starts with `eos_token_id` (as if a story had just ended), so the first token is predicted too, and the tail
    window is padded (labels -100). Across all ranks, the labels other than -100 number exactly `len(tokens)`
    (`TokenFile.num_tokens`), which with `TokenFile.num_bytes` gives bits per byte. Ranks take contiguous runs of
    windows; their batch counts may differ by one. The last batch of a rank may be smaller than `batch_size`.
    """
    num_windows = -(-len(tokens) // block_size)
    first, end = rank * num_windows // world_size, (rank + 1) * num_windows // world_size
    for batch_start in range(first, end, batch_size):
        batch_windows = min(batch_size, end - batch_start)
        lo = batch_start * block_size  # index of the first label in this batch
        hi = min(lo + batch_windows * block_size, len(tokens))
        labels = np.full(batch_windows * block_size, IGNORE_INDEX, dtype=np.int64)
        labels[: hi - lo] = tokens[lo:hi]
        input_ids = np.full(batch_windows * block_size, eos_token_id, dtype=np.int64)  # EOS also pads the tail
        if lo == 0:
            input_ids[1 : hi - lo] = tokens[: hi - 1]
        else:
            input_ids[: hi - lo] = tokens[lo - 1 : hi - 1]
        yield torch.from_numpy(input_ids).view(-1, block_size), torch.from_numpy(labels).view(-1, block_size)


class DeviceBatches:
    """A sampler's batches on the device, the next one drawn ahead so its copy overlaps the current step.

    As nanoGPT's get_batch: pinned host memory and non-blocking copies on CUDA. Its state is the sampler's as of
    the batches handed out (not the one drawn ahead), so a checkpoint taken between steps resumes exactly.
    """

    def __init__(self, sampler: WindowSampler, device: torch.device) -> None:
        self.sampler, self.device = sampler, device
        self._draw_ahead()

    def _draw_ahead(self) -> None:
        self._state = self.sampler.state_dict()
        batch = self.sampler.next_batch()
        if self.device.type == "cuda":
            batch = tuple(tensor.pin_memory().to(self.device, non_blocking=True) for tensor in batch)
        self._ahead = tuple(tensor.to(self.device) for tensor in batch)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self._ahead
        self._draw_ahead()
        return batch

    def state_dict(self) -> dict:
        return self._state

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)
        self._draw_ahead()
