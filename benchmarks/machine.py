"""The machine a benchmark ran on, as every figure it reports names it."""

import subprocess


def cpu_name() -> str:
    """`lscpu`'s model name ("AMD EPYC", "Intel(R) Xeon(R) Processor"), or "unknown CPU"."""
    lines = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name")), "unknown CPU")
