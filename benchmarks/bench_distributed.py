"""FSDP2 against DDP on this machine's CPUs, 2 processes each: wall time, peak RSS per process, and how far apart the
two trained models are.

    python benchmarks/bench_distributed.py [--steps 40]

Both runs are the shipped accelerate configs (configs/accelerate/ddp.yaml, fsdp.yaml) launched with `--cpu`, the
quickstart's model shape (4 x 256, bpe:3071), fp32, the same seed and windows. Each process reports its own peak RSS.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from tinystories_gpt import TinyStoriesGPTForCausalLM

REPO = Path(__file__).resolve().parent.parent
REPORTING = """
import os, resource, runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of rank {os.environ.get('RANK', '0')}: {peak_mb:.0f} MB", flush=True)
"""


def run(config: str, steps: int, workdir: Path, port: int) -> tuple[float, list[str]]:
    """(wall seconds, one 'peak RSS' line per process) of a 2-process launch."""
    reporter = workdir / "reporting.py"
    reporter.write_text(REPORTING)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", f"configs/accelerate/{config}.yaml"]
    command += ["--num_processes", "2", "--main_process_port", str(port), str(reporter), str(REPO / "train.py")]
    command += ["--config", "configs/quickstart.yaml", "--output_dir", str(workdir / config), "--cpu"]
    command += ["--cache_dir", str(workdir / "cache"), "--max_iters", str(steps), "--eval_interval", str(steps)]
    command += [
        "--checkpoint_interval",
        str(steps),
        "--compile",
        "false",
        "--mixed_precision",
        "no",
        "--warmup_steps",
        "5",
        "--small_shape_below_steps",  # the preset's 4 x 256 on every machine
        "0",
        "--overwrite_output_dir",  # the timed DDP run replaces the cache-warming one
    ]
    started = time.perf_counter()
    result = subprocess.run(
        command, capture_output=True, text=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    if result.returncode:
        raise RuntimeError(result.stderr[-3000:])
    return time.perf_counter() - started, re.findall(r"peak RSS of rank \d+: \d+ MB", result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        workdir = Path(workdir)
        run("ddp", 6, workdir, 29531)  # tokenizes into the shared cache, so neither timed run pays for it
        figures = {
            config: run(config, args.steps, workdir, 29532 + index) for index, config in enumerate(("ddp", "fsdp"))
        }
        probe = torch.randint(0, 3000, (4, 128), generator=torch.Generator().manual_seed(0))
        logits = {}
        for config in figures:
            model = TinyStoriesGPTForCausalLM.from_pretrained(workdir / config / "best").eval()
            with torch.no_grad():
                logits[config] = model(probe).logits
    difference = (logits["fsdp"] - logits["ddp"]).abs().max().item()
    print(f"quickstart shape, 2 processes, fp32, {args.steps} optimizer steps, CPU")
    for config, (seconds, peaks) in figures.items():
        print(f"{config:>4}: {seconds:6.1f} s wall, {', '.join(peaks)}")
    print(f"max |logit difference| FSDP vs DDP: {difference:.2e}")


if __name__ == "__main__":
    main()
