"""The figures of benchmarks/gpu_check.sh, as one table: training and generation, each against its anchor.

    python benchmarks/gpu_check.py [--cpu] [--tests "pytest summary line"]

Training: `train.py` with the seed config (bf16 + compile on a GPU) for a few optimizer steps, its tokens/s and MFU
from the second half of the steps (the first ones compile), against a plain nanoGPT-style loop (torch.compile,
autocast, fused AdamW, no Accelerate) over the same model and batch in the same run; on the CPU both run
uncompiled, to keep the dry run short. Generation: greedy, batch 1,
our model against GPT2LMHeadModel with the same weights (conversion.to_gpt2). With --cpu: tiny shapes on the CPU,
to prove the script works (the figures then mean nothing).
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from tinystories_gpt import TinyStoriesGPTConfig, TinyStoriesGPTForCausalLM
from tinystories_gpt.export.gpt2 import to_gpt2
from tinystories_gpt.training.hardware import peak_flops, resolve_mixed_precision
from tinystories_gpt.training.records import model_flops_per_token

REPO = Path(__file__).resolve().parent.parent
SEED = dict(n_layer=6, n_head=6, n_embd=384, block_size=128, vocab_size=50257)
TINY = dict(n_layer=2, n_head=2, n_embd=64, block_size=64, vocab_size=50257)

PLAIN_LOOP = """
import json, sys, time, torch
from tinystories_gpt import TinyStoriesGPTConfig, TinyStoriesGPTForCausalLM
shape, steps, batch_size, device = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
bf16, compile = sys.argv[5] == "1", device == "cuda"
torch.manual_seed(0)
model = TinyStoriesGPTForCausalLM(TinyStoriesGPTConfig(**shape, dropout=0.1)).to(device).train()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=device == "cuda")
model = torch.compile(model) if compile else model
data = torch.randint(0, shape["vocab_size"], (steps, batch_size, shape["block_size"] + 1), device=device)
def step(batch):
    input_ids, labels = batch[:, :-1].contiguous(), batch[:, 1:].contiguous()
    with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
        loss = model(input_ids=input_ids, labels=labels, shift_labels=labels, use_cache=False).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()
warmup = steps // 2  # compiles, as in train.py's first half
for batch in data[:warmup]:
    step(batch)
started = time.perf_counter()
for batch in data[warmup:]:
    step(batch)
print((steps - warmup) * batch_size * shape["block_size"] / (time.perf_counter() - started))
"""


def train_ours(shape: dict, steps: int, batch_size: int, cpu: bool, workdir: Path) -> float:
    """Tokens/s of train.py over the second half of `steps` (its metrics line at the last evaluation)."""
    command = [sys.executable, str(REPO / "train.py"), "--config", str(REPO / "configs" / "seed.yaml")]
    command += [f"--{name}={value}" for name, value in shape.items() if name != "vocab_size"]
    command += ["--dataset", str(REPO / "data" / "tinystories"), "--cache_dir", str(workdir / "cache")]
    command += ["--output_dir", str(workdir / "ours"), "--max_iters", str(steps), "--warmup_steps", "1"]
    command += ["--batch_size", str(batch_size), "--gradient_accumulation_steps", "1", "--eval_iters", "1"]
    command += ["--eval_interval", str(steps // 2), "--checkpoint_interval", str(steps), "--num_samples", "0"]
    command += ["--mixed_precision", "auto"] + (["--cpu"] if cpu else ["--compile"])
    subprocess.run(command, check=True, capture_output=True, text=True)
    last = json.loads((workdir / "ours" / "metrics.jsonl").read_text().splitlines()[-1])
    return last["tokens_per_second"]


def train_plain(shape: dict, steps: int, batch_size: int, device: str) -> float:
    bf16 = "1" if resolve_mixed_precision("auto", use_cuda=device == "cuda") == "bf16" else "0"  # as train.py's auto
    command = [sys.executable, "-c", PLAIN_LOOP, json.dumps(shape), str(steps), str(batch_size), device, bf16]
    return float(subprocess.run(command, check=True, capture_output=True, text=True).stdout.split()[-1])


@torch.no_grad()
def generation_tokens_per_second(model: torch.nn.Module, new_tokens: int, device: str, rounds: int = 3) -> float:
    prompt = torch.tensor([[50256, 7454, 2402, 257, 640]], device=device)
    settings = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=50256)
    model.generate(prompt, **settings)  # warm-up
    times = []
    for _ in range(rounds):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        model.generate(prompt, **settings)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return new_tokens / sorted(times)[rounds // 2]


def mfu(flops_per_token: float, peak: float | None, *tokens_per_second: float) -> str:
    if peak is None:
        return "n/a (no known peak FLOP/s for this device)"
    return " / ".join(f"{flops_per_token * rate / peak:.1%}" for rate in tokens_per_second)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="tiny shapes on the CPU: proves the script, not the GPU")
    parser.add_argument("--tests", default="not run", help="the CUDA tests' pytest summary, for the table")
    args = parser.parse_args()
    device = "cpu" if args.cpu or not torch.cuda.is_available() else "cuda"
    shape, steps, batch_size, new_tokens = (TINY, 6, 4, 32) if device == "cpu" else (SEED, 40, 32, 100)

    with tempfile.TemporaryDirectory() as workdir:
        ours = train_ours(shape, steps, batch_size, device == "cpu", Path(workdir))
    plain = train_plain(shape, steps, batch_size, device)
    model = TinyStoriesGPTForCausalLM(TinyStoriesGPTConfig(**shape, dropout=0.0)).to(device).eval()
    n_params = model.num_parameters()
    peak = peak_flops(torch.device(device))
    flops_per_token = model_flops_per_token(model.config, n_params)
    ours_generate = generation_tokens_per_second(model, new_tokens, device)
    gpt2_generate = generation_tokens_per_second(to_gpt2(model).to(device), new_tokens, device)

    name = torch.cuda.get_device_name(0) if device == "cuda" else "CPU (--cpu: tiny shapes, figures meaningless)"
    precision = resolve_mixed_precision("auto", use_cuda=device == "cuda")
    rows = [
        ("device", name),
        ("CUDA tests", args.tests),
        (
            "model",
            f"{n_params / 1e6:.1f}M parameters, {shape['n_layer']} x {shape['n_embd']}, context {shape['block_size']}",
        ),
        (f"training tok/s, ours ({precision}{', compile' if device == 'cuda' else ''})", f"{ours:,.0f}"),
        ("training tok/s, plain loop", f"{plain:,.0f}"),
        ("training ours / plain", f"{ours / plain:.2f}"),
        ("MFU, ours / plain", mfu(flops_per_token, peak, ours, plain)),
        (f"greedy generate tok/s, ours (batch 1, {new_tokens} new)", f"{ours_generate:,.0f}"),
        ("greedy generate tok/s, GPT2LMHeadModel", f"{gpt2_generate:,.0f}"),
        ("generate ours / GPT-2", f"{ours_generate / gpt2_generate:.2f}"),
    ]
    width = max(len(label) for label, _ in rows)
    print(f"| {'check':<{width}} | result |\n|{'-' * (width + 2)}|--------|")
    for label, value in rows:
        print(f"| {label:<{width}} | {value} |")


if __name__ == "__main__":
    main()
