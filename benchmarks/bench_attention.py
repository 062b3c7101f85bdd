"""Training-step speed of each attention kernel at the quickstart shapes, against sdpa in the same run.

    python benchmarks/bench_attention.py [--kernels sdpa eager] [--dropout 0.0] [--rounds 8]

The quickstart model (4 layers x 4 heads x 256 wide, context 128, 3,072-token vocabulary), batch 16, bf16 autocast
where the CPU supports it, forward + backward + AdamW. The kernels take turns in alternating order, 5 steps a
round; the median round is reported. This is the measurement behind `attn_implementation: eager` in
`configs/quickstart.yaml`.
"""

import argparse
import statistics
import time

import torch
import transformers

from tinystories_gpt import TinyStoriesGPTConfig, TinyStoriesGPTForCausalLM
from tinystories_gpt.training.hardware import resolve_mixed_precision

VOCAB, BLOCK, BATCH, STEPS_PER_ROUND = 3072, 128, 16, 5


def make_step(kernel: str, dropout: float, bf16: bool):
    """One training step of a fresh quickstart-shaped model that uses `kernel`."""
    torch.manual_seed(0)
    config = TinyStoriesGPTConfig(
        vocab_size=VOCAB, block_size=BLOCK, n_layer=4, n_head=4, n_embd=256, dropout=dropout, bos_token_id=None
    )
    model = TinyStoriesGPTForCausalLM._from_config(config, attn_implementation=kernel).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = torch.randint(0, VOCAB, (BATCH, BLOCK))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kernels", nargs="+", default=["sdpa", "eager"], help="the first is the anchor")
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    bf16 = resolve_mixed_precision("auto", use_cuda=False) == "bf16"

    steps = {kernel: make_step(kernel, args.dropout, bf16) for kernel in args.kernels}
    for step in steps.values():  # warm-up: allocator, oneDNN kernel selection
        step()
    seconds = {kernel: [] for kernel in args.kernels}
    for round_index in range(args.rounds):
        order = args.kernels if round_index % 2 == 0 else args.kernels[::-1]
        for kernel in order:
            started = time.perf_counter()
            for _ in range(STEPS_PER_ROUND):
                steps[kernel]()
            seconds[kernel].append((time.perf_counter() - started) / STEPS_PER_ROUND)

    anchor = statistics.median(seconds[args.kernels[0]])
    print(f"bf16 autocast: {bf16}, dropout {args.dropout}, {torch.get_num_threads()} threads, {args.rounds} rounds")
    print(f"| attention | ms/step | tokens/s | speed / {args.kernels[0]} |\n|---|---|---|---|")
    for kernel in args.kernels:
        median = statistics.median(seconds[kernel])
        print(f"| {kernel} | {median * 1e3:.0f} | {BATCH * BLOCK / median:,.0f} | {anchor / median:.2f} |")


if __name__ == "__main__":
    main()
