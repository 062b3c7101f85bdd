"""LoRA through PEFT: adapters on a trained model's layers, and a best/ that needs no PEFT to load.

    best/           the adapters merged into the weights: a plain Hub-ready folder (`from_pretrained`, no peft)
    best/adapter/   the adapter alone (adapter_model.safetensors, adapter_config.json), for
                    `PeftModel.from_pretrained(parent, "best/adapter")`

The adapter lives in a subfolder, not beside config.json: Transformers reads an adapter_config.json at the top of a
model folder as "load the base model it names, then this adapter", which would make best/ need peft and the parent.
peft is an optional extra (pip install 'tinystories-gpt[peft]'), imported only in LoRA runs.
"""

import copy
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import safe_open
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..export.hub import write_hub_folder
from ..files import replacing_folder, write_manifest
from .arguments import ModelArguments

if TYPE_CHECKING:
    from peft import PeftModel

ADAPTER_DIR = "adapter"
LORA_WEIGHT_MARK = ".lora_"  # in the names PEFT gives adapter weights: ...c_attn.lora_A.default.weight


def add_lora_adapters(model: PreTrainedModel, model_args: ModelArguments) -> "PeftModel":
    """`model` wrapped by PEFT with LoRA adapters on `model_args.lora_targets`; only the adapters train."""
    from peft import LoraConfig, get_peft_model

    targets = model_args.lora_targets
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules="all-linear" if targets == ["all-linear"] else targets,
    )
    return get_peft_model(model, config)


def is_lora(model: torch.nn.Module) -> bool:
    """Whether `model` is a PEFT model; peft is not imported for it (a model can only be one once peft was)."""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def describe_lora(model_args: ModelArguments) -> str:
    """The adapters in words, for the log and the model card."""
    return (
        f"r={model_args.lora_r}, alpha={model_args.lora_alpha}, dropout={model_args.lora_dropout}, "
        f"on {', '.join(model_args.lora_targets)}"
    )


def merged_model(model: torch.nn.Module) -> PreTrainedModel:
    """A plain model computing what `model` computes: a LoRA model's adapters merged into a copy of its weights.

    A copy, because PEFT merges in place, and merging then unmerging would not give the training weights back bit
    for bit (W + BA - BA rounds), which exact resume needs.
    """
    return copy.deepcopy(model).merge_and_unload() if is_lora(model) else model


def save_model_folder(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, output_dir: str | Path, **contents
) -> Path:
    """Replace `output_dir` atomically with a Hub-ready folder of `model` (`contents`: write_hub_folder's keywords).

    A LoRA model is saved merged, with its adapter alone in adapter/. A plain model that replaces a folder holding an
    adapter keeps that adapter: training's final pass rewrites best/ (its card) from best/'s own merged weights.
    """
    output_dir = Path(output_dir)
    with replacing_folder(output_dir, f"the folder {output_dir.name}") as staging:
        write_hub_folder(merged_model(model), tokenizer, staging, **contents)
        if is_lora(model):
            model.save_pretrained(staging / ADAPTER_DIR)
        elif (output_dir / ADAPTER_DIR).is_dir():
            shutil.copytree(output_dir / ADAPTER_DIR, staging / ADAPTER_DIR)
        write_manifest(staging)  # last: what the final pass and --init_from check before they read it
    return output_dir


def checkpoint_adapters(checkpoint: Path) -> dict[str, tuple]:
    """The shapes of the LoRA weights in a training checkpoint (read from the file's header only); {} for none.

    Sharded (FSDP) checkpoints hold no model.safetensors: {} too, and Accelerate's own load reports mismatches.
    """
    weights_file = checkpoint / "model.safetensors"
    if not weights_file.is_file():
        return {}
    with safe_open(weights_file, framework="pt") as weights:
        return {name: tuple(weights.get_slice(name).get_shape()) for name in weights.keys() if LORA_WEIGHT_MARK in name}
