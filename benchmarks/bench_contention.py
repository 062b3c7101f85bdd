"""Two trainings on one machine: how OpenMP's wait policy and thread count share the cores.

    python benchmarks/bench_contention.py [--seconds 30] [--rounds 2] [--compile]

A new user's quickstart often shares its cores for a while (a second training, an IDE indexing, a build). Each
PyTorch process starts as many OpenMP threads as there are cores, and by default libgomp's idle threads spin before
they sleep, so two such processes on the same cores take each other's time slices to spin in. For each setting this
runs the quickstart's training step (bf16 autocast as `auto` picks it where the CPU has bf16 kernels, eager
attention, batch 16 x 128) alone, then two copies at once, and prints optimizer steps per second. The anchor is the
default setting alone; "both" is the sum of the two copies, so 1.00x means sharing lost nothing.
"""

import argparse
import os
import statistics
import subprocess
import sys

from machine import cpu_name

STEPS_FOR = """
import sys, time, torch
from tinystories_gpt import TinyStoriesGPTConfig, TinyStoriesGPTForCausalLM
from tinystories_gpt.training.hardware import cpu_has_bf16_matmul
seconds, compiled = float(sys.argv[1]), sys.argv[2] == "1"
torch.manual_seed(0)
config = TinyStoriesGPTConfig(vocab_size=3072, block_size=128, n_layer=4, n_head=4, n_embd=256, dropout=0.0,
                             bos_token_id=3071, eos_token_id=3071)
model = TinyStoriesGPTForCausalLM._from_config(config, attn_implementation="eager").train()
if compiled:
    model.compile()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.7, betas=(0.9, 0.99))
batch = torch.randint(0, 3072, (16, 129))
input_ids, labels = batch[:, :-1].contiguous(), batch[:, 1:].contiguous()
def step():
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cpu_has_bf16_matmul()):
        loss = model(input_ids=input_ids, labels=labels, shift_labels=labels, use_cache=False).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
for _ in range(5):  # compiling, when asked, happens here
    step()
steps, started = 0, time.perf_counter()
while time.perf_counter() - started < seconds:
    step()
    steps += 1
print(steps / (time.perf_counter() - started))
"""
SETTINGS = {  # name: environment added to each process
    "default": {},
    "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "GOMP_SPINCOUNT=10000": {"GOMP_SPINCOUNT": "10000"},
    "GOMP_SPINCOUNT=100000": {"GOMP_SPINCOUNT": "100000"},
    "OMP_NUM_THREADS=1": {"OMP_NUM_THREADS": "1"},
}


def steps_per_second(extra_environment: dict[str, str], seconds: float, copies: int, compiled: bool) -> list[float]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("OMP_", "GOMP_"))}
    environment.update(extra_environment)
    command = [sys.executable, "-c", STEPS_FOR, str(seconds), "1" if compiled else "0"]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=environment) for _ in range(copies)]
    rates = []
    for process in processes:
        output, _ = process.communicate(timeout=seconds + 300)
        if process.returncode:
            raise SystemExit(f"a training process failed with exit status {process.returncode}")
        rates.append(float(output))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0, help="how long each measurement trains")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="compile the model, as the quickstart does")
    args = parser.parse_args()
    alone = {name: [] for name in SETTINGS}
    shared = {name: [] for name in SETTINGS}
    for _ in range(args.rounds):
        for name, environment in SETTINGS.items():
            alone[name].append(steps_per_second(environment, args.seconds, 1, args.compile)[0])
            shared[name].append(steps_per_second(environment, args.seconds, 2, args.compile))
    anchor = statistics.median(alone["default"])
    compiled = ", compiled" if args.compile else ""
    print(f"{cpu_name()}, {os.cpu_count()} cores; quickstart step{compiled}, {args.seconds:.0f} s a measurement")
    print(f"{'setting':<24} {'alone steps/s':>14} {'vs anchor':>10} {'shared: each':>13} {'both':>6} {'vs anchor':>10}")
    for name in SETTINGS:
        alone_rate = statistics.median(alone[name])
        each = statistics.median(rate for pair in shared[name] for rate in pair)
        both = statistics.median(sum(pair) for pair in shared[name])
        ratios = f"{alone_rate / anchor:>9.2f}x {each:>13.2f} {both:>6.2f} {both / anchor:>9.2f}x"
        print(f"{name:<24} {alone_rate:>14.2f} {ratios}")


if __name__ == "__main__":
    main()
