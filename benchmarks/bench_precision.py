"""Quickstart training step: bf16 autocast against fp32, with this CPU's AMX units and without them.

    python benchmarks/bench_precision.py [--rounds 3] [--steps 30] [--compile]

A CPU with AVX512-BF16 but no AMX (AMD EPYC, older Xeons) runs bf16 matmuls on oneDNN's avx512_core_bf16 kernels;
`ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16` makes this machine use those kernels too, so both kinds of CPU are measured in
one run (the clock and memory of the other machine are not emulated: compare ratios, not times). Each configuration
runs in its own process (oneDNN reads the variable once), alternating over rounds; the anchor is fp32 on this CPU's
own ISA. Prints the median ms per optimizer step (batch 16 x 128, the quickstart model, eager attention).

The emulation is not such a CPU: on an AMD EPYC (AVX512-BF16, no AMX) bf16 measured 2.3-3.1x as fast as fp32, where
the Intel Xeon held to the same kernels measured 0.72x. Run it on the CPU you mean.
"""

import argparse
import os
import statistics
import subprocess
import sys

from machine import cpu_name

STEP = """
import sys, time, torch
from tinystories_gpt import TinyStoriesGPTConfig, TinyStoriesGPTForCausalLM
steps, bf16, compiled = int(sys.argv[1]), sys.argv[2] == "bf16", sys.argv[3] == "1"
torch.manual_seed(0)
config = TinyStoriesGPTConfig(vocab_size=3072, block_size=128, n_layer=4, n_head=4, n_embd=256, dropout=0.0)
model = TinyStoriesGPTForCausalLM._from_config(config, attn_implementation="eager").train()
if compiled:
    model.compile()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.7, betas=(0.9, 0.99))
data = torch.randint(0, 3072, (steps + 5, 16, 129))
def step(batch):
    input_ids, labels = batch[:, :-1].contiguous(), batch[:, 1:].contiguous()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = model(input_ids=input_ids, labels=labels, shift_labels=labels, use_cache=False).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
for batch in data[:5]:
    step(batch)
started = time.perf_counter()
for batch in data[5:]:
    step(batch)
print(1000 * (time.perf_counter() - started) / steps)
"""
CONFIGS = {  # name: (precision, ONEDNN_MAX_CPU_ISA or None)
    "fp32, this CPU": ("fp32", None),
    "bf16, this CPU": ("bf16", None),
    "fp32, no AMX": ("fp32", "AVX512_CORE_BF16"),
    "bf16, no AMX": ("bf16", "AVX512_CORE_BF16"),
}


def measure(precision: str, isa: str | None, steps: int, compiled: bool) -> float:
    environment = {key: value for key, value in os.environ.items() if key != "ONEDNN_MAX_CPU_ISA"}
    if isa:
        environment["ONEDNN_MAX_CPU_ISA"] = isa
    command = [sys.executable, "-c", STEP, str(steps), precision, "1" if compiled else "0"]
    return float(subprocess.run(command, capture_output=True, text=True, check=True, env=environment).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    times = {name: [] for name in CONFIGS}
    for _ in range(args.rounds):
        for name, (precision, isa) in CONFIGS.items():
            times[name].append(measure(precision, isa, args.steps, args.compile))
    cpu = cpu_name()
    anchor = statistics.median(times["fp32, this CPU"])
    print(f"{cpu}, {os.cpu_count()} cores; quickstart step, batch 16 x 128{', compiled' if args.compile else ''}")
    print(f"{'configuration':<16} {'ms/step':>8} {'vs fp32 here':>13}")
    for name, measured in times.items():
        median = statistics.median(measured)
        print(f"{name:<16} {median:>8.1f} {anchor / median:>12.2f}x")


if __name__ == "__main__":
    main()
