"""nanoGPT's names, which are ours: nanoGPT checkpoints, bare state dicts and training checkpoints, to a Hub-ready
folder, each proved by logits (checks.py) before it takes the output's name.

    nanoGPT ckpt.pt, or a bare state dict (like the seed's) ──┐
                                                              ├──> Hub-ready folder (hub.py)
    a training checkpoint (checkpoints/step_N) ───────────────┘

Checkpoints are read with `torch.load(weights_only=True)` (or safetensors), so a pickle that would run code is
refused, not executed. Every shape is read from the tensors; only what the tensors cannot tell (the number of heads
of a bare state dict) has to be given. The written folder is reloaded in float64 and its logits compared with an
independent float64 forward of the source weights.
"""

import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..configuration_tinystories_gpt import TinyStoriesGPTConfig
from ..data.tokenization import load_tokenizer
from ..files import check_output, folder_damage
from ..modeling_tinystories_gpt import TinyStoriesGPTForCausalLM
from .checks import EMBEDDING, HEAD, probe_input_ids, reference_logits, reloads_with_logits, save_checked
from .hub import write_hub_folder

WRAPPER_PREFIXES = ("_orig_mod.", "module.")  # torch.compile and DDP wrap the model and prefix its names
BLOCK_NORM_ALIASES = {".ln1.": ".ln_1.", ".ln2.": ".ln_2."}  # forks that drop nanoGPT's underscore
CONFIG_FIELDS = tuple(TinyStoriesGPTConfig.__annotations__)


# 1. Reading checkpoints without running them ------------------------------------------------------------------


def load_torch_checkpoint(path: str | Path) -> dict:
    """`torch.load` with `weights_only=True`: tensors and plain Python values only, never code."""
    path = Path(path)
    if path.is_dir() and (path / "ckpt.pt").is_file():
        path = path / "ckpt.pt"  # nanoGPT's out_dir
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass the path of a ckpt.pt or a state dict .pt")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError... for unreadable files
        message = str(error)
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", message)
        if refused:
            raise ValueError(
                f"refusing to load {path}: it pickles {refused.group(1)}, which is neither a tensor nor a plain "
                "value, and unpickling it could run arbitrary code. If you trust the file, re-save just the "
                "weights: torch.save({'model': model.state_dict(), 'model_args': {...}}, 'ckpt.pt')"
            ) from None
        if _is_safetensors(path):
            raise ValueError(
                f"{path} is a safetensors file, not a PyTorch checkpoint: put it in a folder as model.safetensors "
                "and convert that folder with `convert.py checkpoint FOLDER OUT --tokenizer gpt2 --n_head N`"
            ) from None
        # torch's first line advises weights_only=False, which would not read a file torch cannot parse either
        reason = re.search(r"WeightsUnpickler error:\s*(.+)", message)
        raise ValueError(
            f"could not read {path} as a PyTorch checkpoint ({reason.group(1) if reason else message.splitlines()[0]})"
        ) from None
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path} holds a {type(checkpoint).__name__}, not a state dict or a nanoGPT checkpoint")
    return checkpoint


def split_checkpoint(checkpoint: dict, path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, model_args) of a nanoGPT checkpoint ({"model": ..., "model_args": ...}) or a bare state dict."""
    if isinstance(checkpoint.get("model"), dict):
        return checkpoint["model"], dict(checkpoint.get("model_args") or {})
    if checkpoint and all(isinstance(value, torch.Tensor) for value in checkpoint.values()):
        return checkpoint, {}
    raise ValueError(
        f"{path} is neither a nanoGPT checkpoint (a dict with a 'model' state dict) nor a bare state dict "
        f"(names to tensors); its top-level keys are {_listing(checkpoint)}"
    )


# 2. Names and shapes ------------------------------------------------------------------------------------------


def normalize_state_dict(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], bool]:
    """This model's names for a nanoGPT-style state dict, and whether the output head is tied to the embedding.

    Strips torch.compile/DDP prefixes, renames `ln1`/`ln2` to `ln_1`/`ln_2`, drops nanoGPT's causal-mask
    buffers (`attn.bias`, 4-D, not weights), and drops `lm_head.weight` when it equals the embedding (tied).
    """
    normalized = {}
    for name, tensor in strip_wrapper_prefixes(state_dict).items():
        for alias, canonical in BLOCK_NORM_ALIASES.items():
            name = name.replace(alias, canonical)
        if re.fullmatch(r"transformer\.h\.\d+\.attn\.(bias|masked_bias)", name) and tensor.dim() != 1:
            continue
        normalized[name] = tensor
    head = normalized.pop(HEAD, None)
    if head is not None and EMBEDDING not in normalized:
        normalized[EMBEDDING] = head  # a safetensors save kept the head's name for the shared tensor
    tied = head is None or (head.shape == normalized[EMBEDDING].shape and torch.equal(head, normalized[EMBEDDING]))
    if not tied:
        normalized[HEAD] = head
    return normalized, tied


def strip_wrapper_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict without torch.compile/DDP prefixes, however deeply nested (`module._orig_mod.`...)."""
    stripped = dict(state_dict)  # torch strips in place; the caller's dict stays as it was
    while any(name.startswith(WRAPPER_PREFIXES) for name in stripped):
        for prefix in WRAPPER_PREFIXES:
            consume_prefix_in_state_dict_if_present(stripped, prefix)
    return stripped


