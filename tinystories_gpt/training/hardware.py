"""What the machine can do: the mixed precision to train in, whether torch.compile can run, the peak FLOP/s for MFU."""

import os
import shutil

import torch
from accelerate import Accelerator

# bf16 dense matmul peak in FLOP/s (no sparsity), for MFU. Matched against torch.cuda.get_device_name in this
# order, the specific names first ("H100 PCIe" before "H100"); a GPU not listed reports no MFU rather than a wrong one.
PEAK_BF16_FLOPS = (
    ("GH200", 989e12),
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("RTX 4090", 165e12),
)


def resolve_mixed_precision(requested: str, use_cuda: bool) -> str:
    """Turn `auto` into what the device can do, and refuse what it would silently ignore."""
    if requested == "fp16" and not use_cuda:
        raise ValueError(
            "mixed_precision=fp16 needs a CUDA GPU: on the CPU Accelerate silently trains in fp32. "
            "Use --mixed_precision bf16 (or auto) on the CPU."
        )
    if requested != "auto":
        return requested
    if use_cuda:
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_amx() else "no"


def cpu_has_amx() -> bool:
    """Whether oneDNN may run bf16 matmuls on AMX tiles here: the only CPUs where bf16 autocast trains faster.

    Measured on the quickstart step (benchmarks/bench_precision.py, compiled): bf16 is 2.4x faster than fp32 with AMX
    but 0.72x as fast on AVX512-BF16 kernels alone (the casts cost more than the narrower matmuls save at this size),
    so a CPU without AMX trains in fp32. torch has no public query for AMX; `torch.cpu._is_amx_tile_supported` is
    the one it uses itself, so this is the one place that calls it. ONEDNN_MAX_CPU_ISA below AMX (oneDNN's own switch,
    also how bench_precision.py emulates a CPU without AMX) turns the tiles off, so it counts as no AMX.
    """
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    return torch.cpu._is_amx_tile_supported() and ("AMX" in isa or isa in ("ALL", "DEFAULT"))


def can_compile(accelerator: Accelerator) -> bool:
    """On a CPU, torch.compile builds C++ kernels: without a compiler, train uncompiled rather than fail later."""
    compiler = os.environ.get("CXX", "g++")  # what Inductor looks for on Linux
    if accelerator.device.type != "cpu" or shutil.which(compiler):
        return True
    accelerator.print(
        f"warning: --compile on a CPU needs a C++ compiler ({compiler!r}, or set CXX) and none was found, so "
        "training runs uncompiled and slower; install one (e.g. apt install g++) to compile"
    )
    return False


def peak_flops(device: torch.device) -> float | None:
    """The device's bf16 peak FLOP/s, or None where it is not known (CPUs, GPUs not in the table)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_BF16_FLOPS if key in name), None)
