"""Fine-tuning every weight against LoRA, from the same parent on the same stories.

    python benchmarks/bench_finetune.py out/quickstart/best [--lora_r 8] [--lora_learning_rate 3e-3] [--rounds 1]

Both runs use configs/finetune.yaml (its stories, hold-out and steps), each in its own process, one after the other
(alternating over --rounds). The anchor is the full fine-tune: LoRA's tokens/s and wall time are also given as ratios
to it. "Before" is the parent's loss over the whole hold-out, "after" best/'s (train.py's final pass over the same
stories), so the two compare. Whole runs minutes apart feel every change in a shared machine's load, so the speed
is also measured step against step: one optimizer step of each model in turn, in one process, the median of
--steps each.
"""

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
PRESET = REPO / "configs" / "finetune.yaml"


def hold_out_loss(model_dir: str, workdir: Path) -> dict:
    """Loss and bits per byte of a model over the preset's hold-out, tokenized with the model's own tokenizer."""
    from tinystories_gpt import TinyStoriesGPTForCausalLM
    from tinystories_gpt.data.token_files import prepare_data
    from tinystories_gpt.evaluation.losses import evaluate_split
    from tinystories_gpt.training.arguments import ARGUMENT_CLASSES
    from tinystories_gpt.training.presets import load_preset

    preset = load_preset(PRESET, ARGUMENT_CLASSES)
    prepared = prepare_data(
        str(REPO / preset["dataset"]),
        model_dir,
        cache_dir=workdir / "cache",
        validation_split_percentage=preset["validation_split_percentage"],
    )
    model = TinyStoriesGPTForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return evaluate_split(model, prepared.validation, preset["batch_size"], progress=False)


def fine_tune(parent: str, workdir: Path, name: str, extra: list[str]) -> dict:
    """One train.py run of the preset from `parent`: wall time, trainable parameters, mean tokens/s, final loss."""
    output_dir = workdir / name
    command = [sys.executable, str(REPO / "train.py"), "--config", str(PRESET), "--init_from", parent]
    command += ["--cache_dir", str(workdir / "cache"), "--output_dir", str(output_dir), "--num_samples", "0", *extra]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - started
    if result.returncode:
        raise RuntimeError(f"{name} failed:\n{result.stderr[-3000:]}")
    trainable, total = re.search(r"training .*: ([\d,]+) of ([\d,]+) parameters", result.stdout).groups()
    records = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    speeds = [record["tokens_per_second"] for record in records if "tokens_per_second" in record]
    return {
        "seconds": seconds,
        "trainable": int(trainable.replace(",", "")),
        "total": int(total.replace(",", "")),
        "tokens_per_second": sum(speeds) / len(speeds),
        "final": json.loads((output_dir / "final_metrics.json").read_text()),
    }


def interleaved_step_seconds(parent: str, lora_r: int, steps: int) -> tuple[dict[str, float], int]:
    """(the median seconds of one optimizer step, full and LoRA in turn (bf16 autocast), tokens per step)."""
    from tinystories_gpt import TinyStoriesGPTForCausalLM
    from tinystories_gpt.training.arguments import ARGUMENT_CLASSES, ModelArguments
    from tinystories_gpt.training.lora import add_lora_adapters
    from tinystories_gpt.training.presets import load_preset

    preset = load_preset(PRESET, ARGUMENT_CLASSES)
    models = {}
    for name in ("full", "LoRA"):
        model = TinyStoriesGPTForCausalLM.from_pretrained(parent, attn_implementation=preset["attn_implementation"])
        if name == "LoRA":
            model = add_lora_adapters(model, ModelArguments(init_from=parent, lora_r=lora_r))
        trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
        models[name] = (model.train(), torch.optim.AdamW(trainable, lr=1e-4))
    generator = torch.Generator().manual_seed(0)
    window = torch.randint(
        model.config.vocab_size, (preset["batch_size"], model.config.block_size + 1), generator=generator
    )
    input_ids, labels = window[:, :-1].contiguous(), window[:, 1:].contiguous()
    seconds = {name: [] for name in models}
    for step in range(steps + 2):  # the first two of each warm up
        for name in models if step % 2 == 0 else reversed(models):
            model, optimizer = models[name]
            started = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(input_ids=input_ids, labels=labels, shift_labels=labels, use_cache=False).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if step >= 2:
                seconds[name].append(time.perf_counter() - started)
    return {name: sorted(times)[len(times) // 2] for name, times in seconds.items()}, input_ids.numel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("parent", help="the model both runs start from, e.g. out/quickstart/best")
    parser.add_argument("--lora_r", type=int, default=8)
    parser.add_argument("--lora_learning_rate", type=float, default=None, help="default: the preset's")
    parser.add_argument("--rounds", type=int, default=1, help="whole runs of each (0: the step measurement only)")
    parser.add_argument("--steps", type=int, default=20, help="interleaved optimizer steps of each model")
    args = parser.parse_args()

    lora_flags = ["--lora_r", str(args.lora_r)]
    if args.lora_learning_rate is not None:
        lora_flags += ["--learning_rate", str(args.lora_learning_rate)]
    runs = {"full": [], f"LoRA r={args.lora_r}": []}
    with tempfile.TemporaryDirectory() as workdir:
        before = hold_out_loss(args.parent, Path(workdir))
        for round_index in range(args.rounds):
            order = list(runs) if round_index % 2 == 0 else list(reversed(runs))
            for name in order:
                extra = [] if name == "full" else lora_flags
                runs[name].append(fine_tune(args.parent, Path(workdir), f"{name}-{round_index}", extra))

    print(
        f"from {args.parent} on {PRESET.name}'s stories; hold-out loss before: {before['loss']:.3f} nats/token "
        f"({before['bits_per_byte']:.3f} bits per byte, {before['tokens']:,} tokens)"
    )
    header = f"{'':<10} {'trainable':>22} {'loss after':>11} {'bits/byte':>10} {'tok/s':>8} {'wall s':>7}"
    print(header + f" {'tok/s / full':>13} {'wall / full':>12}")
    anchor = runs["full"]
    for name, results in runs.items():
        for index, run in enumerate(results):
            share = f"{run['trainable']:,} ({100 * run['trainable'] / run['total']:.2f}%)"
            speed_ratio = run["tokens_per_second"] / anchor[index]["tokens_per_second"]
            wall_ratio = run["seconds"] / anchor[index]["seconds"]
            print(
                f"{name:<10} {share:>22} {run['final']['loss']:>11.3f} {run['final']['bits_per_byte']:>10.3f} "
                f"{run['tokens_per_second']:>8,.0f} {run['seconds']:>7.0f} {speed_ratio:>13.2f} {wall_ratio:>12.2f}"
            )
    step_seconds, tokens = interleaved_step_seconds(args.parent, args.lora_r, args.steps)
    full, lora = step_seconds["full"], step_seconds["LoRA"]
    print(
        f"step against step (median of {args.steps}, {tokens:,} tokens each): full {1000 * full:.0f} ms "
        f"({tokens / full:,.0f} tok/s), LoRA {1000 * lora:.0f} ms ({tokens / lora:,.0f} tok/s); "
        f"LoRA / full tokens/s {full / lora:.2f}"
    )


if __name__ == "__main__":
    main()
