"""What an ONNX folder's graphs score on a split, run by ONNX Runtime: loss, perplexity and bits per byte of the
float32 graph and of the 8-bit one, so that the smaller download's cost in quality is a figure, not a guess.

The conventions are evaluation/losses.py's: the split's token file (data/token_files.py), every token predicted
once in consecutive windows of the context (data/batches.py's `sequential_batches`, end-of-story tokens included),
and bits per byte = summed nats / (ln 2 x the split's UTF-8 bytes), through the same `evaluate` metric.
"""

import tempfile
from pathlib import Path

import onnxruntime
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import AutoConfig, AutoTokenizer, PretrainedConfig

from ..data.batches import IGNORE_INDEX, sequential_batches
from ..data.token_files import TokenFile, tokenize_split
from ..evaluation.losses import load_metric
from .onnx import ONNX_PATH, QUANTIZED_PATH, empty_cache, run_step

GRAPHS = {"fp32": ONNX_PATH, "q8": QUANTIZED_PATH}


def score_graph(path: Path, config: PretrainedConfig, split: TokenFile, batch_size: int = 8) -> dict[str, float]:
    """A full pass of one graph over `split`: loss (nats per token), perplexity, bits per byte, tokens, bytes."""
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    total_nats, total_labels = 0.0, 0
    batches = sequential_batches(split.tokens(), config.n_positions, batch_size, config.eos_token_id)
    for input_ids, labels in batches:
        logits = run_step(session, input_ids, empty_cache(config, input_ids.shape[0]))["logits"]
        nats = F.cross_entropy(
            torch.from_numpy(logits).flatten(0, 1).double(),
            labels.flatten(),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        total_nats += nats.item()
        total_labels += int((labels != IGNORE_INDEX).sum())
    return load_metric().compute(nats=[total_nats], tokens=[total_labels], num_bytes=split.num_bytes)


def score_onnx_folder(
    folder: str | Path, texts: Dataset, split: str = "validation", cache_dir: str | Path | None = None
) -> dict[str, dict[str, float]]:
    """{"fp32": figures, "q8": figures} for the graphs an ONNX folder (`convert.py onnx`) holds, on the stories of
    `texts` (a split of `data.sources.load_text_splits`, named `split`)."""
    folder = Path(folder)
    graphs = {name: folder / path for name, path in GRAPHS.items() if (folder / path).is_file()}
    if not graphs:
        raise FileNotFoundError(f"{folder} holds no {ONNX_PATH}; write the folder with convert.py onnx")
    config, tokenizer = AutoConfig.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    with tempfile.TemporaryDirectory() as scratch:
        token_file = tokenize_split(texts, tokenizer, cache_dir or scratch, split)
        return {name: score_graph(path, config, token_file) for name, path in graphs.items()}


__all__ = ["score_onnx_folder"]
