"""`--init_from`: start a run from a trained model (the parent) instead of random weights.

    a folder of ours (train.py's best/, a convert.py output) ─────────────────────────┐
    a Hub id (of ours or of a GPT-2 export), fetched once with snapshot_download ───────┤
    a GPT-2 export (GPT2LMHeadModel folder) ─────────── export/gpt2.py import_gpt2 ────┼──> our model + tokenizer
    a training checkpoint (checkpoints/step_N) ──────── export/nanogpt.py ─────────────┤
    a nanoGPT or seed checkpoint file (.pt) ─────────── export/nanogpt.py ─────────────┘

Conversions write into a temporary folder through export/, so each parent is checked by logits exactly as
`convert.py` checks it. The parent fixes the architecture and the tokenizer (the ids must mean what its embeddings
learnt): shape flags may only repeat its values, except block_size, which may be lowered (the position table is cut,
as nanoGPT's crop_block_size does); dropout stays the run's choice.
"""

import json
import tempfile
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

from ..configuration_tinystories_gpt import TinyStoriesGPTConfig
from ..data.tokenization import check_vocab_fits, load_tokenizer, tokenizer_fingerprint
from ..export.gpt2 import import_gpt2
from ..export.hub import check_model_folder
from ..export.nanogpt import convert_nanogpt, convert_training_checkpoint, load_torch_checkpoint, split_checkpoint
from ..modeling_tinystories_gpt import TinyStoriesGPTForCausalLM
from .arguments import DataArguments, ModelArguments
from .lora import add_lora_adapters, checkpoint_adapters, describe_lora

# Shape fields a flag may only repeat; block_size may also be lowered
FIXED_FIELDS = ("vocab_size", "n_layer", "n_head", "n_embd", "bias")
# What a parent on the Hub needs (config, weights, tokenizer, generation defaults), not its TF/Flax/ONNX copies
HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt"]
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def load_parent(model_args: ModelArguments, data_args: DataArguments) -> TinyStoriesGPTForCausalLM | None:
    """The `--init_from` model (float32, with the run's block_size, dropout and attention kernel), or None.

    Refuses shape flags and a tokenizer that contradict the parent, then fills `model_args`' shape fields and
    `data_args.tokenizer` in with the parent's, so the rest of the run reads them as if they had been given.
    """
    if model_args.init_from is None:
        return None
    name = model_args.init_from
    location, hub_id = locate(name)
    with tempfile.TemporaryDirectory(prefix="tinystories-parent-") as scratch:
        folder, tokenizer_spec = model_folder(location, hub_id or name, model_args, data_args, Path(scratch))
        if folder == location and hub_id is None:  # a folder of ours, read as it is (a Hub snapshot is checked by
            check_model_folder(folder)  # the Hub, and holds only the files a parent needs)
        check_same_tokenizer(data_args.tokenizer, tokenizer_spec, name)
        adopt_shape(model_args, TinyStoriesGPTConfig.from_pretrained(folder), name)
        model = TinyStoriesGPTForCausalLM.from_pretrained(
            folder,
            dtype=torch.float32,
            attn_implementation=model_args.attn_implementation,
            dropout=model_args.dropout,  # dropout layers take their probability when built
        )
    crop_block_size(model, model_args.block_size)
    model.name_or_path = name  # PEFT records it as the adapter's base model
    data_args.tokenizer = data_args.tokenizer or tokenizer_spec
    return model


def build_model(
    model_args: ModelArguments, tokenizer: PreTrainedTokenizerFast, parent: TinyStoriesGPTForCausalLM | None
) -> PreTrainedModel:
    """The model a run trains: fresh from the arguments, or the parent (with LoRA adapters when `lora_r` is set)."""
    if parent is None:
        return AutoModelForCausalLM.from_config(
            model_config(model_args, tokenizer), attn_implementation=model_args.attn_implementation
        )
    return add_lora_adapters(parent, model_args) if model_args.lora_r else parent


