"""Fine-tuning every weight against LoRA, from the same parent on the same stories.

    python benchmarks/bench_finetune.py out/quickstart/best [--lora_r 8] [--lora_learning_rate 3e-3] [--rounds 1]

Both runs use configs/finetune.yaml (its stories, hold-out and steps), each in its own process, one after the other
(alternating over --rounds). The anchor is the full fine-tune: LoRA's tokens/s and wall time are also given as ratios
to it. "Before" is the parent's loss over the whole hold-out, "after" best/'s (train.py's final pass over the same
stories), so the two compare.
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
    from tinystories_gpt.arguments import load_preset
    from tinystories_gpt.data import prepare_data
    from tinystories_gpt.evaluation import evaluate_split

    preset = load_preset(PRESET)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("parent", help="the model both runs start from, e.g. out/quickstart/best")
    parser.add_argument("--lora_r", type=int, default=8)
    parser.add_argument("--lora_learning_rate", type=float, default=None, help="default: the preset's")
    parser.add_argument("--rounds", type=int, default=1)
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


if __name__ == "__main__":
    main()
