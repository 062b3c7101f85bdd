"""The optimizer and the learning-rate schedule."""

import math

import torch

from .arguments import TrainingArguments


def build_optimizer(model: torch.nn.Module, args: TrainingArguments, fused: bool) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and embeddings only; biases and LayerNorms are not decayed."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": args.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=args.learning_rate, betas=(args.beta1, args.beta2), fused=fused)


def learning_rate_at(step: int, args: TrainingArguments) -> float:
    """Linear warmup from learning_rate / (warmup_steps + 1) to learning_rate, then cosine or linear decay to min_lr
    at max_iters (Transformers' cosine_with_min_lr shape, and its linear one ending at min_lr instead of 0); wsd
    holds learning_rate until `decay_start` and decays along a cosine from there (warmup-stable-decay)."""
    if step < args.warmup_steps:
        return args.learning_rate * (step + 1) / (args.warmup_steps + 1)
    start = decay_start(args) if args.lr_scheduler_type == "wsd" else args.warmup_steps
    if step < start:
        return args.learning_rate
    decay_steps = max(args.max_iters - start, 1)
    progress = min((step - start) / decay_steps, 1.0)
    if args.lr_scheduler_type == "linear":
        remaining = 1.0 - progress
    else:
        remaining = 0.5 * (1.0 + math.cos(math.pi * progress))
    return args.min_lr + remaining * (args.learning_rate - args.min_lr)


def decay_start(args: TrainingArguments) -> int:
    """The step a wsd schedule starts its decay at: the last `decay_fraction` of max_iters, after the warmup."""
    return max(args.warmup_steps, args.max_iters - round(args.decay_fraction * args.max_iters))


def set_learning_rate(optimizer: torch.optim.Optimizer, learning_rate: float) -> None:
    """Set every parameter group's rate, as nanoGPT does before each step (the schedule is a function of the step)."""
    for group in optimizer.param_groups:
        group["lr"] = learning_rate
