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
    return "bf16" if cpu_has_bf16_matmul() else "no"


# oneDNN's ISA levels below AVX512_CORE_BF16: ONEDNN_MAX_CPU_ISA at one of them keeps bf16 instructions off
ISAS_WITHOUT_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI")


def cpu_has_bf16_matmul() -> bool:
    """Whether oneDNN may run bf16 matmuls in hardware here, on AMX tiles or AVX512-BF16 instructions: the CPUs where
    bf16 autocast trains faster than fp32.

    Measured on the quickstart step (benchmarks/bench_precision.py, compiled, 2 cores): bf16 is 2.4x as fast as fp32
    on an Intel Xeon with AMX, and 2.3-3.1x on an AMD EPYC with AVX512-BF16 and no AMX. (An Intel Xeon held to its
    AVX512-BF16 kernels by ONEDNN_MAX_CPU_ISA ran it at 0.72x, but no real CPU is that one.) A CPU without either
    (most laptops and desktops) has no bf16 arithmetic and trains in fp32. torch has no public query for these; its
    own `torch.cpu._is_amx_tile_supported` and `_is_avx512_bf16_supported` are read here and nowhere else.
    """
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper() in ISAS_WITHOUT_BF16:
        return False
    return torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()


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
