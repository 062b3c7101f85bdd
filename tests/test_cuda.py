"""What only a CUDA GPU can check: fp16 with loss scaling, bf16, fused AdamW, the fused attention kernels against
eager, and --compile. Skipped, with the reason shown, on a machine without one; `benchmarks/gpu_check.sh` runs them
(`pytest -m cuda`)."""

import json
from pathlib import Path

import pytest
import torch
from runs import tiny_args

from tinystories_gpt import TinyStoriesGPTConfig, TinyStoriesGPTForCausalLM
from tinystories_gpt.training.arguments import TrainingArguments
from tinystories_gpt.training.loop import parse_args, train
from tinystories_gpt.training.optimization import build_optimizer

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu_check.sh runs these)"),
]


def gpu_args(tmp_path: Path, *extra: str) -> list[str]:
    """The tiny CPU run's arguments, on the GPU."""
    return [argument for argument in tiny_args(tmp_path, *extra) if argument != "--cpu"]


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_trains_on_the_gpu(tmp_path, precision, capsys):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    result = train(*parse_args(gpu_args(tmp_path, "--mixed_precision", precision, "--max_iters", "12")))
    assert f"device: cuda:0, mixed precision: {precision}" in capsys.readouterr().out
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["val_loss"] < records[0]["val_loss"] and result["bits_per_byte"] > 0


def test_fused_adamw_steps_as_the_plain_one():
    torch.manual_seed(0)
    config = TinyStoriesGPTConfig(vocab_size=128, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
    models = [TinyStoriesGPTForCausalLM(config).cuda() for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    args = TrainingArguments(learning_rate=1e-3, max_iters=10, warmup_steps=0)
    optimizers = [build_optimizer(model, args, fused=fused) for model, fused in zip(models, (False, True), strict=True)]
    input_ids = torch.randint(0, 128, (4, 16), device="cuda")
    for model, optimizer in zip(models, optimizers, strict=True):
        for _ in range(3):
            model(input_ids=input_ids, labels=input_ids).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    for plain, fused in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kernel", ["sdpa", "flash_attention_2", "flex_attention"])
def test_fused_attention_kernels_agree_with_eager_on_the_gpu(kernel):
    if kernel == "flash_attention_2":
        pytest.importorskip("flash_attn", reason="flash-attn is not installed")
    torch.manual_seed(0)
    config = TinyStoriesGPTConfig(vocab_size=128, block_size=64, n_layer=2, n_head=4, n_embd=64, dropout=0.0)
    eager = TinyStoriesGPTForCausalLM._from_config(config, attn_implementation="eager").cuda().eval()
    fused = TinyStoriesGPTForCausalLM._from_config(config, attn_implementation=kernel).cuda().eval()
    fused.load_state_dict(eager.state_dict())
    input_ids = torch.randint(0, 128, (2, 64), device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        expected, actual = eager(input_ids).logits.float(), fused(input_ids).logits.float()
    torch.testing.assert_close(actual, expected, rtol=0, atol=3e-2)  # bf16 rounding in both


def test_compiled_training_on_the_gpu(tmp_path, capsys):
    train(*parse_args(gpu_args(tmp_path, "--compile", "--mixed_precision", "bf16", "--max_iters", "8")))
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()
