"""Conversions into and out of this model, each proved by comparing logits before anything is written.

    nanoGPT ckpt.pt, or a bare state dict ──┐
    Accelerate training checkpoint ─────────┼──> Hub-ready folder (hub.py) <──> GPT2LMHeadModel folder
    GPT2LMHeadModel folder ─────────────────┘

Checkpoints are read with `torch.load(weights_only=True)` (or safetensors), so a pickle that would run code
is refused, not executed. Every shape is read from the tensors; only what the tensors cannot tell (the number
of heads of a bare state dict) has to be given. Each converter writes into a staged folder, reloads the model
from it in float64, and compares its logits with an independent float64 forward of the source weights (or
with the source model); only then does the folder take the output path.
"""

import json
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present
from transformers import (
    AutoConfig,
    AutoTokenizer,
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.activations import ACT2FN

from .checkpointing import checkpoint_damage
from .configuration_tinystories_gpt import TinyStoriesGPTConfig
from .hub import check_output_dir, staged_folder, write_hub_folder
from .modeling_tinystories_gpt import TinyStoriesGPTForCausalLM
from .tokenization import load_tokenizer

WRAPPER_PREFIXES = ("_orig_mod.", "module.")  # torch.compile and DDP wrap the model and prefix its names
BLOCK_NORM_ALIASES = {".ln1.": ".ln_1.", ".ln2.": ".ln_2."}  # forks that drop nanoGPT's underscore
HEAD, EMBEDDING = "lm_head.weight", "transformer.wte.weight"
SHAPE_FIELDS = ("vocab_size", "block_size", "n_layer", "n_embd", "bias")
CONFIG_FIELDS = tuple(TinyStoriesGPTConfig.__annotations__)
# Conv1D stores (in, out) where nn.Linear stores (out, in): these weights are transposed to and from GPT-2.
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
PROBE_BATCH, PROBE_MAX_LENGTH = 2, 128
RELATIVE_TOLERANCE = 1e-6  # float64 on both sides: a faithful conversion agrees to ~1e-12
CHECKPOINT_HINT = (
    "Check that the checkpoint is a nanoGPT-style GPT (pre-LayerNorm blocks, exact GELU, fused QKV, learned positions)"
)


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


def model_from_state_dict(state_dict: dict[str, torch.Tensor], config: TinyStoriesGPTConfig, tied: bool):
    """A TinyStoriesGPTForCausalLM holding `state_dict` (checked first, so a mismatch is listed, not a traceback)."""
    model = TinyStoriesGPTForCausalLM(config).eval()
    check_state_dict(state_dict, model)
    weights = state_dict | ({HEAD: state_dict[EMBEDDING]} if tied else {})
    model.load_state_dict(weights, strict=True)
    return model


# 3. The logits check ------------------------------------------------------------------------------------------


def probe_input_ids(vocab_size: int, block_size: int) -> torch.Tensor:
    """Fixed pseudo-random token ids over the whole vocabulary and (up to 128) positions."""
    generator = torch.Generator().manual_seed(0)
    return torch.randint(vocab_size, (PROBE_BATCH, min(block_size, PROBE_MAX_LENGTH)), generator=generator)


def reference_logits(
    state_dict: dict[str, torch.Tensor], config: TinyStoriesGPTConfig, input_ids: torch.Tensor
) -> torch.Tensor:
    """nanoGPT's forward pass written out over the raw tensors, in float64, sharing no code with the model."""
    weights = {name: tensor.double() for name, tensor in state_dict.items()}
    batch, length = input_ids.shape
    width, heads = config.n_embd, config.n_head
    activation = ACT2FN[config.activation_function]

    def norm(x, prefix):
        return F.layer_norm(
            x, (width,), weights[prefix + ".weight"], weights.get(prefix + ".bias"), config.layer_norm_epsilon
        )

    def linear(x, prefix):
        return F.linear(x, weights[prefix + ".weight"], weights.get(prefix + ".bias"))

    causal = torch.ones(length, length, dtype=torch.bool).tril()
    x = weights[EMBEDDING][input_ids] + weights["transformer.wpe.weight"][:length]
    for layer in range(config.n_layer):
        block = f"transformer.h.{layer}"
        q, k, v = linear(norm(x, f"{block}.ln_1"), f"{block}.attn.c_attn").split(width, dim=2)
        q, k, v = (t.view(batch, length, heads, width // heads).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        scores = (q @ k.transpose(-2, -1)) / (width // heads) ** 0.5
        attention = scores.masked_fill(~causal, float("-inf")).softmax(dim=-1) @ v
        x = x + linear(attention.transpose(1, 2).reshape(batch, length, width), f"{block}.attn.c_proj")
        x = x + linear(activation(linear(norm(x, f"{block}.ln_2"), f"{block}.mlp.c_fc")), f"{block}.mlp.c_proj")
    return F.linear(norm(x, "transformer.ln_f"), weights.get(HEAD, weights[EMBEDDING]))


def float64_logits(model: PreTrainedModel, input_ids: torch.Tensor) -> torch.Tensor:
    """A model's logits in float64 and eval mode (dropout off)."""
    with torch.no_grad():
        return model.double().eval()(input_ids).logits


def check_logits(
    actual: torch.Tensor,
    expected: torch.Tensor,
    what: str,
    *,
    relative_tolerance: float = RELATIVE_TOLERANCE,
    hint: str = CHECKPOINT_HINT,
) -> float:
    """Refuse a conversion whose logits differ from the source's; returns the largest difference.

    The tolerance is relative to the largest source logit (at least 1); `hint` ends the error message.
    """
    difference = (actual - expected).abs().max().item()
    tolerance = relative_tolerance * max(1.0, expected.abs().max().item())
    if not difference <= tolerance:  # also catches NaN
        raise ValueError(
            f"logits check failed: {what} differs from the source by up to {difference:.3g} (tolerance "
            f"{tolerance:.3g}), so the weights were not mapped faithfully; nothing was written. {hint}"
        )
    return difference


# 4. Converters ------------------------------------------------------------------------------------------------


def convert_state_dict(
    state_dict: dict[str, torch.Tensor],
    config: TinyStoriesGPTConfig,
    tied: bool,
    tokenizer: PreTrainedTokenizerBase,
    output_dir: str | Path,
    *,
    overwrite: bool = False,
    training: dict | None = None,
) -> Path:
    """Write `state_dict` as a Hub-ready folder, once its reloaded logits match the reference forward."""
    model = model_from_state_dict(state_dict, config, tied)
    input_ids = probe_input_ids(config.vocab_size, config.block_size)
    expected = reference_logits(state_dict, config, input_ids)
    with staged_folder(output_dir, overwrite) as staging:
        write_hub_folder(model, tokenizer, staging, training=training)
        reloaded = TinyStoriesGPTForCausalLM.from_pretrained(staging, dtype=torch.float64)
        check_logits(float64_logits(reloaded, input_ids), expected, "the converted model")
    return Path(output_dir)


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
    tokenizer spec (see tokenization.py): "gpt2", a folder or a Hub id.
    """
    check_output_dir(output_dir, overwrite)
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
    return convert_state_dict(
        state_dict, config, tied, text_tokenizer, output_dir, overwrite=overwrite, training=training
    )


def convert_training_checkpoint(
    state_dir: str | Path,
    output_dir: str | Path,
    *,
    tokenizer: str | None = None,
    overwrite: bool = False,
    **config_fields,
) -> Path:
    """Convert an Accelerate training checkpoint (training.save_checkpoint's folder) to a Hub-ready folder.

    Reads `model.safetensors` (or `pytorch_model.bin`), `config.json` and the tokenizer in `tokenizer/`;
    `tokenizer` (a spec) replaces a missing tokenizer folder, `config_fields` a missing config.json.
    """
    state_dir = Path(state_dir)
    check_output_dir(output_dir, overwrite)
    if not state_dir.is_dir():
        raise FileNotFoundError(f"checkpoint folder {state_dir} does not exist; pass a checkpoints/step_N folder")
    damage = checkpoint_damage(state_dir, required=())  # the check --resume makes; the weights are checked below
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
    return convert_state_dict(
        state_dict, config, tied, text_tokenizer, output_dir, overwrite=overwrite, training=training
    )


def gpt2_config_from(config: TinyStoriesGPTConfig) -> GPT2Config:
    """The GPT-2 config of the same network: GPT-2 always has biases (ours without are exported as zeros)."""
    return GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.block_size,
        # GPT-2's original name for the context, which older GPT-2 tooling still reads (llama.cpp's
        # convert_hf_to_gguf.py stops with KeyError: 'n_ctx' without it)
        n_ctx=config.block_size,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        activation_function=config.activation_function,
        resid_pdrop=config.dropout,
        embd_pdrop=config.dropout,
        attn_pdrop=config.dropout,
        layer_norm_epsilon=config.layer_norm_epsilon,
        initializer_range=config.initializer_range,
        tie_word_embeddings=config.tie_word_embeddings,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )


def transpose_conv1d(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Swap the Linear (out, in) and Conv1D (in, out) layouts of the four projection weights (its own inverse)."""
    return {
        name: tensor.t().contiguous() if name.endswith(CONV1D_WEIGHTS) else tensor
        for name, tensor in state_dict.items()
    }


def to_gpt2(model: TinyStoriesGPTForCausalLM) -> GPT2LMHeadModel:
    """The same network as a GPT2LMHeadModel, weights copied into GPT-2's Conv1D layout."""
    gpt2 = GPT2LMHeadModel(gpt2_config_from(model.config)).eval()
    weights = transpose_conv1d(model.state_dict())
    for name, tensor in gpt2.state_dict().items():
        if name.endswith(".bias") and name not in weights:
            weights[name] = torch.zeros_like(tensor)  # a bias-free layer is the same layer with zero bias
    gpt2.load_state_dict(weights, strict=True)
    return gpt2


def export_gpt2(model_dir: str | Path, output_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Export a saved TinyStoriesGPT folder as a native GPT2LMHeadModel folder (no custom code); returns it."""
    check_output_dir(output_dir, overwrite)
    model, tokenizer = _load_pretrained(model_dir, TinyStoriesGPTForCausalLM, "tinystories_gpt")
    gpt2 = to_gpt2(model)
    input_ids = probe_input_ids(model.config.vocab_size, model.config.block_size)
    expected = float64_logits(model, input_ids)
    with staged_folder(output_dir, overwrite) as staging:
        write_gpt2_folder(gpt2, tokenizer, staging, source_dir=model_dir)
        reloaded = GPT2LMHeadModel.from_pretrained(staging, dtype=torch.float64)
        check_logits(float64_logits(reloaded, input_ids), expected, "the exported GPT-2 model")
    return Path(output_dir)


def write_gpt2_folder(
    gpt2: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerBase, folder: str | Path, source_dir: str | Path
) -> None:
    """Write a GPT-2 folder that Transformers 4.x and 5.x load without custom code, with `source_dir`'s sampling
    defaults."""
    gpt2.save_pretrained(folder)
    save_portable_tokenizer(tokenizer, folder, gpt2.config.n_positions)
    if (Path(source_dir) / "generation_config.json").is_file():
        GenerationConfig.from_pretrained(source_dir).save_pretrained(folder)


def save_portable_tokenizer(tokenizer: PreTrainedTokenizerBase, folder: str | Path, context_length: int) -> None:
    """Save `tokenizer` so that Transformers 4.x loads it too, truncating at the model's context.

    Transformers 5 records a tokenizer built from a `tokenizers` object (our trained `bpe:N`) as
    "TokenizersBackend", a class 4.x does not have ("Tokenizer class TokenizersBackend does not exist");
    "PreTrainedTokenizerFast" names the same tokenizer.json in both. That class also returns `token_type_ids`
    unless told otherwise, and 4.x's GPT-2 adds the token embedding of each such id to every position: a silent
    shift of every logit. GPT-2's own tokenizer class keeps its name and its inputs.
    """
    tokenizer.model_max_length = context_length
    tokenizer.save_pretrained(folder)
    config_file = Path(folder) / "tokenizer_config.json"
    tokenizer_config = json.loads(config_file.read_text())
    if tokenizer_config["tokenizer_class"] == "TokenizersBackend":
        tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
        tokenizer_config["model_input_names"] = ["input_ids", "attention_mask"]
        config_file.write_text(json.dumps(tokenizer_config, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def tinystories_config_from_gpt2(config: GPT2Config) -> dict:
    """Our config fields for a GPT-2 config, refusing the GPT-2 variants our blocks do not compute.

    Any activation in ACT2FN is kept (our MLP looks it up the same way GPT-2's does); the three GPT-2 dropouts
    become one (resid_pdrop); layer-index attention scaling, unscaled attention, cross-attention and a
    non-4x MLP are refused, since our blocks have no such options.
    """
    unsupported = {
        "scale_attn_weights": (config.scale_attn_weights, True),
        "scale_attn_by_inverse_layer_idx": (config.scale_attn_by_inverse_layer_idx, False),
        "add_cross_attention": (config.add_cross_attention, False),
        "n_inner": (config.n_inner, None if config.n_inner is None else 4 * config.n_embd),
    }
    for name, (value, supported) in unsupported.items():
        if value != supported:
            raise ValueError(
                f"this GPT-2 config has {name}={value}, which TinyStoriesGPT cannot represent (it needs "
                f"{name}={supported}); keep this model as GPT2LMHeadModel"
            )
    if config.activation_function not in ACT2FN:
        raise ValueError(f"unknown activation_function {config.activation_function!r}; pick a key of ACT2FN")
    return {
        "vocab_size": config.vocab_size,
        "block_size": config.n_positions,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_embd": config.n_embd,
        "dropout": config.resid_pdrop,
        "bias": True,
        "activation_function": config.activation_function,
        "layer_norm_epsilon": config.layer_norm_epsilon,
        "initializer_range": config.initializer_range,
        "tie_word_embeddings": config.tie_word_embeddings,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
    }


def from_gpt2(gpt2: GPT2LMHeadModel) -> TinyStoriesGPTForCausalLM:
    """The same network as a TinyStoriesGPTForCausalLM (refusing GPT-2 variants ours cannot compute)."""
    config = TinyStoriesGPTConfig(**tinystories_config_from_gpt2(gpt2.config))
    state_dict = transpose_conv1d(gpt2.state_dict())
    if config.tie_word_embeddings:
        state_dict.pop(HEAD)
    return model_from_state_dict(state_dict, config, config.tie_word_embeddings)


def import_gpt2(gpt2_dir: str | Path, output_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Convert a GPT2LMHeadModel folder (e.g. one `export_gpt2` wrote) to a Hub-ready TinyStoriesGPT folder."""
    check_output_dir(output_dir, overwrite)
    gpt2, tokenizer = _load_pretrained(gpt2_dir, GPT2LMHeadModel, "gpt2")
    model = from_gpt2(gpt2)
    input_ids = probe_input_ids(model.config.vocab_size, model.config.block_size)
    expected = float64_logits(gpt2, input_ids)
    with staged_folder(output_dir, overwrite) as staging:
        write_hub_folder(model, tokenizer, staging, training={"converted from": f"GPT-2 folder {Path(gpt2_dir).name}"})
        reloaded = TinyStoriesGPTForCausalLM.from_pretrained(staging, dtype=torch.float64)
        check_logits(float64_logits(reloaded, input_ids), expected, "the converted model")
    return Path(output_dir)


def load_any_model(model_dir: str | Path) -> tuple[TinyStoriesGPTForCausalLM, PreTrainedTokenizerBase]:
    """(our model in float32, tokenizer) from a TinyStoriesGPT folder or a GPT-2 folder, such as `export_gpt2`'s."""
    model_type = load_config(model_dir).model_type
    if model_type == "gpt2":
        gpt2, tokenizer = _load_pretrained(model_dir, GPT2LMHeadModel, "gpt2")
        return from_gpt2(gpt2), tokenizer
    if model_type != "tinystories_gpt":
        raise ValueError(f"{model_dir} holds a {model_type!r} model; pass a TinyStoriesGPT folder or its GPT-2 export")
    return _load_pretrained(model_dir, TinyStoriesGPTForCausalLM, "tinystories_gpt")


# 5. Helpers ---------------------------------------------------------------------------------------------------


def load_config(model_dir: str | Path) -> PretrainedConfig:
    """The config of a saved model folder, with an error that says what to pass when it holds none."""
    model_dir = Path(model_dir)
    # Checked first: AutoConfig would take a path that is not a folder for a Hub repo id.
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} has no config.json; pass a folder written by save_pretrained")
    try:
        return AutoConfig.from_pretrained(model_dir)
    except ValueError:
        raise ValueError(
            f"{model_dir}/config.json names no model type this Transformers knows; pass a folder written by "
            "save_pretrained (train.py's best/, or a convert.py output)"
        ) from None


def _load_pretrained(model_dir: str | Path, model_class: type[PreTrainedModel], model_type: str):
    """(model in float32, tokenizer) from a saved folder, after checking it holds a `model_type` model."""
    config = load_config(model_dir)
    if config.model_type != model_type:
        raise ValueError(
            f"{model_dir} holds a {config.model_type!r} model, not {model_type!r}; pick the other conversion"
        )
    model = model_class.from_pretrained(model_dir, config=config, dtype=torch.float32).eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as error:
        raise FileNotFoundError(
            f"{model_dir} holds no loadable tokenizer ({error}); save one beside the model"
        ) from None
    return model, tokenizer


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
    "check_logits",
    "convert_nanogpt",
    "convert_training_checkpoint",
    "export_gpt2",
    "from_gpt2",
    "import_gpt2",
    "load_any_model",
    "load_torch_checkpoint",
    "normalize_state_dict",
    "reference_logits",
]