def model_config(model_args: ModelArguments, tokenizer: PreTrainedTokenizerFast) -> TinyStoriesGPTConfig:
    """The model's config for this tokenizer; its own validation names any impossible shape."""
    vocab_size = model_args.vocab_size or len(tokenizer)
    check_vocab_fits(tokenizer, vocab_size)
    return model_args.config(
        vocab_size=vocab_size,
        bos_token_id=tokenizer.eos_token_id,  # stories start after an end-of-text, as in the token files
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


# 1. Where the parent is, and what it is ------------------------------------------------------------------------


def locate(name: str) -> tuple[Path, str | None]:
    """(a local path, the Hub id it came from or None); a local path wins over a Hub id, as in from_pretrained."""
    path = Path(name).expanduser()
    if path.exists():
        return path, None
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or path.suffix in CHECKPOINT_SUFFIXES:
        raise FileNotFoundError(f"--init_from {name}: no such file or folder; pass the folder train.py wrote.")
    try:
        return Path(snapshot_download(name, allow_patterns=HUB_PATTERNS)), name
    except (HfHubHTTPError, LocalEntryNotFoundError, HFValidationError) as error:
        raise FileNotFoundError(
            f"--init_from {name!r} is neither a local file or folder nor a model on the Hub "
            f"({str(error).splitlines()[0]}); pass the folder train.py wrote (e.g. out/quickstart/best) or a Hub id."
        ) from None


def model_folder(
    location: Path, known_as: str, model_args: ModelArguments, data_args: DataArguments, scratch: Path
) -> tuple[Path, str]:
    """(a folder of our model holding the parent's weights, the parent's tokenizer spec), converting if need be."""
    if location.is_file() or (location / "ckpt.pt").is_file():  # nanoGPT keeps no tokenizer: the run names it
        tokenizer_spec = data_args.tokenizer or "gpt2"
        overrides = nanogpt_head_count(location, model_args)
        return convert_nanogpt(location, scratch / "parent", tokenizer=tokenizer_spec, **overrides), tokenizer_spec
    if not (location / "config.json").is_file():
        raise FileNotFoundError(
            f"--init_from {known_as} holds no config.json: pass a folder train.py or convert.py wrote, a GPT-2 "
            "export, a training checkpoint (checkpoints/step_N) or a nanoGPT checkpoint file."
        )
    if (location / "tokenizer").is_dir() and not (location / "tokenizer_config.json").is_file():
        if checkpoint_adapters(location):
            raise ValueError(
                f"--init_from {known_as} is a checkpoint of a LoRA run (adapters beside frozen weights): start from "
                "that run's best/, where the adapters are merged, or --resume the run itself."
            )
        return convert_training_checkpoint(location, scratch / "parent"), str(location / "tokenizer")
    model_type = json.loads((location / "config.json").read_text()).get("model_type")
    if model_type == "gpt2":
        return import_gpt2(location, scratch / "parent"), known_as
    if model_type != "tinystories_gpt":
        raise ValueError(
            f"--init_from {known_as} holds a {model_type!r} model; this project trains TinyStoriesGPT models, "
            "from one of ours, a GPT-2 export (GPT2LMHeadModel) or a nanoGPT checkpoint."
        )
    return location, known_as


def nanogpt_head_count(checkpoint: Path, model_args: ModelArguments) -> dict:
    """`n_head` for the conversion, where the checkpoint does not record it (a bare state dict, like the seed's).

    Where it does, a differing --n_head is left for `adopt_shape` to refuse, not passed on to override the record.
    """
    if model_args.n_head is None:
        return {}
    _, declared = split_checkpoint(load_torch_checkpoint(checkpoint), checkpoint)
    return {} if "n_head" in declared else {"n_head": model_args.n_head}


# 2. What the parent fixes --------------------------------------------------------------------------------------


def check_same_tokenizer(given: str | None, parent_spec: str, name: str) -> None:
    """Refuse a --tokenizer that would encode text differently from the parent's."""
    if given is None or given == parent_spec:
        return
    if tokenizer_fingerprint(load_tokenizer(given)) != tokenizer_fingerprint(load_tokenizer(parent_spec)):
        raise ValueError(
            f"--tokenizer {given} is not the tokenizer of the parent {name}, so its ids would not mean what the "
            "parent's embeddings learnt: drop --tokenizer (the parent's comes with it)."
        )


def adopt_shape(model_args: ModelArguments, config, name: str) -> None:
    """Refuse shape flags that contradict the parent's config, then fill the unset ones in with its values."""
    for field_name in FIXED_FIELDS:
        given, parents = getattr(model_args, field_name), getattr(config, field_name)
        if given is not None and given != parents:
            raise ValueError(
                f"--{field_name} {given} contradicts the parent {name}, which has {field_name}={parents}: the "
                f"architecture comes from the parent, so drop --{field_name}."
            )
        setattr(model_args, field_name, parents)
    if model_args.block_size is not None and model_args.block_size > config.block_size:
        raise ValueError(
            f"--block_size {model_args.block_size} is more than the context of the parent {name} "
            f"({config.block_size} tokens), which learnt no positions beyond it: pass at most --block_size "
            f"{config.block_size} (a shorter context keeps the first positions), or drop it."
        )
    model_args.block_size = model_args.block_size or config.block_size
    model_args.dropout = config.dropout if model_args.dropout is None else model_args.dropout


def crop_block_size(model: TinyStoriesGPTForCausalLM, block_size: int) -> None:
    """Keep the first `block_size` position embeddings (nanoGPT's crop_block_size): the same model, shorter context."""
    if block_size == model.config.block_size:
        return
    kept = model.transformer.wpe.weight.detach()[:block_size].clone()
    model.transformer.wpe = nn.Embedding.from_pretrained(kept, freeze=False)
    model.config.block_size = block_size


def hub_base_model(model_args: ModelArguments) -> str | None:
    """The Hub id the run started from, for the card's `base_model` (a local parent has none the Hub could link)."""
    init_from = model_args.init_from
    return init_from if init_from is not None and not Path(init_from).expanduser().exists() else None


def start_summary(model_args: ModelArguments) -> dict:
    """The model card's rows for where training started and what trained ({} for a fresh model)."""
    rows = {"init_from": model_args.init_from} if model_args.init_from else {}
    return rows | ({"lora": describe_lora(model_args)} if model_args.lora_r else {})


def describe_start(model: PreTrainedModel, model_args: ModelArguments) -> str:
    """What the run starts from and what of it trains, for the log."""
    trainable, total = model.num_parameters(only_trainable=True), model.num_parameters()
    method = f"LoRA adapters ({describe_lora(model_args)})" if model_args.lora_r else "every weight"
    return (
        f"starting from {model_args.init_from}, training {method}: {trainable:,} of {total:,} parameters "
        f"({100 * trainable / total:.2f}%)"
    )
