"""Whether a run fits in memory, estimated from its shapes before any data work: a refusal that names the largest
part and what shrinks it, where the run would otherwise be killed hours in."""

import os

import psutil
import torch

from .arguments import DataArguments, ModelArguments, TrainingArguments

GPT2_VOCAB_SIZE = 50257
# What shrinks each part of `training_memory`, for the refusal
_SMALLER_BATCH = "lower --batch_size (raise --gradient_accumulation_steps to keep the tokens per step) or --block_size"
MEMORY_FIXES = {
    "logits": _SMALLER_BATCH,
    "activations": _SMALLER_BATCH,
    "weights, gradients and AdamW state": "use a smaller model (--n_layer, --n_embd) or vocabulary",
    "evaluation windows": "lower --eval_iters",
}


def training_memory(model_args: ModelArguments, data_args: DataArguments, args: TrainingArguments) -> dict[str, int]:
    """A low estimate of the bytes one training process holds at its peak, by part, from the shapes alone.

    The activations follow Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer
    Models"): per layer, block_size x batch x n_embd x (34 + 5 n_head block_size / n_embd) bytes at 16 bits, the
    second term only where attention scores are kept (eager); the logits are held in float32 for the loss; the
    fixed evaluation windows are int64 inputs and labels for both splits.
    """
    width, length, batch = model_args.n_embd, model_args.block_size, args.batch_size
    vocab_size = model_args.vocab_size or _expected_vocab_size(data_args.tokenizer)
    parameters = (vocab_size + length) * width + model_args.n_layer * 12 * width * width
    value_bytes = 4 if args.mixed_precision == "no" else 2  # "auto" may pick 16 bits: the lower figure
    kept_scores = 5 * model_args.n_head * length if model_args.attn_implementation == "eager" else 0
    return {
        "logits": batch * length * vocab_size * (value_bytes + 4),
        "activations": model_args.n_layer * batch * length * (34 * width + kept_scores) * value_bytes // 2,
        "weights, gradients and AdamW state": 16 * parameters,
        "evaluation windows": 2 * args.eval_iters * args.eval_batch_size * length * 2 * 8,
    }


def check_fits_in_memory(
    model_args: ModelArguments, data_args: DataArguments, args: TrainingArguments, device: torch.device
) -> None:
    """Refuse, before any data work, a shape whose estimate (`training_memory`) exceeds the device's memory."""
    parts = training_memory(model_args, data_args, args)
    needed, available = sum(parts.values()), device_memory(device)
    if needed <= available:
        return
    largest = sorted(parts.items(), key=lambda part: -part[1])
    raise ValueError(
        f"this run needs about {_size(needed)} of memory per process, more than the {_size(available)} "
        f"{'the GPU has' if device.type == 'cuda' else 'this machine has for it'} (block_size {model_args.block_size}, "
        f"batch_size {args.batch_size}, n_embd {model_args.n_embd}, {model_args.n_layer} layers: "
        + ", ".join(f"{name} {_size(size)}" for name, size in largest)
        + f"). To make it fit, {MEMORY_FIXES[largest[0][0]]}."
    )


def device_memory(device: torch.device) -> int:
    """Bytes of memory one training process can have: the GPU's, or the machine's shared by its local processes."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return psutil.virtual_memory().total // int(os.environ.get("LOCAL_WORLD_SIZE", 1))


def _expected_vocab_size(spec: str) -> int:
    """The vocabulary a tokenizer spec gives, known before the tokenizer is built (GPT-2's for a folder or Hub id)."""
    size = spec.removeprefix("bpe:")
    return int(size) + 1 if spec.startswith("bpe:") and size.isdigit() else GPT2_VOCAB_SIZE


def _size(num_bytes: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if num_bytes < 1000:
            return f"{num_bytes:.3g} {unit}"
        num_bytes /= 1000
    return f"{num_bytes:,.3g} TB"
