"""Loss, perplexity and bits per byte over a whole split, through the `evaluate` metric shipped in the package."""

from pathlib import Path

import evaluate
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .data import IGNORE_INDEX, TokenFile, sequential_batches

METRIC_PATH = Path(__file__).resolve().parent / "metrics" / "bits_per_byte"


def load_metric() -> evaluate.Metric:
    """The bits-per-byte metric, loaded from the package folder: no Hub at run time."""
    return evaluate.load(str(METRIC_PATH))


@torch.no_grad()
def evaluate_split(
    model: torch.nn.Module, split: TokenFile, batch_size: int = 32, progress: bool = True
) -> dict[str, float]:
    """A full sequential pass: every token of the split predicted once, end-of-story tokens included.

    Returns `loss` (nats per token), `perplexity`, `bits_per_byte` (total nats / (ln 2 x the split's UTF-8
    bytes, one separator byte per story)), and the `tokens` and `bytes` counted.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    metric = load_metric()
    # max_position_embeddings: the context under the name every causal LM has (an exported GPT-2 too)
    block_size = model.config.max_position_embeddings
    batches = sequential_batches(split.tokens(), block_size, batch_size, model.config.eos_token_id)
    total_batches = -(-split.num_tokens // (block_size * batch_size))
    for input_ids, labels in tqdm(batches, total=total_batches, desc="evaluating", disable=not progress):
        logits = model(input_ids=input_ids.to(device)).logits
        nats = F.cross_entropy(
            logits.float().flatten(0, 1), labels.to(device).flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
        )
        metric.add_batch(nats=[nats.item()], tokens=[int((labels != IGNORE_INDEX).sum())])
    model.train(was_training)
    return metric.compute(num_bytes=split.num_bytes)
