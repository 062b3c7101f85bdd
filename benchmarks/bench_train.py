"""Training throughput and memory of the seed config: our Accelerate loop against a plain nanoGPT-style loop.

    python benchmarks/bench_train.py [--steps 6] [--batch_size 32] [--precisions no auto]

Each measurement runs in its own process (so peak RSS is that run's alone): `train.py` with the seed preset on
the bundled data, and the anchor, a bare PyTorch loop over the same model, batch and AdamW (what nanoGPT's
train.py does, no Accelerate, no checkpoints). Prints tokens/s, the ratio ours / anchor and peak RSS.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_ours(steps: int, batch_size: int, precision: str, workdir: Path) -> dict:
    output_dir = workdir / f"ours-{precision}"
    command = [sys.executable, str(REPO / "train.py"), "--config", str(REPO / "configs" / "seed.yaml")]
    command += ["--dataset", str(REPO / "data" / "tinystories"), "--cache_dir", str(workdir / "cache")]
    command += ["--output_dir", str(output_dir), "--max_iters", str(steps), "--warmup_steps", "1"]
    command += ["--batch_size", str(batch_size), "--gradient_accumulation_steps", "1", "--eval_iters", "1"]
    command += ["--eval_interval", str(steps), "--num_samples", "0", "--mixed_precision", precision, "--cpu"]
    _, peak_rss_mb = run_measured(command[1:])
    record = json.loads((output_dir / "metrics.jsonl").read_text().splitlines()[-1])
    return {"tokens_per_second": record["tokens_per_second"], "peak_rss_mb": peak_rss_mb}


ANCHOR = """
import sys, time, torch
from tinystories_gpt import TinyStoriesGPTConfig, TinyStoriesGPTForCausalLM
steps, batch_size, bf16 = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "bf16"
torch.manual_seed(0)
model = TinyStoriesGPTForCausalLM(TinyStoriesGPTConfig()).train()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
data = torch.randint(0, 50257, (steps, batch_size, 129))
def step(batch):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model(batch[:, :-1]).logits
    loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
started = time.perf_counter()  # from the first step on, as train.py's tokens/s
for batch in data[:steps]:
    step(batch)
print(steps * batch_size * 128 / (time.perf_counter() - started))
"""


def run_anchor(steps: int, batch_size: int, precision: str, workdir: Path) -> dict:
    script = workdir / "anchor.py"
    script.write_text(ANCHOR)
    stdout, peak_rss_mb = run_measured([str(script), str(steps), str(batch_size), precision])
    return {"tokens_per_second": float(stdout.splitlines()[-2]), "peak_rss_mb": peak_rss_mb}


MEASURED = """
import resource, runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as exit:
    if exit.code:
        raise
print("peak_rss_kb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def run_measured(argv: list[str]) -> tuple[str, float]:
    """Run a script in a fresh Python; return its stdout and its own peak resident memory in MB."""
    result = subprocess.run([sys.executable, "-c", MEASURED, *argv], capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{argv[0]} failed:\n{result.stderr[-3000:]}")
    return result.stdout, float(result.stdout.split()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--precisions", nargs="+", default=["no", "auto"])
    args = parser.parse_args()

    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for precision in args.precisions:
            ours = run_ours(args.steps, args.batch_size, precision, Path(workdir))
            anchor_precision = "fp32" if precision == "no" else "bf16"
            anchor = run_anchor(args.steps, args.batch_size, anchor_precision, Path(workdir))
            rows.append((precision, ours, anchor))
    print(f"seed config (30.0M parameters), batch {args.batch_size} x 128, {args.steps} optimizer steps, CPU")
    print(f"{'precision':<10} {'ours tok/s':>11} {'plain tok/s':>12} {'ours/plain':>11} {'peak RSS ours / plain':>23}")
    for precision, ours, anchor in rows:
        ratio = ours["tokens_per_second"] / anchor["tokens_per_second"]
        print(
            f"{precision:<10} {ours['tokens_per_second']:>11,.0f} {anchor['tokens_per_second']:>12,.0f} "
            f"{ratio:>11.2f} {ours['peak_rss_mb']:>12,.0f} / {anchor['peak_rss_mb']:,.0f} MB"
        )
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