def shapes_from_tensors(state_dict: dict[str, torch.Tensor]) -> dict:
    """Every config field the tensors determine: vocab_size, n_embd, block_size, n_layer, bias."""
    missing = [name for name in (EMBEDDING, "transformer.wpe.weight") if name not in state_dict]
    if missing:
        raise ValueError(
            f"the state dict has no {', '.join(missing)}, so it is not a nanoGPT-style GPT; "
            f"its keys are {_listing(state_dict)}"
        )
    layers = {int(match.group(1)) for name in state_dict if (match := re.match(r"transformer\.h\.(\d+)\.", name))}
    if not layers:
        raise ValueError(f"the state dict has no transformer blocks (transformer.h.N.*); keys: {_listing(state_dict)}")
    vocab_size, n_embd = state_dict[EMBEDDING].shape
    return {
        "vocab_size": vocab_size,
        "n_embd": n_embd,
        "block_size": state_dict["transformer.wpe.weight"].shape[0],
        "n_layer": max(layers) + 1,
        "bias": "transformer.ln_f.bias" in state_dict,
    }


def resolve_config(
    state_dict: dict[str, torch.Tensor], declared: dict, overrides: dict, source: str, **fixed
) -> TinyStoriesGPTConfig:
    """The config for `state_dict`: `fixed` (facts found elsewhere, e.g. tied weights), then the tensors' shapes,
    then `overrides` (the command line), then `declared` (the checkpoint's own record). A declared or given
    shape that the tensors contradict is an error.
    """
    settings = {name: (value, f"{source} says") for name, value in declared.items() if name in CONFIG_FIELDS}
    settings |= {name: (value, "you passed") for name, value in overrides.items() if value is not None}
    for name, actual in shapes_from_tensors(state_dict).items():
        value, origin = settings.get(name, (actual, ""))
        if value != actual:
            raise ValueError(
                f"shapes do not agree: {origin} {name}={value}, but the weights have {name}={actual}; "
                f"drop --{name} (it is read from the tensors) or pass the matching checkpoint"
            )
        settings[name] = (actual, "the tensors say")
    if "n_head" not in settings:
        n_embd = settings["n_embd"][0]
        raise ValueError(
            f"{source} does not record n_head, and the fused QKV weight ({3 * n_embd} x {n_embd}) fits any head "
            f"count: pass --n_head N with N dividing n_embd={n_embd} (the seed model uses --n_head 6)"
        )
    return TinyStoriesGPTConfig(**({name: value for name, (value, _) in settings.items()} | fixed))


def check_state_dict(state_dict: dict[str, torch.Tensor], model: PreTrainedModel) -> None:
    """Refuse missing keys, unexpected keys and mismatched shapes, listing each."""
    expected = {name: tensor.shape for name, tensor in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        expected.pop(HEAD)
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        f"{name} {tuple(state_dict[name].shape)} (expected {tuple(shape)})"
        for name, shape in expected.items()
        if name in state_dict and state_dict[name].shape != shape
    ]
    problems = [
        f"{label}: {_listing(names)}"
        for label, names in (("missing keys", missing), ("unexpected keys", unexpected), ("shapes", mismatched))
        if names
    ]
    if problems:
        raise ValueError(
            f"the weights do not fit a {model.config.n_layer}-layer model with n_embd={model.config.n_embd} "
            f"({'; '.join(problems)}); check --n_layer/--bias or that this is a nanoGPT-style checkpoint"
        )


def model_from_state_dict(state_dict: dict[str, torch.Tensor], config: TinyStoriesGPTConfig) -> PreTrainedModel:
    """A TinyStoriesGPTForCausalLM holding `state_dict` (checked first, so a mismatch is listed, not a traceback);
    with tied embeddings the state dict holds no output head."""
    model = TinyStoriesGPTForCausalLM(config).eval()
    check_state_dict(state_dict, model)
    weights = state_dict | ({HEAD: state_dict[EMBEDDING]} if config.tie_word_embeddings else {})
    model.load_state_dict(weights, strict=True)
    return model


# 3. Converters ------------------------------------------------------------------------------------------------


def convert_state_dict(
    state_dict: dict[str, torch.Tensor],
    config: TinyStoriesGPTConfig,
    tokenizer: PreTrainedTokenizerBase,
    output_dir: str | Path,
    *,
    overwrite: bool = False,
    training: dict | None = None,
) -> Path:
    """Write `state_dict` as a Hub-ready folder, once its reloaded logits match the reference forward."""
    model = model_from_state_dict(state_dict, config)
    input_ids = probe_input_ids(config.vocab_size, config.block_size)
    expected = reference_logits(state_dict, config, input_ids)
    return save_checked(
        output_dir,
        overwrite,
        write=lambda folder: write_hub_folder(model, tokenizer, folder, training=training),
        check=reloads_with_logits(TinyStoriesGPTForCausalLM, input_ids, expected, "the converted model"),
    )


