"""Our model against Transformers' GPT2LMHeadModel: same shapes, same weights, same run, this machine.

    python benchmarks/bench_model.py [--shapes seed|quickstart] [--dtype fp32|bf16] [--repeats 10] [--threads N]

Measures a training step (forward + backward + AdamW, batch 8 x 128) and greedy generation (batch 1,
100 new tokens, KV cache), and prints tokens/s for both models and the ratio ours / GPT-2. The anchor is
GPT-2 measured in the same process, interleaved with ours, so machine load affects both alike. Shapes: the
seed table's (6 x 6 x 384, GPT-2 vocabulary) or the quickstart's (4 x 4 x 256, vocabulary 3,072); bf16 is
autocast, as training uses it.
"""

import argparse
import statistics
import time

import torch
from transformers import GPT2LMHeadModel

from tinystories_gpt import TinyStoriesGPTConfig, TinyStoriesGPTForCausalLM
from tinystories_gpt.export.gpt2 import to_gpt2

BATCH_SIZE, BLOCK_SIZE, NEW_TOKENS = 8, 128, 100
SHAPES = {
    "seed": TinyStoriesGPTConfig(),
    "quickstart": TinyStoriesGPTConfig(vocab_size=3072, n_layer=4, n_head=4, n_embd=256, dropout=0.0),
}


def training_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: torch.Tensor, dtype) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
        logits = model(input_ids=batch[:, :-1]).logits
    loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def generation(model: torch.nn.Module, prompt: torch.Tensor, dtype) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
        model.generate(prompt, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)


def timed(function, *args) -> float:
    started = time.perf_counter()
    function(*args)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", choices=tuple(SHAPES), default="seed")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    ours = TinyStoriesGPTForCausalLM(SHAPES[args.shapes])
    gpt2 = to_gpt2(ours)
    assert isinstance(gpt2, GPT2LMHeadModel)
    batch = torch.randint(0, ours.config.vocab_size, (BATCH_SIZE, BLOCK_SIZE + 1))
    prompt = torch.randint(0, ours.config.vocab_size, (1, BLOCK_SIZE - NEW_TOKENS))
    models = {"ours": ours, "gpt2": gpt2}
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-4) for name, model in models.items()}

    seconds = {(name, task): [] for name in models for task in ("train", "generate")}
    for repeat in range(args.repeats + 1):  # the first round warms up allocators and kernels
        # interleaved, and in alternating order, so both see the same machine load and allocator state
        for name, model in sorted(models.items(), reverse=repeat % 2 == 1):
            model.train()
            train_seconds = timed(training_step, model, optimizers[name], batch, args.dtype)
            model.eval()
            with torch.no_grad():
                generate_seconds = timed(generation, model, prompt, args.dtype)
            if repeat:
                seconds[name, "train"].append(train_seconds)
                seconds[name, "generate"].append(generate_seconds)

    tokens = {"train": BATCH_SIZE * BLOCK_SIZE, "generate": NEW_TOKENS}
    print(f"{args.shapes} shapes, {args.dtype}, {torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"{'task':<40} {'ours tok/s':>12} {'GPT-2 tok/s':>12} {'ours/GPT-2':>11}")
    labels = {"train": "training step (fwd+bwd+AdamW, 8 x 128)", "generate": "greedy generation (1 x 100, KV cache)"}
    for task, label in labels.items():
        ours_rate = tokens[task] / statistics.median(seconds["ours", task])
        gpt2_rate = tokens[task] / statistics.median(seconds["gpt2", task])
        print(f"{label:<40} {ours_rate:>12,.0f} {gpt2_rate:>12,.0f} {ours_rate / gpt2_rate:>11.2f}")


if __name__ == "__main__":
    main()
