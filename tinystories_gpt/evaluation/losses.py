"""Scoring a model: the loss of a batch, the loss over fixed windows while training, and a full pass over a split
(loss, perplexity and bits per byte, through the `evaluate` metric shipped beside this file in bits_per_byte/).

Every function here takes batches in the format of data/batches.py and works in one process or many: with an
`Accelerator`, each process scores its share and the totals are summed across processes.
"""

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from ..data.batches import IGNORE_INDEX, sequential_batches

if TYPE_CHECKING:
    import evaluate

    from ..data.token_files import TokenFile

METRIC_PATH = Path(__file__).resolve().parent / "bits_per_byte"


def next_token_loss(model: torch.nn.Module, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy (fp32) of the pre-shifted `labels`, -100 ignored, through the model's own loss.

    `shift_labels` tells Transformers' loss that the labels are already shifted; `use_cache=False` because a
    training or scoring forward has no use for the keys and values a KV cache would keep.
    """
    return model(input_ids=input_ids, labels=labels, shift_labels=labels, use_cache=False).loss


def _summed_loss(model: torch.nn.Module, input_ids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(summed nats in float64, number of labels scored) of one batch."""
    num_labels = int((labels != IGNORE_INDEX).sum())
    return next_token_loss(model, input_ids, labels).double() * num_labels, num_labels


@torch.no_grad()
def estimate_loss(model: torch.nn.Module, batches: list, accelerator: Accelerator) -> float:
    """Mean loss over a fixed list of batches, each process scoring its share, averaged over all of them."""
    model.eval()
    totals = torch.zeros(2, device=accelerator.device, dtype=torch.float64)  # summed nats, labels
    with accelerator.split_between_processes(batches) as share:
        num_mine = len(share)
    # padded with copies of the last batch so every process runs as many forwards (FSDP's all-gathers must pair
    # up); only the first num_mine count. Eager even under --compile: an eval-mode graph would be compiled anew,
    # for a few seconds of forwards
    with (
        accelerator.split_between_processes(batches, apply_padding=True) as padded,
        torch.compiler.set_stance("force_eager"),
    ):
        for index, (input_ids, labels) in enumerate(padded):
            nats, num_labels = _summed_loss(model, input_ids.to(accelerator.device), labels.to(accelerator.device))
            if index < num_mine:
                totals += torch.stack([nats, torch.tensor(float(num_labels), device=totals.device).double()])
    model.train()
    totals = accelerator.reduce(totals, reduction="sum")
    return (totals[0] / totals[1]).item()


def load_metric() -> "evaluate.EvaluationModule":
    """The bits-per-byte metric, loaded from the package folder: no Hub at run time."""
    import evaluate  # here, not at the top: it imports datasets and pyarrow, which the Hub-side code must not need

    return evaluate.load(str(METRIC_PATH))


@torch.no_grad()
def evaluate_split(
    model: torch.nn.Module,
    split: "TokenFile",
    batch_size: int = 32,
    progress: bool = True,
    accelerator: Accelerator | None = None,
) -> dict[str, float]:
    """A full sequential pass: every token of the split predicted once, end-of-story tokens included.

    Returns `loss` (nats per token), `perplexity`, `bits_per_byte` (total nats / (ln 2 x the split's UTF-8
    bytes, one separator byte per story)), and the `tokens` and `bytes` counted. With an `accelerator`, each
    process scores a contiguous share of the split (`model` must then be a plain, unsharded model on every process)
    and all of them get the figures of the whole split.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    rank, world_size = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    # max_position_embeddings: the context under the name every causal LM has (an exported GPT-2 too)
    block_size = model.config.max_position_embeddings
    batches = sequential_batches(split.tokens(), block_size, batch_size, model.config.eos_token_id, rank, world_size)
    total_batches = -(-split.num_tokens // (block_size * batch_size * world_size))
    totals = torch.zeros(2, dtype=torch.float64, device=device)  # summed nats, labels
    for input_ids, labels in tqdm(batches, total=total_batches, desc="evaluating", disable=not progress):
        nats, num_labels = _summed_loss(model, input_ids.to(device), labels.to(device))
        totals += torch.stack([nats, torch.tensor(float(num_labels), device=device).double()])
    if accelerator is not None:
        totals = accelerator.reduce(totals, reduction="sum")
    model.train(was_training)
    total_nats, total_labels = totals.tolist()
    return load_metric().compute(nats=[total_nats], tokens=[int(total_labels)], num_bytes=split.num_bytes)
