"""What the machine can do: mixed precision, compile, peak FLOP/s."""

import sys
from types import SimpleNamespace

import pytest
import torch

from tinystories_gpt.training import hardware
from tinystories_gpt.training.hardware import can_compile, peak_flops, resolve_mixed_precision


def test_mixed_precision_auto_follows_the_device_and_fp16_on_cpu_is_refused(monkeypatch):
    assert resolve_mixed_precision("no", use_cuda=False) == "no"
    monkeypatch.setattr(hardware, "cpu_has_bf16_matmul", lambda: True)
    assert resolve_mixed_precision("auto", use_cuda=False) == "bf16"
    monkeypatch.setattr(hardware, "cpu_has_bf16_matmul", lambda: False)
    assert resolve_mixed_precision("auto", use_cuda=False) == "no"
    assert resolve_mixed_precision("bf16", use_cuda=False) == "bf16"  # asked for by name: kept, whatever the CPU
    with pytest.raises(ValueError, match="fp16 needs a CUDA GPU"):
        resolve_mixed_precision("fp16", use_cuda=False)


@pytest.mark.parametrize(
    "amx, avx512_bf16, isa, expected",
    [
        (True, True, None, True),  # an Intel Xeon with AMX
        (False, True, None, True),  # an AMD EPYC (Zen 4): AVX512-BF16, no AMX
        (True, True, "AVX512_CORE_BF16", True),  # AMX off, AVX512-BF16 still on
        (False, True, "avx512_core_amx", True),
        (True, True, "AVX512_CORE", False),  # oneDNN held below bf16
        (True, True, "avx2", False),
        (False, False, None, False),  # no bf16 arithmetic: most laptops and desktops
    ],
)
def test_bf16_counts_where_onednn_may_run_it_in_hardware(monkeypatch, amx, avx512_bf16, isa, expected):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    if isa is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
    assert hardware.cpu_has_bf16_matmul() is expected


def test_peak_flops_match_the_specific_card_first(monkeypatch):
    cuda = torch.device("cuda", 0)
    for name, expected in [
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA A10G", 70e12),
        ("NVIDIA L40", 181e12),
        ("NVIDIA GeForce GTX 1080", None),
    ]:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device, name=name: name)
        assert peak_flops(cuda) == expected, name
    assert peak_flops(torch.device("cpu")) is None


def test_compile_without_a_cpp_compiler_trains_uncompiled_and_says_how_to_fix_it(monkeypatch):
    printed = []
    on_cpu = SimpleNamespace(device=torch.device("cpu"), print=printed.append)
    monkeypatch.setenv("CXX", "no-such-c++-compiler")
    assert not can_compile(on_cpu)
    assert "needs a C++ compiler ('no-such-c++-compiler'" in printed[0] and "install one" in printed[0]
    monkeypatch.setenv("CXX", sys.executable)  # any program that exists
    assert can_compile(on_cpu)