def convert_nanogpt(
    checkpoint: str | Path,
    output_dir: str | Path,
    *,
    tokenizer: str = "gpt2",
    overwrite: bool = False,
    **config_fields,
) -> Path:
    """Convert nanoGPT's ckpt.pt (or a bare state dict .pt) to a Hub-ready folder; returns the folder.

    `config_fields` (n_head, block_size, vocab_size, n_layer, n_embd, dropout, ...; None means unset) fill
    in what the checkpoint does not record; shapes are read from the tensors and must agree. `tokenizer` is a
    tokenizer spec (see data/tokenization.py): "gpt2", a folder or a Hub id.
    """
    check_output(output_dir, overwrite)
    raw_state_dict, model_args = split_checkpoint(load_torch_checkpoint(checkpoint), checkpoint)
    state_dict, tied = normalize_state_dict(raw_state_dict)
    text_tokenizer = load_tokenizer(tokenizer)
    config = resolve_config(
        state_dict,
        model_args,
        config_fields,
        source=f"{checkpoint}'s model_args" if model_args else str(checkpoint),
        tie_word_embeddings=tied,
        bos_token_id=text_tokenizer.eos_token_id,  # nanoGPT separates documents with end-of-text
        eos_token_id=text_tokenizer.eos_token_id,
        pad_token_id=text_tokenizer.pad_token_id,
    )
    training = {"converted from": f"nanoGPT checkpoint {Path(checkpoint).name}", "tokenizer": tokenizer}
    return convert_state_dict(state_dict, config, text_tokenizer, output_dir, overwrite=overwrite, training=training)


def convert_training_checkpoint(
    state_dir: str | Path,
    output_dir: str | Path,
    *,
    tokenizer: str | None = None,
    overwrite: bool = False,
    **config_fields,
) -> Path:
    """Convert an Accelerate training checkpoint (training/checkpoints.py's folder) to a Hub-ready folder.

    Reads `model.safetensors` (or `pytorch_model.bin`), `config.json` and the tokenizer in `tokenizer/`;
    `tokenizer` (a spec) replaces a missing tokenizer folder, `config_fields` a missing config.json.
    """
    state_dir = Path(state_dir)
    check_output(output_dir, overwrite)
    if not state_dir.is_dir():
        raise FileNotFoundError(f"checkpoint folder {state_dir} does not exist; pass a checkpoints/step_N folder")
    damage = folder_damage(state_dir, manifest_required=False)  # the check --resume makes
    if damage:
        raise ValueError(f"checkpoint {state_dir} is damaged: {damage}; convert an earlier checkpoints/step_N")
    if (state_dir / "model.safetensors").is_file():
        weights_file = state_dir / "model.safetensors"
        raw_state_dict = load_file(weights_file)
    elif (state_dir / "pytorch_model.bin").is_file():
        weights_file = state_dir / "pytorch_model.bin"
        raw_state_dict = load_torch_checkpoint(weights_file)
    else:
        raise FileNotFoundError(
            f"{state_dir} holds no model.safetensors (nor pytorch_model.bin); pass a folder written by "
            "accelerator.save_state, such as out/checkpoints/step_N"
        )
    state_dict, tied = normalize_state_dict(raw_state_dict)
    config_file = state_dir / "config.json"
    declared = TinyStoriesGPTConfig.from_json_file(config_file).to_dict() if config_file.is_file() else {}
    tokenizer_dir = state_dir / "tokenizer"
    if tokenizer is None and not tokenizer_dir.is_dir():
        raise FileNotFoundError(
            f"{state_dir} has no tokenizer/ folder; pass --tokenizer gpt2 (or the tokenizer folder the run used)"
        )
    text_tokenizer = load_tokenizer(tokenizer or str(tokenizer_dir))
    config = resolve_config(
        state_dict,
        declared,
        config_fields,
        source=str(config_file) if declared else str(weights_file),
        tie_word_embeddings=tied,
    )
    training = {"converted from": f"training checkpoint {state_dir.name}"}
    return convert_state_dict(state_dict, config, text_tokenizer, output_dir, overwrite=overwrite, training=training)


# 4. Helpers -------------------------------------------------------------------------------------------------


def _is_safetensors(path: Path) -> bool:
    try:
        with safe_open(path, framework="pt"):
            return True
    except Exception:  # safetensors raises its own SafetensorError for anything else
        return False


def _listing(names, limit: int = 8) -> str:
    """A short comma-separated listing of names, with a count of the rest."""
    names = [str(name) for name in names]
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


__all__ = [
    "convert_nanogpt",
    "convert_training_checkpoint",
    "load_torch_checkpoint",
    "model_from_state_dict",
    "normalize_state_dict",
]
